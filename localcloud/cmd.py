"""devstack-localcloud: run local OpenStack-compatible clouds, or talk to a
running one through its admin endpoint.

    devstack-localcloud run --config clouds-local.yaml --clouds-yaml clouds.yaml \\
        [--state-dir DIR] [--ready-file ready.json] [--admin-port N]
    devstack-localcloud faults --admin URL CLOUD [knob=value ...]
    devstack-localcloud stats --admin URL CLOUD [--reset] [--spans [--key K]]
    devstack-localcloud servers --admin URL CLOUD
    devstack-localcloud kill-node --admin URL CLOUD SERVER_ID
    devstack-localcloud revoke-tokens --admin URL CLOUD

``run`` stays in the foreground until SIGTERM or SIGINT, then deletes every
node and all state it created.  Knob values are YAML (``outage=true``,
``boot-delay={min: 1, max: 5}``); a dotted name sets one entry of a mapping
(``quota.instances=4``).  Passwords go only into clouds.yaml, never to the
console.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import yaml

from localcloud import config as config_mod
from localcloud.faults import FaultError

PROG = "devstack-localcloud"
LOG = logging.getLogger("localcloud")


class CommandError(Exception):
    """A one-line reason to exit non-zero."""


class AdminError(CommandError):
    """The admin endpoint answered an error (other than 400): ``status``."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


# -- admin client ---------------------------------------------------------------------


class AdminClient:
    """The admin endpoint of a running localcloud, for one cloud.  Same
    method names as ``localcloud.cloud.Cloud``'s admin operations."""

    def __init__(self, admin_url, name, timeout=30):
        self.base = admin_url.rstrip("/")
        self.name = name
        self.timeout = timeout

    def _call(self, method, path, body=None):
        url = "%s/clouds/%s%s" % (self.base, self.name, path)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type":
                                                  "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["error"]
            except (ValueError, KeyError, TypeError):
                message = "HTTP %s" % e.code
            if e.code == 400:
                raise FaultError(message) from None
            raise AdminError(e.code, "%s %s: %s" % (method, url, message)) \
                from None
        except urllib.error.URLError as e:
            raise CommandError("cannot reach the admin endpoint %s: %s"
                               % (self.base, e.reason)) from None

    def get_faults(self):
        return self._call("GET", "/faults")

    def set_faults(self, update=None, **kwargs):
        merged = dict(update or {})
        merged.update({k.replace("_", "-"): v for k, v in kwargs.items()})
        return self._call("PUT", "/faults", merged)

    def stats(self):
        return self._call("GET", "/stats")

    def reset_stats(self):
        self._call("POST", "/stats/reset", {})

    def spans_report(self, key=None):
        path = "/stats/spans"
        if key is not None:
            path += "?" + urllib.parse.urlencode({"key": key})
        return self._call("GET", path)

    def spans(self, key=None):
        return {k: [tuple(span) for span in v]
                for k, v in self.spans_report(key)["spans"].items()}

    def servers(self):
        return self._call("GET", "/servers")["servers"]

    def images(self):
        return self._call("GET", "/images")["images"]

    def kill_node(self, server_id):
        return self._call("POST", "/servers/%s/die"
                          % urllib.parse.quote(server_id, safe=""), {})

    def revoke_tokens(self):
        return self._call("POST", "/revoke-tokens", {})["revoked"]

    def info(self):
        return self._call("GET", "")


def parse_assignments(pairs):
    """["quota.instances=4", "outage=true"] -> {"quota": {"instances": 4},
    "outage": True}"""
    update = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CommandError("expected knob=value, got %r" % pair)
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as e:
            raise CommandError("%s: value is not valid YAML: %s"
                               % (key, str(e).splitlines()[0])) from None
        target = update
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise CommandError("%s: conflicts with another assignment"
                                   % key)
        target[parts[-1]] = value
    return update


# -- run --------------------------------------------------------------------------------


def run(args):
    from localcloud.server import LocalCloud      # keeps other commands light

    cfg = config_mod.load(args.config)
    stop = threading.Event()
    received = []

    def on_signal(signum, frame):
        # no logging here: the handler may interrupt a logging call
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    local = LocalCloud(cfg, state_dir=args.state_dir,
                       admin_port=args.admin_port)
    try:
        local.start()
        local.write_clouds_yaml(args.clouds_yaml)
        if args.ready_file:
            local.write_ready_file(args.ready_file)
        for name, cloud in local.clouds.items():
            print("%s: cloud %s at %s (nodes %s, ssh port %d)"
                  % (PROG, name, cloud.auth_url, cloud.config.address_range,
                     cloud.config.ssh_port), flush=True)
        print("%s: admin endpoint %s; clouds.yaml at %s; stop with SIGTERM "
              "or Ctrl-C" % (PROG, local.admin_url, args.clouds_yaml),
              flush=True)
        while not stop.wait(0.5):
            pass
        LOG.info("localcloud: %s received, shutting down",
                 signal.Signals(received[0]).name)
    finally:
        local.stop()
        if args.ready_file and os.path.exists(args.ready_file):
            os.unlink(args.ready_file)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("%s: stopped, all nodes deleted" % PROG, flush=True)
    return 0


def faults(args):
    client = AdminClient(args.admin, args.cloud)
    update = parse_assignments(args.assignments)
    result = client.set_faults(update) if update else client.get_faults()
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def stats(args):
    client = AdminClient(args.admin, args.cloud)
    if args.spans or args.key:
        result = client.spans_report(args.key)
    else:
        result = client.stats()
    if args.reset:
        client.reset_stats()
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def servers(args):
    print(json.dumps(AdminClient(args.admin, args.cloud).servers(), indent=2))
    return 0


def kill_node(args):
    entry = AdminClient(args.admin, args.cloud).kill_node(args.server)
    print("%s: server %s (%s) of cloud %s at %s no longer answers SSH"
          % (PROG, entry["id"], entry["name"], args.cloud, entry["address"]))
    return 0


def revoke_tokens(args):
    count = AdminClient(args.admin, args.cloud).revoke_tokens()
    print("%s: revoked %d tokens of cloud %s" % (PROG, count, args.cloud))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Local OpenStack-compatible clouds (keystone, "
        "nova, glance) whose servers are real SSH hosts on loopback.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run clouds in the foreground")
    p.add_argument("--config", required=True,
                   help="the local cloud's YAML (see localcloud/example.yaml)")
    p.add_argument("--clouds-yaml", required=True,
                   help="where to write the clouds.yaml for the product")
    p.add_argument("--state-dir", help="where node roots and images live "
                   "(a private directory is made inside; default: temp dir)")
    p.add_argument("--ready-file", help="JSON written once every cloud "
                   "answers: admin URL and each cloud's API port")
    p.add_argument("--admin-port", type=int, help="admin endpoint port "
                   "(default: the config's admin-port, else a free one)")
    p.set_defaults(func=run)

    def admin_parser(name, func, help):
        p = sub.add_parser(name, help=help)
        p.add_argument("--admin", required=True,
                       help="admin URL of a running localcloud")
        p.add_argument("cloud", help="cloud name")
        p.set_defaults(func=func)
        return p

    p = admin_parser("faults", faults, "show or change a cloud's fault knobs")
    p.add_argument("assignments", nargs="*", metavar="knob=value")
    p = admin_parser("stats", stats, "API calls counted by method and path")
    p.add_argument("--reset", action="store_true",
                   help="reset the counters (and spans) after showing them")
    p.add_argument("--spans", action="store_true",
                   help="show each call's start and end time (wall clock) "
                   "instead of the counters")
    p.add_argument("--key", metavar="'METHOD /path/{template}'",
                   help="with --spans: only this key's spans")
    admin_parser("servers", servers, "every server, including deleted ones")
    p = admin_parser("kill-node", kill_node, "make an ACTIVE server stop "
                     "answering SSH now (it stays ACTIVE), as node-death does")
    p.add_argument("server", help="server id")
    admin_parser("revoke-tokens", revoke_tokens,
                 "invalidate every token (the next call gets 401)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("paramiko").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (CommandError, config_mod.ConfigError, FaultError) as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return 2 if isinstance(e, config_mod.ConfigError) else 1
    except OSError as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Fixture helpers: local clouds for a test, in-process or as a subprocess.

    from localcloud.testing import local_clouds

    with local_clouds({"clouds": [{"name": "fast"},
                                  {"name": "flaky",
                                   "faults": {"boot-error-rate": 0.5}}]}) as lc:
        lc.clouds_yaml                  # path of the clouds.yaml to hand over
        fast = lc["fast"]
        nova = fast.nova("2.53")        # real novaclient on a real session
        fast.set_faults(outage=True)    # or {"outage": True}
        fast.stats()["calls"]["GET /compute/v2.1/servers/detail"]
        fast.call_spans("GET /compute/v2.1/servers/detail")  # [(start, end)]

``local_clouds_subprocess`` does the same through ``devstack-localcloud run``
and the admin endpoint.  Both give each cloud an address range picked at
random from 127.64.0.0-127.254.255.0 (unless the config names one), free API
and admin ports, and a private temp directory; on exit every node, thread,
listener and directory is gone.

The handles' ``session()``, ``nova()``, ``glance()`` and ``adapter(
service_type)`` (a keystoneauth1 Adapter, e.g. for "block-storage" or
"network") import the OpenStack clients lazily, so importing this module
costs nothing.
"""

import contextlib
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

from localcloud import config as config_mod

DEFAULT_CONFIG = {"clouds": [{"name": "local"}]}
_random = random.SystemRandom()


def pick_address_ranges(count, taken=()):
    """``count`` distinct /24 loopback ranges unlikely to clash with anything
    (including a parallel test run)."""
    ranges = set()
    while len(ranges) < count:
        candidate = "127.%d.%d.0/24" % (_random.randint(64, 254),
                                        _random.randint(0, 255))
        if candidate not in taken:
            ranges.add(candidate)
    return sorted(ranges)


def prepare_config(config=None):
    """A config mapping ready for a test: free ports, random address ranges
    for clouds that do not name one.  ``config`` is a mapping (the YAML
    schema), a path to a YAML file, or None (one cloud named "local")."""
    if config is None:
        data = copy.deepcopy(DEFAULT_CONFIG)
    elif isinstance(config, (str, os.PathLike)):
        with open(config) as f:
            data = yaml.safe_load(f)
    else:
        data = copy.deepcopy(config)
    data.setdefault("admin-port", 0)
    clouds = data.get("clouds") or []
    taken = {c.get("address-range") for c in clouds if isinstance(c, dict)}
    free = iter(pick_address_ranges(len(clouds), taken))
    for cloud in clouds:
        if isinstance(cloud, dict):
            cloud.setdefault("port", 0)
            cloud.setdefault("address-range", next(free))
    return data


class CloudHandle:
    """One cloud of a running local cloud, as a test sees it."""

    def __init__(self, name, entry, backend, admin_url=None):
        self.name = name
        self.entry = entry
        self.admin_url = admin_url      # the process's admin endpoint
        self.auth = dict(entry["auth"])
        self.region_name = entry["region_name"]
        self.auth_url = self.auth["auth_url"]
        self._backend = backend

    def __repr__(self):
        return "<CloudHandle %s %s>" % (self.name, self.auth_url)

    # admin operations
    def get_faults(self):
        return self._backend.get_faults()

    def set_faults(self, update=None, **kwargs):
        return self._backend.set_faults(update, **kwargs)

    def stats(self):
        return self._backend.stats()

    def reset_stats(self):
        return self._backend.reset_stats()

    def servers(self):
        return self._backend.servers()

    def images(self):
        return self._backend.images()

    def kill_node(self, server_id):
        """Let an ACTIVE server stop answering SSH now, as the node-death
        knob would: its connections and commands are cut, new connections
        get no banner, it stays ACTIVE.  Returns its ``servers()`` entry.
        Raises ``localcloud.state.ApiError`` with ``status`` 404 (unknown
        server) or 409 (not ACTIVE, or not answering SSH anyway), in-process
        and through the admin endpoint alike."""
        from localcloud.cmd import AdminError
        from localcloud.state import ApiError
        try:
            return self._backend.kill_node(server_id)
        except AdminError as e:
            raise ApiError(e.status, str(e)) from None

    def revoke_tokens(self):
        return self._backend.revoke_tokens()

    def info(self):
        """API port, auth URL, region, ssh port, address range, outage."""
        return self._backend.info()

    def calls(self, key):
        """How often "METHOD /path/{template}" was called."""
        return self.stats()["calls"].get(key, 0)

    def spans(self):
        """{"METHOD /path/{template}": [(start, end), ...]} for every key
        called since the last reset_stats (see ``call_spans``)."""
        return self._backend.spans()

    def call_spans(self, key):
        """[(start, end), ...] of the newest calls of "METHOD
        /path/{template}" (at most the cloud's span-history), in start
        order: ``time.time()`` when the request reached the cloud (before
        api-latency) and when its answer was ready.  [] if never called."""
        return self._backend.spans(key).get(key, [])

    # clients, built only from the clouds.yaml values
    def session(self, **kwargs):
        from keystoneauth1 import session
        from keystoneauth1.identity import generic
        return session.Session(auth=generic.Password(**self.auth), **kwargs)

    def nova(self, version="2.1", session=None):
        from novaclient import client
        return client.Client(version, session=session or self.session(),
                             region_name=self.region_name)

    def glance(self, session=None):
        import glanceclient
        return glanceclient.Client("2", session=session or self.session(),
                                   region_name=self.region_name)

    def adapter(self, service_type, session=None, **kwargs):
        """A keystoneauth1 Adapter for one catalog service ("block-storage",
        "volumev3", "network", ...) on a real session: paths are relative to
        the catalog URL (``adapter("block-storage").get("/limits")``,
        ``adapter("network").get("/v2.0/ports")``)."""
        from keystoneauth1 import adapter
        kwargs.setdefault("interface", "public")
        return adapter.Adapter(session or self.session(),
                               service_type=service_type,
                               region_name=self.region_name, **kwargs)


class LocalClouds:
    """What ``local_clouds()`` yields."""

    def __init__(self, clouds_yaml, admin_url, handles, local=None, work=None):
        self.clouds_yaml = clouds_yaml
        self.admin_url = admin_url
        self.clouds = handles
        self.local = local          # the in-process LocalCloud, if any
        self.work_dir = work

    def __getitem__(self, name):
        return self.clouds[name]

    def __iter__(self):
        return iter(self.clouds.values())

    @property
    def names(self):
        return list(self.clouds)


def _handles(clouds_yaml, admin_url, backend_for):
    with open(clouds_yaml) as f:
        entries = yaml.safe_load(f)["clouds"]
    return {name: CloudHandle(name, entry, backend_for(name), admin_url)
            for name, entry in entries.items()}


@contextlib.contextmanager
def local_clouds(config=None, tmp_dir=None):
    """Start clouds in this process (threads); yields ``LocalClouds``."""
    from localcloud.server import LocalCloud

    data = prepare_config(config)
    base_dir = os.path.dirname(os.path.abspath(config)) \
        if isinstance(config, (str, os.PathLike)) else None
    cfg = config_mod.parse(data, "<test config>", base_dir=base_dir)
    work = tempfile.mkdtemp(prefix="localcloud-test-", dir=tmp_dir)
    local = LocalCloud(cfg, state_dir=os.path.join(work, "state"))
    try:
        local.start()
        clouds_yaml = os.path.join(work, "clouds.yaml")
        local.write_clouds_yaml(clouds_yaml)
        yield LocalClouds(clouds_yaml, local.admin_url,
                          _handles(clouds_yaml, local.admin_url,
                                   local.clouds.__getitem__),
                          local=local, work=work)
    finally:
        local.stop()
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def local_clouds_subprocess(config=None, tmp_dir=None, startup_timeout=30,
                            stop_timeout=30):
    """Run ``devstack-localcloud run`` as a child process; yields
    ``LocalClouds`` whose handles talk to its admin endpoint.  On exit the
    child gets SIGTERM and must exit 0 within ``stop_timeout``."""
    from localcloud.cmd import AdminClient

    data = prepare_config(config)
    work = tempfile.mkdtemp(prefix="localcloud-test-", dir=tmp_dir)
    config_path = os.path.join(work, "clouds-local.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(data, f)
    clouds_yaml = os.path.join(work, "clouds.yaml")
    ready = os.path.join(work, "ready.json")
    log_path = os.path.join(work, "localcloud.log")
    command = [sys.executable, "-m", "localcloud.cmd", "run",
               "--config", config_path, "--clouds-yaml", clouds_yaml,
               "--state-dir", os.path.join(work, "state"),
               "--ready-file", ready]
    log = open(log_path, "wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + startup_timeout
        while not os.path.exists(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("devstack-localcloud did not become ready "
                                   "(exit status %s):\n%s"
                                   % (proc.poll(), _tail(log_path)))
            time.sleep(0.05)
        with open(ready) as f:
            info = json.load(f)
        admin_url = info["admin_url"]
        result = LocalClouds(
            clouds_yaml, admin_url,
            _handles(clouds_yaml, admin_url,
                     lambda name: AdminClient(admin_url, name)),
            work=work)
        result.process = proc
        result.ready_info = info
        result.log_path = log_path
        yield result
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                log.close()
                raise RuntimeError("devstack-localcloud ignored SIGTERM:\n%s"
                                   % _tail(log_path))
        log.close()
        returncode = proc.returncode
        tail = _tail(log_path)
        shutil.rmtree(work, ignore_errors=True)
        if returncode not in (0, -signal.SIGTERM):
            raise RuntimeError("devstack-localcloud exited %s:\n%s"
                               % (returncode, tail))


def _tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


# -- call spans ------------------------------------------------------------------------


def max_overlap(spans):
    """The most spans open at one instant: 1 for calls made one after
    another, N for N calls that were all in flight together.  A span that
    starts exactly when another ends does not overlap it."""
    events = sorted([(end, -1) for _, end in spans] +
                    [(start, 1) for start, _ in spans])
    current = peak = 0
    for _, step in events:          # at equal times ends (-1) come first
        current += step
        peak = max(peak, current)
    return peak


def span_gaps(spans):
    """Seconds from each span's end to the next one's start, in start
    order (negative where they overlap): what a rate limit spaces apart."""
    spans = sorted(spans)
    return [b[0] - a[1] for a, b in zip(spans, spans[1:])]


# -- waiting and leak checks ----------------------------------------------------------


def _wait_for(get, what, ident, statuses, timeout, interval):
    """Poll get(ident) until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        resource = get(ident)
        if resource.status in statuses:
            return resource
        if time.monotonic() > deadline:
            raise TimeoutError("%s %s still %s after %ss"
                               % (what, ident, resource.status, timeout))
        time.sleep(interval)


def wait_for_server(nova, server_id, statuses=("ACTIVE", "ERROR"), timeout=10,
                    interval=0.05):
    """Poll ``nova.servers.get`` until the status is one of ``statuses``."""
    return _wait_for(nova.servers.get, "server", server_id, statuses, timeout, interval)


def wait_for_image(glance, image_id, statuses=("active", "killed"), timeout=10,
                   interval=0.05):
    """Poll ``glance.images.get`` until the status is one of ``statuses``."""
    return _wait_for(glance.images.get, "image", image_id, statuses, timeout, interval)


def listening_sockets():
    """{(address, port)} of every IPv4 TCP socket listening on this host."""
    result = set()
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state = fields[1], fields[3]
                if state != "0A":       # TCP_LISTEN
                    continue
                hex_addr, hex_port = local.split(":")
                octets = [str(int(hex_addr[i:i + 2], 16))
                          for i in (6, 4, 2, 0)]
                result.add((".".join(octets), int(hex_port, 16)))
    except OSError:
        pass
    return result


def child_processes(pid=None):
    """PIDs whose parent is ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may contain spaces: fields follow the last ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry))
    return children


# -- SSH helpers -------------------------------------------------------------------


class SSHKey:
    """A client key pair: paramiko key, public line, private key file."""

    def __init__(self, directory):
        import paramiko
        self.key = paramiko.ECDSAKey.generate(bits=256)
        self.public = "%s %s test@localcloud" % (self.key.get_name(),
                                                 self.key.get_base64())
        self.path = os.path.join(directory, "id_ecdsa")
        self.key.write_private_key_file(self.path)
        os.chmod(self.path, 0o600)


def ssh_connect(address, port, key, username="jenkins", timeout=5):
    import paramiko
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(address, port=port, username=username, pkey=key,
                   look_for_keys=False, allow_agent=False, timeout=timeout,
                   banner_timeout=timeout, auth_timeout=timeout)
    return client


def ssh_run(client, command):
    """(exit status, stdout, stderr) of one command."""
    _, stdout, stderr = client.exec_command(command, timeout=10)
    out, err = stdout.read().decode(), stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err

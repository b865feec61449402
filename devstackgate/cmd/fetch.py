"""devstack-vm-fetch: hand the next ready node of a label to this gate job.

Prints shell-sourceable NODE_*= lines on stdout (use: eval "$(devstack-vm-fetch.py LABEL)")
and one human line on stderr.  Imports no cloud client.

The fast path (a gate job waits on it): the plain options parsed here, the
configuration from the cache the last full load of the same file wrote
(devstackgate.config_cache), the claim on one connection (devstackgate.claim):
no argparse, YAML, validation, logging or vmdatabase.  Whatever it does not
take for sure (an option it does not know, --verbose, STATSD_HOST, no cache
entry that holds, a database error) goes the full way, with argparse and the
validated file, so every error reads as it always did.
"""

import os
import sys

from devstackgate import fetch
from devstackgate.cmd import common

PROG = 'devstack-vm-fetch'


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    code = _fast(argv)
    return _full(argv) if code is None else code


def _full(argv):
    p = common.parser(PROG, 'Claim the oldest ready node of LABEL for this gate job and print '
                      'NODE_PROVIDER=, NODE_NAME=, NODE_IP=, ... lines for eval.')
    p.add_argument('label', metavar='LABEL', help='the image label the job needs')
    p.add_argument('--provider', action='append', metavar='P',
                   help='only take a node from this provider (repeatable)')
    p.add_argument('--wait', type=float, default=0.0, metavar='SECONDS',
                   help='wait this long for a node to become ready (default: 0)')
    p.add_argument('--avoid', action='append', metavar='P', default=[],
                   help='take a node of this provider only when no other has one ready '
                        '(repeatable; the gate\'s retry after an infra failure)')

    def body(args, config):
        from devstackgate.config_cache import FetchConfig
        _fetch_and_print(FetchConfig.of(config), args.label, args.provider, args.wait,
                         avoid=args.avoid)

    return common.run(PROG, p, argv, body, check_clouds=False, cache=True)


def _fetch_and_print(config, label, providers, wait_for, avoid=()):
    node, result = fetch.fetch(config, label, providers=providers, wait_for=wait_for,
                               avoid=avoid)
    fetch.print_node(config, node, result)


def parse_plain(argv):
    """(config, label, providers, wait) for the plain options argparse would take the
    same way (--config, --provider, --wait, one LABEL); None for anything else."""
    config, label, providers, wait_for = None, None, None, 0.0
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith('-'):
            name, eq, value = arg.partition('=')
            if name not in ('--config', '--provider', '--wait'):
                return None         # --help, --verbose, an abbreviation, '--', ...
            if not eq:
                if i >= len(argv):
                    return None
                value = argv[i]
                i += 1
                if value.startswith('-'):
                    return None     # argparse's own rules for '-1' and the like
            if name == '--config':
                config = value
            elif name == '--provider':
                providers = (providers or []) + [value]
            else:
                try:
                    wait_for = float(value)
                except ValueError:
                    return None
        elif label is None:
            label = arg
        else:
            return None             # a second LABEL: argparse's error
    if label is None:
        return None
    return config, label, providers, wait_for


def _fast(argv):
    """The exit code of a fetch done the fast way, or None: do it the full way."""
    parsed = parse_plain(argv)
    if parsed is None or os.environ.get('STATSD_HOST', '').strip():
        return None
    from devstackgate import config_cache
    from devstackgate.errors import ConfigError
    config_path, label, providers, wait_for = parsed
    try:
        path = config_cache.find_config_path(config_path)
    except ConfigError:
        return None
    config = config_cache.load_view(path)
    if config is None:
        return None
    return common.guarded(PROG, lambda: _fetch_and_print(config, label, providers, wait_for))

"""What every top-level script shares: options, config loading, exit codes.

A script is a ``main(argv=None)`` that returns an exit code: 0 done, 1 failed
(one line saying why, naming the provider, label or node), 2 bad input (bad
configuration or usage), 130 interrupted.
"""

import argparse
import logging
import os
import signal
import sys

from devstackgate import config as configmod
from devstackgate import log
from devstackgate.errors import GateError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Terminated(BaseException):
    """SIGTERM (Jenkins aborting a build): unwinds like Ctrl-C so cleanup runs."""
    reason = 'interrupted'


def _terminate(signum, frame):
    raise Terminated()


def parser(prog, description):
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument('--config', metavar='PATH',
                   help='configuration file (default: $%s, else %s)'
                   % (configmod.CONFIG_ENV, ' or '.join(configmod.DEFAULT_CONFIG_PATHS)))
    p.add_argument('-v', '--verbose', action='store_true', help='log debug lines too')
    return p


def run(prog, p, argv, body, check_clouds=True):
    """Parse argv, set up logging, load and validate config, call body(args, config)."""
    try:
        args = p.parse_args(argv)
    except SystemExit as e:        # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    log.setup(verbose=args.verbose)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        config = configmod.load(args.config, check_clouds=check_clouds)
        code = body(args, config)
        return EXIT_OK if code is None else code
    except GateError as e:
        for line in e.lines():
            print('%s: %s' % (prog, line), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print('%s: interrupted' % prog, file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print('%s: terminated (SIGTERM)' % prog, file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
        logging.shutdown()


def write_atomically(path, text):
    """Write a file whole or not at all (a failed run never leaves half a page or job file)."""
    import tempfile     # not at the top: fetch, which writes nothing, starts without it
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix='.%s.' % os.path.basename(path))
    except OSError as e:
        raise UsageError('cannot write %s: %s' % (path, e.strerror or e))
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

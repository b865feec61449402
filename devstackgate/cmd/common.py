"""What every top-level script shares: options, config loading, exit codes.

A script is a ``main(argv=None)`` that returns an exit code: 0 done, 1 failed
(one line saying why, naming the provider, label or node), 2 bad input (bad
configuration or usage), 130 interrupted.
"""

import _signal      # not signal: its enums cost fetch's fast path ~2 ms; same calls
import os
import sys

from devstackgate.errors import GateError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Terminated(BaseException):
    """SIGTERM (Jenkins aborting a build): unwinds like Ctrl-C so cleanup runs."""
    reason = 'interrupted'


def _terminate(signum, frame):
    raise Terminated()


def parser(prog, description):
    import argparse     # here, as config: fetch's fast path parses its few options itself
    from devstackgate import config as configmod
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument('--config', metavar='PATH',
                   help='configuration file (default: $%s, else %s)'
                   % (configmod.CONFIG_ENV, ' or '.join(configmod.DEFAULT_CONFIG_PATHS)))
    p.add_argument('-v', '--verbose', action='store_true', help='log debug lines too')
    return p


def run(prog, p, argv, body, check_clouds=True, cache=False):
    """Parse argv, set up logging, load and validate config, call body(args, config)."""
    try:
        args = p.parse_args(argv)
    except SystemExit as e:        # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    from devstackgate import log
    log.setup(verbose=args.verbose)

    def load_and_run():
        from devstackgate import config as configmod
        config = configmod.load(args.config, check_clouds=check_clouds, cache=cache)
        return body(args, config)
    return guarded(prog, load_and_run)


def guarded(prog, fn):
    """fn() as a script's whole run: its exit code, and one line per error on stderr."""
    previous = _signal.signal(_signal.SIGTERM, _terminate)
    try:
        code = fn()
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
        return 128 + _signal.SIGTERM
    finally:
        _signal.signal(_signal.SIGTERM, previous)
        logging = sys.modules.get('logging')
        if logging is not None:     # never imported: nothing to flush
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

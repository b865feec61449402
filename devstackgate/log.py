"""Console logging: one timestamped line per step, on stderr.

Jenkins consoles are public and are how developers debug, so every line names
what it is about (provider, label, node) and never carries a secret.  The
libraries' own lines (paramiko's "Socket exception: Connection reset by peer"
while a node boots, the cloud clients' request logs) are not steps of ours:
they are demoted to debug, shown only with --verbose.

:func:`emit` writes one line in the very format of :func:`setup`'s handler
without the logging module, for fetch's fast path (a gate job's fetch that
goes well logs one line, and importing logging would cost it more than the
rest of its work).
"""

import sys
import time

FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'
DATE_FORMAT = '%Y-%m-%d %H:%M:%S'
LIBRARIES = ('keystoneauth', 'novaclient', 'glanceclient', 'paramiko', 'urllib3', 'stevedore',
             'iso8601', 'mysql.connector')

_configured = False


def libraries_filter(verbose):
    """On our handler: a library's record, whatever its level, is a debug line."""
    import logging

    class _Libraries(logging.Filter):
        def __init__(self, verbose):
            super().__init__()
            self.verbose = verbose

        def filter(self, record):
            if any(record.name == n or record.name.startswith(n + '.') for n in LIBRARIES):
                if not self.verbose:
                    return False
                record.levelno, record.levelname = logging.DEBUG, 'DEBUG'
            return True
    return _Libraries(verbose)


def setup(verbose=False, stream=None):
    global _configured
    import logging
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(libraries_filter(verbose))
    root.addHandler(handler)
    root.setLevel(level)
    for name in LIBRARIES:      # not even made into records unless asked for
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    _configured = True


def ensure_setup():
    """setup() unless this process has already done it (fetch's fast path, once it
    needs the logging of the modules it hands over to)."""
    if not _configured:
        setup()


def format_line(name, levelname, message, created=None):
    """One console line as setup()'s handler formats a record (no newline)."""
    created = time.time() if created is None else created
    return FORMAT % {'asctime': time.strftime(DATE_FORMAT, time.localtime(created)),
                     'levelname': levelname, 'name': name, 'message': message}


def emit(name, message, levelname='INFO', stream=None):
    """Write one INFO (or given level) line of logger `name`, as logging would."""
    stream = stream or sys.stderr
    stream.write(format_line(name, levelname, message) + '\n')
    stream.flush()


def utc(ts):
    """An epoch time as operators read it on a console: 2013-09-03 04:01 UTC."""
    import datetime
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        '%Y-%m-%d %H:%M UTC')

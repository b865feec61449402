"""Console logging: one timestamped line per step, on stderr.

Jenkins consoles are public and are how developers debug, so every line names
what it is about (provider, label, node) and never carries a secret.  The
libraries' own lines (paramiko's "Socket exception: Connection reset by peer"
while a node boots, the cloud clients' request logs) are not steps of ours:
they are demoted to debug, shown only with --verbose.
"""

import datetime
import logging
import sys

FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'
DATE_FORMAT = '%Y-%m-%d %H:%M:%S'
LIBRARIES = ('keystoneauth', 'novaclient', 'glanceclient', 'paramiko', 'urllib3', 'stevedore',
             'iso8601', 'mysql.connector')


class _Libraries(logging.Filter):
    """On our handler: a library's record, whatever its level, is a debug line."""

    def __init__(self, verbose):
        super().__init__()
        self.verbose = verbose

    def filter(self, record):
        if any(record.name == n or record.name.startswith(n + '.') for n in LIBRARIES):
            if not self.verbose:
                return False
            record.levelno, record.levelname = logging.DEBUG, 'DEBUG'
        return True


def setup(verbose=False, stream=None):
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(_Libraries(verbose))
    root.addHandler(handler)
    root.setLevel(level)
    for name in LIBRARIES:      # not even made into records unless asked for
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def utc(ts):
    """An epoch time as operators read it on a console: 2013-09-03 04:01 UTC."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        '%Y-%m-%d %H:%M UTC')

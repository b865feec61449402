"""Console logging: one timestamped line per step, on stderr.

Jenkins consoles are public and are how developers debug, so every line names
what it is about (provider, label, node) and never carries a secret.
"""

import logging
import sys

FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'
DATE_FORMAT = '%Y-%m-%d %H:%M:%S'


def setup(verbose=False, stream=None):
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # The cloud libraries log request details (and, at debug, headers) that
    # are not ours to print.
    for noisy in ('keystoneauth', 'novaclient', 'glanceclient', 'paramiko', 'urllib3',
                  'stevedore', 'iso8601'):
        logging.getLogger(noisy).setLevel(logging.WARNING)

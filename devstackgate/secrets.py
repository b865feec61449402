"""Files that hold passwords (clouds.yaml, a MySQL option file): warn when others can read them.

As ssh does for a private key, but a warning rather than a refusal: one line
through the logger, naming the file, once per file and process, where the
file is used.  Only regular files are looked at (OS_CLIENT_CONFIG_FILE=/dev/null
is not a secret), and a file that cannot be stat'ed is left to whoever opens it.
"""

import logging
import os
import stat

log = logging.getLogger('secrets')

_warned = set()


def warn_if_readable(path, what):
    """Log one warning if `path` (a `what`: 'clouds.yaml', 'MySQL option file') can be read by
    its group or by others.  Returns whether it warned."""
    if not path:
        return False
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode) or not mode & (stat.S_IRGRP | stat.S_IROTH):
        return False
    key = (st.st_dev, st.st_ino)
    if key in _warned:
        return False
    _warned.add(key)
    who = 'others' if mode & stat.S_IROTH else 'its group'
    log.warning('%s %s is readable by %s (mode %04o) and holds passwords: chmod 600 it',
                what, path, who, mode)
    return True

"""Turns in the kernel for the MySQL/MariaDB claims made from one machine.

Measured on 2 cores (bench/handout.py, 32 processes claiming back to back):
with every claimer in the server at once, a claim costs MariaDB 2 to 4 ms of
CPU, a third of it spinning on InnoDB's lock mutexes and much of the rest in
waking threads, against 0.55 ms for a claim alone; claims/s fell from about 950
to 500 as processes were added.  Letting only a few claims (``db-claim-slots``)
talk to the server at once, and the others sleep in flock() until a turn is
free, keeps the server's cost per claim near the lone one's.

A turn is one of `slots` files ``claims.N`` in devstack-gate's private cache
directory (``$DEVSTACK_GATE_CACHE_DIR``, else ``~/.cache/devstack-gate``, 0700:
where fetch keeps its configuration cache; the same for every job of the user,
whatever its $TMPDIR), held with an exclusive flock.  Turns are only an aid,
never a condition: the claim's own SQL is what makes a hand-out exact, so a
caller that gets no turn (the directory or a file cannot be made, a file that is
not the user's own, another thread, SIGALRM in use, the wait ran out) claims
without one.  Imports only C modules, devstackgate.config_cache and
devstackgate.sqlitequeue, which fetch's fast path has already.
"""

import fcntl
import os

from devstackgate import config_cache, sqlitequeue

PREFIX = 'claims.'


def directory(environ=None):
    """Where the turns' files are: devstack-gate's cache directory."""
    return config_cache.cache_dir(environ)


def _open(path):
    """A descriptor of turn file `path`, made if missing; None if it cannot be
    opened or is not ours (another user's file could be held to slow us)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid == os.getuid():
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def take(slots, timeout, where=None):
    """An open descriptor holding one of `slots` turns (close it with give_back()),
    or None: then claim without one (see the module's doc).  A caller finding
    every turn taken waits for one (picked by its pid) at most `timeout` s."""
    if slots <= 0:
        return None
    where = where or directory()
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
    except OSError:
        return None
    prefix = os.path.join(where, PREFIX)
    first = os.getpid() % slots         # callers spread over the turns as they wait
    ours = None
    for n in range(slots):
        fd = _open(prefix + str((first + n) % slots))
        if fd is None:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if ours is None:
                ours = fd               # the turn this caller waits for if all are taken
                continue
        except OSError:
            pass
        else:
            if ours is not None:
                os.close(ours)
            return fd
        os.close(fd)
    if ours is None:
        return None
    if timeout <= 0:
        os.close(ours)
        return None
    return sqlitequeue.wait(ours, timeout)


def give_back(fd):
    """Give back a turn from take() (None: nothing to do)."""
    sqlitequeue.leave(fd)

"""A queue in the kernel for the writers of one SQLite database.

SQLite's busy handler waits for a held write lock by sleeping 1, 2, 5, 10, 15,
20, 25 ... ms between tries, so a writer that finds the lock held a moment
before it is released still sleeps, and under many writers the waits pile up
(the handout benchmark: p99 20 ms at 200 claims/s from 32 processes, and
claims/s falling as processes were added).  A writer that first takes an
exclusive flock() on ``DATABASE-writers`` waits in the kernel instead, and is
woken the moment the previous writer is done.

The flock is only an aid: BEGIN IMMEDIATE under it still takes SQLite's own
lock (a writer that does not queue, an older devstack-gate or the sqlite3
shell, is still kept out by SQLite).  A blocking flock() can be bounded only by
a signal, so only the main thread queues, and only when SIGALRM is not in use;
any other writer, and one whose wait ran out, goes straight to SQLite's busy
handler as before.  Imports only C modules: fetch's fast path uses it too.
"""

import fcntl
import os
import signal

SUFFIX = '-writers'


class _Waited(Exception):
    """The wait for the queue ran out (SIGALRM)."""


def _expired(signum, frame):
    raise _Waited()


def enter(path, timeout):
    """An open descriptor holding the writers' flock of database `path` (close
    it to leave the queue), or None when this writer does not queue (another
    thread, SIGALRM in use, the file cannot be made, or `timeout` s passed)."""
    try:
        fd = os.open(path + SUFFIX, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd                           # nobody writing: no wait at all
    except BlockingIOError:
        pass
    except OSError:
        os.close(fd)
        return None
    if timeout <= 0 or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        os.close(fd)                        # someone else's timer: never touch it
        return None
    try:
        previous = signal.signal(signal.SIGALRM, _expired)
    except ValueError:                      # not the main thread
        os.close(fd)
        return None
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return fd
    except _Waited:         # (also if it fired just after the flock: then it is let go)
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


def leave(fd):
    """Leave the queue entered with enter() (None: nothing to do)."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass

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
handler as before.  Imports only C modules (``_signal``, not ``signal``, which
brings enum: ~10 ms of a fetch): fetch's fast path uses it too.
"""

import _signal as signal
import fcntl
import os

SUFFIX = '-writers'
LINE_SUFFIX = '-writers-line'


class _Waited(Exception):
    """The wait for the queue ran out (SIGALRM)."""


def _expired(signum, frame):
    raise _Waited()


def enter(path, timeout, length=2):
    """An open descriptor holding the writers' flock of database `path` (close
    it to leave the queue), or None when this writer does not queue (another
    thread, SIGALRM in use, the file cannot be made, `timeout` s passed, or
    `length` writers are waiting in the queue already).

    The queue is short on purpose: every writer it holds is woken at once when
    its turn comes, which is what cuts the waits under a moderate load; under a
    saturating one, many such writers woken promptly compete for the CPU with
    the one holding the lock (32 claimers back to back on 2 cores: a third fewer
    claims/s), so writers beyond `length` wait in SQLite's busy handler, asleep.
    """
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
    if length <= 0 or timeout <= 0 or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        os.close(fd)                        # someone else's timer: never touch it
        return None
    line = _place_in_line(path, length)
    if line is None:
        os.close(fd)
        return None
    try:
        return wait(fd, timeout)
    finally:
        os.close(line)                      # closing drops the place (a POSIX lock)


def _place_in_line(path, length):
    """A descriptor holding one of `length` places (a byte's POSIX lock in
    DATABASE-writers-line), or None if every place is taken."""
    try:
        line = os.open(path + LINE_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return None
    for place in range(length):
        try:
            fcntl.lockf(line, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, place)
            return line
        except OSError:
            continue
    os.close(line)
    return None


def wait(fd, timeout):
    """Block in flock(fd) for at most `timeout` s (SIGALRM): fd, or None (then fd
    is closed).  Only the main thread can wait, and only while no one else's
    timer is set (None at once otherwise: their SIGALRM is never touched)."""
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        os.close(fd)
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

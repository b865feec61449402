"""The SQLite writers' queue in the kernel (devstackgate.sqlitequeue)."""

import multiprocessing
import signal
import threading
import time

import pytest

import vmdatabase
from devstackgate import sqlitequeue


def _hold(path, seconds, ready):
    fd = sqlitequeue.enter(path, 5)
    ready.set()
    time.sleep(seconds)
    sqlitequeue.leave(fd)


def holder(path, seconds):
    """Another process in the queue for `seconds`; returns it once it is in."""
    ctx = multiprocessing.get_context('fork')
    ready = ctx.Event()
    p = ctx.Process(target=_hold, args=(path, seconds, ready))
    p.start()
    assert ready.wait(10)
    return p


def test_a_free_queue_is_entered_at_once_and_left_by_closing(tmp_path):
    path = str(tmp_path / 'pool.db')
    fd = sqlitequeue.enter(path, 1)
    assert fd is not None and (tmp_path / 'pool.db-writers').exists()
    sqlitequeue.leave(fd)
    again = sqlitequeue.enter(path, 1)      # left: free again
    assert again is not None
    sqlitequeue.leave(again)
    sqlitequeue.leave(None)                 # nothing to do


def test_a_writer_waits_for_the_one_before_it_and_goes_when_it_leaves(tmp_path):
    path = str(tmp_path / 'pool.db')
    p = holder(path, 0.5)
    started = time.monotonic()
    fd = sqlitequeue.enter(path, 10)
    waited = time.monotonic() - started
    assert fd is not None and 0.3 < waited < 5
    sqlitequeue.leave(fd)
    p.join(10)


def test_a_wait_ends_at_its_timeout_and_leaves_sigalrm_as_it_was(tmp_path):
    path = str(tmp_path / 'pool.db')
    p = holder(path, 3)
    seen = []
    mine = signal.signal(signal.SIGALRM, lambda *a: seen.append('mine'))
    try:
        started = time.monotonic()
        assert sqlitequeue.enter(path, 0.3) is None
        assert 0.25 < time.monotonic() - started < 2
        assert signal.getsignal(signal.SIGALRM) is not None
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        signal.raise_signal(signal.SIGALRM)
        assert seen == ['mine']             # the caller's handler is back
    finally:
        signal.signal(signal.SIGALRM, mine)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    p.join(10)


def test_someone_elses_timer_and_other_threads_do_not_queue(tmp_path):
    path = str(tmp_path / 'pool.db')
    p = holder(path, 3)
    previous = signal.signal(signal.SIGALRM, lambda *a: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        started = time.monotonic()
        assert sqlitequeue.enter(path, 5) is None
        assert time.monotonic() - started < 1
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 25    # untouched
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    got = []
    t = threading.Thread(target=lambda: got.append(sqlitequeue.enter(path, 5)))
    started = time.monotonic()
    t.start()
    t.join(10)
    assert got == [None] and time.monotonic() - started < 1
    p.join(10)


def test_a_session_waits_in_the_queue_and_then_writes(tmp_path):
    url = 'sqlite:///%s' % (tmp_path / 'pool.db')
    db = vmdatabase.Database(url, lock_timeout=10).upgrade()
    p = holder(str(tmp_path / 'pool.db'), 0.5)
    started = time.monotonic()
    with db.session() as s:
        s.create_node('rax', 'precise', state='ready', name='n0')
    assert time.monotonic() - started > 0.3
    with db.session() as s:
        assert [n.name for n in s.nodes()] == ['n0']
    p.join(10)


def test_a_writer_that_does_not_queue_is_still_kept_out_by_sqlite(tmp_path):
    """The queue is only an aid: a writer outside it (another thread here) still
    waits for SQLite's own lock, so the two never write at once."""
    url = 'sqlite:///%s' % (tmp_path / 'pool.db')
    db = vmdatabase.Database(url, lock_timeout=10).upgrade()
    inside = threading.Event()
    order = []

    def other():
        with vmdatabase.Database(url, lock_timeout=10).session() as s:
            inside.set()
            s.create_node('rax', 'precise', name='first')
            time.sleep(0.3)
            order.append('first')
    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(10)
    with db.session() as s:
        order.append('second')
        s.create_node('rax', 'precise', name='second')
    t.join(10)
    assert order == ['first', 'second']


def _wait_in_line(path, ready, done):
    ready.set()
    fd = sqlitequeue.enter(path, 10, 1)
    done.set()
    sqlitequeue.leave(fd)


def test_writers_beyond_the_queue_length_do_not_wait_in_it(tmp_path):
    """Only `length` writers wait in the kernel; the next goes to SQLite's busy
    handler at once (None), so a saturating load does not wake them all."""
    path = str(tmp_path / 'pool.db')
    p = holder(path, 2)
    ctx = multiprocessing.get_context('fork')
    ready, done = ctx.Event(), ctx.Event()
    waiter = ctx.Process(target=_wait_in_line, args=(path, ready, done))
    waiter.start()
    assert ready.wait(10)
    time.sleep(0.3)                         # the waiter has its place by now
    started = time.monotonic()
    assert sqlitequeue.enter(path, 5, 1) is None
    assert time.monotonic() - started < 1
    assert not done.is_set()                # still waiting in its place
    waiter.join(10)
    assert done.is_set()                    # and went when the holder left
    p.join(10)
    fd = sqlitequeue.enter(path, 5, 0)       # free: taken at once, whatever the length
    assert fd is not None
    sqlitequeue.leave(fd)


def test_a_processs_writers_take_turns_and_a_wait_is_bounded(tmp_path):
    """Threads of one process writing together all get through, one at a time;
    a writer that waits past db-lock-timeout for a sibling is told the database
    is busy, naming why."""
    from devstackgate.errors import DatabaseBusy
    url = 'sqlite:///%s' % (tmp_path / 'pool.db')
    db = vmdatabase.Database(url, lock_timeout=0.5, retries=1).upgrade()
    inside, most = [0], [0]
    guard = threading.Lock()

    def write(i):
        def tx(s):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            s.create_node('rax', 'precise', name='n%d' % i)
            time.sleep(0.01)
            with guard:
                inside[0] -= 1
        db.transact(tx)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with db.session() as s:
        assert len(s.nodes()) == 8
    assert most[0] == 1
    held = threading.Event()
    release = threading.Event()

    def hold():
        with db.session():
            held.set()
            release.wait(10)
    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(10)
    try:
        with pytest.raises(DatabaseBusy) as e:
            with db.session():
                pass
        assert "this process's other writers" in str(e.value)
    finally:
        release.set()
        t.join(10)

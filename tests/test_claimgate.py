"""Turns in the kernel for the MySQL claims of one machine (devstackgate.claimgate)."""

import multiprocessing
import os
import threading
import time

from devstackgate import claimgate


def _hold(where, slots, seconds, ready):
    fd = claimgate.take(slots, 5, where)
    ready.set()
    time.sleep(seconds)
    claimgate.give_back(fd)


def holders(where, slots, count, seconds):
    """`count` other processes each holding a turn for `seconds`."""
    ctx = multiprocessing.get_context('fork')
    procs = []
    for _ in range(count):
        ready = ctx.Event()
        p = ctx.Process(target=_hold, args=(where, slots, seconds, ready))
        p.start()
        assert ready.wait(10)
        procs.append(p)
    return procs


def test_free_turns_are_taken_at_once_and_given_back_by_closing(tmp_path):
    where = str(tmp_path)
    first = claimgate.take(2, 1, where)
    second = claimgate.take(2, 1, where)
    assert first is not None and second is not None
    names = sorted(os.listdir(where))
    assert names == ['claims.0', 'claims.1']
    assert all(os.stat(os.path.join(where, n)).st_mode & 0o077 == 0 for n in names)
    claimgate.give_back(first)
    claimgate.give_back(second)
    claimgate.give_back(None)
    again = claimgate.take(2, 1, where)
    assert again is not None
    claimgate.give_back(again)


def test_with_every_turn_taken_a_claim_waits_for_one_to_be_given_back(tmp_path):
    where = str(tmp_path)
    procs = holders(where, 2, 2, 0.5)
    started = time.monotonic()
    fd = claimgate.take(2, 10, where)
    waited = time.monotonic() - started
    assert fd is not None and 0.3 < waited < 5
    claimgate.give_back(fd)
    for p in procs:
        p.join(10)


def test_the_wait_for_a_turn_is_bounded_and_then_the_claim_goes_without(tmp_path):
    where = str(tmp_path)
    procs = holders(where, 1, 1, 3)
    started = time.monotonic()
    assert claimgate.take(1, 0.3, where) is None
    assert time.monotonic() - started < 2
    assert claimgate.take(1, 0, where) is None          # no wait at all
    for p in procs:
        p.join(10)


def test_no_turns_no_file_and_no_wait(tmp_path):
    assert claimgate.take(0, 5, str(tmp_path)) is None
    assert os.listdir(str(tmp_path)) == []


def test_a_missing_directory_is_made_private(tmp_path):
    where = tmp_path / 'cache' / 'devstack-gate'
    fd = claimgate.take(1, 1, str(where))
    assert fd is not None and where.stat().st_mode & 0o777 == 0o700
    claimgate.give_back(fd)


def test_another_thread_never_waits(tmp_path):
    where = str(tmp_path)
    procs = holders(where, 1, 1, 3)
    got = []
    started = time.monotonic()
    t = threading.Thread(target=lambda: got.append(claimgate.take(1, 5, where)))
    t.start()
    t.join(10)
    assert got == [None] and time.monotonic() - started < 2
    for p in procs:
        p.join(10)


def test_a_file_that_is_not_ours_or_a_link_is_never_used(tmp_path):
    where = str(tmp_path)
    target = tmp_path / 'elsewhere'
    target.write_text('')
    os.symlink(str(target), os.path.join(where, claimgate.PREFIX + '0'))
    assert claimgate.take(1, 1, where) is None          # O_NOFOLLOW: not followed
    if os.getuid() == 0:
        other = os.path.join(where, claimgate.PREFIX + '1')
        open(other, 'w').close()
        os.chown(other, 65534, 65534)
        # Turn 0 is the link; turn 1 belongs to someone else: no turn at all.
        assert claimgate.take(2, 1, where) is None


def test_the_files_are_in_the_private_cache_directory_whatever_tmpdir_says():
    assert claimgate.directory({'DEVSTACK_GATE_CACHE_DIR': '/c', 'TMPDIR': '/t'}) == '/c'
    assert claimgate.directory({'XDG_CACHE_HOME': '/x', 'TMPDIR': '/t'}) == (
        '/x/devstack-gate')

"""Fetch's claim (claim.FastDatabase) as a long-lived caller uses it: its kept
connection, forks, and the turns its MySQL claims take (devstackgate.claimgate)."""

import multiprocessing
import os
import sqlite3
import time

import pytest

import vmdatabase
from devstackgate import claim, claimgate
from devstackgate import config as configmod
from devstackgate import config_cache
from tests.test_claim import check_each_node_once, claimers, make_ready_nodes

CLAIMERS = 12
READY_NODES = 120


def fast(url, **settings):
    """A FastDatabase at the default settings but `settings`."""
    view = {name: configmod.GLOBAL_KEYS[name.replace('_', '-')].default
            for name in config_cache.SETTINGS}
    view.update(settings, database=url, providers=())
    return claim.FastDatabase(config_cache.FetchConfig('test', view))


@pytest.fixture
def turns(tmp_path, monkeypatch):
    """Claims of this test take their turns in a directory of its own."""
    where = str(tmp_path / 'turns')
    os.mkdir(where)
    monkeypatch.setenv('DEVSTACK_GATE_CACHE_DIR', where)
    return where


def _claimer(url, slots, index, queue):
    db = fast(url, db_claim_slots=slots)
    mine = []
    while True:
        node, _ = db.claim_node('precise', 'claimer-%d' % index)
        if node is None:
            break
        assert node.claimed_by == 'claimer-%d' % index
        mine.append(node.id)
    queue.put((index, mine, db._full is not None))


@pytest.mark.parametrize('slots', [2, 0])
def test_concurrent_fast_claims_hand_out_each_node_once(db_url, turns, slots):
    db = vmdatabase.Database(db_url).upgrade()
    make_ready_nodes(db, READY_NODES)
    got = claimers(_claimer, (db_url, slots), CLAIMERS)
    assert not any(fell for _, _, fell in got), 'a claimer fell back to vmdatabase'
    check_each_node_once(db, {i: ids for i, ids, _ in got})


def test_the_connection_is_kept_from_one_claim_to_the_next(db_url, turns):
    db = vmdatabase.Database(db_url).upgrade()
    make_ready_nodes(db, 3)
    f = fast(db_url)
    first, _ = f.claim_node('precise', 'me')
    conn = f._conn
    second, _ = f.claim_node('precise', 'me')
    assert conn is not None and f._conn is conn and f._full is None
    assert (first.name, second.name) == ('n0', 'n1')        # oldest first
    assert f.node_counts('precise') == {('hp', 'ready'): 1, ('hp', 'used'): 1,
                                        ('rax', 'used'): 1}
    f.close()
    assert f._conn is None
    third, _ = f.claim_node('precise', 'me')                # a new one, when needed
    assert third.name == 'n2' and f._conn is not None


def _child_claims(f, queue):
    node, _ = f.claim_node('precise', 'child')
    queue.put((node.name, id(f._conn), f._full is not None))


def test_a_forked_child_claims_on_a_connection_of_its_own(db_url, turns):
    db = vmdatabase.Database(db_url).upgrade()
    make_ready_nodes(db, 3)
    f = fast(db_url)
    f.claim_node('precise', 'parent')
    parents = f._conn
    ctx = multiprocessing.get_context('fork')
    queue = ctx.Queue()
    p = ctx.Process(target=_child_claims, args=(f, queue))
    p.start()
    name, child_conn, fell_back = queue.get(timeout=60)
    p.join(30)
    assert p.exitcode == 0 and name == 'n1' and not fell_back
    if f.backend == 'sqlite':
        # Closed before the fork, so no child ever had a copy of it.
        assert f._conn is None
        with pytest.raises(sqlite3.ProgrammingError):
            parents.execute('SELECT 1')
    else:
        assert f._conn is parents and child_conn != id(parents)
    node, _ = f.claim_node('precise', 'parent')             # the parent's still works
    assert node.name == 'n2' and f._full is None


def _hold_turn(where, seconds, ready):
    os.environ['DEVSTACK_GATE_CACHE_DIR'] = where
    fd = claimgate.take(1, 5)
    ready.set()
    time.sleep(seconds)
    claimgate.give_back(fd)


def test_a_mysql_claim_waits_for_a_turn_then_goes_without_one(mysql_url, turns):
    db = vmdatabase.Database(mysql_url).upgrade()
    make_ready_nodes(db, 3)
    ctx = multiprocessing.get_context('fork')
    ready = ctx.Event()
    p = ctx.Process(target=_hold_turn, args=(turns, 2.0, ready))
    p.start()
    assert ready.wait(10)
    started = time.monotonic()
    waiting = fast(mysql_url, db_claim_slots=1, db_claim_slot_wait=0.5)
    node, _ = waiting.claim_node('precise', 'me')
    took = time.monotonic() - started
    # It waited out its turn's bound, then claimed without one, exactly once.
    assert node is not None and 0.4 < took < 1.8 and waiting._full is None
    p.join(10)
    started = time.monotonic()
    node, _ = waiting.claim_node('precise', 'me')           # turns free again: no wait
    assert node is not None and time.monotonic() - started < 0.4
    assert sorted(os.listdir(turns)) == ['claims.0']


def test_sqlite_claims_take_no_turns(sqlite_url, turns):
    db = vmdatabase.Database(sqlite_url).upgrade()
    make_ready_nodes(db, 1)
    node, _ = fast(sqlite_url).claim_node('precise', 'me')
    assert node is not None and os.listdir(turns) == []



def test_a_fetch_closes_the_connection_it_opened(db_url, turns, tmp_path, monkeypatch):
    from devstackgate import fetch
    from tests.test_fetch import write_config
    db = vmdatabase.Database(db_url).upgrade()
    make_ready_nodes(db, 1)
    closed = []
    real_close = claim.FastDatabase.close

    def close(self):
        closed.append(self._conn is not None)     # it had one open, and closes it
        real_close(self)
        assert self._conn is None
    monkeypatch.setattr(claim.FastDatabase, 'close', close)
    node, row = fetch.fetch(configmod.load(str(write_config(tmp_path, db_url)),
                                           check_clouds=False), 'precise')
    assert node.name == 'n0' and row.id and closed == [True]

"""Leases on real databases (both backends): exactly one holder, expiry, takeover, loss, release."""

import dataclasses
import threading
import time

import pytest

import vmdatabase
from devstackgate import config as configmod, lease as leasemod


def make(db, stage='launch', ttl=2.0, fraction=0.25, scope=leasemod.LAUNCH, provider='rax'):
    return leasemod.Lease(db, provider, scope, stage, ttl, fraction)


def row(db, provider='rax', scope=leasemod.LAUNCH):
    rows = db.transact(lambda s: s.leases(provider=provider))
    return next((r for r in rows if r.scope == scope), None)


def test_the_schema_has_the_leases_table(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    assert db.version() == vmdatabase.schema_version() == 9
    assert db.transact(lambda s: s.leases()) == []
    # The database's clock, in epoch seconds, close to ours.
    assert abs(db.transact(lambda s: s.db_now()) - time.time()) < 5


def test_of_many_runs_at_once_exactly_one_takes_the_lease(db_url):
    vmdatabase.Database(db_url).upgrade()
    leases = [make(vmdatabase.Database(db_url)) for _ in range(8)]
    start = threading.Barrier(len(leases))
    results = [None] * len(leases)

    def attempt(i):
        start.wait()
        results[i] = leases[i].try_acquire()[0]
    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(leases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results.count(True) == 1, results
    winner = leases[results.index(True)]
    assert row(winner.db).token == winner.token


def test_a_held_lease_names_its_holder_and_is_free_once_released(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    first = make(db, ttl=30).acquire(wait=0)
    second = make(db, ttl=30)
    started = time.monotonic()
    with pytest.raises(leasemod.LeaseHeld) as e:
        second.acquire(wait=0.5, poll=0.1)
    assert 0.5 <= time.monotonic() - started < 5
    text = str(e.value)
    assert e.value.exit_code == 0
    assert text.startswith('provider rax: skipped: lease launch is held by host %s pid %d '
                           '(launch) until ' % (first.host, first.pid)), text
    assert 'UTC' in text and 'that run is doing this work' in text
    # Another stage's lease, or another provider's, is another lease.
    make(db, scope=leasemod.REAP, stage='reap').acquire(wait=0).release()
    make(db, provider='hp').acquire(wait=0).release()
    assert first.release()
    assert row(db).token is None and row(db).host == first.host     # who held it last
    second.acquire(wait=0)
    assert row(db).token == second.token
    second.release()


def test_a_waiting_run_takes_the_lease_when_the_holder_releases_it(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    first = make(db, ttl=30).acquire(wait=0)
    threading.Timer(0.5, first.release).start()
    second = make(db, ttl=30).acquire(wait=10, poll=0.1)
    assert second.ok() and row(db).token == second.token
    second.release()


def test_the_heartbeat_keeps_it_past_its_ttl_and_release_stops_it(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    holder = make(db, ttl=1.0).acquire(wait=0)
    time.sleep(2.0)
    assert holder.ok()
    assert row(db).renewals >= 3
    assert not make(db).try_acquire()[0]
    holder.release()
    assert not holder._thread.is_alive()
    assert make(db).try_acquire()[0]


def test_an_expired_lease_is_taken_over_and_its_old_holder_stops(db_url, caplog):
    db = vmdatabase.Database(db_url).upgrade()
    killed = make(db, ttl=1.0)
    assert killed.try_acquire()[0]          # no heartbeat: as if SIGKILLed
    assert not make(db).try_acquire()[0]
    time.sleep(1.2)
    new = make(db, ttl=30)
    with caplog.at_level('WARNING', logger='lease'):
        assert new.try_acquire()[0]
    assert 'taken over from host %s pid %d (launch), whose lease expired at' % (
        killed.host, killed.pid) in caplog.text
    # The old holder's renewal finds it taken, and it stops.
    assert not killed.renew()
    assert not killed.ok()
    assert killed.lost.startswith('taken by host %s pid %d (launch), until ' % (new.host, new.pid))
    with pytest.raises(leasemod.LeaseLost) as e:
        killed.check()
    assert str(e.value).startswith('provider rax: lease launch lost (taken by host ')
    assert str(e.value).endswith('); stopped starting new work')
    # Its release does not free the new holder's lease.
    assert not killed.release()
    assert row(db).token == new.token
    new.release()


def test_a_holder_whose_lease_is_taken_stops_within_a_renewal(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    holder = make(db, ttl=1.0).acquire(wait=0)
    with db.session() as s:         # another run took it (say, after a long stall of ours)
        s._execute('UPDATE leases SET token = ?, host = ?, pid = ? WHERE provider = ?',
                   ['other', 'elsewhere', 1, 'rax'])
    deadline = time.monotonic() + 3
    while holder.ok() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not holder.ok()
    assert holder.lost.startswith('taken by host elsewhere pid 1 (launch)')
    holder.release()
    assert row(db).token == 'other'


def test_a_holder_that_cannot_renew_stops_once_its_ttl_is_up(sqlite_url, tmp_path):
    db = vmdatabase.Database(sqlite_url).upgrade()
    holder = make(db, ttl=1.0).acquire(wait=0)
    # From now on the holder's database answers with an error (no schema there).
    holder.db = vmdatabase.Database('sqlite:///%s' % (tmp_path / 'elsewhere.db'))
    time.sleep(0.6)
    assert holder.ok()                      # not yet: a renewal may still succeed
    deadline = time.monotonic() + 3
    while holder.ok() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not holder.ok()
    assert 'no devstack-gate schema' in holder.lost or 'not renewed' in holder.lost
    assert not holder.release()             # cannot: it expires by itself
    time.sleep(0.5)
    assert make(db).try_acquire()[0]


def test_held_releases_on_normal_exit_and_on_error(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    config = configmod.validate({'database': db_url, 'lease-ttl': 5, 'providers': [
        {'name': 'rax', 'cloud': 'rax', 'images': [{'name': 'precise', 'base-image': 'x'}]}]},
        'test.yaml', check_clouds=False)
    assert (config.lease_ttl, config.lease_wait, config.lease_renew_fraction,
            config.lease_poll) == (5, 60, 0.25, 1)
    with leasemod.held(config, db, 'rax', leasemod.REAP, 'reap') as lease:
        assert row(db, scope=leasemod.REAP).token == lease.token
    assert row(db, scope=leasemod.REAP).token is None
    with pytest.raises(RuntimeError):
        with leasemod.held(config, db, 'rax', leasemod.REAP, 'reap'):
            raise RuntimeError('a bug')
    assert row(db, scope=leasemod.REAP).token is None
    # A run that finds it held throughout lease-wait skips.
    other = make(db, scope=leasemod.REAP, stage='reap', ttl=30).acquire(wait=0)
    with pytest.raises(leasemod.LeaseHeld):
        with leasemod.held(dataclasses.replace(config, lease_wait=0.2, lease_poll=0.05), db,
                           'rax', leasemod.REAP, 'reap'):
            raise AssertionError('must not run')
    other.release()

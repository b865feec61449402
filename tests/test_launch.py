"""devstack-vm-launch against two local clouds, through the real clients, SSH and a real database."""

import dataclasses
import re
import signal
import socket
import time

import pytest

from tests.pool import Pool, cloud_config, make_base_dir, provider



def leases(pool, provider='rax'):
    return pool.db.transact(lambda s: s.leases(provider=provider))


def two_providers(tmp_path, clouds_for, db_url, rax=None, hp=None, **settings):
    base = make_base_dir(tmp_path)
    clouds = clouds_for(cloud_config('rax', base, **(rax or {})),
                        cloud_config('hp', base, **(hp or {})))
    pool = Pool(tmp_path, clouds, db_url, [provider('rax'), provider('hp')], **settings)
    pool.seed_base_images('rax', 'precise')
    pool.seed_base_images('hp', 'precise')
    return pool


def test_fills_both_providers_to_min_ready(tmp_path, clouds_for, db_url):
    pool = two_providers(tmp_path, clouds_for, db_url)
    for name in ('rax', 'hp'):
        proc = pool.run('devstack-vm-launch.py', name)
        assert proc.returncode == 0, proc.stderr
        assert '%s precise: ready 2, building 0, launched 2, failed 0' % name in proc.stderr
        assert 'building -> ready after' in proc.stderr
    nodes = pool.nodes()
    assert sorted((n.provider, n.state) for n in nodes) == [
        ('hp', 'ready'), ('hp', 'ready'), ('rax', 'ready'), ('rax', 'ready')]
    for name in ('rax', 'hp'):
        servers = {s['id']: s for s in pool.live_servers(name)}
        mine = [n for n in nodes if n.provider == name]
        assert sorted(servers) == sorted(n.external_id for n in mine)
        for n in mine:
            server = servers[n.external_id]
            # The recorded facts are the cloud's: address, host key, metadata, name.
            assert n.ip == server['address'] and n.host_key in server['host_keys']
            assert server['metadata']['dg-node-id'] == str(n.id)
            assert server['metadata']['dg-provider'] == name
            assert server['name'] == n.name == 'dg-precise-%s-%d' % (name, n.id)
            assert server['flavor'] == '1'   # the smallest with >= 512 MB
    # A second run with a full pool boots nothing.
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0 and 'launching nothing' in proc.stderr
    assert len(pool.live_servers('rax')) == 2


def test_a_bad_image_night_demote_then_pause_still_fills_the_pool(tmp_path, clouds_for, db_url):
    """Seed 004: demote the bad image, pause the label's builds (in the configuration and in
    the database); launch keeps the label topped up from the previous image, because a
    pause stops image builds only."""
    pool = two_providers(tmp_path, clouds_for, db_url)
    (good,) = pool.db.transact(lambda s: s.images(provider='rax'))
    bad = pool.seed_base_images('rax', 'precise')
    proc = pool.run('devstack-gate.py', 'image-demote', 'rax', 'precise')
    assert proc.returncode == 0, proc.stderr
    assert 'current image is now %s' % good.name in proc.stderr
    proc = pool.run('devstack-gate.py', 'image-pause', 'precise', '--reason', 'bad image night')
    assert proc.returncode == 0, proc.stderr
    pool.data['providers'][0]['images'][0]['paused'] = True
    pool.write()
    for name in ('rax', 'hp'):
        proc = pool.run('devstack-vm-launch.py', name)
        assert proc.returncode == 0, proc.stderr
        assert '%s precise: ready 2, building 0, launched 2, failed 0' % name in proc.stderr
    rax = pool.nodes(provider='rax', state='ready')
    assert len(rax) == 2 and {n.image_id for n in rax} == {good.id} != {bad.id}
    assert len(pool.nodes(provider='hp', state='ready')) == 2
    # The pause still stops the builds.
    from devstackgate import cells, config as configmod
    cfg = configmod.load(pool.config_path, check_clouds=False)
    assert set(cells.paused(cfg, cfg.provider('rax'), pool.db)) == {'precise'}
    assert cells.paused(cfg, cfg.provider('hp'), pool.db)['precise'].endswith(
        'for all providers: bad image night')


def test_a_disabled_label_is_not_launched(tmp_path, clouds_for, sqlite_url):
    pool = two_providers(tmp_path, clouds_for, sqlite_url)
    proc = pool.run('devstack-gate.py', 'label-disable', 'precise', '--reason', 'known red')
    assert proc.returncode == 0, proc.stderr
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert 'rax precise: disabled by' in proc.stderr and 'known red; not launching' in proc.stderr
    assert pool.nodes() == []


def test_max_servers_counts_everything_the_provider_holds(tmp_path, clouds_for, db_url):
    pool = two_providers(tmp_path, clouds_for, db_url)
    pool.data['providers'][0]['max-servers'] = 3
    pool.data['providers'][0]['images'][0]['min-ready'] = 5
    pool.write()
    # A held node counts against max-servers too.
    pool.db.transact(lambda s: s.create_node('rax', 'precise', state='hold'))
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert 'max-servers 3 reached: 2 of 5 wanted' in proc.stderr
    assert len(pool.live_servers('rax')) == 2
    assert len(pool.nodes(provider='rax', state='ready')) == 2


@pytest.mark.parametrize('fault,reason', [
    ({'boot-error-rate': 1.0}, 'error'),
    ({'no-network-rate': 1.0}, 'no-network'),
    ({'stuck-build-rate': 1.0}, 'timeout'),
])
def test_faults_never_give_a_ready_node(tmp_path, clouds_for, sqlite_url, fault, reason):
    pool = two_providers(tmp_path, clouds_for, sqlite_url, rax={'faults': fault})
    pool.data['providers'][0]['boot-timeout'] = 3
    pool.write()
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 1
    assert 'every node finished in this run failed (2)' in proc.stderr
    assert 'failed (%s)' % reason in proc.stderr
    nodes = pool.nodes(provider='rax')
    assert [(n.state, n.fail_reason) for n in nodes] == [('delete', reason)] * 2
    # The servers were deleted, not left running.
    assert pool.live_servers('rax') == []


def test_quota_is_recognised_and_not_retried(tmp_path, clouds_for, sqlite_url):
    pool = two_providers(tmp_path, clouds_for, sqlite_url,
                         rax={'faults': {'quota': {'instances': 1}}})
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr   # one node became ready
    assert 'boot failed (quota)' in proc.stderr
    states = sorted((n.state, n.fail_reason) for n in pool.nodes(provider='rax'))
    assert states == [('delete', 'quota'), ('ready', None)]
    creates = pool.clouds['rax'].calls('POST /compute/v2.1/servers')
    assert creates == 2, 'a quota error must not be retried'
    assert len(pool.live_servers('rax')) == 1


def test_one_provider_down_does_not_stop_the_other(tmp_path, clouds_for, sqlite_url):
    pool = two_providers(tmp_path, clouds_for, sqlite_url)
    pool.data['providers'][0]['api-timeout'] = 2
    pool.write()
    pool.clouds['rax'].set_faults(outage=True)
    down = pool.popen('devstack-vm-launch.py', 'rax')
    up = pool.run('devstack-vm-launch.py', 'hp')
    out, err = down.communicate(timeout=120)
    assert up.returncode == 0, up.stderr
    assert len(pool.nodes(provider='hp', state='ready')) == 2
    assert down.returncode == 1
    last = err.strip().splitlines()[-1]
    # Retries stop at api-retries or at the api-timeout deadline, whichever comes first.
    assert re.fullmatch(r'devstack-vm-launch: provider rax: list servers: identity API '
                        r'unavailable \(version discovery failed\) \(gave up after [1-6] attempts\)',
                        last), last
    assert pool.nodes(provider='rax') == []
    assert [(l.scope, l.token) for l in leases(pool)] == [('launch', None)]   # released


def test_killed_run_is_finished_by_the_next_with_nothing_leaked(tmp_path, clouds_for, db_url):
    pool = two_providers(tmp_path, clouds_for, db_url, rax={'faults': {'boot-delay': 3}},
                         **{'lease-ttl': 2})
    killed = pool.popen('devstack-vm-launch.py', 'rax')
    pool.wait_for(lambda: len([n for n in pool.nodes(provider='rax') if n.external_id]) == 2,
                  what='both servers recorded')
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    killed_at = time.monotonic()
    assert [n.state for n in pool.nodes(provider='rax')] == ['building', 'building']
    (old,) = leases(pool)
    assert (old.pid, old.stage, old.host) == (killed.pid, 'launch', socket.gethostname())
    proc = pool.popen('devstack-vm-launch.py', 'rax')
    # The killed run's lease holds the next run back for at most lease-ttl.
    pool.wait_for(lambda: leases(pool)[0].token not in (old.token, None), timeout=10,
                  interval=0.05, what='the lease taken over')
    assert time.monotonic() - killed_at < 2 + 1.5
    out, err = proc.communicate(timeout=120)
    proc.stderr = err
    assert proc.returncode == 0, proc.stderr
    assert 'lease launch of provider rax is held by host %s pid %d (launch)' % (
        old.host, old.pid) in err
    assert ('lease launch of provider rax: taken over from host %s pid %d (launch), whose lease '
            'expired at ' % (old.host, old.pid)) in err
    assert leases(pool)[0].token is None            # released at the end
    assert proc.stderr.count('still building from an earlier run') == 2
    nodes = pool.nodes(provider='rax')
    assert [n.state for n in nodes] == ['ready', 'ready']
    servers = pool.live_servers('rax')
    assert sorted(s['id'] for s in servers) == sorted(n.external_id for n in nodes)
    assert pool.clouds['rax'].calls('POST /compute/v2.1/servers') == 2


def test_waiting_uses_one_list_call_per_poll(tmp_path, clouds_for, sqlite_url):
    """Six servers cost as many list calls as one: one list per poll, never a GET per server."""
    pool = two_providers(tmp_path, clouds_for, sqlite_url, rax={'faults': {'boot-delay': 1.0}},
                         hp={'faults': {'boot-delay': 1.0}})
    pool.data['providers'][0]['images'][0]['min-ready'] = 6
    pool.data['providers'][1]['images'][0]['min-ready'] = 1
    pool.data['poll-interval'] = 0.2
    pool.write()
    lists = {}
    for name in ('rax', 'hp'):
        proc = pool.run('devstack-vm-launch.py', name)
        assert proc.returncode == 0, proc.stderr
        calls = pool.clouds[name].stats()['calls']
        assert not any(k.startswith('GET /compute/v2.1/servers/{') for k in calls), calls
        lists[name] = calls['GET /compute/v2.1/servers/detail']
    assert len(pool.nodes(provider='rax', state='ready')) == 6
    assert lists['rax'] <= lists['hp'] + 3, lists


def test_a_node_is_ready_within_a_second_of_turning_active_at_the_default_cadence(
        tmp_path, clouds_for, sqlite_url):
    """launch-poll-interval at its default: each node is SSH-checked and recorded ready
    soon after its server turns ACTIVE (the cloud's own time)."""
    pool = two_providers(tmp_path, clouds_for, sqlite_url, rax={'faults': {'boot-delay': 0.6}})
    del pool.data['poll-interval']              # launch must not depend on it any more
    pool.data['providers'][0]['images'][0]['min-ready'] = 4
    pool.write()
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    nodes = pool.nodes(provider='rax', state='ready')
    assert len(nodes) == 4
    active = {s['id']: s['launched_at'] for s in pool.clouds['rax'].servers()}
    waits = [n.state_time - active[n.external_id] for n in nodes]
    assert all(0 < w < 1.0 for w in waits), waits
    # One server list per poll, never a GET per server.
    calls = pool.clouds['rax'].stats()['calls']
    assert not any(k.startswith('GET /compute/v2.1/servers/{') for k in calls), calls


def test_node_names_follow_the_configured_format(tmp_path, clouds_for, sqlite_url):
    pool = two_providers(tmp_path, clouds_for, sqlite_url)
    pool.data['node-prefix'] = 'ci'
    pool.data['node-name-format'] = '{prefix}-{provider}-{label}-n{id}'
    pool.write()
    assert pool.run('devstack-vm-launch.py', 'hp').returncode == 0
    names = sorted(s['name'] for s in pool.live_servers('hp'))
    assert names == sorted('ci-hp-precise-n%d' % n.id for n in pool.nodes(provider='hp'))


def test_a_node_the_reaper_took_is_not_made_ready_again(tmp_path, sqlite_url):
    """Launch finishing a slow check must not overwrite the reaper's delete."""
    import vmdatabase
    from devstackgate import config as configmod, launch
    data = {'database': sqlite_url,
            'providers': [provider('rax')]}
    cfg = configmod.validate(data, 'test.yaml', check_clouds=False)
    db = vmdatabase.Database(sqlite_url).upgrade()
    node = db.transact(lambda s: s.create_node('rax', 'precise', name='slow'))
    launcher = launch.Launcher(cfg, cfg.provider('rax'), db, adapter=None, pkey=None)
    db.transact(lambda s: s.transition(node, 'delete', fail_reason='build-timeout'))
    launcher._checked(dataclasses.replace(node, ip='127.0.0.1'),
                      launch.Check('ready', host_key='ssh-ed25519 AAAA'))
    row = db.transact(lambda s: s.get_node(node.id))
    assert (row.state, row.fail_reason, row.ip) == ('delete', 'build-timeout', None)
    assert launcher.summary.became_ready == 0


# -- two runs of one provider at once (the lease) ----------------------------------

STAMP = r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC'


def both_at_once(pool, *args):
    procs = [pool.popen('devstack-vm-launch.py', 'rax', *args) for _ in range(2)]
    return procs, [p.communicate(timeout=120)[1] for p in procs]


def test_two_runs_at_once_launch_min_ready_once_and_the_second_names_the_holder(
        tmp_path, clouds_for, db_url):
    pool = two_providers(tmp_path, clouds_for, db_url, rax={'faults': {'boot-delay': 1.0}},
                         **{'lease-wait': 0})
    pool.data['providers'][0]['images'][0]['min-ready'] = 3
    pool.write()
    procs, errs = both_at_once(pool)
    assert [p.returncode for p in procs] == [0, 0], errs
    skipped = [i for i, err in enumerate(errs) if ': skipped: ' in err]
    assert len(skipped) == 1, errs
    holder = procs[1 - skipped[0]]
    last = errs[skipped[0]].strip().splitlines()[-1]
    assert re.fullmatch(r'devstack-vm-launch: provider rax: skipped: lease launch is held by '
                        r'host %s pid %d \(launch\) until %s \(\d+ s from now, unless renewed\); '
                        r'that run is doing this work' % (re.escape(socket.gethostname()),
                                                          holder.pid, STAMP), last), last
    assert 'rax precise: ready 3, building 0, launched 3, failed 0' in errs[1 - skipped[0]]
    assert len(pool.nodes(provider='rax', state='ready')) == 3
    assert len(pool.live_servers('rax')) == 3
    assert pool.clouds['rax'].calls('POST /compute/v2.1/servers') == 3
    assert leases(pool)[0].token is None


def test_a_second_run_waits_for_the_first_and_then_counts_its_nodes(tmp_path, clouds_for, db_url):
    pool = two_providers(tmp_path, clouds_for, db_url, rax={'faults': {'boot-delay': 1.0}})
    pool.data['providers'][0]['images'][0]['min-ready'] = 3
    pool.data['providers'][0]['max-servers'] = 4
    pool.write()
    procs, errs = both_at_once(pool)
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum('is held by host' in err and 'waiting up to' in err for err in errs) == 1, errs
    assert sorted('launching 3 precise' in err for err in errs) == [False, True], errs
    assert sum('launching nothing' in err for err in errs) == 1, errs
    assert len(pool.nodes(provider='rax', state='ready')) == 3
    assert len(pool.live_servers('rax')) == 3
    assert pool.clouds['rax'].calls('POST /compute/v2.1/servers') == 3


def test_a_run_whose_lease_is_taken_stops_and_the_next_finishes_its_nodes(
        tmp_path, clouds_for, db_url):
    pool = two_providers(tmp_path, clouds_for, db_url, rax={'faults': {'boot-delay': 5}},
                         **{'lease-ttl': 2})
    proc = pool.popen('devstack-vm-launch.py', 'rax')
    pool.wait_for(lambda: len([n for n in pool.nodes(provider='rax') if n.external_id]) == 2,
                  what='both servers recorded')
    with pool.db.session() as s:        # another run took it over (after a stall of ours)
        s._execute('UPDATE leases SET token = ?, host = ?, pid = ? WHERE provider = ?',
                   ['intruder', 'elsewhere', 4242, 'rax'])
    taken = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - taken < 3, err        # within a renewal (lease-ttl / 4) or so
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r'devstack-vm-launch: provider rax: lease launch lost \(taken by host '
                        r'elsewhere pid 4242 \(launch\), until %s\); stopped starting new work'
                        % STAMP, last), last
    assert 'no longer polling: 2 node(s) are left building for the run that holds it now' in err
    assert 'Traceback' not in err
    assert [n.state for n in pool.nodes(provider='rax')] == ['building', 'building']
    assert leases(pool)[0].token == 'intruder'      # not released by the run that lost it
    # The intruder's lease expires unrenewed; the next run takes it and finishes the nodes.
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert 'taken over from host elsewhere pid 4242 (launch)' in proc.stderr
    assert proc.stderr.count('still building from an earlier run') == 2
    assert [n.state for n in pool.nodes(provider='rax')] == ['ready', 'ready']
    assert pool.clouds['rax'].calls('POST /compute/v2.1/servers') == 2


def test_sigterm_releases_the_lease(tmp_path, clouds_for, db_url):
    pool = two_providers(tmp_path, clouds_for, db_url, rax={'faults': {'boot-delay': 3}})
    proc = pool.popen('devstack-vm-launch.py', 'rax')
    pool.wait_for(lambda: len([n for n in pool.nodes(provider='rax') if n.external_id]) == 2,
                  what='both servers recorded')
    assert leases(pool)[0].pid == proc.pid
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert leases(pool)[0].token is None
    proc = pool.run('devstack-vm-launch.py', 'rax')     # no wait for a lease
    assert proc.returncode == 0, proc.stderr
    assert 'is held by' not in proc.stderr and 'taken over' not in proc.stderr

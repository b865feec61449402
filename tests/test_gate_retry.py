"""Infra failures are kept away from developers: the gate classifies why a run ended, and a
run whose node failed (not the change) takes another node, preferring another provider.

End to end through devstack-vm-gate.sh, local clouds with real SSH nodes, and SQLite.
"""

import contextlib
import os
import threading
import time

import paramiko
import pytest

from devstackgate import fetch
from localcloud.testing import local_clouds
from tests.gate_helpers import GateRun, change_env, gerrit_with_changes
from tests.pool import Pool, cloud_config, make_base_dir, provider

JOB = 'gate-integration-tests-devstack-vm'
# Waits (up to 5 s) for the test to say go, then passes: the test can kill its node meanwhile.
WAITING_TEST = ('touch ~/started; for i in $(seq 50); do [ -e ~/go ] && break; sleep 0.1; '
                'done; echo "test ran on $(hostname)"')

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope='module')
def gerrit(tmp_path_factory):
    return gerrit_with_changes(tmp_path_factory.mktemp('gerrit'))


@pytest.fixture
def pool_for(tmp_path, gerrit):
    """pool_for(sqlite_url, providers={name: min-ready}, **gate) -> a Pool whose nodes are ready."""
    with contextlib.ExitStack() as stack:
        def make(db_url, providers, **gate):
            base = make_base_dir(tmp_path)
            clouds = stack.enter_context(local_clouds(
                {'clouds': [cloud_config(name, base) for name in providers]},
                tmp_dir=str(tmp_path)))
            settings = {'labels': ['precise'], 'git-base': gerrit.base,
                        'projects': ['openstack/devstack', 'openstack/nova'],
                        'test-timeout': 30, 'fetch-wait': 2, 'git-timeout': 20,
                        'git-retries': 2, 'rsync-timeout': 30, 'alive-interval': 1,
                        'alive-count': 2, 'test-command': WAITING_TEST}
            settings.update(gate)
            images = lambda n: [{'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS',  # noqa
                                 'min-ram': 512, 'min-ready': n}]
            pool = Pool(tmp_path, clouds, db_url,
                        [provider(name, images=images(n)) for name, n in providers.items()],
                        gate=settings, **{'hold-hours': 6})
            for name in providers:
                pool.seed_base_images(name, 'precise')
                proc = pool.run('devstack-vm-launch.py', name)
                assert proc.returncode == 0, proc.stderr
            return pool
        yield make


def results(pool):
    return pool.db.transact(lambda s: s.results())


def spoil_host_key(pool, node):
    other = paramiko.ECDSAKey.generate()
    pool.db.transact(lambda s: s.update_node(
        node.id, host_key='%s %s' % (other.get_name(), other.get_base64())))


def providers_in(out):
    return [line.split('=', 1)[1] for line in out.splitlines() if line.startswith('NODE_PROVIDER=')]


def test_fetch_tiers_prefer_providers_not_avoided():
    assert fetch.tiers(['a', 'b', 'c']) == [None]
    assert fetch.tiers(['a', 'b', 'c'], ['b']) == [['b']]
    assert fetch.tiers(['a', 'b', 'c'], avoid=['b']) == [['a', 'c'], ['b']]
    assert fetch.tiers(['a', 'b'], ['a', 'b'], avoid=['a', 'b']) == [['a', 'b']]
    assert fetch.tiers(['a', 'b'], ['b'], avoid=['a']) == [['b']]


def test_a_node_that_stops_answering_mid_run_is_retried_on_another_provider(
        tmp_path, pool_for, gerrit, sqlite_url):
    pool = pool_for(sqlite_url, {'rax': 1, 'hp': 1})
    run = GateRun(pool, tmp_path / 'jenkins', **change_env(gerrit.changes['pass']))
    proc = run.popen()
    killed = {}

    def kill_first_node():
        node = pool.wait_for(lambda: next(iter(pool.nodes(state='used')), None), timeout=60,
                             what='a node in use')
        handle = pool.clouds[node.provider]
        (server,) = [s for s in handle.servers() if s['id'] == node.external_id]
        pool.wait_for(lambda: os.path.exists(os.path.join(server['root'], 'started')),
                      timeout=60, what='the test command to start')
        killed['node'] = node
        handle.kill_node(node.external_id)
    killer = threading.Thread(target=kill_first_node)
    killer.start()
    started = time.monotonic()
    out, _ = proc.communicate(timeout=150)
    killer.join()
    assert proc.returncode == 0, out
    dead = killed['node']
    other = {'rax': 'hp', 'hp': 'rax'}[dead.provider]
    assert providers_in(out) == [dead.provider, other]
    assert ('node %s (%s) stopped answering during the test command' % (dead.name, dead.provider)
            in out)
    # No rsync that could only wait out its timeout on a node that does not answer.
    assert 'no logs copied from node %s: it does not answer SSH' % dead.name in out
    assert 'copying logs from node %s' % dead.name not in out
    assert ('attempt 1 of 3: node %s (%s) abandoned (node stopped answering), held 60 min with '
            'reason infra' % (dead.name, dead.provider)) in out
    assert out.rstrip().splitlines()[-1].split(': ', 1)[1].startswith(
        '%s #42: success on node ' % JOB)
    assert '(attempt 2 of 3)' in out.rstrip().splitlines()[-1]
    assert [(r.provider, r.result, r.detail) for r in results(pool)] == [
        (dead.provider, 'infra', 'node stopped answering'), (other, 'success', None)]
    held = pool.db.transact(lambda s: s.get_node(dead.id))
    assert held.state == 'hold' and held.hold_reason.startswith('infra: change 1001,1')
    assert 'Traceback' not in out
    # Noticed within alive-interval x alive-count (2 s) plus the probe, not minutes.
    assert time.monotonic() - started < 40


def test_no_other_provider_retries_on_the_same_one(tmp_path, pool_for, gerrit, sqlite_url):
    pool = pool_for(sqlite_url, {'rax': 2})
    first = min(pool.nodes(state='ready'), key=lambda n: (n.state_time, n.id))
    spoil_host_key(pool, first)
    pool.db.transact(lambda s: s.update_node(first.id, state_time=0))    # fetched first
    run = GateRun(pool, tmp_path / 'jenkins', **change_env(gerrit.changes['pass']))
    code, out = run.run(timeout=150)
    assert code == 0, out
    assert providers_in(out) == ['rax', 'rax']
    assert 'preferring another provider than rax' in out
    assert [(r.node_id, r.result) for r in results(pool)][0] == (first.id, 'infra')
    assert [r.result for r in results(pool)] == ['infra', 'success']
    assert os.path.isdir(run.workspace / 'logs' / 'node')


def test_attempts_run_out_and_the_run_is_an_infra_failure(tmp_path, pool_for, gerrit,
                                                          sqlite_url):
    pool = pool_for(sqlite_url, {'rax': 2}, attempts=2)
    for node in pool.nodes(state='ready'):
        spoil_host_key(pool, node)
    run = GateRun(pool, tmp_path / 'jenkins', **change_env(gerrit.changes['pass']))
    code, out = run.run(timeout=150)
    assert code == 1, out
    assert [r.result for r in results(pool)] == ['infra', 'infra']
    assert 'attempt 2 of 2: node' in out and 'no attempt left' in out
    last = out.rstrip().splitlines()[-1]
    assert ('%s #42: infra failure on node' % JOB) in last
    assert '(attempt 2 of 2): host key changed, held 60 min' in last
    assert [n.state for n in pool.nodes()] == ['hold', 'hold']


def test_a_test_failure_is_never_retried(tmp_path, pool_for, gerrit, sqlite_url):
    pool = pool_for(sqlite_url, {'rax': 1, 'hp': 1}, **{'test-command': 'exit 3'})
    run = GateRun(pool, tmp_path / 'jenkins', **change_env(gerrit.changes['pass']))
    code, out = run.run(timeout=150)
    assert code == 1, out
    assert len(providers_in(out)) == 1
    assert [r.result for r in results(pool)] == ['failure']
    assert 'failure (test failure) on node' in out.rstrip().splitlines()[-1]


def test_a_test_command_exiting_255_on_a_live_node_is_a_test_failure(tmp_path, pool_for,
                                                                      gerrit, sqlite_url):
    pool = pool_for(sqlite_url, {'rax': 2}, **{'test-command': 'exit 255'})
    run = GateRun(pool, tmp_path / 'jenkins', **change_env(gerrit.changes['pass']))
    code, out = run.run(timeout=150)
    assert code == 1, out
    assert [r.result for r in results(pool)] == ['failure']
    assert 'stopped answering' not in out

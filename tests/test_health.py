"""Provider health and the image guard: the statistics on known inputs, quarantine and release
(automatic, by hand, by a canary), fetch and launch around a quarantine, the flag on failed
runs, and the guard's demote and its undo.  Real SQLite/MariaDB, the real gate finish, fetch,
launch and operator commands; local clouds with real SSH nodes for launch's canary."""

import contextlib
import json
import math
import subprocess
import sys
import time

import pytest
import yaml

import vmdatabase
from devstackgate import config as configmod, fetch, gate, health
from localcloud.testing import local_clouds
from tests.pool import ROOT, Pool, cloud_config, make_base_dir, provider

NOW = 1_800_000_000.0


# -- the statistics -------------------------------------------------------------------

def test_one_sided_p_on_known_inputs():
    # 8 of 20 against 2 of 30: pooled 0.2, z = (0.4 - 1/15) / sqrt(0.16 * (1/20 + 1/30)).
    z = (0.4 - 1 / 15) / math.sqrt(0.16 * (1 / 20 + 1 / 30))
    assert z == pytest.approx(2.8868, abs=1e-4)
    assert health.one_sided_p(8, 20, 2, 30) == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert health.one_sided_p(8, 20, 2, 30) == pytest.approx(0.001946, abs=1e-5)
    # Equal rates: p = 0.5; the other way round: above 0.5; nothing to tell: 1.
    assert health.one_sided_p(3, 10, 6, 20) == pytest.approx(0.5)
    assert health.one_sided_p(2, 30, 8, 20) == pytest.approx(1 - 0.001946, abs=1e-5)
    assert health.one_sided_p(0, 10, 0, 30) == 1.0
    assert health.one_sided_p(10, 10, 30, 30) == 1.0
    assert health.one_sided_p(1, 0, 0, 5) == 1.0


def test_judge_needs_runs_failures_and_a_small_p():
    limits = health.Limits(24, 100, 5, 3, 0.01)
    assert health.judge('rax', 'precise', 'infra', 8, 20, 2, 30, limits).worse
    few = health.judge('rax', 'precise', 'infra', 4, 4, 0, 30, limits)
    assert not few.worse and few.why.startswith('too few runs (4 here')
    rare = health.judge('rax', 'precise', 'infra', 2, 5, 0, 30, limits)
    assert not rare.worse and rare.why == 'too few failures (2; 3 needed)'
    luck = health.judge('rax', 'precise', 'test', 15, 20, 24, 40, limits)     # 75% vs 60%
    assert not luck.worse and luck.why is None and luck.p_value > 0.1
    assert health.judge('rax', 'precise', 'infra', 3, 5, 0, 30, limits).figures() == (
        '3 of 5 runs (60 %) against 0 of 30 (0 %); p = 4.6e-06')  # z = 4.44


# -- a pool in the database ---------------------------------------------------------------

PROVIDERS = ('rax', 'hp', 'ovh')


def make_config(tmp_path, db_url, providers=PROVIDERS, **settings):
    data = {'database': db_url, 'ssh-private-key': str(tmp_path / 'id_rsa'),
            'providers': [{'name': p, 'cloud': p, 'images': [
                {'name': 'precise', 'base-image': 'Ubuntu'}]} for p in providers]}
    data.update(settings)
    path = tmp_path / 'devstack-gate.yaml'
    path.write_text(yaml.safe_dump(data))
    return configmod.load(str(path), check_clouds=False)


def add_runs(db, provider, results, image_id=None, start=NOW - 3600):
    def tx(s):
        for i, result in enumerate(results):
            row = s.create_result(now=start + i, provider=provider, label='precise',
                                  image_id=image_id, job_name='gate', change_ref='%d,1' % i)
            s.finish_result(row.id, result, now=start + i + 60)
    db.transact(tx)


def used_node(db, provider, image_id=None):
    """A node a gate run holds, and its result row, as fetch leaves them."""
    def tx(s):
        node = s.create_node(provider, 'precise', state='used', name='%s-node' % provider,
                             image_id=image_id, claimed_by='gate #1')
        row = s.create_result(now=NOW - 10, provider=provider, label='precise',
                              node_id=node.id, image_id=image_id, job_name='gate')
        return node, row
    return db.transact(tx)


def finish(config, db, provider, result, image_id=None, detail=None):
    node, row = used_node(db, provider, image_id)
    gate.finish(config, node.id, result, result_id=row.id, detail=detail, db=db, now=NOW,
                environ={})
    return node


@pytest.fixture
def db(db_url):
    return vmdatabase.Database(db_url).upgrade()


def test_a_provider_whose_nodes_fail_is_quarantined_with_its_figures(tmp_path, db_url, db,
                                                                     caplog):
    config = make_config(tmp_path, db_url)
    add_runs(db, 'rax', ['infra'] * 2 + ['success'] * 4)
    add_runs(db, 'hp', ['success'] * 10)
    add_runs(db, 'ovh', ['success'] * 9 + ['failure'])
    # Two infra failures of six are not enough (health-min-failures 3): no quarantine.
    assert db.transact(lambda s: s.quarantines()) == []
    finish(config, db, 'rax', 'infra', detail='node stopped answering')
    (q,) = db.transact(lambda s: s.quarantines())
    assert (q.provider, q.label, q.set_by) == ('rax', 'precise', 'auto')
    assert q.reason.startswith('infra failures 3 of 7 runs (43 %) against 0 of 20 (0 %); p = ')
    assert q.probe_after == pytest.approx(NOW + 3600)
    lines = [r.getMessage() for r in caplog.records if r.name == 'health']
    assert len(lines) == 1 and lines[0].startswith(
        'provider rax quarantined for precise: its infra-failure rate is 43 % against 0 % '
        'on the other providers (3 of 7 runs (43 %) against 0 of 20 (0 %); p = ')
    # The other providers are healthy: none of them is quarantined, whatever more runs end.
    finish(config, db, 'hp', 'infra')
    assert [q.provider for q in db.transact(lambda s: s.quarantines())] == ['rax']


def test_the_last_healthy_provider_of_a_label_is_never_quarantined(tmp_path, db_url, db):
    config = make_config(tmp_path, db_url, providers=('rax', 'hp'))
    db.transact(lambda s: s.quarantine('hp', 'precise', 'ops', 'by hand', NOW + 60, now=NOW))
    add_runs(db, 'rax', ['infra'] * 5 + ['success'] * 3)
    add_runs(db, 'hp', ['success'] * 10)
    finish(config, db, 'rax', 'infra')
    assert [q.provider for q in db.transact(lambda s: s.quarantines())] == ['hp']


def test_auto_quarantine_can_be_switched_off(tmp_path, db_url, db):
    config = make_config(tmp_path, db_url, **{'auto-quarantine': False})
    add_runs(db, 'rax', ['infra'] * 5 + ['success'] * 3)
    add_runs(db, 'hp', ['success'] * 10)
    finish(config, db, 'rax', 'infra')
    assert db.transact(lambda s: s.quarantines()) == []


def test_a_provider_failing_tests_is_flagged_on_the_console_never_quarantined(
        tmp_path, db_url, db, caplog):
    config = make_config(tmp_path, db_url)
    add_runs(db, 'rax', ['failure'] * 8 + ['success'] * 12)
    add_runs(db, 'hp', ['failure'] + ['success'] * 19)
    add_runs(db, 'ovh', ['timeout'] + ['success'] * 9)
    node = finish(config, db, 'rax', 'failure')
    flagged = [r.getMessage() for r in caplog.records
               if 'its test-failure rate for precise' in r.getMessage()]
    assert flagged == ['node %s: provider rax: its test-failure rate for precise is 43 %% '
                       'against 7 %% elsewhere (9 of 21 runs (43 %%) against 2 of 30 (7 %%); '
                       'p = 0.00099): the failure may be the provider\'s, not the change\'s'
                       % gate.describe(node)]
    assert db.transact(lambda s: s.quarantines()) == []
    # A failure on a healthy provider says nothing of the kind.
    caplog.clear()
    finish(config, db, 'hp', 'failure')
    assert not [r for r in caplog.records if 'test-failure rate' in r.getMessage()]


def test_fetch_takes_a_quarantined_provider_last(tmp_path, db_url, db):
    config = make_config(tmp_path, db_url, providers=('rax', 'hp'))
    for p in ('rax', 'rax', 'hp'):
        db.transact(lambda s, p=p: s.create_node(p, 'precise', state='ready', name=p,
                                                 ip='127.0.0.9', username='jenkins'))
    db.transact(lambda s: s.quarantine('rax', 'precise', 'auto', 'flaky', NOW, now=NOW))
    taken = [fetch.fetch(config, 'precise', db=db, environ={})[0].provider for _ in range(3)]
    assert taken == ['hp', 'rax', 'rax']        # rax only once hp has none
    assert fetch.tiers(['rax', 'hp'], quarantined=['rax']) == [['hp'], ['rax']]
    assert fetch.tiers(['rax', 'hp', 'ovh'], avoid=['hp'], quarantined=['rax']) == [
        ['ovh'], ['rax'], ['hp']]


def operator_cli(config, *args):
    return subprocess.run([sys.executable, '-m', 'devstackgate.cmd.operator', '--config',
                           config.path, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_operators_quarantine_and_release_by_hand(tmp_path, db_url, db):
    config = make_config(tmp_path, db_url)
    proc = operator_cli(config, 'quarantine', 'rax', 'precise', '--reason', 'disk errors')
    assert proc.returncode == 0, proc.stderr
    assert 'rax precise: quarantined by' in proc.stderr and 'until released' in proc.stderr
    assert 'rax' in proc.stdout and 'disk errors' in proc.stdout
    (q,) = db.transact(lambda s: s.quarantines())
    assert q.probe_after >= 1e18 and q.reason == 'disk errors'
    proc = operator_cli(config, 'quarantine-list', '--json')
    assert [(q['provider'], q['probe_after']) for q in json.loads(proc.stdout)] == [('rax', None)]
    proc = operator_cli(config, 'stats', '--json')
    cells = {(c['provider'], c['label']): c for c in json.loads(proc.stdout)['cells']}
    assert cells[('rax', 'precise')]['quarantined'].startswith('disk errors')
    proc = operator_cli(config, 'quarantine-release', 'rax', 'precise')
    assert proc.returncode == 0, proc.stderr
    assert db.transact(lambda s: s.quarantines()) == []
    proc = operator_cli(config, 'quarantine-release', 'rax', 'precise')
    assert proc.returncode == 1 and 'rax precise is not quarantined' in proc.stderr
    proc = operator_cli(config, 'quarantine', 'rax', 'quantal', '--reason', 'x')
    assert proc.returncode == 2 and 'quantal' in proc.stderr


# -- the image guard ---------------------------------------------------------------------

def two_images(db):
    def tx(s):
        old = s.create_image('rax', 'precise', state='ready', name='dg-precise-old',
                             external_id='img-old', now=NOW - 7200)
        new = s.create_image('rax', 'precise', state='ready', name='dg-precise-new',
                             external_id='img-new', now=NOW - 3600)
        return old, new
    return db.transact(tx)


def test_the_image_guard_demotes_a_worse_new_image_and_one_command_undoes_it(
        tmp_path, db_url, db, caplog):
    config = make_config(tmp_path, db_url)
    old, new = two_images(db)
    add_runs(db, 'rax', ['success'] * 11 + ['failure'], image_id=old.id, start=NOW - 7000)
    add_runs(db, 'rax', ['failure'] * 3 + ['success'] * 3, image_id=new.id)
    assert db.transact(lambda s: s.current_image('rax', 'precise')).id == new.id
    finish(config, db, 'rax', 'failure', image_id=new.id)
    current = db.transact(lambda s: s.current_image('rax', 'precise'))
    assert current.id == old.id
    demoted = db.transact(lambda s: s.get_image(new.id))
    assert demoted.demoted and demoted.fail_reason.startswith(
        'image guard: failed 4 of 7 runs (57 %) against 1 of 12 (8 %); p = ')
    (pause,) = db.transact(lambda s: s.image_pauses('precise'))
    assert (pause.provider, pause.set_by) == ('rax', 'auto')
    assert any('undo with: devstack-gate image-guard-undo rax precise' in r.getMessage()
               for r in caplog.records)
    proc = operator_cli(config, 'image-list', '--provider', 'rax')
    assert 'image guard' in proc.stdout and 'paused' in proc.stdout, proc.stdout
    proc = operator_cli(config, 'image-guard-undo', 'rax', 'precise')
    assert proc.returncode == 0, proc.stderr
    assert db.transact(lambda s: s.current_image('rax', 'precise')).id == new.id
    assert db.transact(lambda s: s.image_pauses('precise')) == []
    # Overruled: more failures do not demote it again.
    finish(config, db, 'rax', 'failure', image_id=new.id)
    assert db.transact(lambda s: s.current_image('rax', 'precise')).id == new.id
    proc = operator_cli(config, 'image-guard-undo', 'rax', 'precise')
    assert proc.returncode == 1 and 'no image demoted by the image guard' in proc.stderr


def test_the_image_guard_waits_for_enough_runs_and_can_be_switched_off(tmp_path, db_url, db):
    config = make_config(tmp_path, db_url)
    old, new = two_images(db)
    add_runs(db, 'rax', ['success'] * 12, image_id=old.id, start=NOW - 7000)
    add_runs(db, 'rax', ['failure'] * 3, image_id=new.id)        # 4 runs with the next one
    finish(config, db, 'rax', 'failure', image_id=new.id)
    assert db.transact(lambda s: s.current_image('rax', 'precise')).id == new.id
    config = make_config(tmp_path, db_url, **{'image-guard': False})
    add_runs(db, 'rax', ['failure'] * 3, image_id=new.id)
    finish(config, db, 'rax', 'failure', image_id=new.id)
    assert db.transact(lambda s: s.current_image('rax', 'precise')).id == new.id
    config = make_config(tmp_path, db_url)
    finish(config, db, 'rax', 'failure', image_id=new.id)
    assert db.transact(lambda s: s.current_image('rax', 'precise')).id == old.id


# -- launch around a quarantine: not topped up; a canary after the cool-down ------------------

@pytest.fixture
def cloud_pool(tmp_path):
    with contextlib.ExitStack() as stack:
        def make(db_url, faults=None, **settings):
            clouds = stack.enter_context(local_clouds(
                {'clouds': [cloud_config('rax', make_base_dir(tmp_path),
                                         faults=faults or {})]}, tmp_dir=str(tmp_path)))
            images = [{'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS', 'min-ram': 512,
                       'min-ready': 2}]
            pool = Pool(tmp_path, clouds, db_url, [provider('rax', images=images)],
                        **dict({'canary-watch': 1}, **settings))
            pool.seed_base_images('rax', 'precise')
            return pool
        yield make


def test_launch_does_not_top_up_a_quarantine_and_a_passing_canary_ends_it(
        cloud_pool, sqlite_url):
    pool = cloud_pool(sqlite_url)
    db = pool.db
    db.transact(lambda s: s.quarantine('rax', 'precise', 'auto', 'infra failures 5 of 8',
                                       time.time() + 600))
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert pool.nodes() == []
    assert 'rax precise: quarantined (infra failures 5 of 8); not launching' in proc.stderr
    db.transact(lambda s: s.quarantine('rax', 'precise', 'auto', 'infra failures 5 of 8',
                                       time.time() - 1))
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert 'probing it with one canary node' in proc.stderr
    assert 'watching it for 1 s' in proc.stderr
    assert 'stayed up for 1 s: quarantine ended' in proc.stderr
    assert [n.state for n in pool.nodes()] == ['ready']     # one node: the canary
    assert db.transact(lambda s: s.quarantines()) == []
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert [n.state for n in pool.nodes()] == ['ready', 'ready']


def test_a_canary_that_dies_keeps_the_quarantine(cloud_pool, sqlite_url):
    pool = cloud_pool(sqlite_url, faults={'node-death': {'rate': 1.0, 'after': 1.0}},
                      **{'canary-watch': 3, 'quarantine-cooldown-minutes': 30})
    db = pool.db
    db.transact(lambda s: s.quarantine('rax', 'precise', 'auto', 'infra', time.time() - 1))
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert 'the canary' in proc.stderr and 'failed: it stopped answering' in proc.stderr, \
        proc.stderr
    assert 'still quarantined, probed again in 30 min' in proc.stderr
    (q,) = db.transact(lambda s: s.quarantines())
    assert q.probes == 1 and q.probe_after == pytest.approx(time.time() + 1800, abs=60)
    assert [(n.state, n.fail_reason) for n in pool.nodes()] == [('delete', 'canary')]
    assert 'Traceback' not in proc.stderr

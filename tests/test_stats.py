"""devstackgate.stats against a real database (SQLite and MariaDB): fabricated gate
results and launch history, exact figures, the outlier rule and the days window; and
the launch history that devstackgate.launch writes when a node becomes ready or fails."""

import json
import time

import pytest

import vmdatabase
from devstackgate import config as configmod, health, launch, stats
from devstackgate.errors import UsageError

DAY = 86400.0
NOW = 1_700_000_000.0
PROVIDERS = [
    {'name': 'rax', 'cloud': 'rax', 'images': [
        {'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS'},
        {'name': 'quantal', 'base-image': 'Ubuntu 12.10'}]},
    {'name': 'hp', 'cloud': 'hp', 'images': [
        {'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS'}]},
    {'name': 'ovh', 'cloud': 'ovh', 'images': [
        {'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS'}]},
]


def make_config(tmp_path, db_url, providers=PROVIDERS):
    return configmod.validate({'database': db_url, 'providers': providers},
                              str(tmp_path / 'devstack-gate.yaml'), check_clouds=False)


@pytest.fixture
def db(db_url):
    return vmdatabase.Database(db_url).upgrade()


def add_runs(db, provider, label, outcomes, start=NOW - 3600, seconds=1800.0):
    """One result per outcome (success, failure, timeout, aborted, running), started at
    `start`, each `seconds` long (a list gives each its own)."""
    durations = seconds if isinstance(seconds, list) else [seconds] * len(outcomes)

    def tx(s):
        for outcome, length in zip(outcomes, durations):
            row = s.create_result(now=start, provider=provider, label=label,
                                  job_name='gate-integration-tests-devstack-vm')
            if outcome != 'running':
                s.finish_result(row.id, outcome, now=start + length)
    db.transact(tx)


def add_launches(db, provider, label, outcomes, when=NOW - 3600):
    """outcomes: [(outcome, reason, seconds)]."""
    def tx(s):
        for i, (outcome, reason, seconds) in enumerate(outcomes):
            s.record_launch(provider, label, 1000 + i, outcome, reason, seconds, when)
    db.transact(tx)


def test_exact_figures_of_one_provider_and_label(tmp_path, db_url, db):
    config = make_config(tmp_path, db_url)
    add_runs(db, 'rax', 'precise', ['success'] * 9 + ['failure'] * 2 + ['timeout'],
             seconds=[600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 500, 400, 5400])
    add_runs(db, 'rax', 'precise', ['aborted', 'running'])
    add_runs(db, 'rax', 'precise', ['failure'] * 3, start=NOW - 8 * DAY)    # before the window
    add_launches(db, 'rax', 'precise', [
        ('ready', None, 100), ('ready', None, 200), ('ready', None, 300), ('used', None, 400),
        ('ready', None, 500), ('failed', 'error', 30), ('failed', 'error', 40),
        ('failed', 'no-network', 600), ('failed', 'quota', 1), ('failed', 'vanished', 90)])
    add_launches(db, 'rax', 'precise', [('failed', 'timeout', 600)], when=NOW - 8 * DAY)

    result = stats.compute(db, config, days=7, now=NOW)

    assert (result.since, result.until, result.days) == (NOW - 7 * DAY, NOW, 7)
    cell = result.cell('rax', 'precise')
    assert cell.gate == stats.GateRuns(runs=12, successes=9, failures=2, timeouts=1, aborted=1,
                                       running=1, failure_rate=0.25, median_seconds=950.0)
    assert cell.launch.launches == 10
    assert (cell.launch.ready, cell.launch.failed, cell.launch.failure_rate) == (5, 5, 0.5)
    assert cell.launch.reasons == {'error': 2, 'no-network': 1, 'quota': 1, 'vanished': 1}
    assert list(cell.launch.reasons) == ['error', 'no-network', 'quota', 'vanished']
    assert cell.launch.reason_rates == {'error': 0.2, 'no-network': 0.1, 'quota': 0.1,
                                        'vanished': 0.1}
    assert cell.launch.median_seconds_to_ready == 300
    # Every configured cell is there, empty ones with no rates rather than zeros.
    assert [(c.provider, c.label) for c in result.cells] == [
        ('hp', 'precise'), ('ovh', 'precise'), ('rax', 'precise'), ('rax', 'quantal')]
    empty = result.cell('rax', 'quantal')
    assert empty.gate == stats.GateRuns()
    assert empty.launch.failure_rate is None and empty.launch.median_seconds_to_ready is None
    assert empty.why == 'no other provider ran quantal'


def test_days_window(tmp_path, db_url, db):
    config = make_config(tmp_path, db_url)
    add_runs(db, 'hp', 'precise', ['failure'], start=NOW - 2 * DAY)
    add_runs(db, 'hp', 'precise', ['success', 'success'], start=NOW - 5 * DAY)
    add_runs(db, 'hp', 'precise', ['success'], start=NOW + 60)         # after `now`
    add_launches(db, 'hp', 'precise', [('failed', 'quota', 1)], when=NOW - 2 * DAY)
    add_launches(db, 'hp', 'precise', [('ready', None, 200)], when=NOW - 5 * DAY)

    three = stats.compute(db, config, days=3, now=NOW).cell('hp', 'precise')
    week = stats.compute(db, config, days=7, now=NOW).cell('hp', 'precise')
    half = stats.compute(db, config, days=0.5, now=NOW - 1.75 * DAY).cell('hp', 'precise')

    assert (three.gate.runs, three.gate.failures, three.gate.failure_rate) == (1, 1, 1.0)
    assert (three.launch.launches, three.launch.reasons) == (1, {'quota': 1})
    assert (week.gate.runs, week.gate.failures) == (3, 1)
    assert week.gate.failure_rate == pytest.approx(1 / 3)
    assert (week.launch.launches, week.launch.failed) == (2, 1)
    assert (half.gate.runs, half.launch.launches) == (1, 1)
    with pytest.raises(UsageError):
        stats.compute(db, config, days=0, now=NOW)


def test_a_provider_that_fails_more_is_marked(tmp_path, db_url, db):
    config = make_config(tmp_path, db_url)
    add_runs(db, 'rax', 'precise', ['failure'] * 10 + ['success'] * 10)            # 50%
    add_runs(db, 'hp', 'precise', ['failure'] + ['success'] * 19)                  # 5%
    add_runs(db, 'ovh', 'precise', ['timeout'] + ['success'] * 9)                  # 10%

    result = stats.compute(db, config, now=NOW)

    rax = result.cell('rax', 'precise')
    assert (rax.judged, rax.outlier) == (True, True)
    assert rax.gate.failure_rate == 0.5
    assert rax.compared_runs == 30
    assert rax.compared_to == pytest.approx(2 / 30)
    assert rax.why == ('rax failed 50% of 20 runs; the other providers 7% of 30 '
                       '(outlier: p = 0.00022 <= 0.001)')
    assert rax.p_value == pytest.approx(0.00022, abs=5e-6)
    hp = result.cell('hp', 'precise')
    assert (hp.judged, hp.outlier, hp.compared_runs) == (True, False, 30)
    assert hp.compared_to == pytest.approx(11 / 30)
    assert [(c.provider, c.label) for c in result.outliers] == [('rax', 'precise')]
    # The limits (the configuration's health-*) are part of the result.
    assert (result.min_runs, result.min_failures, result.alpha) == (
        config.health_min_runs, config.health_min_failures, config.health_alpha)


def test_a_small_sample_is_not_judged(tmp_path, db_url, db):
    config = make_config(tmp_path, db_url)
    add_runs(db, 'rax', 'precise', ['failure'] * (config.health_min_runs - 1))    # 100%
    add_runs(db, 'hp', 'precise', ['success'] * 30)

    result = stats.compute(db, config, now=NOW)

    rax = result.cell('rax', 'precise')
    assert (rax.judged, rax.outlier, rax.gate.failure_rate) == (False, False, 1.0)
    assert rax.why.startswith('too few runs (4 here, 30 to compare with; 5 each needed)')
    assert result.outliers == []
    # One more run and it is judged, and marked.
    add_runs(db, 'rax', 'precise', ['failure'])
    assert [c.provider for c in stats.compute(db, config, now=NOW).outliers] == ['rax']
    # The limits are parameters too.
    limits = health.Limits(24, 100, 6, 3, 0.01)
    assert stats.compute(db, config, now=NOW, limits=limits).outliers == []


def test_everyone_failing_is_the_change_not_a_provider(tmp_path, db_url, db):
    """75% against 60% is not an outlier (luck explains it: p = 0.12), nor 4% against 1%
    (one failure is too few to judge)."""
    config = make_config(tmp_path, db_url)
    add_runs(db, 'rax', 'precise', ['failure'] * 15 + ['success'] * 5)            # 75%
    add_runs(db, 'hp', 'precise', ['failure'] * 12 + ['success'] * 8)             # 60%
    add_runs(db, 'ovh', 'precise', ['failure'] * 12 + ['success'] * 8)            # 60%
    assert stats.compute(db, config, now=NOW).outliers == []

    config = make_config(tmp_path, db_url, PROVIDERS[:2])
    add_runs(db, 'rax', 'quantal', ['failure'] + ['success'] * 24, start=NOW - 60)  # 4%
    add_runs(db, 'hp', 'quantal', ['failure'] + ['success'] * 99, start=NOW - 60)   # 1%
    quantal = stats.compute(db, config, days=0.5, now=NOW).cell('rax', 'quantal')
    assert quantal.judged and not quantal.outlier
    assert quantal.why.startswith('too few failures (1; 3 needed)')


def test_to_dict_is_json_and_keeps_unconfigured_providers(tmp_path, db_url, db):
    config = make_config(tmp_path, db_url, PROVIDERS[:1])
    add_runs(db, 'gone', 'precise', ['success'])        # a provider since removed
    add_launches(db, 'gone', 'precise', [('failed', None, 5)])

    result = stats.compute(db, config, now=NOW)
    data = json.loads(json.dumps(result.to_dict()))

    assert [(c['provider'], c['label']) for c in data['cells']] == [
        ('gone', 'precise'), ('rax', 'precise'), ('rax', 'quantal')]
    gone = data['cells'][0]
    assert gone['gate']['runs'] == 1 and gone['gate']['median_seconds'] == 1800.0
    assert gone['launch']['reasons'] == {'unknown': 1}
    assert gone['compared_to'] == 0 or gone['compared_to'] is None
    assert set(data) == {'since', 'until', 'days', 'min_runs', 'min_failures', 'alpha',
                         'cells'}


class NoCloud:
    """An adapter that only deletes (what fail() asks of it)."""
    def __init__(self):
        self.deleted = []

    def delete_quietly(self, kind, external_id, what):
        self.deleted.append((kind, external_id))
        return True


def test_launcher_records_how_each_launch_ended(tmp_path, db_url, db):
    """The one place a launch ends (Launcher._finish): ready, failed with the reason,
    a canary's 'used'; and nothing when another run changed the node first."""
    config = make_config(tmp_path, db_url)
    provider = config.provider('rax')
    adapter = NoCloud()
    launcher = launch.Launcher(config, provider, db, adapter, None)
    canary = launch.Launcher(config, provider, db, adapter, None, ready_state='used',
                             claimed_by='canary of image x')
    created = time.time() - 120

    def node(external_id=None):
        return db.transact(lambda s: s.create_node('rax', 'precise', now=created,
                                                   external_id=external_id))
    ready, failed, canaried, lost, taken = node('s1'), node('s2'), node('s3'), node(), node('s5')
    assert launcher._finish(ready, 'ready', ip='127.0.0.2', host_key='ssh-ed25519 AAAA')
    launcher.fail(failed, 'no-network', 'SSH never answered')
    assert canary._finish(canaried, 'used', claimed_by='canary of image x')
    launcher._finish(lost, 'delete', fail_reason='lost')
    db.transact(lambda s: s.transition(taken, 'delete', fail_reason='build-timeout'))
    assert not launcher._finish(taken, 'ready')

    rows = db.transact(lambda s: s.launches())
    assert [(r.node_id, r.provider, r.label, r.outcome, r.reason) for r in rows] == [
        (ready.id, 'rax', 'precise', 'ready', None),
        (failed.id, 'rax', 'precise', 'failed', 'no-network'),
        (canaried.id, 'rax', 'precise', 'used', None),
        (lost.id, 'rax', 'precise', 'failed', 'lost')]
    for r in rows:
        assert 119 <= r.seconds < 180
        assert r.finished == pytest.approx(created + r.seconds)
    assert adapter.deleted == [('server', 's2')]
    # The history outlives the node rows.
    db.transact(lambda s: [s.delete_node(n.id) for n in s.nodes()])
    cell = stats.compute(db, config).cell('rax', 'precise')
    assert (cell.launch.launches, cell.launch.ready, cell.launch.reasons) == (
        4, 2, {'lost': 1, 'no-network': 1})
    with pytest.raises(ValueError):
        db.transact(lambda s: s.record_launch('rax', 'precise', 1, 'exploded', None, 1))


@pytest.mark.parametrize('count', [1, 2, 5, 6])
def test_medians_read_by_the_database_are_statistics_medians(tmp_path, db_url, db, count):
    # stats takes its medians from the middle one or two rows the database sorts; they
    # must be statistics.median's over every row, odd and even counts alike.
    import random
    import statistics
    rng = random.Random(count)
    lengths = [rng.uniform(60, 5400) for _ in range(count)]
    add_runs(db, 'rax', 'precise', ['success', 'failure', 'timeout'] * count, seconds=[
        x for x in lengths for _ in range(3)][:3 * count])
    add_runs(db, 'rax', 'precise', ['aborted'], seconds=1.0)        # not a verdict: not counted
    ready = [rng.uniform(10, 600) for _ in range(count)]
    add_launches(db, 'rax', 'precise', [('ready', None, x) for x in ready]
                 + [('failed', 'timeout', 9999.0), ('ready', None, None)])
    cell = stats.compute(db, make_config(tmp_path, db_url), now=NOW).cell('rax', 'precise')
    durations = [x for x in lengths for _ in range(3)][:3 * count]
    assert cell.gate.median_seconds == pytest.approx(statistics.median(durations), abs=1e-6)
    assert cell.launch.median_seconds_to_ready == pytest.approx(statistics.median(ready))
    assert (cell.launch.launches, cell.launch.ready, cell.launch.failed) == (
        count + 2, count + 1, 1)
    assert stats.median_of(0, None) is None

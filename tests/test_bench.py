"""The benchmarks keep working: ``./dev.sh bench --profile short`` runs every one
in seconds (the figures themselves come from the full profile, on demand), and
the harness states goals and ratios correctly."""

import json
import os
import subprocess

from bench import common
from bench.__main__ import BENCHMARKS
from tests.conftest import ROOT


def test_goal_checks_value_or_ratio_and_a_missing_value_misses():
    fast = common.Row('b', 'c', 'p99', 4.0, 'ms', reference=2.0, reference_name='p50',
                      goal=common.Goal('<', 10, text='p99 < 10 ms'))
    assert fast.ratio == 2.0 and fast.met is True
    slow = common.Row('b', 'c', 'wall', 13.0, 's', reference=10.0,
                      goal=common.Goal('<=', 1.2, of='ratio'))
    assert slow.met is False
    assert common.Row('b', 'c', 'x', None, goal=common.Goal('<', 1)).met is False
    assert common.Row('b', 'c', 'x', 1.0).met is None
    assert common.Row('b', 'c', 'x', 1.0, reference=0).ratio is None


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert common.percentile(values, 50) == 50
    assert common.percentile(values, 99) == 99
    assert common.percentile(values, 100) == 100
    assert common.percentile([7], 99) == 7
    assert common.percentile([], 50) is None


def test_table_marks_a_missed_goal():
    rows = [common.Row('handout', 'sqlite', 'p99', 30.0, 'ms', goal=common.Goal('<', 10)),
            common.Row('handout', 'sqlite', 'p50', 1.0, 'ms', goal=common.Goal('<', 10))]
    lines = common.table(rows).splitlines()
    assert lines[0].split()[:3] == ['bench', 'case', 'metric']
    assert lines[2].endswith('MISSED') and lines[3].endswith('ok')


def test_the_short_profile_of_every_benchmark(tmp_path):
    out = tmp_path / 'bench.json'
    proc = subprocess.run(['./dev.sh', 'bench', '--profile', 'short', '--json', str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data['errors'] == []
    facts = data['machine']
    assert facts['cores'] == os.cpu_count() and facts['python'] and facts['sqlite']
    if os.environ.get('CI') == 'true':
        assert facts['mariadb'], 'CI measures MariaDB too'
    benches = {row['bench'] for row in data['rows']}
    assert benches == set(BENCHMARKS)
    for row in data['rows']:
        assert row['value'] is not None, row
        if row['reference'] is not None:
            assert row['ratio'] == row['value'] / row['reference']
    # The correctness figures hold even on the short profile.
    doubles = [r for r in data['rows'] if r['metric'] == 'double hand-outs']
    assert doubles and all(r['value'] == 0 for r in doubles)
    # The table on stdout has a line per figure.
    assert len(proc.stdout.strip().splitlines()) == len(data['rows']) + 2

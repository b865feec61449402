"""python -m soak: the plan is a function of the seed, and the short profile
really runs (real scripts, real local clouds, real SSH, SQLite) every kind of
step, every kind of fault and at least one SIGKILL, with no violation, in
under a minute, leaving nothing behind; Ctrl-C leaves nothing either."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from devstackgate import demo
from soak import invariants, profiles, runner, schedule
from tests.pool import ROOT

STAMP = r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d'
SHORT_BUDGET = 60           # seconds the short profile may take (its own figure)
RUN_TIMEOUT = 240           # the subprocess, set-up and teardown included


def soak(*args, timeout=RUN_TIMEOUT):
    return subprocess.run([sys.executable, '-m', 'soak'] + list(args), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def changes():
    return [(i, c['expect']) for i, c in enumerate(runner.load_changes())]


def test_the_plan_is_a_function_of_the_seed():
    providers = ['east', 'west']
    for profile in profiles.PROFILES.values():
        a = schedule.make(profile, 7, providers, changes())
        assert a == schedule.make(profile, 7, providers, changes())
        assert a['digest'] != schedule.make(profile, 8, providers, changes())['digest']
        planned = schedule.planned_kinds(a)
        assert all(planned[k] >= 1 for k in schedule.FAULT_KINDS), planned
        kills = [k['kind'] for c in a['cycles'] for k in c['kills']]
        assert set(kills) == set(schedule.KILL_KINDS)
        out = a['outage']
        assert len(out['cycles']) == round(profile.cycles / 3)
        for c in a['cycles']:
            assert (c['outage'] == [out['provider']]) == (c['cycle'] in out['cycles'])
            expects = {e for i, e in changes() for g in c['gates'] if g['change'] == i}
            assert expects == {'success', 'failure'}
            boot = [k for f in c['faults'].values() for k in f if k in schedule.BOOT_KINDS]
            for f in c['faults'].values():
                assert len([k for k in f if k in schedule.BOOT_KINDS]) <= 1
            assert not set(c['outage']) & set(c['faults']), boot
            for k in c['kills']:
                if k['kind'] == 'update-image':
                    assert c['image'] is not None
    # The command prints the same plan for the same seed.
    first, second = soak('--plan', '--seed', '3'), soak('--plan', '--seed', '3')
    assert first.returncode == 0 and first.stdout == second.stdout
    assert json.loads(first.stdout)['seed'] == 3


def test_bad_usage_is_one_line_and_exit_2():
    proc = soak('--cycles', '2')
    assert proc.returncode == 2
    assert 'error: --cycles must be at least 3' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_invariants_see_what_they_claim_to():
    """The checks themselves, on hand-made views: an untracked server, a ready row
    with no server, a building row once a reap ran past its settle time."""
    import dataclasses
    import vmdatabase
    limits = invariants.Limits(boot_timeout=5, interrupted_build=100, max_servers=2)
    blank = vmdatabase.Node(**{f.name: None for f in dataclasses.fields(vmdatabase.Node)})
    ready = dataclasses.replace(blank, id=1, provider='p', label='l', name='n1',
                                external_id='s1', state='ready', state_time=0, created=0)
    building = dataclasses.replace(ready, id=2, name='n2', external_id=None, state='building',
                                   created=100)
    stray = {'id': 's9', 'name': 'x', 'status': 'ACTIVE', 'deleted': False, 'lingering': False,
             'metadata': {'dg-provider': 'p', 'dg-kind': 'node', 'dg-node-id': '9'}}
    found, flight = invariants.consistency('p', [ready, building], [], [stray], [], limits,
                                           last_reap=104)
    assert sorted(v.invariant for v in found) == ['missing-resource', 'untracked-server']
    assert len(flight) == 1
    found, _ = invariants.consistency('p', [building], [], [], [], limits, last_reap=106)
    assert [v.invariant for v in found] == ['overdue-row']


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
    path = tmp_path_factory.mktemp('soak') / 'short.json'
    started = time.monotonic()
    # As the README gives it: ./dev.sh soak --seed 1 (the short profile is the default).
    proc = subprocess.run(['./dev.sh', 'soak', '--seed', '1', '--json', str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    proc.seconds = time.monotonic() - started
    with open(path) as f:
        return proc, json.load(f)


def test_short_profile_passes_with_every_step_fault_and_a_kill(short_run):
    proc, data = short_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert data['violations'] == 0, data['violation_list']
    assert data['seconds'] < SHORT_BUDGET, data['seconds']
    assert set(data['steps']) == {'launch', 'gate', 'reap', 'update-image'}
    # Every kind is armed by the plan.  Counted as injected is only what acted (a 500
    # answered, a boot ended in ERROR): under load an armed fault can find nothing to act
    # on in its cycle (no boot then, the build already past its snapshot), so one or two
    # of the ten may show 0; those that act on every call always do.
    planned, injected = data['faults_planned'], data['faults_injected']
    assert all(planned[k] >= 1 for k in schedule.FAULT_KINDS), planned
    assert all(injected[k] >= 1 for k in ('api-error', 'api-latency', 'outage')), injected
    assert sum(injected[k] >= 1 for k in schedule.FAULT_KINDS) >= len(schedule.FAULT_KINDS) - 2, \
        injected
    assert data['tokens_revoked'] >= 1
    assert sum(data['crashes']['sigkill'].values()) >= 1, data['crashes']
    results = data['jobs']['results']
    assert results.get('success', 0) >= 1 and results.get('failure', 0) >= 1, results
    assert data['recovery']['seconds'] <= data['recovery']['limit']
    assert data['final']['leaks'] == 0
    assert data['max_servers']['samples'] > 10


def test_short_profile_console_is_timestamped_with_a_table_and_no_traceback(short_run):
    proc, data = short_run
    lines = proc.stdout.splitlines()
    assert lines and all(re.match(STAMP + ' soak: ', line) for line in lines), lines[:5]
    assert 'Traceback' not in proc.stdout + proc.stderr
    text = proc.stdout
    for row in ('faults injected', 'crashes survived', 'jobs served', 'time to min-ready',
                'violations         0'):
        assert row in text
    assert re.search(r'soak: no violations; JSON in ', text)


def test_short_profile_leaves_nothing_behind(short_run):
    proc, data = short_run
    workdir = data['workdir']
    assert workdir and not os.path.exists(workdir)
    assert not demo.processes_mentioning(workdir)


def test_ctrl_c_stops_everything_and_removes_the_work_dir():
    proc = subprocess.Popen([sys.executable, '-m', 'soak', '--profile', 'short', '--seed', '2',
                             '--json', os.devnull], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    first = proc.stdout.readline()
    workdir = re.search(r'work dir (\S+);', first).group(1)
    out = [first]
    while True:           # interrupt once the clouds run and a script is running
        line = proc.stdout.readline()
        out.append(line)
        if not line or 'bootstrap' in line:
            break
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    text = ''.join(out) + rest
    assert proc.returncode == 130, text[-3000:]
    assert 'interrupted (SIGINT)' in text
    assert 'Traceback' not in text
    assert not os.path.exists(workdir), text[-2000:]
    assert not demo.processes_mentioning(workdir)

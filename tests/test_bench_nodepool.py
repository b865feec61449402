"""The pure parts of bench/nodepool: configurations, figures, the clear failure.

None of this needs Nodepool, ZooKeeper or a cloud; the benchmark itself runs
only on demand (python -m bench --only nodepool).
"""

import subprocess
import sys

import pytest

from bench import __main__ as bench_main
from bench.common import ROOT, Context
from bench.nodepool import config as cfg
from bench.nodepool import figures, install
from bench.nodepool import zookeeper as zkmod

ZK = {'host': '127.0.0.1', 'port': 2281, 'ca': '/w/ca.pem', 'cert': '/w/c.pem', 'key': '/w/c.key'}


def test_not_in_the_default_run_but_selectable():
    assert 'nodepool' not in bench_main.BENCHMARKS
    assert 'nodepool' in bench_main.ON_DEMAND
    with pytest.raises(SystemExit) as e:
        bench_main.main(['--only', 'no-such-bench'])
    assert e.value.code == 2


def test_nodepool_yaml_points_at_the_cloud_only():
    data = cfg.nodepool_yaml(ZK, 'npcloud', 30)
    assert data['zookeeper-servers'] == [{'host': '127.0.0.1', 'port': 2281}]
    assert data['zookeeper-tls'] == {'ca': '/w/ca.pem', 'cert': '/w/c.pem', 'key': '/w/c.key'}
    assert data['labels'] == [{'name': cfg.LABEL, 'min-ready': 30}]
    (provider,) = data['providers']
    assert provider['driver'] == 'openstack' and provider['cloud'] == 'npcloud'
    # Nodepool's own defaults stand: no rate, boot-timeout, launch-retries ...
    for key in ('rate', 'boot-timeout', 'launch-retries', 'launch-timeout'):
        assert key not in provider
    (pool,) = provider['pools']
    assert pool['max-servers'] == 30
    assert 'host-key-checking' not in pool
    assert provider['cloud-images'] == [{'name': cfg.CLOUD_IMAGE, 'image-name': cfg.BASE_IMAGE,
                                         'username': 'jenkins'}]


def test_host_key_checking_off_and_port_are_stated():
    data = cfg.nodepool_yaml(ZK, 'c', 10, host_key_checking=False, ssh_port=2222)
    pool = data['providers'][0]['pools'][0]
    assert pool['host-key-checking'] is False
    assert data['providers'][0]['cloud-images'][0]['connection-port'] == 2222
    stated = cfg.stated_settings(host_key_checking=False, ssh_port=2222)
    assert any('host-key-checking: false' in k for k in stated)
    assert any('connection-port: 2222' in k for k in stated)
    assert all(why for why in stated.values())
    assert not any('host-key' in k for k in cfg.stated_settings())


def test_ssh_port_is_the_default_as_root():
    assert cfg.node_ssh_port(0) == 22
    assert cfg.node_ssh_port(1000) == cfg.UNPRIVILEGED_SSH_PORT


def test_our_provider_defaults():
    p = cfg.our_provider('dg', 50)
    assert p['max-servers'] == 50 and p['images'][0]['min-ready'] == 50
    for key in ('api-rate', 'boot-timeout', 'ssh-port'):
        assert key not in p


def test_zoo_cfg_is_tls_only():
    text = zkmod.zoo_cfg('/data', 2281, {'server_pem': '/s.pem', 'ca': '/ca.pem'})
    lines = dict(line.split('=', 1) for line in text.splitlines())
    assert lines['secureClientPort'] == '2281'
    assert 'clientPort' not in lines
    assert lines['ssl.keyStore.type'] == 'PEM' and lines['ssl.trustStore.type'] == 'PEM'
    assert lines['ssl.clientAuth'] == 'need'


def test_run_order_alternates():
    assert figures.run_order(0) == list(figures.SIDES)
    firsts = {figures.run_order(r)[0] for r in range(3)}
    assert firsts == set(figures.SIDES)


def _result(side, fill, calls, delay=2.0, nodes=10, **extra):
    return dict({'side': side, 'delay': delay, 'nodes': nodes, 'rep': 0, 'fill': fill,
                 'calls': calls}, **extra)


def test_figures_ratios_and_goals():
    results = [
        _result(figures.OURS, 12.0, {'POST /servers': 10, 'GET /servers/detail': 10},
                fetches=[0.05, 0.06, 0.07], claims=[0.001, 0.002, 0.003]),
        _result(figures.NODEPOOL, 30.0, {'POST /servers': 12, 'GET /servers/detail': 38},
                requests=[1.0, 2.0, 3.0]),
        _result(figures.NODEPOOL_NO_HKC, 20.0, {'POST /servers': 10, 'GET /servers/detail': 20},
                requests=[1.0]),
    ]
    rows = figures.rows(results, {figures.NODEPOOL: {'x': 'why'}})
    by = {(r.case, r.metric): r for r in rows}
    fill = by[('D=2s N=10', 'fill N ready, us / Nodepool')]
    assert fill.value == 12.0 and fill.reference == 30.0
    assert fill.ratio == pytest.approx(0.4) and fill.met is True
    assert fill.detail['settings'][figures.NODEPOOL] == {'x': 'why'}
    calls = by[('D=2s N=10', 'API calls per ready node, us / Nodepool')]
    assert calls.value == 2.0 and calls.reference == 5.0 and calls.met is True
    assert calls.detail['per_kind'][figures.NODEPOOL]['GET /servers/detail'] == 3.8
    nohkc = by[('D=2s N=10', 'fill N ready, us / Nodepool, no host-key check')]
    assert nohkc.goal is None and nohkc.ratio == pytest.approx(0.6)
    fetch = [r for r in rows if 'fetch' in r.metric][0]
    assert fetch.value == pytest.approx(60.0) and fetch.reference == pytest.approx(1500.0)
    assert fetch.met is True
    claim = [r for r in rows if 'in-process claim' in r.metric][0]
    assert claim.value == pytest.approx(2.0)


def test_figures_missed_goal_at_ten_seconds():
    results = [_result(figures.OURS, 19.0, {'a': 10}, delay=10.0),
               _result(figures.NODEPOOL, 20.0, {'a': 10}, delay=10.0)]
    (fill, calls) = figures.rows(results)
    assert fill.goal.limit == 0.9 and fill.met is False
    assert calls.met is False                   # ratio 1 > 0.6


def test_missing_zookeeper_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(install.shutil, 'which', lambda name: None)
    with pytest.raises(install.ToolMissing) as e:
        install.ensure_zookeeper(jar=str(tmp_path / 'nope.jar'))
    assert '\n' not in str(e.value) and 'ZooKeeper is not installed' in str(e.value)
    with pytest.raises(install.ToolMissing) as e:
        install.ensure_java()
    assert str(e.value) == 'java is not installed (ZooKeeper needs a JRE)'


def test_failed_install_is_one_line(tmp_path):
    with pytest.raises(install.ToolMissing) as e:
        install._run([sys.executable, '-c', 'import sys; print("WARNING: Location x", '
                      'file=sys.stderr); print("ERROR: No matching distribution", '
                      'file=sys.stderr); sys.exit(1)'], 'pip install nodepool==11.0.0')
    assert str(e.value) == ('pip install nodepool==11.0.0 failed (exit 1): '
                            'ERROR: No matching distribution')
    with pytest.raises(install.ToolMissing):
        install._run([str(tmp_path / 'no-such-python')], 'making the virtualenv')


def test_bench_fails_with_one_line_when_the_tool_is_missing(tmp_path):
    """The whole command: one FAILED line naming what is missing, no traceback."""
    code = ('import sys; from bench.nodepool import install; '
            'install.ensure_java = lambda: (_ for _ in ()).throw('
            'install.ToolMissing("java is not installed (ZooKeeper needs a JRE)")); '
            'from bench.__main__ import main; sys.exit(main(sys.argv[1:]))')
    got = subprocess.run([sys.executable, '-c', code, '--profile', 'short', '--only', 'nodepool',
                          '--json', str(tmp_path / 'out.json')], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == 1
    assert 'Traceback' not in got.stderr + got.stdout
    failed = [line for line in got.stderr.splitlines() if 'FAILED' in line]
    assert failed == [failed[0]]
    assert failed[0].endswith('nodepool: FAILED: ToolMissing: java is not installed '
                              '(ZooKeeper needs a JRE)')


def test_profiles():
    from bench import nodepool
    short = nodepool.profile(Context(profile='short', workdir='/tmp'))
    full = nodepool.profile(Context(profile='full', workdir='/tmp'))
    assert short['nodes'] == (10,) and short['repetitions'] == 1 and short['delays'] == (2.0,)
    assert full['nodes'] == (10, 30, 50) and full['delays'] == (2.0, 10.0)
    assert full['repetitions'] >= 3


def test_create_pacing():
    from bench.nodepool.sides import create_pacing
    got = create_pacing([(10.0, 10.1), (12.5, 12.6), (11.0, 11.2)])
    assert got == {'creates': 3, 'spread_s': 2.5, 'min_gap_s': 1.0}
    assert create_pacing([]) == {'creates': 0, 'spread_s': None, 'min_gap_s': None}

"""statsd metrics, received on a real UDP socket: the names and values the scripts send."""

import os
import socket
import subprocess
import sys
import textwrap
import time
import types

import pytest

import vmdatabase
from devstackgate import config as configmod
from devstackgate import gate, image, metrics
from tests.pool import ROOT, Pool, cloud_config, make_base_dir, provider
from tests.test_fetch import FETCH, add_ready, write_config
from tests.test_gate import RecordingCloud, claimed_node
from tests.test_gate import write_config as gate_config


class Receiver:
    """A statsd server as far as the test needs: a UDP socket that collects packets."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(('127.0.0.1', 0))
        self.port = self.sock.getsockname()[1]
        self.lines = []

    def env(self, **extra):
        return dict({'STATSD_HOST': '127.0.0.1', 'STATSD_PORT': str(self.port)}, **extra)

    def drain(self, wait=0.3):
        """Every statsd line received so far ('name:value|type')."""
        self.sock.settimeout(wait)
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            self.lines += data.decode('ascii').splitlines()
            self.sock.settimeout(0.05)
        return self.lines

    def of(self, kind):
        """{name: [value, ...]} of one statsd type ('c', 'ms', 'g')."""
        found = {}
        for line in self.lines:
            name, rest = line.split(':', 1)
            value, typ = rest.split('|')[:2]
            if typ == kind:
                found.setdefault(name, []).append(float(value))
        return found

    def close(self):
        self.sock.close()


@pytest.fixture
def statsd():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def no_statsd_from_outside(monkeypatch):
    for var in (metrics.HOST_ENV, metrics.PORT_ENV, metrics.PREFIX_ENV):
        monkeypatch.delenv(var, raising=False)


def test_names_are_sanitised():
    assert metrics.key('launch', 'rax.dfw', 'pre cise:1|x', 'ready') == \
        'dg.launch.rax_dfw.pre_cise_1_x.ready'
    assert metrics.api_operation('snapshot server 1f2e as dg-precise-x') == 'snapshot_server'
    assert metrics.api_operation('list servers') == 'list_servers'
    assert metrics.get({}) is metrics.NULL
    assert metrics.get({'STATSD_HOST': '127.0.0.1', 'STATSD_PORT': 'x'}) is metrics.NULL


def test_a_launch_sends_launch_api_and_node_gauges(tmp_path, clouds_for, sqlite_url, statsd):
    base = make_base_dir(tmp_path)
    clouds = clouds_for(cloud_config('rax', base))
    images = [{'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS', 'min-ram': 512,
               'min-ready': 2},
              {'name': 'bad.label', 'base-image': 'Ubuntu 12.04 LTS', 'min-ram': 512,
               'min-ready': 1, 'ready-check': 'exit 3'}]
    # (A '.' in a label becomes '_' in a key; a provider name with a '.' is sanitised the
    # same way, see test_names_are_sanitised.)
    pool = Pool(tmp_path, clouds, sqlite_url, [provider('rax', images=images)])
    pool.seed_base_images('rax', 'precise')
    pool.seed_base_images('rax', 'bad.label')
    proc = pool.run('devstack-vm-launch.py', 'rax', env=statsd.env(STATSD_PREFIX='ci'))
    assert proc.returncode == 0, proc.stderr
    statsd.drain()
    counters, timers, gauges = statsd.of('c'), statsd.of('ms'), statsd.of('g')
    assert counters['ci.dg.launch.rax.precise.ready'] == [1, 1]
    assert counters['ci.dg.launch.rax.bad_label.failed.ready-check'] == [1]
    assert not [n for n in counters if n.startswith('ci.dg.launch.rax.bad_label.ready')]
    assert len(timers['ci.dg.launch.rax.precise.ready_time']) == 2
    assert all(0 < ms < 60000 for ms in timers['ci.dg.launch.rax.precise.ready_time'])
    # API calls: one counter per attempt, named by operation, never by id.
    assert len(counters['ci.dg.api.rax.create_server']) == 3
    assert counters['ci.dg.api.rax.list_servers']
    assert counters['ci.dg.api.rax.delete_server'] == [1]
    # The pool keypair's first lookup is a 404: an error attempt like any other.
    assert counters['ci.dg.api.rax.get_keypair'] == [1]
    assert {n: v for n, v in counters.items() if '.error.' in n} == {
        'ci.dg.api.rax.error.not-found': [1]}
    # Gauges: every state of every label, zeros included.
    expected = {'ci.dg.nodes.rax.%s.%s' % (label, state): [0.0]
                for label in ('precise', 'bad_label') for state in vmdatabase.NODE_STATES}
    expected['ci.dg.nodes.rax.precise.ready'] = [2.0]
    expected['ci.dg.nodes.rax.bad_label.delete'] = [1.0]
    assert gauges == expected
    # Nothing secret or cloud-specific in a name: no address, no server id.
    servers = pool.live_servers('rax')
    for line in statsd.lines:
        assert '127.' not in line and not any(s['id'] in line for s in servers)
    # A reap run ends with the same gauges, for what it left.
    statsd.lines = []
    proc = pool.run('devstack-vm-reap.py', 'rax', env=statsd.env(STATSD_PREFIX='ci'))
    assert proc.returncode == 0, proc.stderr
    statsd.drain()
    gauges = statsd.of('g')
    assert set(gauges) == set(expected)
    assert gauges['ci.dg.nodes.rax.precise.ready'] == [2.0]
    assert sum(v[0] for v in gauges.values()) == len(pool.nodes(provider='rax'))


def test_api_errors_are_counted_by_reason(tmp_path, clouds_for, sqlite_url, statsd):
    base = make_base_dir(tmp_path)
    clouds = clouds_for(cloud_config('rax', base, faults={'outage': True}))
    pool = Pool(tmp_path, clouds, sqlite_url, [provider('rax', **{'api-retries': 2})])
    pool.seed_base_images('rax', 'precise')
    proc = pool.run('devstack-vm-launch.py', 'rax', env=statsd.env())
    assert proc.returncode != 0
    statsd.drain()
    counters = statsd.of('c')
    errors = {n: v for n, v in counters.items() if n.startswith('dg.api.rax.error.')}
    assert errors, statsd.lines
    attempts = sum(len(v) for n, v in counters.items()
                   if n.startswith('dg.api.rax.') and '.error.' not in n)
    assert sum(len(v) for v in errors.values()) == attempts >= 2


def test_an_image_build_sends_its_duration_and_result(statsd, monkeypatch):
    monkeypatch.setenv('STATSD_HOST', '127.0.0.1')
    monkeypatch.setenv('STATSD_PORT', str(statsd.port))
    ticks = iter([100.0, 712.5, 200.0, 201.0])
    builder = image.Builder(None, types.SimpleNamespace(name='rax.dfw'), None, None, None,
                            clock=lambda: next(ticks))
    monkeypatch.setattr(builder, '_build', lambda label: 'row')
    assert builder.build('precise') == 'row'

    def fail(label):
        raise image.BuildFailed('no-base-image', 'no active image matches')
    monkeypatch.setattr(builder, '_build', fail)
    with pytest.raises(image.BuildFailed):
        builder.build('precise')
    statsd.drain()
    assert statsd.of('ms') == {'dg.image.rax_dfw.precise.duration': [612500, 1000]}
    assert statsd.of('c') == {'dg.image.rax_dfw.precise.ready': [1],
                              'dg.image.rax_dfw.precise.failed.no-base-image': [1]}


def test_fetch_sends_its_wait_and_result(tmp_path, sqlite_url, statsd):
    db = vmdatabase.Database(sqlite_url).upgrade()
    add_ready(db)
    config = write_config(tmp_path, sqlite_url)
    env = dict(os.environ, **statsd.env())
    for args in (['precise'], ['precise'], ['oneiric', '--wait', '0.1']):
        subprocess.run([sys.executable, FETCH, '--config', config] + args,
                       capture_output=True, text=True, env=env, timeout=60)
    statsd.drain()
    counters, timers = statsd.of('c'), statsd.of('ms')
    assert counters == {'dg.fetch.precise.got': [1], 'dg.fetch.precise.none': [1],
                        'dg.fetch.oneiric.none': [1]}
    assert len(timers['dg.fetch.precise.wait']) == 2
    (waited,) = timers['dg.fetch.oneiric.wait']
    assert 100 <= waited < 10000


def test_gate_finish_sends_duration_and_result(tmp_path, sqlite_url, statsd, monkeypatch):
    monkeypatch.setenv('STATSD_HOST', '127.0.0.1')
    monkeypatch.setenv('STATSD_PORT', str(statsd.port))
    config = configmod.load(gate_config(tmp_path, sqlite_url, 'https://example.org'),
                            check_clouds=False)
    db, (node, row) = claimed_node(sqlite_url, {})
    RecordingCloud.deleted = []
    assert gate.finish(config, node.id, 'failure', result_id=row.id, environ={}, db=db,
                       connect=RecordingCloud, now=row.start_time + 30) == 'hold'
    statsd.drain()
    assert statsd.of('c') == {'dg.gate.rax.precise.failure': [1]}
    assert statsd.of('ms') == {'dg.gate.rax.precise.duration': [30000]}


def test_without_statsd_host_nothing_is_sent_or_imported(tmp_path, sqlite_url, statsd):
    db = vmdatabase.Database(sqlite_url).upgrade()
    add_ready(db)
    config = write_config(tmp_path, sqlite_url)
    code = textwrap.dedent('''
        import sys
        from devstackgate.cmd import fetch
        rc = fetch.main(['--config', %r, 'precise'])
        print('STATSD=%%s' %% ('statsd' in sys.modules), file=sys.stderr)
        sys.exit(rc)
        ''' % config)
    env = {k: v for k, v in os.environ.items() if not k.startswith('STATSD_')}
    env['STATSD_PORT'] = str(statsd.port)     # a port alone sends nothing
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'STATSD=False' in proc.stderr
    assert statsd.drain(wait=0.5) == []
    # With STATSD_HOST the same fetch imports the library and sends.
    add_ready(db, name='m')
    env['STATSD_HOST'] = '127.0.0.1'
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'STATSD=True' in proc.stderr
    assert statsd.drain() != []


def test_gate_finish_without_statsd_host_sends_nothing(tmp_path, sqlite_url, statsd,
                                                       monkeypatch):
    monkeypatch.setenv('STATSD_PORT', str(statsd.port))     # a port alone sends nothing
    config = configmod.load(gate_config(tmp_path, sqlite_url, 'https://example.org'),
                            check_clouds=False)
    db, (node, row) = claimed_node(sqlite_url, {})
    RecordingCloud.deleted = []
    gate.finish(config, node.id, 'success', result_id=row.id, environ={}, db=db,
                connect=RecordingCloud, now=time.time())
    assert statsd.drain(wait=0.3) == []

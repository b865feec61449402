"""The provider seam: stages free of SDKs, calls that really run in parallel, one way to wait,
dry runs that touch nothing, and library noise kept off the console."""

import io
import logging
import os
import subprocess
import sys
import threading

import pytest

from devstackgate import cloud, config, log, wait
from localcloud.testing import max_overlap
from tests.pool import ROOT, Pool, cloud_config, make_base_dir, provider

SDKS = ('novaclient', 'glanceclient', 'keystoneauth1')
CREATE = 'POST /compute/v2.1/servers'
LIST = 'GET /compute/v2.1/servers/detail'


def test_stage_modules_import_no_cloud_sdk():
    code = ('import sys\n'
            'import devstackgate.launch, devstackgate.image, devstackgate.reap, '
            'devstackgate.gate, devstackgate.fetch, devstackgate.cloud\n'
            'print(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:])))\n')
    out = subprocess.run([sys.executable, '-c', code, *SDKS], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == '[]'
    # The driver is where they are, and connect() is how a stage gets one; glanceclient
    # only comes with the first image call.
    out = subprocess.run([sys.executable, '-c', code.replace(
        'devstackgate.cloud\n', 'devstackgate.cloud, devstackgate.drivers.openstack\n'), *SDKS],
        capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == str(sorted(set(SDKS) - {'glanceclient'}))


def test_every_kind_has_a_driver_and_a_config_table():
    assert set(cloud.DRIVERS) == set(config.KIND_KEYS) == set(config.KIND_SETTINGS) == set(
        config.KIND_BUILDS_IMAGES) == set(config.KIND_IMAGE_KEYS)
    assert config.PROVIDER_KEYS['kind'].choices == tuple(config.KIND_KEYS)
    assert not set(config.PROVIDER_KEYS) & {k for t in config.KIND_KEYS.values() for k in t}


# -- parallel calls ---------------------------------------------------------------------

def pool_with_latency(tmp_path, clouds_for, sqlite_url, latency, **provider_settings):
    base = make_base_dir(tmp_path)
    clouds = clouds_for(cloud_config('rax', base, faults={
        'api-latency': {'min': latency, 'max': latency}}))
    pool = Pool(tmp_path, clouds, sqlite_url, [provider('rax', **provider_settings)],
                **{'launch-workers': 8})
    pool.seed_base_images('rax', 'precise')
    return pool


def test_launch_boots_in_parallel_under_api_latency(tmp_path, clouds_for, sqlite_url):
    """16 creates at 0.5 s each, 8 workers, api-rate 0: they overlap instead of queueing."""
    latency, count = 0.5, 16
    pool = pool_with_latency(tmp_path, clouds_for, sqlite_url, latency, **{
        'max-servers': count, 'api-timeout': 60, 'images': [
            {'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS', 'min-ram': 512,
             'min-ready': count}]})
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert len(pool.nodes(provider='rax', state='ready')) == count
    spans = pool.clouds['rax'].call_spans(CREATE)
    assert len(spans) == count
    took = max(end for _, end in spans) - min(start for start, _ in spans)
    # Serialised they take count * latency = 8 s; eight at a time about 1 s.
    assert took < count * latency / 3, (took, spans)
    assert max_overlap(spans) >= 4, spans
    # The shared list poll is not stuck behind them either.
    assert max_overlap(spans + pool.clouds['rax'].call_spans(LIST)) >= 4


@pytest.mark.parametrize('check_workers', [1, 4])
def test_ssh_checks_have_workers_of_their_own(tmp_path, clouds_for, sqlite_url, check_workers):
    """One create worker, and SSH checks that take a second (as a node's sshd
    coming up would): launch-check-workers of them run together, not behind the
    creates' one worker."""
    count, spans = 4, tmp_path / 'check-spans'
    check = ('t0=$(date +%%s.%%N); sleep 1; echo "$t0 $(date +%%s.%%N)" >> %s' % spans)
    base = make_base_dir(tmp_path)
    clouds = clouds_for(cloud_config('rax', base))
    pool = Pool(tmp_path, clouds, sqlite_url, [provider('rax', **{
        'max-servers': count, 'images': [
            {'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS', 'min-ram': 512,
             'min-ready': count, 'ready-check': check}]})],
        **{'launch-workers': 1, 'launch-check-workers': check_workers})
    pool.seed_base_images('rax', 'precise')
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert len(pool.nodes(provider='rax', state='ready')) == count
    got = [tuple(map(float, line.split())) for line in spans.read_text().splitlines()]
    assert len(got) == count
    if check_workers == 1:
        assert max_overlap(got) == 1, got
    else:
        assert max_overlap(got) >= 3, got


def test_api_rate_spaces_call_starts_without_serialising_calls(tmp_path, clouds_for,
                                                               sqlite_url):
    pool = pool_with_latency(tmp_path, clouds_for, sqlite_url, 0.3, **{'api-rate': 0.2})
    cfg = config.load(pool.config_path, environ=pool.env())
    adapter = cloud.connect(cfg.provider('rax'), environ=pool.env())
    adapter.list_servers()                  # authenticated before the threads start
    pool.clouds['rax'].reset_stats()
    threads = [threading.Thread(target=adapter.list_servers) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    spans = pool.clouds['rax'].call_spans(LIST)
    assert len(spans) == 5
    starts = [start for start, _ in spans]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(g >= 0.2 - 0.02 for g in gaps), gaps       # spaced by api-rate...
    assert max_overlap(spans) >= 2, spans                  # ...yet running side by side


# -- one way to wait --------------------------------------------------------------------

class FakeTime:
    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_endpoint_is_looked_up_once_per_token(tmp_path, clouds_for):
    """keystoneauth's lookup deep-copies the catalog: about 1 ms of every call's 2.5."""
    from devstackgate.drivers import openstack
    base = make_base_dir(tmp_path)
    clouds = clouds_for(cloud_config('rax', base))
    path = tmp_path / 'devstack-gate.yaml'
    path.write_text('providers:\n  - {name: rax, cloud: rax, images: [{name: precise, '
                    'base-image: Ubuntu 12.04 LTS}]}\n')
    adapter = openstack.Adapter(config.load(str(path), check_clouds=False).provider('rax'),
                                environ={'OS_CLIENT_CONFIG_FILE': clouds.clouds_yaml})
    plugin = adapter._session.auth
    lookups, real = [], plugin.get_endpoint

    def counted(*args, **kwargs):           # the real lookup, counted
        lookups.append(kwargs.get('service_type'))
        return real(*args, **kwargs)
    plugin.get_endpoint = counted
    for _ in range(5):
        assert adapter.list_servers() == []
    assert lookups == ['compute']
    plugin.invalidate()                     # a new token (and catalog): looked up again
    assert adapter.list_servers() == []
    assert lookups == ['compute', 'compute']
    tokens = clouds['rax'].stats()['calls']['POST /identity/v3/auth/tokens']
    assert tokens == 2


def test_iterate_tries_at_once_never_overshoots_and_times_out():
    t = FakeTime()
    seen, progress = [], []
    with pytest.raises(wait.Timeout) as e:
        for waited in wait.iterate(t.now + 10, 4, 'the thing', clock=t.clock, sleep=t.sleep,
                                   progress=progress.append, progress_every=5):
            seen.append(waited)
    assert seen == [0.0, 4.0, 8.0, 10.0]           # the last try is at the deadline
    assert t.sleeps == [4, 4, 2]
    assert progress == [8.0]
    assert 'the thing: still not done after 10 s' in str(e.value)
    assert e.value.reason == 'timeout'
    # A deadline already past still gets its one try.
    t = FakeTime()
    seen = []
    with pytest.raises(wait.Timeout):
        for waited in wait.iterate(t.now - 1, 1, 'x', clock=t.clock, sleep=t.sleep):
            seen.append(waited)
    assert seen == [0.0] and t.sleeps == []


def test_for_state_tells_a_failure_from_a_timeout():
    t = FakeTime()
    states = iter(['building', 'building', 'active'])
    server = lambda state: cloud.Server('s1', 'n', state, {}, '127.0.0.2', 'i', None)  # noqa
    got = wait.for_state(lambda: server(next(states)), 'active', t.now + 60, 1, 'server s1',
                         failed=('error',), clock=t.clock, sleep=t.sleep)
    assert got.state == 'active' and t.sleeps == [1, 1]
    states = iter(['building', 'error'])
    with pytest.raises(wait.Failure) as e:
        wait.for_state(lambda: server(next(states)), 'active', t.now + 60, 1, 'server s1',
                       failed=('error',), clock=t.clock, sleep=t.sleep)
    assert e.value.last.state == 'error' and 'server s1 ended error' in str(e.value)
    with pytest.raises(wait.Timeout) as e:
        wait.for_state(lambda: server('active'), 'active', t.now + 3, 1, 'server s1',
                       ready=lambda s: False, clock=t.clock, sleep=t.sleep)
    assert e.value.last.state == 'active'


# -- dry runs touch nothing -------------------------------------------------------------

def test_dry_runs_on_a_fresh_home_create_nothing(tmp_path, clouds_for):
    base = make_base_dir(tmp_path)
    clouds = clouds_for(cloud_config('rax', base))
    home = tmp_path / 'home'
    home.mkdir()
    config_path = tmp_path / 'devstack-gate.yaml'
    # No database and no ssh-private-key: both default to ~/.devstack-gate/.
    config_path.write_text(
        'providers:\n'
        '  - {name: rax, cloud: rax, api-rate: 0, images: [{name: precise, '
        'base-image: Ubuntu 12.04 LTS, min-ram: 512}]}\n')
    env = dict(os.environ, HOME=str(home), OS_CLIENT_CONFIG_FILE=clouds.clouds_yaml,
               DEVSTACK_GATE_CONFIG=str(config_path))
    clouds['rax'].reset_stats()

    def run(script, *args):
        return subprocess.run([sys.executable, os.path.join(ROOT, script), *args],
                              capture_output=True, text=True, env=env, cwd=str(tmp_path),
                              timeout=120)
    build = run('devstack-vm-update-image.py', 'rax', '--dry-run')
    assert build.returncode == 0, build.stderr
    assert 'rax precise: would boot a template from Ubuntu 12.04 LTS' in build.stdout
    reaped = run('devstack-vm-reap.py', 'rax', '--dry-run')
    assert reaped.returncode == 1
    assert 'does not exist' in reaped.stderr and 'nothing to reap' in reaped.stderr
    # Nothing of ours (no database, no key) and no client cache; only the entry-point
    # cache of the Python packaging machinery (stevedore's) may appear.
    made = sorted(p.relative_to(home).as_posix() for p in home.rglob('*') if p.is_file())
    assert [p for p in made if not p.startswith('.cache/python-entrypoints/')] == [], made
    assert not (home / '.devstack-gate').exists()
    writes = [k for k in clouds['rax'].stats()['calls']
              if k.split()[0] != 'GET' and k != 'POST /identity/v3/auth/tokens']
    assert writes == []


# -- the console ------------------------------------------------------------------------

@pytest.mark.parametrize('verbose', [False, True])
def test_library_lines_are_debug_lines(verbose):
    out = io.StringIO()
    log.setup(verbose=verbose, stream=out)
    try:
        logging.getLogger('paramiko.transport').error(
            'Socket exception: Connection reset by peer (104)')
        logging.getLogger('launch').info('rax precise n1: booting')
    finally:
        log.setup()
    lines = out.getvalue().splitlines()
    assert lines[-1].endswith('INFO launch: rax precise n1: booting')
    if verbose:
        assert lines[0].endswith('DEBUG paramiko.transport: Socket exception: Connection reset '
                                 'by peer (104)')
    else:
        assert len(lines) == 1

"""Image builds against a local cloud: cached data reaches pool nodes; failures never cost the current image."""

import contextlib
import os
import re
import signal
import subprocess
import sys

import pytest

from localcloud.testing import local_clouds
from tests.pool import BASE_IMAGE, Pool, cloud_config, make_base_dir, provider

CACHE_FILE = os.path.join('cache', 'pip', 'devstack-gate-cached.txt')


@pytest.fixture
def built(tmp_path, sqlite_url):
    """A pool over one local cloud whose label builds with a setup script that caches a file."""
    with contextlib.ExitStack() as stack:
        clouds = stack.enter_context(local_clouds(
            {'clouds': [cloud_config('rax', make_base_dir(tmp_path),
                                     faults={'snapshot-delay': 0.2})]},
            tmp_dir=str(tmp_path)))
        (tmp_path / 'cache-it.sh').write_text(
            'set -eu\nmkdir -p cache/pip\necho "cached by build $1" > %s\necho cached\n'
            % CACHE_FILE)
        (tmp_path / 'fail.sh').write_text('echo about to fail\nexit 3\n')
        (tmp_path / 'slow.sh').write_text('touch setup-started\necho sleeping\nsleep 60\n')
        images = [{'name': 'precise', 'base-image': BASE_IMAGE, 'min-ram': 512, 'min-ready': 1,
                   'setup': ['cache-it.sh one']}]
        pool = Pool(tmp_path, clouds, sqlite_url, [provider('rax', images=images)],
                    **{'snapshot-timeout': 30, 'image-build-timeout': 30})
        yield pool


def build(pool, *args, **kwargs):
    return pool.run('devstack-vm-update-image.py', 'rax', *args, **kwargs)


def current(pool):
    return pool.db.transact(lambda s: s.current_image('rax', 'precise'))


def live_images(pool):
    return sorted(i['name'] for i in pool.clouds['rax'].images() if i['status'] != 'deleted')


def assert_nothing_leaked(pool):
    """Only pool nodes are left running, and only kept images exist."""
    node_ids = {n.external_id for n in pool.nodes() if n.state != 'delete'}
    assert {s['id'] for s in pool.live_servers('rax')} <= node_ids
    kept = {i.name for i in pool.db.transact(lambda s: s.images(state='ready'))}
    assert set(live_images(pool)) == kept | {BASE_IMAGE}
    keypairs = [k.name for k in pool.clouds['rax'].nova('2.1').keypairs.list()]
    assert all('-build-' not in k for k in keypairs), keypairs


def test_built_image_carries_its_cache_to_pool_nodes(built):
    proc = build(built)
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr
    assert 'cache-it.sh [' in log and '] cached' in log           # streamed, with elapsed time
    assert 'canary node' in log and 'is now the current image' in log
    image = current(built)
    assert image.state == 'ready' and image.name.startswith('dg-precise-rax-')
    assert_nothing_leaked(built)
    # The canary was the build's (used), never a ready node a gate job could be handed.
    (canary,) = built.nodes()
    assert (canary.image_id, canary.state, canary.fail_reason) == (image.id, 'delete', 'canary')
    assert canary.claimed_by == 'canary of image %s' % image.name
    proc = built.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    (node,) = built.nodes(state='ready')
    assert node.image_id == image.id
    (server,) = [s for s in built.live_servers('rax') if s['id'] == node.external_id]
    assert server['image_id'] == image.external_id
    with open(os.path.join(server['root'], CACHE_FILE)) as f:
        assert f.read() == 'cached by build one\n'


@pytest.mark.parametrize('how,reason', [
    ('setup', 'setup-failed'),
    ('template-error', 'template-error'),
    ('snapshot', 'snapshot-failed'),
])
def test_failed_build_keeps_the_previous_image(built, how, reason):
    assert build(built).returncode == 0
    good = current(built)
    if how == 'setup':
        built.data['providers'][0]['images'][0]['setup'] = ['fail.sh']
        built.write()
    elif how == 'template-error':
        built.clouds['rax'].set_faults({'boot-error-rate': 1.0})
    else:
        built.clouds['rax'].set_faults({'snapshot-failure-rate': 1.0})
    proc = build(built)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'devstack-vm-update-image: provider rax label precise: build failed (%s)' % reason)
    assert current(built) == good
    rows = built.db.transact(lambda s: s.images(label='precise'))
    assert [(r.state, r.fail_reason) for r in rows] == [('ready', None), ('delete', reason)]
    assert_nothing_leaked(built)


def test_canary_without_network_is_never_promoted(built):
    assert build(built).returncode == 0
    good = current(built)
    built.clouds['rax'].set_faults({'snapshot-delay': 2.0})
    built.data['providers'][0]['boot-timeout'] = 4
    built.write()
    proc = built.popen('devstack-vm-update-image.py', 'rax')
    # Once the snapshot is under way the template is done with; the canary gets no network.
    built.wait_for(lambda: any(r.external_id and r.state == 'building' for r in
                               built.db.transact(lambda s: s.images())), what='snapshot started')
    built.clouds['rax'].set_faults({'no-network-rate': 1.0})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert 'build failed (canary-failed)' in err and 'no-network' in err
    assert current(built) == good
    assert_nothing_leaked(built)


def test_retention_keeps_current_and_previous(built):
    for _ in range(3):
        proc = build(built)
        assert proc.returncode == 0, proc.stderr
    rows = built.db.transact(lambda s: s.images(label='precise'))
    assert [(r.state, r.fail_reason) for r in rows] == [
        ('delete', 'beyond-retention'), ('ready', None), ('ready', None)]
    assert current(built).id == rows[2].id
    assert live_images(built) == sorted([BASE_IMAGE, rows[1].name, rows[2].name])


def test_demote_then_launch_uses_the_previous_image(built):
    for _ in range(2):
        assert build(built).returncode == 0
    first, second = built.db.transact(lambda s: s.images(label='precise'))
    proc = build(built, 'precise', '--demote')
    assert proc.returncode == 0, proc.stderr
    assert 'demoted %s; current image is now %s' % (second.name, first.name) in proc.stderr
    assert current(built).id == first.id
    proc = built.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    (node,) = built.nodes(state='ready')
    assert node.image_id == first.id
    (server,) = [s for s in built.live_servers('rax') if s['id'] == node.external_id]
    assert server['image_id'] == first.external_id
    # A demoted image is never promoted again, even by a new build.
    assert build(built).returncode == 0
    assert built.db.transact(lambda s: s.get_image(second.id)).demoted == 1
    assert current(built).id not in (first.id, second.id)
    # Nothing to demote left to fall back on: a clear error.
    for _ in range(2):
        build(built, 'precise', '--demote')
    proc = build(built, 'precise', '--demote')
    assert proc.returncode == 1 and 'has no current image to demote' in proc.stderr


def test_interrupted_build_keeps_the_previous_image(built):
    assert build(built).returncode == 0
    good = current(built)
    built.data['providers'][0]['images'][0]['setup'] = ['slow.sh']
    built.write()
    proc = built.popen('devstack-vm-update-image.py', 'rax')
    built.wait_for(lambda: any(r.server_external_id and r.state == 'building' for r in
                               built.db.transact(lambda s: s.images())), what='template booted')
    built.wait_for(lambda: any(s['name'].startswith('dg-template') and s['root'] and
                               os.path.exists(os.path.join(s['root'], 'setup-started'))
                               for s in built.live_servers('rax')), what='setup running')
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert 'build of dg-precise-rax-' in err and 'failed (interrupted)' in err
    assert current(built) == good
    assert built.db.transact(lambda s: s.images())[-1].fail_reason == 'interrupted'
    assert_nothing_leaked(built)


def test_dry_run_changes_nothing(built):
    proc = build(built, '--dry-run')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith('rax precise: would boot a template from %s' % BASE_IMAGE)
    assert lines[1].startswith('rax precise: would run ') and lines[1].endswith('cache-it.sh one')
    assert built.db.transact(lambda s: s.images()) == []
    assert built.live_servers('rax') == []
    assert built.clouds['rax'].calls('POST /compute/v2.1/servers') == 0


def test_paused_label_and_missing_script(built):
    built.data['providers'][0]['images'][0]['paused'] = True
    built.write()
    proc = build(built)
    assert proc.returncode == 0 and 'rax precise: paused; not building' in proc.stderr
    built.data['providers'][0]['images'][0].update(paused=False, setup=['no-such.sh'])
    built.write()
    proc = build(built)
    assert proc.returncode == 2
    assert "setup script 'no-such.sh' not found" in proc.stderr
    assert built.clouds['rax'].calls('POST /compute/v2.1/servers') == 0


def test_label_paused_in_the_database_is_not_built(built):
    """A pause needs no configuration edit on a bad night: devstack-gate image-pause."""
    for args in (('precise', '--reason', 'bad mirror'), ('precise', '--provider', 'rax')):
        proc = built.run('devstack-gate.py', 'image-pause', *args, env={'USER': 'ops'})
        assert proc.returncode == 0, proc.stderr
        proc = build(built)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r'rax precise: paused by ops since [^;]+; not building', proc.stderr), \
            proc.stderr
        if '--reason' in args:
            assert 'for all providers: bad mirror; not building' in proc.stderr
        assert built.run('devstack-gate.py', 'image-unpause', 'precise').returncode == 0
    assert built.clouds['rax'].calls('POST /compute/v2.1/servers') == 0
    assert built.db.transact(lambda s: s.images()) == []


def test_disabled_label_is_not_built(built):
    """Switched off in the configuration or at run time, a cell is not built."""
    built.data['disabled-labels'] = {'precise': 'known red: bug 1338000'}
    built.write()
    proc = build(built)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r'rax precise: disabled in \S+: known red: bug 1338000; not building',
                     proc.stderr), proc.stderr
    del built.data['disabled-labels']
    built.write()
    built.db.transact(lambda s: s.disable_label('precise', 'mirror down', set_by='ops'))
    proc = build(built)
    assert proc.returncode == 0, proc.stderr
    assert 'rax precise: disabled by ops since' in proc.stderr and 'mirror down' in proc.stderr
    assert built.clouds['rax'].calls('POST /compute/v2.1/servers') == 0
    assert built.db.transact(lambda s: s.images()) == []
    assert built.db.transact(lambda s: s.enable_label('precise'))
    assert build(built).returncode == 0
    assert current(built) is not None


def git(*args, cwd=None):
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@example.org'] + list(args),
                   cwd=cwd, check=True, capture_output=True, timeout=60)


def test_update_image_sh_handles_missing_present_and_broken_checkouts(built, tmp_path):
    origin = tmp_path / 'devstack-origin'
    origin.mkdir()
    git('init', '-q', '-b', 'master', cwd=origin)
    (origin / 'stack.sh').write_text('echo stack\n')
    git('add', '.', cwd=origin)
    git('commit', '-q', '-m', 'first', cwd=origin)
    checkout = tmp_path / 'ds' / 'devstack'
    env = {'DEVSTACK_GATE_DEVSTACK_DIR': str(checkout), 'DEVSTACK_GATE_DEVSTACK_REPO': str(origin),
           'DEVSTACK_GATE_GIT_RETRIES': '2', 'DEVSTACK_GATE_GIT_BACKOFF': '0',
           'DEVSTACK_GATE_PYTHON': sys.executable}

    def run_sh():
        return built.run('devstack-vm-update-image.sh', 'rax', '--dry-run', env=env)

    proc = run_sh()                                   # missing: cloned
    assert proc.returncode == 0, proc.stderr
    assert 'cloning devstack (master)' in proc.stderr and 'devstack is at' in proc.stderr
    assert 'would copy %s to ~/devstack' % checkout in proc.stdout
    assert (checkout / 'stack.sh').exists()
    (origin / 'exercise.sh').write_text('echo exercise\n')
    git('add', '.', cwd=origin)
    git('commit', '-q', '-m', 'second', cwd=origin)
    (checkout / 'stray-file').write_text('left by a previous run')
    proc = run_sh()                                   # present: fetched, reset, cleaned
    assert proc.returncode == 0, proc.stderr
    assert 'devstack is at' in proc.stderr and 'second' in proc.stderr
    assert (checkout / 'exercise.sh').exists() and not (checkout / 'stray-file').exists()
    (checkout / '.git' / 'HEAD').write_text('garbage\n')
    proc = run_sh()                                   # half-broken: cloned again
    assert proc.returncode == 0, proc.stderr
    assert 'is broken; cloning it again' in proc.stderr
    assert (checkout / 'exercise.sh').exists()
    env['DEVSTACK_GATE_DEVSTACK_REPO'] = str(tmp_path / 'nowhere')
    proc = run_sh()                                   # origin gone: retried, then a clear error
    assert proc.returncode == 1
    assert 'git fetch %s: failed (exit 128); attempt 2 of 2 in ' % env[
        'DEVSTACK_GATE_DEVSTACK_REPO'] in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(': failed (exit 128), giving up after '
                                                         '2 attempt(s)')
    assert built.db.transact(lambda s: s.images()) == []
    assert not list((tmp_path / 'ds').glob('.devstack-clone.*'))


def test_shipped_prepare_node_runs_on_the_template(built, tmp_path):
    """The project's own setup script, with its helper and the devstack checkout, on a real template."""
    devstack = os.path.join(os.path.dirname(__file__), 'fixtures', 'devstack', 'devstack')
    built.data['providers'][0]['images'][0]['setup'] = [
        'prepare-node.sh --dry-run --devstack devstack --dist precise --steps apt']
    built.write()
    proc = build(built, '--devstack-dir', devstack)
    assert proc.returncode == 0, proc.stderr
    assert 'copying %s to ~/devstack' % devstack in proc.stderr
    streamed = [l.split('] ', 1)[1] for l in proc.stderr.splitlines() if 'prepare-node.sh [' in l]
    # The plan came from the copied devstack tree's package lists.
    assert any('apt-get install' in l and '--download-only' in l and 'qemu-kvm' in l
               for l in streamed), streamed


def test_validate_command_runs_on_the_canary(built):
    image = built.data['providers'][0]['images'][0]
    image['validate'] = 'grep -q "cached by build" %s' % CACHE_FILE
    built.write()
    proc = build(built)
    assert proc.returncode == 0, proc.stderr
    assert 'validating on canary' in proc.stderr
    good = current(built)
    image['validate'] = 'echo "tempest smoke failed"; exit 1'
    built.write()
    proc = build(built)
    assert proc.returncode == 1
    assert 'validate | tempest smoke failed' in proc.stderr
    assert 'build failed (canary-failed): validate command exited 1 on canary' in proc.stderr
    assert current(built) == good
    assert_nothing_leaked(built)


def test_build_polls_back_off_with_the_time_waited():
    """A build's waits pause image-poll-fraction of the time waited so far, at least
    image-poll-min, at most what the wait asks for (poll-interval or the deadline)."""
    import types

    from devstackgate import image
    now = [100.0]
    slept = []
    config = types.SimpleNamespace(image_poll_fraction=0.05, image_poll_min=0.1)
    backoff = image.Backoff(config, clock=lambda: now[0], sleep=slept.append)
    for waited, asked in ((0.0, 5.0), (1.0, 5.0), (3.0, 5.0), (40.0, 5.0), (400.0, 5.0),
                          (400.0, 0.5)):
        now[0] = 100.0 + waited
        backoff(asked)
    assert slept == pytest.approx([0.1, 0.1, 0.15, 2.0, 5.0, 0.5])


# -- leases ------------------------------------------------------------------------

def lease_rows(pool):
    return {r.scope: r for r in pool.db.transact(lambda s: s.leases(provider='rax'))}


def test_a_label_another_build_holds_is_skipped(built):
    from devstackgate import lease as leasemod
    built.data['lease-wait'] = 0
    built.write()
    other = leasemod.Lease(built.db, 'rax', leasemod.image_scope('precise'), 'update-image',
                           30).acquire(wait=0)
    try:
        proc = build(built)
    finally:
        other.release()
    assert proc.returncode == 0, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('devstack-vm-update-image: provider rax: skipped: lease image precise '
                           'is held by host %s pid %d (update-image) until ' % (other.host,
                                                                                other.pid)), last
    assert built.db.transact(lambda s: s.images()) == []
    assert built.clouds['rax'].calls('POST /compute/v2.1/servers') == 0


def test_the_template_and_canary_boot_under_the_launch_lease(built):
    import time
    from devstackgate import lease as leasemod
    launch = leasemod.Lease(built.db, 'rax', leasemod.LAUNCH, 'launch', 30).acquire(wait=0)
    try:
        proc = built.popen('devstack-vm-update-image.py', 'rax')
        built.wait_for(lambda: built.db.transact(lambda s: s.images()), what='image row')
        time.sleep(1.5)             # a launch run is under way: no server of the build yet
        assert built.clouds['rax'].calls('POST /compute/v2.1/servers') == 0
    finally:
        launch.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 'lease launch of provider rax is held by host %s pid %d (launch) until ' % (
        launch.host, launch.pid) in err
    assert 'is now the current image' in err
    rows = lease_rows(built)
    # Both leases were the build's last, and both are free.
    assert (rows['launch'].stage, rows['launch'].token) == ('update-image', None)
    assert (rows['image precise'].stage, rows['image precise'].token) == ('update-image', None)
    assert_nothing_leaked(built)

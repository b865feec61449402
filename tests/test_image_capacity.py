"""An image build stays within max-servers: its template and canary take the slot
of the oldest ready node (retired for them), or the build fails cleanly."""

import threading

import pytest

from localcloud.testing import local_clouds
from tests.pool import BASE_IMAGE, Pool, cloud_config, make_base_dir, provider


@pytest.fixture
def full(tmp_path, sqlite_url):
    """A provider of max-servers 2 with an image and a full pool of 2 ready nodes."""
    with local_clouds({'clouds': [cloud_config('rax', make_base_dir(tmp_path))]},
                      tmp_dir=str(tmp_path)) as clouds:
        images = [{'name': 'precise', 'base-image': BASE_IMAGE, 'min-ram': 512, 'min-ready': 2}]
        pool = Pool(tmp_path, clouds, sqlite_url,
                    [provider('rax', images=images, **{'max-servers': 2})])
        # (the reaper removes the canary's row, which counts until its server is gone)
        for script in ('devstack-vm-update-image.py', 'devstack-vm-reap.py',
                       'devstack-vm-reap.py', 'devstack-vm-launch.py'):
            proc = pool.run(script, 'rax')
            assert proc.returncode == 0, proc.stderr
        assert len(pool.nodes(state='ready')) == 2
        clouds['rax'].set_faults({'lying-delete-lists': 2})   # deleted servers linger
        yield pool


def sample_servers(pool, stop, seen):
    while not stop.wait(0.02):
        seen.append(len(pool.live_servers('rax')))


def test_a_build_on_a_full_provider_retires_the_oldest_ready_node(full):
    oldest = min(full.nodes(state='ready'), key=lambda n: (n.state_time, n.id))
    stop, seen = threading.Event(), []
    sampler = threading.Thread(target=sample_servers, args=(full, stop, seen))
    sampler.start()
    try:
        proc = full.run('devstack-vm-update-image.py', 'rax')
    finally:
        stop.set()
        sampler.join()
    assert proc.returncode == 0, proc.stderr
    assert 'retired ready node %s to make room for the template' % oldest.name in proc.stderr
    assert seen and max(seen) <= 2, seen        # never above max-servers, lying deletes and all
    retired = full.db.transact(lambda s: s.get_node(oldest.id))
    assert (retired.state, retired.fail_reason) == ('delete', 'room-for-build')


def test_a_build_with_no_ready_node_to_retire_fails_and_keeps_the_current_image(full):
    before = full.db.transact(lambda s: s.current_image('rax', 'precise'))
    for _ in range(2):
        node, _ = full.db.claim_node('precise', 'a gate job')
        assert node is not None
    proc = full.run('devstack-vm-update-image.py', 'rax')
    assert proc.returncode == 1
    assert 'no-capacity' in proc.stderr and 'none ready to make room for the template' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert full.db.transact(lambda s: s.current_image('rax', 'precise')).id == before.id
    assert len(full.live_servers('rax')) == 2

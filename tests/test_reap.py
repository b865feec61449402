"""devstack-vm-reap against local clouds with lying deletes, leaks and a concurrent launch.

The end-to-end tests run the real scripts as subprocesses; the rest call
devstackgate.reap in-process against the same local clouds, or its pure plan.
"""

import collections
import dataclasses
import io
import logging
import re
import socket
import threading
import time

import paramiko
import pytest

import vmdatabase
from localcloud.testing import max_overlap
from devstackgate import cloud, config as configmod, image as imagemod, reap
from devstackgate import lease as leasemod
from devstackgate.drivers import openstack
from tests.pool import BASE_IMAGE, Pool, cloud_config, make_base_dir, provider
from tests.reap_helpers import (Fabricator, cloud_state, database_state, deletions, live_ours,
                                node_meta, table)

HOUR = 3600



def make_pool(tmp_path, clouds_for, db_url, faults=None, min_ready=1, images=None,
              hp=False, **settings):
    base = make_base_dir(tmp_path)
    configs = [cloud_config('rax', base, faults=dict(faults or {}),
                            images=[{'name': BASE_IMAGE, 'directory': base}] + (images or []))]
    providers = [provider('rax', images=[{'name': 'precise', 'base-image': BASE_IMAGE,
                                          'min-ram': 512, 'min-ready': min_ready}])]
    if hp:
        # hp='own': a cloud of its own; hp='shared': the same cloud account as rax.
        if hp == 'own':
            configs.append(cloud_config('hp', base))
        providers.append(provider('hp', cloud='hp' if hp == 'own' else 'rax',
                                  images=[{'name': 'precise', 'base-image': BASE_IMAGE,
                                           'min-ram': 512, 'min-ready': min_ready}]))
    clouds = clouds_for(*configs)
    settings.setdefault('leak-grace', 0)
    pool = Pool(tmp_path, clouds, db_url, providers, **settings)
    return pool


def reap_script(pool, *args, provider='rax', expect=0):
    proc = pool.run('devstack-vm-reap.py', provider, *args)
    assert proc.returncode == expect, proc.stderr
    return proc


def reap_in_process(pool, provider='rax', dry_run=False, clock=time.time, adapter=None,
                    **overrides):
    """One run through devstackgate.reap, with config overrides; returns (summary, out, err)."""
    env = pool.env()
    config = configmod.load(pool.config_path, environ=env)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    prov = config.provider(provider)
    db = reap.open_database(config, dry_run)
    adapter = adapter or openstack.Adapter(prov, environ=env)
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)        # the run's log lines, as on a console
    logger = logging.getLogger('reap')
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        summary = reap.Reaper(config, prov, db, adapter, dry_run=dry_run, out=out, err=err,
                              clock=clock).run()
    finally:
        logger.removeHandler(handler)
    return summary, out.getvalue(), err.getvalue()


def settle(pool, runs=8):
    """Reap until a run deletes nothing; return every run's output."""
    outputs = []
    for _ in range(runs):
        proc = reap_script(pool)
        outputs.append(proc.stderr)
        if not deletions(proc.stderr):
            return outputs
    raise AssertionError('the reaper did not settle in %d runs:\n%s' % (runs, outputs[-1]))


def assert_cloud_and_database_agree(pool, provider='rax'):
    """Every server and image of ours has its row, and every row's resources exist."""
    nodes, images, leaks = database_state(pool)
    nodes = [n for n in nodes if n.provider == provider]
    images = [i for i in images if i.provider == provider]
    servers, glance = live_ours(pool, provider)
    assert all(n.state != 'delete' for n in nodes), nodes
    assert all(i.state != 'delete' for i in images), images
    expected_servers = ({n.external_id for n in nodes}
                        | {i.server_external_id for i in images if i.state == 'building'})
    assert servers == expected_servers
    _, all_images = cloud_state(pool)
    assert glance == {i.external_id for i in images if i.external_id
                      and all_images[i.external_id][1] == provider}
    assert all(i.external_id in all_images for i in images if i.state == 'ready')
    assert [l for l in leaks if l.provider == provider] == []


# -- end to end ------------------------------------------------------------------------

def test_reap_end_to_end(tmp_path, clouds_for, db_url):
    """Every reason, lying deletes, leaks and foreign resources; the cloud and the
    database agree exactly once the reaper settles."""
    pool = make_pool(tmp_path, clouds_for, db_url, faults={'lying-delete-lists': 3},
                     min_ready=5, **{'image-build-timeout': 60, 'snapshot-timeout': 60})
    current = pool.seed_base_images('rax', 'precise')
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    held, held_on, used_long, ready, used = pool.nodes(provider='rax')
    now = time.time()
    f = Fabricator(pool)
    f.transact(lambda s: (
        s.transition(held, 'hold', hold_until=now - 10),
        s.transition(held_on, 'hold', hold_until=now + HOUR),
        s.transition(used_long, 'used', now=now - 9 * HOUR),
        s.transition(used, 'used', now=now - 60)))
    # Untracked and foreign things: an untagged server named like ours (also the
    # source of some snapshots), another provider's server and snapshot, an
    # untagged snapshot named like ours, and leaks of ours.
    source = f.boot('dg-precise-rax-source', active=True)
    hp_server = f.boot('dg-precise-hp-1', node_meta('hp', 1))
    untagged_image = f.snapshot(source, 'dg-precise-rax-untagged')
    hp_image = f.snapshot(source, 'dg-precise-hp-1', {'dg-provider': 'hp', 'dg-image-id': '1'})
    leaked_server = f.boot('dg-precise-rax-9999', node_meta('rax', 9999))
    leaked_template = f.boot('dg-template-precise-rax-8888',
                             {'dg-provider': 'rax', 'dg-kind': 'template', 'dg-image-id': '8888'})
    leaked_image = f.snapshot(leaked_template, 'dg-precise-rax-8888',
                              {'dg-provider': 'rax', 'dg-kind': 'image', 'dg-image-id': '8888'})
    # Images: previous (its template still up), older, demoted, an interrupted
    # build (snapshot not recorded), a failed build (template not recorded), a
    # build in progress.
    previous, _, previous_template = f.image('ready', now - HOUR)
    older, older_image, _ = f.image('ready', now - 2 * HOUR, template=False,
                                    snapshot_from=source)
    demoted, demoted_image, _ = f.image('ready', now - 60, template=False,
                                        snapshot_from=source, demoted=1)
    interrupted, interrupted_image, interrupted_template = f.image(
        'building', now - 1000, record_image=False)
    failed, _, failed_template = f.image('delete', now - 60, snapshot=False,
                                         record_template=False, fail_reason='setup-failed')
    building, _, building_template = f.image('building', snapshot=False)
    # Nodes launch cannot produce.
    error, error_server = f.node('error', image_id=current.id)
    stuck, stuck_server = f.node('building', now - 200, record=False, image_id=current.id)
    stale, stale_server = f.node('ready', image_id=older.id)
    aged, aged_server = f.node('ready', now - 25 * HOUR, image_id=current.id)
    dead, dead_server = f.node('delete', now - 60, image_id=current.id)
    lost, _ = f.node('delete', now - 60, boot=False, fail_reason='quota')

    first = reap_script(pool)
    expected = {
        ('node', held.external_id, 'hold-expired', ''),
        ('node', used_long.external_id, 'used-too-long', ''),
        ('node', error_server, 'error', ''),
        ('node', stuck_server, 'build-timeout', ''),
        ('node', stale_server, 'image-not-current', ''),
        ('node', aged_server, 'ready-too-old', ''),
        ('node', dead_server, 'delete', ''),
        ('node', 'row %d' % lost.id, 'delete', 'gone from the cloud, row removed'),
        ('image', older_image, 'beyond-retention', ''),
        ('image', demoted_image, 'demoted', ''),
        ('image', interrupted_image, 'interrupted-build', ''),
        ('template', interrupted_template, 'interrupted-build', ''),
        ('template', failed_template, 'failed-build', ''),
        ('template', previous_template, 'template-done', ''),
    }
    lines = deletions(first.stderr)
    assert sorted(lines) == sorted(expected)
    # The end table counts them per reason, and the rows left per state.
    counts = collections.Counter(reason for _, _, reason, _ in expected)
    remaining = collections.Counter(n.state for n in pool.nodes(provider='rax'))
    images_left = collections.Counter(
        i.state for i in pool.db.transact(lambda s: s.images(provider='rax')))
    want = ([('deleted', r, counts[r]) for r in reap.REASONS if counts[r]]
            + [('nodes', s, remaining[s]) for s in vmdatabase.NODE_STATES if remaining[s]]
            + [('images', s, images_left[s]) for s in vmdatabase.IMAGE_STATES if images_left[s]])
    assert table(first.stderr) == want
    assert remaining == {'delete': 7, 'hold': 1, 'ready': 1, 'used': 1}
    # Leaks are only noted on the first sighting.
    assert 'untracked server dg-precise-rax-9999 (%s): seen on 1 run(s)' % leaked_server \
        in first.stderr

    outputs = settle(pool)
    later = [line for out in outputs for line in deletions(out)]
    leaked = {(kind, ident) for kind, ident, reason, _ in later if reason == 'leaked'}
    assert leaked == {('server', leaked_server), ('server', leaked_template),
                      ('image', leaked_image)}
    # The lying cloud kept listing deleted servers: their rows stayed and the
    # delete was asked again before the row went.
    assert any(reason == 'delete' and note == '' for _, _, reason, note in later)
    assert pool.clouds['rax'].calls('DELETE /compute/v2.1/servers/{id}') > 13

    nodes = {n.id: n.state for n in pool.nodes(provider='rax')}
    assert nodes == {held_on.id: 'hold', ready.id: 'ready', used.id: 'used'}
    images = {i.id: i.state for i in pool.db.transact(lambda s: s.images(provider='rax'))}
    assert images == {current.id: 'ready', previous.id: 'ready', building.id: 'building'}
    assert failed.id not in images and interrupted.id not in images
    assert_cloud_and_database_agree(pool)
    servers, all_images = cloud_state(pool)
    # Never touched: untagged (whatever the name), another provider's, the base image.
    assert {source, hp_server, building_template} <= set(servers)
    assert {untagged_image, hp_image, current.external_id} <= set(all_images)


# -- dry run ---------------------------------------------------------------------------

def test_dry_run_prints_the_real_runs_lines_and_changes_nothing(tmp_path, clouds_for,
                                                                 sqlite_url):
    pool = make_pool(tmp_path, clouds_for, sqlite_url)
    current = pool.seed_base_images('rax', 'precise')
    f = Fabricator(pool)
    now = time.time()
    f.node('hold', hold_until=now - 1, image_id=current.id)
    f.node('hold', hold_until=now + HOUR, image_id=current.id)
    f.node('used', now - 9 * HOUR, image_id=current.id)
    f.node('delete', now - 60, boot=False)
    f.image('delete', now - 60, fail_reason='snapshot-failed')
    leak = f.boot('dg-precise-rax-4242', node_meta('rax', 4242))
    reap_script(pool, '--dry-run')          # (a dry run records no sighting)
    before_db, before_cloud = database_state(pool), cloud_state(pool)
    pool.clouds['rax'].reset_stats()
    dry = reap_script(pool, '--dry-run')
    assert database_state(pool) == before_db
    assert cloud_state(pool) == before_cloud
    calls = pool.clouds['rax'].stats()['calls']
    assert [k for k in calls if not k.startswith(('GET ', 'POST /identity'))] == [], calls
    lines = dry.stdout.splitlines()
    assert lines and all(line.startswith('would delete ') for line in lines)
    assert [r for _, _, r, _ in deletions(dry.stdout)] == [
        'hold-expired', 'used-too-long', 'delete', 'failed-build', 'failed-build']
    assert table(dry.stderr)[:4] == [('would delete', 'delete', 1),
                                     ('would delete', 'used-too-long', 1),
                                     ('would delete', 'hold-expired', 1),
                                     ('would delete', 'failed-build', 2)]
    assert 'deleting' not in dry.stderr
    # The real run does what the dry run said, in the same words.
    real = reap_script(pool)
    assert deletions(real.stderr) == deletions(dry.stdout)
    assert leak in live_ours(pool)[0]       # a leak seen once is never deleted


# -- two-phase deletion ----------------------------------------------------------------

class ListingAdapter:
    """The real adapter, remembering what each run's server list held."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.listed = []

    def list_servers(self):
        servers = self.adapter.list_servers()
        self.listed.append({s.id for s in servers})
        return servers

    def __getattr__(self, name):
        return getattr(self.adapter, name)


def test_rows_stay_until_the_lying_cloud_stops_listing_the_server(tmp_path, clouds_for,
                                                                  sqlite_url):
    pool = make_pool(tmp_path, clouds_for, sqlite_url, faults={'lying-delete-lists': 5})
    current = pool.seed_base_images('rax', 'precise')
    f = Fabricator(pool)
    nodes = [f.node('ready', time.time() - 25 * HOUR, image_id=current.id)[0]
             for _ in range(2)]
    config = configmod.load(pool.config_path, environ=pool.env())
    adapter = ListingAdapter(openstack.Adapter(config.provider('rax'), environ=pool.env()))
    history = []
    for _ in range(8):
        summary, _, err = reap_in_process(pool, adapter=adapter)
        rows = {n.id: n for n in pool.nodes(provider='rax')}
        history.append(summary.deleted.copy())
        for node in nodes:
            if node.id not in rows:
                # Removed only by a run whose list no longer held the server.
                assert node.external_id not in adapter.listed[-1]
                assert node.external_id not in live_ours(pool)[0]
            else:
                assert rows[node.id].state == 'delete'
        if not rows:
            break
    assert not pool.nodes(provider='rax'), history
    assert history[0] == {'ready-too-old': 2}
    # While the cloud lied, each run asked again.
    assert sum(h['delete'] for h in history) > 2
    assert pool.clouds['rax'].calls('DELETE /compute/v2.1/servers/{id}') > 2


class DownAfterListing(ListingAdapter):
    """The cloud answers the lists, then goes away."""

    def delete_server(self, server_id):
        raise cloud.CloudUnavailable('provider rax: delete server %s: cannot reach the API '
                                     '(ConnectFailure)' % server_id)


def test_a_cloud_lost_mid_run_stops_the_run_with_the_rows_consistent(tmp_path, clouds_for,
                                                                     sqlite_url):
    pool = make_pool(tmp_path, clouds_for, sqlite_url)
    current = pool.seed_base_images('rax', 'precise')
    f = Fabricator(pool)
    nodes = [f.node('used', time.time() - 9 * HOUR, image_id=current.id)[0] for _ in range(2)]
    config = configmod.load(pool.config_path, environ=pool.env())
    prov = config.provider('rax')
    adapter = DownAfterListing(openstack.Adapter(prov, environ=pool.env()))
    err = io.StringIO()
    with pytest.raises(cloud.CloudUnavailable):
        reap.Reaper(config, prov, pool.db, adapter, out=io.StringIO(), err=err).run()
    # The end table is still printed.
    assert table(err.getvalue()) == [('deleted', 'nothing', 0), ('nodes', 'delete', 2),
                                     ('images', 'ready', 1)]
    # Marked, kept, and found again by the next run (its servers are still there).
    assert [n.state for n in pool.nodes(provider='rax')] == ['delete', 'delete']
    summary, _, err = reap_in_process(pool)
    assert summary.deleted == {'delete': 2}, err
    assert {n.external_id for n in nodes} == {d[1] for d in deletions(err)}


def test_deletes_run_reap_workers_at_a_time_and_keep_the_api_rate(tmp_path, clouds_for,
                                                                   sqlite_url):
    """Eight deletes at 0.4 s each: reap-workers 4 runs them four at a time (two rounds,
    not eight); the provider's api-rate still spaces their starts; the lines and the
    table are the one-by-one run's."""
    pool = make_pool(tmp_path, clouds_for, sqlite_url, faults={'delete-latency': 0.4},
                     **{'reap-workers': 4})
    pool.data['providers'][0]['api-rate'] = 0.1
    pool.write()
    current = pool.seed_base_images('rax', 'precise')
    f = Fabricator(pool)
    servers = [f.node('used', time.time() - 9 * HOUR, image_id=current.id)[1] for _ in range(8)]
    pool.clouds['rax'].reset_stats()
    summary, _, err = reap_in_process(pool)
    assert summary.deleted == {'used-too-long': 8} and not summary.failed, err
    assert sorted(ident for _, ident, _, _ in deletions(err)) == sorted(servers)
    spans = pool.clouds['rax'].call_spans('DELETE /compute/v2.1/servers/{id}')
    assert len(spans) == 8
    assert max_overlap(spans) == 4, spans
    took = max(end for _, end in spans) - min(start for start, _ in spans)
    assert took < 8 * 0.4 * 0.75, took              # one by one: 3.2 s and more
    starts = sorted(start for start, _ in spans)
    assert starts[-1] - starts[0] >= 7 * 0.1 * 0.9, starts     # spaced (on average)
    assert live_ours(pool)[0] == set()


def test_a_refused_delete_is_retried_next_run_and_never_forgotten(tmp_path, clouds_for,
                                                                  sqlite_url):
    protected = {'name': 'dg-precise-rax-7', 'directory': make_base_dir(tmp_path),
                 'id': '77777777-0000-4000-8000-000000000077', 'protected': True,
                 'properties': {'dg-provider': 'rax', 'dg-kind': 'image', 'dg-image-id': '7'}}
    pool = make_pool(tmp_path, clouds_for, sqlite_url, images=[protected])
    row = pool.db.transact(lambda s: s.create_image(
        'rax', 'precise', state='delete', now=time.time() - 60, name=protected['name'],
        external_id=protected['id'], fail_reason='canary-failed'))
    for attempt in (1, 2):
        proc = reap_script(pool, expect=1)
        assert ('delete of image dg-precise-rax-7 (%s) failed (api)' % protected['id']
                in proc.stderr)
        assert proc.stderr.strip().splitlines()[-1] == (
            'devstack-vm-reap: provider rax: 1 delete(s) failed (see above); they are asked '
            'again on the next run')
        assert ('failed', 'failed-build', 1) in table(proc.stderr)
        assert pool.db.transact(lambda s: s.get_image(row.id)) == row
        assert pool.clouds['rax'].calls('DELETE /image/v2/images/{id}') == attempt


# -- leaks -----------------------------------------------------------------------------

def test_leaks_go_only_when_seen_twice_and_past_the_grace(tmp_path, clouds_for, sqlite_url):
    pool = make_pool(tmp_path, clouds_for, sqlite_url, hp='shared', **{'leak-grace': 600})
    pool.data['providers'][0]['boot-timeout'] = 3600
    pool.write()
    current = pool.seed_base_images('rax', 'precise')
    f = Fabricator(pool)
    leak = f.boot('dg-precise-rax-4242', node_meta('rax', 4242))
    untagged = f.boot('dg-precise-rax-4243')
    other = f.boot('dg-precise-hp-4244', node_meta('hp', 4244))
    # A server whose node row is still being written (a launch between create
    # and record) is tracked by its metadata, not a leak...
    row, in_flight = f.node('building', record=False)
    # ...but a second server claiming a node that has its server is one.
    kept, _ = f.node('ready', image_id=current.id)
    twin = f.boot(kept.name, node_meta('rax', kept.id))
    later = time.time() + 700

    def sightings():
        return {l.external_id: l.sightings for l in pool.db.transact(lambda s: s.leaks())}

    summary, _, err = reap_in_process(pool)
    assert sightings() == {leak: 1, twin: 1} and not summary.deleted
    _, out, _ = reap_in_process(pool, dry_run=True, clock=lambda: later)
    assert sightings() == {leak: 1, twin: 1}     # the dry run wrote nothing...
    lines = sorted(deletions(out))               # ...but says what a real run would do
    assert [line[:3] for line in lines] == sorted([('server', leak, 'leaked'),
                                                   ('server', twin, 'leaked')])
    assert all(re.fullmatch(r'no row; seen on 2 runs in a row, 70\d s old', line[3])
               for line in lines), lines
    summary, _, err = reap_in_process(pool)
    assert sightings() == {leak: 2, twin: 2} and not summary.deleted, err
    assert 'untracked server dg-precise-rax-4242 (%s): seen on 2 run(s)' % leak in err
    summary, _, err = reap_in_process(pool, clock=lambda: later)
    assert summary.deleted == {'leaked': 2}, err
    assert sorted(d[:3] for d in deletions(err)) == sorted([('server', leak, 'leaked'),
                                                           ('server', twin, 'leaked')])
    # Other providers' and untagged servers are untouched by more runs.
    for _ in range(2):
        summary, _, err = reap_in_process(pool, clock=lambda: later)
    servers, _ = cloud_state(pool)
    assert leak not in servers and twin not in servers
    assert {untagged, other, in_flight, kept.external_id} <= set(servers)
    assert not summary.deleted and sightings() == {}
    # The hp reaper, on the same cloud account, never touches rax's things either.
    for _ in range(2):
        summary, _, err = reap_in_process(pool, provider='hp', clock=lambda: later)
    assert summary.deleted == {'leaked': 1}, err
    assert [d[:3] for d in deletions(err)] == [('server', other, 'leaked')]
    servers, _ = cloud_state(pool)
    assert other not in servers and {untagged, in_flight, kept.external_id} <= set(servers)
    assert pool.db.transact(lambda s: s.get_node(row.id)).state == 'building'


def test_an_image_row_for_an_image_we_did_not_make_goes_but_the_image_stays(
        tmp_path, clouds_for, sqlite_url):
    pool = make_pool(tmp_path, clouds_for, sqlite_url)
    base = pool.seed_base_images('rax', 'precise')       # recorded by hand: no metadata
    now = time.time()
    pool.db.transact(lambda s: s.update_image(base.id, created=now - 3 * HOUR))
    f = Fabricator(pool)
    source = f.boot('snapshot-source', active=True)
    f.image('ready', now - 2 * HOUR, template=False, snapshot_from=source)
    f.image('ready', now - HOUR, template=False, snapshot_from=source)
    summary, _, err = reap_in_process(pool)
    assert summary.deleted == {'beyond-retention': 1}, err
    assert ('image %s (row %d): glance image %s does not carry dg-provider=rax; the row goes, '
            'the image stays' % (BASE_IMAGE, base.id, base.external_id)) in err
    assert pool.db.transact(lambda s: s.get_image(base.id)).state == 'delete'
    summary, _, err = reap_in_process(pool)
    assert pool.db.transact(lambda s: s.get_image(base.id)) is None
    assert base.external_id in cloud_state(pool)[1]
    assert pool.clouds['rax'].calls('DELETE /image/v2/images/{id}') == 0


class ClaimAfterRead(reap.Reaper):
    """A reaper during whose run a gate job claims a node right after the rows were read."""

    def read(self):
        rows = super().read()
        node, _ = self.db.claim_node('precise', 'gate-job-1')
        assert node is not None
        return rows


def test_a_node_claimed_after_the_reaper_read_it_is_not_deleted(tmp_path, clouds_for, db_url):
    pool = make_pool(tmp_path, clouds_for, db_url)
    current = pool.seed_base_images('rax', 'precise')
    f = Fabricator(pool)
    old, server = f.node('ready', time.time() - 25 * HOUR, image_id=current.id)
    config = configmod.load(pool.config_path, environ=pool.env())
    prov = config.provider('rax')
    adapter = openstack.Adapter(prov, environ=pool.env())
    summary = ClaimAfterRead(config, prov, pool.db, adapter, out=io.StringIO(),
                             err=io.StringIO()).run()
    assert not summary.deleted and summary.skipped == 1
    assert pool.db.transact(lambda s: s.get_node(old.id)).state == 'used'
    assert server in live_ours(pool)[0]
    assert pool.clouds['rax'].calls('DELETE /compute/v2.1/servers/{id}') == 0


def test_marking_a_row_waits_for_a_claim_in_flight(tmp_path, db_url):
    """A gate job's claim that has not committed yet when the reaper decides: the
    reaper's mark waits for it and then leaves the claimed node alone."""
    config = configmod.validate({'database': db_url, 'providers': [
        {'name': 'rax', 'cloud': 'rax', 'images': [{'name': 'precise', 'base-image': 'x'}]}]},
        'test.yaml', check_clouds=False)
    db = vmdatabase.Database(db_url).upgrade()
    old = db.transact(lambda s: s.create_node('rax', 'precise', state='ready',
                                              now=time.time() - 25 * HOUR))
    reaper = reap.Reaper(config, config.provider('rax'), db, adapter=None)
    claimed, release = threading.Event(), threading.Event()

    def claim():
        with db.session() as s:
            s.transition(old, 'used', claimed_by='gate-job-1')
            claimed.set()
            release.wait(10)
    thread = threading.Thread(target=claim)
    thread.start()
    assert claimed.wait(10)
    threading.Timer(0.3, release.set).start()
    done, fresh = reaper._update_row(old, {'state': 'delete'})
    thread.join()
    assert not done and fresh.state == 'used'
    assert db.transact(lambda s: s.get_node(old.id)).state == 'used'


# -- concurrency and outages -----------------------------------------------------------

def test_a_launch_while_reaping_keeps_all_its_nodes(tmp_path, clouds_for, db_url):
    pool = make_pool(tmp_path, clouds_for, db_url, faults={'boot-delay': 3.0}, min_ready=3,
                     **{'leak-grace': 60})
    current = pool.seed_base_images('rax', 'precise')
    f = Fabricator(pool)
    doomed, doomed_server = f.node('used', time.time() - 9 * HOUR, image_id=current.id)
    launch = pool.popen('devstack-vm-launch.py', 'rax')
    reaps = []
    while launch.poll() is None or not reaps:
        reaps.append(reap_script(pool).stderr)
    _, err = launch.communicate(timeout=60)
    assert launch.returncode == 0, err
    assert 'rax precise: ready 3, building 0, launched 3, failed 0' in err
    # A launch and a reap hold different leases: no reap waited for or skipped the launch.
    assert not any('is held by' in out or ': skipped: ' in out for out in reaps), reaps
    ready = pool.nodes(provider='rax', state='ready')
    assert len(ready) == 3
    # Some runs saw the launch's nodes building (and its servers without a ready
    # row), and acted only on the stale node.
    assert any(section == 'nodes' and state == 'building'
               for out in reaps for section, state, _ in table(out)), reaps
    reasons = {(ident, reason) for out in reaps for _, ident, reason, _ in deletions(out)}
    assert reasons <= {(doomed_server, 'used-too-long'), (doomed_server, 'delete')}
    assert (doomed_server, 'used-too-long') in reasons
    settle(pool)
    assert {n.external_id for n in pool.nodes(provider='rax')} == live_ours(pool)[0]
    assert len(pool.nodes(provider='rax', state='ready')) == 3


def test_provider_down_exits_1_naming_it_and_the_other_reaps(tmp_path, clouds_for, sqlite_url):
    pool = make_pool(tmp_path, clouds_for, sqlite_url, hp='own')
    pool.data['providers'][0]['api-timeout'] = 2
    pool.write()
    pool.seed_base_images('hp', 'precise')
    f_hp = Fabricator(pool, cloud='hp', provider='hp')
    _, hp_server = f_hp.node('used', time.time() - 9 * HOUR)
    rax_row = pool.db.transact(lambda s: s.create_node('rax', 'precise', state='error'))
    pool.clouds['rax'].set_faults(outage=True)
    down = pool.popen('devstack-vm-reap.py', 'rax')
    up = reap_script(pool, provider='hp')
    _, err = down.communicate(timeout=60)
    assert down.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith('devstack-vm-reap: provider rax: list servers: '), last
    assert deletions(up.stderr) == [('node', hp_server, 'used-too-long', '')]
    assert pool.db.transact(lambda s: s.get_node(rax_row.id)) == rax_row


# -- the plan's rules, without a cloud -------------------------------------------------

LIMITS = reap.Limits(boot_timeout=600, hold=24 * HOUR, max_used=8 * HOUR, max_ready=24 * HOUR,
                     leak_grace=900, keep_images=2, interrupted_build=11400)
NOW = 1_000_000_000.0


def row(cls, **fields):
    values = {f.name: None for f in dataclasses.fields(cls)}
    values.update(provider='rax', label='precise', state_time=NOW, created=NOW)
    if cls is vmdatabase.Image:
        values['demoted'] = 0
    values.update(fields)
    return cls(**values)


def node(**fields):
    return row(vmdatabase.Node, **fields)


def image(**fields):
    return row(vmdatabase.Image, **fields)


@pytest.mark.parametrize('fields,reason', [
    ({'state': 'hold', 'state_time': NOW - 24 * HOUR - 1}, 'hold-expired'),
    ({'state': 'hold', 'state_time': NOW - 24 * HOUR + 60}, None),
    ({'state': 'hold', 'state_time': NOW - 48 * HOUR, 'hold_until': NOW + 1}, None),
    ({'state': 'used', 'state_time': NOW - 8 * HOUR + 60}, None),
    ({'state': 'used', 'state_time': NOW - 8 * HOUR - 1}, 'used-too-long'),
    ({'state': 'building', 'created': NOW - 599}, None),
    ({'state': 'building', 'created': NOW - 601}, 'build-timeout'),
    ({'state': 'ready', 'image_id': 1}, None),
    ({'state': 'ready', 'image_id': 2}, 'image-not-current'),
    ({'state': 'ready', 'image_id': 3}, None),                  # a canary of a build
    ({'state': 'ready', 'image_id': 3, 'created': NOW - 25 * HOUR}, 'ready-too-old'),
    ({'state': 'ready', 'image_id': 1, 'created': NOW - 25 * HOUR}, 'ready-too-old'),
    ({'state': 'ready', 'image_id': 2, 'label': 'other'}, None),   # no current image at all
    ({'state': 'error'}, 'error'),
    ({'state': 'delete'}, 'delete'),
])
def test_node_rules(fields, reason):
    rows = {1: image(id=1, state='ready'), 2: image(id=2, state='ready'),
            3: image(id=3, state='building')}
    current = {'precise': rows[1], 'other': None}
    assert reap.node_reason(node(id=9, **fields), LIMITS, current, rows, NOW) == reason


def test_retention_never_touches_current_or_previous():
    rows = [image(id=1, state='ready', created=NOW - 40),
            image(id=2, state='ready', created=NOW - 30, demoted=1),
            image(id=3, state='ready', created=NOW - 20),
            image(id=4, state='ready', created=NOW - 10, demoted=1),
            image(id=5, state='building', created=NOW),
            image(id=6, state='ready', created=NOW - 50),
            image(id=7, state='ready', created=NOW - 5, label='other', demoted=1)]
    assert imagemod.retention(rows, 2) == {6: 'beyond-retention', 2: 'demoted', 4: 'demoted',
                                       7: 'demoted'}
    assert imagemod.retention(rows, 3) == {2: 'demoted', 4: 'demoted', 7: 'demoted'}


def test_rows_that_entered_delete_after_the_list_wait_for_the_next_run():
    late = node(id=1, state='delete', state_time=NOW, external_id='gone')
    early = node(id=2, state='delete', state_time=NOW - 10, external_id='gone-too')
    p = reap.plan('rax', LIMITS, [late, early], [], [], [], {}, [], NOW, NOW - 5)
    assert [(s.row.id, s.remove) for s in p.steps] == [(2, True)]
    assert 'settled by the next run' in p.notes[0]


def test_table_is_aligned():
    summary = reap.Summary('rax', deleted=collections.Counter({'leaked': 2, 'delete': 1}),
                           failed=collections.Counter({'demoted': 1}),
                           nodes={'ready': 2, 'hold': 1}, images={'ready': 2})
    assert summary.table() == [
        'reap rax: what this run deleted, and the rows that remain',
        '  deleted       delete                   1',
        '  deleted       leaked                   2',
        '  failed        demoted                  1',
        '  nodes         ready                    2',
        '  nodes         hold                     1',
        '  images        ready                    2',
    ]
    # The longest reason keeps the columns aligned too.
    summary = reap.Summary('rax', deleted=collections.Counter({'deleted-by-operator': 1}))
    assert summary.table()[1] == '  deleted       deleted-by-operator      1'


def test_an_image_row_an_operator_deleted_is_counted_as_such():
    row = image(id=4, state='delete', fail_reason='deleted-by-operator')
    assert reap.image_row_reason(row, LIMITS, {}, NOW) == 'deleted-by-operator'
    assert 'deleted-by-operator' in reap.REASONS


def test_build_keypairs_and_vanished_images_go(tmp_path, clouds_for, sqlite_url):
    """A crashed build's keypair is deleted once its build is over; a ready image row whose
    glance image disappeared is retired so launch stops trying to boot from it."""
    pool = make_pool(tmp_path, clouds_for, sqlite_url)
    nova = Fabricator(pool).nova

    def public_key():
        key = paramiko.ECDSAKey.generate()
        return '%s %s' % (key.get_name(), key.get_base64())
    over = pool.db.transact(lambda s: s.create_image('rax', 'precise', state='delete',
                                                     fail_reason='setup-failed'))
    running = pool.db.transact(lambda s: s.create_image('rax', 'precise'))
    for row in (over, running):
        nova.keypairs.create(imagemod.build_keypair_name('dg', 'precise', 'rax', row.id),
                             public_key=public_key())
    nova.keypairs.create('someone-elses-key', public_key=public_key())
    gone = pool.db.transact(lambda s: s.create_image('rax', 'precise', state='ready',
                                                     external_id='no-such-image', name='gone'))
    lines = [l[:3] for l in deletions(reap_script(pool).stderr)]
    assert ('keypair', 'dg-build-precise-rax-%d' % over.id, 'leaked-keypair') in lines, lines
    assert ('image', 'no-such-image', 'image-vanished') in lines, lines
    names = sorted(k.name for k in nova.keypairs.list())
    assert names == sorted(['dg-build-precise-rax-%d' % running.id, 'someone-elses-key'])
    assert pool.db.transact(lambda s: s.get_image(gone.id)).state == 'delete'


# -- two reaps of one provider at once (the lease) -----------------------------------

def reap_lease(pool, provider='rax'):
    rows = pool.db.transact(lambda s: s.leases(provider=provider))
    return next((r for r in rows if r.scope == 'reap'), None)


def test_two_reaps_at_once_one_skips_and_nothing_is_counted_twice(tmp_path, clouds_for, db_url):
    pool = make_pool(tmp_path, clouds_for, db_url, faults={'delete-latency': 2.0},
                     **{'lease-wait': 0})
    current = pool.seed_base_images('rax', 'precise')
    f = Fabricator(pool)
    _, doomed_server = f.node('used', time.time() - 9 * HOUR, image_id=current.id)
    leaked = f.boot('dg-precise-rax-9999', node_meta('rax', 9999))
    procs = [pool.popen('devstack-vm-reap.py', 'rax') for _ in range(2)]
    errs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    skipped = [i for i, err in enumerate(errs) if ': skipped: ' in err]
    assert len(skipped) == 1, errs
    holder, other = procs[1 - skipped[0]], errs[skipped[0]]
    last = other.strip().splitlines()[-1]
    assert last.startswith('devstack-vm-reap: provider rax: skipped: lease reap is held by '
                           'host %s pid %d (reap) until ' % (socket.gethostname(), holder.pid)), last
    assert deletions(errs[1 - skipped[0]]) == [('node', doomed_server, 'used-too-long', '')]
    assert deletions(other) == []
    assert pool.clouds['rax'].calls('DELETE /compute/v2.1/servers/{id}') == 1
    (leak,) = pool.db.transact(lambda s: s.leaks(provider='rax'))
    assert (leak.external_id, leak.sightings) == (leaked, 1)      # seen by one run, once
    assert reap_lease(pool).token is None


def test_a_dry_run_takes_no_lease_and_runs_beside_a_reap(tmp_path, clouds_for, db_url):
    pool = make_pool(tmp_path, clouds_for, db_url, **{'lease-wait': 0})
    current = pool.seed_base_images('rax', 'precise')
    _, server = Fabricator(pool).node('used', time.time() - 9 * HOUR, image_id=current.id)
    other = leasemod.Lease(pool.db, 'rax', leasemod.REAP, 'reap', 30).acquire(wait=0)
    try:
        proc = reap_script(pool, '--dry-run')
        assert deletions(proc.stdout) == [('node', server, 'used-too-long', '')]
        assert ('rax: a reap run, host %s pid %d (reap), holds the reap lease until '
                % (other.host, other.pid)) in proc.stderr
        assert reap_lease(pool).token == other.token
        # A real run skips while it is held: exit 0, one line, nothing deleted.
        proc = reap_script(pool)
        assert proc.stderr.strip().splitlines()[-1].startswith(
            'devstack-vm-reap: provider rax: skipped: lease reap is held by host ')
        assert pool.clouds['rax'].calls('DELETE /compute/v2.1/servers/{id}') == 0
    finally:
        other.release()


class LoseLeaseOnFirstDelete(reap.Reaper):
    """A reaper whose lease another run takes while its first delete is under way."""

    def _delete(self, step):
        super()._delete(step)
        if not getattr(self, 'stolen', False):
            self.stolen = True
            with self.db.session() as s:
                s._execute('UPDATE leases SET token = ?, host = ? WHERE provider = ?',
                           ['intruder', 'elsewhere', 'rax'])
            self.lease.renew()          # what the heartbeat does next: finds it taken


def test_a_reap_whose_lease_is_taken_starts_no_more_deletes(tmp_path, clouds_for, db_url):
    pool = make_pool(tmp_path, clouds_for, db_url)
    current = pool.seed_base_images('rax', 'precise')
    f = Fabricator(pool)
    for _ in range(3):
        f.node('used', time.time() - 9 * HOUR, image_id=current.id)
    config = dataclasses.replace(configmod.load(pool.config_path, environ=pool.env()),
                                 reap_workers=1)
    prov = config.provider('rax')
    adapter = openstack.Adapter(prov, environ=pool.env())
    lease = leasemod.Lease(pool.db, 'rax', leasemod.REAP, 'reap', 30).acquire(wait=0)
    err = io.StringIO()
    try:
        with pytest.raises(leasemod.LeaseLost) as e:
            LoseLeaseOnFirstDelete(config, prov, pool.db, adapter, out=io.StringIO(), err=err,
                                   lease=lease).run()
    finally:
        lease.release()
    assert str(e.value).startswith('provider rax: lease reap lost (taken by host elsewhere ')
    assert pool.clouds['rax'].calls('DELETE /compute/v2.1/servers/{id}') == 1
    assert ('deleted', 'used-too-long', 1) in table(err.getvalue())
    assert reap_lease(pool).token == 'intruder'

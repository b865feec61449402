"""Reap: N nodes due for deletion on one provider, every delete slowed by a fixed latency.

Per case: one local cloud in its own process, N tagged servers (left in BUILD,
so the cloud runs no SSH host for them) and N node rows recording them: half
already in ``delete``, half ``used`` for longer than max-used-hours (marked
delete by the run, then deleted).  Then the cloud's delete-latency knob (a
DELETE answers after L seconds; lists and GETs do not wait) is set, and one
devstack-vm-reap.py run, the real script as a subprocess with the default
configuration except api-rate 0 (no spacing of API calls), is measured.

The reference: N x L / P, the time the deletes take at the configured delete
parallelism P (``reap-workers``; 1 where the key does not exist: deleting
one by one).  Figures: wall against it, API calls per node by kind, list
calls per run (against the smallest case's: they must not grow with N), and
the run's peak RSS.
"""

import concurrent.futures
import time

from bench.common import Goal, Row, spawn_measured
from bench.launch import (BASE_IMAGE, LABEL, base_dir, cloud_config, clouds, per_node,
                          provider_entry, script, script_env, seed_image, write_config)

NAME = 'reap'
PROVIDER = 'rax'
DELETE_KEY = 'DELETE /compute/v2.1/servers/{id}'
LIST_KEYS = ('GET /compute/v2.1/servers/detail', 'GET /image/v2/images',
             'GET /compute/v2.1/os-keypairs')
HOUR = 3600.0


def parallelism():
    """The configured delete parallelism (its default), or 1 where there is no such key."""
    from devstackgate import config
    key = config.GLOBAL_KEYS.get('reap-workers')
    return key.default if key is not None else 1


def fabricate(handle, db, n):
    """n node rows with tagged servers: even ones in delete, odd ones used too long."""
    nova = handle.nova('2.1')
    (image,) = [i for i in handle.images() if i['name'] == BASE_IMAGE]
    now = time.time()

    def row(i):
        if i % 2:
            return db.transact(lambda s: s.create_node(PROVIDER, LABEL, state='used',
                                                       now=now - 9 * HOUR))
        return db.transact(lambda s: s.create_node(PROVIDER, LABEL, state='delete', now=now - 60,
                                                   fail_reason='bench'))

    def boot(node):
        name = 'dg-%s-%s-%d' % (LABEL, PROVIDER, node.id)
        server = nova.servers.create(name, image['id'], '1', meta={
            'dg-provider': PROVIDER, 'dg-kind': 'node', 'dg-node-id': str(node.id),
            'dg-label': LABEL})
        return node.id, name, server.id

    nodes = [row(i) for i in range(n)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        booted = list(pool.map(boot, nodes))

    def record(s):
        for node_id, name, server_id in booted:
            s.update_node(node_id, name=name, external_id=server_id)
    db.transact(record)


def reap_case(ctx, handle, clouds_yaml, n, latency):
    """One reap run over n fabricated nodes on a fresh database: a dict of figures."""
    import vmdatabase
    with ctx.database('sqlite') as url:
        db = vmdatabase.Database(url).upgrade()
        seed_image(db, PROVIDER, handle)
        handle.set_faults({'delete-latency': 0})
        fabricate(handle, db, n)
        handle.set_faults({'delete-latency': latency})
        handle.reset_stats()
        path = write_config(ctx.workdir, url, [provider_entry(PROVIDER, **{'max-servers': n})])
        proc = spawn_measured(script('devstack-vm-reap.py', PROVIDER),
                              env=script_env(path, clouds_yaml), cwd=ctx.workdir, timeout=1800)
        if proc['rc'] != 0:
            raise RuntimeError('devstack-vm-reap.py exited %d: %s'
                               % (proc['rc'], proc['stderr'][-2000:]))
        calls = handle.stats()['calls']
        live = [s for s in handle.servers() if not s['deleted']]
        if live:
            raise RuntimeError('%d of %d servers not deleted' % (len(live), n))
        rows = db.transact(lambda s: s.nodes(provider=PROVIDER))
        if any(r.state != 'delete' for r in rows):
            raise RuntimeError('rows not all in delete after the run')
    return {'wall': proc['wall'], 'rss': proc['rss_mib'], 'cpu': proc['cpu'], 'calls': calls}


def run(ctx):
    sizes = ctx.pick([10, 50], [50, 1000])
    latency = ctx.pick(0.05, 0.2)
    workers = parallelism()
    out = []
    lists_ref = None
    # Servers stay in BUILD: no SSH host per server, so 1,000 cost the cloud little.
    config = cloud_config(PROVIDER, base_dir(ctx.workdir), {'stuck-build-rate': 1.0})
    with clouds(ctx.workdir, [config]) as (handles, clouds_yaml, _):
        figures = [(n, reap_case(ctx, handles[PROVIDER], clouds_yaml, n, latency))
                   for n in sizes]
    for n, got in figures:
        case = 'N=%d L=%gs P=%d' % (n, latency, workers)
        ideal = n * latency / workers
        out.append(Row(NAME, case, 'wall / (N x L / P)', got['wall'], 's', reference=ideal,
                       reference_name='s of deletes at P',
                       # At small N the script's start-up (imports, token, lists)
                       # outweighs the deletes: the goal is the full profile's 1,000.
                       goal=Goal('<=', 1.5, of='ratio', text='ratio <= 1.5 at N=%d' % n)
                       if ctx.full and n == max(sizes) else None,
                       detail={'latency': latency, 'workers': workers, 'cpu_s': got['cpu']}))
        per_kind = per_node(got['calls'], n)
        out.append(Row(NAME, case, 'API calls per node', sum(got['calls'].values()) / n, 'calls',
                       detail={'per_kind': per_kind}))
        out.append(Row(NAME, case, 'server deletes per node', per_kind.get(DELETE_KEY, 0),
                       'calls', goal=Goal('==', 1, text='one delete per node')))
        lists = sum(got['calls'].get(k, 0) for k in LIST_KEYS)
        if lists_ref is None:
            lists_ref = lists
        # nova pages its server list at 1,000 (osapi_max_limit): one more page per 1,000.
        allowed = lists_ref + n // 1000 - min(sizes) // 1000
        out.append(Row(NAME, case, 'list calls per run', lists, 'calls', reference=lists_ref,
                       reference_name='at the smallest N',
                       goal=Goal('<=', allowed,
                                 text='<= %d (smallest N + one page per 1,000)' % allowed),
                       detail={k: got['calls'].get(k, 0) for k in LIST_KEYS}))
        out.append(Row(NAME, case, 'peak RSS (the reap process)', got['rss'], 'MiB',
                       goal=Goal('<', 150, text='< 150 MiB') if n == max(sizes) else None))
    return out

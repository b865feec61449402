"""The database at scale: the operator's list, stats, the claim and the reaper's read.

A database of one backend is filled (executemany, one transaction) with a
pool's history: 100,000 gate results and as many launches over 30 days,
10,000 node rows in every state, and the image rows of 4 providers x 3 labels.
Then each path is timed through the product's own code:

- list: devstackgate.operator.list_nodes (every node, as ``devstack-gate list``)
  with paused() and disabled() (what cmd_list shows beside it);
- list one provider's ready nodes (``list --provider P --state ready``);
- stats: devstackgate.stats.compute over its default 7-day window;
- claim: vmdatabase.Database.claim_node with a result row (what fetch does);
- reap: Reaper.read for one provider plus reap.plan over a server list that
  matches its node rows (the plan is a pure function: no cloud is needed).

Each is timed twice on the same data: *before*, without the indexes of the
index migration (:data:`INDEX_MIGRATION`, dropped for the measurement), and
*after*, with them (the product's schema).  The before figure is each row's
reference.  Goal: after, each under 1 s.  The statements each path ran, and
their query plans (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on MariaDB) before and
after, are in each row's detail.
"""

import random
import re
import statistics
import time

from bench.common import Goal, Row

NAME = 'dbscale'
#: The schema migration that adds the indexes these paths take.
INDEX_MIGRATION = 6
PROVIDERS = ('rax-dfw', 'rax-ord', 'hpcloud-az1', 'hpcloud-az2')
LABELS = ('precise', 'trusty', 'centos7')
DAY = 86400.0
HISTORY_DAYS = 30
NODE_STATES = (('used', 40), ('ready', 30), ('building', 10), ('delete', 10), ('hold', 5),
               ('error', 5))
RESULTS = (('success', 80), ('failure', 12), ('timeout', 2), ('aborted', 3), ('running', 3))


def _traced_database():
    import vmdatabase

    class Cursor:
        def __init__(self, cur, log):
            self._cur, self._log = cur, log

        def execute(self, sql, params=()):
            self._log.append((sql, tuple(params)))
            return self._cur.execute(sql, params)

        def __getattr__(self, name):
            return getattr(self._cur, name)

    class Connection:
        def __init__(self, conn, log):
            self._conn, self._log = conn, log

        def cursor(self):
            return Cursor(self._conn.cursor(), self._log)

        def __getattr__(self, name):
            return getattr(self._conn, name)

    class Traced(vmdatabase.Database):
        """The product's Database, noting every statement a path runs (for its plans)."""
        log = None

        def _connect(self):
            conn = super()._connect()
            return conn if self.log is None else Connection(conn, self.log)

    return Traced


# -- filling -----------------------------------------------------------------

def _pick(rng, weighted):
    values, weights = zip(*weighted)
    return rng.choices(values, weights)[0]


def populate(db, n_results, n_nodes, now, rng):
    """Fill the tables in one transaction; returns the image rows by cell."""
    images = []
    cells = [(p, label) for p in PROVIDERS for label in LABELS]
    for p, label in cells:
        # Two ready (current, previous), one being built, two waiting for the reaper.
        for age, state in ((1, 'ready'), (0, 'ready'), (0, 'building'), (3, 'delete'),
                           (2, 'delete')):
            when = now - age * DAY - rng.uniform(0, 3600)
            images.append((p, label, '%s-%s-%d' % (label, p, len(images)), 'ext-%d' % len(images),
                           state, when, when, 0))
    nodes = []
    for i in range(n_nodes):
        p, label = cells[i % len(cells)]
        state = _pick(rng, NODE_STATES)
        created = now - rng.uniform(0, 8 * 3600)
        nodes.append((p, label, cells.index((p, label)) * 5 + 1 + (i % 2),
                      'dg-%s-%s-%d' % (label, p, i + 1), 'srv-%d' % (i + 1),
                      '10.%d.%d.%d' % (i >> 16, (i >> 8) & 255, i & 255), 'jenkins',
                      'ssh-ed25519 AAAAkey%d' % i, state, created + rng.uniform(0, 600), created,
                      'bench-job-%d' % i if state == 'used' else None))
    results, launches = [], []
    for i in range(n_results):
        p, label = cells[rng.randrange(len(cells))]
        start = now - rng.uniform(0, HISTORY_DAYS * DAY)
        verdict = _pick(rng, RESULTS)
        end = None if verdict == 'running' else start + rng.uniform(600, 5400)
        results.append(('gate-tempest-%s' % label, str(i), 'refs/changes/%d/%d/1' % (i % 100, i),
                        p, label, i + 1, 'dg-%s-%s-%d' % (label, p, i + 1), start, end, verdict))
        failed = rng.random() < 0.1
        launches.append((p, label, i + 1, 'failed' if failed else 'ready',
                         rng.choice(('error', 'timeout', 'no-network')) if failed else None,
                         rng.uniform(60, 600), start - rng.uniform(0, 3600)))
    sql = {
        'images': ('INSERT INTO images (provider, label, name, external_id, state, state_time,'
                   ' created, demoted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)', images),
        'nodes': ('INSERT INTO nodes (provider, label, image_id, name, external_id, ip, username,'
                  ' host_key, state, state_time, created, claimed_by)'
                  ' VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)', nodes),
        'results': ('INSERT INTO results (job_name, build_number, change_ref, provider, label,'
                    ' node_id, node_name, start_time, end_time, result)'
                    ' VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)', results),
        'launches': ('INSERT INTO launches (provider, label, node_id, outcome, reason, seconds,'
                     ' finished) VALUES (?, ?, ?, ?, ?, ?, ?)', launches),
    }
    with db.session() as s:
        for statement, rows in sql.values():
            for chunk in range(0, len(rows), 5000):
                s._cur.executemany(db.sql(statement), rows[chunk:chunk + 5000])
    return {t: len(rows) for t, (_, rows) in sql.items()}


# -- the indexes under test --------------------------------------------------

def migration_indexes():
    """[(index, table, CREATE statement)] of INDEX_MIGRATION ([] if it is not there)."""
    import vmdatabase
    out = []
    for version, statements in vmdatabase.MIGRATIONS:
        if version != INDEX_MIGRATION:
            continue
        for statement in statements:
            m = re.match(r'\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+(\w+)\s+ON\s+(\w+)', statement, re.I)
            if m:
                out.append((m.group(1), m.group(2), statement))
    return out


def _ddl(db, statements):
    conn = db._connect()
    try:
        cur = conn.cursor()
        for statement in statements:
            cur.execute(statement)
        conn.commit()
    finally:
        conn.close()


def drop_indexes(db, indexes):
    mysql = db.url.backend == 'mysql'
    _ddl(db, ['DROP INDEX %s ON %s' % (name, table) if mysql else 'DROP INDEX %s' % name
              for name, table, _ in indexes])


def create_indexes(db, indexes):
    _ddl(db, [statement.format(text='TEXT') for _, _, statement in indexes])


# -- query plans -------------------------------------------------------------

def plans(db, statements):
    """{statement: [plan lines]} for each distinct statement a path ran."""
    out = {}
    conn = db._connect()
    try:
        cur = conn.cursor()
        for sql, params in statements:
            if sql in out or not re.match(r'\s*(SELECT|UPDATE|INSERT|DELETE)', sql, re.I):
                continue
            if db.url.backend == 'sqlite':
                cur.execute('EXPLAIN QUERY PLAN ' + sql, params)
                out[sql] = [row[-1] for row in cur.fetchall()]
            else:
                cur.execute('EXPLAIN ' + sql, params)
                names = [d[0] for d in cur.description]
                out[sql] = ['; '.join('%s=%s' % (n, v) for n, v in zip(names, row)
                                      if n in ('table', 'type', 'key', 'rows', 'Extra')
                                      and v is not None)
                            for row in cur.fetchall()]
        if db.url.backend == 'mysql':
            conn.rollback()
    finally:
        conn.close()
    return {_short(sql): plan for sql, plan in out.items()}


def _short(sql):
    sql = re.sub(r'\s+', ' ', sql).strip()
    return re.sub(r'^SELECT .{60,}? FROM', 'SELECT ... FROM', sql)


# -- the paths ---------------------------------------------------------------

def _config(workdir, db_url):
    import os

    import yaml

    from devstackgate import config as config_mod
    path = os.path.join(workdir, 'dbscale-%s.yaml' % ('sqlite' if db_url.startswith('sqlite')
                                                     else 'mysql'))
    data = {'database': db_url, 'providers': [
        {'name': p, 'cloud': p, 'images': [{'name': label, 'base-image': 'Ubuntu'}
                                           for label in LABELS]} for p in PROVIDERS]}
    with open(path, 'w') as f:
        yaml.safe_dump(data, f)
    return config_mod.load(path, check_clouds=False)


def _servers(db, provider):
    """The cloud's server list as the reaper would get it: one per node with a server."""
    from devstackgate import cloud
    nodes = db.transact(lambda s: s.nodes(provider=provider))
    return [cloud.Server(n.external_id, n.name, 'active',
                         cloud.tags(provider, 'node', n.label, node_id=n.id, image_id=n.image_id),
                         n.ip, 'ext-%d' % n.image_id, '2026-01-01T00:00:00Z')
            for n in nodes if n.external_id and n.state != 'delete']


def paths(db, config, now):
    """{name: (callable, repetitions)}: each runs one path through the product's code."""
    from devstackgate import operator, reap, stats
    provider = config.provider(PROVIDERS[0])
    servers = _servers(db, provider.name)
    labels = iter(LABELS * 1000)

    def list_all():
        operator.list_nodes(db, config, now=now)
        operator.paused(db, config, None, None, now)
        operator.disabled(db, config, None, None, now)

    def list_ready():
        operator.list_nodes(db, config, provider=provider.name, state='ready', now=now)

    def stats_week():
        stats.compute(db, config, days=7, now=now)

    def claim():
        node, _ = db.claim_node(next(labels), 'bench-fetch', result={
            'job_name': 'gate-tempest', 'build_number': '1', 'change_ref': 'refs/changes/1/1/1'})
        if node is None:
            raise RuntimeError('no ready node left to claim')

    def reap_plan():
        reaper = reap.Reaper(config, provider, db, adapter=None, dry_run=True)
        nodes, images, current = reaper.read()
        reap.plan(provider.name, reaper.limits, nodes, images, servers, [], current, [], now,
                  now, keypairs=(), prefix=config.node_prefix)

    return {'list (all nodes)': (list_all, 3),
            'list --provider --state ready': (list_ready, 5),
            'stats (7 days)': (stats_week, 3),
            'claim_node': (claim, 20),
            'reap read+plan (one provider)': (reap_plan, 3)}


def measure(db, fn, repetitions):
    """Median seconds of `repetitions` calls, and the statements a first, untimed
    call ran (it also warms the caches, so the phase measured first is not
    penalised)."""
    db.log = []
    try:
        fn()
        ran = db.log
    finally:
        db.log = None
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), ran


def run_backend(ctx, backend, n_results, n_nodes):
    Traced = _traced_database()
    rng = random.Random(12)
    with ctx.database(backend) as url:
        db = Traced(url).upgrade()
        now = time.time()
        started = time.perf_counter()
        counts = populate(db, n_results, n_nodes, now, rng)
        fill_s = time.perf_counter() - started
        config = _config(ctx.workdir, url)
        indexes = migration_indexes()
        figures = {}
        for phase in ('before', 'after'):
            if phase == 'before':
                drop_indexes(db, indexes)
            else:
                create_indexes(db, indexes)
            for name, (fn, reps) in paths(db, config, now).items():
                seconds, ran = measure(db, fn, reps if ctx.full else max(1, reps // 3))
                figures.setdefault(name, {})[phase] = (seconds, plans(db, ran), len(ran))
    rows = []
    for name, by_phase in figures.items():
        before, after = by_phase['before'], by_phase['after']
        rows.append(Row(
            NAME, '%s %s' % (backend, name), 'seconds (after)', after[0], 's',
            reference=before[0], reference_name='s before',
            goal=Goal('<', 1.0, text='< 1 s'),
            detail={'rows': counts, 'fill_s': round(fill_s, 2),
                    'indexes_added': [i[0] for i in indexes],
                    'statements': after[2], 'before_s': before[0], 'after_s': after[0],
                    'plans_before': before[1], 'plans_after': after[1]}))
    return rows


def run(ctx):
    n_results = ctx.pick(5000, 100000)
    n_nodes = ctx.pick(1000, 10000)
    rows = []
    for backend in ctx.backends():
        rows.extend(run_backend(ctx, backend, n_results, n_nodes))
    return rows

"""The devstack-gate database: nodes, images and gate results.

This is the only module that speaks SQL.  The stages (launch, fetch, gate,
reap, image builds) share state only through it, on one of two backends chosen
by URL:

- ``sqlite:///~/.devstack-gate/devstack-gate.db`` (the embedded default;
  ``sqlite:////abs/path.db`` for an absolute path), and
- ``mysql://user@host:port/dbname`` (MySQL or MariaDB through
  mysql-connector-python), optionally ``?unix_socket=/path`` and
  ``?option-file=/path/my.cnf``.

A MySQL password never appears in the URL: it comes from
$DEVSTACK_GATE_DB_PASSWORD or from a MySQL option file
($DEVSTACK_GATE_DB_OPTION_FILE or ``option-file=``), and never appears in
output or exceptions.

Rows come back as plain frozen dataclasses.  Writes are explicit method calls
on a :class:`Session`, which commits when its ``with`` block ends normally and
rolls back when it raises; nothing commits behind the caller's back.

Claiming a ready node (:meth:`Database.claim_node`) marks it used in one
transaction that holds its row (MySQL/MariaDB: FOR UPDATE SKIP LOCKED, so
concurrent claims take different rows; SQLite: one UPDATE under the write
lock), so a node is handed to exactly one caller under any concurrency on both
backends.  A process keeps a connection whose transaction committed for its
next one (``idle_reuse``).
"""

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref

from devstackgate import claim as claimmod
from devstackgate import sqlitequeue
from devstackgate.claim import server_has_skip_locked  # noqa: F401 (its home was here)
from devstackgate.errors import DatabaseBusy, DatabaseError

log = logging.getLogger('state')

PASSWORD_ENV = 'DEVSTACK_GATE_DB_PASSWORD'
OPTION_FILE_ENV = 'DEVSTACK_GATE_DB_OPTION_FILE'

NODE_STATES = ('building', 'ready', 'used', 'hold', 'delete', 'error')
IMAGE_STATES = ('building', 'ready', 'delete')
RESULTS = ('running', 'success', 'failure', 'timeout', 'infra', 'aborted')
# How a launch ended (the launches table): 'ready', it joined the pool; 'used',
# it passed its checks and went straight to its claimant (an image build's
# canary); 'failed', its server was deleted, with the reason (error, timeout, ...).
LAUNCH_OUTCOMES = ('ready', 'used', 'failed')

# MySQL error numbers that mean "try the transaction again".
_MYSQL_LOCK_WAIT_TIMEOUT = 1205
_MYSQL_DEADLOCK = 1213
_MYSQL_NO_SUCH_TABLE = 1146
_MYSQL_UNREACHABLE = (2002, 2003, 2006, 2013)    # no server there (yet): a restart
_MYSQL_PARSE_ERROR = 1064           # a server that does not know SKIP LOCKED says this

#: The servers whose SELECT ... FOR UPDATE SKIP LOCKED the claim uses.
_SKIP_LOCKED_SINCE = {'mariadb': (10, 6), 'mysql': (8, 0, 1)}
#: Idle connections a Database keeps for its process's next transactions.
_POOL_SIZE = 8

# Each entry upgrades the schema from the previous version.  Statements are
# written once for both backends; {pk} and {text} are filled per backend.
MIGRATIONS = [
    (1, [
        """CREATE TABLE nodes (
            id {pk},
            provider VARCHAR(255) NOT NULL,
            label VARCHAR(255) NOT NULL,
            image_id INTEGER,
            name VARCHAR(255),
            external_id VARCHAR(255),
            ip VARCHAR(255),
            username VARCHAR(255),
            host_key {text},
            state VARCHAR(16) NOT NULL,
            state_time DOUBLE NOT NULL,
            created DOUBLE NOT NULL,
            hold_until DOUBLE,
            held_by VARCHAR(255),
            hold_reason {text},
            claimed_by VARCHAR(255),
            claim_token VARCHAR(64),
            fail_reason VARCHAR(255)
        )""",
        "CREATE INDEX nodes_claim ON nodes (label, state, state_time)",
        "CREATE INDEX nodes_provider ON nodes (provider, state)",
        "CREATE INDEX nodes_token ON nodes (claim_token)",
        """CREATE TABLE images (
            id {pk},
            provider VARCHAR(255) NOT NULL,
            label VARCHAR(255) NOT NULL,
            name VARCHAR(255),
            external_id VARCHAR(255),
            server_external_id VARCHAR(255),
            state VARCHAR(16) NOT NULL,
            state_time DOUBLE NOT NULL,
            created DOUBLE NOT NULL,
            demoted INTEGER NOT NULL DEFAULT 0,
            fail_reason VARCHAR(255)
        )""",
        "CREATE INDEX images_provider ON images (provider, label, state)",
        """CREATE TABLE results (
            id {pk},
            job_name VARCHAR(255),
            build_number VARCHAR(64),
            change_ref VARCHAR(255),
            provider VARCHAR(255),
            label VARCHAR(255),
            node_id INTEGER,
            node_name VARCHAR(255),
            start_time DOUBLE NOT NULL,
            end_time DOUBLE,
            result VARCHAR(16) NOT NULL
        )""",
    ]),
    # The reaper deletes an untracked resource of ours only after seeing it on
    # two runs in a row, so it needs memory between runs.
    (2, [
        """CREATE TABLE leaks (
            id {pk},
            provider VARCHAR(255) NOT NULL,
            kind VARCHAR(16) NOT NULL,
            external_id VARCHAR(255) NOT NULL,
            name VARCHAR(255),
            first_seen DOUBLE NOT NULL,
            last_seen DOUBLE NOT NULL,
            sightings INTEGER NOT NULL
        )""",
        "CREATE UNIQUE INDEX leaks_resource ON leaks (provider, kind, external_id)",
    ]),
    # A label (a matrix cell) can be switched off at run time, without editing
    # the configuration, when it is known red.
    (3, [
        """CREATE TABLE label_switches (
            label VARCHAR(255) NOT NULL PRIMARY KEY,
            reason {text} NOT NULL,
            set_by VARCHAR(255),
            since DOUBLE NOT NULL
        )""",
    ]),
    # Image builds of a label can be paused at run time too (bad image days),
    # for one provider or, with provider NULL, for all of them.  A pause stops
    # builds only: launches go on from the current (or previous) image.
    (4, [
        """CREATE TABLE image_pauses (
            id {pk},
            label VARCHAR(255) NOT NULL,
            provider VARCHAR(255),
            reason {text},
            set_by VARCHAR(255),
            since DOUBLE NOT NULL
        )""",
        "CREATE INDEX image_pauses_label ON image_pauses (label, provider)",
    ]),
    # How each launch ended, kept after the reaper deletes the node row, so the
    # launch failure rates and times to ready of the last days can be counted
    # (devstackgate.stats) and the ready pool drawn over time (status page).
    (5, [
        """CREATE TABLE launches (
            id {pk},
            provider VARCHAR(255) NOT NULL,
            label VARCHAR(255) NOT NULL,
            node_id INTEGER,
            outcome VARCHAR(16) NOT NULL,
            reason VARCHAR(255),
            seconds DOUBLE,
            finished DOUBLE NOT NULL
        )""",
        "CREATE INDEX launches_finished ON launches (finished)",
    ]),
    # At scale (100,000 results, as many launches): the gate runs of a time window
    # (stats, the status page) without a scan of every result, and the per
    # provider and label figures of stats (counts, medians) from one index range.
    # Plain columns only (no TEXT), so no MariaDB prefix length is needed.
    (6, [
        "CREATE INDEX results_start ON results (start_time)",
        "CREATE INDEX results_cell ON results (provider, label, start_time)",
        "CREATE INDEX launches_cell ON launches (provider, label, finished)",
    ]),
    # Leases: one run at a time of a stage for a provider (devstackgate.lease).
    # A row per (provider, scope) once first taken; token NULL when free.  The
    # times are the database server's clock (Database.now_sql), so hosts with
    # skewed clocks agree on when a lease expires.
    (7, [
        """CREATE TABLE leases (
            provider VARCHAR(255) NOT NULL,
            scope VARCHAR(255) NOT NULL,
            token VARCHAR(64),
            host VARCHAR(255),
            pid INTEGER,
            stage VARCHAR(64),
            acquired DOUBLE,
            expires DOUBLE NOT NULL,
            renewals INTEGER NOT NULL,
            PRIMARY KEY (provider, scope)
        )""",
    ]),
    # Bare-metal hosts (devstackgate.drivers.baremetal): machines that are
    # never created or deleted, only handed to one node at a time and reset
    # after it.  A row per configured host once first seen; allocation is the
    # "server id" of its current use (a node row's external_id), NULL when free.
    (8, [
        """CREATE TABLE hosts (
            provider VARCHAR(255) NOT NULL,
            name VARCHAR(255) NOT NULL,
            allocation VARCHAR(255),
            metadata {text},
            allocated DOUBLE,
            verified INTEGER NOT NULL,
            resetting DOUBLE,
            reset_at DOUBLE,
            reason {text},
            PRIMARY KEY (provider, name)
        )""",
    ]),
    # Why a gate run ended as it did, beside its class (results.result): for an
    # infra failure, what failed (no SSH, host key changed, the node stopped
    # answering); and the image its node was booted from, so a new image's runs
    # can be compared with its predecessor's (devstackgate.health's image guard).
    # Quarantines: a provider's label that fetch hands out only when no healthy
    # provider has a node, and launch does not top up (devstackgate.health).
    (9, [
        "ALTER TABLE results ADD COLUMN detail {text}",
        "ALTER TABLE results ADD COLUMN image_id INTEGER",
        """CREATE TABLE quarantines (
            provider VARCHAR(255) NOT NULL,
            label VARCHAR(255) NOT NULL,
            since DOUBLE NOT NULL,
            probe_after DOUBLE NOT NULL,
            set_by VARCHAR(255) NOT NULL,
            reason {text},
            probes INTEGER NOT NULL,
            PRIMARY KEY (provider, label)
        )""",
    ]),
]


def schema_version():
    """The version this code writes: the last migration's."""
    return MIGRATIONS[-1][0]


@dataclasses.dataclass(frozen=True)
class Node:
    id: int
    provider: str
    label: str
    image_id: int
    name: str
    external_id: str
    ip: str
    username: str
    host_key: str
    state: str
    state_time: float
    created: float
    hold_until: float
    held_by: str
    hold_reason: str
    claimed_by: str
    claim_token: str
    fail_reason: str


@dataclasses.dataclass(frozen=True)
class Image:
    id: int
    provider: str
    label: str
    name: str
    external_id: str
    server_external_id: str
    state: str
    state_time: float
    created: float
    demoted: int
    fail_reason: str


@dataclasses.dataclass(frozen=True)
class Result:
    id: int
    job_name: str
    build_number: str
    change_ref: str
    provider: str
    label: str
    node_id: int
    node_name: str
    start_time: float
    end_time: float
    result: str
    detail: str = None          # why it ended so (an infra failure's cause), else None
    image_id: int = None        # the image row its node was booted from


@dataclasses.dataclass(frozen=True)
class LabelSwitch:
    """A label switched off at run time: not launched, not built, skipped by gate runs."""
    label: str
    reason: str
    set_by: str
    since: float


@dataclasses.dataclass(frozen=True)
class ImagePause:
    """Image builds of a label paused at run time, for one provider or (None) all."""
    id: int
    label: str
    provider: str
    reason: str
    set_by: str
    since: float


@dataclasses.dataclass(frozen=True)
class Launch:
    """How one launch ended: kept after the node row is gone."""
    id: int
    provider: str
    label: str
    node_id: int
    outcome: str            # one of LAUNCH_OUTCOMES
    reason: str             # why it failed (the node's fail_reason), else None
    seconds: float          # from the node row's creation to this outcome
    finished: float         # when


@dataclasses.dataclass(frozen=True)
class Lease:
    """Who holds (or last held) one stage's lease for a provider (devstackgate.lease)."""
    provider: str
    scope: str              # what it guards: 'launch', 'reap', 'image LABEL'
    token: str              # the holder's random token; None when free
    host: str
    pid: int
    stage: str              # the holder's stage (update-image holds 'launch' briefly)
    acquired: float         # the database's clock, epoch seconds
    expires: float
    renewals: int


@dataclasses.dataclass(frozen=True)
class Host:
    """A bare-metal machine of a provider of kind baremetal, and the use it is in."""
    provider: str
    name: str
    allocation: str         # the server id of its current use; None when free
    metadata: str           # JSON: the tags of that use (dg-provider, dg-node-id, ...)
    allocated: float        # when that use began
    verified: int           # 1 once it answered, clean, in this use (so it was reset, or new)
    resetting: float        # when a reset of this use was started (None: none running)
    reset_at: float         # when its last reset was asked for (None: never since set-up)
    reason: str             # why it last failed to come back or to reset, else None


@dataclasses.dataclass(frozen=True)
class Quarantine:
    """A provider's label whose nodes fetch hands out only when no other provider has one."""
    provider: str
    label: str
    since: float
    probe_after: float      # when launch may probe it with one canary node
    set_by: str             # 'auto' (devstackgate.health) or the operator
    reason: str             # the figures behind it
    probes: int             # canaries that failed since it began


@dataclasses.dataclass(frozen=True)
class Leak:
    """An untracked server or image of ours, as seen by consecutive reap runs."""
    id: int
    provider: str
    kind: str               # 'server' or 'image'
    external_id: str
    name: str
    first_seen: float
    last_seen: float
    sightings: int


def _columns(cls):
    return [f.name for f in dataclasses.fields(cls)]


_TABLES = {Node: 'nodes', Image: 'images', Result: 'results', Leak: 'leaks',
           LabelSwitch: 'label_switches', ImagePause: 'image_pauses', Launch: 'launches',
           Lease: 'leases', Host: 'hosts', Quarantine: 'quarantines'}


@dataclasses.dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL.  Holds no password."""
    backend: str          # 'sqlite' or 'mysql'
    path: str = None      # sqlite file
    user: str = None
    host: str = None
    port: int = None
    database: str = None
    unix_socket: str = None
    option_file: str = None

    def __str__(self):
        if self.backend == 'sqlite':
            return 'sqlite:///' + self.path
        where = self.unix_socket or '%s:%s' % (self.host, self.port)
        return 'mysql://%s@%s/%s' % (self.user or '', where, self.database)


def parse_url(url):
    """Parse a database URL; reject one that carries a password."""
    if not isinstance(url, str) or '://' not in url:
        # Not a URL at all, but what is before an '@' may be a password: never show it.
        shown = '...@' + url.rsplit('@', 1)[1] if isinstance(url, str) and '@' in url else url
        raise DatabaseError('database URL %r: expected sqlite:///PATH or '
                            'mysql://USER@HOST:PORT/DATABASE' % (shown,))
    scheme, rest = url.split('://', 1)
    if scheme == 'sqlite':
        if not rest.startswith('/') or rest == '/':
            raise DatabaseError('database URL %r: expected sqlite:///PATH' % url)
        path = rest[1:]
        path = os.path.expanduser(path) if path.startswith('~') else path
        return DatabaseURL('sqlite', path=path)
    if scheme not in ('mysql', 'mariadb'):
        raise DatabaseError('database URL: unknown scheme %r; valid choices are sqlite, mysql'
                            % scheme)
    parts = urllib.parse.urlsplit('mysql://' + rest)
    if parts.password is not None:
        raise DatabaseError(
            'database URL mysql://%s@...: a password must not be part of the URL; '
            'set $%s or use an option file ($%s or ?option-file=PATH)'
            % (parts.username or '', PASSWORD_ENV, OPTION_FILE_ENV))
    query = urllib.parse.parse_qs(parts.query)
    unknown = set(query) - {'unix_socket', 'option-file'}
    if unknown:
        raise DatabaseError('database URL: unknown option(s) %s; valid: unix_socket, option-file'
                            % ', '.join(sorted(unknown)))
    database = parts.path.lstrip('/')
    if not database:
        raise DatabaseError('database URL mysql://...: missing the database name after the host')
    try:
        port = parts.port or 3306
    except ValueError:
        raise DatabaseError('database URL mysql://...: the port is not a number')
    return DatabaseURL(
        'mysql', user=urllib.parse.unquote(parts.username or '') or None,
        host=parts.hostname or '127.0.0.1', port=port, database=database,
        unix_socket=(query.get('unix_socket') or [None])[0],
        option_file=(query.get('option-file') or [None])[0])


class Session:
    """One transaction.  Every write is an explicit method call."""

    def __init__(self, db, conn):
        self._db = db
        self._conn = conn
        self._cur = conn.cursor()
        self.transitions = []       # logged once the transaction commits

    # -- plumbing ---------------------------------------------------------
    def _execute(self, sql, params=()):
        self._cur.execute(self._db.sql(sql), tuple(params))
        return self._cur

    def _select(self, cls, where='', params=(), order='id'):
        sql = 'SELECT %s FROM %s' % (', '.join(_columns(cls)), _TABLES[cls])
        if where:
            sql += ' WHERE ' + where
        sql += ' ORDER BY ' + order
        return [cls(*row) for row in self._execute(sql, params).fetchall()]

    def _select_matching(self, cls, order='id', **fields):
        """The rows whose columns equal `fields` exactly (a list: one of its values).

        MariaDB's default collation compares text case-insensitively and ignores
        trailing spaces, so its match alone could be another row ("rax " for
        "rax"): the rows it returns are checked here as SQLite compares."""
        where, params = self._filters(**fields)
        wanted = {c: (set(v) if isinstance(v, (list, tuple, set, frozenset)) else {v})
                  for c, v in fields.items() if v is not None}
        return [row for row in self._select(cls, where, params, order=order)
                if all(getattr(row, c) in values for c, values in wanted.items())]

    def _insert(self, table, values):
        cols = sorted(values)
        sql = 'INSERT INTO %s (%s) VALUES (%s)' % (
            table, ', '.join(cols), ', '.join('?' for _ in cols))
        return self._execute(sql, [values[c] for c in cols]).lastrowid

    def _update(self, cls, row_id, values, expect_state=None):
        """UPDATE one row by id (and, given expect_state, only while in that state);
        returns whether a row matched."""
        allowed = set(_columns(cls)) - {'id'}
        bad = set(values) - allowed
        if bad:
            raise ValueError('unknown %s column(s): %s' % (_TABLES[cls], ', '.join(sorted(bad))))
        if not values:
            return True
        cols = sorted(values)
        sql = 'UPDATE %s SET %s WHERE id = ?' % (
            _TABLES[cls], ', '.join('%s = ?' % c for c in cols))
        params = [values[c] for c in cols] + [row_id]
        if expect_state is not None:
            sql += ' AND state = ?'
            params.append(expect_state)
        return self._execute(sql, params).rowcount == 1

    def transition(self, row, to_state, now=None, **fields):
        """Move a node or image row from the state it was read in to `to_state`.

        One conditional UPDATE: it happens only if the row is still in
        ``row.state`` (a concurrent claim, reap or gate finish is never
        overwritten).  `fields` are set with it.  Returns True if it happened;
        the transition is logged once the transaction commits, as
        "<provider> <label> <name>: building -> ready after 312 s".
        """
        cls = type(row)
        states = NODE_STATES if cls is Node else IMAGE_STATES
        if to_state not in states:
            raise ValueError('unknown %s state %r' % (_TABLES[cls][:-1], to_state))
        now = time.time() if now is None else now
        values = dict(fields, state=to_state, state_time=now)
        if not self._update(cls, row.id, values, expect_state=row.state):
            return False
        self.transitions.append((row, to_state, now, fields.get('fail_reason')))
        return True

    def _no_state(self, fields):
        if 'state' in fields:
            raise ValueError('a state changes only through Session.transition()')

    @staticmethod
    def _filters(**fields):
        clauses, params = [], []
        for column, value in fields.items():
            if value is None:
                continue
            if isinstance(value, (list, tuple, set, frozenset)):
                value = list(value)
                if not value:
                    clauses.append('1 = 0')
                    continue
                clauses.append('%s IN (%s)' % (column, ', '.join('?' for _ in value)))
                params.extend(value)
            else:
                clauses.append('%s = ?' % column)
                params.append(value)
        return ' AND '.join(clauses), params

    # -- nodes ------------------------------------------------------------
    def create_node(self, provider, label, state='building', now=None, **fields):
        if state not in NODE_STATES:
            raise ValueError('unknown node state %r' % state)
        now = time.time() if now is None else now
        values = dict(fields, provider=provider, label=label, state=state,
                      state_time=now, created=now)
        node_id = self._insert('nodes', values)
        return self.get_node(node_id)

    def get_node(self, node_id):
        rows = self._select(Node, 'id = ?', [node_id])
        return rows[0] if rows else None

    def nodes(self, provider=None, label=None, state=None, name=None, order='id'):
        return self._select_matching(Node, order=order, provider=provider, label=label,
                                     state=state, name=name)

    def update_node(self, node_id, **fields):
        """Change columns of a node other than its state (see transition())."""
        self._no_state(fields)
        self._update(Node, node_id, fields)

    def delete_node(self, node_id):
        """Remove the row (only once the server is really gone from the cloud)."""
        self._execute('DELETE FROM nodes WHERE id = ?', [node_id])

    def node_counts(self, label=None):
        """{(provider, state): count} for a label (or all labels)."""
        where, params = self._filters(label=label)
        sql = 'SELECT provider, state, COUNT(*) FROM nodes'
        if where:
            sql += ' WHERE ' + where
        sql += ' GROUP BY provider, state'
        return {(p, s): n for p, s, n in self._execute(sql, params).fetchall()}

    # -- images -----------------------------------------------------------
    def create_image(self, provider, label, state='building', now=None, **fields):
        if state not in IMAGE_STATES:
            raise ValueError('unknown image state %r' % state)
        now = time.time() if now is None else now
        values = dict(fields, provider=provider, label=label, state=state,
                      state_time=now, created=now)
        return self.get_image(self._insert('images', values))

    def get_image(self, image_id):
        rows = self._select(Image, 'id = ?', [image_id])
        return rows[0] if rows else None

    def images(self, provider=None, label=None, state=None, order='id'):
        return self._select_matching(Image, order=order, provider=provider, label=label,
                                     state=state)

    def update_image(self, image_id, **fields):
        """Change columns of an image other than its state (see transition())."""
        self._no_state(fields)
        self._update(Image, image_id, fields)

    def delete_image(self, image_id):
        self._execute('DELETE FROM images WHERE id = ?', [image_id])

    def current_image(self, provider, label):
        """The newest ready image that has not been demoted, or None."""
        rows = self._select(Image, 'provider = ? AND label = ? AND state = ? AND demoted = 0',
                            [provider, label, 'ready'], order='created DESC, id DESC')
        return rows[0] if rows else None

    # -- results ----------------------------------------------------------
    def create_result(self, now=None, **fields):
        values = dict(fields, start_time=time.time() if now is None else now)
        values.setdefault('result', 'running')
        return self.get_result(self._insert('results', values))

    def get_result(self, result_id):
        rows = self._select(Result, 'id = ?', [result_id])
        return rows[0] if rows else None

    def results(self, node_id=None, result=None, provider=None, label=None, image_id=None):
        return self._select_matching(Result, node_id=node_id, result=result, provider=provider,
                                     label=label, image_id=image_id)

    def results_between(self, since, until=None, label=None):
        """The results of gate runs started at or after `since` (and, given
        `until`, at or before it; given `label`, of that label), oldest first."""
        where, params = 'start_time >= ?', [since]
        if until is not None:
            where, params = where + ' AND start_time <= ?', params + [until]
        if label is not None:
            where, params = where + ' AND label = ?', params + [label]
        rows = self._select(Result, where, params, order='start_time, id')
        return [r for r in rows if label is None or r.label == label]     # exact (MariaDB)

    def result_counts(self, since, until):
        """{(provider, label, result): (runs, runs with an end time)} of the gate runs
        started in [since, until] (what stats counts, without reading every row)."""
        sql = ('SELECT provider, label, result, COUNT(*), COUNT(end_time) FROM results '
               'WHERE start_time >= ? AND start_time <= ? GROUP BY provider, label, result')
        return {(p, l, r): (n, ended) for p, l, r, n, ended in
                self._execute(sql, [since, until]).fetchall()}

    def result_durations(self, provider, label, results, since, until, offset, limit):
        """end_time - start_time of the runs of provider and label with one of
        `results` and an end time, started in [since, until]: shortest first,
        `limit` of them from `offset` (so a median reads one or two rows)."""
        return self._sorted_seconds('end_time - start_time', 'results', 'start_time',
                                    'end_time IS NOT NULL', 'result', results,
                                    provider, label, since, until, offset, limit)

    def _sorted_seconds(self, expr, table, when, present, kind, kinds, provider, label,
                        since, until, offset, limit):
        """`expr` of one provider and label's rows with `kind` in `kinds` and `when` in
        [since, until], shortest first, `limit` from `offset` (a median's one or two)."""
        kinds = list(kinds)
        sql = ('SELECT %s AS seconds FROM %s WHERE provider = ? AND label = ? '
               'AND %s >= ? AND %s <= ? AND %s AND %s IN (%s) ORDER BY seconds LIMIT ? OFFSET ?'
               % (expr, table, when, when, present, kind, ', '.join('?' for _ in kinds)))
        params = [provider, label, since, until] + kinds + [int(limit), int(offset)]
        return [row[0] for row in self._execute(sql, params).fetchall()]

    def finish_result(self, result_id, result, now=None, detail=None):
        if result not in RESULTS:
            raise ValueError('unknown result %r; valid: %s' % (result, ', '.join(RESULTS)))
        values = {'result': result, 'end_time': time.time() if now is None else now}
        if detail is not None:
            values['detail'] = detail
        self._update(Result, result_id, values)

    # -- leaks ------------------------------------------------------------
    def record_sightings(self, provider, kind, seen, now=None):
        """Note this run's untracked resources; forget those no longer seen.

        `seen` maps external id -> name.  A resource seen again gets one more
        sighting; one missing from this run is forgotten, so sightings count
        runs in a row.  Returns the current Leak rows for provider and kind.
        """
        now = time.time() if now is None else now
        known = {l.external_id: l for l in self.leaks(provider, kind)}
        for external_id, leak in known.items():
            if external_id not in seen:
                self._execute('DELETE FROM leaks WHERE id = ?', [leak.id])
        for external_id, name in seen.items():
            leak = known.get(external_id)
            if leak is None:
                self._insert('leaks', {'provider': provider, 'kind': kind,
                                       'external_id': external_id, 'name': name,
                                       'first_seen': now, 'last_seen': now, 'sightings': 1})
            else:
                self._update(Leak, leak.id, {'last_seen': now, 'sightings': leak.sightings + 1})
        return self.leaks(provider, kind)

    def leaks(self, provider=None, kind=None):
        return self._select_matching(Leak, provider=provider, kind=kind)

    # -- label switches ---------------------------------------------------
    def disable_label(self, label, reason, set_by=None, now=None):
        """Switch a label off (again, with this reason if it already was)."""
        self._execute('DELETE FROM label_switches WHERE label = ?', [label])
        self._insert('label_switches', {'label': label, 'reason': reason, 'set_by': set_by,
                                        'since': time.time() if now is None else now})

    def enable_label(self, label):
        """Switch a label back on; True if it was off."""
        return self._execute('DELETE FROM label_switches WHERE label = ?',
                             [label]).rowcount == 1

    def label_switches(self):
        """{label: LabelSwitch} of the labels switched off at run time."""
        return {s.label: s for s in self._select(LabelSwitch, order='label')}

    # -- image pauses -----------------------------------------------------
    def pause_image(self, label, provider=None, reason=None, set_by=None, now=None):
        """Pause image builds of a label for one provider, or (None) for all
        (again, with this reason, if it already was).  Returns the ImagePause."""
        self._delete_pauses(label, provider)
        pause_id = self._insert('image_pauses', {
            'label': label, 'provider': provider, 'reason': reason, 'set_by': set_by,
            'since': time.time() if now is None else now})
        return self._select(ImagePause, 'id = ?', [pause_id])[0]

    def unpause_image(self, label, provider=None):
        """Lift the pause of a label for one provider (only that provider's own
        pause), or, with provider None, every pause of the label.  Returns how
        many were lifted."""
        if provider is None:
            return self._execute('DELETE FROM image_pauses WHERE label = ?', [label]).rowcount
        return self._delete_pauses(label, provider)

    def _delete_pauses(self, label, provider):
        if provider is None:
            sql, params = 'DELETE FROM image_pauses WHERE label = ? AND provider IS NULL', [label]
        else:
            sql, params = 'DELETE FROM image_pauses WHERE label = ? AND provider = ?', [
                label, provider]
        return self._execute(sql, params).rowcount

    def image_pauses(self, label=None):
        """[ImagePause] of the labels whose builds are paused at run time."""
        return self._select_matching(ImagePause, order='label, id', label=label)

    # -- launch history ---------------------------------------------------
    def record_launch(self, provider, label, node_id, outcome, reason, seconds, now=None):
        """Note how a launch ended (see LAUNCH_OUTCOMES); the Launch row."""
        if outcome not in LAUNCH_OUTCOMES:
            raise ValueError('unknown launch outcome %r; valid: %s'
                             % (outcome, ', '.join(LAUNCH_OUTCOMES)))
        launch_id = self._insert('launches', {
            'provider': provider, 'label': label, 'node_id': node_id, 'outcome': outcome,
            'reason': reason, 'seconds': seconds,
            'finished': time.time() if now is None else now})
        return self._select(Launch, 'id = ?', [launch_id])[0]

    def launches(self, since=None, until=None, provider=None, label=None):
        """[Launch] that ended at or after `since` (and at or before `until`), oldest first."""
        where, params = self._filters(provider=provider, label=label)
        clauses = [where] if where else []
        if since is not None:
            clauses.append('finished >= ?')
            params.append(since)
        if until is not None:
            clauses.append('finished <= ?')
            params.append(until)
        return self._select(Launch, ' AND '.join(clauses), params, order='finished, id')

    def launch_counts(self, since, until):
        """{(provider, label, outcome, reason): (launches, launches with seconds)} of the
        launches that ended in [since, until]."""
        sql = ('SELECT provider, label, outcome, reason, COUNT(*), COUNT(seconds) FROM launches '
               'WHERE finished >= ? AND finished <= ? GROUP BY provider, label, outcome, reason')
        return {(p, l, o, r): (n, timed) for p, l, o, r, n, timed in
                self._execute(sql, [since, until]).fetchall()}

    def launch_seconds(self, provider, label, outcomes, since, until, offset, limit):
        """The seconds of the launches of provider and label with one of `outcomes`
        that ended in [since, until]: shortest first, `limit` from `offset`."""
        return self._sorted_seconds('seconds', 'launches', 'finished', 'seconds IS NOT NULL',
                                    'outcome', outcomes, provider, label, since, until,
                                    offset, limit)


    # -- leases -----------------------------------------------------------
    def _lease_row(self, provider, scope):
        rows = self._select(Lease, 'provider = ? AND scope = ?', [provider, scope],
                            order='provider')
        return rows[0] if rows else None

    def db_now(self):
        """The database server's clock, epoch seconds (what lease times are in)."""
        return float(self._execute('SELECT %s' % self._db.now_sql()).fetchone()[0])

    def acquire_lease(self, provider, scope, token, host, pid, stage, ttl):
        """Take the lease of (provider, scope) if it is free or expired: one
        conditional UPDATE (after making sure the row exists).  Returns
        (acquired, row before, row now, database time)."""
        insert = 'INSERT OR IGNORE' if self._db.url.backend == 'sqlite' else 'INSERT IGNORE'
        self._execute('%s INTO leases (provider, scope, expires, renewals) VALUES (?, ?, 0, 0)'
                      % insert, [provider, scope])
        before = self._lease_row(provider, scope)
        now = self._db.now_sql()
        taken = self._execute(
            'UPDATE leases SET token = ?, host = ?, pid = ?, stage = ?, acquired = %s, '
            'expires = %s + ?, renewals = 0 WHERE provider = ? AND scope = ? '
            'AND (token IS NULL OR expires < %s)' % (now, now, now),
            [token, host, pid, stage, float(ttl), provider, scope]).rowcount == 1
        return taken, before, self._lease_row(provider, scope), self.db_now()

    def renew_lease(self, provider, scope, token, ttl):
        """Push the expiry of our unexpired lease ttl seconds past now; False if it
        is no longer ours (taken over, released) or has already expired."""
        now = self._db.now_sql()
        return self._execute(
            'UPDATE leases SET expires = %s + ?, renewals = renewals + 1 WHERE provider = ? '
            'AND scope = ? AND token = ? AND expires >= %s' % (now, now),
            [float(ttl), provider, scope, token]).rowcount == 1

    def release_lease(self, provider, scope, token):
        """Free our lease (the row keeps who held it last); False if it was not ours."""
        return self._execute(
            'UPDATE leases SET token = NULL, expires = %s WHERE provider = ? AND scope = ? '
            'AND token = ?' % self._db.now_sql(), [provider, scope, token]).rowcount == 1

    def leases(self, provider=None):
        """[Lease] rows, held or free, by provider and scope."""
        return self._select_matching(Lease, order='provider, scope', provider=provider)

    # -- quarantines (devstackgate.health) -------------------------------
    def quarantines(self, provider=None, label=None):
        return self._select_matching(Quarantine, order='provider, label', provider=provider,
                                     label=label)

    def quarantine(self, provider, label, set_by, reason, probe_after, now=None):
        """Quarantine provider+label (or renew its reason and probe time); True if new."""
        now = time.time() if now is None else now
        if self.quarantines(provider, label):
            self._execute('UPDATE quarantines SET set_by = ?, reason = ?, probe_after = ? '
                          'WHERE provider = ? AND label = ?',
                          (set_by, reason, probe_after, provider, label))
            return False
        self._insert('quarantines', {'provider': provider, 'label': label, 'since': now,
                                     'probe_after': probe_after, 'set_by': set_by,
                                     'reason': reason, 'probes': 0})
        return True

    def probe_failed(self, quarantine, probe_after):
        """A canary failed: the quarantine stays, probed again after probe_after."""
        self._execute('UPDATE quarantines SET probes = ?, probe_after = ? '
                      'WHERE provider = ? AND label = ?',
                      (quarantine.probes + 1, probe_after, quarantine.provider,
                       quarantine.label))

    def release_quarantine(self, provider, label):
        """True if there was one."""
        found = bool(self.quarantines(provider, label))
        if found:
            self._execute('DELETE FROM quarantines WHERE provider = ? AND label = ?',
                          (provider, label))
        return found

    # -- bare-metal hosts (devstackgate.drivers.baremetal) ----------------
    def hosts(self, provider):
        """[Host] rows of one provider, by name."""
        return self._select_matching(Host, order='name', provider=provider)

    def add_host(self, provider, name):
        """A configured host seen for the first time: free, and trusted to be clean
        (its one-time set-up ended in a fresh snapshot)."""
        self._insert('hosts', {'provider': provider, 'name': name, 'verified': 0})

    def update_host(self, host, **fields):
        """Change a Host row only if its allocation and reset are still as read
        (compare-and-set: a launch, a gate and a reaper may act on one host);
        returns whether it happened."""
        bad = (set(fields) - set(_columns(Host))) | ({'provider', 'name'} & set(fields))
        if bad:
            raise ValueError('cannot set host column(s): %s' % ', '.join(sorted(bad)))
        cols = sorted(fields)
        sql = 'UPDATE hosts SET %s WHERE provider = ? AND name = ?' % ', '.join(
            '%s = ?' % c for c in cols)
        params = [fields[c] for c in cols] + [host.provider, host.name]
        for column in ('allocation', 'resetting'):
            value = getattr(host, column)
            if value is None:
                sql += ' AND %s IS NULL' % column
            else:
                sql += ' AND %s = ?' % column
                params.append(value)
        return self._execute(sql, params).rowcount == 1


class Database:
    """A connection factory for one database URL.

    Opening one touches nothing: the schema is created or upgraded only by an
    explicit :meth:`upgrade` (the stages that write call it first; fetch and
    dry runs never do).  ``read_only=True`` opens SQLite read-only (a missing
    file stays missing) and MySQL sessions as read-only transactions.
    """

    def __init__(self, url, lock_timeout=30.0, retries=5, environ=None, read_only=False,
                 idle_reuse=30.0, skip_locked=None, reconnect_wait=30.0, writer_queue=2):
        self.url = parse_url(url) if isinstance(url, str) else url
        # A MySQL server that refuses connections (restarting) is tried again
        # for this long before the error is final; nothing has been done yet then.
        self.reconnect_wait = float(reconnect_wait)
        self.lock_timeout = float(lock_timeout)
        self.retries = int(retries)
        self.writer_queue = int(writer_queue)   # SQLite: see devstackgate.sqlitequeue
        self.read_only = read_only
        self._environ = os.environ if environ is None else environ
        # A connection whose transaction ended cleanly is kept (at most
        # _POOL_SIZE, for idle_reuse seconds) for this process's next one: a
        # claim is then a few statements, not a connect and session set-up
        # (MySQL: a handshake; SQLite: opening the file, and closing the last
        # connection checkpoints the WAL, about 1 ms each).  0 opens a
        # connection per transaction.  SQLite connections must never cross a
        # fork: when a child's GC closes its copy of the parent's connection,
        # POSIX drops every lock the child holds on the file, its own
        # connection's too, and commits are lost (seen with 32 forked
        # claimers).  So idle SQLite connections are closed before every fork
        # (_close_sqlite_before_fork), and a dropped Database closes its own
        # at once (__del__).
        self.idle_reuse = float(idle_reuse)
        self._idle = []             # [(conn, since, identity)]
        self._idle_lock = threading.Lock()
        if self.url.backend == 'sqlite':
            _SQLITE_DATABASES.add(self)
        # SQLite: this process's writers take turns here first.  A thread waiting
        # for a sibling's write lock in SQLite's busy handler sleeps 1, 2, 5 ms
        # between tries; waiting here it is woken when the sibling is done.
        self._writers = threading.RLock()
        self._pid = os.getpid()
        # MySQL/MariaDB: claim with FOR UPDATE SKIP LOCKED (None: when the
        # server has it, found from its version, or from a syntax error).
        self.skip_locked = skip_locked
        if self.url.backend == 'sqlite':
            self.sql = lambda s: s
        else:
            self.sql = lambda s: s.replace('?', '%s')

    @classmethod
    def from_config(cls, config, **kwargs):
        kwargs.setdefault('idle_reuse', config.db_idle_reuse)
        kwargs.setdefault('reconnect_wait', config.db_reconnect_wait)
        kwargs.setdefault('writer_queue', config.db_writer_queue)
        return cls(config.database, lock_timeout=config.db_lock_timeout,
                   retries=config.db_retries, **kwargs)

    def __str__(self):
        return str(self.url)

    # -- connections ------------------------------------------------------
    def _connect(self):
        if self.url.backend == 'sqlite':
            return self._connect_sqlite()
        return self._connect_mysql()

    def _connect_sqlite(self):
        if self.read_only:
            if not os.path.exists(self.url.path):
                raise DatabaseError('database %s does not exist' % self.url)
            target, uri = 'file:%s?mode=ro' % urllib.parse.quote(self.url.path), True
        else:
            directory = os.path.dirname(self.url.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            target, uri = self.url.path, False
        try:
            conn = sqlite3.connect(target, timeout=self.lock_timeout, isolation_level=None,
                                   uri=uri, check_same_thread=False)
        except sqlite3.OperationalError as e:
            raise self._translate(e)
        try:
            conn.execute('PRAGMA busy_timeout=%d' % int(self.lock_timeout * 1000))
            # Switching to WAL does not wait out a busy database (a new file another
            # process is writing): then it is busy, and retried like any lock wait.
            if not self.read_only and conn.execute('PRAGMA journal_mode').fetchone()[0] != 'wal':
                conn.execute('PRAGMA journal_mode=WAL')
        except sqlite3.OperationalError as e:
            _quiet_close(conn)
            raise self._translate(e)
        return conn

    def _connect_mysql(self):
        import mysql.connector  # only when a MySQL URL is used
        kwargs = {
            'user': self.url.user, 'database': self.url.database,
            'autocommit': False, 'connection_timeout': int(self.lock_timeout),
        }
        if self.url.unix_socket:
            kwargs['unix_socket'] = self.url.unix_socket
        else:
            kwargs['host'], kwargs['port'] = self.url.host, self.url.port
        option_file = self.url.option_file or self._environ.get(OPTION_FILE_ENV)
        if option_file:
            from devstackgate import secrets     # here: only a MySQL option file needs it
            secrets.warn_if_readable(option_file, 'MySQL option file')
            kwargs['option_files'] = option_file
        password = self._environ.get(PASSWORD_ENV)
        if password is not None:
            kwargs['password'] = password
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        deadline, warned = time.monotonic() + self.reconnect_wait, False
        while True:
            try:
                conn = mysql.connector.connect(**kwargs)
                break
            except mysql.connector.Error as e:
                left = deadline - time.monotonic()
                unreachable = getattr(e, 'errno', None) in _MYSQL_UNREACHABLE
                if not unreachable or left <= 0:
                    error = DatabaseError('cannot connect to %s: %s'
                                          % (self.url, _mysql_message(e)))
                    error.unreachable = unreachable     # waited for already: not again
                    raise error
                if not warned:
                    log.warning('database %s does not answer (%s); trying again for up to '
                                '%.1f s', self.url, _mysql_message(e), left)
                    warned = True
                time.sleep(min(1.0, left))
        try:
            cur = conn.cursor()
            cur.execute('SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED')
            cur.execute('SET SESSION innodb_lock_wait_timeout = %d'
                        % max(1, int(self.lock_timeout)))
            if self.read_only:
                cur.execute('SET SESSION TRANSACTION READ ONLY')
            cur.close()
        except mysql.connector.Error as e:
            raise DatabaseError('cannot connect to %s: %s' % (self.url, _mysql_message(e)))
        return conn

    def _translate(self, exc):
        """A driver exception as one of ours, with no secret in it."""
        if isinstance(exc, sqlite3.OperationalError):
            if 'locked' in str(exc) or 'busy' in str(exc):
                return DatabaseBusy('database %s is busy: %s' % (self.url, exc))
            if 'no such table' in str(exc):
                return self._no_schema()
            return DatabaseError('database %s: %s' % (self.url, exc))
        if isinstance(exc, sqlite3.Error):
            return DatabaseError('database %s: %s' % (self.url, exc))
        errno = getattr(exc, 'errno', None)
        if errno in (_MYSQL_LOCK_WAIT_TIMEOUT, _MYSQL_DEADLOCK):
            return DatabaseBusy('database %s is busy: %s' % (self.url, _mysql_message(exc)))
        if errno == _MYSQL_NO_SUCH_TABLE:
            return self._no_schema()
        return DatabaseError('database %s: %s' % (self.url, _mysql_message(exc)))

    def _no_schema(self):
        return DatabaseError('database %s has no devstack-gate schema yet; the stages that write '
                             '(devstack-vm-launch.py, devstack-vm-update-image.py, '
                             'devstack-vm-reap.py) create it' % self.url)

    def _driver_errors(self):
        if self.url.backend == 'sqlite':
            return (sqlite3.Error,)
        import mysql.connector
        return (mysql.connector.Error,)

    def _identity(self):
        """What a kept SQLite connection must still be connected to: the file's inode."""
        if self.url.backend != 'sqlite':
            return None
        try:
            st = os.stat(self.url.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _checkout(self):
        """(connection, identity): a kept one of this process still good, else a new one."""
        if self.idle_reuse > 0:
            with self._idle_lock:
                if self._pid != os.getpid():
                    # Forked: the parent's connections are not ours to use, nor to close.
                    _FORKED_AWAY.extend(self._idle)
                    self._idle, self._pid = [], os.getpid()
                now = time.monotonic()
                while self._idle:
                    conn, since, identity = self._idle.pop()
                    if now - since <= self.idle_reuse and self._still_good(conn, identity):
                        return conn, identity
                    _quiet_close(conn)
        conn = self._connect()
        return conn, self._identity()

    def _still_good(self, conn, identity):
        if self.url.backend == 'sqlite':
            # The file replaced or removed: a kept connection would use the old one.
            return identity is not None and identity == self._identity()
        # A server that closed the connection (restart, wait_timeout, KILL) has
        # left it readable; a live idle connection has nothing to read.
        sock = getattr(getattr(conn, '_socket', None), 'sock', None)
        if sock is None:
            return True
        try:
            import select
            return not select.select([sock], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def _checkin(self, conn, identity):
        if self.idle_reuse > 0 and self._pid == os.getpid():
            with self._idle_lock:
                if len(self._idle) < _POOL_SIZE:
                    self._idle.append((conn, time.monotonic(), identity))
                    return
        _quiet_close(conn)

    def close(self):
        """Close the connections kept for reuse (the next transaction opens a new one)."""
        with self._idle_lock:
            idle, self._idle = (self._idle, []) if self._pid == os.getpid() else ([], [])
        for conn, _, _ in idle:
            _quiet_close(conn)

    def __del__(self):
        # A dropped Database closes its kept connections at once.  An sqlite3
        # connection is in a reference cycle of its own (its statement cache), so
        # it would otherwise stay open until the cyclic GC runs, and be inherited
        # by any fork before that: the lost commits of 32 forked claimers.
        try:
            self.close()
        except Exception:   # a half-made Database, or the interpreter going away
            pass

    @contextlib.contextmanager
    def session(self):
        """A transaction: commit on normal exit, roll back on an exception.

        SQLite sessions take the write lock up front (BEGIN IMMEDIATE) so two
        writers never deadlock upgrading read locks; a lock held by another
        writer is waited for by the driver (busy timeout = lock_timeout), not
        by sleeping here; and before that, behind this process's other writers
        (a lock of the Database's) and, in the main thread, in the kernel's
        queue of the database's writers (devstackgate.sqlitequeue), so it is
        woken the moment the writer before it is done.  A connection whose
        transaction committed is kept for the next one (see idle_reuse); any
        other is closed.
        """
        queued = writing = None
        if self.url.backend == 'sqlite' and not self.read_only:
            if not self._writers.acquire(timeout=self.lock_timeout):
                raise DatabaseBusy('database %s is busy: %g s waiting for this process\'s '
                                   'other writers' % (self.url, self.lock_timeout))
            writing = self._writers
            queued = sqlitequeue.enter(self.url.path, self.lock_timeout, self.writer_queue)
        try:
            conn, identity = self._checkout()
        except BaseException:
            sqlitequeue.leave(queued)
            if writing is not None:
                writing.release()
            raise
        errors = self._driver_errors()
        clean = False
        try:
            try:
                if self.url.backend == 'sqlite':
                    conn.execute('BEGIN' if self.read_only else 'BEGIN IMMEDIATE')
                session = Session(self, conn)
            except errors as e:
                raise self._translate(e)
            try:
                yield session
                conn.commit()
                clean = True
                sqlitequeue.leave(queued)
                queued = None
                if writing is not None:
                    writing.release()
                    writing = None
                for row, to_state, when, reason in session.transitions:
                    _log_transition(row, to_state, when, reason)
            except errors as e:
                _quiet_rollback(conn)
                raise self._translate(e)
            except BaseException:
                _quiet_rollback(conn)
                raise
        finally:
            sqlitequeue.leave(queued)
            if writing is not None:
                writing.release()
            if clean:
                self._checkin(conn, identity)
            else:
                _quiet_close(conn)

    def transact(self, fn):
        """Run fn(session) in a transaction, retrying it when the database is busy."""
        def attempt():
            with self.session() as session:
                return fn(session)
        return self._retrying(attempt)

    def _retrying(self, attempt_fn):
        """Call attempt_fn, again after a jittered backoff while the database is busy.

        Waits are bounded: each attempt waits at most lock_timeout for a lock
        (in the driver: SQLite's busy timeout, InnoDB's lock wait timeout),
        and there are at most `retries` attempts.  The first retry is at once
        (a deadlock victim, or a lock wait that already lasted lock_timeout,
        gains nothing by sleeping); later ones back off.
        """
        for attempt in range(1, self.retries + 1):
            try:
                return attempt_fn()
            except DatabaseBusy as e:
                if attempt == self.retries:
                    raise DatabaseBusy('%s (gave up after %d attempts of up to %g s each)'
                                       % (e, attempt, self.lock_timeout))
                if attempt > 1:
                    import random
                    time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.5))

    # -- schema -----------------------------------------------------------
    def _stored_version(self):
        """The schema version, read without any lock (None if there is no schema yet).

        Opening an up-to-date database (every fetch does) costs one plain read;
        only a missing or older schema takes the upgrade lock.
        """
        try:
            conn = self._connect()
        except DatabaseError as e:  # busy, or not there yet: the upgrade finds out, retrying
            if getattr(e, 'unreachable', False):
                raise               # no server, after waiting db-reconnect-wait: do not wait twice
            return None
        try:
            cur = conn.cursor()
            cur.execute('SELECT version FROM schema_version')
            row = cur.fetchone()
            return row[0] if row else None
        except self._driver_errors():
            return None
        finally:
            _quiet_close(conn)

    def upgrade(self):
        """Create the schema, or bring it up to this code's version, in place.

        An up-to-date schema costs one plain read.  Otherwise concurrent
        upgraders serialise on a lock (SQLite's write lock, or a MySQL named
        lock) so a migration runs once.
        """
        if self.read_only:
            raise DatabaseError('database %s is open read-only; not upgrading it' % self.url)
        if self._stored_version() != schema_version():
            self._retrying(self._upgrade)
        return self

    def _upgrade(self):
        conn = self._connect()
        errors = self._driver_errors()
        try:
            cur = conn.cursor()
            if self.url.backend == 'sqlite':
                conn.execute('BEGIN IMMEDIATE')
            else:
                cur.execute('SELECT GET_LOCK(%s, %s)',
                            ('devstack_gate_schema', int(self.lock_timeout)))
                if cur.fetchone()[0] != 1:
                    raise DatabaseBusy('database %s is busy: schema lock not obtained within %g s'
                                       % (self.url, self.lock_timeout))
            cur.execute('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)')
            cur.execute('SELECT version FROM schema_version')
            row = cur.fetchone()
            current = row[0] if row else 0
            if row is None:
                cur.execute(self.sql('INSERT INTO schema_version (version) VALUES (?)'), (0,))
            target = schema_version()
            if current > target:
                raise DatabaseError(
                    'database %s has schema version %d, newer than this devstack-gate knows (%d);'
                    ' upgrade devstack-gate' % (self.url, current, target))
            pk = ('INTEGER PRIMARY KEY AUTOINCREMENT' if self.url.backend == 'sqlite'
                  else 'INTEGER PRIMARY KEY AUTO_INCREMENT')
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    cur.execute(statement.format(pk=pk, text='TEXT'))
                cur.execute(self.sql('UPDATE schema_version SET version = ?'), (version,))
            conn.commit()
        except errors as e:
            _quiet_rollback(conn)
            raise self._translate(e)
        finally:
            if self.url.backend != 'sqlite':
                with contextlib.suppress(*errors):
                    cur = conn.cursor()
                    cur.execute('SELECT RELEASE_LOCK(%s)', ('devstack_gate_schema',))
                    cur.fetchall()
            _quiet_close(conn)

    def now_sql(self):
        """An SQL expression for the server's clock in epoch seconds (UTC, whatever
        the session time zone)."""
        if self.url.backend == 'sqlite':
            return "((julianday('now') - 2440587.5) * 86400.0)"
        return "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) / 1000000.0)"

    def version(self):
        with self.session() as s:
            return s._execute('SELECT version FROM schema_version').fetchone()[0]

    # -- the claim --------------------------------------------------------
    def claim_node(self, label, claimed_by, providers=None, result=None, order=None):
        """Hand the oldest ready node of `label` to exactly one caller.

        On MySQL 8 and MariaDB 10.6+ the oldest ready row that no concurrent
        claim holds is locked with ``SELECT ... FOR UPDATE SKIP LOCKED`` and
        marked used by id (only while still ready), so concurrent claims
        take the oldest rows side by side instead of queueing on the same
        one.  When that finds nothing (no ready node, or every one held by a
        claim in flight) and on SQLite or an older server, one atomic UPDATE
        of the oldest ready row (which waits for a held row) gives the exact
        answer.  Either way the row is marked with a fresh claim token, and
        a node has exactly one holder.  Optional `providers` restricts the
        choice; `result` (a dict of results columns) records a gate result
        row in the same transaction.  Returns (node, result) or (None, None)
        when no node is ready.  `order`, instead of `providers`: a function of
        the label's quarantined providers giving the provider tiers to try in
        turn, in the same transaction (fetch.tiers).
        """
        def claim(s):
            # The claim's SQL lives in devstackgate.claim (fetch's fast path runs it too).
            common = dict(result=result, skip_locked=lambda: self._has_skip_locked(s),
                          no_skip_locked=lambda: setattr(self, 'skip_locked', False),
                          driver_errors=self._driver_errors())
            if order is not None:
                node, row = claimmod.claim_first(s._execute, self.url.backend, label,
                                                 claimed_by, _columns(Node), _columns(Result),
                                                 order, **common)
            else:
                node, row = claimmod.claim(s._execute, self.url.backend, label, claimed_by,
                                           _columns(Node), _columns(Result),
                                           providers=providers, **common)
            return (Node(**node) if node else None), (Result(**row) if row else None)

        return self.transact(claim)

    def _has_skip_locked(self, s):
        if self.skip_locked is None:
            info = getattr(s._conn, 'server_info', None) or s._conn.get_server_info()
            self.skip_locked = server_has_skip_locked(info)
        return self.skip_locked


#: Connections a forked child inherited in a Database's pool: never used nor
#: closed there (closing would end the parent's session), only kept referenced.
_FORKED_AWAY = []

#: Every SQLite Database of this process, whose idle connections a fork closes first.
_SQLITE_DATABASES = weakref.WeakSet()


def _close_sqlite_before_fork():
    for db in list(_SQLITE_DATABASES):
        if getattr(db, '_pid', None) == os.getpid():
            db.close()


def _new_writer_locks_in_child():
    # A thread of the parent's may have held one: it does not exist in the child.
    for db in list(_SQLITE_DATABASES):
        db._writers = threading.RLock()


os.register_at_fork(before=_close_sqlite_before_fork, after_in_child=_new_writer_locks_in_child)


def _log_transition(row, to_state, when, reason):
    name = row.name or '%s-%d' % (type(row).__name__.lower(), row.id)
    log.info('%s %s %s: %s -> %s after %.0f s%s', row.provider, row.label, name, row.state,
             to_state, when - row.state_time, ' (%s)' % reason if reason else '')


def _mysql_message(exc):
    msg = getattr(exc, 'msg', None) or str(exc)
    errno = getattr(exc, 'errno', None)
    return '%s (error %s)' % (msg, errno) if errno else msg


def _quiet_rollback(conn):
    with contextlib.suppress(Exception):
        conn.rollback()


def _quiet_close(conn):
    with contextlib.suppress(Exception):
        conn.close()

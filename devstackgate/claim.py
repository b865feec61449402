"""The claim: hand the oldest ready node of a label to exactly one caller.

One implementation of the claim's SQL, used by :meth:`vmdatabase.Database.claim_node`
(which turns the rows into its dataclasses) and by fetch's fast path,
:class:`FastDatabase`, which imports no dataclasses, no logging and not
vmdatabase: a gate job's fetch is one connection, one transaction and an exit.

The claim runs in the caller's transaction through ``execute(sql, params)``
(``?`` placeholders, the caller converts them for its driver), so the
transaction, its retries and its error messages stay the caller's.

:class:`FastDatabase` does only the path that succeeds.  Any driver error before
the commit (nothing has happened then: the transaction is rolled back) hands
the whole call to vmdatabase.Database, which does it again with its retries,
reconnect waits and its own error messages, so every failure looks as it
always did.  A failed MySQL COMMIT is not retried that way (it may have
committed): it is reported as vmdatabase reports it.
"""

import _weakref
import os
import time

#: MySQL/MariaDB: the servers whose SELECT ... FOR UPDATE SKIP LOCKED the claim uses.
SKIP_LOCKED_SINCE = {'mariadb': (10, 6), 'mysql': (8, 0, 1)}
_MYSQL_PARSE_ERROR = 1064           # a server that does not know SKIP LOCKED says this

#: The node columns fetch prints (FastDatabase reads only these).
FETCH_NODE_COLUMNS = ('id', 'provider', 'label', 'name', 'ip', 'username', 'host_key',
                      'claimed_by', 'image_id')


def server_has_skip_locked(info):
    """Whether a MySQL/MariaDB server version string (the handshake's) has SKIP LOCKED.

    MariaDB 10.x reports itself as ``5.5.5-10.11.19-MariaDB-...``.
    """
    info = str(info or '')
    kind = 'mariadb' if 'mariadb' in info.lower() else 'mysql'
    if kind == 'mariadb' and info.startswith('5.5.5-'):
        info = info[len('5.5.5-'):]
    version = []
    for part in info.split('-', 1)[0].split('.')[:3]:
        digits = ''.join(c for c in part if c.isdigit())
        if not digits:
            break
        version.append(int(digits))
    return bool(version) and tuple(version) >= SKIP_LOCKED_SINCE[kind]


def claim(execute, backend, label, claimed_by, node_columns, result_columns=('id',),
          providers=None, result=None, skip_locked=None, no_skip_locked=None,
          driver_errors=()):
    """Claim in the caller's transaction; (node, result) as dicts, or (None, None).

    On MySQL 8 and MariaDB 10.6+ (``skip_locked()`` true) the oldest ready row
    that no concurrent claim holds is locked with ``SELECT ... FOR UPDATE SKIP
    LOCKED`` and marked used by id (only while still ready), so concurrent
    claims take the oldest rows side by side instead of queueing on one.  When
    that finds nothing, and on SQLite or an older server, one atomic UPDATE of
    the oldest ready row (which waits for a held row) gives the exact answer.
    Either way the row gets a fresh claim token, and a node has exactly one
    holder.  `providers` restricts the choice; `result` (results columns)
    records a gate result row in the same transaction.  A server that turns
    out not to know SKIP LOCKED calls ``no_skip_locked()``.
    """
    providers = list(providers) if providers else None
    where = 'label = ? AND state = ?'
    params = [label, 'ready']
    if providers:
        where += ' AND provider IN (%s)' % ', '.join('?' for _ in providers)
        params += providers
    token = os.urandom(16).hex()
    now = time.time()
    values = {'state': 'used', 'state_time': now, 'claimed_by': claimed_by,
              'claim_token': token}
    node = None
    if backend != 'sqlite' and skip_locked is not None and skip_locked():
        node = _claim_skipping_locked(execute, where, params, values, node_columns,
                                      no_skip_locked, driver_errors)
    if node is None:
        node = _claim_oldest(execute, backend, where, params, values, node_columns)
    if node is None:
        return None, None
    row = None
    if result is not None:
        rvalues = dict(result, start_time=now, provider=node['provider'], label=node['label'],
                       node_id=node['id'], node_name=node['name'],
                       image_id=node.get('image_id'))
        rvalues.setdefault('result', 'running')
        cols = sorted(rvalues)
        row_id = execute('INSERT INTO results (%s) VALUES (%s)' % (
            ', '.join(cols), ', '.join('?' for _ in cols)), [rvalues[c] for c in cols]).lastrowid
        row = dict({c: rvalues.get(c) for c in result_columns}, id=row_id)
    return node, row


def _claim_oldest(execute, backend, where, params, values, columns):
    """One UPDATE of the oldest ready row (waiting for it if a claim holds it)."""
    sets = ', '.join('%s = ?' % c for c in values)
    if backend == 'sqlite':
        sql = ('UPDATE nodes SET %s WHERE id = (SELECT id FROM nodes WHERE %s '
               'ORDER BY state_time, id LIMIT 1)' % (sets, where))
    else:
        sql = 'UPDATE nodes SET %s WHERE %s ORDER BY state_time, id LIMIT 1' % (sets, where)
    execute(sql, list(values.values()) + params)
    rows = execute('SELECT %s FROM nodes WHERE claim_token = ? ORDER BY id'
                   % ', '.join(columns), [values['claim_token']]).fetchall()
    return dict(zip(columns, rows[0])) if rows else None


def _claim_skipping_locked(execute, where, params, values, columns, no_skip_locked,
                           driver_errors):
    """Lock the oldest ready row no other claim holds and mark it used; None if none."""
    sql = ('SELECT %s FROM nodes WHERE %s ORDER BY state_time, id LIMIT 1 '
           'FOR UPDATE SKIP LOCKED' % (', '.join(columns), where))
    try:
        rows = execute(sql, params).fetchall()
    except driver_errors as e:
        if getattr(e, 'errno', None) != _MYSQL_PARSE_ERROR:
            raise
        if no_skip_locked is not None:
            no_skip_locked()            # an older server: the waiting claim from now on
        return None
    if not rows:
        return None
    node = dict(zip(columns, rows[0]))
    cols = sorted(values)
    changed = execute('UPDATE nodes SET %s WHERE id = ? AND state = ?'
                      % ', '.join('%s = ?' % c for c in cols),
                      [values[c] for c in cols] + [node['id'], 'ready']).rowcount
    if changed != 1:
        return None     # cannot happen while we hold its lock; the waiting claim decides
    node.update(values)
    return node


def node_counts(execute, label):
    """{(provider, state): count} of a label's nodes."""
    rows = execute('SELECT provider, state, COUNT(*) FROM nodes WHERE label = ? '
                   'GROUP BY provider, state', [label]).fetchall()
    return {(p, s): n for p, s, n in rows}


def quarantined(execute, label):
    """The providers whose `label` is quarantined (devstackgate.health), exactly matched."""
    rows = execute('SELECT provider, label FROM quarantines WHERE label = ?', [label]).fetchall()
    return sorted({p for p, lab in rows if lab == label})


def claim_first(execute, backend, label, claimed_by, node_columns, result_columns, order,
                result=None, skip_locked=None, no_skip_locked=None, driver_errors=()):
    """claim() from the first provider tier with a ready node, in the caller's one
    transaction: order(quarantined providers) gives the tiers (fetch.tiers)."""
    try:
        held = quarantined(execute, label)
    except driver_errors:       # no quarantines table yet (an older schema): none
        held = []
    for tier in order(held):
        node, row = claim(execute, backend, label, claimed_by, node_columns, result_columns,
                          providers=tier, result=result, skip_locked=skip_locked,
                          no_skip_locked=no_skip_locked, driver_errors=driver_errors)
        if node is not None:
            return node, row
    return None, None


class Row:
    """A row as attributes (what fetch reads of a node or a result)."""

    def __init__(self, values):
        self.__dict__.update(values)


class _Fallback(Exception):
    """The fast connection did not get it done: vmdatabase does the whole call again."""


class FastDatabase:
    """What fetch needs of vmdatabase.Database (claim_node, node counts), on the fast path.

    `config` has the database settings (database, db-lock-timeout, ...).  A
    process's first call that meets any driver error before its commit, and
    every call after it, goes to vmdatabase.Database.from_config(config).

    The connection is kept for the process's next call (a fetch makes one; a
    long-lived caller many), never used across a fork: a child opens its own,
    and a kept SQLite connection is closed before every fork, as vmdatabase's
    are (an inherited one would lose commits).

    On MySQL/MariaDB a claim first takes a turn (devstackgate.claimgate,
    ``db-claim-slots``) and, with one, runs under REPEATABLE READ, where the
    SKIP LOCKED claim costs the server least; without one, it runs under READ
    COMMITTED, as vmdatabase's claims do, which holds up better when every
    claimer is in the server at once.
    """

    def __init__(self, config):
        self.config = config
        self._full = None
        self._skip_locked = None
        self._conn, self._pid = None, None
        url = config.database
        if url.startswith('sqlite:///') and len(url) > len('sqlite:///'):
            path = url[len('sqlite:///'):]      # vmdatabase.parse_url's rule
            self.backend = 'sqlite'
            self._path = os.path.expanduser(path) if path.startswith('~') else path
            _KEPT_SQLITE.append(_weakref.ref(self))
        else:
            self.backend = 'mysql'

    def full(self):
        """The vmdatabase.Database everything goes to once the fast path gave up."""
        if self._full is None:
            from devstackgate import log
            log.ensure_setup()     # its warnings (a MySQL restart) are console lines too
            import vmdatabase
            self._full = vmdatabase.Database.from_config(self.config)
        return self._full

    def claim_node(self, label, claimed_by, providers=None, result=None, order=None):
        """(node, result) as vmdatabase.Database.claim_node gives them, or (None, None)."""
        if self._full is None:
            def run(execute, errors, skip_locked):
                common = dict(result=result, skip_locked=skip_locked,
                              no_skip_locked=self._no_skip_locked, driver_errors=errors)
                if order is not None:
                    return claim_first(execute, self.backend, label, claimed_by,
                                       FETCH_NODE_COLUMNS, ('id',), order, **common)
                return claim(execute, self.backend, label, claimed_by, FETCH_NODE_COLUMNS,
                             providers=providers, **common)
            try:
                node, row = self._transact(run, claiming=True)
            except _Fallback:
                pass
            else:
                return (Row(node) if node else None), (Row(row) if row else None)
        return self.full().claim_node(label, claimed_by, providers=providers, result=result,
                                      order=order)

    def node_counts(self, label):
        if self._full is None:
            try:
                return self._transact(lambda execute, errors, skip_locked:
                                      node_counts(execute, label))
            except _Fallback:
                pass
        return self.full().transact(lambda s: s.node_counts(label))

    def close(self):
        """Close the kept connection (the next call opens another)."""
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            _quietly(conn.close)

    # -- plumbing: one transaction on the process's connection -----------------
    def _connection(self, connect):
        if self._conn is not None and self._pid != os.getpid():
            self._conn = None           # the parent's (a MySQL socket: never QUIT it)
        if self._conn is None:
            self._conn, self._pid = connect(), os.getpid()
        return self._conn

    def _transact(self, fn, claiming=False):
        """fn(execute, driver errors, skip_locked) in one transaction."""
        if self.backend == 'sqlite':
            return self._transact_sqlite(fn)
        return self._transact_mysql(fn, claiming)

    def _transact_sqlite(self, fn):
        import sqlite3
        # As vmdatabase.Database._connect_sqlite and session() do it.
        timeout = float(self.config.db_lock_timeout)

        def connect():
            directory = os.path.dirname(self._path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(self._path, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute('PRAGMA busy_timeout=%d' % int(timeout * 1000))
            if conn.execute('PRAGMA journal_mode').fetchone()[0] != 'wal':
                conn.execute('PRAGMA journal_mode=WAL')
            return conn
        from devstackgate import sqlitequeue      # as vmdatabase's sessions queue
        queued = sqlitequeue.enter(self._path, timeout, int(self.config.db_writer_queue))
        try:
            conn = self._connection(connect)
            conn.execute('BEGIN IMMEDIATE')
            out = fn(conn.execute, (sqlite3.Error,), None)
            conn.commit()       # a failed COMMIT leaves nothing done: closing rolls back
            return out
        except (sqlite3.Error, OSError):
            self.close()
            raise _Fallback()
        finally:
            sqlitequeue.leave(queued)

    def _transact_mysql(self, fn, claiming):
        url = self._mysql_url()
        if url is None:
            raise _Fallback()
        # Our own small client (devstackgate.mysqlwire): importing mysql.connector
        # (and the ssl it needs) would cost this process ~125 ms of its ~45.
        # Whatever it cannot do (TLS, another auth plugin, a server that is down)
        # goes to vmdatabase and mysql.connector, before anything was done.
        from devstackgate import claimgate, mysqlwire
        lock_timeout = float(self.config.db_lock_timeout)
        errors = (mysqlwire.Error,)

        def connect():
            # As vmdatabase.Database._connect_mysql sets the session up (without its
            # reconnect wait: a refused connection goes to vmdatabase, which waits).
            conn = mysqlwire.connect(url['host'], url['port'], url['user'],
                                     password=os.environ.get('DEVSTACK_GATE_DB_PASSWORD'),
                                     database=url['database'], timeout=lock_timeout)
            try:
                cur = conn.cursor()
                cur.execute('SET SESSION innodb_lock_wait_timeout = %d'
                            % max(1, int(lock_timeout)))
                cur.execute('SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ')
            except errors:
                conn.close()
                raise
            return conn
        try:
            conn = self._connection(connect)
        except errors:
            raise _Fallback()
        turn = None
        if claiming:
            turn = claimgate.take(int(self.config.db_claim_slots),
                                  float(self.config.db_claim_slot_wait))
        try:
            cur = conn.cursor()

            def execute(sql, params=()):
                return cur.execute(sql.replace('?', '%s'), tuple(params))
            try:
                if claiming and turn is None:
                    cur.execute('SET TRANSACTION ISOLATION LEVEL READ COMMITTED')
                self._server_info = conn.server_info
                out = fn(execute, errors, self._has_skip_locked)
            except errors:
                _quietly(conn.rollback)
                self.close()
                raise _Fallback()
            try:
                conn.commit()
            except errors as e:
                self.close()
                # It may have committed: never claim again behind this one's back.
                from devstackgate.errors import DatabaseBusy
                translated = self.full()._translate(e)
                if isinstance(translated, DatabaseBusy):
                    raise _Fallback()       # vmdatabase retries a busy transaction
                raise translated
            return out
        finally:
            claimgate.give_back(turn)

    def _mysql_url(self):
        """The parts of a mysql:// URL fetch's fast connection takes, else None (then
        vmdatabase does it: an option file, or anything unusual)."""
        url = self.config.database
        scheme, sep, rest = url.partition('://')
        if not sep or scheme not in ('mysql', 'mariadb') or '?' in rest or '#' in rest:
            return None
        userinfo, at, hostpath = rest.rpartition('@')
        if not at or ':' in userinfo or '%' in userinfo or not userinfo:
            return None
        hostport, slash, database = hostpath.partition('/')
        if not slash or not database or '/' in database or '%' in database:
            return None
        host, colon, port = hostport.partition(':')
        if not host or host.startswith('['):
            return None
        if colon:
            if not port.isdigit():
                return None
            port = int(port)
        else:
            port = 3306
        return {'user': userinfo, 'host': host.lower(), 'port': port, 'database': database,
                'unix_socket': None}

    def _has_skip_locked(self):
        if self._skip_locked is None:
            self._skip_locked = server_has_skip_locked(self._server_info)
        return self._skip_locked

    def _no_skip_locked(self):
        self._skip_locked = False


#: (Weak references to) the FastDatabases of SQLite, whose kept connections are
#: closed before a fork.
_KEPT_SQLITE = []


def _close_sqlite_before_fork():
    alive = []
    for ref in _KEPT_SQLITE:
        db = ref()
        if db is not None:
            alive.append(ref)
            if db._conn is not None and db._pid == os.getpid():
                db.close()
    _KEPT_SQLITE[:] = alive


os.register_at_fork(before=_close_sqlite_before_fork)


def _quietly(fn):
    try:
        fn()
    except Exception:
        pass

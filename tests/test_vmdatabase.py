"""vmdatabase on both backends: schema, sessions, claims, busy databases, secrets."""

import multiprocessing
import os
import re
import sqlite3
import time

import pytest

import vmdatabase
from devstackgate.errors import DatabaseBusy, DatabaseError
from tests.conftest import mysql_connect, mysql_server_url

CLAIMERS = 32
READY_NODES = 200


def make_ready_nodes(db, count, label='precise', provider='rax', start=1000.0):
    def add(s):
        for i in range(count):
            s.create_node(provider, label, state='ready', now=start + i, name='n%d' % i)
    db.transact(add)


def test_opening_creates_nothing_and_upgrade_is_explicit(db_url):
    db = vmdatabase.Database(db_url)
    # Opening is no hidden upgrade: a stage that only reads or claims is told what to run.
    with pytest.raises(DatabaseError) as e:
        db.claim_node('precise', 'job-1')
    assert 'has no devstack-gate schema yet' in str(e.value)
    assert 'devstack-vm-launch.py' in str(e.value)
    assert db.upgrade() is db
    assert db.version() == vmdatabase.schema_version()
    # Upgrading again neither fails nor re-runs migrations.
    db2 = vmdatabase.Database(db_url).upgrade()
    assert db2.version() == vmdatabase.schema_version()


def test_read_only_sqlite_never_creates_the_file(tmp_path):
    path = tmp_path / 'sub' / 'devstack-gate.db'
    db = vmdatabase.Database('sqlite:///%s' % path, read_only=True)
    with pytest.raises(DatabaseError) as e:
        db.version()
    assert 'does not exist' in str(e.value)
    with pytest.raises(DatabaseError):
        db.upgrade()
    assert not (tmp_path / 'sub').exists()
    vmdatabase.Database('sqlite:///%s' % path).upgrade().transact(
        lambda s: s.create_node('rax', 'precise', name='n1'))
    before = path.read_bytes()
    with pytest.raises(DatabaseError) as e:
        db.transact(lambda s: s.create_node('rax', 'precise'))
    assert 'readonly' in str(e.value)
    assert [n.name for n in db.transact(lambda s: s.nodes())] == ['n1']
    assert path.read_bytes() == before


def test_upgrade_in_place_keeps_data(db_url, monkeypatch):
    db = vmdatabase.Database(db_url).upgrade()
    with db.session() as s:
        node = s.create_node('rax', 'precise', name='keep-me')
    v = vmdatabase.schema_version()
    monkeypatch.setattr(vmdatabase, 'MIGRATIONS', vmdatabase.MIGRATIONS + [
        (v + 1, ['CREATE TABLE upgrade_probe (id {pk}, note {text})'])])
    db = vmdatabase.Database(db_url).upgrade()
    assert db.version() == v + 1
    with db.session() as s:
        assert s.get_node(node.id).name == 'keep-me'
        s._execute("INSERT INTO upgrade_probe (note) VALUES ('x')")


def test_newer_schema_is_refused(db_url, monkeypatch):
    vmdatabase.Database(db_url).upgrade()
    monkeypatch.setattr(vmdatabase, 'MIGRATIONS', vmdatabase.MIGRATIONS + [(99, [])])
    vmdatabase.Database(db_url).upgrade()
    monkeypatch.undo()
    with pytest.raises(DatabaseError) as e:
        vmdatabase.Database(db_url).upgrade()
    assert 'has schema version 99, newer than this devstack-gate knows (%d)' % (
        vmdatabase.schema_version()) in str(e.value)


def test_session_commits_or_rolls_back(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    with pytest.raises(RuntimeError):
        with db.session() as s:
            s.create_node('rax', 'precise')
            raise RuntimeError('boom')
    with db.session() as s:
        assert s.nodes() == []
        n = s.create_node('rax', 'precise')
    with db.session() as s:
        assert [x.id for x in s.nodes()] == [n.id]
        assert s.get_node(n.id).state == 'building'


def test_state_changes_only_through_transition_which_moves_state_time(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    with db.session() as s:
        n = s.create_node('rax', 'precise', now=100.0)
        s.update_node(n.id, ip='127.0.0.5')
        assert s.get_node(n.id).state_time == 100.0
        with pytest.raises(ValueError):
            s.update_node(n.id, state='ready')
        assert s.transition(n, 'ready')
        after = s.get_node(n.id)
        assert after.state == 'ready' and after.state_time > 100.0 and after.ip == '127.0.0.5'
        with pytest.raises(ValueError):
            s.transition(after, 'bogus')
        with pytest.raises(ValueError):
            s.update_node(n.id, no_such_column=1)
        image = s.create_image('rax', 'precise')
        with pytest.raises(ValueError):
            s.update_image(image.id, state='ready')
        assert s.transition(image, 'ready', external_id='img-1')
        assert s.get_image(image.id).state == 'ready'


def test_claim_takes_the_oldest_ready_node_and_records_a_result(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    with db.session() as s:
        s.create_node('rax', 'precise', state='ready', now=30.0, name='young')
        s.create_node('hp', 'precise', state='ready', now=10.0, name='old')
        s.create_node('rax', 'precise', state='building', now=1.0, name='booting')
        s.create_node('rax', 'oneiric', state='ready', now=1.0, name='other-label')
    node, result = db.claim_node('precise', 'job-1', result={'job_name': 'gate', 'build_number': '7'})
    assert node.name == 'old' and node.state == 'used' and node.claimed_by == 'job-1'
    assert result.node_id == node.id and result.provider == 'hp'
    assert result.job_name == 'gate' and result.result == 'running'
    node, _ = db.claim_node('precise', 'job-2', providers=['hp'])
    assert node is None
    node, result = db.claim_node('precise', 'job-2', providers=['rax'])
    assert node.name == 'young' and result is None
    assert db.claim_node('precise', 'job-3') == (None, None)
    with db.session() as s:
        assert s.node_counts('precise') == {('hp', 'used'): 1, ('rax', 'used'): 1,
                                            ('rax', 'building'): 1}


def test_current_image_ignores_demoted_and_building(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    with db.session() as s:
        old = s.create_image('rax', 'precise', state='ready', now=1.0)
        new = s.create_image('rax', 'precise', state='ready', now=2.0)
        s.create_image('rax', 'precise', state='building', now=3.0)
        assert s.current_image('rax', 'precise').id == new.id
        s.update_image(new.id, demoted=1)
        assert s.current_image('rax', 'precise').id == old.id
        assert s.current_image('hp', 'precise') is None


def _claimer(url, index, queue):
    db = vmdatabase.Database(url, lock_timeout=10, retries=20).upgrade()
    mine = []
    while True:
        node, _ = db.claim_node('precise', 'claimer-%d' % index)
        if node is None:
            break
        mine.append(node.id)
    queue.put((index, mine))


def test_concurrent_claims_hand_each_node_out_exactly_once(db_url):
    """32 processes race for 200 ready nodes: none is handed out twice, none is lost."""
    db = vmdatabase.Database(db_url).upgrade()
    make_ready_nodes(db, READY_NODES)
    ctx = multiprocessing.get_context('fork')
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(db_url, i, queue)) for i in range(CLAIMERS)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [node_id for ids in results.values() for node_id in ids]
    assert len(claimed) == len(set(claimed)), 'a node was handed out twice'
    with db.session() as s:
        nodes = s.nodes()
    assert sorted(claimed) == sorted(n.id for n in nodes), 'a node was not handed out'
    assert all(n.state == 'used' for n in nodes)
    # The database agrees with what each process says it got.
    owner = {node_id: 'claimer-%d' % i for i, ids in results.items() for node_id in ids}
    assert all(n.claimed_by == owner[n.id] for n in nodes)
    # More than one process actually won something: the race was real.
    assert sum(1 for ids in results.values() if ids) > 1


def test_busy_sqlite_gives_a_clear_error(sqlite_url):
    db = vmdatabase.Database(sqlite_url, lock_timeout=1, retries=2).upgrade()
    make_ready_nodes(db, 1)
    blocker = sqlite3.connect(db.url.path, isolation_level=None)
    blocker.execute('BEGIN IMMEDIATE')
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseBusy) as e:
            db.claim_node('precise', 'job')
        assert time.monotonic() - started < 10
    finally:
        blocker.execute('ROLLBACK')
        blocker.close()
    assert 'is busy' in str(e.value) and 'gave up after 2 attempts' in str(e.value)
    assert db.claim_node('precise', 'job')[0] is not None


@pytest.mark.mysql
def test_busy_mysql_gives_a_clear_error(mysql_url):
    db = vmdatabase.Database(mysql_url, lock_timeout=1, retries=2).upgrade()
    make_ready_nodes(db, 1)
    blocker = mysql_connect(mysql_server_url(), db.url.database)
    blocker.autocommit = False
    cur = blocker.cursor()
    cur.execute("SELECT id FROM nodes FOR UPDATE")
    cur.fetchall()
    try:
        with pytest.raises(DatabaseBusy) as e:
            db.claim_node('precise', 'job')
    finally:
        blocker.rollback()
        blocker.close()
    assert 'is busy' in str(e.value) and 'gave up after 2 attempts' in str(e.value)
    assert db.claim_node('precise', 'job')[0] is not None


def test_url_parsing():
    u = vmdatabase.parse_url('mysql://devstack@db.example.org:3307/devstack_gate')
    assert (u.user, u.host, u.port, u.database) == ('devstack', 'db.example.org', 3307, 'devstack_gate')
    assert str(u) == 'mysql://devstack@db.example.org:3307/devstack_gate'
    u = vmdatabase.parse_url('sqlite:///~/x.db')
    assert u.path == os.path.expanduser('~/x.db')
    assert vmdatabase.parse_url('sqlite:////abs/x.db').path == '/abs/x.db'
    u = vmdatabase.parse_url('mysql://root@localhost/db?unix_socket=/tmp/s&option-file=/etc/my.cnf')
    assert (u.unix_socket, u.option_file) == ('/tmp/s', '/etc/my.cnf')


@pytest.mark.parametrize('url,message', [
    ('postgres://x@h/db', "unknown scheme 'postgres'; valid choices are sqlite, mysql"),
    ('mysql://root@h:3306/', 'missing the database name'),
    ('mysql://root@h/db?ssl=1', 'unknown option(s) ssl'),
    ('nonsense', 'expected sqlite:///PATH or mysql://USER@HOST:PORT/DATABASE'),
])
def test_bad_urls(url, message):
    with pytest.raises(DatabaseError) as e:
        vmdatabase.parse_url(url)
    assert message in str(e.value)


def test_password_in_url_is_refused_without_echoing_it():
    with pytest.raises(DatabaseError) as e:
        vmdatabase.parse_url('mysql://devstack:s3cr3t-pw@db/devstack_gate')
    assert 's3cr3t-pw' not in str(e.value)
    assert '$DEVSTACK_GATE_DB_PASSWORD' in str(e.value)


@pytest.mark.mysql
def test_password_from_environment_or_option_file_never_printed(mysql_url, tmp_path):
    server = mysql_server_url()
    admin = mysql_connect(server)
    cur = admin.cursor()
    user, password = 'dgpw_%d' % os.getpid(), 'Pw-%d-secret' % os.getpid()
    try:
        cur.execute("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'" % (user, password))
    except Exception as e:  # a server run with --skip-grant-tables has no users
        pytest.skip('server cannot create users: %s' % e)
    try:
        database = vmdatabase.parse_url(mysql_url).database
        cur.execute("GRANT ALL ON `%s`.* TO '%s'@'%%'" % (database, user))
        url = mysql_url.replace('root@', user + '@')
        db = vmdatabase.Database(url, environ={vmdatabase.PASSWORD_ENV: password}).upgrade()
        assert db.version() == vmdatabase.schema_version()
        option_file = tmp_path / 'my.cnf'
        option_file.write_text('[client]\npassword=%s\n' % password)
        db = vmdatabase.Database(url, environ={vmdatabase.OPTION_FILE_ENV: str(option_file)}).upgrade()
        assert db.version() == vmdatabase.schema_version()
        wrong = 'Wrong-%s' % password
        with pytest.raises(DatabaseError) as e:
            vmdatabase.Database(url, environ={vmdatabase.PASSWORD_ENV: wrong}).upgrade()
        assert 'cannot connect to mysql://%s@' % user in str(e.value)
        assert password not in str(e.value) and wrong not in str(e.value)
    finally:
        cur.execute("DROP USER '%s'@'%%'" % user)
        admin.close()


def test_leak_sightings_count_runs_in_a_row(db_url):
    db = vmdatabase.Database(db_url).upgrade()
    seen = db.transact(lambda s: s.record_sightings('rax', 'server', {'a': 'dg-a', 'b': 'dg-b'},
                                                    now=1.0))
    assert sorted((l.external_id, l.sightings) for l in seen) == [('a', 1), ('b', 1)]
    seen = db.transact(lambda s: s.record_sightings('rax', 'server', {'a': 'dg-a'}, now=2.0))
    assert [(l.external_id, l.sightings, l.first_seen, l.last_seen) for l in seen] == [
        ('a', 2, 1.0, 2.0)]
    # b was missed once: seen again, it starts over.
    seen = db.transact(lambda s: s.record_sightings('rax', 'server', {'a': 'dg-a', 'b': 'dg-b'},
                                                    now=3.0))
    assert sorted((l.external_id, l.sightings) for l in seen) == [('a', 3), ('b', 1)]
    # Other providers and kinds are separate.
    assert db.transact(lambda s: s.leaks('hp')) == []
    assert db.transact(lambda s: s.record_sightings('rax', 'image', {}, now=4.0)) == []
    assert len(db.transact(lambda s: s.leaks('rax', 'server'))) == 2


def test_version_1_database_upgrades_to_current(db_url, monkeypatch):
    monkeypatch.setattr(vmdatabase, 'MIGRATIONS', vmdatabase.MIGRATIONS[:1])
    db = vmdatabase.Database(db_url).upgrade()
    assert db.version() == 1
    node = db.transact(lambda s: s.create_node('rax', 'precise', state='ready', name='old'))
    monkeypatch.undo()
    db = vmdatabase.Database(db_url).upgrade()
    assert db.version() == vmdatabase.schema_version() >= 2
    assert db.transact(lambda s: s.get_node(node.id)).name == 'old'
    assert db.transact(lambda s: s.record_sightings('rax', 'server', {'x': 'dg-x'}))[0].sightings == 1


def test_transition_happens_only_from_the_state_read_and_is_logged_once_committed(
        db_url, caplog):
    db = vmdatabase.Database(db_url).upgrade()
    node = db.transact(lambda s: s.create_node('rax', 'precise', name='n1', now=time.time() - 312))
    caplog.set_level('INFO', logger='state')
    assert db.transact(lambda s: s.transition(node, 'ready', ip='1.2.3.4'))
    # A second writer that read it building loses: the row is not overwritten.
    assert not db.transact(lambda s: s.transition(node, 'delete', fail_reason='build-timeout'))
    row = db.transact(lambda s: s.get_node(node.id))
    assert (row.state, row.ip, row.fail_reason) == ('ready', '1.2.3.4', None)
    # A transition rolled back with its transaction is not logged.
    with pytest.raises(RuntimeError):
        with db.session() as s:
            assert s.transition(row, 'used')
            raise RuntimeError('boom')
    assert db.transact(lambda s: s.transition(row, 'delete', fail_reason='image-not-current'))
    lines = [r.getMessage() for r in caplog.records if r.name == 'state']
    assert len(lines) == 2, lines
    assert re.fullmatch(r'rax precise n1: building -> ready after 31[23] s', lines[0]), lines
    assert re.fullmatch(r'rax precise n1: ready -> delete after \d+ s \(image-not-current\)',
                        lines[1]), lines


def test_opening_an_up_to_date_database_takes_no_lock(sqlite_url):
    """Every fetch opens the database: with the schema current that is a plain read."""
    db = vmdatabase.Database(sqlite_url, lock_timeout=1, retries=1).upgrade()
    make_ready_nodes(db, 1)
    blocker = sqlite3.connect(db.url.path, isolation_level=None)
    blocker.execute('BEGIN IMMEDIATE')
    try:
        started = time.monotonic()
        reopened = vmdatabase.Database(sqlite_url, lock_timeout=1, retries=1).upgrade()
        assert time.monotonic() - started < 0.5
    finally:
        blocker.execute('ROLLBACK')
        blocker.close()
    assert reopened.claim_node('precise', 'job')[0] is not None


def test_upgrading_a_new_file_another_process_is_writing_waits_for_it(tmp_path):
    """Two stages starting together on a new SQLite database: the second waits, not fails."""
    import threading
    path = tmp_path / 'new.db'
    blocker = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    blocker.execute('BEGIN IMMEDIATE')
    blocker.execute('CREATE TABLE other_writer (x INTEGER)')
    release = threading.Timer(0.5, lambda: blocker.execute('COMMIT'))
    release.start()
    try:
        db = vmdatabase.Database('sqlite:///%s' % path, lock_timeout=1, retries=6).upgrade()
        assert db.version() == vmdatabase.schema_version()
    finally:
        release.join()
        blocker.close()


def test_image_pauses_for_one_provider_or_all(db_url, monkeypatch):
    # A version 3 database (label switches, no pauses) gains the table in place.
    monkeypatch.setattr(vmdatabase, 'MIGRATIONS', vmdatabase.MIGRATIONS[:3])
    db = vmdatabase.Database(db_url).upgrade()
    db.transact(lambda s: s.disable_label('quantal', 'red', set_by='ops'))
    monkeypatch.undo()
    db = vmdatabase.Database(db_url).upgrade()
    assert db.version() == vmdatabase.schema_version() >= 4
    assert list(db.transact(lambda s: s.label_switches())) == ['quantal']
    pause = db.transact(lambda s: s.pause_image('precise', reason='bad', set_by='ops', now=5.0))
    assert (pause.label, pause.provider, pause.reason, pause.set_by, pause.since) == (
        'precise', None, 'bad', 'ops', 5.0)
    db.transact(lambda s: s.pause_image('precise', 'hp', now=6.0))
    # Pausing again replaces that pause (same label and provider), not the others.
    db.transact(lambda s: s.pause_image('precise', reason='worse', now=7.0))
    db.transact(lambda s: s.pause_image('quantal', 'rax', now=8.0))
    pauses = db.transact(lambda s: s.image_pauses())
    assert [(p.label, p.provider, p.reason) for p in pauses] == [
        ('precise', 'hp', None), ('precise', None, 'worse'), ('quantal', 'rax', None)]
    assert [p.provider for p in db.transact(lambda s: s.image_pauses('quantal'))] == ['rax']
    # One provider's pause is lifted alone; without a provider, every pause of the label.
    assert db.transact(lambda s: s.unpause_image('precise', 'rax')) == 0
    assert db.transact(lambda s: s.unpause_image('precise', 'hp')) == 1
    db.transact(lambda s: s.pause_image('precise', 'hp'))
    assert db.transact(lambda s: s.unpause_image('precise')) == 2
    assert [p.label for p in db.transact(lambda s: s.image_pauses())] == ['quantal']


def test_index_migration_upgrades_a_version_5_database_and_the_stats_queries_use_it(
        db_url, monkeypatch):
    # A database at schema 5 (before the index migration), with a result and a launch.
    monkeypatch.setattr(vmdatabase, 'MIGRATIONS', [m for m in vmdatabase.MIGRATIONS if m[0] <= 5])
    db = vmdatabase.Database(db_url).upgrade()
    assert db.version() == 5
    with db.session() as s:
        # As the code of schema 5 wrote it (today's Result has columns schema 5 lacks).
        s._execute('INSERT INTO results (provider, label, result, start_time, end_time) '
                   'VALUES (?, ?, ?, ?, ?)', ('rax', 'precise', 'success', 100.0, 160.0))
        s.record_launch('rax', 'precise', 1, 'ready', None, 42.0, now=100.0)
    monkeypatch.undo()
    db = vmdatabase.Database(db_url).upgrade()
    assert db.version() == vmdatabase.schema_version() >= 6
    wanted = {'results_start', 'results_cell', 'launches_cell'}
    with db.session() as s:
        if db.url.backend == 'sqlite':
            names = {r[0] for r in s._execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            plan = ' '.join(r[-1] for r in s._execute(
                'EXPLAIN QUERY PLAN SELECT end_time - start_time FROM results WHERE provider = ? '
                'AND label = ? AND start_time >= ? AND start_time <= ?', ['rax', 'precise', 0, 1]))
            assert 'results_cell' in plan
        else:
            names = {r[0] for r in s._execute(
                'SELECT index_name FROM information_schema.statistics WHERE table_schema = '
                'DATABASE()').fetchall()}
        assert wanted <= names
        # The data is kept, and the aggregate queries stats reads answer from it.
        assert s.result_counts(0, 200) == {('rax', 'precise', 'success'): (1, 1)}
        assert s.result_durations('rax', 'precise', ['success'], 0, 200, 0, 2) == [60.0]
        assert s.launch_counts(0, 200) == {('rax', 'precise', 'ready', None): (1, 1)}
        assert s.launch_seconds('rax', 'precise', ['ready'], 0, 200, 0, 1) == [42.0]


def test_lease_migration_upgrades_a_version_6_database_and_the_lease_is_compare_and_set(
        db_url, monkeypatch):
    monkeypatch.setattr(vmdatabase, 'MIGRATIONS', [m for m in vmdatabase.MIGRATIONS if m[0] <= 6])
    db = vmdatabase.Database(db_url).upgrade()
    assert db.version() == 6
    db.transact(lambda s: s.create_node('rax', 'precise'))
    monkeypatch.undo()
    db = vmdatabase.Database(db_url).upgrade()
    assert db.version() == vmdatabase.schema_version() == 9
    assert len(db.transact(lambda s: s.nodes())) == 1          # data kept
    take = lambda token, ttl=30: db.transact(lambda s: s.acquire_lease(  # noqa: E731
        'rax', 'launch', token, 'host-a', 11, 'launch', ttl))
    taken, before, row, now = take('a')
    assert taken and before.token is None and row.token == 'a'
    assert (row.host, row.pid, row.stage, row.renewals) == ('host-a', 11, 'launch', 0)
    assert row.acquired <= now < row.expires <= now + 30.5
    assert not take('b')[0]                                     # held: not taken
    assert db.transact(lambda s: s.renew_lease('rax', 'launch', 'a', 30))
    assert not db.transact(lambda s: s.renew_lease('rax', 'launch', 'b', 30))
    assert not db.transact(lambda s: s.release_lease('rax', 'launch', 'b'))
    assert db.transact(lambda s: s.release_lease('rax', 'launch', 'a'))
    assert db.transact(lambda s: s.leases())[0].token is None
    # Free: taken at once; expired (a ttl in the past): taken over, and not renewable.
    assert take('c', ttl=-1)[0]
    assert not db.transact(lambda s: s.renew_lease('rax', 'launch', 'c', 30))
    assert take('d')[0]
    assert [(r.provider, r.scope, r.token) for r in db.transact(lambda s: s.leases('rax'))] == [
        ('rax', 'launch', 'd')]


def test_filters_match_exactly_whatever_the_collation(db_url):
    """MariaDB's default collation would match 'RAX' or 'rax ' to 'rax'; a filter never does."""
    db = vmdatabase.Database(db_url).upgrade()
    db.transact(lambda s: s.create_node('rax', 'precise', state='ready', name='n1'))
    db.transact(lambda s: s.create_image('rax', 'precise', state='ready'))
    for provider, label, name in (('RAX', None, None), ('rax ', None, None),
                                  (None, 'Precise', None), (None, None, 'N1'),
                                  (None, None, 'n1 ')):
        assert db.transact(lambda s: s.nodes(provider=provider, label=label, name=name)) == []
    assert db.transact(lambda s: s.images(provider='Rax')) == []
    assert [n.name for n in db.transact(lambda s: s.nodes(provider=['rax', 'x'], name='n1'))] \
        == ['n1']

"""Hostile input and a hostile database: SQL metacharacters, a database that is down or
read-only, and secrets that must never reach a console or a log.

1. Every value a user gives (operator arguments and reasons, $USER, fetch's Jenkins and
   Gerrit/Zuul variables, list filters) is data: it is stored and read back exactly, or
   refused with one clean line; the tables stay intact and no filter matches everything.
2. A database that refuses writes (SQLite read-only, a MariaDB user with only SELECT) or
   that is down: launch, reap, fetch, update-image and hold exit 1 with one line naming
   the database (never its password), no traceback, and no cloud resource made.
3. No clouds.yaml password, database password, keystone token or private key line appears
   in any output, on success and on every error path.

Everything is real: the scripts' main() in this process (the real scripts as
subprocesses where another user must run them), SQLite and MariaDB, local clouds.
"""

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid

import pytest
import yaml

import vmdatabase
from devstackgate import ssh
from devstackgate.cmd import fetch as fetch_cmd
from devstackgate.cmd import launch as launch_cmd
from devstackgate.cmd import operator as operator_cmd
from devstackgate.cmd import reap as reap_cmd
from devstackgate.cmd import update_image as update_image_cmd
from localcloud.testing import local_clouds
from tests.conftest import mysql_connect, mysql_server_url
from tests.pool import BASE_IMAGE, ROOT, Pool, cloud_config, make_base_dir, provider

HOSTILE = [
    "'; DROP TABLE nodes; --",
    '" OR 1=1 --',
    '\\',
    '%',
    '_',
    '?',
    "\\'",
    '%s %(x)s ?? \\%',
    "a' OR 'a'='a",
    'ünïcødé ✓ 日本語 🚀 ß',
]
TABLES = sorted(set(vmdatabase._TABLES.values()))
OPS_PROVIDERS = [
    {'name': 'rax', 'cloud': 'rax', 'giftable': True, 'images': [
        {'name': 'precise', 'base-image': BASE_IMAGE},
        {'name': 'quantal', 'base-image': BASE_IMAGE}]},
    {'name': 'hp', 'cloud': 'hp', 'images': [{'name': 'precise', 'base-image': BASE_IMAGE}]},
]


# -- helpers --------------------------------------------------------------------------------

def row_counts(db):
    """{table: rows}: every table is still there (a dropped one fails here)."""
    def tx(s):
        return {t: s._execute('SELECT COUNT(*) FROM %s' % t).fetchone()[0] for t in TABLES}
    return db.transact(tx)


@contextlib.contextmanager
def environment(**env):
    """os.environ with these variables set (None: unset), restored afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def call(capsys, main, *argv, **env):
    """main(argv) in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with environment(**env):
        code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err, prog):
    """The only line on stderr, which is prog's (no traceback, nothing else)."""
    assert 'Traceback' not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prog + ': '), err
    return lines[0]


def usage_error(err, prog):
    """argparse's refusal: its usage and one error line, no traceback."""
    assert 'Traceback' not in err, err
    lines = err.splitlines()
    assert lines[0].startswith('usage: %s' % prog), err
    assert lines[-1].startswith('%s ' % prog) and ': error: ' in lines[-1], err
    return lines[-1]


def sql_clean(line):
    """No driver error leaked through (a value that became SQL would say so)."""
    for word in ('SQL syntax', 'syntax error', 'OperationalError', 'ProgrammingError',
                 'unrecognized token', 'near "', 'Incorrect string value', '1064'):
        assert word not in line, line


class Ops:
    """A configuration over a database, for devstack-gate.py's main() in this process."""

    def __init__(self, tmp_path, db_url):
        self.path = str(tmp_path / 'devstack-gate.yaml')
        with open(self.path, 'w') as f:
            yaml.safe_dump({'database': db_url, 'hold-hours': 6, 'providers': OPS_PROVIDERS}, f)
        self.db = vmdatabase.Database(db_url).upgrade()

    def run(self, capsys, *argv, user='jeblair'):
        return call(capsys, operator_cmd.main, *argv, '--config', self.path, USER=user,
                    OS_CLIENT_CONFIG_FILE=None)

    def node(self, name, provider='rax', label='precise', state='ready'):
        return self.db.transact(lambda s: s.create_node(
            provider, label, state=state, name=name, ip='127.0.0.9', username='jenkins',
            host_key='ecdsa-sha2-nistp256 AAAA'))

    def get(self, node):
        return self.db.transact(lambda s: s.get_node(node.id))


# -- 1. SQL metacharacters are data ---------------------------------------------------------

SIMILAR = ["x' OR '1'='1", '1 OR 1=1', '%%', '__', '%_%', '*']  # none is a node's name
NODE_COMMANDS = (['hold', '{}', '--reason', 'x'], ['release', '{}'], ['delete', '{}'],
                 ['give', '{}', '--key', 'ssh-ed25519 AAAA'])


def refusals(value):
    """Commands where the value is a label or provider the configuration does not have."""
    return [['label-disable', value, '--reason', 'x'], ['label-enable', value],
            ['image-pause', value, '--reason', 'x'], ['image-unpause', value],
            ['image-pause', 'precise', '--provider', value], ['image-demote', value, 'precise'],
            ['image-delete', 'rax', value], ['list', '--provider', value],
            ['list', '--label', value], ['image-list', '--provider', value],
            ['image-list', '--label', value]]


def test_operator_values_with_sql_metacharacters_round_trip(tmp_path, db_url, capsys):
    """Each hostile value as a node name, a hold/disable/pause reason and $USER is stored
    and shown exactly; a name only similar to it (another case, a trailing space: MariaDB's
    collation calls them equal) or a predicate is no node; as a label or a provider it is
    one clean line; the other rows never move and every table keeps its rows."""
    ops = Ops(tmp_path, db_url)
    decoy = ops.node('dg-precise-rax-decoy')
    expected = row_counts(ops.db)
    turn = 0
    for value in HOSTILE:
        held = ops.node(value)
        doomed = ops.node('del ' + value, provider='hp')
        expected['nodes'] += 2

        # hold by that name, with that reason, by a $USER of that value: stored exactly.
        code, out, err = ops.run(capsys, 'hold', value, '--reason', value, '--json', user=value)
        assert code == 0, err
        data = json.loads(out)['node']
        assert (data['id'], data['name'], data['hold_reason'], data['held_by']) == (
            held.id, value, value, value)
        got = ops.get(held)
        assert (got.state, got.hold_reason, got.held_by) == ('hold', value, value)
        assert ops.get(decoy).state == 'ready' and ops.get(doomed).state == 'ready'
        code, out, err = ops.run(capsys, 'list', '--json', '--state', 'hold')
        assert code == 0, err
        assert [(n['name'], n['hold_reason'], n['held_by']) for n in json.loads(out)] == [
            (value, value, value)]

        # A name that is only similar to it, or a predicate, is no node.
        similar = [value + ' ', value.upper() if value.upper() != value else value + 'x',
                   SIMILAR[turn % len(SIMILAR)]]
        for ref in similar:
            command = [a.format(ref) if a == '{}' else a
                       for a in NODE_COMMANDS[turn % len(NODE_COMMANDS)]]
            turn += 1
            code, out, err = ops.run(capsys, *command)
            assert code == 1, (command, err)
            assert one_error_line(err, 'devstack-gate') == (
                'devstack-gate: node %r: no node with this id or name in database %s'
                % (ref, ops.db)), command
        # give: a key that is this value is refused without echoing it.
        code, out, err = ops.run(capsys, 'give', value, '--key', value)
        assert code == 2, err
        line = one_error_line(err, 'devstack-gate')
        assert line.startswith('devstack-gate: --key: the text given is not one public key '
                               'line (TYPE BASE64 [COMMENT], as in ~/.ssh/id_ed25519.pub): '), line
        assert value not in line.split('.pub): ', 1)[1]
        assert ops.get(held).state == 'hold'

        # release and delete by these names: only that node moves.
        code, out, err = ops.run(capsys, 'release', value, '--json')
        assert code == 0, err
        assert ops.get(held).state == 'delete' and ops.get(decoy).state == 'ready'
        code, out, err = ops.run(capsys, 'delete', 'del ' + value, '--json')
        assert code == 0, err
        assert json.loads(out)['node']['name'] == 'del ' + value
        assert ops.get(doomed).state == 'delete' and ops.get(decoy).state == 'ready'

        # label-disable / image-pause with this reason and user: stored exactly.
        code, out, err = ops.run(capsys, 'label-disable', 'precise', '--reason', value,
                                 '--json', user=value)
        assert code == 0, err
        (switch,) = ops.db.transact(lambda s: list(s.label_switches().values()))
        assert (switch.label, switch.reason, switch.set_by) == ('precise', value, value)
        assert [(d['reason'], d['set_by']) for d in json.loads(out)['disabled']] == [
            (value, value)]
        code, out, err = ops.run(capsys, 'image-pause', 'quantal', '--provider', 'rax',
                                 '--reason', value, '--json', user=value)
        assert code == 0, err
        (pause,) = ops.db.transact(lambda s: s.image_pauses())
        assert (pause.label, pause.provider, pause.reason, pause.set_by) == (
            'quantal', 'rax', value, value)
        code, out, err = ops.run(capsys, 'image-list', '--json')
        assert code == 0, err
        assert [p['reason'] for p in json.loads(out)['paused']] == [value]
        assert row_counts(ops.db) == dict(expected, label_switches=1, image_pauses=1)

        # As a label or a provider: not in the configuration, one clean line, no rows.
        commands = refusals(value)
        for i in range(3):
            command = commands[(turn + i) % len(commands)]
            code, out, err = ops.run(capsys, *command)
            assert code == 2 and out == '', (command, err)
            line = one_error_line(err, 'devstack-gate')
            assert repr(value) in line, line
            sql_clean(line)
        # --state and stats --days are a choice and a number: argparse refuses them.
        command = (['list', '--state', value], ['stats', '--days', value])[turn % 2]
        code, out, err = ops.run(capsys, *command)
        assert code == 2, (command, err)
        assert repr(value) in usage_error(err, 'devstack-gate')

        # The switches come off again by the real label.
        assert ops.run(capsys, 'label-enable', 'precise')[0] == 0
        assert ops.run(capsys, 'image-unpause', 'quantal', '--provider', 'rax')[0] == 0
        assert row_counts(ops.db) == expected
    assert turn >= 2 * len(NODE_COMMANDS) * len(SIMILAR) // 2
    assert sorted((n.name, n.state) for n in ops.db.transact(lambda s: s.nodes())) == sorted(
        [('dg-precise-rax-decoy', 'ready')] + [(v, 'delete') for v in HOSTILE]
        + [('del ' + v, 'delete') for v in HOSTILE])


FETCH_CONFIG = '''\
database: %s
fetch-poll: 0.05
providers:
  - name: rax
    cloud: not-needed-by-fetch
    images:
      - {name: precise, base-image: Ubuntu}
  - name: hp
    cloud: not-needed-by-fetch
    images:
      - {name: precise, base-image: Ubuntu}
'''
CHANGE_VARS = ('ZUUL_CHANGE', 'ZUUL_PATCHSET', 'ZUUL_REF', 'GERRIT_CHANGE_NUMBER',
               'GERRIT_PATCHSET_NUMBER', 'GERRIT_REFSPEC')


def test_fetch_records_hostile_job_and_change_values_exactly(tmp_path, db_url, capsys):
    """JOB_NAME, BUILD_NUMBER and every ZUUL_*/GERRIT_* variable fetch records, with SQL
    metacharacters, on the full path and on the fast (cached) one; and hostile --provider
    or LABEL values are one clean line."""
    db = vmdatabase.Database(db_url).upgrade()
    config = tmp_path / 'devstack-gate.yaml'
    config.write_text(FETCH_CONFIG % db_url)
    cache = str(tmp_path / 'cache')
    cases = []
    for i, value in enumerate(HOSTILE):
        kind = i % 3
        env = dict.fromkeys(CHANGE_VARS)
        if kind == 0:
            env.update(ZUUL_CHANGE=value, ZUUL_PATCHSET=value, GERRIT_CHANGE_NUMBER='1')
            change = '%s,%s' % (value, value)
        elif kind == 1:
            env.update(GERRIT_CHANGE_NUMBER=value, GERRIT_PATCHSET_NUMBER=value)
            change = '%s,%s' % (value, value)
        else:
            env.update(ZUUL_REF=value if i % 2 else None, GERRIT_REFSPEC=value)
            change = value
        env.update(JOB_NAME=value, BUILD_NUMBER=value)
        cases.append((value, env, change))
    for i in range(len(cases)):
        db.transact(lambda s: s.create_node('rax' if i % 2 else 'hp', 'precise', state='ready',
                                            name='n%d' % i, ip='127.0.0.9', username='jenkins',
                                            host_key='k', now=float(i + 1)))
    db.transact(lambda s: s.create_node('rax', 'precise', state='hold', name='held'))
    before = row_counts(db)

    # Refused values first: nothing is claimed.
    for argv in (['--provider', HOSTILE[0], 'precise'], ['--provider', HOSTILE[1], 'precise'],
                 [HOSTILE[0]], [HOSTILE[-1]], ['--provider', '%', 'precise']):
        code, out, err = call(capsys, fetch_cmd.main, '--config', str(config), *argv,
                              DEVSTACK_GATE_CACHE_DIR=cache, JOB_NAME=HOSTILE[0])
        assert code == 2, (argv, err)
        line = one_error_line(err, 'devstack-vm-fetch')
        sql_clean(line)
        assert out == ''
    assert row_counts(db) == before

    for value, env, change in cases:
        code, out, err = call(capsys, fetch_cmd.main, '--config', str(config), 'precise',
                              DEVSTACK_GATE_CACHE_DIR=cache, STATSD_HOST=None, **env)
        assert code == 0, err
        assert 'Traceback' not in err
        lines = dict(line.split('=', 1) for line in out.splitlines())
        result = db.transact(lambda s: s.get_result(int(lines['NODE_RESULT_ID'])))
        assert (result.job_name, result.build_number, result.change_ref, result.result) == (
            value, value, change, 'running'), value
        node = db.transact(lambda s: s.get_node(int(lines['NODE_ID'])))
        assert (node.state, node.claimed_by) == ('used', '%s #%s' % (value, value))
        assert result.node_id == node.id
    assert os.listdir(cache), 'the later fetches took the fast path: its cache was written'
    after = row_counts(db)
    assert after == dict(before, results=before['results'] + len(cases))
    # Every ready node went to exactly one job; the held one to none.
    states = sorted(n.state for n in db.transact(lambda s: s.nodes()))
    assert states == ['hold'] + ['used'] * len(cases)
    code, out, err = call(capsys, fetch_cmd.main, '--config', str(config), 'precise',
                          DEVSTACK_GATE_CACHE_DIR=cache, JOB_NAME="' OR state = 'hold' --")
    assert code == 1 and out == ''
    assert "no ready node of label 'precise'" in one_error_line(err, 'devstack-vm-fetch')
    assert row_counts(db) == after


# -- shared by 2 and 3: one local cloud, a pool key, a directory another user can read ----------

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def world():
    """A directory every user can enter (tmp_path is private to root when tests run as root)."""
    path = tempfile.mkdtemp(prefix='dg-hostile-db-')
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='module')
def cloud(world):
    base = make_base_dir(__import__('pathlib').Path(world))
    with local_clouds({'clouds': [cloud_config('rax', base)]}, tmp_dir=world) as clouds:
        yield clouds


@pytest.fixture(scope='module')
def pool_key(world):
    path = os.path.join(world, 'keys', 'id_rsa')
    ssh.ensure_private_key(path)
    os.chmod(os.path.dirname(path), 0o755)
    return path


def key_markers(path):
    """The private key's base64 body lines (any one of them on a console is a leak)."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('-----')]


def make_pool(tmp_path, cloud, db_url, pool_key, **settings):
    # Few, quick retries: an outage or a refused password is an error within a second.
    pool = Pool(tmp_path, cloud, db_url, [provider('rax', images=[
        {'name': 'precise', 'base-image': BASE_IMAGE, 'min-ram': 512, 'min-ready': 1}],
        **{'max-servers': 50, 'api-retries': 1, 'api-timeout': 2, 'api-backoff': 0.05})],
        **dict({'ssh-private-key': pool_key}, **settings))
    return pool


def cloud_snapshot(cloud):
    handle = cloud['rax']
    return (sorted(s['id'] for s in handle.servers()), sorted(i['id'] for i in handle.images()))


def run_scripts(capsys, pool, node_name, config=None, **env):
    """launch, reap, fetch, update-image (a real build, not a dry run) and hold, each in this
    process: {script: (code, stdout, stderr)}."""
    config = config or pool.config_path
    env = dict(pool.env(), **env)
    env.pop('DEVSTACK_GATE_CONFIG')
    common = ['--config', config]
    return {
        'devstack-vm-launch': call(capsys, launch_cmd.main, 'rax', *common, **env),
        'devstack-vm-reap': call(capsys, reap_cmd.main, 'rax', *common, **env),
        'devstack-vm-fetch': call(capsys, fetch_cmd.main, 'precise', *common, **env),
        'devstack-vm-update-image': call(capsys, update_image_cmd.main, 'rax', 'precise',
                                         '--devstack-dir', os.path.join(ROOT, 'demo'),
                                         *common, **env),
        'devstack-gate': call(capsys, operator_cmd.main, 'hold', node_name, '--reason', 'x',
                              *common, **env),
    }


def assert_database_failure(results, database, secrets=()):
    for prog, (code, out, err) in results.items():
        assert code == 1, (prog, err)
        # A server that does not answer is waited for (db-reconnect-wait), saying so.
        waiting = re.compile(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING state: database %s '
                             r'does not answer \(.*\); trying again for up to [0-9.]+ s$'
                             % re.escape(str(database)))
        line = one_error_line('\n'.join(line for line in err.splitlines()
                                         if not waiting.match(line)), prog)
        assert 'Traceback' not in err
        assert str(database) in line, (prog, line)
        assert out == '', (prog, out)
        for secret in secrets:
            assert secret not in err, (prog, err)


@contextlib.contextmanager
def mysql_user(mysql_url, password, grants):
    """A MariaDB user of this test's database with these grants, dropped afterwards."""
    admin = mysql_connect(mysql_server_url())
    cur = admin.cursor()
    user = 'dgh_%s' % uuid.uuid4().hex[:8]
    try:
        cur.execute("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'" % (user, password))
    except Exception as e:  # a server run with --skip-grant-tables has no users
        admin.close()
        pytest.skip('the MariaDB server cannot create users: %s' % e)
    try:
        database = vmdatabase.parse_url(mysql_url).database
        cur.execute("GRANT %s ON `%s`.* TO '%s'@'%%'" % (grants, database, user))
        yield mysql_url.replace('root@', user + '@', 1)
    finally:
        cur.execute("DROP USER '%s'@'%%'" % user)
        admin.close()


def seeded(pool):
    """A current image (launch would boot) and a ready node (fetch and hold would take it)."""
    pool.seed_base_images('rax', 'precise')
    return pool.db.transact(lambda s: s.create_node(
        'rax', 'precise', state='ready', name='dg-ready-1', ip='127.0.0.9', username='jenkins',
        host_key='k'))


# -- 2. a database that refuses writes, or is down ------------------------------------------

@pytest.mark.mysql
def test_a_select_only_mariadb_user_fails_every_writer_cleanly(tmp_path, mysql_url, cloud,
                                                               pool_key, capsys):
    password = 'Ro-Pw-%s' % uuid.uuid4().hex
    pool = make_pool(tmp_path, cloud, mysql_url, pool_key)
    node = seeded(pool)
    before_rows, before_cloud = row_counts(pool.db), cloud_snapshot(cloud)
    with mysql_user(mysql_url, password, 'SELECT') as url:
        pool.data['database'] = url
        pool.write()
        results = run_scripts(capsys, pool, node.name, DEVSTACK_GATE_DB_PASSWORD=password)
        assert_database_failure(results, vmdatabase.parse_url(url), secrets=[password])
    # Nothing half-written, nothing booted or snapshotted that the database cannot name.
    assert row_counts(pool.db) == before_rows
    assert pool.db.transact(lambda s: s.get_node(node.id)).state == 'ready'
    assert cloud_snapshot(cloud) == before_cloud


def test_a_database_that_is_down_fails_every_stage_cleanly(tmp_path, cloud, pool_key, capsys):
    password = 'Down-Pw-%s' % uuid.uuid4().hex
    url = 'mysql://dg@127.0.0.1:%d/devstack_gate' % free_port()
    pool = make_pool(tmp_path, cloud, url, pool_key, **{'db-reconnect-wait': 0.5,
                                                        'db-lock-timeout': 2})
    before_cloud = cloud_snapshot(cloud)
    started = time.monotonic()
    results = run_scripts(capsys, pool, 'dg-ready-1', DEVSTACK_GATE_DB_PASSWORD=password)
    assert_database_failure(results, vmdatabase.parse_url(url), secrets=[password])
    for prog, (code, out, err) in results.items():
        assert 'cannot connect to %s' % vmdatabase.parse_url(url) in err, (prog, err)
    assert time.monotonic() - started < 20
    assert cloud_snapshot(cloud) == before_cloud


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24


def without_dac_override():
    """preexec_fn: as root, drop the capabilities that let root write through any mode;
    the exec'd script then meets the file modes as their owner does."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), 'prctl(PR_CAPBSET_DROP, %d)' % cap)


@pytest.mark.parametrize('what', ['file-and-directory'])
def test_a_read_only_sqlite_database_fails_every_writer_cleanly(tmp_path, cloud, pool_key, what):
    """The database file (and its directory) read-only (chmod).  Root writes through any
    mode, so as root the real scripts run as subprocesses without CAP_DAC_OVERRIDE (the
    mode then holds for them as for any owner)."""
    as_root = os.geteuid() == 0
    preexec = without_dac_override if as_root else None
    if as_root:
        probe = tmp_path / 'probe'
        probe.write_text('x')
        probe.chmod(0o444)
        try:
            proc = subprocess.run(['sh', '-c', 'echo y > %s' % probe], preexec_fn=preexec,
                                  capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip('running as root without a way to drop CAP_DAC_OVERRIDE, so chmod '
                        'cannot make a file read-only: %s' % e)
        if proc.returncode == 0:
            pytest.skip('running as root: chmod 444 did not stop a write even without '
                        'CAP_DAC_OVERRIDE')
    dbdir = tmp_path / 'db'
    dbdir.mkdir()
    url = 'sqlite:///%s' % (dbdir / 'devstack-gate.db')
    pool = make_pool(tmp_path, cloud, url, pool_key)
    node = seeded(pool)
    pool.db.close()
    (dbdir / 'devstack-gate.db').chmod(0o444)
    if what == 'file-and-directory':
        dbdir.chmod(0o555)
    before_rows = row_counts(vmdatabase.Database(url, read_only=True))
    before_cloud = cloud_snapshot(cloud)
    commands = {
        'devstack-vm-launch': ['devstack-vm-launch.py', 'rax'],
        'devstack-vm-reap': ['devstack-vm-reap.py', 'rax'],
        'devstack-vm-fetch': ['devstack-vm-fetch.py', 'precise'],
        'devstack-vm-update-image': ['devstack-vm-update-image.py', 'rax', 'precise',
                                     '--devstack-dir', os.path.join(ROOT, 'demo')],
        'devstack-gate': ['devstack-gate.py', 'hold', node.name, '--reason', 'x'],
    }
    env = pool.env(DEVSTACK_GATE_CACHE_DIR=str(tmp_path / 'cache'))
    procs = {prog: subprocess.Popen(pool.command(*argv), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env,
                                    cwd=str(tmp_path), preexec_fn=preexec)
             for prog, argv in commands.items()}
    results = {}
    for prog, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        results[prog] = (proc.returncode, out, err)
    try:
        assert_database_failure(results, vmdatabase.parse_url(url))
        for prog, (code, out, err) in results.items():
            assert 'readonly database' in err or 'unable to open database' in err, (prog, err)
    finally:
        dbdir.chmod(0o755)
    assert row_counts(vmdatabase.Database(url, read_only=True)) == before_rows
    assert pool.db.transact(lambda s: s.get_node(node.id)).state == 'ready'
    assert cloud_snapshot(cloud) == before_cloud


# -- 3. no secret in any output -------------------------------------------------------------

def tokens(cloud):
    return set(cloud['rax']._backend.state.tokens)


@pytest.mark.mysql
def test_no_password_token_or_private_key_reaches_any_output(tmp_path, mysql_url, cloud,
                                                             pool_key, capsys):
    db_password = 'Db-Pw-%s' % uuid.uuid4().hex
    with open(cloud.clouds_yaml) as f:
        clouds = yaml.safe_load(f)
    cloud_password = clouds['clouds']['rax']['auth']['password']
    wrong = tmp_path / 'wrong-clouds.yaml'
    wrong_password = 'Wrong-Pw-%s' % uuid.uuid4().hex
    clouds['clouds']['rax']['auth']['password'] = wrong_password
    wrong.write_text(yaml.safe_dump(clouds))
    wrong.chmod(0o600)
    markers = [db_password, cloud_password, wrong_password] + key_markers(pool_key)
    seen_tokens = set()
    outputs = []

    def run(label, main, *argv, **env):
        seen_tokens.update(tokens(cloud))
        env = dict({'DEVSTACK_GATE_DB_PASSWORD': db_password,
                    'OS_CLIENT_CONFIG_FILE': env.pop('clouds', cloud.clouds_yaml),
                    'DEVSTACK_GATE_CACHE_DIR': str(tmp_path / 'cache')}, **env)
        code, out, err = call(capsys, main, *argv, '--config', pool.config_path, **env)
        seen_tokens.update(tokens(cloud))
        assert 'Traceback' not in err, (label, err)
        outputs.append((label, code, out + err))
        return code, out, err

    with mysql_user(mysql_url, db_password, 'ALL') as url:
        pool = make_pool(tmp_path, cloud, url, pool_key)
        vmdatabase.Database(url, environ={vmdatabase.PASSWORD_ENV: db_password}).upgrade()
        root_db = vmdatabase.Database(mysql_url)
        (base,) = [i for i in cloud['rax'].images() if i['name'] == BASE_IMAGE]
        root_db.transact(lambda s: s.create_image('rax', 'precise', state='ready',
                                                  name=BASE_IMAGE, external_id=base['id']))
        # Success, verbose: the libraries' debug lines (keystoneauth's requests) too.
        assert run('launch -v', launch_cmd.main, 'rax', '-v')[0] == 0
        code, out, err = run('fetch', fetch_cmd.main, 'precise', JOB_NAME='gate', BUILD_NUMBER='1')
        assert code == 0 and 'NODE_NAME=' in out, err
        assert run('list', operator_cmd.main, 'list', '-v')[0] == 0
        assert run('stats', operator_cmd.main, 'stats', '-v')[0] == 0
        assert run('reap -v', reap_cmd.main, 'rax', '-v')[0] == 0
        assert run('update-image --dry-run', update_image_cmd.main, 'rax', '--dry-run',
                   '-v')[0] == 0
        # Tokens revoked: keystoneauth authenticates again (its request logged with -v).
        cloud['rax'].revoke_tokens()
        assert run('launch after revoke', launch_cmd.main, 'rax', '-v')[0] == 0
        assert run('reap after revoke', reap_cmd.main, 'rax', '-v')[0] == 0
        # A wrong password: refused by keystone.
        for label, main, argv in (('launch', launch_cmd.main, ['rax', '-v']),
                                  ('reap', reap_cmd.main, ['rax']),
                                  ('update-image', update_image_cmd.main, ['rax', '--dry-run'])):
            code, out, err = run(label + ' wrong password', main, *argv, clouds=str(wrong))
            assert code == 1 and 'rax' in err.splitlines()[-1], err
        # The cloud down.
        cloud['rax'].set_faults(outage=True)
        try:
            for label, main, argv in (('launch', launch_cmd.main, ['rax', '-v']),
                                      ('reap', reap_cmd.main, ['rax']),
                                      ('update-image', update_image_cmd.main,
                                       ['rax', '--dry-run'])):
                code, out, err = run(label + ' outage', main, *argv)
                assert code == 1 and 'rax' in err.splitlines()[-1], err
        finally:
            cloud['rax'].set_faults(outage=False)
        # The database refusing the password, then down.
        code, out, err = run('list wrong db password', operator_cmd.main, 'list',
                             DEVSTACK_GATE_DB_PASSWORD=wrong_password)
        assert code == 1 and 'Access denied' in err, err
        pool.data.update(database='mysql://%s@127.0.0.1:%d/x' % (
            vmdatabase.parse_url(url).user, free_port()), **{'db-reconnect-wait': 0})
        pool.write()
        for label, main, argv in (('launch', launch_cmd.main, ['rax']),
                                  ('fetch', fetch_cmd.main, ['precise']),
                                  ('list', operator_cmd.main, ['list']),
                                  ('stats', operator_cmd.main, ['stats'])):
            code, out, err = run(label + ' database down', main, *argv)
            assert code == 1 and 'cannot connect to' in err, err
    assert len(seen_tokens) >= 2, 'the runs authenticated, and again after the revocation'
    # Whatever the runs wrote next to their configuration (the fetch cache, ...) too.
    files = []
    for dirpath, _, names in os.walk(tmp_path):
        for name in names:
            path = os.path.join(dirpath, name)
            if path != str(wrong) and stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, 'rb') as f:
                    files.append(('file ' + path, 0, f.read().decode('utf-8', 'replace')))
    assert len(outputs) >= 18
    for label, code, text in outputs + files:
        for secret in markers + sorted(seen_tokens):
            assert secret not in text, (label, secret[:8])

"""Fetch's fast path: the config cache, the light claim and output, and the fallbacks.

Real subprocesses, real config files and databases: a fetch whose cache entry
holds imports no YAML, no validation, no logging and not vmdatabase; anything
in doubt (a changed, corrupt, foreign or public entry, a bad file, a database
error) goes the full way and says exactly what it always said.
"""

import logging
import os
import shlex
import stat
import subprocess
import sys
import textwrap

import pytest

import vmdatabase
from devstackgate import config as configmod
from devstackgate import config_cache, fetch, log
from devstackgate.cmd import fetch as cmd_fetch
from devstackgate.errors import ConfigError
from tests.test_fetch import FETCH, ROOT, add_ready, write_config

HEAVY = ('yaml', 'dataclasses', 'logging', 'argparse', 'vmdatabase', 'devstackgate.config',
         're', 'json', 'mysql.connector', 'ssl', 'socket', 'signal', 'enum')

PROBE = textwrap.dedent('''
    import sys
    sys.path.insert(0, %r)
    from devstackgate.cmd import fetch
    rc = fetch.main(sys.argv[1:])
    print('LOADED=' + ','.join(m for m in %r if m in sys.modules), file=sys.stderr)
    sys.exit(rc)
    ''' % (ROOT, HEAVY))


def run(config, *args, cache=None, probe=False, env=None):
    environ = dict(os.environ, DEVSTACK_GATE_CACHE_DIR=cache or os.path.join(
        os.path.dirname(config), 'cache'), **(env or {}))
    for var in ('JOB_NAME', 'BUILD_NUMBER', 'ZUUL_CHANGE', 'GERRIT_CHANGE_NUMBER',
                'STATSD_HOST'):
        if var not in (env or {}):
            environ.pop(var, None)
    argv = ([sys.executable, '-c', PROBE] if probe else [sys.executable, FETCH])
    return subprocess.run(argv + ['--config', config] + list(args), capture_output=True,
                          text=True, env=environ, timeout=60, cwd=ROOT)


def loaded(proc):
    line = [x for x in proc.stderr.splitlines() if x.startswith('LOADED=')][-1]
    return [m for m in line[len('LOADED='):].split(',') if m]


def entries(config):
    directory = os.path.join(os.path.dirname(config), 'cache')
    return [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith('.cache')]


@pytest.fixture
def pool(tmp_path, db_url):
    db = vmdatabase.Database(db_url).upgrade()
    for i in range(6):
        add_ready(db, name='n%d' % i, provider='rax' if i % 2 else 'hp', now=1000.0 + i)
    return db, write_config(tmp_path, db_url)


def test_a_hit_imports_nothing_heavy_on_either_backend(pool):
    db, config = pool
    first = run(config, 'precise', probe=True)      # a miss: the full load writes the entry
    assert first.returncode == 0, first.stderr
    assert 'yaml' in loaded(first)
    second = run(config, 'precise', '--provider', 'rax', probe=True,
                 env={'JOB_NAME': 'gate-nova', 'BUILD_NUMBER': '7'})
    assert second.returncode == 0, second.stderr
    # On MySQL too: devstackgate.mysqlwire, not mysql.connector (nor its ssl and logging).
    assert loaded(second) == []
    lines = second.stdout.splitlines()
    assert 'NODE_PROVIDER=rax' in lines and 'NODE_SSH_PORT=2222' in lines
    node_id = int([x for x in lines if x.startswith('NODE_ID=')][0].split('=')[1])
    err = [x for x in second.stderr.splitlines() if not x.startswith('LOADED=')]
    assert len(err) == 1 and err[0].endswith(
        ' INFO fetch: fetched n1 (rax, label precise) at 127.0.0.9 for gate-nova #7')
    with db.session() as s:
        node = s.get_node(node_id)
        (result,) = s.results(node_id=node_id)
    assert node.state == 'used' and node.claimed_by == 'gate-nova #7'
    assert result.job_name == 'gate-nova' and result.result == 'running'
    assert 'NODE_RESULT_ID=%d' % result.id in lines


def test_the_cache_directory_and_entry_are_private(tmp_path, sqlite_url):
    config = write_config(tmp_path, sqlite_url)
    vmdatabase.Database(sqlite_url).upgrade()
    run(config, 'precise')
    directory = tmp_path / 'cache'
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o700
    (entry,) = entries(config)
    assert stat.S_IMODE(os.lstat(entry).st_mode) == 0o600
    # A directory someone made readable is not read from; the next full load narrows it.
    os.chmod(directory, 0o755)
    assert config_cache.load_view(config, {'DEVSTACK_GATE_CACHE_DIR': str(directory)}) is None
    proc = run(config, 'precise', probe=True)
    assert 'yaml' in loaded(proc)
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o700
    # An entry readable by others is not used either.
    os.chmod(entry, 0o644)
    assert 'yaml' in loaded(run(config, 'precise', probe=True))


@pytest.mark.parametrize('change', ['same-size-edit', 'touch', 'new-inode'])
def test_a_changed_file_is_validated_again(tmp_path, sqlite_url, change):
    db = vmdatabase.Database(sqlite_url).upgrade()
    for i in range(4):
        add_ready(db, name='n%d' % i, provider='rax', now=1000.0 + i)
    config = write_config(tmp_path, sqlite_url)
    assert run(config, 'precise').returncode == 0
    assert loaded(run(config, 'precise', probe=True)) == []
    text = open(config).read()
    st = os.stat(config)
    if change == 'same-size-edit':
        new = text.replace('ssh-port: 2222', 'ssh-port: 2223')
        assert len(new) == len(text)
        with open(config, 'w') as f:
            f.write(new)
        os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns))     # even the same mtime
    elif change == 'touch':
        os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    else:
        os.rename(config, config + '.old')
        with open(config, 'w') as f:
            f.write(text)
        os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = run(config, 'precise', probe=True)
    assert proc.returncode == 0, proc.stderr
    assert 'yaml' in loaded(proc)
    port = '2223' if change == 'same-size-edit' else '2222'
    assert 'NODE_SSH_PORT=%s' % port in proc.stdout.splitlines()
    again = run(config, 'precise', probe=True)          # recorded anew: a hit again
    assert loaded(again) == [] and 'NODE_SSH_PORT=%s' % port in again.stdout.splitlines()


@pytest.mark.parametrize('damage', ['garbage', 'flipped-byte', 'truncated', 'empty',
                                    'other-file', 'symlink'])
def test_a_corrupt_or_foreign_entry_is_ignored(tmp_path, sqlite_url, damage):
    db = vmdatabase.Database(sqlite_url).upgrade()
    for i in range(3):
        add_ready(db, name='n%d' % i, provider='rax', now=1000.0 + i)
    config = write_config(tmp_path, sqlite_url)
    assert run(config, 'precise').returncode == 0
    (entry,) = entries(config)
    data = open(entry, 'rb').read()
    if damage == 'garbage':
        new = os.urandom(len(data))
    elif damage == 'flipped-byte':
        new = data[:-20] + bytes([data[-20] ^ 1]) + data[-19:]
    elif damage == 'truncated':
        new = data[:len(data) // 2]
    elif damage == 'empty':
        new = b''
    elif damage == 'other-file':
        # A whole, valid entry, for another file: its bytes must not be taken for ours.
        other = tmp_path / 'other'
        other.mkdir()
        other_config = write_config(other, sqlite_url.replace('.db', '-other.db'))
        run(other_config, 'precise', cache=str(tmp_path / 'cache'))
        (other_entry,) = [e for e in entries(config) if e != entry]
        new = open(other_entry, 'rb').read()
    if damage == 'symlink':
        os.rename(entry, entry + '.real')
        os.symlink(entry + '.real', entry)
    else:
        with open(entry, 'wb') as f:
            f.write(new)
    assert config_cache.load_view(config, {'DEVSTACK_GATE_CACHE_DIR': str(tmp_path / 'cache')}) \
        is None
    proc = run(config, 'precise', probe=True)
    assert proc.returncode == 0, proc.stderr
    assert 'yaml' in loaded(proc)
    assert 'NODE_SSH_PORT=2222' in proc.stdout.splitlines()


def expected_config_lines(path):
    with pytest.raises(ConfigError) as e:
        configmod.load(path, check_clouds=False)
    return ['devstack-vm-fetch: %s' % line for line in e.value.lines()]


def test_bad_config_gives_the_same_lines_after_a_good_one_was_cached(tmp_path, sqlite_url):
    vmdatabase.Database(sqlite_url).upgrade()
    config = write_config(tmp_path, sqlite_url)
    assert run(config, 'precise').returncode == 1       # valid, no node: recorded
    assert entries(config)
    text = open(config).read()
    st = os.stat(config)
    bad = text.replace('fetch-poll: 0.05', 'fetch-poll: -5.0')
    assert len(bad) == len(text)
    with open(config, 'w') as f:
        f.write(bad)
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns))
    for args in (['precise'], ['precise', '--wait', '1'], ['quantal']):
        proc = run(config, *args)
        assert proc.returncode == 2
        assert proc.stdout == ''
        assert proc.stderr.splitlines() == expected_config_lines(config)
    with open(config, 'w') as f:
        f.write('providers: [\n')
    proc = run(config, 'precise')
    assert proc.returncode == 2 and proc.stderr.splitlines() == expected_config_lines(config)
    missing = str(tmp_path / 'nowhere.yaml')
    proc = run(missing, 'precise', cache=str(tmp_path / 'cache'))
    assert proc.returncode == 2 and proc.stderr.splitlines() == expected_config_lines(missing)


def test_hit_and_miss_say_the_same_on_every_outcome(tmp_path, sqlite_url):
    db = vmdatabase.Database(sqlite_url).upgrade()
    db.transact(lambda s: s.create_node('rax', 'precise', state='building'))
    config = write_config(tmp_path, sqlite_url)
    cases = [(['quantal'], 2), (['oneiric', '--provider', 'hp'], 2),
             (['precise', '--provider=rax', '--wait=0'], 1), (['precise', '--wait', '0.2'], 1),
             (['precise', '--bogus'], 2), (['precise', 'again'], 2), (['--help'], 0)]
    for args, code in cases:
        shutil_cache = tmp_path / 'cache'
        if shutil_cache.exists():
            for name in os.listdir(shutil_cache):
                os.unlink(shutil_cache / name)
        miss = run(config, *args)
        hit = run(config, *args)
        assert (miss.returncode, hit.returncode) == (code, code), (args, miss.stderr)
        assert miss.stdout == hit.stdout and miss.stderr == hit.stderr, args
    assert hit.stdout.startswith('usage: devstack-vm-fetch')


def test_database_errors_read_as_before_on_a_hit(tmp_path):
    url = 'sqlite:///%s' % (tmp_path / 'empty.db')     # no schema yet
    config = write_config(tmp_path, url)
    miss, hit = run(config, 'precise'), run(config, 'precise', probe=True)
    assert loaded(hit) and 'yaml' not in loaded(hit)    # the fast path handed it over
    expected = ("devstack-vm-fetch: database %s has no devstack-gate schema yet; the stages "
                "that write (devstack-vm-launch.py, devstack-vm-update-image.py, "
                "devstack-vm-reap.py) create it" % vmdatabase.parse_url(url))
    assert miss.returncode == hit.returncode == 1
    assert miss.stderr.strip() == expected
    assert [x for x in hit.stderr.splitlines() if not x.startswith('LOADED=')] == [expected]


def test_an_unknown_provider_of_a_node_reads_as_config_provider_says(tmp_path, sqlite_url):
    cfg = configmod.load(write_config(tmp_path, sqlite_url), check_clouds=False)
    view = config_cache.FetchConfig.of(cfg)
    assert view.labels() == cfg.labels()
    assert [(p.name, p.ssh_port) for p in view.providers] == [
        (p.name, p.ssh_port) for p in cfg.providers]
    for label in ('precise', 'oneiric', 'quantal'):
        assert [p.name for p in view.providers if p.image(label)] == [
            p.name for p in cfg.providers if p.image(label)]
    with pytest.raises(ConfigError) as a:
        cfg.provider('nope')
    with pytest.raises(ConfigError) as b:
        view.provider('nope')
    assert a.value.lines() == b.value.lines()
    db = vmdatabase.Database.from_config(view)      # everything from_config reads is there
    assert (db.lock_timeout, db.retries) == (cfg.db_lock_timeout, cfg.db_retries)


@pytest.mark.parametrize('value', ['', 'plain', 'a b', "it's", '$(x)', 'ünï', '-x', '@%+=:,./-_',
                                   'a\nb', '`', '"', '\\', 'x' * 3])
def test_quote_is_shlex_quote(value):
    assert fetch.quote(value) == shlex.quote(value)


def test_emitted_line_is_the_logging_line():
    record = logging.LogRecord('fetch', logging.INFO, __file__, 1, 'fetched %s', ('n1',), None)
    formatter = logging.Formatter(log.FORMAT, log.DATE_FORMAT)
    assert log.format_line('fetch', 'INFO', 'fetched n1', record.created) == \
        formatter.format(record)


@pytest.mark.parametrize('argv, parsed', [
    (['precise'], (None, 'precise', None, 0.0)),
    (['--config', 'c.yaml', 'precise', '--wait', '600'], ('c.yaml', 'precise', None, 600.0)),
    (['--provider=a', 'precise', '--provider', 'b', '--config=x', '--config', 'y'],
     ('y', 'precise', ['a', 'b'], 0.0)),
    (['-v', 'precise'], None), (['--verbose', 'precise'], None), (['--conf', 'c', 'precise'], None),
    (['precise', 'again'], None), ([], None), (['--wait', 'soon', 'precise'], None),
    (['--wait', '-1', 'precise'], None), (['--', 'precise'], None), (['-h'], None),
    (['precise', '--provider'], None),
])
def test_plain_options_or_argparse(argv, parsed):
    assert cmd_fetch.parse_plain(argv) == parsed

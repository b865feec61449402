"""devstack-vm-fetch as a gate job runs it: a real subprocess against a real database."""

import concurrent.futures
import os
import subprocess
import sys
import textwrap
import time


import vmdatabase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FETCH = os.path.join(ROOT, 'devstack-vm-fetch.py')
ODD_NAME = 'dg node "quoted" it\'s $(touch /tmp/pwned) `x` \\ end'


def write_config(tmp_path, db_url):
    path = tmp_path / 'devstack-gate.yaml'
    path.write_text(textwrap.dedent('''\
        database: %s
        fetch-poll: 0.05
        providers:
          - name: rax
            cloud: not-needed-by-fetch
            ssh-port: 2222
            images:
              - {name: precise, base-image: Ubuntu}
              - {name: oneiric, base-image: Ubuntu}
          - name: hp
            cloud: not-needed-by-fetch
            images:
              - {name: precise, base-image: Ubuntu}
        ''' % db_url))
    return str(path)


def add_ready(db, provider='rax', label='precise', name='n', now=None, **fields):
    return db.transact(lambda s: s.create_node(
        provider, label, state='ready', now=now, name=name, ip='127.0.0.9', username='jenkins',
        host_key='ecdsa-sha2-nistp256 AAAAE2VjZHNh', **fields))


def fetch(config, *args, env=None):
    environ = dict(os.environ, **(env or {}))
    # The config cache of these runs next to their config file, not in ~/.cache.
    environ.setdefault('DEVSTACK_GATE_CACHE_DIR', os.path.join(os.path.dirname(config), 'cache'))
    for var in ('JOB_NAME', 'BUILD_NUMBER', 'ZUUL_CHANGE', 'GERRIT_CHANGE_NUMBER'):
        if env is None or var not in env:
            environ.pop(var, None)
    return subprocess.run([sys.executable, FETCH, '--config', config] + list(args),
                          capture_output=True, text=True, env=environ, timeout=60)


def test_eval_round_trips_odd_values(tmp_path, sqlite_url):
    db = vmdatabase.Database(sqlite_url).upgrade()
    node = add_ready(db, name=ODD_NAME)
    config = write_config(tmp_path, sqlite_url)
    script = ('set -euo pipefail; eval "$("$PYTHON" "$FETCH" --config "$CONFIG" precise)"; '
              'printf "%s\\n" "$NODE_NAME" "$NODE_PROVIDER" "$NODE_IP" "$NODE_ID" "$NODE_IMAGE" '
              '"$NODE_USERNAME" "$NODE_HOST_KEY" "$NODE_SSH_PORT"')
    env = dict(os.environ, PYTHON=sys.executable, FETCH=FETCH, CONFIG=config,
               DEVSTACK_GATE_CACHE_DIR=str(tmp_path / 'cache'),
               JOB_NAME='gate-nova', BUILD_NUMBER='42', GERRIT_CHANGE_NUMBER='1234',
               GERRIT_PATCHSET_NUMBER='3')
    proc = subprocess.run(['bash', '-c', script], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [ODD_NAME, 'rax', '127.0.0.9', str(node.id), 'precise',
                                        'jenkins', 'ecdsa-sha2-nistp256 AAAAE2VjZHNh', '2222']
    assert not os.path.exists('/tmp/pwned')
    assert 'fetched %s (rax, label precise) at 127.0.0.9 for gate-nova #42' % ODD_NAME in proc.stderr
    with db.session() as s:
        claimed = s.get_node(node.id)
        (result,) = s.results(node_id=node.id)
    assert claimed.state == 'used' and claimed.claimed_by == 'gate-nova #42'
    assert (result.job_name, result.build_number, result.change_ref, result.result) == (
        'gate-nova', '42', '1234,3', 'running')


def test_provider_restriction_and_oldest_first(tmp_path, sqlite_url):
    db = vmdatabase.Database(sqlite_url).upgrade()
    add_ready(db, provider='hp', name='hp-old', now=1.0)
    add_ready(db, provider='rax', name='rax-new', now=2.0)
    config = write_config(tmp_path, sqlite_url)
    proc = fetch(config, 'precise', '--provider', 'rax')
    assert proc.returncode == 0 and "NODE_NAME=rax-new" in proc.stdout.splitlines()
    proc = fetch(config, 'precise')
    assert proc.returncode == 0 and "NODE_NAME=hp-old" in proc.stdout.splitlines()


def test_unknown_label_lists_the_known_ones(tmp_path, sqlite_url):
    config = write_config(tmp_path, sqlite_url)
    proc = fetch(config, 'quantal')
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("devstack-vm-fetch: unknown label 'quantal'; "
                                   "known labels: oneiric, precise")
    proc = fetch(config, 'oneiric', '--provider', 'hp')
    assert proc.returncode == 2
    assert "provider(s) hp do not offer label 'oneiric'; providers offering it: rax" in proc.stderr


def test_no_ready_node_waits_then_names_the_counts(tmp_path, sqlite_url):
    db = vmdatabase.Database(sqlite_url).upgrade()
    db.transact(lambda s: [s.create_node('rax', 'precise', state='building'),
                           s.create_node('rax', 'precise', state='building'),
                           s.create_node('hp', 'precise', state='hold')])
    config = write_config(tmp_path, sqlite_url)
    started = time.monotonic()
    proc = fetch(config, 'precise', '--wait', '0.5')
    assert time.monotonic() - started >= 0.5
    assert proc.returncode == 1 and proc.stdout == ''
    assert proc.stderr.strip() == ("devstack-vm-fetch: no ready node of label 'precise' after "
                                   "waiting 0.5 s (hp: hold 1; rax: building 2)")


def test_waiting_fetch_gets_a_node_that_becomes_ready(tmp_path, sqlite_url):
    db = vmdatabase.Database(sqlite_url).upgrade()
    config = write_config(tmp_path, sqlite_url)
    proc = subprocess.Popen([sys.executable, FETCH, '--config', config, 'precise', '--wait', '30'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    add_ready(db, name='late')
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert 'NODE_NAME=late' in out.splitlines()


def test_fetch_imports_no_cloud_client(tmp_path, sqlite_url):
    db = vmdatabase.Database(sqlite_url).upgrade()
    add_ready(db)
    config = write_config(tmp_path, sqlite_url)
    code = textwrap.dedent('''
        import sys
        from devstackgate.cmd import fetch
        rc = fetch.main(['--config', %r, 'precise'])
        loaded = sorted({m.split('.')[0] for m in sys.modules} &
                        {'novaclient', 'glanceclient', 'keystoneauth1', 'paramiko', 'requests'})
        print('LOADED=' + ','.join(loaded), file=sys.stderr)
        sys.exit(rc)
        ''' % config)
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'LOADED=\n' in proc.stderr


def test_concurrent_fetches_never_share_a_node(tmp_path, db_url):
    db = vmdatabase.Database(db_url).upgrade()
    for i in range(12):
        add_ready(db, name='n%d' % i, provider='rax' if i % 2 else 'hp')
    config = write_config(tmp_path, db_url)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        procs = list(pool.map(lambda i: fetch(config, 'precise', env={
            'JOB_NAME': 'gate', 'BUILD_NUMBER': str(i)}), range(16)))
    got = [line.split('=', 1)[1] for p in procs for line in p.stdout.splitlines()
           if line.startswith('NODE_NAME=')]
    assert sorted(got) == sorted('n%d' % i for i in range(12))
    assert sum(p.returncode == 0 for p in procs) == 12
    assert sum(p.returncode == 1 for p in procs) == 4

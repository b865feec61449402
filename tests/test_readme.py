"""Every command README.rst gives (its ``$`` lines) is run, here or by the demo's test and CI.

The operator's commands run literally (python3 is this interpreter) against a
local cloud named like the README's provider, a real MariaDB and the real
jenkins-jobs; only ``jenkins-jobs update`` needs a Jenkins server, which no
test machine has.
"""

import os
import re
import shlex
import subprocess
import sys
import urllib.parse
import uuid

import pytest

from tests.conftest import mysql_connect, mysql_server_url
from tests.pool import ROOT, BASE_IMAGE, Pool, cloud_config, make_base_dir, provider

README = os.path.join(ROOT, 'README.rst')
NEEDS_JENKINS = ['jenkins-jobs update jobs/']
RUN_ELSEWHERE = {'./dev.sh demo': 'tests/test_demo.py', './dev.sh test': '.ci/run',
                 './dev.sh bench': 'tests/test_bench.py',
                 './dev.sh soak --seed 1': 'tests/test_soak.py'}
POOL_COMMANDS = [
    'python3 devstack-vm-update-image.py rax',
    'python3 devstack-vm-launch.py rax',
    'python3 devstack-gate.py image-list --provider rax',
    'python3 devstack-gate.py image-demote rax precise',
    "python3 devstack-gate.py image-pause precise --reason 'bug 1180189: the new image breaks "
    "nova'",
    'python3 devstack-vm-reap.py rax --dry-run',
    'python3 devstack-vm-reap.py rax',
    'python3 devstack-gate.py list --state hold',
    "python3 devstack-gate.py label-disable precise --reason 'known red: bug 1338000'",
    'python3 devstack-gate.py label-enable precise',
    'python3 devstack-gate.py stats --days 7',
    'python3 devstack-gate.py status-page /tmp/devstack-gate-status.html',
]
# The bare-metal host scripts' dry runs: they print the commands and run none.
DRY_RUNS = [
    'node-setup/baremetal-setup.sh --vg main --snapshot-size 40G --dry-run',
    'node-setup/baremetal-reset.sh --vg main --snapshot-size 40G --dry-run',
]
OTHER_COMMANDS = [
    'mysql -u root < etc/devstack-gate-db.sql',
    'python3 devstack-vm-jobs.py --config etc/devstack-gate.example.yaml --output '
    'jobs/projects.yaml',
    'jenkins-jobs test jobs/ -o /tmp/jobs',
]


def readme_commands():
    with open(README) as f:
        return [m.group(1).strip() for m in re.finditer(r'^\s+\$ (.+)$', f.read(), re.M)]


def test_every_readme_command_is_accounted_for():
    commands = readme_commands()
    assert len(commands) == len(set(commands))
    assert sorted(commands) == sorted(
        list(RUN_ELSEWHERE) + NEEDS_JENKINS + POOL_COMMANDS + DRY_RUNS + OTHER_COMMANDS)
    assert commands[:2] == ['./dev.sh demo', './dev.sh test'], 'the two commands come first'
    for command, where in RUN_ELSEWHERE.items():
        with open(os.path.join(ROOT, where)) as f:
            text = f.read()
        assert all(word in text for word in shlex.split(command)[1:]), (command, where)


@pytest.mark.parametrize('command', DRY_RUNS)
def test_the_bare_metal_dry_runs_print_their_commands(command):
    proc = subprocess.run(shlex.split(command), cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith('+ ') for line in lines), proc.stdout
    assert any(line.startswith('+ lvcreate -L 40G -s -n root') for line in lines), lines


def python_argv(command):
    argv = shlex.split(command)
    return [sys.executable if argv[0] == 'python3' else argv[0]] + argv[1:]


def test_the_operators_commands_on_a_local_cloud(tmp_path, clouds_for, sqlite_url):
    """Add a provider, build, fill, then a bad image day: demote and reap."""
    clouds = clouds_for(cloud_config('rax', make_base_dir(tmp_path)))
    (tmp_path / 'cache.sh').write_text('echo cached > cached.txt\n')
    images = [{'name': 'precise', 'base-image': BASE_IMAGE, 'min-ram': 512, 'min-ready': 1,
               'setup': ['cache.sh']}]
    pool = Pool(tmp_path, clouds, sqlite_url, [provider('rax', images=images)])
    for command in POOL_COMMANDS:
        # (a path under /tmp is made one under this test's own directory)
        argv = python_argv(command.replace(' /tmp/', ' %s/' % tmp_path))
        proc = subprocess.run(argv, cwd=ROOT, env=pool.env(), text=True,
                              capture_output=True, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr)
        if command == POOL_COMMANDS[0]:
            # A second build, so the demote has a previous image to go back to.
            proc = pool.run('devstack-vm-update-image.py', 'rax')
            assert proc.returncode == 0, proc.stderr
        if 'image-list' in command:
            assert 'current' in proc.stdout and 'previous' in proc.stdout
        if 'status-page' in command:
            assert (tmp_path / 'devstack-gate-status.html').read_text().startswith('<!DOCTYPE')
        if command.endswith('--dry-run'):
            assert 'would delete node' in proc.stdout and 'image-not-current' in proc.stdout
    images = pool.db.transact(lambda s: s.images(state='ready'))
    current = pool.db.transact(lambda s: s.current_image('rax', 'precise'))
    assert current is not None and current.id == min(i.id for i in images)
    assert all(n.state == 'delete' for n in pool.nodes() if n.image_id != current.id)


def test_the_jobs_commands(tmp_path):
    generate = python_argv(OTHER_COMMANDS[1].replace('jobs/projects.yaml',
                                                     str(tmp_path / 'projects.yaml')))
    proc = subprocess.run(generate, cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(ROOT, 'jobs', 'projects.yaml')) as f:
        assert (tmp_path / 'projects.yaml').read_text() == f.read()
    out = tmp_path / 'jobs'
    argv = shlex.split(OTHER_COMMANDS[2].replace('/tmp/jobs', str(out)))
    argv[0] = os.path.join(os.path.dirname(sys.executable), argv[0])
    proc = subprocess.run(argv, cwd=ROOT, text=True, capture_output=True, timeout=120,
                          env=dict(os.environ, HOME=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ['devstack-launch-vms', 'devstack-reap-vms',
                                       'devstack-update-vm-image',
                                       'gate-integration-tests-devstack-vm']


@pytest.mark.mysql
def test_the_mysql_set_up(tmp_path):
    """The README's SQL, through the real mysql client, then the stages' own use of it."""
    import vmdatabase
    server = urllib.parse.urlsplit(mysql_server_url())
    query = urllib.parse.parse_qs(server.query)
    if 'unix_socket' in query:
        where = ['--socket', query['unix_socket'][0]]
    else:
        where = ['--host', server.hostname or '127.0.0.1', '--port', str(server.port or 3306)]
    password = 'pw-%s' % uuid.uuid4().hex
    with open(os.path.join(ROOT, 'etc', 'devstack-gate-db.sql')) as f:
        sql = f.read().replace('change-me', password)
    argv = shlex.split(OTHER_COMMANDS[0].split('<')[0]) + where
    mysql = subprocess.run(['which', argv[0]], capture_output=True, text=True)
    if mysql.returncode != 0:
        if os.environ.get('CI') == 'true':
            pytest.fail('no mysql client: CI never skips the MySQL tests')
        pytest.skip('no mysql client')
    admin = mysql_connect(mysql_server_url())
    cur = admin.cursor()
    cur.execute("SELECT COUNT(*) FROM mysql.user WHERE user = 'devstack'")
    if cur.fetchone()[0]:
        pytest.skip("this server already has a 'devstack' user; not touching it")
    try:
        proc = subprocess.run(argv, input=sql, text=True, capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        url = 'mysql://devstack@%s/devstack_gate' % (
            'localhost' if 'unix_socket' in query else '%s:%s' % (
                server.hostname or '127.0.0.1', server.port or 3306))
        if 'unix_socket' in query:
            url += '?unix_socket=' + query['unix_socket'][0]
        db = vmdatabase.Database(url, environ={vmdatabase.PASSWORD_ENV: password}).upgrade()
        db.transact(lambda s: s.create_node('rax', 'precise', state='ready', name='n1'))
        node, _ = db.claim_node('precise', 'gate #1')
        assert node.name == 'n1'
    finally:
        cur.execute('DROP DATABASE IF EXISTS devstack_gate')
        cur.execute("DROP USER IF EXISTS 'devstack'@'%'")
        admin.close()

"""devstack-vm-gate.sh end to end: local git repositories as Gerrit, a local cloud, real SSH.

Each end-to-end test launches one ready node with devstack-vm-launch.py, runs
the gate script as Jenkins would (WORKSPACE, JOB_NAME, BUILD_NUMBER, GERRIT_*),
and checks the console, the logs copied back, the database and the cloud.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import paramiko
import pytest
import yaml

import vmdatabase
from devstackgate import cloud
from devstackgate import config as configmod
from devstackgate import gate
from localcloud.testing import local_clouds
from tests.gate_helpers import (ConfigOnly, GateRun, change_env, gate_pool, gerrit_with_changes,
                                local_cloud_config, write_config)
from tests.pool import ROOT, Pool, provider

SCRIPT = os.path.join(ROOT, 'devstack-vm-gate.sh')
JOB = 'gate-integration-tests-devstack-vm'
STAMP = r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d '


@pytest.fixture(scope='module')
def gerrit(tmp_path_factory):
    """The Gerrit side, shared: the runs only read it."""
    return gerrit_with_changes(tmp_path_factory.mktemp('gerrit'))


@pytest.fixture
def gate_for(tmp_path, gerrit):
    """gate_for(db_url, **gate settings) -> (pool, its one ready node of label precise)."""
    with contextlib.ExitStack() as stack:
        def make(db_url, **settings):
            clouds = stack.enter_context(local_clouds(local_cloud_config(tmp_path),
                                                      tmp_dir=str(tmp_path)))
            pool = gate_pool(tmp_path, clouds, db_url, gerrit.base, **settings)
            proc = pool.run('devstack-vm-launch.py', 'rax')
            assert proc.returncode == 0, proc.stderr
            (node,) = pool.nodes(state='ready')
            return pool, node
        yield make


def results(pool):
    return pool.db.transact(lambda s: s.results())


def server_of(pool, node):
    (server,) = [s for s in pool.clouds['rax'].servers() if s['id'] == node.external_id]
    return server


# -- end to end ----------------------------------------------------------------------

def test_passing_change_deletes_its_node(tmp_path, gate_for, gerrit, db_url):
    pool, node = gate_for(db_url)
    # Spaces in the workspace and temporary paths must survive ssh, rsync -e and known_hosts.
    (tmp_path / 'tmp dir').mkdir()
    run = GateRun(pool, tmp_path / 'jenkins ws', TMPDIR=str(tmp_path / 'tmp dir'),
                  **change_env(gerrit.changes['pass']))
    started = time.time()
    code, out = run.run()
    assert code == 0, out
    lines = out.splitlines()
    # The console as developers read it: the git commands and heads, then NODE_PROVIDER=.
    assert re.match(STAMP + r'devstack-vm-gate: %s #42: change 1001,1 \(refs/changes/01/1001/1\) '
                    r'of openstack/devstack on master; label precise' % JOB, lines[0]), lines[0]
    provider_at = lines.index('NODE_PROVIDER=rax')
    assert provider_at < 25, out
    head = '\n'.join(lines[:provider_at])
    assert 'openstack/devstack: git clone %s/openstack/devstack' % gerrit.base in head
    assert 'openstack/devstack: git fetch %s/openstack/devstack refs/changes/01/1001/1' % (
        gerrit.base) in head
    assert re.search(r'openstack/devstack: git merge FETCH_HEAD \([0-9a-f]{7,} Add the hello '
                     r'exercise\)', head), head
    assert re.search(r'openstack/devstack head: [0-9a-f]{7,} Merge ', head), head
    assert re.search(r'openstack/nova head: [0-9a-f]{7,} Initial nova', head), head
    for name, value in (('NODE_NAME', node.name), ('NODE_IP', node.ip), ('NODE_ID', node.id),
                        ('NODE_IMAGE', 'precise'), ('NODE_SSH_PORT', 2222)):
        assert '%s=%s' % (name, value) in lines[provider_at:provider_at + 10], out
    # Every line of ours is timestamped; the test ran the merged change on the node.
    assert all(re.match(STAMP, l) for l in lines if 'devstack-vm-gate:' in l)
    assert 'hello.sh: change 1001 is on the node' in out
    assert 'exercise.sh: all exercises passed' in out
    assert 'stack.sh: local.conf sets 4 passwords' in out
    # The node: deleted in the database (for the reaper to finish) and in the cloud.
    after = pool.db.transact(lambda s: s.get_node(node.id))
    assert after.state == 'delete'
    assert server_of(pool, node)['deleted']
    (result,) = results(pool)
    assert (result.result, result.node_id, result.job_name, result.build_number,
            result.change_ref) == ('success', node.id, JOB, '42', '1001,1')
    assert started <= result.start_time <= result.end_time <= time.time()
    # Logs: each step's console, and the node's logs.
    for step in ('workspace', 'fetch', 'copy-to-node', 'test', 'copy-logs', 'finish'):
        assert (run.workspace / 'logs' / ('%s.txt' % step)).is_file(), step
    assert 'exercise.sh: all exercises passed' in run.log('test.txt')
    assert 'NODE_PROVIDER=rax' in run.log('fetch.txt')
    assert run.log('node/stack.sh.log') == 'stack.sh: done\n'
    assert run.log('node/screen-n-api.txt') == 'n-api started\n'
    # The passwords went to local.conf (0600), never to the console or the logs.
    conf = run.workspace / 'workspace' / 'devstack' / 'local.conf'
    assert oct(conf.stat().st_mode & 0o777) == '0o600'
    passwords = re.findall(r'^\w+_(?:PASSWORD|TOKEN)=(\S+)$', conf.read_text(), re.M)
    assert len(passwords) == 5 and all(len(p) == 32 for p in passwords)
    everything = out + ''.join(p.read_text() for p in (run.workspace / 'logs').rglob('*.txt'))
    assert not any(p in everything for p in passwords)
    assert 'PRIVATE KEY' not in everything
    assert 'unexpected' not in everything and 'rsync:' not in everything
    assert os.listdir(tmp_path / 'tmp dir') == [], 'the known_hosts and ssh wrapper are removed'


def test_failing_change_holds_its_node_with_logs(tmp_path, gate_for, gerrit, sqlite_url):
    """Zuul's variables this time: the change is fetched from $ZUUL_URL."""
    pool, node = gate_for(sqlite_url)
    ref = gerrit.changes['fail']
    run = GateRun(pool, tmp_path / 'jenkins', build='7', ZUUL_PROJECT='openstack/devstack',
                  ZUUL_BRANCH='master', ZUUL_REF=ref, ZUUL_URL=gerrit.base,
                  ZUUL_CHANGE='1002', ZUUL_PATCHSET='1')
    code, out = run.run()
    assert code == 1, out
    assert 'volumes.sh: volume never attached' in out
    assert 'exercise.sh: exercises/volumes.sh FAILED' in run.log('test.txt')
    assert re.search(r'test command on node %s: failure \(exit 1\)' % node.name, out)
    held = pool.db.transact(lambda s: s.get_node(node.id))
    (result,) = results(pool)
    assert (result.result, result.change_ref) == ('failure', '1002,1')
    assert held.state == 'hold'
    assert held.held_by == '%s #7' % JOB
    assert held.hold_reason == 'failure: change 1002,1 (job %s, build 7)' % JOB
    assert held.hold_until == pytest.approx(result.end_time + 6 * 3600, abs=1)
    assert not server_of(pool, node)['deleted']
    # The node's logs came back even though the test failed.
    assert run.log('node/stack.sh.log') == 'stack.sh: done\n'
    assert out.rstrip().splitlines()[-1].endswith(
        '%s #7: failure (test failure) on node %s (rax), held for 6 h; logs in %s'
        % (JOB, node.name, run.workspace / 'logs'))


def test_timeout_holds_the_node_and_stops_the_test(tmp_path, gate_for, gerrit, sqlite_url):
    pool, node = gate_for(sqlite_url, **{'test-timeout': 2})
    # Gerrit's own URL for the change (a file:// URL here), the mirror for the rest.
    gerrit_url = 'file://' + gerrit.base
    run = GateRun(pool, tmp_path / 'jenkins', DEVSTACK_GATE_GERRIT_URL=gerrit_url,
                  **change_env(gerrit.changes['hang']))
    started = time.monotonic()
    code, out = run.run()
    assert code == 1, out
    assert 'openstack/devstack: git fetch %s/openstack/devstack refs/changes/03/1003/1' % (
        gerrit_url) in out
    assert time.monotonic() - started < 30, 'the 60 s sleep was not cut at test-timeout'
    assert 'hang.sh: sleeping' in run.log('test.txt')
    assert re.search(r'test command on node %s: timeout \(exit 124\)' % node.name, out), out
    held = pool.db.transact(lambda s: s.get_node(node.id))
    (result,) = results(pool)
    assert result.result == 'timeout' and result.end_time
    assert (held.state, held.hold_reason) == (
        'hold', 'timeout: change 1003,1 (job %s, build 42)' % JOB)
    assert run.log('node/stack.sh.log') == 'stack.sh: done\n'


def test_changed_host_key_aborts_before_copying(tmp_path, gate_for, gerrit, sqlite_url):
    pool, node = gate_for(sqlite_url)
    other = paramiko.ECDSAKey.generate()
    pool.db.transact(lambda s: s.update_node(
        node.id, host_key='%s %s' % (other.get_name(), other.get_base64())))
    run = GateRun(pool, tmp_path / 'jenkins', **change_env(gerrit.changes['pass']))
    code, out = run.run()
    assert code == 1, out
    assert ('error: node %s (rax) at %s:2222: SSH host key differs from the one recorded when the '
            'node was made ready; refusing to use it' % (node.name, node.ip)) in out
    # Nothing was copied to the node and nothing ran there.
    root = server_of(pool, node)['root']
    assert not os.path.exists(os.path.join(root, 'workspace'))
    assert 'stack.sh' not in out
    held = pool.db.transact(lambda s: s.get_node(node.id))
    # The node, not the change, failed: held briefly, and the run looks for another node.
    assert held.state == 'hold'
    assert held.hold_reason == ('infra: change 1001,1 (job %s, build 42); host key changed'
                                % JOB)
    assert held.hold_until == pytest.approx(held.state_time + 3600, abs=5)
    assert [(r.result, r.detail) for r in results(pool)] == [('infra', 'host key changed')]
    assert ('attempt 1 of 3: node %s (rax) abandoned (host key changed), held 60 min with '
            'reason infra' % node.name) in out
    assert 'preferring another provider than rax' in out
    assert out.rstrip().splitlines()[-1].endswith(
        '%s #42: infra failure: no node of label precise (attempt 2 of 3)' % JOB)


def test_unexpected_error_once_the_node_is_ours_holds_it(tmp_path, gate_for, gerrit,
                                                         sqlite_url):
    """Change 1005 makes local.conf a directory, so writing it fails under set -e."""
    pool, node = gate_for(sqlite_url)
    run = GateRun(pool, tmp_path / 'jenkins', **change_env(gerrit.changes['odd']))
    code, out = run.run()
    assert code == 1, out
    errors = [l for l in out.splitlines() if 'error: unexpected failure' in l]
    assert len(errors) == 1 and re.fullmatch(
        STAMP + r'devstack-vm-gate: error: unexpected failure \(exit 1\) in step copy-to-node '
        r'at line \d+ of devstack-vm-gate.sh: : > "\$conf"', errors[0]), out
    assert 'unexpected exit (status 1) on node %s; collecting logs and holding it' % (
        node.name) in run.log('finish.txt')
    held = pool.db.transact(lambda s: s.get_node(node.id))
    assert (held.state, held.hold_reason) == (
        'hold', 'failure: change 1005,1 (job %s, build 42); devstack-vm-gate.sh exited '
        'unexpectedly' % JOB)
    assert [r.result for r in results(pool)] == ['failure']
    assert 'rsync' not in out, 'no log copy error for a node that has no logs yet'


def test_sigterm_collects_logs_and_releases_the_node(tmp_path, gate_for, gerrit, db_url):
    """Jenkins aborts a job with SIGTERM: logs are still collected, the node is not left used."""
    pool, node = gate_for(db_url)
    run = GateRun(pool, tmp_path / 'jenkins', **change_env(gerrit.changes['hang']))
    proc = run.popen()
    test_log = run.workspace / 'logs' / 'test.txt'
    try:
        pool.wait_for(lambda: test_log.exists() and 'hang.sh: sleeping' in test_log.read_text(),
                      timeout=30, what='the test command to start sleeping')
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert 'received SIGTERM: aborting the run on node %s (rax)' % node.name in run.log(
        'aborted.txt')
    assert run.log('node/stack.sh.log') == 'stack.sh: done\n'
    assert 'hang.sh: sleeping' in run.log('test.txt')
    after = pool.db.transact(lambda s: s.get_node(node.id))
    assert after.state == 'delete'
    (result,) = results(pool)
    assert result.result == 'aborted' and result.end_time >= result.start_time
    pool.wait_for(lambda: server_of(pool, node)['deleted'], what='the server deleted')
    # The sleep on the node went with the connection (the node is real: its process is ours).
    pool.wait_for(lambda: not _processes_in(server_of(pool, node)['root']), timeout=10,
                  what='no command left running on the node')


def _processes_in(root):
    found = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                if os.readlink('/proc/%s/cwd' % pid).startswith(root):
                    found.append(pid)
            except OSError:
                pass
    return found


# -- before any node is fetched ---------------------------------------------------------

def test_conflicting_change_fails_before_any_node_is_fetched(tmp_path, gerrit, db_url):
    config = write_config(tmp_path, db_url, gerrit.base)
    db = vmdatabase.Database(db_url).upgrade()
    node = db.transact(lambda s: s.create_node('rax', 'precise', state='ready', name='n1'))
    pool = ConfigOnly(config)
    # First run: no change, a label with no ready node: the workspace is prepared, no node.
    code, out = GateRun(pool, tmp_path / 'jenkins').run('--label', 'oneiric')
    assert code == 1, out
    assert 'no change under test' in out.splitlines()[0]
    assert "no ready node of label 'oneiric'" in out
    assert out.rstrip().splitlines()[-2].endswith(
        'error: devstack-vm-fetch gave no node of label oneiric for %s #42 (exit 1)' % JOB)
    assert out.rstrip().splitlines()[-1].endswith(
        '%s #42: infra failure: no node of label oneiric (attempt 1 of 3)' % JOB)
    # Second run in the same workspace: the clones are updated, the change conflicts.
    run = GateRun(pool, tmp_path / 'jenkins', **change_env(gerrit.changes['conflict']))
    code, out = run.run()
    assert code == 1, out
    assert 'openstack/devstack: git fetch --prune origin' in out
    last = out.rstrip().splitlines()[-1]
    assert re.fullmatch(STAMP + 'devstack-vm-gate: error: merge conflict: change '
                        'refs/changes/04/1004/1 of openstack/devstack does not merge into '
                        'master; no node was fetched', last), last
    assert db.transact(lambda s: s.get_node(node.id)).state == 'ready'
    assert db.transact(lambda s: s.results()) == []
    assert not (run.workspace / 'logs' / 'fetch.txt').exists()
    # The merge was undone: the checkout is clean at master.
    status = subprocess.run(['git', 'status', '--porcelain'], capture_output=True, text=True,
                            cwd=str(run.workspace / 'workspace' / 'devstack'))
    assert status.stdout == ''


def test_unreachable_git_base_is_retried_then_fails(tmp_path, sqlite_url):
    config = write_config(tmp_path, sqlite_url, str(tmp_path / 'no-such-git'))
    code, out = GateRun(ConfigOnly(config), tmp_path / 'jenkins').run()
    assert code == 1, out
    assert 'openstack/devstack: git clone %s/openstack/devstack: failed (exit 128); attempt 2 ' \
           'of 2 in 2 s' % (tmp_path / 'no-such-git') in out
    assert out.rstrip().splitlines()[-1].endswith(
        'error: openstack/devstack: cannot clone %s/openstack/devstack; no node was fetched'
        % (tmp_path / 'no-such-git'))


@pytest.mark.parametrize('args,env,code,message', [
    (['--bogus'], {}, 2, 'devstack-vm-gate: unknown argument: --bogus (see --help)'),
    (['--label', 'natty'], {}, 2,
     "devstack-vm-gate-settings: label 'natty': no provider offers it; known labels: "
     "oneiric, precise"),
    ([], {'GERRIT_PROJECT': 'openstack/devstack'}, 2,
     'devstack-vm-gate: GERRIT_PROJECT is set but GERRIT_REFSPEC is empty (see --help)'),
    ([], {'GERRIT_PROJECT': 'openstack/swift', 'GERRIT_REFSPEC': 'refs/changes/05/1005/1'}, 1,
     'error: change project openstack/swift is not in gate.projects (openstack/devstack '
     'openstack/nova) of '),
])
def test_bad_input_is_one_clear_line(tmp_path, sqlite_url, args, env, code, message):
    config = write_config(tmp_path, sqlite_url, str(tmp_path / 'git'))
    got, out = GateRun(ConfigOnly(config), tmp_path / 'jenkins', **env).run(*args)
    assert got == code, out
    assert message in out.rstrip().splitlines()[-1], out


def test_bad_configuration_names_the_key(tmp_path, sqlite_url):
    config = write_config(tmp_path, sqlite_url, str(tmp_path / 'git'), **{'test-timeout': -1})
    code, out = GateRun(ConfigOnly(config), tmp_path / 'jenkins').run('--config', config)
    assert code == 2, out
    assert out.strip() == ('devstack-vm-gate-settings: %s: gate.test-timeout: expected a number '
                           '>= 1, got -1' % config)


def test_help():
    proc = subprocess.run([SCRIPT, '--help'], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0
    assert proc.stdout.startswith('usage: devstack-vm-gate.sh [--config PATH] [--label LABEL]... '
                                  '[--help]')
    assert 'DEVSTACK_GATE_TEMPEST=1' in proc.stdout


def test_shellcheck_is_clean():
    shellcheck = shutil.which('shellcheck')
    if shellcheck is None:
        pytest.skip('shellcheck is not installed (apt-get install shellcheck)')
    proc = subprocess.run([shellcheck, '--severity=style', SCRIPT], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


# -- the Python side ------------------------------------------------------------------

def test_settings_round_trip_through_bash_eval(tmp_path, sqlite_url):
    command = 'cd devstack && echo "it\'s $HOME" && ./stack.sh'
    config = write_config(tmp_path, sqlite_url, str(tmp_path / 'git') + '/',
                          **{'test-command': command, 'test-timeout': 2.5})
    script = ('set -euo pipefail; eval "$("$PY" -m devstackgate.cmd.gate_settings --config "$C")"; '
              'printf "%s\\n" "$GATE_TEST_COMMAND" "${#GATE_PROJECTS[@]}" "${GATE_PROJECTS[1]}" '
              '"$GATE_GIT_BASE" "$GATE_TEST_TIMEOUT" "$GATE_TEST_SAFETY_TIMEOUT" "${GATE_LABELS[*]}" '
              '"$GATE_HOLD_HOURS" "$GATE_SSH_KEY" "$GATE_CONFIG" "$GATE_TEMPEST"')
    env = dict(os.environ, PY=sys.executable, C=config, PYTHONPATH=ROOT)
    env.pop('DEVSTACK_GATE_TEMPEST', None)
    proc = subprocess.run(['bash', '-c', script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        command, '2', 'openstack/nova', str(tmp_path / 'git'), '2.5', '62.5', 'precise', '24',
        str(tmp_path / 'id_rsa'), config, '']
    env['DEVSTACK_GATE_TEMPEST'] = '1'
    proc = subprocess.run(['bash', '-c', script], capture_output=True, text=True, env=env)
    assert proc.stdout.splitlines()[0] == gate.TEMPEST_COMMAND
    assert proc.stdout.splitlines()[-1] == '1'


def test_settings_refuse_two_projects_in_one_directory(tmp_path, sqlite_url):
    path = write_config(tmp_path, sqlite_url, 'https://example.org',
                        projects=['openstack/oslo', 'stackforge/oslo'])
    config = configmod.load(path, check_clouds=False)
    with pytest.raises(gate.UsageError, match='gate.projects: openstack/oslo and stackforge/oslo '
                                              'would both be cloned to workspace/oslo'):
        gate.settings(config, environ={})


class BrokenCloud:
    def __init__(self, provider, environ=None):
        raise gate.GateError('provider rax: list servers: identity API unavailable')


class RecordingCloud(cloud.Adapter):
    """A driver that only records deletes (finish's logic, without a cloud)."""
    deleted = []

    def __init__(self, provider, environ=None):
        super().__init__(provider)

    def delete_server(self, server_id):
        self.deleted.append(server_id)
        return True


def claimed_node(db_url, environ):
    db = vmdatabase.Database(db_url).upgrade()
    db.transact(lambda s: s.create_node('rax', 'precise', state='ready', name='n1',
                                        external_id='srv-1'))
    from devstackgate import fetch
    claimed_by, result = fetch.job_identity(environ)
    return db, db.claim_node('precise', claimed_by, result=result)


@pytest.mark.parametrize('result,state', [
    ('success', 'delete'), ('aborted', 'delete'), ('failure', 'hold'), ('timeout', 'hold')])
def test_finish_records_the_result_then_deletes_or_holds(tmp_path, db_url, caplog, result,
                                                         state):
    environ = {'JOB_NAME': 'gate-x', 'BUILD_NUMBER': '9', 'GERRIT_CHANGE_NUMBER': '77',
               'GERRIT_PATCHSET_NUMBER': '3'}
    config = configmod.load(write_config(tmp_path, db_url, 'https://example.org'),
                            check_clouds=False)
    db, (node, row) = claimed_node(db_url, environ)
    RecordingCloud.deleted = []
    caplog.set_level('INFO')
    action = gate.finish(config, node.id, result, result_id=row.id, environ={}, db=db,
                         connect=RecordingCloud, now=row.start_time + 30)
    assert action == state
    after = db.transact(lambda s: s.get_node(node.id))
    done = db.transact(lambda s: s.get_result(row.id))
    assert (done.result, done.end_time) == (result, row.start_time + 30)
    assert after.state == state
    if state == 'delete':
        assert RecordingCloud.deleted == ['srv-1']
        assert ('node n1 (rax, id %d): result %s after 30 s; deleting it: server srv-1 deletion '
                'requested; the reaper removes the row once it is gone' % (node.id, result)
                in caplog.text)
        assert after.hold_until is None
    else:
        assert RecordingCloud.deleted == []
        assert after.hold_until == row.start_time + 30 + 24 * 3600
        assert after.held_by == 'gate-x #9'
        assert after.hold_reason == '%s: change 77,3 (job gate-x, build 9)' % result
        assert re.search(r'node n1 \(rax, id %d\): result %s after 30 s; held until '
                         r'\d{4}-\d\d-\d\d \d\d:\d\d UTC \(24 h\) for gate-x #9' % (
                             node.id, result), caplog.text)


def test_finish_leaves_a_failed_cloud_delete_to_the_reaper(tmp_path, sqlite_url, caplog):
    config = configmod.load(write_config(tmp_path, sqlite_url, 'https://example.org'),
                            check_clouds=False)
    db, (node, row) = claimed_node(sqlite_url, {})
    assert gate.finish(config, node.id, 'success', result_id=row.id, environ={}, db=db,
                       connect=BrokenCloud, now=row.start_time + 5) == 'delete'
    assert db.transact(lambda s: s.get_node(node.id)).state == 'delete'
    assert ('node n1 (rax, id %d): result success after 5 s; deleting it: deleting server '
            'srv-1 failed (error: provider rax: list servers: identity API unavailable); the '
            'reaper will finish the delete' % node.id) in caplog.text


def test_finish_command_exit_codes(tmp_path, sqlite_url):
    config = write_config(tmp_path, sqlite_url, 'https://example.org')
    db, (node, row) = claimed_node(sqlite_url, {})

    def finish(*args):
        return subprocess.run([sys.executable, '-m', 'devstackgate.cmd.finish', '--config', config]
                              + list(args), capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, OS_CLIENT_CONFIG_FILE=os.devnull))

    proc = finish('--node-id', '99', '--result', 'failure')
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith('devstack-vm-gate-finish: node 99: not in the database '
                                        '%s' % sqlite_url)
    proc = finish('--node-id', str(node.id), '--result', 'running')
    assert proc.returncode == 2 and 'invalid choice' in proc.stderr
    proc = finish('--node-id', str(node.id), '--result-id', str(row.id), '--result', 'failure',
                  '--detail', 'host key changed')
    assert proc.returncode == 0, proc.stderr
    held = db.transact(lambda s: s.get_node(node.id))
    assert held.hold_reason == ('failure: change none (job unknown, build unknown); '
                                'host key changed')
    # Finishing again leaves the held node as it is.
    proc = finish('--node-id', str(node.id), '--result-id', '', '--result', 'success')
    assert proc.returncode == 0, proc.stderr
    assert 'the node is hold, not used, so it is left as it is' in proc.stderr
    assert db.transact(lambda s: s.get_node(node.id)).state == 'hold'


# -- several cells ------------------------------------------------------------------------

def test_a_multi_cell_run_passes_only_if_every_enabled_cell_passes(tmp_path, gerrit, sqlite_url):
    """Two labels at once on their own nodes; one fails, so the run fails.  Switched off at
    run time, the failing cell is skipped (and not launched), named with its reason, and the
    run passes on the other."""
    images = [{'name': label, 'base-image': 'Ubuntu 12.04 LTS', 'min-ram': 512, 'min-ready': 1}
              for label in ('precise', 'oneiric')]
    with local_clouds(local_cloud_config(tmp_path), tmp_dir=str(tmp_path)) as clouds:
        pool = Pool(tmp_path, clouds, sqlite_url, [provider('rax', images=images)],
                    gate={'labels': ['precise', 'oneiric'], 'git-base': gerrit.base,
                          'projects': ['openstack/devstack'], 'fetch-wait': 5,
                          'test-timeout': 30, 'rsync-timeout': 30,
                          # The cell's label reaches the test command.
                          'test-command': 'cd devstack && ./exercise.sh && '
                                          'echo "cell is $DEVSTACK_GATE_LABEL" && '
                                          'test "$DEVSTACK_GATE_LABEL" != oneiric'})
        for label in ('precise', 'oneiric'):
            pool.seed_base_images('rax', label)
        assert pool.run('devstack-vm-launch.py', 'rax').returncode == 0
        run = GateRun(pool, tmp_path / 'jenkins', **change_env(gerrit.changes['pass']))
        code, out = run.run(timeout=180)
        assert code == 1, out
        lines = out.splitlines()
        assert any(re.fullmatch(STAMP + r'devstack-vm-gate: %s #42: testing 2 cell\(s\) at '
                                r'once, each on its own node: precise oneiric' % JOB, l)
                   for l in lines), out
        assert '[precise] cell is precise' in lines and '[oneiric] cell is oneiric' in lines
        assert any(l.startswith('[precise] NODE_PROVIDER=rax') for l in lines), out
        assert re.search(r'cell precise: passed; logs in \S+/logs/precise', out)
        assert re.search(r'cell oneiric: FAILED \(exit 1\); logs in \S+/logs/oneiric', out)
        assert lines[-1].endswith('%s #42: failure: 1 of 2 enabled cell(s) failed' % JOB), out
        assert 'hello.sh: change 1001 is on the node' in run.log('precise/test.txt')
        assert 'NODE_PROVIDER=rax' in run.log('oneiric/fetch.txt')
        by_label = {n.label: n for n in pool.nodes()}
        assert (by_label['precise'].state, by_label['oneiric'].state) == ('delete', 'hold')
        assert sorted(r.result for r in results(pool)) == ['failure', 'success']
        assert not (tmp_path / 'jenkins' / 'cells').exists()

        pool.db.transact(lambda s: s.disable_label('oneiric', 'known red: bug 1338000',
                                                   set_by='ops'))
        proc = pool.run('devstack-vm-launch.py', 'rax')
        assert proc.returncode == 0, proc.stderr
        assert re.search(r'rax oneiric: disabled by ops since [-0-9: ]+UTC: known red: bug '
                         r'1338000; not launching', proc.stderr), proc.stderr
        assert [n.label for n in pool.nodes(state='ready')] == ['precise']
        run = GateRun(pool, tmp_path / 'jenkins', build='43',
                      **change_env(gerrit.changes['pass']))
        code, out = run.run(timeout=180)
        assert code == 0, out
        skipped = [l for l in out.splitlines() if 'cell oneiric: skipped: disabled by ops' in l]
        assert len(skipped) == 2 and skipped[0].endswith('known red: bug 1338000'), out
        assert out.splitlines()[-1].endswith(
            '%s #43: success: all 1 enabled cell(s) passed; skipped: oneiric' % JOB), out
        assert [r.result for r in results(pool)][-1] == 'success'


def test_a_run_whose_every_cell_is_disabled_fails_before_fetching(tmp_path, gerrit, sqlite_url):
    config = write_config(tmp_path, sqlite_url, gerrit.base, labels=['precise'],
                          projects=['openstack/devstack'])
    data = yaml.safe_load(open(config))
    data['disabled-labels'] = {'precise': 'the mirror is down'}
    with open(config, 'w') as f:
        yaml.safe_dump(data, f)
    run = GateRun(ConfigOnly(config), tmp_path / 'jenkins')
    code, out = run.run()
    assert code == 1, out
    assert re.search(r'cell precise: skipped: disabled in \S+: the mirror is down', out), out
    assert out.splitlines()[-1].endswith('every cell of this run is disabled; nothing was '
                                         'tested'), out

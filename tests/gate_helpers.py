"""Helpers for tests of devstack-vm-gate.sh: local git repositories playing Gerrit, a gate pool.

:class:`Gerrit` keeps one bare repository per project under ``base`` (the
gate's git-base) and pushes proposed changes to ``refs/changes/NN/NNNN/P`` as
Gerrit does.  :func:`gerrit_with_changes` builds the fixture the gate tests
share: a fake devstack whose ``exercise.sh`` runs ``exercises/*.sh``, and one
change per outcome.
"""

import os
import subprocess
import sys

import yaml

from tests.pool import ROOT, Pool, cloud_config, make_base_dir, provider

GIT_ENV = {
    'GIT_AUTHOR_NAME': 'Test Author', 'GIT_AUTHOR_EMAIL': 'author@example.org',
    'GIT_COMMITTER_NAME': 'Test Author', 'GIT_COMMITTER_EMAIL': 'author@example.org',
    'GIT_CONFIG_GLOBAL': os.devnull, 'GIT_CONFIG_NOSYSTEM': '1',
}

STACK_SH = '''#!/bin/bash
# A stand-in for devstack's stack.sh: checks the gate's local.conf, writes logs.
set -e
mkdir -p ../logs
grep -q '^DEST=$HOME/workspace$' local.conf
echo "stack.sh: local.conf sets $(grep -c '_PASSWORD=' local.conf) passwords"
echo "n-api started" > ../logs/screen-n-api.txt
echo "stack.sh: done" | tee ../logs/stack.sh.log
'''

EXERCISE_SH = '''#!/bin/bash
echo "exercise.sh: running exercises"
for f in exercises/*.sh; do
    [ -e "$f" ] || continue
    bash "$f" || { echo "exercise.sh: $f FAILED"; exit 1; }
done
echo "exercise.sh: all exercises passed"
'''


def git(cwd, *args):
    proc = subprocess.run(['git'] + list(args), cwd=str(cwd), capture_output=True, text=True,
                          env=dict(os.environ, **GIT_ENV))
    if proc.returncode != 0:
        raise AssertionError('git %s failed: %s' % (' '.join(args), proc.stderr))
    return proc.stdout.strip()


class Gerrit:
    """Bare repositories under `base` and a scratch clone per project to make commits in."""

    def __init__(self, root):
        self.root = root
        self.base = str(root / 'git')
        self.work = root / 'work'
        self.changes = {}

    def _clone(self, project):
        return self.work / project

    def create_project(self, project, files, message='Initial commit'):
        bare = os.path.join(self.base, project)
        os.makedirs(bare)
        git(bare, 'init', '-q', '--bare', '-b', 'master')
        work = self._clone(project)
        work.mkdir(parents=True)
        git(work, 'init', '-q', '-b', 'master')
        git(work, 'remote', 'add', 'origin', bare)
        return self.commit(project, files, message, push='refs/heads/master')

    def commit(self, project, files, message, parent=None, push=None):
        """A commit on top of `parent` (default: the last commit made); returns its sha."""
        work = self._clone(project)
        if parent:
            git(work, 'checkout', '-q', '--detach', parent)
        for path, text in files.items():
            full = work / path
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_text(text)
            if path.endswith('.sh'):
                full.chmod(0o755)
            git(work, 'add', path)
        git(work, 'commit', '-q', '-m', message)
        sha = git(work, 'rev-parse', 'HEAD')
        if push:
            git(work, 'push', '-q', 'origin', 'HEAD:%s' % push)
        return sha

    def push_change(self, project, number, files, message, parent, patchset=1):
        """A change as Gerrit stores it: refs/changes/<last two digits>/<number>/<patchset>."""
        ref = 'refs/changes/%02d/%d/%d' % (number % 100, number, patchset)
        self.commit(project, files, message, parent=parent, push=ref)
        return ref


def gerrit_with_changes(root):
    """openstack/devstack and openstack/nova, and changes to devstack (gerrit.changes):

    1001 passes (adds an exercise; a real merge: it is based on an older commit),
    1002 fails an exercise, 1003 hangs, 1004 conflicts with master, 1005 makes local.conf
    a directory (so writing it fails: an unexpected error once the node is ours).
    """
    gerrit = Gerrit(root)
    first = gerrit.create_project('openstack/devstack',
                                  {'stack.sh': STACK_SH, 'exercise.sh': EXERCISE_SH},
                                  'Add stack.sh and exercise.sh')
    gerrit.create_project('openstack/nova', {'README': 'nova\n'}, 'Initial nova')
    tip = gerrit.commit('openstack/devstack', {
        'exercise.sh': EXERCISE_SH.replace('running exercises', 'running every exercise')},
        'Say every exercise', parent=first, push='refs/heads/master')
    gerrit.changes = {
        'pass': gerrit.push_change('openstack/devstack', 1001, {
            'exercises/hello.sh': 'echo "hello.sh: change 1001 is on the node"\n'},
            'Add the hello exercise', parent=first),
        'fail': gerrit.push_change('openstack/devstack', 1002, {
            'exercises/volumes.sh': 'echo "volumes.sh: volume never attached"\nexit 1\n'},
            'Add the volumes exercise', parent=tip),
        'hang': gerrit.push_change('openstack/devstack', 1003, {
            'exercises/hang.sh': 'echo "hang.sh: sleeping"\nsleep 60\n'},
            'Add an exercise that hangs', parent=tip),
        'odd': gerrit.push_change('openstack/devstack', 1005, {
            'local.conf/README': 'a directory where the gate writes a file\n'},
            'Make local.conf a directory', parent=tip),
        'conflict': gerrit.push_change('openstack/devstack', 1004, {
            'exercise.sh': EXERCISE_SH.replace('running exercises', 'running some exercises')},
            'Say some exercises', parent=first),
    }
    return gerrit


def change_env(ref, number=None, project='openstack/devstack', branch='master'):
    number = number or int(ref.split('/')[3])
    return {'GERRIT_PROJECT': project, 'GERRIT_BRANCH': branch, 'GERRIT_REFSPEC': ref,
            'GERRIT_CHANGE_NUMBER': str(number), 'GERRIT_PATCHSET_NUMBER': ref.rsplit('/', 1)[1]}


def gate_pool(tmp_path, clouds, db_url, git_base, **gate):
    """One provider 'rax' on the local cloud, min-ready 1, with a gate section."""
    settings = {'labels': ['precise'], 'git-base': git_base,
                'projects': ['openstack/devstack', 'openstack/nova'],
                'test-timeout': 30, 'fetch-wait': 5, 'git-timeout': 20, 'git-retries': 2,
                'rsync-timeout': 30}
    settings.update(gate)
    images = [{'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS', 'min-ram': 512,
               'min-ready': 1}]
    pool = Pool(tmp_path, clouds, db_url, [provider('rax', images=images)], gate=settings,
                **{'hold-hours': 6})
    pool.seed_base_images('rax', 'precise')
    return pool


def local_cloud_config(tmp_path):
    return {'clouds': [cloud_config('rax', make_base_dir(tmp_path))]}


class GateRun:
    """Runs devstack-vm-gate.sh as Jenkins would: WORKSPACE, JOB_NAME, BUILD_NUMBER, Gerrit vars."""

    JENKINS_VARS = ('ZUUL_PROJECT', 'ZUUL_BRANCH', 'ZUUL_REF', 'ZUUL_URL', 'ZUUL_CHANGE',
                    'ZUUL_PATCHSET', 'GERRIT_PROJECT', 'GERRIT_BRANCH', 'GERRIT_REFSPEC',
                    'GERRIT_CHANGE_NUMBER', 'GERRIT_PATCHSET_NUMBER', 'DEVSTACK_GATE_TEMPEST',
                    'DEVSTACK_GATE_GERRIT_URL', 'JOB_NAME', 'BUILD_NUMBER', 'WORKSPACE')

    def __init__(self, pool, workspace, job='gate-integration-tests-devstack-vm', build='42',
                 **env):
        self.pool = pool
        self.workspace = workspace
        env = dict(env, WORKSPACE=str(workspace), JOB_NAME=job, BUILD_NUMBER=build,
                   DEVSTACK_GATE_PYTHON=sys.executable)
        self.env = pool.env(**env)
        for var in self.JENKINS_VARS:
            if var not in env:
                self.env.pop(var, None)

    def popen(self, *args):
        os.makedirs(self.workspace, exist_ok=True)
        return subprocess.Popen(self.pool.command('devstack-vm-gate.sh', *args),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.env, cwd=str(self.workspace))

    def run(self, *args, timeout=120):
        proc = self.popen(*args)
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out

    def log(self, name):
        return (self.workspace / 'logs' / name).read_text()


def write_config(tmp_path, db_url, gerrit_base, **gate_settings):
    """A configuration whose cloud is never called (these runs never get as far as a node)."""
    settings = {'git-base': gerrit_base, 'projects': ['openstack/devstack', 'openstack/nova'],
                'git-timeout': 20, 'git-retries': 2, 'fetch-wait': 0}
    settings.update(gate_settings)
    data = {'database': db_url, 'gate': settings, 'ssh-private-key': str(tmp_path / 'id_rsa'),
            'providers': [{'name': 'rax', 'cloud': 'unused', 'images': [
                {'name': 'precise', 'base-image': 'Ubuntu'},
                {'name': 'oneiric', 'base-image': 'Ubuntu'}]}]}
    path = tmp_path / 'devstack-gate.yaml'
    path.write_text(yaml.safe_dump(data))
    return str(path)


class ConfigOnly:
    """Just enough of a Pool for GateRun."""

    def __init__(self, config_path):
        self.config_path = config_path

    def env(self, **extra):
        return dict(os.environ, DEVSTACK_GATE_CONFIG=self.config_path, **extra)

    def command(self, script, *args):
        return [os.path.join(ROOT, script)] + list(args)

"""The devstack cache of a template node: the plan, its errors, and prepare-node.sh for real.

The fixture tree (tests/fixtures/devstack) is a small devstack checkout and
three projects; the tests commit it to git repositories with a master and a
stable/folsom branch (keystone has master only).  prepare-node.sh runs as a
real subprocess: dry, and for real for the git, pip (offline, against local
wheels) and image (a loopback HTTP server) steps.  apt needs root and a
mirror: its commands are checked in the dry run only.

The planner's API is tested on node-setup/devstack_cache_plan.py itself, loaded
from its file: the very file that prepare-node.sh runs on the template.
"""

import functools
import http.server
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
import zipfile

import pytest

from devstackgate import image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures', 'devstack')
PREPARE_NODE = os.path.join(ROOT, 'node-setup', 'prepare-node.sh')
PLANNER = os.path.join(ROOT, 'node-setup', 'devstack_cache_plan.py')


def load_planner():
    """node-setup/devstack_cache_plan.py as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location('devstack_cache_plan', PLANNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


planner = load_planner()
PlanError, Project = planner.PlanError, planner.Project
STEP_LINE = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d prepare-node: (.*): ok in \d+\.\ds$')
# Commands that must not run: each stub records its call and fails.  Never in these
# tests (no root, no mirror): apt and anything through sudo; and in a dry run, nothing.
NEVER = ('sudo', 'apt-get', 'apt', 'wget', 'pip', 'pip3')
NEVER_IN_DRY_RUN = NEVER + ('mkdir', 'install', 'mv', 'curl', 'timeout', 'sleep')

BRANCHES = ['master', 'stable/folsom']
MASTER_DEBS_JAMMY = [
    'bridge-utils', 'curl', 'dnsmasq-base', 'ebtables', 'gettext', 'git', 'kpartx',
    'libapache2-mod-wsgi-py3', 'libldap2-dev', 'libvirt-daemon-system', 'python3-dev',
    'python3-ldap', 'python3-libvirt', 'python3-xattr', 'qemu-kvm', 'screen', 'sqlite3',
    'tcpdump']
FOLSOM_DEBS_JAMMY = [
    'bridge-utils', 'curl', 'dnsmasq-base', 'ebtables', 'git', 'kpartx', 'libldap2-dev',
    'libvirt-daemon-system', 'python-dev', 'python3-ldap', 'python3-libvirt', 'python3-xattr',
    'qemu-kvm', 'screen', 'sqlite3']
CIRROS = 'http://download.cirros-cloud.net/'
MASTER_IMAGES = [
    'http://download.openvz.org/template/precreated/ubuntu-12.04-x86_64.tar.gz',
    CIRROS + '0.3.0/cirros-0.3.0-x86_64-rootfs.img.gz',
    CIRROS + '0.3.0/cirros-0.3.0-x86_64-uec.tar.gz',
    CIRROS + '0.3.0/cirros-0.3.0-x86_64-disk.img',
    'file:///opt/stack/images/local.qcow2']
NOVA_MASTER = [
    'coverage>=3.6', 'eventlet>=0.13.0', 'hacking>=0.8.0,<0.9', 'kombu>=2.4.8,!=2.5.0',
    'mox>=0.5.3', 'oslo.config>=1.2.0', 'pbr>=0.5.21,<1.0', 'six>=1.4.1',
    'SQLAlchemy>=0.7.8,<=0.7.99']
KEYSTONE_MASTER = ['pbr>=0.5.21,<1.0', 'python-ldap>=2.4; python_version >= "3.0"',
                   'six>=1.4.1']
GLOBAL = ['eventlet>=0.13.0', 'hacking>=0.8.0,<0.9', 'pbr>=0.5.21,<1.0', 'six>=1.4.1',
          'SQLAlchemy>=0.7.8,<=0.7.99']


# ---------------------------------------------------------------- helpers

def git_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith('GIT_')}
    env.update(GIT_AUTHOR_NAME='test', GIT_AUTHOR_EMAIL='test@example.org',
               GIT_COMMITTER_NAME='test', GIT_COMMITTER_EMAIL='test@example.org',
               GIT_CONFIG_NOSYSTEM='1', GIT_CONFIG_GLOBAL=os.devnull)
    return env


def git(repo, *args):
    return subprocess.run(['git', '-C', str(repo)] + list(args), env=git_env(), check=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True).stdout.strip()


def commit_all(repo, message):
    git(repo, 'add', '-A')
    git(repo, 'commit', '-q', '--no-gpg-sign', '-m', message)


def make_repo(dest, base, overlay=None):
    """A git repository holding base on master and base+overlay on stable/folsom."""
    shutil.copytree(base, dest)
    git(dest, 'init', '-q', '-b', 'master')
    commit_all(dest, 'master')
    if overlay:
        git(dest, 'checkout', '-q', '-b', 'stable/folsom')
        shutil.copytree(overlay, dest, dirs_exist_ok=True)
        commit_all(dest, 'stable/folsom')
        git(dest, 'checkout', '-q', 'master')
    return str(dest)


@pytest.fixture(scope='module')
def src(tmp_path_factory):
    """The fixture tree as git repositories: devstack, nova, keystone, requirements."""
    root = tmp_path_factory.mktemp('src')
    folsom = os.path.join(FIXTURES, 'stable-folsom')
    repos = {'devstack': make_repo(root / 'devstack', os.path.join(FIXTURES, 'devstack'),
                                   os.path.join(folsom, 'devstack'))}
    for name in ('nova', 'keystone', 'requirements'):
        overlay = os.path.join(folsom, 'projects', name)
        repos[name] = make_repo(root / name, os.path.join(FIXTURES, 'projects', name),
                                overlay if os.path.isdir(overlay) else None)
    # An image devstack downloaded before: the plan skips it.
    with open(os.path.join(repos['devstack'], 'files', 'cirros-0.3.0-x86_64-disk.img'), 'w') as f:
        f.write('cached')
    repos['root'] = str(root)
    return repos


def projects(src, names=('nova', 'keystone', 'requirements')):
    return [Project(name, src[name]) for name in names]


def stub_path(tmp_path, names):
    """A PATH whose commands names only record that they were called, and fail."""
    stubs = tmp_path / 'stubs'
    shutil.rmtree(stubs, ignore_errors=True)
    stubs.mkdir()
    calls = tmp_path / 'stub-calls'
    for name in names:
        path = stubs / name
        path.write_text('#!/bin/sh\necho "%s $*" >> "%s"\nexit 97\n' % (name, calls))
        path.chmod(0o755)
    return '%s:%s' % (stubs, os.environ['PATH']), calls


def prepare_node_env(tmp_path, stubs=NEVER, env=None):
    """(environment, stub call log) for a run: its own TMPDIR, stubs first on PATH."""
    tmpdir = tmp_path / 'tmp'
    tmpdir.mkdir(exist_ok=True)
    full_env = git_env()
    full_env['TMPDIR'] = str(tmpdir)
    full_env['PATH'], calls = stub_path(tmp_path, stubs)
    full_env.update(env or {})
    return full_env, calls


def check_leftovers(tmp_path, calls):
    # The trap removed the work directory, whatever happened; no stub was called.
    assert os.listdir(tmp_path / 'tmp') == []
    assert not calls.exists(), calls.read_text()


def run_prepare_node(tmp_path, *args, env=None, stubs=NEVER):
    full_env, calls = prepare_node_env(tmp_path, stubs, env)
    proc = subprocess.run([PREPARE_NODE, '--python', sys.executable] + list(args),
                          env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=60)
    check_leftovers(tmp_path, calls)
    return proc


def step_labels(stdout):
    """The labels of the 'LABEL: ok in N.Ns' lines, each line checked for its form."""
    lines = stdout.splitlines()
    assert re.match(r'^.* prepare-node: caching for devstack ', lines[0])
    assert re.match(r'^.* prepare-node: done: %d steps in \d+\.\ds$' % (len(lines) - 2),
                    lines[-1])
    labels = []
    for line in lines[1:-1]:
        m = STEP_LINE.match(line)
        assert m, line
        labels.append(m.group(1))
    return labels


def tree_snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            out[path] = os.stat(path).st_mtime_ns
    return out


# ---------------------------------------------------------------- the plan

def test_plan_of_the_plain_fixture_tree():
    plan = planner.compute_plan(os.path.join(FIXTURES, 'devstack'), 'jammy', ['master'],
                                       machine='x86_64')
    (master,) = plan.branches
    assert master.branch == 'master'
    assert list(master.debs) == MASTER_DEBS_JAMMY
    assert list(master.images) == MASTER_IMAGES
    assert plan.projects == () and master.pip_requirements == () and plan.notes == ()


@pytest.mark.parametrize('distro,testonly,expected', [
    # dist: keeps libapache2-mod-wsgi and libvirt-bin; not:precise drops python3-libvirt.
    ('precise', True, ['bridge-utils', 'curl', 'dnsmasq-base', 'ebtables', 'gettext', 'git',
                       'kpartx', 'libapache2-mod-wsgi', 'libvirt-bin', 'python-dev',
                       'python3-dev', 'python3-xattr', 'qemu-kvm', 'screen', 'sqlite3',
                       'tcpdump']),
    # not:noble drops qemu-kvm; without testonly: no tcpdump, but keystone's sqlite3 stays.
    ('Noble', False, ['bridge-utils', 'curl', 'dnsmasq-base', 'ebtables', 'gettext', 'git',
                      'kpartx', 'libapache2-mod-wsgi-py3', 'libldap2-dev',
                      'libvirt-daemon-system', 'python3-dev', 'python3-libvirt',
                      'python3-xattr', 'screen', 'sqlite3']),
    # A distribution no dist: marker names gets only the unmarked packages.
    ('bookworm', False, ['bridge-utils', 'curl', 'dnsmasq-base', 'ebtables', 'gettext', 'git',
                         'kpartx', 'python3-dev', 'python3-libvirt', 'python3-xattr',
                         'qemu-kvm', 'screen', 'sqlite3']),
])
def test_dist_not_and_testonly_markers(distro, testonly, expected):
    plan = planner.compute_plan(os.path.join(FIXTURES, 'devstack'), distro, ['master'],
                                       include_testonly=testonly, machine='x86_64')
    assert list(plan.branches[0].debs) == expected


def test_plan_of_two_branches_and_three_projects(src):
    plan = planner.compute_plan(src['devstack'], 'jammy', BRANCHES, projects(src),
                                       variables={'CIRROS_ARCH': 'x86_64'})
    master, folsom = plan.branches
    assert list(master.debs) == MASTER_DEBS_JAMMY
    assert list(folsom.debs) == FOLSOM_DEBS_JAMMY
    assert list(master.images) == MASTER_IMAGES
    assert list(folsom.images) == [CIRROS + '0.2.0/cirros-0.2.0-x86_64-uec.tar.gz']
    assert [(r.project, r.ref, list(r.lines)) for r in master.requirements] == [
        ('nova', 'master', NOVA_MASTER),
        ('keystone', 'master', KEYSTONE_MASTER),
        ('requirements', 'master', [])]
    assert [(r.project, r.ref, list(r.lines)) for r in folsom.requirements] == [
        ('nova', 'stable/folsom', ['coverage>=3.6', 'hacking>=0.8.0,<0.9', 'mox>=0.5.3',
                                   'pbr>=0.5,<0.6', 'six', 'six>=1.4.1']),
        ('requirements', 'stable/folsom', [])]
    assert list(master.global_requirements) == GLOBAL
    assert master.constraints == planner.ProjectFile('requirements', 'master',
                                                            'upper-constraints.txt')
    assert folsom.constraints.ref == 'stable/folsom'
    assert (master.missing, folsom.missing) == ((), ('keystone',))
    assert list(master.pip_requirements) == sorted(
        set(NOVA_MASTER + KEYSTONE_MASTER + GLOBAL), key=lambda s: (s.lower(), s))
    assert list(plan.notes) == [
        '%s/test-requirements.txt@master:5: skipped editable requirement '
        "'-e git+https://git.openstack.org/openstack/tempest-lib#egg=tempest-lib'" % src['nova'],
        '%s/test-requirements.txt@stable/folsom:5: skipped editable requirement '
        "'-e git+https://git.openstack.org/openstack/tempest-lib#egg=tempest-lib'" % src['nova'],
        "%s/requirements-common.txt@master:3: skipped local path './tools/local-plugin'"
        % src['keystone'],
        "%s/requirements.txt@master:2: skipped option "
        "'--index-url https://pypi.example.org/simple'" % src['keystone'],
        'keystone has no branch stable/folsom']


def test_stackrc_overrides_and_expansions():
    text = '\n'.join([
        'CIRROS_VERSION=${CIRROS_VERSION:-"0.3.0"}',
        "ARCH='x86_64'",
        'BASE=http://images.example.org/$CIRROS_VERSION',
        'IMAGE_URLS=${IMAGE_URLS:-"${BASE}/cirros-${CIRROS_VERSION}-${ARCH}.img"}',
        'export IMAGE_URLS+=","',
        'IMAGE_URLS+=", http://h/x.qcow2 ,"  # spaces and empty entries are dropped',
        '    IMAGE_URLS+=",http://h/x.qcow2";;',
    ])
    assert planner.parse_stackrc_images(text, 'stackrc') == [
        'http://images.example.org/0.3.0/cirros-0.3.0-x86_64.img', 'http://h/x.qcow2']
    assert planner.parse_stackrc_images(text, 'stackrc', {'CIRROS_VERSION': '0.4.0'}) == [
        'http://images.example.org/0.4.0/cirros-0.4.0-x86_64.img', 'http://h/x.qcow2']
    assert planner.parse_stackrc_images(text, 'stackrc', {'IMAGE_URLS': 'http://a/b'}) == [
        'http://a/b', 'http://h/x.qcow2']


def test_requirements_parsing():
    files = {'base.txt': '-r more/extra.txt\n', 'more/extra.txt': 'six\n-r ../base.txt\n'}

    def include(target, where):
        path = os.path.normpath(os.path.join(os.path.dirname(where), target))
        return (files[path], path) if path in files else None

    text = ('# comment\n\n'
            'pbr>=1.6 # Apache-2.0\n'
            'requests>=2.0,\\\n'
            '!=2.1   \n'
            '-r base.txt\n'
            '--requirement=base.txt\n'
            '-c constraints.txt\n'
            'git+https://example.org/lib.git#egg=lib\n')
    lines, notes = planner.parse_requirements(text, 'reqs.txt', include)
    assert lines == ['pbr>=1.6', 'requests>=2.0,!=2.1', 'six',
                     'git+https://example.org/lib.git#egg=lib']
    assert notes == ["reqs.txt:8: skipped option '-c constraints.txt'"]


def test_projects_file():
    text = ('# projects to cache\n'
            'nova https://git.openstack.org/openstack/nova\n'
            'https://git.openstack.org/openstack/keystone.git   # name from the URL\n'
            'openstack/swift=git@github.com:openstack/swift.git\n'
            'local=../repos/local\n')
    located = planner.parse_projects_file(text, 'projects.txt', '/base/dir')
    assert located == [
        (Project('nova', 'https://git.openstack.org/openstack/nova'), 'projects.txt:2'),
        (Project('keystone', 'https://git.openstack.org/openstack/keystone.git'),
         'projects.txt:3'),
        (Project('openstack/swift', 'git@github.com:openstack/swift.git'), 'projects.txt:4'),
        (Project('local', '/base/repos/local'), 'projects.txt:5')]
    assert [p.local for p, _ in located] == [False, False, False, True]


def test_render_commands_in_process(src, tmp_path):
    """The command list as argument lists: no shell string anywhere."""
    plan = planner.compute_plan(src['devstack'], 'jammy', ['master'],
                                       projects(src, ('nova',)),
                                       variables={'CIRROS_ARCH': 'x86_64'})
    git_cache, pip_cache = str(tmp_path / 'git'), str(tmp_path / 'pip')
    commands = planner.render_commands(plan, git_cache, pip_cache,
                                              steps=('git', 'pip'), python='python3')
    assert [(c.argv, c.network) for c in commands] == [
        (('mkdir', '-p', git_cache), False),
        (('mkdir', '-p', pip_cache), False),
        (('mkdir', '-p', pip_cache + '/constraints'), False),
        (('git', 'clone', src['nova'], git_cache + '/nova'), True),
        (('git', '-C', git_cache + '/nova', 'checkout', '--quiet', '--force', '-B', 'master',
          'origin/master'), False),
        (('python3', '-m', 'pip', 'download', '--dest', pip_cache) + tuple(NOVA_MASTER), True)]
    assert commands[3].cleanup == git_cache + '/nova'


def test_url_passwords_are_never_printed(src, tmp_path):
    url = 'https://ci:s3cret@git.example.org/openstack/nova'
    plan = planner.compute_plan(src['devstack'], 'jammy', ['master'],
                                       [Project('nova', url)], machine='x86_64')
    assert plan.notes == ('nova is read after it is cloned from '
                          'https://ci:***@git.example.org/openstack/nova',)
    (clone,) = planner.fetch_commands(plan, str(tmp_path), 'pip', steps=('git',))
    assert clone.argv == ('git', 'clone', url, str(tmp_path / 'nova'))
    assert clone.shell() == ("git clone 'https://ci:***@git.example.org/openstack/nova' %s"
                             % (tmp_path / 'nova'))
    # And not in the failure line nor in git's own last words either.
    proc = run_prepare_node(tmp_path, '--devstack', src['devstack'], '--dist', 'jammy',
                            '--var', 'CIRROS_ARCH=x', '--steps', 'git', '--retries', '1',
                            '--project', 'nova=http://ci:s3cret@127.0.0.1:9/nova',
                            '--git-cache', str(tmp_path / 'git'))
    assert proc.returncode == 1
    assert 'ci:***@127.0.0.1' in proc.stderr
    assert 's3cret' not in proc.stdout + proc.stderr


def test_a_cache_dir_we_cannot_create_is_made_with_sudo_for_us(src, tmp_path, monkeypatch):
    import grp
    import pwd
    plan = planner.compute_plan(src['devstack'], 'jammy', ['master'],
                                       projects(src, ('nova',)), machine='x86_64')
    monkeypatch.setattr(planner.os, 'access', lambda path, mode: False)
    pip_cache = str(tmp_path / 'var' / 'cache' / 'pip')
    commands = planner.fetch_commands(plan, str(tmp_path / 'git'), pip_cache,
                                             steps=('pip',), sudo=('sudo', '-n'))
    owner = (pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name)
    assert [c.argv for c in commands] == [
        ('sudo', '-n', 'install', '-d', '-o', owner[0], '-g', owner[1], path)
        for path in (pip_cache, pip_cache + '/constraints')]


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize('relpath,content,expected', [
    ('stackrc', None, '{d}/stackrc: missing (is this a devstack checkout?)'),
    ('files/debs', None, '{d}/files/debs: no such directory (is this a devstack checkout?)'),
    ('files/debs/nova', 'dnsmasq-base\nebtables iptables\n',
     "{d}/files/debs/nova:2: 'ebtables iptables' is not a Debian package name"),
    ('files/debs/nova', 'dnsmasq-base\nLibvirt-Bin\n',
     "{d}/files/debs/nova:2: 'Libvirt-Bin' is not a Debian package name"),
    ('files/debs/nova', 'libvirt-bin # dist:\n',
     '{d}/files/debs/nova:1: "dist:" names no distribution'),
    ('stackrc', '# images\nIMAGE_URLS="http://example.org/a.img\n',
     '{d}/stackrc:2: unterminated quote or expansion in IMAGE_URLS'),
    ('stackrc', 'IMAGE_URLS=http://example.org/${IMAGE_VERSION}/a.img\n',
     '{d}/stackrc:1: cannot evaluate IMAGE_URLS: ${IMAGE_VERSION} is not set in stackrc '
     '(pass --var IMAGE_VERSION=VALUE)'),
    ('stackrc', 'V=$(cat VERSION)\nIMAGE_URLS="http://example.org/$V/a.img"\n',
     '{d}/stackrc:2: cannot evaluate IMAGE_URLS: V comes from $(cat VERSION) '
     '(pass --var V=VALUE)'),
    ('stackrc', 'IMAGE_URLS="http://example.org/a.img,cirros.img"\n',
     "{d}/stackrc:1: IMAGE_URLS entry 'cirros.img' is not a URL"),
    ('stackrc', 'DEST=/opt/stack\n',
     "{d}/stackrc: no IMAGE_URLS assignment (is this devstack's stackrc?)"),
])
def test_malformed_devstack_tree(tmp_path, relpath, content, expected):
    d = str(tmp_path / 'devstack')
    shutil.copytree(os.path.join(FIXTURES, 'devstack'), d)
    path = os.path.join(d, relpath)
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif content is None:
        os.remove(path)
    else:
        with open(path, 'w') as f:
            f.write(content)
    with pytest.raises(PlanError) as e:
        planner.compute_plan(d, 'jammy', ['master'], machine='x86_64')
    assert str(e.value) == expected.replace('{d}', d)
    assert e.value.exit_code == 2


def test_uname_needs_a_machine_or_a_var():
    d = os.path.join(FIXTURES, 'devstack')
    with pytest.raises(PlanError) as e:
        planner.compute_plan(d, 'jammy', ['master'])
    assert str(e.value) == ('%s/stackrc:28: cannot evaluate IMAGE_URLS: CIRROS_ARCH comes from '
                            '$(uname -m) (pass --var CIRROS_ARCH=VALUE)' % d)
    plan = planner.compute_plan(d, 'jammy', ['master'], variables={'CIRROS_ARCH': 'arm'})
    assert plan.images[1] == CIRROS + '0.3.0/cirros-0.3.0-arm-rootfs.img.gz'


def test_tree_and_branch_errors(src, tmp_path):
    plain = os.path.join(FIXTURES, 'devstack')
    cases = [
        (lambda: planner.compute_plan(str(tmp_path / 'nope'), 'jammy', ['master']),
         '%s: no such devstack checkout' % (tmp_path / 'nope')),
        (lambda: planner.compute_plan(plain, 'jammy', BRANCHES),
         '%s is not a git checkout, so it holds one branch, not 2 (master, stable/folsom)'
         % plain),
        (lambda: planner.compute_plan(src['devstack'], 'jammy', ['stable/grizzly']),
         '%s: no branch stable/grizzly (tried origin/stable/grizzly and stable/grizzly)'
         % src['devstack']),
        (lambda: planner.compute_plan(src['devstack'], 'jammy', ['master', '-x']),
         "'-x' is not a usable branch name"),
        (lambda: planner.compute_plan(src['devstack'], 'jammy', ['master'],
                                             [Project('gone', str(tmp_path / 'gone'))],
                                             machine='x86_64'),
         'project gone: %s does not exist' % (tmp_path / 'gone')),
        (lambda: planner.render_commands(None, 'g', 'p', steps=('debs',)),
         "unknown step 'debs'; valid steps are: apt, git, pip, images"),
        (lambda: planner.parse_projects_file('nova /a /b\n', 'projects.txt', '/'),
         "projects.txt:1: expected SOURCE, NAME=SOURCE or NAME SOURCE, got 'nova /a /b'"),
        (lambda: planner.unique_projects(
            planner.parse_projects_file('/r/nova\nnova=/s/nova\n', 'projects.txt', '/')),
         "projects.txt:2: project 'nova' is already given at projects.txt:1"),
        (lambda: planner.parse_project('a/../b=/x', '/', '--project a/../b=/x'),
         "--project a/../b=/x: 'a/../b' is not a usable project name"),
    ]
    for call, expected in cases:
        with pytest.raises(PlanError) as e:
            call()
        assert str(e.value) == expected


def test_a_bad_file_on_a_branch_is_named_with_its_ref(src, tmp_path):
    repo = str(tmp_path / 'devstack')
    shutil.copytree(src['devstack'], repo)
    git(repo, 'checkout', '-q', 'stable/folsom')
    with open(os.path.join(repo, 'files', 'debs', 'general'), 'w') as f:
        f.write('bridge-utils\n\ncurl # dist:\n')
    commit_all(repo, 'broken')
    git(repo, 'checkout', '-q', 'master')
    nova = str(tmp_path / 'nova')
    shutil.copytree(src['nova'], nova)
    with open(os.path.join(nova, 'requirements.txt'), 'a') as f:
        f.write('-r missing.txt\n')
    commit_all(nova, 'broken')
    with pytest.raises(PlanError) as e:
        planner.compute_plan(repo, 'jammy', BRANCHES, machine='x86_64')
    assert str(e.value) == ('%s/files/debs/general@stable/folsom:3: "dist:" names no '
                            'distribution' % repo)
    with pytest.raises(PlanError) as e:
        planner.compute_plan(repo, 'jammy', ['master'], [Project('nova', nova)],
                                    machine='x86_64')
    assert str(e.value) == '%s/requirements.txt@master:9: -r missing.txt: no such file' % nova


def test_an_unknown_directory_in_the_git_cache_is_not_overwritten(src, tmp_path):
    (tmp_path / 'git' / 'nova').mkdir(parents=True)
    plan = planner.compute_plan(src['devstack'], 'jammy', ['master'],
                                       projects(src, ('nova',)), str(tmp_path / 'git'),
                                       machine='x86_64')
    with pytest.raises(PlanError) as e:
        planner.fetch_commands(plan, str(tmp_path / 'git'), str(tmp_path / 'pip'))
    assert str(e.value) == ('%s exists and is not a git clone: remove it or choose another '
                            'git cache' % (tmp_path / 'git' / 'nova'))


# ---------------------------------------------------------------- prepare-node.sh

def test_dry_run_prints_every_command_and_runs_none(src, tmp_path):
    projects_file = tmp_path / 'projects.txt'
    projects_file.write_text('# cached for the gate\nnova %s\n%s\n'
                             % (src['nova'], src['keystone']))
    git_cache, pip_cache = tmp_path / 'cache' / 'git', tmp_path / 'cache' / 'pip'
    before = tree_snapshot(src['root'])
    proc = run_prepare_node(
        tmp_path, '--dry-run', '--devstack', src['devstack'], '--dist', 'jammy',
        '--branches', 'master stable/folsom', '--projects-file', str(projects_file),
        '--project', 'requirements=%s' % src['requirements'], '--git-cache', str(git_cache),
        '--pip-cache', str(pip_cache), '--var', 'CIRROS_ARCH=x86_64', '--sudo', 'sudo -n',
        stubs=NEVER_IN_DRY_RUN)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(FIXTURES, 'dry-run.expected')) as f:
        expected = f.read().format(devstack=src['devstack'], src=src['root'],
                                   git_cache=git_cache, pip_cache=pip_cache,
                                   python=sys.executable)
    assert proc.stdout == expected
    assert proc.stderr.splitlines()[-1] == 'note: keystone has no branch stable/folsom'
    # Nothing ran: no cache directory, nothing new or changed in the sources, no stub called.
    assert not (tmp_path / 'cache').exists()
    assert tree_snapshot(src['root']) == before


def test_dry_run_of_the_apt_step_without_testonly(tmp_path):
    proc = run_prepare_node(tmp_path, '--dry-run', '--devstack',
                            os.path.join(FIXTURES, 'devstack'), '--dist', 'jammy', '--steps',
                            'apt', '--no-testonly', '--sudo', '', '--var', 'CIRROS_ARCH=x',
                            stubs=NEVER_IN_DRY_RUN)
    assert proc.returncode == 0, proc.stderr
    debs = [d for d in MASTER_DEBS_JAMMY if d not in ('tcpdump', 'python3-ldap')]
    assert proc.stdout.splitlines() == [
        'apt-get update', 'apt-get install --assume-yes --no-upgrade git',
        'apt-get install --assume-yes --download-only ' + ' '.join(debs)]


def test_git_step_clones_then_updates_for_real(src, tmp_path):
    sources = {name: str(tmp_path / 'upstream' / name) for name in ('nova', 'keystone')}
    for name, path in sources.items():
        shutil.copytree(src[name], path)
    cache = tmp_path / 'workspace-cache'
    args = ['--devstack', src['devstack'], '--dist', 'jammy', '--branches', 'master,stable/folsom',
            '--project', 'nova=%s' % sources['nova'],
            '--project', 'openstack/keystone=%s' % sources['keystone'],
            '--git-cache', str(cache), '--pip-cache', str(tmp_path / 'pip'), '--steps', 'git',
            '--var', 'CIRROS_ARCH=x86_64']
    proc = run_prepare_node(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert step_labels(proc.stdout) == [
        'dir: create %s' % cache, 'git: clone nova', 'git: clone openstack/keystone',
        'git: check out nova master', 'git: branch nova stable/folsom',
        'git: check out openstack/keystone master']
    nova, keystone = cache / 'nova', cache / 'openstack' / 'keystone'
    assert git(nova, 'rev-parse', '--abbrev-ref', 'HEAD') == 'master'
    assert git(nova, 'rev-parse', 'stable/folsom') == git(sources['nova'], 'rev-parse',
                                                          'stable/folsom')
    assert git(nova, 'rev-parse', '--abbrev-ref', 'stable/folsom@{upstream}') == \
        'origin/stable/folsom'
    assert (nova / 'test-requirements.txt').exists()
    assert git(keystone, 'rev-parse', '--abbrev-ref', 'HEAD') == 'master'
    assert git(keystone, 'branch', '--list', 'stable/folsom') == ''
    assert not (tmp_path / 'pip').exists()

    # Upstream moves on; the next nightly run fetches into the same clones.
    with open(os.path.join(sources['nova'], 'requirements.txt'), 'a') as f:
        f.write('netaddr>=0.7.6\n')
    commit_all(sources['nova'], 'add netaddr')
    proc = run_prepare_node(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert step_labels(proc.stdout) == [
        'git: point nova at %s' % sources['nova'], 'git: fetch nova',
        'git: point openstack/keystone at %s' % sources['keystone'],
        'git: fetch openstack/keystone',
        'git: check out nova master', 'git: branch nova stable/folsom',
        'git: check out openstack/keystone master']
    assert git(nova, 'rev-parse', 'HEAD') == git(sources['nova'], 'rev-parse', 'master')
    assert 'netaddr>=0.7.6' in (nova / 'requirements.txt').read_text()


def test_a_failing_network_step_is_retried_then_fails_in_one_line(src, tmp_path):
    cache = tmp_path / 'git'
    proc = run_prepare_node(
        tmp_path, '--devstack', src['devstack'], '--dist', 'jammy', '--var', 'CIRROS_ARCH=x',
        '--project', 'gone=file://%s/gone.git' % tmp_path, '--git-cache', str(cache),
        '--steps', 'git', '--retries', '3', '--retry-delay', '0')
    assert proc.returncode == 1
    retries = [line.split(': ', 1)[1] for line in proc.stdout.splitlines() if 'attempt' in line]
    assert retries == ['git: clone gone: attempt %d of 3 failed (exit status 128); retrying '
                       'in 0s' % n for n in (1, 2)]
    last = proc.stderr.splitlines()[-1]
    assert re.match(r'^prepare-node: git: clone gone: failed \(exit status 128\) after 3 '
                    r'attempt\(s\) in \d+\.\ds: git clone file://%s/gone\.git %s/gone$'
                    % (re.escape(str(tmp_path)), re.escape(str(cache))), last), last
    assert os.listdir(cache) == []      # the half-made clone went with the failure


def _wheel(directory, version):
    name = 'demo_dep-%s.dist-info' % version
    path = os.path.join(directory, 'demo_dep-%s-py3-none-any.whl' % version)
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('demo_dep/__init__.py', '')
        z.writestr(name + '/METADATA',
                   'Metadata-Version: 2.1\nName: demo-dep\nVersion: %s\n' % version)
        z.writestr(name + '/WHEEL', 'Wheel-Version: 1.0\nGenerator: test\n'
                   'Root-Is-Purelib: true\nTag: py3-none-any\n')
        z.writestr(name + '/RECORD', '')


def test_pip_step_downloads_under_the_constraints_offline(src, tmp_path):
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    for version in ('1.0', '2.0'):
        _wheel(str(wheels), version)
    tiny = tmp_path / 'src' / 'tiny'
    tiny.mkdir(parents=True)
    (tiny / 'requirements.txt').write_text('demo-dep >= 0.5\n')
    make_repo(tmp_path / 'repos' / 'tiny', str(tiny))
    reqs = tmp_path / 'src' / 'requirements'
    reqs.mkdir()
    (reqs / 'global-requirements.txt').write_text('demo-dep\n')
    (reqs / 'upper-constraints.txt').write_text('demo-dep===1.0\n')
    make_repo(tmp_path / 'repos' / 'requirements', str(reqs))
    pip_cache = tmp_path / 'pip'
    proc = run_prepare_node(
        tmp_path, '--devstack', src['devstack'], '--dist', 'jammy', '--var', 'CIRROS_ARCH=x',
        '--project', str(tmp_path / 'repos' / 'tiny'),
        '--project', str(tmp_path / 'repos' / 'requirements'),
        '--git-cache', str(tmp_path / 'git'), '--pip-cache', str(pip_cache),
        '--steps', 'git,pip', '--retries', '1',
        env={'PIP_NO_INDEX': '1', 'PIP_FIND_LINKS': str(wheels), 'PIP_NO_CACHE_DIR': '1',
             'PIP_DISABLE_PIP_VERSION_CHECK': '1'})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert step_labels(proc.stdout)[-3:] == [
        'pip: constraints for master from requirements',
        'pip: download tiny requirements for master (1)',
        'pip: download global requirements for master (1)']
    assert sorted(os.listdir(pip_cache)) == ['constraints', 'demo_dep-1.0-py3-none-any.whl']
    assert (pip_cache / 'constraints' / 'master.txt').read_text() == 'demo-dep===1.0\n'


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files of a directory; /truncated.img breaks off, /slow.img stalls until teardown."""
    stop = None

    def do_GET(self):
        if self.path in ('/truncated.img', '/slow.img'):
            self.send_response(200)
            self.send_header('Content-Length', '100000')
            self.end_headers()
            self.wfile.write(b'x' * 100)
            self.wfile.flush()
            if self.path == '/slow.img':
                self.stop.wait(20)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / 'www'
    root.mkdir()
    stop = threading.Event()
    handler = type('Handler', (_Handler,), {'stop': stop})
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, 'http://127.0.0.1:%d' % server.server_address[1]
    stop.set()
    server.shutdown()
    server.server_close()


def test_images_step_downloads_into_devstack_files_for_real(tmp_path, http_dir):
    if not shutil.which('curl'):
        pytest.skip('curl is not installed')
    www, base = http_dir
    (www / 'cirros.img').write_bytes(b'\0cirros' * 1000)
    devstack = tmp_path / 'devstack'
    shutil.copytree(os.path.join(FIXTURES, 'devstack'), devstack)
    (devstack / 'stackrc').write_text('IMAGE_URLS="%s/cirros.img"\n' % base)
    args = ['--devstack', str(devstack), '--dist', 'jammy', '--steps', 'images']
    proc = run_prepare_node(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert step_labels(proc.stdout) == ['image: download cirros.img', 'image: keep cirros.img']
    assert (devstack / 'files' / 'cirros.img').read_bytes() == b'\0cirros' * 1000
    assert not (devstack / 'files' / 'cirros.img.part').exists()
    # Already cached: nothing to do the second time.
    proc = run_prepare_node(tmp_path, *args)
    assert proc.returncode == 0 and step_labels(proc.stdout) == []

    # A download that breaks off is retried, and its partial file does not stay.
    (devstack / 'stackrc').write_text('IMAGE_URLS="%s/missing.img,%s/truncated.img"\n'
                                      % (base, base))
    proc = run_prepare_node(tmp_path, *args, '--retries', '2', '--retry-delay', '0')
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith(
        'prepare-node: image: download missing.img: failed (exit status 22) after 2 attempt(s)')
    (devstack / 'stackrc').write_text('IMAGE_URLS="%s/truncated.img"\n' % base)
    proc = run_prepare_node(tmp_path, *args, '--retries', '2', '--retry-delay', '0')
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith(
        'prepare-node: image: download truncated.img: failed (exit status 18) after 2 '
        'attempt(s)')
    assert sorted(os.listdir(devstack / 'files')) == ['cirros.img', 'debs']


def test_a_stalled_download_times_out(tmp_path, http_dir):
    if not shutil.which('curl'):
        pytest.skip('curl is not installed')
    www, base = http_dir
    devstack = tmp_path / 'devstack'
    shutil.copytree(os.path.join(FIXTURES, 'devstack'), devstack)
    (devstack / 'stackrc').write_text('IMAGE_URLS="%s/slow.img"\n' % base)
    started = time.monotonic()
    proc = run_prepare_node(tmp_path, '--devstack', str(devstack), '--dist', 'jammy',
                            '--steps', 'images', '--timeout', '1', '--retries', '1')
    assert time.monotonic() - started < 5
    assert proc.returncode == 1
    assert re.match(r'^prepare-node: image: download slow\.img: failed \(timed out after 1s\) '
                    r'after 1 attempt\(s\) in \d+\.\ds: curl ', proc.stderr.splitlines()[-1])
    assert os.listdir(devstack / 'files') == ['debs']


def test_an_interrupted_run_stops_at_once_and_leaves_nothing_half_made(tmp_path, http_dir):
    if not shutil.which('curl'):
        pytest.skip('curl is not installed')
    www, base = http_dir
    devstack = tmp_path / 'devstack'
    shutil.copytree(os.path.join(FIXTURES, 'devstack'), devstack)
    (devstack / 'stackrc').write_text('IMAGE_URLS="%s/slow.img"\n' % base)
    env, calls = prepare_node_env(tmp_path)
    proc = subprocess.Popen(
        [PREPARE_NODE, '--python', sys.executable, '--devstack', str(devstack), '--dist',
         'jammy', '--steps', 'images'], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    part = devstack / 'files' / 'slow.img.part'
    deadline = time.monotonic() + 10
    while not part.exists() and time.monotonic() < deadline:    # curl is receiving
        time.sleep(0.02)
    assert part.exists(), 'the download never started'
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - started < 5
    assert proc.returncode == 130
    assert err.splitlines()[-1] == 'prepare-node: interrupted'
    assert os.listdir(devstack / 'files') == ['debs']
    check_leftovers(tmp_path, calls)


@pytest.mark.parametrize('args,status,message', [
    (['--retries', 'x'], 2, "prepare-node: --retries must be an integer of at least 1, got 'x'"),
    (['--timeout', '0'], 2, "prepare-node: --timeout must be an integer of at least 1, got '0'"),
    (['--bogus'], 2, "prepare-node: unknown argument '--bogus' (see --help)"),
    (['--devstack'], 2, 'prepare-node: --devstack needs a value (see --help)'),
    (['--steps', 'apt,debs'], 2, "error: unknown step 'debs'; valid steps are: apt, git, pip, "
                                 "images"),
    (['--devstack', '/nonexistent/devstack', '--dist', 'jammy', '--steps', 'git'], 2,
     'error: /nonexistent/devstack: no such devstack checkout'),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, status, message):
    proc = run_prepare_node(tmp_path, '--dry-run', *args, stubs=NEVER_IN_DRY_RUN)
    assert (proc.returncode, proc.stdout, proc.stderr) == (status, '', message + '\n')


def test_help(tmp_path):
    proc = run_prepare_node(tmp_path, '--help')
    assert proc.returncode == 0 and proc.stdout.startswith('usage: prepare-node.sh [options]')


def test_shellcheck_is_clean():
    shellcheck = shutil.which('shellcheck')
    if not shellcheck:
        pytest.skip('shellcheck is not installed (apt-get install shellcheck)')
    proc = subprocess.run([shellcheck, '--severity=style', PREPARE_NODE],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout


# ---------------------------------------------------------------- one source of truth

def test_the_planner_needs_only_the_standard_library(tmp_path):
    # -I -S: no site-packages, no user site, no PYTHONPATH; what the template has.
    proc = subprocess.run(
        [sys.executable, '-I', '-S', PLANNER, 'commands', '--devstack',
         os.path.join(FIXTURES, 'devstack'), '--dist', 'jammy', '--machine', 'x86_64',
         '--steps', 'apt', '--sudo', ''],
        cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        'apt-get update', 'apt-get install --assume-yes --no-upgrade git',
        'apt-get install --assume-yes --download-only ' + ' '.join(MASTER_DEBS_JAMMY)]


def test_a_setup_line_runs_as_the_image_build_runs_it_and_its_tilde_is_expanded(src, tmp_path):
    """The image build copies node-setup/ to the template and runs a `setup:` line's words
    quoted, from the login directory: a `~` in the line reaches prepare-node.sh as written."""
    home = tmp_path / 'home'
    shutil.copytree(os.path.join(ROOT, 'node-setup'), home / image.REMOTE_NODE_SETUP_DIR)
    shutil.copytree(os.path.join(FIXTURES, 'devstack'), home / 'devstack')
    shutil.copytree(src['nova'], home / 'repos' / 'nova')
    entry = ('prepare-node.sh --devstack ~/devstack --project nova=~/repos/nova '
             '--git-cache ~/cache/git --pip-cache ~/cache/pip --dist jammy '
             '--var CIRROS_ARCH=x86_64 --steps git,images --dry-run')
    config = types.SimpleNamespace(path=str(tmp_path / 'devstack-gate.yaml'))
    script, args = image.resolve_setup(config, entry)
    assert script == PREPARE_NODE
    remote = '%s/%s' % (image.REMOTE_NODE_SETUP_DIR, os.path.basename(script))
    command = ' '.join(shlex.quote(w) for w in ['bash', remote] + args
                       + ['--python', sys.executable])
    assert "'~/devstack'" in command
    env, calls = prepare_node_env(tmp_path, NEVER_IN_DRY_RUN, {'HOME': str(home)})
    proc = subprocess.run(['bash', '-c', command], cwd=str(home), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    check_leftovers(tmp_path, calls)
    assert proc.returncode == 0, proc.stderr
    files = '%s/devstack/files/' % home
    downloads = []
    for url in MASTER_IMAGES[:4]:
        name = url.rsplit('/', 1)[1]
        downloads += ['curl --fail --silent --show-error --location --output %s%s.part %s'
                      % (files, name, url),
                      'mv -f %s%s.part %s%s' % (files, name, files, name)]
    assert proc.stdout.splitlines() == ['mkdir -p %s/cache/git' % home] + downloads + [
        'git clone %s/repos/nova %s/cache/git/nova' % (home, home),
        'git -C %s/cache/git/nova checkout --quiet --force -B master origin/master' % home]

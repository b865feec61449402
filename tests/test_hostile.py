"""Hostile input: values that try to be options, shell code or several lines.

A change ref, branch, project or URL from the Gerrit/Zuul environment, and
names and strings from the configuration, reach git, rsync, ssh and the
node's shell.  Each must arrive as data or be refused before anything runs:
a config error (exit 2, the file, the key, what was expected) or a one-line
usage error.  Everything here is real: git repositories, bash, the scripts,
config files on disk, SQLite.
"""

import importlib.util
import logging
import os
import re
import subprocess
import sys
import uuid

import pytest
import yaml

import vmdatabase
from devstackgate import config as configmod
from devstackgate import image
from devstackgate.errors import ConfigError
from localcloud.testing import local_clouds
from tests.gate_helpers import (ConfigOnly, GateRun, change_env, gate_pool, gerrit_with_changes,
                                local_cloud_config, write_config)
from tests.pool import ROOT

CLOUDS = os.path.join(ROOT, 'tests', 'fixtures', 'config', 'clouds.yaml')


@pytest.fixture(scope='module')
def gerrit(tmp_path_factory):
    return gerrit_with_changes(tmp_path_factory.mktemp('gerrit'))


@pytest.fixture
def pwned(tmp_path):
    """A file that exists only if some hostile value was run as a command."""
    path = tmp_path / ('pwned-%s' % uuid.uuid4().hex[:8])
    yield path
    assert not path.exists(), 'a hostile value ran a command: %s exists' % path


def attack(pwned):
    """git runs --upload-pack's value with sh -c: this creates `pwned` if it ever runs."""
    return '--upload-pack=touch %s;:' % pwned


# -- 1. a change ref (or branch, project, URL) that is an option ----------------------------

def change_env_with(ref, number=1001, **override):
    env = change_env(ref, number)
    env.update(override)
    return env


CHANGE_CASES = {
    # name: (environment, the variable the error names)
    'zuul-ref': (lambda base, a: dict(ZUUL_PROJECT='openstack/devstack', ZUUL_BRANCH='master',
                                      ZUUL_REF=a, ZUUL_URL=base), 'ZUUL_REF'),
    'zuul-url': (lambda base, a: dict(ZUUL_PROJECT='openstack/devstack', ZUUL_BRANCH='master',
                                      ZUUL_REF='refs/changes/01/1001/1', ZUUL_URL=a), 'ZUUL_URL'),
    'gerrit-url': (lambda base, a: dict(change_env('refs/changes/01/1001/1'),
                                        DEVSTACK_GATE_GERRIT_URL=a), 'DEVSTACK_GATE_GERRIT_URL'),
    'gerrit-branch': (lambda base, a: change_env('refs/changes/01/1001/1', branch=a),
                      'GERRIT_BRANCH'),
    'zuul-branch': (lambda base, a: dict(ZUUL_PROJECT='openstack/devstack', ZUUL_BRANCH=a,
                                         ZUUL_REF='refs/changes/01/1001/1', ZUUL_URL=base),
                    'ZUUL_BRANCH'),
    'gerrit-project': (lambda base, a: change_env('refs/changes/01/1001/1', project=a),
                       'GERRIT_PROJECT'),
    'change-number': (lambda base, a: dict(change_env('refs/changes/01/1001/1'),
                                           GERRIT_CHANGE_NUMBER='1001' + a[1:]),
                      'GERRIT_CHANGE_NUMBER'),
}


CHANGE_CASES['gerrit-refspec'] = (lambda base, a: change_env_with('refs/changes/01/1001/1',
                                                                  GERRIT_REFSPEC=a),
                                  'GERRIT_REFSPEC')


def gate_config(tmp_path, db_url, git_base, **gate_settings):
    """write_config, and its database (so that the label switches can be read)."""
    vmdatabase.Database(db_url).upgrade()
    return write_config(tmp_path, db_url, git_base, **gate_settings)


def assert_refused(code, out, variable, workspace):
    lines = out.splitlines()
    assert code == 2, out
    assert len(lines) == 1, out
    assert re.fullmatch(r'devstack-vm-gate: \$%s: .+ is not .+ \(see --help\)' % variable,
                        lines[0]), out
    # Refused before any git command: nothing was cloned.
    assert not (workspace / 'workspace').exists(), out


@pytest.mark.parametrize('case', sorted(CHANGE_CASES))
def test_an_option_as_a_change_value_runs_nothing(tmp_path, gerrit, sqlite_url, pwned, case):
    make, variable = CHANGE_CASES[case]
    config = gate_config(tmp_path, sqlite_url, gerrit.base)
    env = make(gerrit.base, attack(pwned))
    code, out = GateRun(ConfigOnly(config), tmp_path / 'jenkins', **env).run()
    assert_refused(code, out, variable, tmp_path / 'jenkins')


@pytest.mark.parametrize('ref', [
    'refs/changes/01/1001/1 $(touch {p})', 'refs/changes/01/1001/1`touch {p}`',
    "refs/changes/01/1001/1'; touch {p}; '", 'refs/changes/01/1001/1\n--upload-pack=touch {p};:',
    '-refs/changes/01/1001/1', 'refs/changes/../1001/1', 'refs/changes/01/1001/1.lock',
    'refs/changes/01/1001/1"', 'HEAD', '',
])
def test_a_ref_that_is_not_a_ref_is_one_clear_line(tmp_path, gerrit, sqlite_url, pwned, ref):
    config = gate_config(tmp_path, sqlite_url, gerrit.base)
    env = change_env_with('refs/changes/01/1001/1', GERRIT_REFSPEC=ref.format(p=pwned))
    code, out = GateRun(ConfigOnly(config), tmp_path / 'jenkins', **env).run()
    if ref == '':
        assert code == 2 and out.strip().endswith('GERRIT_PROJECT is set but GERRIT_REFSPEC is '
                                                  'empty (see --help)'), out
        return
    assert_refused(code, out, 'GERRIT_REFSPEC', tmp_path / 'jenkins')
    assert 'expected a git ref such as refs/changes/01/1001/1' in out


def test_a_good_change_still_merges_with_a_hostile_looking_job_name(tmp_path, gerrit,
                                                                    sqlite_url, pwned):
    """What is not refused is data: a Jenkins job name with $(...), backticks, quotes and a
    newline is printed on one line and runs nothing."""
    config = gate_config(tmp_path, sqlite_url, gerrit.base)
    job = 'gate $(touch %s) `touch %s` "q" \'s\'\nADMIN_PASSWORD=x' % (pwned, pwned)
    run = GateRun(ConfigOnly(config), tmp_path / 'jenkins', job=job, build='7; touch %s' % pwned,
                  **change_env(gerrit.changes['pass']))
    code, out = run.run('--label', 'oneiric')
    assert code == 1, out      # no ready node: the workspace was prepared and merged
    assert "no ready node of label 'oneiric'" in out
    first = out.splitlines()[0]
    assert ('gate $(touch %s) `touch %s` "q" \'s\'?ADMIN_PASSWORD=x #7; touch %s: change 1001,1'
            % (pwned, pwned, pwned)) in first, out
    assert 'hello exercise' in out


# -- 1b. the same through the configuration: refused as config errors ------------------------

@pytest.mark.parametrize('key,value,expected', [
    ('branch', '{a}', 'gate.branch: expected a git branch name'),
    ('branch', '-b', 'gate.branch: expected a git branch name'),
    ('branch', 'a..b', 'gate.branch: expected a git branch name'),
    ('projects', ['openstack/devstack', '{a}'], 'gate.projects: expected a list of project paths'),
    ('projects', ['-x/devstack'], 'gate.projects: expected a list of project paths'),
    ('git-base', '{a}', 'gate.git-base: expected a URL or a directory'),
    ('git-base', 'https://example.org\n--upload-pack=x', 'gate.git-base: expected a URL or a '
                                                          'directory'),
])
def test_an_option_in_the_gate_configuration_is_a_config_error(tmp_path, gerrit, sqlite_url,
                                                               pwned, key, value, expected):
    a = attack(pwned)
    value = [v.format(a=a) for v in value] if isinstance(value, list) else value.format(a=a)
    config = gate_config(tmp_path, sqlite_url, gerrit.base, **{key: value})
    code, out = GateRun(ConfigOnly(config), tmp_path / 'jenkins',
                        **change_env(gerrit.changes['pass'])).run()
    assert code == 2, out
    (line,) = out.splitlines()
    assert line.startswith('devstack-vm-gate-settings: %s: %s' % (config, expected)), line
    assert not (tmp_path / 'jenkins' / 'workspace').exists()


# -- 5. names: refused cleanly by the configuration --------------------------------------------

HOSTILE = ["rax'", 'ra x', 'rax$(touch {p})', 'rax`touch {p}`', '-rax', 'rax\n', 'ra\nx',
           'rax"', 'rax;id', '']


def base_config(tmp_path, **top):
    data = {'database': 'sqlite:///%s' % (tmp_path / 'never.db'),
            'providers': [{'name': 'rax', 'cloud': 'rax', 'images': [
                {'name': 'precise', 'base-image': 'Ubuntu'}]}]}
    data.update(top)
    return data


def write(tmp_path, data, name='devstack-gate.yaml'):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def load_errors(path):
    with pytest.raises(ConfigError) as e:
        configmod.load(path, environ={'OS_CLIENT_CONFIG_FILE': CLOUDS})
    assert e.value.exit_code == 2
    return e.value.lines()


@pytest.mark.parametrize('value', HOSTILE)
@pytest.mark.parametrize('where', ['provider', 'label', 'node-prefix', 'keypair', 'username',
                                   'node-name-format', 'image-name-format'])
def test_hostile_names_are_clean_config_errors(tmp_path, pwned, where, value):
    value = value.format(p=pwned)
    data = base_config(tmp_path)
    provider = data['providers'][0]
    key = {'provider': 'providers[0].name', 'label': 'providers[0].images[0].name',
           'keypair': 'providers[0].keypair', 'username': 'providers[0].images[0].username'
           }.get(where, where)
    if where == 'provider':
        provider['name'] = value
    elif where == 'label':
        provider['images'][0]['name'] = value
    elif where == 'keypair':
        provider['keypair'] = value
    elif where == 'username':
        provider['images'][0]['username'] = value
    elif where.endswith('-format'):
        data[where] = value + '-{id}'
    else:
        data[where] = value
    path = write(tmp_path, data)
    lines = load_errors(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith('%s: %s: expected ' % (path, key)), lines
    assert '\n' not in lines[0]
    shown = data[where] if where in data else value
    assert lines[0].endswith(', got %r' % shown if shown else ', got an empty string'), lines


def test_a_hostile_name_through_a_script_is_exit_2_without_a_traceback(tmp_path, pwned):
    data = base_config(tmp_path, **{'node-name-format': '{prefix}-$(touch %s)-{id}' % pwned})
    path = write(tmp_path, data)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'devstack-vm-fetch.py'),
                           '--config', path, 'precise'], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "devstack-vm-fetch: %s: node-name-format: expected a name format using {id} and only "
        "{prefix}, {label}, {provider}, {id}, otherwise letters, digits, \".\", \"_\" or \"-\", "
        "got '{prefix}-$(touch %s)-{id}'" % (path, pwned)]
    assert not (tmp_path / 'never.db').exists()


def test_a_provider_name_with_a_dot_gets_a_valid_keypair_name(tmp_path):
    """Nova refuses keypair names with '.': the default keypair of provider rax.dfw is
    dg-rax-dfw; an explicit keypair with a '.' is a config error."""
    data = base_config(tmp_path)
    data['providers'][0]['name'] = 'rax.dfw'
    cfg = configmod.load(write(tmp_path, data), check_clouds=False)
    assert cfg.provider('rax.dfw').settings.keypair == 'dg-rax-dfw'
    data['providers'][0]['keypair'] = 'my.key'
    path = write(tmp_path, data)
    assert load_errors(path) == [
        "%s: providers[0].keypair: expected a keypair name of letters, digits, \"_\" or \"-\", "
        "got 'my.key'" % path]


def test_hostile_values_that_pass_through_reach_the_node_as_data(tmp_path, gerrit, sqlite_url,
                                                                 pwned):
    """End to end on a real node: the test command and the label in its environment, a job
    name with a newline and $(...), arrive as data; local.conf gets no extra line."""
    command = ('cd devstack && printf "label=[%s] q=[%s]\\n" "$DEVSTACK_GATE_LABEL" '
               '"it\'s \\"$(printf %s quoted)\\" \\$HOME" && ./exercise.sh')
    job = 'gate $(touch %s) `touch %s`\nADMIN_PASSWORD=injected' % (pwned, pwned)
    with local_clouds(local_cloud_config(tmp_path), tmp_dir=str(tmp_path)) as clouds:
        pool = gate_pool(tmp_path, clouds, sqlite_url, gerrit.base,
                         projects=['openstack/devstack'], **{'test-command': command})
        assert pool.run('devstack-vm-launch.py', 'rax').returncode == 0
        run = GateRun(pool, tmp_path / 'jenkins', job=job, **change_env(gerrit.changes['pass']))
        code, out = run.run()
    assert code == 0, out
    assert 'label=[precise] q=[it\'s "quoted" $HOME]' in out
    assert 'hello.sh: change 1001 is on the node' in out
    conf = (tmp_path / 'jenkins' / 'workspace' / 'devstack' / 'local.conf').read_text()
    assert 'injected' not in conf.replace('?ADMIN_PASSWORD=injected', '')
    assert conf.splitlines()[0].startswith('# Written by devstack-vm-gate.sh for gate $(touch')
    assert len(re.findall(r'^ADMIN_PASSWORD=', conf, re.M)) == 1


# -- 2. a config file that is not UTF-8 --------------------------------------------------------

def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / 'latin1.yaml'
    path.write_bytes(b'# r\xe9seau\nproviders: []\n')
    assert load_errors(str(path)) == [
        '%s: not valid UTF-8 (byte 0xe9 at offset 3): expected a YAML file in UTF-8' % path]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'devstack-vm-fetch.py'),
                           '--config', str(path), 'precise'], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        'devstack-vm-fetch: %s: not valid UTF-8 (byte 0xe9 at offset 3): expected a YAML file '
        'in UTF-8' % path]


def test_a_clouds_yaml_that_is_not_utf8_is_a_config_error(tmp_path):
    clouds = tmp_path / 'clouds.yaml'
    clouds.write_bytes(b'clouds:\n  rax: {auth: {password: "\xff"}}\n')
    path = write(tmp_path, base_config(tmp_path))
    with pytest.raises(ConfigError) as e:
        configmod.load(path, environ={'OS_CLIENT_CONFIG_FILE': str(clouds)})
    assert e.value.lines() == [
        '%s: not valid UTF-8 (byte 0xff at offset 34): expected a clouds.yaml in UTF-8' % clouds]


# -- 3. a bad database URL is a config error -------------------------------------------------

@pytest.mark.parametrize('url,message', [
    ('postgres://db.example.org/dg',
     "database URL: unknown scheme 'postgres'; valid choices are sqlite, mysql"),
    ('sqlite://relative.db', "database URL 'sqlite://relative.db': expected sqlite:///PATH"),
    ('mysql://dg:s3cret-pw@db.example.org/dg',
     'database URL mysql://dg@...: a password must not be part of the URL; set '
     '$DEVSTACK_GATE_DB_PASSWORD or use an option file ($DEVSTACK_GATE_DB_OPTION_FILE or '
     '?option-file=PATH)'),
    ('dg:s3cret-pw@db.example.org/dg',
     "database URL '...@db.example.org/dg': expected sqlite:///PATH or "
     "mysql://USER@HOST:PORT/DATABASE"),
])
def test_a_bad_database_url_is_a_config_error_before_anything_is_touched(tmp_path, url,
                                                                         message):
    path = write(tmp_path, base_config(tmp_path, database=url))
    assert load_errors(path) == ['%s: database: %s' % (path, message)]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'devstack-vm-fetch.py'),
                           '--config', path, 'precise'], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ['devstack-vm-fetch: %s: database: %s' % (path, message)]
    assert 's3cret' not in proc.stderr + proc.stdout
    assert sorted(os.listdir(tmp_path)) == ['devstack-gate.yaml']


# -- 4. image names stay unique --------------------------------------------------------------

def test_two_image_builds_in_one_second_get_different_names(tmp_path):
    path = write(tmp_path, base_config(tmp_path))
    cfg = configmod.load(path, check_clouds=False)
    assert cfg.image_name_format == '{prefix}-{label}-{provider}-{timestamp}-{id}'
    db = vmdatabase.Database('sqlite:///%s' % (tmp_path / 'dg.db')).upgrade()
    first = image.create_image_row(db, cfg, 'rax', 'precise')
    second = image.create_image_row(db, cfg, 'rax', 'precise')
    assert first.name != second.name
    assert re.fullmatch(r'dg-precise-rax-\d{8}T\d{6}Z-%d' % first.id, first.name), first.name
    assert second.name.endswith('-%d' % second.id)
    rows = db.transact(lambda s: s.images())
    assert [r.name for r in rows] == [first.name, second.name]


def test_the_reaper_knows_our_images_by_metadata_whatever_their_name(tmp_path):
    from devstackgate import cloud, reap
    path = write(tmp_path, base_config(tmp_path))
    cfg = configmod.load(path, check_clouds=False)
    db = vmdatabase.Database('sqlite:///%s' % (tmp_path / 'dg.db')).upgrade()
    row = image.create_image_row(db, cfg, 'rax', 'precise')

    def snapshot(image_id, name):
        return cloud.Image(image_id, name, 'active',
                           cloud.tags('rax', 'image', 'precise', image_id=int(image_id)),
                           '2013-01-01T00:00:00Z')
    ours, leaked = snapshot(str(row.id), row.name), snapshot('999', 'dg-precise-rax-x-999')
    _, images = reap.untracked('rax', [], [row], [], [ours, leaked])
    assert images == {'999': 'dg-precise-rax-x-999'}


def test_an_image_name_format_without_id_is_a_config_error(tmp_path):
    path = write(tmp_path, base_config(tmp_path, **{
        'image-name-format': '{prefix}-{label}-{provider}-{timestamp}'}))
    assert load_errors(path) == [
        "%s: image-name-format: expected a name format using {id} and only {prefix}, {label}, "
        "{provider}, {timestamp}, {id}, otherwise letters, digits, \".\", \"_\" or \"-\", got "
        "'{prefix}-{label}-{provider}-{timestamp}'" % path]


# -- 6. files that hold passwords ------------------------------------------------------------

def test_a_secret_file_others_can_read_gets_one_warning(tmp_path, caplog):
    from devstackgate import secrets
    clouds = tmp_path / 'clouds.yaml'
    clouds.write_text('clouds: {}\n')
    clouds.chmod(0o600)
    caplog.set_level(logging.WARNING)
    assert secrets.warn_if_readable(str(clouds), 'clouds.yaml') is False
    assert caplog.records == []
    clouds.chmod(0o644)
    assert secrets.warn_if_readable(str(clouds), 'clouds.yaml') is True
    (record,) = caplog.records
    assert record.levelname == 'WARNING'
    assert record.getMessage() == (
        'clouds.yaml %s is readable by others (mode 0644) and holds passwords: chmod 600 it'
        % clouds)
    # Once per file and process; a missing file or a device (/dev/null) is not a warning.
    assert secrets.warn_if_readable(str(clouds), 'clouds.yaml') is False
    assert secrets.warn_if_readable(str(tmp_path / 'missing'), 'MySQL option file') is False
    assert secrets.warn_if_readable(os.devnull, 'MySQL option file') is False
    assert secrets.warn_if_readable(None, 'MySQL option file') is False
    options = tmp_path / 'my.cnf'
    options.write_text('[client]\npassword=x\n')
    options.chmod(0o640)
    assert secrets.warn_if_readable(str(options), 'MySQL option file') is True
    assert caplog.records[-1].getMessage() == (
        'MySQL option file %s is readable by its group (mode 0640) and holds passwords: '
        'chmod 600 it' % options)
    assert len(caplog.records) == 2


# -- node-setup: a project source that is an option ------------------------------------------

def test_prepare_node_refuses_a_project_source_that_is_an_option(tmp_path, pwned):
    # Its own module name: test_devstack_cache's copy of the planner stays as it is.
    spec = importlib.util.spec_from_file_location(
        'devstack_cache_plan_hostile', os.path.join(ROOT, 'node-setup', 'devstack_cache_plan.py'))
    plan = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = plan       # its dataclasses look their module up while it loads
    spec.loader.exec_module(plan)
    hostile = '--upload-pack=touch${IFS}%s@h:x' % pwned
    with pytest.raises(plan.PlanError, match='must not begin with "-"'):
        plan.parse_project('nova=' + hostile)
    with pytest.raises(plan.PlanError, match='must not begin with "-"'):
        plan.parse_project(hostile)


def test_a_password_in_a_git_url_is_not_printed(tmp_path, sqlite_url):
    """Jenkins consoles are public: a URL's password never reaches the console or the logs."""
    config = gate_config(tmp_path, sqlite_url, 'https://ci:s3cret@127.0.0.1:1/git',
                         **{'git-retries': 1})
    run = GateRun(ConfigOnly(config), tmp_path / 'jenkins',
                  DEVSTACK_GATE_GERRIT_URL='https://ci:t0ken@127.0.0.1:1/review',
                  **change_env('refs/changes/01/1001/1'))
    code, out = run.run()
    assert code == 1, out
    assert 'cannot clone https://ci:***@127.0.0.1:1/git/openstack/devstack' in out, out
    logs = ''.join(p.read_text() for p in (run.workspace / 'logs').rglob('*.txt'))
    assert 's3cret' not in out + logs and 't0ken' not in out + logs


@pytest.mark.parametrize('label', ['-x$(touch {p})', '--label=`touch {p}`', 'precise\n-x'])
def test_a_hostile_label_argument_is_one_clear_line(tmp_path, sqlite_url, pwned, label):
    config = gate_config(tmp_path, sqlite_url, str(tmp_path / 'git'))
    code, out = GateRun(ConfigOnly(config), tmp_path / 'jenkins').run(
        '--label', label.format(p=pwned))
    assert code == 2, out
    assert out.splitlines() == [
        'devstack-vm-gate-settings: label %r: no provider offers it; known labels: oneiric, '
        'precise' % label.format(p=pwned)], out


def test_a_hostile_key_is_named_on_one_line(tmp_path):
    data = base_config(tmp_path, **{'hold-hours\n--x': 1, 'disabled-labels': {'a\nb': 'why'}})
    path = write(tmp_path, data)
    lines = load_errors(path)
    assert len(lines) == 2 and all('\n' not in line for line in lines), lines
    assert lines[0].startswith("%s: 'hold-hours\\n--x': unknown key; valid keys are: " % path)
    assert lines[1] == ("%s: disabled-labels.'a\\nb': no provider offers this label; labels: "
                        "precise" % path)


@pytest.mark.parametrize('var', ['DEVSTACK_GATE_DEVSTACK_BRANCH', 'DEVSTACK_GATE_DEVSTACK_REPO'])
def test_update_image_sh_refuses_an_option_for_a_branch_or_repo(tmp_path, var):
    pwned = tmp_path / 'pwned'
    env = dict(os.environ, HOME=str(tmp_path), **{var: '--upload-pack=touch %s' % pwned})
    proc = subprocess.run([os.path.join(ROOT, 'devstack-vm-update-image.sh'), 'rax'], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert '$%s:' % var in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not pwned.exists()


def test_build_keypair_names_are_valid_nova_names_and_found_again_by_the_reaper():
    from devstackgate import image
    name = image.build_keypair_name('dg', '12.04', 'rax.dfw', 7)
    assert name == 'dg-build-12-04-rax-dfw-7'
    assert image.build_keypair_row('dg', 'rax.dfw', name) == 7
    assert image.build_keypair_row('dg', 'rax', name) is None

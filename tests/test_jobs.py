"""The Jenkins jobs: generated from the example configuration, rendered by the real JJB.

``jenkins-jobs test`` (the venv's, from the [test] extra) renders jobs/ to XML
without contacting any Jenkins; the XML is then checked against the
configuration (axes, combination filter, timers, timeouts, environment), and
every shell builder is run for real against the scripts of this checkout.
"""

import itertools
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from devstackgate import config as configmod
from devstackgate import jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join('etc', 'devstack-gate.example.yaml')
PROJECTS = os.path.join(ROOT, 'jobs', 'projects.yaml')
TEMPLATES = os.path.join(ROOT, 'jobs', 'devstack-gate.yaml')
JJB = os.path.join(os.path.dirname(sys.executable), 'jenkins-jobs')
REGENERATE = 'python3 devstack-vm-jobs.py --config %s --output jobs/projects.yaml' % EXAMPLE

MATRIX_JOBS = (jobs.IMAGE_JOB, jobs.LAUNCH_JOB, jobs.REAP_JOB)
STRICT_BASH = '#!/bin/bash\nset -euo pipefail\n'
# What each job's builder runs, and the usage line that proves the script answered.
SCRIPTS = {
    jobs.IMAGE_JOB: ('devstack-vm-update-image.sh', 'usage: devstack-vm-update-image '),
    jobs.LAUNCH_JOB: ('devstack-vm-launch.py', 'usage: devstack-vm-launch '),
    jobs.REAP_JOB: ('devstack-vm-reap.py', 'usage: devstack-vm-reap '),
    jobs.GATE_JOB: ('devstack-vm-gate.sh', 'usage: devstack-vm-gate.sh '),
}
OWN_USAGE = {
    'devstack-vm-update-image.sh': 'usage: devstack-vm-update-image.sh ',
    'devstack-vm-launch.py': 'usage: devstack-vm-launch ',
    'devstack-vm-reap.py': 'usage: devstack-vm-reap ',
    'devstack-vm-gate.sh': 'usage: devstack-vm-gate.sh ',
}


def generate(*args):
    return subprocess.run([sys.executable, 'devstack-vm-jobs.py'] + list(args), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def clean_env(home, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('DEVSTACK_GATE_', 'OS_', 'STATSD_'))}
    env.update(HOME=str(home), LC_ALL='C.UTF-8', **extra)
    return env


def jjb_test(jobs_dir, work):
    """Run the real `jenkins-jobs test`; return (process, {job name: XML root})."""
    ini = work / 'jenkins_jobs.ini'
    ini.write_text('[job_builder]\nignore_cache=True\n')   # no server, no cache
    out = work / 'out'
    proc = subprocess.run([JJB, '--conf', str(ini), 'test', '--config-xml', '-o', str(out),
                           str(jobs_dir)], capture_output=True, text=True, timeout=120,
                          env=clean_env(work))
    assert proc.returncode == 0, proc.stderr
    rendered = {name: ET.parse(str(out / name / 'config.xml')).getroot()
                for name in sorted(os.listdir(out))}
    return proc, rendered


@pytest.fixture(scope='module')
def example():
    return configmod.load(os.path.join(ROOT, EXAMPLE), check_clouds=False)


@pytest.fixture(scope='module')
def rendered(tmp_path_factory):
    """The committed jobs/ directory, as the operator renders it."""
    return jjb_test(os.path.join(ROOT, 'jobs'), tmp_path_factory.mktemp('jjb'))


@pytest.fixture(scope='module')
def local(tmp_path_factory):
    """Jobs generated for this checkout as the slaves' install dir (through a path with
    a space, to prove the quoting), this venv's Python and a statsd host."""
    work = tmp_path_factory.mktemp('local-jobs')
    install = work / 'dev stack gate'
    install.symlink_to(ROOT)
    jobs_dir = work / 'jobs'
    jobs_dir.mkdir()
    shutil.copy(TEMPLATES, jobs_dir / 'devstack-gate.yaml')
    proc = generate('--config', EXAMPLE, '--output', str(jobs_dir / 'projects.yaml'),
                    '--install-dir', str(install), '--python', sys.executable,
                    '--statsd-host', 'statsd.example.org')
    assert proc.returncode == 0, proc.stderr
    _, xml = jjb_test(jobs_dir, work)
    return work, install, xml


# -- the generated file is committed and current --------------------------------------------

def test_committed_projects_yaml_is_the_generators_output_for_the_example_config():
    proc = generate('--config', EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    with open(PROJECTS, encoding='utf-8') as f:
        committed = f.read()
    assert proc.stdout == committed, 'jobs/projects.yaml is stale: run %s' % REGENERATE
    assert proc.stderr == ''


def test_output_option_writes_the_same_text(tmp_path):
    out = tmp_path / 'projects.yaml'
    proc = generate('--config', EXAMPLE, '--output', str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ''
    with open(PROJECTS, encoding='utf-8') as f:
        assert out.read_text() == f.read()
    assert proc.stderr == 'devstack-vm-jobs: wrote %s (4 jobs for providers rax, hpcloud)\n' % out
    assert [p.name for p in tmp_path.iterdir()] == ['projects.yaml']   # no temporary left


def test_generated_file_says_how_to_regenerate_it():
    with open(PROJECTS, encoding='utf-8') as f:
        head = f.read().split('\n- project:')[0]
    assert head.startswith('# GENERATED from %s by devstack-vm-jobs.py: do not edit' % EXAMPLE)
    assert 'devstack-vm-jobs.py --config %s --output jobs/projects.yaml' % EXAMPLE in head


def test_help():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'devstack-vm-jobs.py'), '--help'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith('usage: devstack-vm-jobs ')
    for option in ('--config', '--output', '--install-dir', '--slave-config', '--python',
                   '--statsd-host', '--node', '--gate-node'):
        assert option in proc.stdout
    assert 'stdout' in proc.stdout


# -- jenkins-jobs test -------------------------------------------------------------------------

def test_jenkins_jobs_renders_the_four_jobs_without_warnings(rendered):
    proc, xml = rendered
    warnings = [line for line in proc.stderr.splitlines() if re.search('warn', line, re.I)]
    assert warnings == []
    assert sorted(xml) == sorted(jobs.JOB_NAMES)
    assert {name for name, root in xml.items() if root.tag == 'matrix-project'} == set(MATRIX_JOBS)


def axes(root):
    return {axis.find('name').text: (axis.tag, [s.text for s in axis.find('values')])
            for axis in root.find('axes')}


def test_matrix_axes_are_the_providers_and_labels_of_the_config(rendered, example):
    _, xml = rendered
    providers = [p.name for p in example.providers]
    labels = sorted({i.name for p in example.providers for i in p.images})
    node = ('hudson.matrix.LabelAxis', [jobs.DEFAULT_NODE])   # cells run on these slaves
    assert axes(xml[jobs.IMAGE_JOB]) == {'provider': ('hudson.matrix.TextAxis', providers),
                                         'label': ('hudson.matrix.TextAxis', labels),
                                         'node': node}
    for name in (jobs.LAUNCH_JOB, jobs.REAP_JOB):
        assert axes(xml[name]) == {'provider': ('hudson.matrix.TextAxis', providers),
                                   'node': node}
        assert xml[name].find('combinationFilter') is None


# A tiny evaluator for the combination filter's Groovy: ||, &&, ==, parentheses, axis names
# and double-quoted strings.  Anything else in the filter is an error.
_TOKEN = re.compile(r'\s*(?:(\(|\)|&&|\|\||==)|([A-Za-z_]\w*)|"([A-Za-z0-9_.-]*)")')


def evaluate(expression, variables):
    tokens, pos = [], 0
    expression = expression.rstrip()
    while pos < len(expression):
        m = _TOKEN.match(expression, pos)
        assert m, 'unexpected text in the filter at %r' % expression[pos:]
        tokens.append(('op', m.group(1)) if m.group(1) else
                      ('name', m.group(2)) if m.group(2) else ('str', m.group(3)))
        pos = m.end()
    tokens.append(('end', None))
    at = [0]

    def take(kind=None, value=None):
        token = tokens[at[0]]
        assert (kind is None or token[0] == kind) and (value is None or token[1] == value), \
            'unexpected %r in the filter' % (token,)
        at[0] += 1
        return token[1]

    def disjunction():
        result = conjunction()
        while tokens[at[0]] == ('op', '||'):
            take()
            result = conjunction() or result
        return result

    def conjunction():
        result = comparison()
        while tokens[at[0]] == ('op', '&&'):
            take()
            result = comparison() and result
        return result

    def comparison():
        if tokens[at[0]] == ('op', '('):
            take()
            result = disjunction()
            take('op', ')')
            return result
        name = take('name')
        take('op', '==')
        return variables[name] == take('str')

    result = disjunction()
    take('end')
    return result


def test_the_filter_evaluator_is_strict():
    assert evaluate('(a == "x" && b == "y") || a == "z"', {'a': 'z', 'b': 'q'})
    assert not evaluate('(a == "x" && b == "y") || a == "z"', {'a': 'x', 'b': 'q'})
    for bad in ('a != "x"', 'a == "x" ||', 'a == x', '(a == "x"', 'a == "x" ; b'):
        with pytest.raises(AssertionError):
            evaluate(bad, {'a': 'x', 'b': 'y'})


def test_combination_filter_admits_exactly_the_offered_pairs(rendered, example):
    _, xml = rendered
    root = xml[jobs.IMAGE_JOB]
    expression = root.find('combinationFilter').text
    values = axes(root)
    offered = {(p.name, i.name) for p in example.providers for i in p.images}
    admitted = {(provider, label)
                for provider, label in itertools.product(values['provider'][1],
                                                         values['label'][1])
                if evaluate(expression, {'provider': provider, 'label': label,
                                         'node': jobs.DEFAULT_NODE})}
    assert admitted == offered
    # The example is one where the filter matters: not every provider has every label.
    assert len(offered) < len(values['provider'][1]) * len(values['label'][1])


def timer(root):
    return root.find('triggers/hudson.triggers.TimerTrigger/spec').text


def timeout(root):
    wrapper = root.find('buildWrappers/hudson.plugins.build__timeout.BuildTimeoutWrapper')
    strategy = wrapper.find('strategy')
    assert strategy.get('class') == 'hudson.plugins.build_timeout.impl.AbsoluteTimeOutStrategy'
    assert wrapper.find('operationList/hudson.plugins.build__timeout.operations.FailOperation') \
        is not None
    return int(strategy.find('timeoutMinutes').text)


def test_timers_are_as_documented(rendered):
    _, xml = rendered
    assert timer(xml[jobs.IMAGE_JOB]) == 'H 2 * * *'       # nightly
    assert timer(xml[jobs.LAUNCH_JOB]) == 'H/10 * * * *'   # every 10 minutes
    assert timer(xml[jobs.REAP_JOB]) == 'H * * * *'        # hourly
    assert xml[jobs.GATE_JOB].find('triggers/hudson.triggers.TimerTrigger') is None


def test_timeouts_are_as_documented_and_fit_their_periods(rendered, example):
    _, xml = rendered
    got = {name: timeout(xml[name]) for name in jobs.JOB_NAMES}
    # The example's values (README), so a change of formula is a visible change.
    assert got == {jobs.IMAGE_JOB: 233, jobs.LAUNCH_JOB: 9, jobs.REAP_JOB: 30,
                   jobs.GATE_JOB: 160}
    c, g = example, example.gate
    # launch: inside its 10 minutes, after its own deadline plus a minute
    assert c.launch_deadline + 60 <= got[jobs.LAUNCH_JOB] * 60 < 10 * 60
    assert got[jobs.REAP_JOB] < 60
    image_limits = (max(p.boot_timeout for p in c.providers) + c.image_build_timeout
                    + c.snapshot_timeout + c.launch_deadline)
    assert image_limits + 15 * 60 <= got[jobs.IMAGE_JOB] * 60 < 24 * 3600
    gate_limits = g.test_timeout + g.fetch_wait + 2 * g.rsync_timeout
    assert gate_limits + 10 * 60 <= got[jobs.GATE_JOB] * 60 < c.max_used_hours * 3600


def test_no_job_overlaps_itself_and_cells_run_at_once(rendered):
    _, xml = rendered
    for name, root in xml.items():
        assert root.find('concurrentBuild').text == 'false', name
    for name in MATRIX_JOBS:
        strategy = xml[name].find('executionStrategy')
        assert strategy.get('class') == 'hudson.matrix.DefaultMatrixExecutionStrategyImpl'
        assert strategy.find('runSequentially').text == 'false'


def test_gate_job_is_triggered_by_gerrit_and_archives_logs_always(rendered, example):
    _, xml = rendered
    root = xml[jobs.GATE_JOB]
    trigger = root.find('triggers/com.sonyericsson.hudson.plugins.gerrit.trigger.'
                        'hudsontrigger.GerritTrigger')
    projects = [p.find('pattern').text for p in trigger.find('gerritProjects')]
    assert projects == list(example.gate.projects)
    events = {e.tag.rsplit('.', 1)[1]: e for e in trigger.find('triggerOnEvents')}
    assert events['PluginCommentAddedEvent'].find('verdictCategory').text == 'Workflow'
    assert events['PluginCommentAddedEvent'].find('commentAddedTriggerApprovalValue').text == '1'
    assert re.search(events['PluginCommentAddedContainsEvent']
                     .find('commentAddedCommentContains').text, 'Patch Set 3:\n\nreverify\n')
    archiver = root.find('publishers/hudson.tasks.ArtifactArchiver')
    assert archiver.find('artifacts').text == 'logs/**'
    assert archiver.find('onlyIfSuccessful').text == 'false'
    assert archiver.find('allowEmptyArchive').text == 'true'
    assert root.find('assignedNode').text == jobs.DEFAULT_NODE


def environment(root):
    text = root.find('buildWrappers/EnvInjectBuildWrapper/info/propertiesContent').text
    return dict(line.split('=', 1) for line in text.splitlines())


def test_environment_of_every_job(rendered, local):
    _, xml = rendered
    for root in xml.values():
        assert environment(root) == {'DEVSTACK_GATE_CONFIG': jobs.DEFAULT_SLAVE_CONFIG,
                                     'DEVSTACK_GATE_DIR': jobs.DEFAULT_INSTALL_DIR,
                                     'DEVSTACK_GATE_PYTHON': 'python3',
                                     'PYTHONUNBUFFERED': '1'}
    _, install, local_xml = local
    for root in local_xml.values():
        env = environment(root)
        assert env['DEVSTACK_GATE_DIR'] == str(install)
        assert env['DEVSTACK_GATE_PYTHON'] == sys.executable
        assert env['STATSD_HOST'] == 'statsd.example.org'


def builder(root):
    [command] = [s.find('command').text for s in root.find('builders')]
    return command


def test_builders_are_strict_bash_with_every_substitution_quoted(rendered):
    _, xml = rendered
    for name, root in xml.items():
        command = builder(root)
        assert command.startswith(STRICT_BASH), name
        assert '$' in command
        assert '$' not in re.sub(r'"[^"$]*(\$\w+[^"$]*)+"', '', command), \
            '%s: an unquoted $ in %r' % (name, command)


def test_builders_are_clean_under_shellcheck(rendered):
    if shutil.which('shellcheck') is None:
        if os.environ.get('CI') == 'true':
            pytest.fail('shellcheck is not installed; ./dev.sh test installs it')
        pytest.skip('shellcheck is not installed; ./dev.sh test installs it')
    _, xml = rendered
    for name, root in xml.items():
        # SC2154 (referenced but not assigned): $provider and $label are the matrix axes,
        # which Jenkins puts in the environment.
        proc = subprocess.run(['shellcheck', '--exclude=SC2154', '-'], input=builder(root),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (name, proc.stdout)


# -- the builders, run for real --------------------------------------------------------------

def cells(name, config):
    if name == jobs.IMAGE_JOB:
        return [{'provider': p.name, 'label': i.name} for p in config.providers
                for i in p.images]
    if name in MATRIX_JOBS:
        return [{'provider': p.name} for p in config.providers]
    return [{}]


@pytest.fixture(scope='module')
def devstack_origin(tmp_path_factory):
    """A local devstack repository, so the image wrapper's checkout update needs no network."""
    origin = tmp_path_factory.mktemp('devstack-origin')
    for args in (['init', '-q', '-b', 'master'], ['commit', '-q', '--allow-empty', '-m', 'x']):
        subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@example.org'] + args,
                       cwd=origin, check=True, capture_output=True, timeout=60)
    return origin


def run_builder(command, env, cwd, append=''):
    lines = command.rstrip('\n').split('\n')
    assert lines[-1].startswith('exec "$DEVSTACK_GATE_')
    lines[-1] += append
    return subprocess.run(['bash', '-c', '\n'.join(lines) + '\n'], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def builder_env(job_env, cell, work, origin):
    return clean_env(work / 'home', **job_env, **cell,
                     WORKSPACE=str(work / 'workspace'),
                     DEVSTACK_GATE_DEVSTACK_REPO=str(origin),
                     DEVSTACK_GATE_GIT_RETRIES='1')


@pytest.mark.parametrize('name', jobs.JOB_NAMES)
def test_every_builder_calls_its_script_with_arguments_it_accepts(name, local, example,
                                                                  devstack_origin):
    work, install, xml = local
    (work / 'workspace').mkdir(exist_ok=True)
    (work / 'home').mkdir(exist_ok=True)
    root = xml[name]
    command = builder(root)
    script, usage = SCRIPTS[name]
    assert '"$DEVSTACK_GATE_DIR/%s"' % script in command
    assert os.access(os.path.join(ROOT, script), os.X_OK)
    for n, cell in enumerate(cells(name, example)):
        env = builder_env(environment(root), cell, work, devstack_origin)
        if n == 0:
            # With --help appended: the script answers with its own usage, exit 0.
            proc = run_builder(command, env, work / 'workspace', ' --help')
            assert proc.returncode == 0, (cell, proc.stderr)
            assert proc.stdout.startswith(usage), (cell, proc.stdout)
        # As Jenkins runs it, with a configuration that is not there: the arguments parse
        # (no usage error) and the script stops at the configuration, exit 2, one line.
        missing = str(work / 'no-such-config.yaml')
        proc = run_builder(command, dict(env, DEVSTACK_GATE_CONFIG=missing), work / 'workspace')
        assert proc.returncode == 2, (cell, proc.stderr)
        assert 'usage:' not in proc.stderr
        assert '%s: cannot read: No such file or directory' % missing in proc.stderr
    if name == jobs.IMAGE_JOB:     # each cell's own devstack checkout, in its workspace
        assert (work / 'workspace' / 'devstack' / '.git').is_dir()


@pytest.mark.parametrize('script', sorted(OWN_USAGE))
def test_the_scripts_the_jobs_call_have_help(script, tmp_path):
    # As the builders call them: the Python ones through $DEVSTACK_GATE_PYTHON.
    command = [os.path.join(ROOT, script), '--help']
    if script.endswith('.py'):
        command.insert(0, sys.executable)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=clean_env(tmp_path, DEVSTACK_GATE_PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(OWN_USAGE[script])


# -- bad input ----------------------------------------------------------------------------------

def test_unknown_config_path_is_one_line_and_exit_2():
    proc = generate('--config', '/nonexistent/devstack-gate.yaml')
    assert proc.returncode == 2
    assert proc.stdout == ''
    assert proc.stderr == ('devstack-vm-jobs: /nonexistent/devstack-gate.yaml: cannot read: '
                           'No such file or directory\n')


@pytest.mark.parametrize('args, message', [
    (['--install-dir', 'opt/devstack-gate'],
     "devstack-vm-jobs: --install-dir: expected an absolute path on the Jenkins slaves, "
     "got 'opt/devstack-gate'\n"),
    (['--slave-config', '/etc/$USER.yaml'],
     "devstack-vm-jobs: --slave-config: expected printable ASCII without \"$\", \"\\\" or "
     "surrounding spaces (it becomes an EnvInject property), got '/etc/$USER.yaml'\n"),
    (['--statsd-host', 'statsd host'],
     "devstack-vm-jobs: --statsd-host: expected a host name or address, got 'statsd host'\n"),
    (['--node', 'a && b'],
     "devstack-vm-jobs: --node: expected a name of letters, digits, \".\", \"_\" or \"-\", "
     "got 'a && b'\n"),
])
def test_bad_options_are_one_line_and_exit_2(args, message, tmp_path):
    out = tmp_path / 'projects.yaml'
    proc = generate('--config', EXAMPLE, '--output', str(out), *args)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, message, '')
    assert not out.exists()


def write_config(tmp_path, **values):
    """The example configuration with some top-level values changed."""
    with open(os.path.join(ROOT, EXAMPLE), encoding='utf-8') as f:
        text = f.read()
    for key, value in values.items():
        key = key.replace('_', '-')
        text, n = re.subn(r'(?m)^%s: \S+' % key, '%s: %s' % (key, value), text)
        assert n == 1, key
    path = tmp_path / 'devstack-gate.yaml'
    path.write_text(text)
    return str(path)


def test_limits_that_do_not_fit_the_periods_are_refused(tmp_path):
    path = write_config(tmp_path, launch_deadline=560)
    proc = generate('--config', path)
    assert proc.returncode == 2
    assert proc.stdout == ''
    assert proc.stderr == (
        'devstack-vm-jobs: %s: launch-deadline: 560 s plus a 60 s margin makes a 11-minute '
        'timeout for devstack-launch-vms, which does not fit its 10-minute period; at most '
        '480 s fits\n' % path)
    config = configmod.load(write_config(tmp_path, image_build_timeout=80000, max_used_hours=2),
                            check_clouds=False)
    with pytest.raises(configmod.ConfigError) as e:
        jobs.timeouts(config)
    assert [line.split(': ')[1] for line in e.value.lines()] == [
        'image-build-timeout, snapshot-timeout, providers[].boot-timeout, launch-deadline',
        'max-used-hours']


def test_adding_a_provider_is_one_entry_of_config(tmp_path, example):
    with open(os.path.join(ROOT, EXAMPLE), encoding='utf-8') as f:
        text = f.read()
    entry = ("  - name: local\n    cloud: local\n    images:\n"
             "      - {name: precise, base-image: 'Ubuntu 12.04'}\n")
    text = text.replace('\n# devstack-vm-gate.sh', '\n' + entry + '\n# devstack-vm-gate.sh')
    path = tmp_path / 'devstack-gate.yaml'
    path.write_text(text)
    project = jobs.project(configmod.load(str(path), check_clouds=False), jobs.Options())
    assert project['providers'] == ['rax', 'hpcloud', 'local']
    assert project['labels'] == example.labels()
    assert project['image_combination_filter'].endswith(
        ' || (provider == "local" && label == "precise")')

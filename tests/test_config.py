"""Configuration validation: every bad-input fixture asserts its exact messages.

Each tests/fixtures/config/NAME.yaml with a NAME.expected beside it is a case:
the expected file holds the message lines, with {path} for the file's path and
{clouds} for the clouds.yaml path.
"""

import glob
import os
import subprocess
import sys

import pytest

from devstackgate import config
from devstackgate.errors import ConfigError

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'config')
CLOUDS = os.path.join(FIXTURES, 'clouds.yaml')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {'OS_CLIENT_CONFIG_FILE': CLOUDS}


def bad_cases():
    for expected in sorted(glob.glob(os.path.join(FIXTURES, '*.expected'))):
        name = os.path.basename(expected)[:-len('.expected')]
        yield pytest.param(os.path.join(FIXTURES, name + '.yaml'), expected, id=name)


def expected_lines(expected, path):
    with open(expected) as f:
        return [line.format(path=path, clouds=CLOUDS) for line in f.read().splitlines()]


@pytest.mark.parametrize('path,expected', list(bad_cases()))
def test_bad_config_messages(path, expected):
    with pytest.raises(ConfigError) as e:
        config.load(path, environ=ENV)
    assert e.value.lines() == expected_lines(expected, path)
    assert e.value.exit_code == 2


def test_good_config_defaults_and_values():
    cfg = config.load(os.path.join(FIXTURES, 'good.yaml'), environ=ENV)
    assert [p.name for p in cfg.providers] == ['rax', 'hpcloud']
    rax = cfg.provider('rax')
    assert (rax.kind, rax.settings.cloud, rax.settings.region, rax.max_servers, rax.api_rate) == (
        'openstack', 'rax', 'DFW', 40, 1.0)
    assert rax.settings.keypair == 'dg-rax'
    precise = rax.image('precise')
    assert precise.min_ram == 8192 and precise.min_ready == 8
    assert precise.setup == ('prepare-node.sh',)
    hp = cfg.provider('hpcloud')
    # Defaults come from the table.
    assert hp.max_servers == config.PROVIDER_KEYS['max-servers'].default
    assert hp.boot_timeout == 600 and hp.settings.region is None
    assert hp.image('oneiric').min_ready == 0
    assert hp.image('oneiric').username == 'jenkins'
    assert cfg.labels() == ['oneiric', 'precise']
    assert cfg.hold_hours == 24
    assert cfg.gate.projects == ('openstack-dev/devstack', 'openstack/nova')
    assert (cfg.gate.git_base, cfg.gate.test_timeout, cfg.gate.branch) == ('/srv/git', 3600, 'master')
    assert cfg.keep_images == 2


def test_unknown_provider_names_the_known_ones():
    cfg = config.load(os.path.join(FIXTURES, 'good.yaml'), environ=ENV)
    with pytest.raises(ConfigError) as e:
        cfg.provider('trystack')
    assert str(e.value).endswith("no provider named 'trystack'; known providers: rax, hpcloud")


def test_missing_file():
    path = os.path.join(FIXTURES, 'does-not-exist.yaml')
    with pytest.raises(ConfigError) as e:
        config.load(path, environ=ENV)
    assert e.value.lines() == ['%s: cannot read: No such file or directory' % path]


def test_no_clouds_yaml_at_all(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('HOME', str(tmp_path))
    path = os.path.join(FIXTURES, 'good.yaml')
    if os.path.exists('/etc/openstack/clouds.yaml'):
        pytest.skip('this machine has /etc/openstack/clouds.yaml')
    with pytest.raises(ConfigError) as e:
        config.load(path, environ={})
    assert e.value.lines()[0] == (
        "%s: providers[0].cloud: 'rax' not found: no clouds.yaml "
        "(set $OS_CLIENT_CONFIG_FILE or create ~/.config/openstack/clouds.yaml)" % path)


def test_fetch_style_load_skips_clouds_yaml():
    cfg = config.load(os.path.join(FIXTURES, 'unknown-cloud.yaml'), check_clouds=False, environ={})
    assert cfg.providers[0].settings.cloud == 'rackspace'


def test_config_path_precedence(tmp_path):
    assert config.find_config_path('a.yaml', {'DEVSTACK_GATE_CONFIG': 'b.yaml'}) == 'a.yaml'
    assert config.find_config_path(None, {'DEVSTACK_GATE_CONFIG': 'b.yaml'}) == 'b.yaml'


SCRIPTS = ['devstack-vm-launch.py', 'devstack-vm-reap.py', 'devstack-vm-update-image.py',
           'devstack-vm-fetch.py']


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_reject_bad_config_and_change_nothing(script, tmp_path):
    """Run from a checkout as Jenkins does: exit 2, one line per problem, no database made."""
    bad = tmp_path / 'bad.yaml'
    db = tmp_path / 'never.db'
    with open(os.path.join(FIXTURES, 'negative-numbers.yaml')) as f:
        bad.write_text('database: sqlite:///%s\n' % db + f.read())
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=CLOUDS)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), '--config', str(bad),
                           'precise' if 'fetch' in script else 'rax'],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stderr
    prog = script[:-3]
    lines = proc.stderr.splitlines()
    assert lines == ['%s: %s' % (prog, line) for line in
                     expected_lines(os.path.join(FIXTURES, 'negative-numbers.expected'), str(bad))]
    assert proc.stdout == ''
    assert not db.exists()


@pytest.mark.parametrize('script', SCRIPTS + ['devstack-vm-gate.sh', 'devstack-vm-update-image.sh'])
def test_every_script_has_help(script):
    cmd = [os.path.join(ROOT, script), '--help']
    if script.endswith('.py'):
        cmd.insert(0, sys.executable)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith('usage: ' + script.replace('.py', ''))


def test_readme_lists_every_key_as_the_tables_say():
    with open(os.path.join(ROOT, 'README.rst')) as f:
        text = f.read()
    start = text.index('.. config-reference-start\n\n') + len('.. config-reference-start\n\n')
    end = text.index('\n.. config-reference-end')
    assert text[start:end] == config.reference()


def test_a_label_matrix_expands_to_named_labels_with_a_cell_disabled():
    cfg = config.load(os.path.join(FIXTURES, 'matrix.yaml'), environ=ENV)
    rax = cfg.provider('rax')
    assert [i.name for i in rax.images] == [
        'icehouse-f20', 'icehouse-epel7', 'juno-f20', 'juno-epel7', 'precise']
    cell = rax.image('juno-epel7')
    assert cell.axes == {'release': 'juno', 'dist': 'epel7'}
    assert cell.base_image == 'epel7 base'
    assert cell.setup == ('prepare-node.sh --branches stable/juno',)
    # Only declared axes are replaced: the shell's own braces stay.
    assert cell.ready_check == 'test -d "${HOME}" && grep -q epel7 /etc/issue'
    assert rax.image('precise').axes is None
    assert cfg.labels() == ['icehouse-epel7', 'icehouse-f20', 'juno-epel7', 'juno-f20',
                            'precise']
    assert cfg.disabled_labels == {'icehouse-f20': 'known red: bug 1338000'}
    assert cfg.gate.labels == ('icehouse-f20', 'icehouse-epel7', 'juno-f20', 'juno-epel7')

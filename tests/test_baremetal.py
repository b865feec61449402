"""The bare-metal provider kind: hosts handed to one node at a time and reset, not deleted.

The hosts are real SSH endpoints on loopback (localcloud.metalhost.MetalHost) whose
reset really restores their files from a pristine copy and restarts the endpoint; the
product runs as its real scripts (launch, fetch, the gate, finish, reap, the operator
CLI) against SQLite and MariaDB.
"""

import json
import os
import random
import socket
import subprocess
import sys

import pytest
import yaml

import vmdatabase
from devstackgate import cloud, config, jobs, ssh
from devstackgate.drivers import baremetal
from devstackgate.errors import ConfigError
from localcloud.metalhost import MetalHost
from tests.gate_helpers import GateRun, change_env, gerrit_with_changes
from tests.pool import ROOT, Pool

pytestmark = pytest.mark.timeout(180)


class NoClouds:
    """A bare-metal pool needs no clouds.yaml."""

    def __init__(self, tmp_path):
        self.clouds_yaml = str(tmp_path / 'no-clouds.yaml')


def free_addresses(count):
    """`count` loopback addresses and one port free on all of them."""
    while True:
        base = random.randint(1, 254), random.randint(0, 255)
        addresses = ['127.%d.%d.%d' % (base + (i + 2,)) for i in range(count)]
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
        try:
            for address in addresses[1:]:
                with socket.socket() as s:
                    s.bind((address, port))
        except OSError:
            continue
        return addresses, port


class MetalPool:
    """Loopback bare-metal hosts and a pool configuration with one provider 'metal' over them."""

    def __init__(self, tmp_path, db_url, count=1, labels=None, gate=None, **provider_settings):
        self.tmp_path = tmp_path
        key_path = str(tmp_path / 'keys' / 'id_rsa')
        pkey, _ = ssh.ensure_private_key(key_path)
        pristine = tmp_path / 'pristine'
        (pristine / 'etc').mkdir(parents=True)
        (pristine / 'etc' / 'issue').write_text('Ubuntu 12.04 LTS bare metal\n')
        addresses, self.port = free_addresses(count)
        labels = labels or ['precise'] * count
        self.hosts = {}
        self.users = {'jenkins': [ssh.public_line(pkey)]}
        for i, (address, label) in enumerate(zip(addresses, labels)):
            name = 'metal-%d' % (i + 1)
            self.hosts[name] = MetalHost(name, address, self.port, str(tmp_path / name),
                                         str(pristine), self.users,
                                         reset_delay=0.2, down_seconds=0.3)
            self.hosts[name].start()
        provider = {'name': 'metal', 'kind': 'baremetal', 'ssh-port': self.port,
                    'boot-timeout': 60, 'reset-timeout': 10, 'probe-timeout': 2,
                    'probe-interval': 0.1,
                    'hosts': [{'name': name, 'address': h.address, 'label': label,
                               'host-key': h.host_key_line, 'reset-command': h.reset_command}
                              for (name, h), label in zip(self.hosts.items(), labels)]}
        provider.update(provider_settings)
        settings = {'ssh-private-key': key_path}
        if gate:
            settings['gate'] = gate
        self.pool = Pool(tmp_path, NoClouds(tmp_path), db_url, [provider], **settings)

    def close(self):
        for host in self.hosts.values():
            host.stop()

    def run(self, *args, **kwargs):
        return self.pool.run(*args, **kwargs)

    def nodes(self, **filters):
        return self.pool.nodes(**filters)

    def host_rows(self):
        return {r.name: r for r in self.pool.db.transact(lambda s: s.hosts('metal'))}

    def launch(self):
        proc = self.run('devstack-vm-launch.py', 'metal')
        assert proc.returncode == 0, proc.stderr
        return proc


@pytest.fixture
def metal(tmp_path):
    pools = []

    def make(db_url, **kwargs):
        pools.append(MetalPool(tmp_path, db_url, **kwargs))
        return pools[-1]
    yield make
    for p in pools:
        p.close()


def fetch(mp, label='precise'):
    """A gate job's fetch: the node it was handed."""
    proc = mp.run('devstack-vm-fetch.py', label)
    assert proc.returncode == 0, proc.stderr
    (node,) = [n for n in mp.nodes(state='used')]
    return node


def finish(mp, node, result):
    """What the gate does at its end: record the result, delete (reset) or hold the node."""
    proc = subprocess.run([sys.executable, '-m', 'devstackgate.cmd.finish', '--node-id',
                           str(node.id), '--result', result], capture_output=True, text=True,
                          env=mp.pool.env(), cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


# -- configuration -----------------------------------------------------------------------

def metal_config(**provider):
    data = {'providers': [dict({'name': 'metal', 'kind': 'baremetal', 'hosts': [
        {'address': '10.0.0.5', 'label': 'precise'},
        {'name': 'm2', 'address': '10.0.0.6', 'label': 'precise', 'username': 'jenkins',
         'reset-timeout': 30}]}, **provider)]}
    return config.validate(data, 'test.yaml', check_clouds=False)


def metal_errors(**provider):
    with pytest.raises(ConfigError) as e:
        metal_config(**provider)
    return e.value.lines()


def test_a_baremetal_provider_needs_only_its_hosts():
    cfg = metal_config()
    (p,) = cfg.providers
    assert p.kind == 'baremetal' and p.max_servers == 2
    h1, h2 = p.settings.hosts
    assert (h1.name, h1.address, h1.username, h1.host_key) == ('10.0.0.5', '10.0.0.5',
                                                               'jenkins', None)
    assert h1.reset_command == p.settings.reset_command == config.BAREMETAL_KEYS[
        'reset-command'].default
    assert (h1.reset_timeout, h2.reset_timeout) == (600, 30)
    (label,) = p.images
    assert (label.name, label.min_ready, label.username, label.base_image) == (
        'precise', 2, 'jenkins', None)
    assert p.settings.database == cfg.database
    assert p.settings.ssh_private_key == cfg.ssh_private_key


@pytest.mark.parametrize('provider, message', [
    ({'hosts': []}, 'providers[0].hosts: a bare-metal provider needs at least one host'),
    ({'hosts': [{'address': '10.0.0.5'}]}, 'providers[0].hosts[0].label: missing'),
    ({'hosts': [{'address': '-oProxyCommand=x', 'label': 'precise'}]},
     "providers[0].hosts[0].address: expected an IP address or DNS name, got '-oProxyCommand=x'"),
    ({'hosts': [{'address': 'a b', 'label': 'precise'}]},
     "providers[0].hosts[0].address: expected an IP address or DNS name, got 'a b'"),
    ({'hosts': [{'address': '10.0.0.5', 'label': 'precise'},
                {'address': '10.0.0.5', 'label': 'precise', 'name': 'other'}]},
     "providers[0].hosts[1].address: '10.0.0.5' is also providers[0].hosts[0].address"),
    ({'hosts': [{'name': 'M1', 'address': '10.0.0.5', 'label': 'precise'},
                {'name': 'm1', 'address': '10.0.0.6', 'label': 'precise'}]},
     "providers[0].hosts[1].name: 'm1' is also providers[0].hosts[0].name"),
    ({'hosts': [{'address': '10.0.0.5', 'label': 'precise', 'host-key': 'ssh-rsa !!'}]},
     'providers[0].hosts[0].host-key: expected "TYPE BASE64"'),
    ({'hosts': [{'address': '10.0.0.5', 'label': 'precise', 'username': 'root'},
                {'address': '10.0.0.6', 'label': 'precise'}]},
     "the hosts of label 'precise' log in as different users (jenkins, root)"),
    ({'images': [{'name': 'precise', 'min-ready': 3}]},
     'providers[0].images[0].min-ready: 3, but only 2 host(s) have label'),
    ({'images': [{'name': 'precise'}, {'name': 'quantal'}]},
     "providers[0].images[1].name: no host has label 'quantal'"),
    ({'images': [{'name': 'quantal'}]},
     "providers[0].hosts[0].label: 'precise' is not one of the provider's images: quantal"),
    ({'images': [{'name': 'precise', 'base-image': 'Ubuntu'}]},
     'providers[0].images[0].base-image: unknown key'),
    ({'max-servers': 3}, 'providers[0].max-servers: 3, but the provider lists 2 host(s)'),
    ({'cloud': 'rax'}, 'providers[0].cloud: unknown key'),
])
def test_bad_baremetal_configuration_names_the_key(provider, message):
    lines = metal_errors(**provider)
    assert any(message in line for line in lines), lines


def test_host_keys_may_be_given_as_a_line_or_a_fingerprint():
    line = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9uZSBob3N0IGtleSBmb3IgdGhlIHRlc3RzIQ=='
    fp = ssh.fingerprint(line)
    assert fp.startswith('SHA256:') and len(fp) == 50
    cfg = metal_config(hosts=[{'address': '10.0.0.5', 'label': 'precise', 'host-key': line},
                              {'address': '10.0.0.6', 'label': 'precise', 'host-key': fp}])
    assert [h.host_key for h in cfg.providers[0].settings.hosts] == [line, fp]


# -- the lifecycle, through the real scripts -------------------------------------------

def test_a_file_left_by_one_gate_run_is_gone_for_the_next(tmp_path, metal, db_url):
    gerrit = gerrit_with_changes(tmp_path / 'gerrit')
    mp = metal(db_url, gate={
        'labels': ['precise'], 'git-base': gerrit.base,
        'projects': ['openstack/devstack', 'openstack/nova'], 'test-timeout': 30,
        'fetch-wait': 5, 'git-timeout': 20, 'git-retries': 2, 'rsync-timeout': 30,
        # Fails if an earlier run's file is still there; leaves one for the next, and
        # says so outside the host (the reset may already have taken the file when
        # gate.sh returns: it follows the reset command by only reset_delay).
        'test-command': 'test ! -e ~/left-by-a-run && date > ~/left-by-a-run && '
                        'echo left >> %s' % (tmp_path / 'runs-that-left-a-file')})
    host = mp.hosts['metal-1']
    mp.launch()
    (node,) = mp.nodes(state='ready')
    assert (node.ip, node.username) == (host.address, 'jenkins')
    assert node.host_key in host.offered_key_lines      # the one launch's check was shown
    assert node.external_id == 'metal-1/%d' % node.id and node.image_id is None
    for run in (1, 2):
        gate = GateRun(mp.pool, tmp_path / ('ws%d' % run), build=str(run),
                       **change_env(gerrit.changes['pass']))
        code, out = gate.run()
        assert code == 0, out
        assert 'NODE_PROVIDER=metal' in out
        assert 'host metal-1 reset requested (use %s ended)' % node.external_id in out
        assert 'Traceback' not in out and 'paramiko' not in out
        assert (tmp_path / 'runs-that-left-a-file').read_text() == 'left\n' * run
        mp.pool.wait_for(lambda: host.resets == run and host.state == 'up', timeout=20,
                         what='the host to come back from reset %d' % run)
        assert not os.path.exists(os.path.join(host.root, 'left-by-a-run'))
        assert (tmp_path / 'metal-1' / 'etc' / 'issue').read_text().startswith('Ubuntu')
        row = mp.host_rows()['metal-1']
        assert row.allocation is None and row.reset_at is not None
        # The used node's row is settled by the reaper; launch makes the host ready again.
        mp.launch()
        ready = mp.nodes(state='ready')
        assert len(ready) == 1 and ready[0].id != node.id, mp.nodes()
        node = ready[0]
    proc = mp.run('devstack-vm-reap.py', 'metal')
    assert proc.returncode == 0, proc.stderr
    assert [n.state for n in mp.nodes()] == ['ready']
    assert host.resets == 2         # the reaper reset nothing more


def test_a_host_that_never_comes_back_is_marked_error_and_retried(tmp_path, metal,
                                                                  sqlite_url):
    mp = metal(sqlite_url, **{'reset-timeout': 1.5})
    host = mp.hosts['metal-1']
    mp.launch()
    mp.nodes(state='ready')
    host.never_return = True
    finish(mp, fetch(mp), 'success')
    mp.pool.wait_for(lambda: host.state == 'down', timeout=10, what='the host to go down')
    for attempt in (1, 2):
        proc = mp.run('devstack-vm-launch.py', 'metal')
        assert proc.returncode == 1, proc.stderr        # every node of the run failed
        (failed,) = [n for n in mp.nodes() if n.state == 'delete' and n.fail_reason == 'error']
        assert 'did not come back clean within reset-timeout 1.5 s' in proc.stderr
        assert 'Traceback' not in proc.stderr
        assert mp.host_rows()['metal-1'].allocation is None     # free again, to retry
        assert 'did not come back' in mp.host_rows()['metal-1'].reason
        proc = mp.run('devstack-vm-reap.py', 'metal')
        assert proc.returncode == 0, proc.stderr
        assert mp.nodes() == []
    # The operator repairs the machine: it answers, clean, and the next run takes it.
    repaired = MetalHost('metal-1', host.address, host.port, host.root + '-repaired',
                         str(tmp_path / 'pristine'), mp.users, host_key=host.host_key)
    repaired.start()
    try:
        mp.launch()
        (node,) = mp.nodes(state='ready')
        assert mp.host_rows()['metal-1'].reason is None
    finally:
        repaired.stop()


def test_a_reset_that_cannot_run_keeps_the_use_for_the_reaper(tmp_path, metal, sqlite_url):
    mp = metal(sqlite_url)
    host = mp.hosts['metal-1']
    mp.launch()
    node = fetch(mp)
    host.stop()                     # the machine is off: no reset can be started
    proc = finish(mp, node, 'success')
    assert 'cannot log in to reset it' in proc.stderr and 'reaper' in proc.stderr
    row = mp.host_rows()['metal-1']
    assert row.allocation == node.external_id and 'cannot log in' in row.reason
    proc = mp.run('devstack-vm-reap.py', 'metal')
    assert proc.returncode == 1, proc.stderr
    assert 'reset-failed' in proc.stderr
    assert [n.state for n in mp.nodes()] == ['delete']      # kept, asked again next run


def test_hold_release_list_and_stats_show_baremetal_nodes(tmp_path, metal, db_url):
    mp = metal(db_url, count=2)
    mp.launch()
    nodes = mp.nodes(state='ready')
    assert sorted(n.external_id.split('/')[0] for n in nodes) == ['metal-1', 'metal-2']
    proc = mp.run('devstack-gate.py', 'list', '--json')
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert {(n['provider'], n['state'], n['ip']) for n in listed} == {
        ('metal', 'ready', h.address) for h in mp.hosts.values()}
    held = nodes[0]
    host = next(h for h in mp.hosts.values() if h.address == held.ip)
    before = mp.host_rows()
    proc = mp.run('devstack-vm-reap.py', 'metal', '--dry-run')
    assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr
    assert mp.host_rows() == before
    proc = mp.run('devstack-gate.py', 'hold', held.name, '--reason', 'look at it')
    assert proc.returncode == 0, proc.stderr
    proc = mp.run('devstack-vm-reap.py', 'metal')
    assert proc.returncode == 0 and host.resets == 0, proc.stderr     # held: left alone
    proc = mp.run('devstack-gate.py', 'release', held.name)
    assert proc.returncode == 0, proc.stderr
    proc = mp.run('devstack-vm-reap.py', 'metal')
    assert proc.returncode == 0, proc.stderr
    mp.pool.wait_for(lambda: host.resets == 1, timeout=20, what='the released host reset')
    proc = mp.run('devstack-gate.py', 'stats', '--json')
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert 'metal' in json.dumps(stats)
    other = next(h for h in mp.hosts.values() if h is not host)
    assert other.resets == 0


def test_update_image_has_nothing_to_build_on_bare_metal(tmp_path, metal, sqlite_url):
    mp = metal(sqlite_url)
    proc = mp.run('devstack-vm-update-image.py', 'metal')
    assert proc.returncode == 0, proc.stderr
    assert 'builds no images' in proc.stderr and 'Traceback' not in proc.stderr


def test_a_wrong_host_key_is_an_error_not_a_ready_node(tmp_path, metal, sqlite_url):
    mp = metal(sqlite_url)
    data = yaml.safe_load(open(mp.pool.config_path))
    other = MetalHost('x', '127.0.0.1', 1, str(tmp_path / 'x'), str(tmp_path / 'pristine'), {})
    data['providers'][0]['hosts'][0]['host-key'] = other.host_key_line
    mp.pool.data = data
    mp.pool.write()
    proc = mp.run('devstack-vm-launch.py', 'metal')
    assert proc.returncode == 1, proc.stderr
    assert ('host metal-1: wrong host key: %s:%d does not offer the configured host-key'
            % (mp.hosts['metal-1'].address, mp.port)) in proc.stderr
    assert mp.nodes(state='ready') == []
    # The same with the key given as its fingerprint; the right fingerprint is taken.
    for key, ready in ((ssh.fingerprint(other.host_key_line), 0),
                       (ssh.fingerprint(mp.hosts['metal-1'].host_key_line), 1)):
        data['providers'][0]['hosts'][0]['host-key'] = key
        mp.pool.write()
        proc = mp.run('devstack-vm-launch.py', 'metal')
        assert len(mp.nodes(state='ready')) == ready, proc.stderr
        assert ('offers SHA256:' in proc.stderr and 'not the configured host-key %s' % key
                in proc.stderr) == (ready == 0), proc.stderr


def test_the_driver_frees_a_use_that_never_came_back_without_a_reset(tmp_path, metal,
                                                                     sqlite_url):
    mp = metal(sqlite_url)
    cfg = config.load(mp.pool.config_path, environ=mp.pool.env())
    db = vmdatabase.Database(sqlite_url).upgrade()
    adapter = cloud.connect(cfg.provider('metal'), db=db)
    assert isinstance(adapter, baremetal.Adapter) and not adapter.builds_images
    use = adapter.create_server('n1', None, 'bare-metal', None,
                                cloud.tags('metal', 'node', 'precise', node_id=7))
    assert use == 'metal-1/7'
    with pytest.raises(cloud.QuotaExceeded):
        adapter.create_server('n2', None, 'bare-metal', None,
                              cloud.tags('metal', 'node', 'precise', node_id=8))
    (server,) = adapter.list_servers()
    assert (server.id, server.state, server.address) == (use, 'active', mp.hosts['metal-1'].address)
    assert server.metadata[cloud.META_NODE_ID] == '7'
    row = mp.host_rows()['metal-1']
    assert db.transact(lambda s: s.update_host(row, verified=0))       # as if never back
    assert adapter.delete_server(use) is True
    assert adapter.delete_server(use) is False
    assert mp.hosts['metal-1'].resets == 0 and adapter.list_servers() == []
    with pytest.raises(cloud.CloudError) as e:
        adapter.create_image(use, 'snap', {})
    assert e.value.reason == 'unsupported'


def test_scripts_run_with_no_cloud_sdk_for_baremetal(tmp_path):
    code = ('import sys\nimport devstackgate.drivers.baremetal\n'
            'print(sorted({m.split(".")[0] for m in sys.modules} & '
            '{"novaclient", "glanceclient", "keystoneauth1"}))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == '[]'


def test_bare_metal_labels_get_no_image_job_cell():
    data = {'providers': [
        {'name': 'rax', 'cloud': 'rax', 'images': [{'name': 'precise', 'base-image': 'U'}]},
        {'name': 'metal', 'kind': 'baremetal',
         'hosts': [{'address': '10.0.0.5', 'label': 'precise'}]}]}
    cfg = config.validate(data, 'test.yaml', check_clouds=False)
    assert jobs.offered_pairs(cfg) == [('rax', 'precise')]
    assert jobs.combination_filter(cfg) == '(provider == "rax" && label == "precise")'
    assert jobs.project(cfg, jobs.Options())['providers'] == ['rax', 'metal']
    data['providers'] = data['providers'][1:]
    assert jobs.combination_filter(config.validate(data, 'test.yaml', check_clouds=False)) \
        == 'false'


def test_the_readme_example_is_a_valid_configuration():
    with open(os.path.join(ROOT, 'README.rst')) as f:
        text = f.read()
    section = text[text.index('Bare-metal hosts\n====='):]
    block = section[section.index('.. code-block:: yaml'):].split('\n\n')[1]
    cfg = config.validate(yaml.safe_load(block), 'README.rst', check_clouds=False)
    (p,) = cfg.providers
    assert [h.name for h in p.settings.hosts] == ['metal-1', 'metal-2']
    assert p.settings.hosts[1].reset_timeout == 300 and p.images[0].min_ready == 2

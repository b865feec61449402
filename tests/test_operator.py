"""devstack-gate, the operators' tools: the real script as a subprocess and the plain functions
of devstackgate.operator, against a real database (SQLite and MariaDB), and the local cloud
for delete --now and what the reaper and launch make of an operator's changes."""

import copy
import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

import vmdatabase
from devstackgate import cells, config as configmod, image, operator, reap
from devstackgate.cmd import operator as cmd
from tests.pool import BASE_IMAGE, ROOT, Pool, cloud_config, make_base_dir, provider
from tests.reap_helpers import table

SCRIPT = os.path.join(ROOT, 'devstack-gate.py')
HOUR = 3600.0
PROVIDERS = [
    {'name': 'rax', 'cloud': 'rax', 'images': [
        {'name': 'precise', 'base-image': BASE_IMAGE},
        {'name': 'quantal', 'base-image': 'Ubuntu 12.10', 'paused': True}]},
    {'name': 'hp', 'cloud': 'hp', 'images': [{'name': 'precise', 'base-image': BASE_IMAGE}]},
]
LONG_REASON = ('failure: change 12345,6 (job gate-integration-tests-devstack-vm, build 1234); '
               'tempest.api.compute.servers.test_server_actions.ServerActionsTestJSON.'
               'test_reboot_server_hard timed out waiting for the server to become ACTIVE '
               'again after 196 s, see bug 1180189 and its duplicates')
SUBCOMMANDS = [c[0] for c in cmd.COMMANDS]


class Ops:
    """A configuration (no clouds needed) over a database, and the real devstack-gate.py."""

    def __init__(self, tmp_path, db_url, **settings):
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.path = str(tmp_path / 'devstack-gate.yaml')
        self.data = dict({'database': db_url, 'hold-hours': 6,
                          'providers': copy.deepcopy(PROVIDERS)}, **settings)
        self.write()
        self.db = vmdatabase.Database(db_url).upgrade()

    def write(self):
        with open(self.path, 'w') as f:
            yaml.safe_dump(self.data, f)

    @property
    def config(self):
        return configmod.load(self.path, check_clouds=False)

    def run(self, *args, user='jeblair', env=None):
        environ = dict(os.environ, DEVSTACK_GATE_CONFIG=self.path, USER=user)
        environ.pop('OS_CLIENT_CONFIG_FILE', None)
        environ.update(env or {})
        return subprocess.run([sys.executable, SCRIPT] + list(args), capture_output=True,
                              text=True, env=environ, timeout=60, cwd=str(self.tmp_path))

    def json(self, *args):
        proc = self.run(*args, '--json')
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def image(self, provider, label, state='ready', age=HOUR, **fields):
        def tx(s):
            row = s.create_image(provider, label, state=state, now=time.time() - age, **fields)
            name = fields.get('name') or 'dg-%s-%s-%d' % (label, provider, row.id)
            s.update_image(row.id, name=name)
            return s.get_image(row.id)
        return self.db.transact(tx)

    def node(self, provider, label, state='ready', age=300, **fields):
        def tx(s):
            row = s.create_node(provider, label, state=state, now=time.time() - age, **fields)
            s.update_node(row.id, name=fields.get('name') or 'dg-%s-%s-%d'
                          % (label, provider, row.id))
            return s.get_node(row.id)
        return self.db.transact(tx)

    def get(self, node):
        return self.db.transact(lambda s: s.get_node(node.id))


@pytest.fixture
def ops(tmp_path, db_url):
    return Ops(tmp_path, db_url)


def widest(text):
    return max(len(line) for line in text.splitlines())


def tables(text):
    """The bordered tables in `text`: per table {'header': [...], 'lines': [...], 'records':
    [[the lines of each cell]], and each record by its first cell}; a record runs on over
    the lines whose first cell is empty."""
    found, current, border = [], None, 0
    for line in text.splitlines():
        if line.startswith('+'):
            if current is None:
                current, border = {'lines': [], 'records': []}, 0
                found.append(current)
            border += 1
            current['lines'].append(line)
            if border == 3:
                current = None
            continue
        if current is None or not line.startswith('|'):
            continue
        current['lines'].append(line)
        cells = [c.strip() for c in line.split('|')[1:-1]]
        if border == 1:
            current['header'] = cells
        elif cells[0]:
            last = current[cells[0]] = [[c] if c else [] for c in cells]
            current['records'].append(last)
        else:
            for i, c in enumerate(cells):
                if c:
                    last[i].append(c)
    return found


def error_line(proc):
    """The one line a failed command printed (and that it printed nothing else)."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# -- small pieces ----------------------------------------------------------------------

@pytest.mark.parametrize('seconds,text', [
    (0, '0s'), (45.9, '45s'), (60, '1m'), (5 * 60 + 59, '5m'), (3 * HOUR + 1, '3h'),
    (23 * HOUR, '23h'), (2 * 86400 + 5, '2d'), (-5, '0s'), (None, '0s')])
def test_ages_read_like_5m_3h_2d(seconds, text):
    assert operator.age_text(seconds) == text


def test_every_table_fits_80_columns_whatever_is_in_it():
    long = 'x' * 200
    for headers, wrap in ((cmd.NODE_HEADERS, cmd.NODE_WRAP), (cmd.HOLD_HEADERS, cmd.HOLD_WRAP),
                          (cmd.IMAGE_HEADERS, cmd.IMAGE_WRAP),
                          (cmd.SWITCH_HEADERS, cmd.SWITCH_WRAP)):
        rows = [[long + ' ' + long] * len(headers), ['%d' % i for i in range(len(headers))],
                ['ünïcødé ' * 20] * len(headers), [None] * len(headers)]
        text = cmd.render(headers, rows, wrap=wrap)
        assert widest(text) <= 80, text
        assert 'x' * 7 in text and '| -' in text


def test_user_is_user_else_the_login_name(monkeypatch):
    assert operator.user({'USER': 'jeblair'}) == 'jeblair'
    monkeypatch.setattr(operator.getpass, 'getuser', lambda: 'clarkb')
    assert operator.user({}) == 'clarkb'


# -- every subcommand ------------------------------------------------------------------

def test_every_subcommand_has_help_and_takes_the_common_options(ops):
    assert set(SUBCOMMANDS) == {'list', 'image-list', 'hold', 'release', 'delete',
                                'image-demote', 'image-delete', 'image-pause', 'image-unpause',
                                'label-disable', 'label-enable', 'stats', 'status-page'}
    proc = ops.run('--help')
    assert proc.returncode == 0 and all(c in proc.stdout for c in SUBCOMMANDS), proc.stdout
    for name in SUBCOMMANDS:
        proc = ops.run(name, '--help')
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith('usage: devstack-gate %s' % name), proc.stdout
        assert '--json' in proc.stdout and '--config' in proc.stdout
    # --config before or after the command, and $DEVSTACK_GATE_CONFIG, are the same file.
    ops.node('rax', 'precise')
    for args in (['--config', ops.path, 'list'], ['list', '--config', ops.path]):
        proc = ops.run(*args, env={'DEVSTACK_GATE_CONFIG': '/nonexistent.yaml'})
        assert proc.returncode == 0 and 'dg-precise-rax-1' in proc.stdout, proc.stderr
    proc = ops.run('list', env={'DEVSTACK_GATE_CONFIG': '/nonexistent.yaml'})
    assert proc.returncode == 2
    assert error_line(proc).startswith('devstack-gate: /nonexistent.yaml: cannot read')
    proc = ops.run()
    assert proc.returncode == 2 and 'required: COMMAND' in proc.stderr


def test_list_shows_nodes_with_age_image_and_hold(ops):
    old = ops.image('rax', 'precise', age=2 * 86400, name='dg-precise-rax-20130901T040132Z')
    new = ops.image('rax', 'precise', age=3 * HOUR, name='dg-precise-rax-20130903T040132Z')
    ready = ops.node('rax', 'precise', age=5 * 60, image_id=new.id, ip='127.0.0.10')
    held = ops.node('hp', 'precise', state='hold', age=3 * HOUR, image_id=old.id,
                    ip='2001:db8:85a3::8a2e:370:7334', hold_until=time.time() + 21 * HOUR + 60,
                    held_by='gate-integration-tests-devstack-vm #1234', hold_reason=LONG_REASON)
    building = ops.node('rax', 'precise', state='building', age=2 * 86400 + 60)
    proc = ops.run('list')
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert widest(out) <= 80, out
    nodes, held_nodes = tables(out)
    assert nodes['header'] == ['ID', 'Provider/Label', 'State/Age', 'Name/IP', 'Image']
    # Pairs share a cell, one above the other; a long image name wraps at its dashes.
    assert nodes[str(ready.id)] == [[str(ready.id)], ['rax', 'precise'], ['ready', '5m'],
                                    ['dg-precise-rax-1', '127.0.0.10'],
                                    ['dg-precise-', 'rax-20130903T040132Z']]
    assert nodes[str(held.id)][2] == ['hold', '3h']
    assert ''.join(nodes[str(held.id)][3][1:]) == '2001:db8:85a3::8a2e:370:7334'
    assert ''.join(nodes[str(held.id)][4]) == 'dg-precise-rax-20130901T040132Z'
    assert nodes[str(building.id)][2:] == [['building', '2d'], [building.name, '-'], ['-']]
    # The held node's hold: its expiry, who, and the whole reason, wrapped.
    assert out.splitlines()[-len(held_nodes['lines']) - 1] == 'Held nodes:'
    assert held_nodes['header'] == ['ID', 'Name', 'Expires', 'Held by', 'Reason']
    hold = held_nodes[str(held.id)]
    assert hold[:3] == [[str(held.id)], [held.name], ['in 21h']]
    assert ''.join(hold[3]) == 'gate-integration-tests-devstack-vm#1234'
    assert ''.join(hold[4]).replace(' ', '') == LONG_REASON.replace(' ', '')    # all of it
    # --json: every node with its image name and age, for scripts.
    nodes = ops.json('list')
    assert [n['id'] for n in nodes] == [ready.id, held.id, building.id]
    assert nodes[0]['image'] == 'dg-precise-rax-20130903T040132Z'
    assert nodes[1]['image'] == 'dg-precise-rax-20130901T040132Z'
    assert nodes[1]['hold_reason'] == LONG_REASON and nodes[1]['held_by'].startswith('gate-')
    assert 3 * HOUR <= nodes[1]['age'] < 3 * HOUR + 60
    assert nodes[2]['image'] is None and 'claim_token' not in nodes[0]
    # Filters.
    assert [n['id'] for n in ops.json('list', '--provider', 'hp')] == [held.id]
    assert [n['id'] for n in ops.json('list', '--state', 'building')] == [building.id]
    assert [n['id'] for n in ops.json('list', '--label', 'quantal')] == []
    assert [n['id'] for n in ops.json('list', '--provider', 'rax', '--label', 'precise',
                                      '--state', 'ready')] == [ready.id]
    proc = ops.run('list', '--state', 'nope')
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr


def test_list_reads_a_database_without_changing_it(tmp_path):
    ops = Ops(tmp_path, 'sqlite:///%s' % (tmp_path / 'missing.db'))
    os.remove(str(tmp_path / 'missing.db'))
    proc = ops.run('list')
    assert proc.returncode == 1
    assert error_line(proc) == 'devstack-gate: database sqlite:///%s does not exist' % (
        tmp_path / 'missing.db')
    assert not (tmp_path / 'missing.db').exists()


def test_image_list_marks_current_previous_and_demoted_and_shows_switches(ops):
    oldest = ops.image('rax', 'precise', age=4 * 86400)     # kept beyond retention until a reap
    first = ops.image('rax', 'precise', age=3 * 86400)
    second = ops.image('rax', 'precise', age=2 * 86400)
    third = ops.image('rax', 'precise', age=86400)
    building = ops.image('rax', 'precise', state='building', age=600)
    failed = ops.image('rax', 'precise', state='delete', age=700, fail_reason='setup-failed')
    hp = ops.image('hp', 'precise', age=5 * HOUR)
    proc = ops.run('image-demote', 'rax', 'precise')
    assert proc.returncode == 0, proc.stderr
    assert 'rax precise: demoted %s; current image is now %s' % (third.name, second.name) \
        in proc.stderr
    assert 'rax precise: image builds are not paused' in proc.stderr
    ops.db.transact(lambda s: s.pause_image('precise', 'hp', reason='mirror down',
                                            set_by='clarkb'))
    ops.db.transact(lambda s: s.disable_label('precise', 'known red: bug 1338000',
                                              set_by='fungi'))
    ops.data['disabled-labels'] = {'quantal': 'not ready yet'}
    ops.write()
    proc = ops.run('image-list')
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert widest(out) <= 80, out
    images, switches = tables(out)
    assert images['header'] == ['ID', 'Provider', 'Label', 'Name', 'State', 'Age', 'Role']

    def role(row):
        return [' '.join(c) for c in images[str(row.id)][1:3] + images[str(row.id)][4:]]
    assert role(oldest) == ['rax', 'precise', 'ready', '4d', 'kept']
    assert role(first) == ['rax', 'precise', 'ready', '3d', 'previous']
    assert role(second) == ['rax', 'precise', 'ready', '2d', 'current']
    assert role(third) == ['rax', 'precise', 'ready', '1d', 'demoted']
    assert role(building) == ['rax', 'precise', 'building', '10m', '-']
    assert role(failed) == ['rax', 'precise', 'delete', '11m', 'setup-failed']
    assert role(hp) == ['hp', 'precise', 'ready', '5h', 'current']
    assert images[str(first.id)][3] == [first.name]
    assert out.splitlines()[-len(switches['lines']) - 1] == 'Paused and disabled labels:'
    assert switches['header'] == ['Label', 'Provider', 'Switch', 'Set in', 'By', 'Age', 'Reason']
    rows = [[' '.join(c) for c in cells] for cells in switches['records']]
    assert rows == [['quantal', 'rax', 'paused', 'config', '-', '-', 'paused: true'],
                    ['precise', 'hp', 'paused', 'database', 'clarkb', '0s', 'mirror down'],
                    ['quantal', 'all', 'disabled', 'config', '-', '-', 'not ready yet'],
                    ['precise', 'all', 'disabled', 'database', 'fungi', '0s',
                     'known red: bug 1338000']], rows
    data = ops.json('image-list')
    assert sorted(data) == ['disabled', 'images', 'paused']
    roles = {i['id']: (i['role'], i['demoted']) for i in data['images']}
    assert roles == {oldest.id: (None, False), first.id: ('previous', False),
                     second.id: ('current', False),
                     third.id: (None, True), building.id: (None, False),
                     failed.id: (None, False), hp.id: ('current', False)}
    assert [(p['label'], p['provider'], p['set_in']) for p in data['paused']] == [
        ('quantal', 'rax', 'config'), ('precise', 'hp', 'database')]
    assert data['paused'][0]['path'] == ops.path
    assert [(d['label'], d['set_in']) for d in data['disabled']] == [
        ('quantal', 'config'), ('precise', 'database')]
    # Filters: hp offers only precise, and a pause of rax is not hp's.
    data = ops.json('image-list', '--provider', 'hp')
    assert [i['id'] for i in data['images']] == [hp.id]
    assert [(p['label'], p['provider']) for p in data['paused']] == [('precise', 'hp')]
    assert [d['label'] for d in data['disabled']] == ['precise']
    data = ops.json('image-list', '--label', 'quantal')
    assert data['images'] == [] and [d['label'] for d in data['disabled']] == ['quantal']
    # Demoting again falls back to the previous one.
    data = ops.json('image-demote', 'rax', 'precise')
    assert (data['demoted'], data['current']) == (second.id, first.id)
    assert [i['role'] for i in data['images']] == [
        'previous', 'current', None, None, None, None]


# -- holds -----------------------------------------------------------------------------

def test_hold_and_release(ops):
    node = ops.node('rax', 'precise')
    before = time.time()
    proc = ops.run('hold', node.name, '--reason', 'debugging bug 1180189')
    assert proc.returncode == 0, proc.stderr
    held = ops.get(node)
    assert (held.state, held.held_by, held.hold_reason) == ('hold', 'jeblair',
                                                           'debugging bug 1180189')
    assert before + 6 * HOUR <= held.hold_until <= time.time() + 6 * HOUR  # hold-hours: 6
    assert 'rax precise %s: ready -> hold after' % node.name in proc.stderr
    assert 'held until' in proc.stderr and '(6 h) by jeblair: debugging bug 1180189' \
        in proc.stderr
    assert ' in 6h ' in proc.stdout and 'debugging bug 1180189' in proc.stdout
    assert widest(proc.stdout) <= 80
    # Held again, by id, for longer, with JSON for scripts.
    proc = ops.run('hold', str(node.id), '--reason', 'still debugging', '--hours', '48',
                   '--json', user='clarkb')
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data['from_state'] == 'hold' and data['node']['state'] == 'hold'
    assert data['node']['held_by'] == 'clarkb' and data['node']['hold_reason'] == 'still debugging'
    assert 48 * HOUR - 60 < data['node']['hold_until'] - time.time() <= 48 * HOUR
    proc = ops.run('release', node.name)
    assert proc.returncode == 0, proc.stderr
    released = ops.get(node)
    assert (released.state, released.fail_reason) == ('delete', 'released-by-operator')
    assert 'hold -> delete after' in proc.stderr and 'the reaper deletes its server' \
        in proc.stderr
    # Only a held node is released; only a ready, used or held node is held.
    proc = ops.run('release', node.name)
    assert proc.returncode == 1
    assert error_line(proc) == ('devstack-gate: node %s (rax, id %d) is in state delete, not '
                                'held; only a held node can be released' % (node.name, node.id))
    building = ops.node('rax', 'precise', state='building')
    proc = ops.run('hold', building.name, '--reason', 'why not')
    assert proc.returncode == 1
    assert error_line(proc) == ('devstack-gate: node %s (rax, id %d) is in state building; '
                                'only a ready, used or held node can be held'
                                % (building.name, building.id))
    used = ops.node('hp', 'precise', state='used')
    assert ops.run('hold', used.name, '--reason', 'the job is still on it').returncode == 0
    assert ops.get(used).state == 'hold'
    proc = ops.run('hold', used.name, '--reason', 'x', '--hours', '0')
    assert proc.returncode == 2
    assert error_line(proc) == 'devstack-gate: --hours: expected a number > 0, got 0'
    proc = ops.run('hold', used.name)
    assert proc.returncode == 2 and 'the following arguments are required: --reason' \
        in proc.stderr


def test_a_node_that_changed_meanwhile_is_left_alone(ops):
    node = ops.node('rax', 'precise')
    config = ops.config
    claimed, _ = ops.db.claim_node('precise', 'gate-job #1')
    assert claimed.id == node.id
    with pytest.raises(operator.Changed) as e:
        operator.hold(ops.db, config, node, 'debugging')
    assert str(e.value) == ('node %s (rax, id %d) changed meanwhile: it was ready, it is now '
                            'used; not held' % (node.name, node.id))
    assert e.value.exit_code == 1
    after = ops.get(node)
    assert (after.state, after.claimed_by, after.hold_reason) == ('used', 'gate-job #1', None)
    with pytest.raises(operator.Changed):
        operator.delete(ops.db, node)
    held = operator.hold(ops.db, config, after, 'debugging', held_by='ops')['node']
    now_held = ops.get(node)
    ops.db.transact(lambda s: s.transition(now_held, 'delete'))
    with pytest.raises(operator.Changed) as e:
        operator.release(ops.db, vmdatabase.Node(**dict(
            {k: v for k, v in held.items() if k not in ('image', 'age')}, claim_token=None)))
    assert 'it was hold, it is now delete; not released' in str(e.value)


def test_a_held_node_is_never_reaped_before_its_expiry(ops):
    """hold_until set by hold counts, not hold-hours after it was held."""
    ops.data['hold-hours'] = 1
    ops.write()
    config = ops.config
    node = ops.node('rax', 'precise')
    now = time.time()
    held = operator.hold(ops.db, config, node, 'debugging', hours=48, now=now)['node']
    row = ops.get(node)
    assert row.hold_until == held['hold_until'] == now + 48 * HOUR
    limits = reap.Limits.from_config(config, config.provider('rax'))
    for later in (now + 2 * HOUR, now + 47 * HOUR):
        assert reap.node_reason(row, limits, {}, {}, later) is None
    assert reap.node_reason(row, limits, {}, {}, now + 48 * HOUR) == 'hold-expired'


# -- errors ----------------------------------------------------------------------------

def test_errors_are_one_line_with_the_exit_code(ops):
    db = str(vmdatabase.Database(ops.db_url))
    ops.node('rax', 'precise', state='ready')
    cases = [
        (['hold', 'dg-precise-rax-99', '--reason', 'x'], 1,
         "node 'dg-precise-rax-99': no node with this id or name in database %s" % db),
        (['release', '99'], 1, "node '99': no node with this id or name in database %s" % db),
        (['delete', 'nope', '--now'], 1,
         "node 'nope': no node with this id or name in database %s" % db),
        (['release', 'dg-precise-rax-1'], 1,
         'node dg-precise-rax-1 (rax, id 1) is in state ready, not held; only a held node '
         'can be released'),
        (['list', '--label', 'trusty'], 2,
         "label 'trusty': no provider offers it; known labels: precise, quantal"),
        (['image-pause', 'trusty'], 2,
         "label 'trusty': no provider offers it; known labels: precise, quantal"),
        (['label-disable', 'trusty', '--reason', 'x'], 2,
         "label 'trusty': no provider offers it; known labels: precise, quantal"),
        (['image-list', '--provider', 'dfw'], 2,
         "%s: providers: no provider named 'dfw'; known providers: rax, hp" % ops.path),
        (['image-demote', 'dfw', 'precise'], 2,
         "%s: providers: no provider named 'dfw'; known providers: rax, hp" % ops.path),
        (['list', '--provider', 'dfw'], 2,
         "%s: providers: no provider named 'dfw'; known providers: rax, hp" % ops.path),
        (['image-demote', 'hp', 'quantal'], 2,
         "provider hp has no label 'quantal'; its labels: precise"),
        (['image-delete', 'hp', 'quantal'], 2,
         "provider hp has no label 'quantal'; its labels: precise"),
        (['image-pause', 'quantal', '--provider', 'hp'], 2,
         "provider hp has no label 'quantal'; its labels: precise"),
        (['image-delete', 'rax', 'precise'], 1,
         'provider rax label precise has no current image to delete'),
        (['image-demote', 'rax', 'precise'], 1,
         'provider rax label precise has no current image to demote'),
    ]
    for args, code, message in cases:
        proc = ops.run(*args)
        assert (proc.returncode, error_line(proc)) == (code, 'devstack-gate: ' + message), args
        assert proc.stdout == ''


# -- images: demote, delete, pause ------------------------------------------------------

def test_image_delete_makes_the_previous_image_current(ops):
    previous = ops.image('rax', 'precise', age=2 * 86400)
    current = ops.image('rax', 'precise', age=86400)
    ops.db.transact(lambda s: s.pause_image('precise', 'rax', reason='bad image'))
    proc = ops.run('image-delete', 'rax', 'precise')
    assert proc.returncode == 0, proc.stderr
    assert 'rax precise %s: ready -> delete after' % current.name in proc.stderr
    assert '(deleted-by-operator)' in proc.stderr and 'not paused' not in proc.stderr
    assert 'current image is now %s; the reaper deletes it from the cloud' % previous.name \
        in proc.stderr
    row = ops.db.transact(lambda s: s.get_image(current.id))
    assert (row.state, row.fail_reason, row.demoted) == ('delete', 'deleted-by-operator', 0)
    assert ops.db.transact(lambda s: s.current_image('rax', 'precise')).id == previous.id
    # The reaper counts it under its own reason, and the retention rule keeps the new current.
    assert reap.image_row_reason(row, None, {}, time.time()) == 'deleted-by-operator'
    assert image.retention(ops.db.transact(lambda s: s.images()), 2) == {}
    assert widest(proc.stdout) <= 80 and 'deleted-by-' in proc.stdout
    # With nothing left to fall back on, it says what that means.
    data = ops.json('image-delete', 'rax', 'precise')
    assert (data['deleted'], data['current']) == (previous.id, None)
    assert data['notes'] == ['rax precise: no ready image is left, so launches of this label '
                             'stop until a build succeeds']
    proc = ops.run('image-delete', 'rax', 'precise')
    assert (proc.returncode, error_line(proc)) == (
        1, 'devstack-gate: provider rax label precise has no current image to delete')


def test_pauses_and_switches_live_in_the_database(ops):
    config = ops.config
    rax, hp = config.provider('rax'), config.provider('hp')
    # The configuration's pause is rax quantal's only.
    assert image.paused(config, rax, ops.db) == {'quantal': 'paused'}
    assert image.paused(config, hp, ops.db) == {}
    proc = ops.run('image-pause', 'precise', '--reason', 'bad mirror')
    assert proc.returncode == 0, proc.stderr
    assert 'precise: image builds paused on all providers by jeblair: bad mirror; launches go ' \
        'on from the current image' in proc.stderr
    assert '| precise | all      | paused | database | jeblair |' in proc.stdout
    assert image.paused(config, hp, ops.db)['precise'].startswith('paused by jeblair since ')
    assert image.paused(config, hp, ops.db)['precise'].endswith(' for all providers: bad mirror')
    data = ops.json('image-pause', 'precise', '--provider', 'hp')
    assert [(p['provider'], p['reason']) for p in data['paused']] == [
        (None, 'bad mirror'), ('hp', None)]
    # One provider's pause is lifted alone; the all-providers pause still holds.
    proc = ops.run('image-unpause', 'precise', '--provider', 'hp')
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        'devstack-gate: label precise: still paused for all providers by jeblair; '
        'devstack-gate image-unpause precise (without --provider) lifts it')
    assert [(p.label, p.provider) for p in ops.db.transact(lambda s: s.image_pauses())] == [
        ('precise', None)]
    proc = ops.run('image-unpause', 'precise')
    assert proc.returncode == 0 and 'image builds unpaused on all providers' in proc.stderr
    assert image.paused(config, hp, ops.db) == {}
    proc = ops.run('image-unpause', 'precise')
    assert proc.returncode == 0 and 'precise: was not paused in the database' in proc.stderr
    # A pause in the configuration is the configuration's to lift.
    proc = ops.run('image-unpause', 'quantal')
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        'devstack-gate: label quantal: still paused in %s for provider rax (paused: true); '
        'set paused: false there' % ops.path)
    # Switching a label off and on again.
    proc = ops.run('label-disable', 'precise', '--reason', 'known red: bug 1338000')
    assert proc.returncode == 0, proc.stderr
    off = cells.disabled(config, ops.db)
    assert off['precise'].startswith('disabled by jeblair since ') and off['precise'].endswith(
        ': known red: bug 1338000')
    proc = ops.run('label-enable', 'precise')
    assert proc.returncode == 0 and 'precise: enabled' in proc.stderr
    assert cells.disabled(config, ops.db) == {}
    ops.data['disabled-labels'] = {'quantal': 'not ready yet'}
    ops.write()
    proc = ops.run('label-enable', 'quantal')
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        'devstack-gate: label quantal: still disabled in %s: not ready yet; remove it from '
        'disabled-labels there' % ops.path)
    proc = ops.run('label-disable', 'quantal')
    assert proc.returncode == 2 and 'the following arguments are required: --reason' \
        in proc.stderr


# -- against the local cloud ------------------------------------------------------------

@pytest.fixture
def pool(tmp_path, clouds_for, db_url):
    clouds = clouds_for(cloud_config('rax', make_base_dir(tmp_path)))
    # hold-hours is a fraction of a second: only hold_until keeps a held node.
    return Pool(tmp_path, clouds, db_url, [provider('rax')], **{'hold-hours': 0.0001,
                                                                'leak-grace': 0})


def test_delete_now_hold_and_image_delete_with_the_reaper(pool):
    previous = pool.seed_base_images('rax', 'precise')
    current = pool.seed_base_images('rax', 'precise')
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    keep, gone = pool.nodes(state='ready')
    assert keep.image_id == gone.image_id == current.id
    proc = pool.run('devstack-gate.py', 'hold', keep.name, '--reason', 'debugging', '--hours', '1')
    assert proc.returncode == 0, proc.stderr
    proc = pool.run('devstack-gate.py', 'delete', gone.name, '--now')
    assert proc.returncode == 0, proc.stderr
    assert 'ready -> delete after' in proc.stderr and '(deleted-by-operator)' in proc.stderr
    assert 'the cloud accepted the delete of server %s' % gone.external_id in proc.stderr
    assert pool.clouds['rax'].calls('DELETE /compute/v2.1/servers/{id}') == 1
    live = {s['id'] for s in pool.live_servers('rax')}
    assert live == {keep.external_id}
    # The bad image goes; the previous one is current.
    proc = pool.run('devstack-gate.py', 'image-delete', 'rax', 'precise')
    assert proc.returncode == 0, proc.stderr
    time.sleep(0.5)             # hold-hours has long passed; hold_until has not
    proc = pool.run('devstack-vm-reap.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert reap_table(proc.stderr)[('deleted', 'deleted-by-operator')] == 1
    assert reap_table(proc.stderr)[('deleted', 'delete')] == 1      # the deleted node's row
    rows = {n.id: n for n in pool.nodes()}
    assert set(rows) == {keep.id} and rows[keep.id].state == 'hold'
    assert {s['id'] for s in pool.live_servers('rax')} == {keep.external_id}
    assert [i.id for i in pool.db.transact(lambda s: s.images())] == [previous.id]
    # The next launch fills the pool from the previous image.
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert {n.image_id for n in pool.nodes(state='ready')} == {previous.id}
    # Once the hold expires, the reaper takes it.
    pool.db.transact(lambda s: s.update_node(keep.id, hold_until=time.time() - 1))
    proc = pool.run('devstack-vm-reap.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    assert reap_table(proc.stderr)[('deleted', 'hold-expired')] == 1


def test_delete_now_without_a_reachable_cloud_leaves_it_to_the_reaper(pool):
    pool.seed_base_images('rax', 'precise')
    node = pool.db.transact(lambda s: s.create_node('rax', 'precise', state='ready',
                                                    name='dg-precise-rax-1', external_id='x'))
    proc = pool.run('devstack-gate.py', 'delete', node.name, '--now',
                    env={'OS_CLIENT_CONFIG_FILE': str(pool.tmp_path / 'no-clouds.yaml')})
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith(
        'devstack-gate: node dg-precise-rax-1 (rax, id 1): marked delete, but cannot reach '
        'provider rax (')
    assert proc.stderr.splitlines()[-1].endswith('the reaper finishes the delete')
    assert pool.db.transact(lambda s: s.get_node(node.id)).state == 'delete'


def reap_table(stderr):
    """{(section, reason): count} of a reap run's end table."""
    return {(section, key): n for section, key, n in table(stderr)}


def add_runs(ops, provider, label, outcomes, start):
    def tx(s):
        for outcome in outcomes:
            row = s.create_result(now=start, provider=provider, label=label, job_name='gate')
            s.finish_result(row.id, outcome, now=start + 1800)
    ops.db.transact(tx)


def test_stats_marks_the_provider_whose_failure_rate_stands_out(ops):
    start = time.time() - 2 * HOUR
    add_runs(ops, 'rax', 'precise', ['failure'] * 6 + ['success'] * 6, start)
    add_runs(ops, 'hp', 'precise', ['failure'] + ['success'] * 19, start)
    ops.db.transact(lambda s: [s.record_launch('rax', 'precise', i, outcome, reason, 300, start)
                               for i, (outcome, reason) in enumerate(
                                   [('ready', None)] * 3 + [('failed', 'no-network')])])
    proc = ops.run('stats', '--days', '1')
    assert proc.returncode == 0, proc.stderr
    assert widest(proc.stdout) <= 80, proc.stdout
    (table,) = [t for t in tables(proc.stdout) if t['header'][0] == 'Provider/Label']
    # Each cell's record is its provider line, then the label's and any wrapped lines.
    cells, records = {}, table['records']
    for first, rest in zip(records, records[1:]):
        if first[0][0] in ('rax', 'hp') and rest[0][0] in ('precise', 'quantal'):
            cells[(first[0][0], rest[0][0])] = [' '.join(a + b) for a, b in zip(first, rest)]
    rax = cells[('rax', 'precise')]
    assert rax[1] == '12' and rax[2].startswith('50%') and rax[4] == '4', rax
    assert rax[5].startswith('25%') and 'no-network 1' in rax[5].replace('- ', '-'), rax
    assert rax[7].startswith('OUTLIER: 50% vs 5%'), rax
    assert cells[('hp', 'precise')][7] == 'ok'
    assert cells[('rax', 'quantal')][7] == 'too few runs'
    data = ops.json('stats', '--days', '1')
    outliers = [(c['provider'], c['label']) for c in data['cells'] if c['outlier']]
    assert outliers == [('rax', 'precise')]
    proc = ops.run('stats', '--days', '0')
    assert proc.returncode == 2 and error_line(proc).startswith('devstack-gate: '), proc.stderr


def test_status_page_writes_one_self_contained_file(ops):
    ops.node('rax', 'precise', state='hold', hold_reason='<script>alert(1)</script>')
    ops.image('rax', 'precise')
    out = ops.tmp_path / 'site' / 'status.html'
    out.parent.mkdir()
    proc = ops.run('status-page', str(out))
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    assert html.startswith('<!DOCTYPE html>') and '<svg' in html
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in html and '<script>' not in html
    # No network fetches: the only URL is the SVG namespace, which names, never loads.
    assert set(re.findall(r'https?://[^"\' <>]+', html)) == {'http://www.w3.org/2000/svg'}
    assert 'src=' not in html and '<link' not in html
    assert os.listdir(out.parent) == ['status.html'], 'written whole, nothing left beside it'
    proc = ops.run('status-page', str(ops.tmp_path / 'no-such-dir' / 'x.html'))
    assert proc.returncode == 2
    assert error_line(proc).startswith('devstack-gate: cannot write '), proc.stderr

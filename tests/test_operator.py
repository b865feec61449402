"""devstack-gate, the operators' tools: the real script as a subprocess and the plain functions
of devstackgate.operator, against a real database (SQLite and MariaDB), and the local cloud
for delete --now and what the reaper and launch make of an operator's changes."""

import copy
import io
import json
import os
import re
import subprocess
import sys
import time

import paramiko
import pytest
import yaml

import vmdatabase
from devstackgate import cells, cloud, config as configmod, image, operator, reap, ssh, wait
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

def test_every_subcommand_has_help_and_takes_the_common_options(ops, capsys):
    assert set(SUBCOMMANDS) == {'list', 'image-list', 'hold', 'release', 'delete',
                                'image-demote', 'image-delete', 'image-pause', 'image-unpause',
                                'label-disable', 'label-enable', 'stats', 'status-page',
                                'give', 'snapshot', 'quarantine', 'quarantine-release',
                                'quarantine-list', 'image-guard-undo'}
    proc = ops.run('--help')
    assert proc.returncode == 0 and all(c in proc.stdout for c in SUBCOMMANDS), proc.stdout
    # Each command's help from its parser in this process (a process each costs ~1 s:
    # the one above shows the script's own).
    from devstackgate.cmd import operator as cmd_operator
    for name in SUBCOMMANDS:
        assert cmd_operator.main([name, '--help']) == 0
        out = capsys.readouterr().out
        assert out.startswith('usage: devstack-gate %s' % name), out
        assert '--json' in out and '--config' in out
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
    nodes, held_nodes, switches = tables(out)
    # The configuration pauses rax quantal's builds: list says so too.
    assert [r[0] for r in switches['records']] == [['quantal']]
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
    lines = out.splitlines()
    assert lines[lines.index(held_nodes['lines'][0]) - 1] == 'Held nodes:'
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
    # Set a moment ago: 0s, or 1s on a loaded machine.
    rows = [[('0s' if c == '1s' else c) for c in row] for row in rows]
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
    assert cells.paused(config, rax, ops.db) == {'quantal': 'paused'}
    assert cells.paused(config, hp, ops.db) == {}
    proc = ops.run('image-pause', 'precise', '--reason', 'bad mirror')
    assert proc.returncode == 0, proc.stderr
    assert 'precise: image builds paused on all providers by jeblair: bad mirror; launches go ' \
        'on from the current image' in proc.stderr
    assert '| precise | all      | paused | database | jeblair |' in proc.stdout
    assert cells.paused(config, hp, ops.db)['precise'].startswith('paused by jeblair since ')
    assert cells.paused(config, hp, ops.db)['precise'].endswith(' for all providers: bad mirror')
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
    assert cells.paused(config, hp, ops.db) == {}
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
    # list shows what stops the labels it lists, as image-list does.
    ops.node('rax', 'precise')
    proc = ops.run('list', '--label', 'precise')
    assert proc.returncode == 0 and widest(proc.stdout) <= 80, proc.stdout
    (switches,) = [t for t in tables(proc.stdout) if t['header'][0] == 'Label']
    assert [r[0] for r in switches['records']] == [['precise']]
    assert 'disabled' in proc.stdout and 'known red' in proc.stdout
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
    add_runs(ops, 'rax', 'precise', ['failure'] * 8 + ['success'] * 6, start)
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
    assert rax[1] == '14' and rax[2].startswith('57%') and rax[4] == '4', rax
    assert rax[5].startswith('25%') and 'no-network 1' in rax[5].replace('- ', '-'), rax
    assert rax[7].startswith('OUTLIER: 57% vs 5%'), rax
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


# -- give and snapshot: a developer gets a failed node, or an image of it (seed 000) -------

def launch_and_hold(pool, giftable=True):
    """A real node of the local cloud, held; (its row, the pool's key)."""
    pool.data['providers'][0]['giftable'] = giftable
    pool.write()
    pool.seed_base_images('rax', 'precise')
    proc = pool.run('devstack-vm-launch.py', 'rax')
    assert proc.returncode == 0, proc.stderr
    node = pool.nodes(state='ready')[0]
    proc = pool.run('devstack-gate.py', 'hold', node.name, '--reason', 'bug 1180189',
                    '--hours', '1')
    assert proc.returncode == 0, proc.stderr
    pkey, _ = ssh.ensure_private_key(pool.data['ssh-private-key'])
    return pool.db.transact(lambda s: s.get_node(node.id)), pkey


def developer_key(tmp_path):
    key = paramiko.ECDSAKey.generate(bits=256)
    line = '%s %s dev@laptop' % (key.get_name(), key.get_base64())
    path = tmp_path / 'dev.pub'
    path.write_text(line + '\n')
    return key, line, str(path)


def test_give_lets_the_developer_key_log_in_with_the_host_key_pinned(pool):
    node, _ = launch_and_hold(pool)
    dev, line, path = developer_key(pool.tmp_path)
    # Before: the developer's key is refused.
    with pytest.raises(paramiko.AuthenticationException):
        ssh.connect(node.ip, 2222, node.username, dev, timeout=5, host_key=node.host_key)
    proc = pool.run('devstack-gate.py', 'give', node.name, '--key', path, env={'USER': 'jeblair'})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    known = '[%s]:2222 %s' % (node.ip, node.host_key)
    command = ('ssh -o UserKnownHostsFile=%s.known_hosts -o StrictHostKeyChecking=yes -p 2222 '
               '%s@%s' % (node.name, node.username, node.ip))
    assert '  %s\n' % known in out and out.rstrip().endswith('  ' + command), out
    assert 'of dev@laptop added for %s' % node.username in out
    # The developer saves the line and logs in with their own key, the host key pinned.
    (pool.tmp_path / ('%s.known_hosts' % node.name)).write_text(known + '\n')
    client = paramiko.SSHClient()
    client.load_host_keys(str(pool.tmp_path / ('%s.known_hosts' % node.name)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(node.ip, port=2222, username=node.username, pkey=dev, allow_agent=False,
                   look_for_keys=False, timeout=5)
    try:
        status, output = ssh.run(client, 'cat ~/.ssh/authorized_keys; echo in', timeout=10)
    finally:
        client.close()
    assert status == 0 and output.splitlines() == [line, 'in'], output
    # Who got access is recorded with the hold (list shows it); the hold is unchanged.
    after = pool.db.transact(lambda s: s.get_node(node.id))
    assert after.hold_reason.startswith('bug 1180189; given to dev@laptop (SHA256:')
    assert ' by jeblair at ' in after.hold_reason
    assert (after.state, after.hold_until, after.state_time) == (
        'hold', node.hold_until, node.state_time)
    # Giving the same key again (its text this time) adds no second line.
    proc = pool.run('devstack-gate.py', 'give', str(node.id), '--key', line, '--json')
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data['given_to'] == 'dev@laptop' and data['ssh_command'] == command
    client = ssh.connect(node.ip, 2222, node.username, dev, timeout=5, host_key=node.host_key)
    try:
        assert ssh.run(client, 'cat ~/.ssh/authorized_keys', 10)[1].splitlines() == [line]
    finally:
        client.close()


def test_give_refuses_with_one_line(pool, tmp_path):
    node, pkey = launch_and_hold(pool, giftable=False)
    ready = pool.db.transact(lambda s: s.create_node('rax', 'precise', state='ready',
                                                     name='dg-precise-rax-77'))
    dev, line, path = developer_key(tmp_path)
    private = tmp_path / 'id_rsa'
    pkey.write_private_key_file(str(private))
    db = str(vmdatabase.Database(pool.db_url))
    bad = ('devstack-gate: --key: %s is not one public key line (TYPE BASE64 [COMMENT], as in '
           '~/.ssh/id_ed25519.pub): ')
    cases = [
        (['give', 'nope', '--key', path], 1,
         "devstack-gate: node 'nope': no node with this id or name in database %s" % db),
        (['give', ready.name, '--key', path], 1,
         'devstack-gate: node dg-precise-rax-77 (rax, id %d) is in state ready, not held; only '
         'a held node can be given to a developer' % ready.id),
        (['give', node.name, '--key', path], 1,
         'devstack-gate: node %s: provider rax is not giftable; set giftable: true for it in '
         '%s to give its held nodes to developers' % (operator.describe(node),
                                                       pool.config_path)),
        (['give', node.name, '--key', str(private)], 2,
         bad % ('file ' + str(private)) + '%d lines' % len(private.read_text().splitlines())),
        (['give', node.name, '--key', line + '\n' + line], 2, bad % 'the text given' + '2 lines'),
        (['give', node.name, '--key', 'ssh-ed25519 AAAAnotakey dev'], 2,
         bad % 'the text given' + 'not a valid public key of a known type'),
        (['give', node.name, '--key', 'command="sh" ' + line], 2,
         bad % 'the text given' + 'not a valid public key of a known type'),
        (['give', node.name, '--key', 'ssh-rsa'], 2, bad % 'the text given' + 'no key after '
         'the type'),
        (['give', node.name, '--key', ''], 2, bad % 'the text given' + 'empty'),
    ]
    for args, code, message in cases:
        proc = pool.run('devstack-gate.py', *args)
        assert (proc.returncode, error_line(proc)) == (code, message), args
        assert proc.stdout == '' and 'PRIVATE' not in proc.stderr
    assert pool.db.transact(lambda s: s.get_node(node.id)).hold_reason == 'bug 1180189'
    proc = pool.run('devstack-gate.py', 'snapshot', ready.name)
    assert (proc.returncode, error_line(proc)) == (
        1, 'devstack-gate: node dg-precise-rax-77 (rax, id %d) is in state ready, not held; '
           'only a held node can be snapshotted' % ready.id)


def test_a_snapshot_of_a_held_node_boots_with_its_files_and_the_reaper_keeps_it_for_a_time(
        pool):
    node, pkey = launch_and_hold(pool)
    client = ssh.connect(node.ip, 2222, node.username, pkey, timeout=5, host_key=node.host_key)
    try:
        assert ssh.run(client, 'mkdir -p logs && echo "tempest: 3 failures" > logs/failure.txt',
                       10)[0] == 0
    finally:
        client.close()
    proc = pool.run('devstack-gate.py', 'snapshot', node.name)
    assert proc.returncode == 0, proc.stderr
    (image_id,) = re.findall(r'^  image id: (\S+)$', proc.stdout, re.M)
    assert re.search(r'^  name:     %s-held-\d{8}T\d{6}Z \(active\)$' % re.escape(node.name),
                     proc.stdout, re.M), proc.stdout
    assert 'snapshot-keep-hours 72' in proc.stdout and widest(proc.stdout) <= 80
    config = configmod.load(pool.config_path, check_clouds=False)
    provider_config = config.provider('rax')
    adapter = cloud.connect(provider_config, environ=pool.env())
    snap = adapter.get_image(image_id)
    assert snap.metadata[cloud.META_KIND] == 'held-snapshot'
    assert snap.metadata[cloud.META_NODE_ID] == str(node.id)
    assert 'snapshot %s-held-' % node.name in pool.db.transact(
        lambda s: s.get_node(node.id)).hold_reason
    # A developer boots it (here in the same account) and finds the failed node's files.
    key_name = adapter.pool_keypair(ssh.public_line(pkey))
    flavor = adapter.flavor_for(512)
    server_id = adapter.create_server('dev-copy', image_id, flavor.id, key_name, {})
    try:
        server = wait.for_state(lambda: adapter.get_server(server_id), 'active',
                                time.monotonic() + 30, 0.1, 'dev-copy', failed=('error',),
                                ready=lambda s: s.address)
        client = ssh.wait_for_ssh(server.address, 2222, node.username, pkey,
                                  time.monotonic() + 30, 2, interval=0.1)
        try:
            assert ssh.run(client, 'cat logs/failure.txt', 10) == (0, 'tempest: 3 failures\n')
        finally:
            client.close()
    finally:
        adapter.delete_server(server_id)
    # The reaper keeps it, seen any number of times, and never as a leak ...
    for _ in range(2):
        proc = pool.run('devstack-vm-reap.py', 'rax')
        assert proc.returncode == 0, proc.stderr
        assert not any(k[0] == 'deleted' and k[1] != 'nothing'
                       for k in reap_table(proc.stderr)), proc.stderr
        assert 'kept 72.0 h more (snapshot-keep-hours)' in proc.stderr
    assert adapter.get_image(image_id).state == 'active'
    # ... until snapshot-keep-hours have passed.
    later = reap.Reaper(config, provider_config, pool.db, adapter,
                        clock=lambda: time.time() + 72 * HOUR + 60, out=io.StringIO(),
                        err=io.StringIO()).run()
    assert later.deleted['snapshot-expired'] == 1 and later.deleted['leaked'] == 0
    assert pool.wait_for(lambda: image_id not in {i.id for i in adapter.list_images()},
                         what='the snapshot to go')


def test_the_reap_plan_keeps_a_held_snapshot_until_snapshot_keep_hours():
    now = 1_700_000_000.0
    limits = reap.Limits(boot_timeout=600, hold=24 * HOUR, max_used=8 * HOUR,
                         max_ready=24 * HOUR, leak_grace=0, keep_images=2,
                         interrupted_build=3600, snapshot_keep=72 * HOUR)
    meta = dict(cloud.tags('rax', 'held-snapshot', 'precise', node_id=7),
                **{'dg-snapshot-time': '%d' % (now - 71 * HOUR)})
    fresh = cloud.Image('i-1', 'dg-held-a', 'active', meta, '')      # no cloud time: ours
    old = cloud.Image('i-2', 'dg-held-b', 'active', dict(meta), '2023-11-11T00:00:00Z')
    assert reap.untracked('rax', [], [], [], [fresh, old]) == ({}, {})
    p = reap.plan('rax', limits, [], [], [], [fresh, old], {}, [], now, now)
    assert [(s.id, s.reason, s.image_id) for s in p.steps] == [
        ('i-2', 'snapshot-expired', 'i-2')]
    assert any('dg-held-a (i-1) of node 7: kept 1.0 h more' in n for n in p.notes), p.notes
    assert 'snapshot-expired' in reap.REASONS and 'snapshot-expired' in reap.__doc__

"""./dev.sh demo end to end: the real command, as a developer on a fresh clone types it.

One plain run (module fixture) is checked against its own database, consoles,
logs and the machine afterwards (no process, no port, no node left); a second
run with --keep is stopped the way its summary says.
"""

import collections
import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest
import yaml

import vmdatabase
from tests.pool import ROOT

DEV_SH = os.path.join(ROOT, 'dev.sh')
JOB = 'gate-integration-tests-devstack-vm'
STAMP = r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d'
DEMO_TIMEOUT = 240


def run_demo(*args, timeout=DEMO_TIMEOUT, env=None):
    started = time.monotonic()
    proc = subprocess.run([DEV_SH, 'demo'] + list(args), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, **(env or {})))
    proc.seconds = time.monotonic() - started
    return proc


def load_summary(workdir):
    with open(os.path.join(workdir, 'summary.json')) as f:
        return json.load(f)


def database(summary):
    return vmdatabase.Database(summary['logs']['database'])


def db_tables(summary):
    """What the database says, counted the way the summary counts."""
    providers = list(summary['nodes'])
    nodes, images, results = database(summary).transact(
        lambda s: (s.nodes(), s.images(), s.results()))

    def table(rows):
        counts = {p: collections.Counter() for p in providers}
        for row in rows:
            counts.setdefault(row.provider, collections.Counter())[row.state] += 1
        return {p: dict(c) for p, c in counts.items()}
    return table(nodes), table(images), dict(collections.Counter(r.result for r in results))


def summary_line(stdout, heading):
    (line,) = [l for l in stdout.splitlines() if ' demo: summary: %s: ' % heading in l]
    return line.split(' demo: summary: %s: ' % heading, 1)[1]


def parse_table(text):
    """'fast: hold 1; flaky: none' -> {'fast': {'hold': 1}, 'flaky': {}}"""
    table = {}
    for part in text.split('; '):
        provider, counts = part.split(': ', 1)
        table[provider] = parse_counts(counts)
    return table


def parse_counts(text):
    """'failure 1, success 3' -> {'failure': 1, 'success': 3}; 'none' -> {}"""
    if text == 'none':
        return {}
    return {k: int(v) for k, v in (item.rsplit(' ', 1) for item in text.split(', '))}


def processes_mentioning(text):
    """[(pid, command line)] of live processes whose command line or working directory
    mentions `text` (zombies excluded: they hold nothing)."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    continue
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(errors='replace')
            try:
                cwd = os.readlink('/proc/%s/cwd' % entry)
            except OSError:
                cwd = ''
        except OSError:
            continue
        if text in cmdline or cwd.startswith(text):
            found.append((int(entry), cmdline))
    return found


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def socket_owners():
    """{socket inode: pid} of every process we can read."""
    owners = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir('/proc/%s/fd' % entry)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink('/proc/%s/fd/%s' % (entry, fd))
            except OSError:
                continue
            if target.startswith('socket:['):
                owners[int(target[8:-1])] = int(entry)
    return owners


def listening_inodes():
    """{(address, port): inode} of the IPv4 TCP sockets listening on this host."""
    result = {}
    with open('/proc/net/tcp') as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != '0A':
                continue
            hex_addr, hex_port = fields[1].split(':')
            addr = '.'.join(str(int(hex_addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
            result[(addr, int(hex_port, 16))] = int(fields[9])
    return result


def bound_ports(summary, workdir):
    """Sockets still listening on the demo clouds' node addresses, or on their API and
    admin ports by a process of the demo (another test may reuse a freed port number)."""
    lc = summary['localcloud']
    ports = {int(lc['admin_url'].rsplit(':', 1)[1].strip('/'))} | {
        c['api_port'] for c in lc['clouds'].values()}
    ranges = [ipaddress.ip_network(c['address_range']) for c in lc['clouds'].values()]
    ours = {lc['pid']} | {p for p, _ in processes_mentioning(workdir)}
    owners = socket_owners()
    left = []
    for (addr, port), inode in sorted(listening_inodes().items()):
        if any(ipaddress.ip_address(addr) in r for r in ranges):
            left.append((addr, port))
        elif addr in ('127.0.0.1', '0.0.0.0') and port in ports and owners.get(inode) in (
                ours | {None}):
            left.append((addr, port))
    return left


def wait_for(predicate, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('demo') / 'work dir')   # a space, on purpose
    proc = run_demo('--workdir', workdir)
    return proc, workdir, load_summary(workdir) if os.path.exists(
        os.path.join(workdir, 'summary.json')) else None


# -- the plain run ----------------------------------------------------------------------

@pytest.mark.timeout(DEMO_TIMEOUT + 60)
def test_demo_exits_0_with_readable_timestamped_lines(demo):
    proc, workdir, summary = demo
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary is not None and summary['problems'] == []
    assert 'Traceback' not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(re.match(STAMP + ' demo: ', l) for l in lines), proc.stdout
    # One line per step of each stage, in order.
    text = proc.stdout
    order = [text.index(s) for s in ('1. building the cached images', '2. filling the pools',
                                     '3. gate jobs', '4. reaping', 'summary (also in')]
    assert order == sorted(order)
    for provider in ('fast', 'flaky'):
        assert re.search(r'demo: image %s precise: \S+ built' % provider, text)
        assert re.search(r'demo: launch %s \(run 1\): ' % provider, text)
        assert re.search(r'demo: reap %s \(run 1\): ' % provider, text)
    assert len(re.findall(r'demo: gate #\d change \d+,\d \(', text)) == 4
    assert text.rstrip().splitlines()[-1].endswith(' demo: done in %.0f s' % summary['seconds'])
    assert summary['seconds'] < 120, 'the demo should take about a minute at most'


def test_summary_figures_match_the_database(demo):
    proc, workdir, summary = demo
    nodes, images, results = db_tables(summary)
    # The JSON.
    assert summary['nodes'] == nodes
    assert summary['images'] == images
    assert summary['results'] == results
    # The printed lines.
    assert parse_table(summary_line(proc.stdout, 'nodes per provider and state')) == nodes
    assert parse_table(summary_line(proc.stdout, 'images per provider and state')) == images
    assert parse_counts(summary_line(proc.stdout, 'gate results')) == results
    # What the demo sets out to show: one cached image per provider, three passing gate
    # jobs and a held node, nothing else left after the reap.
    assert images == {'fast': {'ready': 1}, 'flaky': {'ready': 1}}
    assert results == {'success': 3, 'failure': 1}
    assert sum(c.get('hold', 0) for c in nodes.values()) == 1
    assert all(set(c) <= {'hold'} for c in nodes.values()), nodes
    # Gate results, each against its row.
    rows = {(r.job_name, r.build_number): r
            for r in database(summary).transact(lambda s: s.results())}
    assert [g['build'] for g in summary['gates']] == [1, 2, 3, 4]
    for g in summary['gates']:
        row = rows[(JOB, str(g['build']))]
        assert (g['result'], g['expected']) == (row.result, row.result)
        assert (g['node'], g['provider']) == (row.node_name, row.provider)
        assert g['change'] == row.change_ref


def test_launch_failures_by_reason_match_the_launch_logs(demo):
    """The failed rows are gone after the reap: the launch consoles are the record."""
    proc, workdir, summary = demo
    logged = {}
    for provider in summary['launch']['runs']:
        reasons = collections.Counter()
        for run in range(1, summary['launch']['runs'][provider] + 1):
            path = os.path.join(workdir, 'logs', '2-launch-%s-%d.txt' % (provider, run))
            with open(path) as f:
                reasons.update(re.findall(r'launch: %s precise \S+: (?:boot )?failed \(([\w-]+)\)'
                                          % provider, f.read()))
        logged[provider] = dict(reasons)
    assert summary['launch_failures'] == logged
    assert parse_table(summary_line(proc.stdout, 'launch failures by reason')) == logged
    # The seeded flaky cloud: two boots end in ERROR, so its pool takes three runs.
    assert logged == {'fast': {}, 'flaky': {'error': 2}}
    assert summary['launch']['runs'] == {'fast': 1, 'flaky': 3}
    assert summary['launch']['ready'] == {'fast': 2, 'flaky': 2}


def test_the_failing_change_holds_its_node(demo):
    proc, workdir, summary = demo
    (failed,) = [g for g in summary['gates'] if g['result'] == 'failure']
    assert (failed['change'], failed['build']) == ('1002,1', 2)
    (held,) = summary['held']
    row = database(summary).transact(lambda s: s.get_node(held['id']))
    assert row.state == 'hold'
    assert (row.name, row.provider) == (held['node'], held['provider']) == (
        failed['node'], failed['provider'])
    assert row.held_by == '%s #2' % JOB
    assert row.hold_reason == held['reason'] == 'failure: change 1002,1 (job %s, build 2)' % JOB
    # How to reach it: the pool's key, the node's port, its recorded host key pinned.
    assert held['ssh_argv'][:5] == ['ssh', '-i', os.path.join(workdir, 'keys', 'id_rsa'), '-p',
                                    str(held['port'])]
    assert held['ssh_argv'][-1] == '%s@%s' % (row.username, row.ip)
    assert held['ssh'] == ' '.join(shlex.quote(a) for a in held['ssh_argv'])
    with open(os.path.join(workdir, 'known_hosts')) as f:
        assert f.read() == '[%s]:%d %s\n' % (row.ip, held['port'], row.host_key)
    (line,) = [l for l in proc.stdout.splitlines() if 'summary: held node %s ' % row.name in l]
    assert line.endswith(held['ssh']) and 'with --keep' in line


def test_consoles_show_the_node_near_the_top(demo):
    proc, workdir, summary = demo
    for g in summary['gates']:
        with open(g['console']) as f:
            lines = f.read().splitlines()
        start = next(i for i, l in enumerate(lines) if 'devstack-vm-gate:' in l)
        gate_part = lines[start:]
        assert 'NODE_PROVIDER=%s' % g['provider'] in gate_part[:25], g['console']
        assert 'NODE_NAME=%s' % g['node'] in gate_part[:25]
        assert lines[-1] == 'Finished: %s' % ('SUCCESS' if g['result'] == 'success'
                                              else 'FAILURE')
        text = '\n'.join(lines)
        # The node came from a demo image: the package cache is on it.
        assert "stack.sh: installing 6 packages from the image's cache" in text
        assert os.path.isfile(os.path.join(g['logs'], 'node', 'stack.sh.log'))
    by_change = {g['change']: g for g in summary['gates']}
    with open(by_change['1002,1']['console']) as f:
        assert 'exercise.sh: exercises/flavors.sh FAILED' in f.read()
    with open(by_change['1001,1']['console']) as f:
        assert 'cache.sh: 6 packages came with the image' in f.read()


def test_the_clouds_were_checked_before_stopping(demo):
    proc, workdir, summary = demo
    assert summary['leaks'] == 0
    held = {h['node'] for h in summary['held']}
    assert {s['name'] for c in summary['clouds'].values() for s in c['servers']} == held
    assert all(s['state'] == 'hold' for c in summary['clouds'].values() for s in c['servers'])
    images = {i.name for i in database(summary).transact(lambda s: s.images(state='ready'))}
    assert {i['name'] for c in summary['clouds'].values() for i in c['images']} == images
    assert summary['clouds']['flaky']['api_errors_injected'] > 0, 'the flaky cloud was flaky'
    assert 'nothing leaked' in summary_line(proc.stdout, 'clouds')


def test_nothing_is_left_running_or_listening(demo):
    proc, workdir, summary = demo
    assert summary['stopped'] == {'localcloud_exit': 0, 'problems': [], 'processes_left': []}
    assert not alive(summary['localcloud']['pid'])
    assert processes_mentioning(workdir) == []
    assert bound_ports(summary, workdir) == []
    assert 'kept' not in summary and 'kept:' not in proc.stdout


def test_no_secret_is_printed(demo):
    proc, workdir, summary = demo
    with open(os.path.join(workdir, 'clouds.yaml')) as f:
        passwords = [c['auth']['password'] for c in yaml.safe_load(f)['clouds'].values()]
    texts = [proc.stdout, proc.stderr]
    for sub in ('logs', 'consoles'):
        for name in os.listdir(os.path.join(workdir, sub)):
            with open(os.path.join(workdir, sub, name), errors='replace') as f:
                texts.append(f.read())
    with open(os.path.join(workdir, 'summary.json')) as f:
        texts.append(f.read())
    everything = '\n'.join(texts)
    assert passwords and not any(p in everything for p in passwords)
    assert 'PRIVATE KEY' not in everything


def test_a_non_empty_workdir_without_an_earlier_demo_is_refused(tmp_path):
    (tmp_path / 'precious.txt').write_text('mine\n')
    proc = run_demo('--workdir', str(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(
        'demo: error: --workdir %s is not empty and holds no earlier demo; give a new or empty '
        'directory' % tmp_path)
    assert (tmp_path / 'precious.txt').read_text() == 'mine\n'
    assert 'Traceback' not in proc.stdout + proc.stderr


# -- --keep ---------------------------------------------------------------------------------

@pytest.mark.timeout(DEMO_TIMEOUT + 90)
def test_keep_leaves_the_clouds_running_until_stopped_as_the_summary_says(tmp_path):
    """The README's command as typed, plus --keep: the work dir is a new temporary one."""
    proc = run_demo('--keep', env={'TMPDIR': str(tmp_path)})
    first = re.match(STAMP + r' demo: work dir (.+) \(logs in ', proc.stdout)
    assert first, proc.stdout + proc.stderr
    workdir = first.group(1)
    assert os.path.dirname(workdir) == str(tmp_path)
    summary = load_summary(workdir) if os.path.exists(os.path.join(workdir, 'summary.json')) \
        else None
    pid = summary and summary.get('kept', {}).get('pid')
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert summary['workdir'] == workdir, proc.stdout
        kept = summary['kept']
        assert kept['pid'] == summary['localcloud']['pid']
        assert alive(pid), proc.stdout
        assert [p for p, _ in processes_mentioning(workdir)] == [pid], proc.stdout
        stop_lines = [l for l in proc.stdout.splitlines() if ' demo: kept: stop the clouds' in l]
        assert len(stop_lines) == 1 and stop_lines[0].endswith(': ' + kept['stop'])
        assert kept['stop'] == 'kill -TERM %d' % pid
        assert 'kept: look at a cloud: ' in proc.stdout
        # The held node answers, with the ssh command the summary prints (BatchMode added).
        (held,) = summary['held']
        (line,) = [l for l in proc.stdout.splitlines() if 'summary: held node ' in l]
        assert line.endswith('log in with: ' + held['ssh'])
        argv = held['ssh_argv'][:-1] + ['-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10',
                                        held['ssh_argv'][-1], 'cat cache/packages.txt']
        ssh = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
        assert ssh.returncode == 0, ssh.stderr
        assert 'rabbitmq-server 2.7.1' in ssh.stdout
        # Stop the clouds the way the summary says.
        stop = subprocess.run(['bash', '-c', kept['stop']], capture_output=True, text=True,
                              timeout=30)
        assert stop.returncode == 0, stop.stderr
        assert wait_for(lambda: not alive(pid), 30), 'localcloud is still running'
        assert wait_for(lambda: not processes_mentioning(workdir), 10), \
            processes_mentioning(workdir)
        assert wait_for(lambda: not bound_ports(summary, workdir), 10), \
            bound_ports(summary, workdir)
        assert not os.path.exists(kept['ready_file'])
    finally:
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)

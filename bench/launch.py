"""Launch: fill pools across two local clouds with a fixed boot delay D.

Per case (D, N): two local clouds, each in its own process (two clouds, two
interpreters, as two real providers would be), N/2 nodes min-ready on each,
and both devstack-vm-launch.py runs started together as real subprocesses on a
fresh SQLite database, with the default configuration except api-rate 0 (no
spacing of API calls: the local cloud has no rate limit to respect) and
max-servers/min-ready/boot-timeout for the pool's size.

The reference, measured in the same run on the same cloud: boot one server
with the same boot delay and time until SSH logs in (D + the time SSH takes to
answer), polling as fast as a client reasonably can (every 20 ms).  The wall
time of the launch runs (both, start of the first to end of the last) is set
against it.

Figures: wall / reference, API calls per node by kind (the clouds' own
counts), server lists per run (flat in N: one list per poll, never a GET per
server), ACTIVE -> ready (the cloud's time the server turned ACTIVE to the
node row's state_time when it became ready), peak threads and peak RSS of a
launch process.  The wall row's detail has the CPU seconds the launch runs and
the clouds used meanwhile: the local clouds' nodes (an SSH server and the ready
check's processes each) run on the same cores as the launch runs, which a real
cloud's nodes do not.
"""

import concurrent.futures
import contextlib
import os
import statistics
import threading
import time

import yaml

from bench.common import (ROOT, Goal, Row, child_env, percentile, process_cpu, python_cmd,
                          spawn_measured)

NAME = 'launch'
LABEL = 'precise'
BASE_IMAGE = 'Ubuntu 12.04 LTS'
PROVIDERS = ('rax', 'hp')
LIST_KEY = 'GET /compute/v2.1/servers/detail'
GET_KEY = 'GET /compute/v2.1/servers/{id}'
CREATE_KEY = 'POST /compute/v2.1/servers'


# -- shared with bench.reap ----------------------------------------------------------

def base_dir(workdir):
    root = os.path.join(workdir, 'base-image')
    os.makedirs(os.path.join(root, 'etc'), exist_ok=True)
    with open(os.path.join(root, 'etc', 'issue'), 'w') as f:
        f.write('Ubuntu 12.04 LTS localcloud\n')
    return root


def cloud_config(name, base, faults, **extra):
    config = {'name': name, 'seed': 11, 'images': [{'name': BASE_IMAGE, 'directory': base}],
              'faults': dict(faults)}
    config.update(extra)
    return config


@contextlib.contextmanager
def clouds(workdir, configs):
    """Each cloud in its own devstack-localcloud process; yields ({name: handle},
    the path of one clouds.yaml holding every entry, the clouds' pids)."""
    from localcloud.testing import local_clouds_subprocess
    with contextlib.ExitStack() as stack:
        with concurrent.futures.ThreadPoolExecutor(len(configs)) as pool:
            started = list(pool.map(
                lambda c: stack.enter_context(local_clouds_subprocess(
                    {'clouds': [c]}, tmp_dir=workdir, startup_timeout=60)), configs))
        handles, entries = {}, {}
        for lc in started:
            with open(lc.clouds_yaml) as f:
                entries.update(yaml.safe_load(f)['clouds'])
            handles.update(lc.clouds)
        path = os.path.join(workdir, 'clouds-%d.yaml' % id(handles))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            yaml.safe_dump({'clouds': entries}, f)
        yield handles, path, [lc.process.pid for lc in started]


def provider_entry(name, **overrides):
    data = {'name': name, 'cloud': name, 'ssh-port': 2222, 'api-rate': 0, 'api-timeout': 60,
            'images': [{'name': LABEL, 'base-image': BASE_IMAGE, 'min-ram': 512,
                        'min-ready': 1}]}
    data.update(overrides)
    return data


def write_config(workdir, db_url, providers, **settings):
    path = os.path.join(workdir, 'devstack-gate-%d.yaml' % time.monotonic_ns())
    data = {'database': db_url, 'ssh-private-key': os.path.join(workdir, 'keys', 'id_rsa'),
            'providers': providers}
    data.update(settings)
    with open(path, 'w') as f:
        yaml.safe_dump(data, f)
    return path


def script_env(config_path, clouds_yaml):
    return child_env({'OS_CLIENT_CONFIG_FILE': clouds_yaml, 'DEVSTACK_GATE_CONFIG': config_path,
                      'PYTHONUNBUFFERED': '1'})


def script(name, *args):
    return python_cmd() + [os.path.join(ROOT, name)] + list(args)


def seed_image(db, provider, handle):
    (image,) = [i for i in handle.images() if i['name'] == BASE_IMAGE]
    db.transact(lambda s: s.create_image(provider, LABEL, state='ready', name=BASE_IMAGE,
                                         external_id=image['id']))


def per_node(calls, n):
    return {k: round(v / n, 3) for k, v in sorted(calls.items())}


class ThreadSampler:
    """Peak thread count of this process's children whose command line holds `marker`."""

    def __init__(self, marker, every=0.02):
        self.marker = marker.encode()
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        from localcloud.testing import child_processes
        while not self._stop.is_set():
            for pid in child_processes():
                try:
                    with open('/proc/%d/cmdline' % pid, 'rb') as f:
                        if self.marker not in f.read():
                            continue
                    with open('/proc/%d/status' % pid) as f:
                        for line in f:
                            if line.startswith('Threads:'):
                                self.peak = max(self.peak, int(line.split()[1]))
                except (OSError, ValueError):
                    continue
            self._stop.wait(self.every)


# -- the reference -------------------------------------------------------------------

def ssh_reference(handle, workdir, samples=3):
    """Seconds from create until SSH logs in (median of `samples` boots in parallel),
    and the part of it after the server turned ACTIVE."""
    from localcloud.testing import SSHKey, ssh_connect
    key = SSHKey(workdir)
    nova = handle.nova('2.1')
    nova.keypairs.create('bench-ref', public_key=key.public)
    (image,) = [i for i in handle.images() if i['name'] == BASE_IMAGE]
    port = handle.info()['ssh_port']

    def one(i):
        started = time.monotonic()
        server = nova.servers.create('bench-ref-%d' % i, image['id'], '1', key_name='bench-ref')
        while True:
            s = nova.servers.get(server.id)
            if s.status == 'ACTIVE':
                break
            if s.status == 'ERROR' or time.monotonic() - started > 120:
                raise RuntimeError('reference server went %s' % s.status)
            time.sleep(0.02)
        active = time.monotonic()
        address = s.networks['private'][0]
        while True:
            try:
                ssh_connect(address, port, key.key, timeout=2).close()
                break
            except Exception:
                if time.monotonic() - started > 120:
                    raise
                time.sleep(0.02)
        done = time.monotonic()
        nova.servers.delete(server.id)
        return done - started, done - active

    with concurrent.futures.ThreadPoolExecutor(samples) as pool:
        got = list(pool.map(one, range(samples)))
    nova.keypairs.delete('bench-ref')
    return (statistics.median(t for t, _ in got), statistics.median(s for _, s in got))


# -- one case ------------------------------------------------------------------------

def fill(ctx, delay, nodes, settings=None):
    """Fill a pool of `nodes` (half per provider) with boot delay `delay`: a dict of figures."""
    import vmdatabase
    per = nodes // len(PROVIDERS)
    base = base_dir(ctx.workdir)
    faults = {'boot-delay': delay}
    configs = [cloud_config(name, base, faults) for name in PROVIDERS]
    with clouds(ctx.workdir, configs) as (handles, clouds_yaml, cloud_pids), \
            ctx.database('sqlite') as url:
        reference, ssh_part = ssh_reference(handles[PROVIDERS[0]], ctx.workdir)
        db = vmdatabase.Database(url).upgrade()
        for name in PROVIDERS:
            seed_image(db, name, handles[name])
            handles[name].reset_stats()
        providers = [provider_entry(name, **{'max-servers': per, 'boot-timeout': 600,
                                             'images': [{'name': LABEL, 'base-image': BASE_IMAGE,
                                                         'min-ram': 512, 'min-ready': per}]})
                     for name in PROVIDERS]
        config = write_config(ctx.workdir, url, providers, **(settings or {}))
        env = script_env(config, clouds_yaml)
        with ThreadSampler('devstack-vm-launch') as threads:
            clouds_before = [process_cpu(pid) for pid in cloud_pids]
            started, epoch = time.perf_counter(), time.time()
            with concurrent.futures.ThreadPoolExecutor(len(PROVIDERS)) as pool:
                procs = list(pool.map(lambda name: spawn_measured(
                    script('devstack-vm-launch.py', name), env=env, cwd=ctx.workdir,
                    timeout=900), PROVIDERS))
            wall = time.perf_counter() - started
            cloud_cpu = sum(process_cpu(pid) - before
                            for pid, before in zip(cloud_pids, clouds_before))
        for name, proc in zip(PROVIDERS, procs):
            if proc['rc'] != 0:
                raise RuntimeError('devstack-vm-launch.py %s exited %d: %s'
                                   % (name, proc['rc'], proc['stderr'][-2000:]))
        rows = db.transact(lambda s: s.nodes())
        ready = [n for n in rows if n.state == 'ready']
        if len(ready) != per * len(PROVIDERS):
            raise RuntimeError('%d of %d nodes ready' % (len(ready), nodes))
        calls, lists, latencies, active_at = {}, [], [], []
        for name in PROVIDERS:
            stats = handles[name].stats()['calls']
            for k, v in stats.items():
                calls[k] = calls.get(k, 0) + v
            lists.append(stats.get(LIST_KEY, 0))
            active = {s['id']: s['launched_at'] for s in handles[name].servers()}
            active_at += [active[n.external_id] for n in ready
                          if n.provider == name and active.get(n.external_id)]
            latencies += [n.state_time - active[n.external_id] for n in ready
                          if n.provider == name and active.get(n.external_id)]
    # When, in seconds after the runs started, the first and the last node was
    # recorded (boot), turned ACTIVE and became ready.
    timeline = {what: [round(min(ts) - epoch, 2), round(max(ts) - epoch, 2)] if ts else None
                for what, ts in (('created', [n.created for n in rows]), ('active', active_at),
                                 ('ready', [n.state_time for n in ready]))}
    return {'wall': wall, 'timeline': timeline, 'reference': reference,
            'ssh': ssh_part, 'calls': calls, 'lists_per_run': max(lists), 'latencies': latencies,
            'threads': threads.peak,
            'rss': max(p['rss_mib'] for p in procs), 'cpu': sum(p['cpu'] for p in procs),
            'cloud_cpu': cloud_cpu,
            'stderr': {name: p['stderr'] for name, p in zip(PROVIDERS, procs)}}


def run(ctx):
    if ctx.full:
        cases = [(3.0, 10), (3.0, 50), (3.0, 200), (10.0, 10), (10.0, 50), (10.0, 200)]
    else:
        cases = [(0.5, 4)]
    goals = {3.0: 1.5, 10.0: 1.2, 0.5: 1.5}
    big = max(n for _, n in cases)
    out = []
    flat = {}           # delay -> server lists per run at its smallest N
    for delay, n in cases:
        got = fill(ctx, delay, n)
        case = 'D=%gs N=%d' % (delay, n)
        per_kind = per_node(got['calls'], n)
        out.append(Row(NAME, case, 'wall / (D + SSH answer)', got['wall'], 's',
                       reference=got['reference'], reference_name='s one boot to SSH',
                       goal=Goal('<=', goals[delay], of='ratio',
                                 text='ratio <= %g at N=%d' % (goals[delay], big))
                       if n == big else None,
                       detail={'D': delay, 'ssh_after_active': got['ssh'],
                               'timeline': got['timeline'],
                               'launch_cpu_s': got['cpu'], 'clouds_cpu_s': got['cloud_cpu'],
                               'cores': os.cpu_count()}))
        out.append(Row(NAME, case, 'API calls per node', sum(got['calls'].values()) / n, 'calls',
                       detail={'per_kind': per_kind}))
        out.append(Row(NAME, case, 'create calls per node', per_kind.get(CREATE_KEY, 0), 'calls',
                       goal=Goal('==', 1, text='one create per node')))
        out.append(Row(NAME, case, 'server GETs (per-server polls)',
                       got['calls'].get(GET_KEY, 0), 'calls',
                       goal=Goal('==', 0, text='no per-server GET polling')))
        lists = got['lists_per_run']
        flat.setdefault(delay, lists)
        out.append(Row(NAME, case, 'server lists per run', lists, 'calls',
                       reference=flat[delay], reference_name='at the smallest N',
                       goal=Goal('<=', 1.5, of='ratio', text='flat in N (ratio <= 1.5)')))
        lat = got['latencies']
        out.append(Row(NAME, case, 'ACTIVE -> ready p50', percentile(lat, 50), 's',
                       detail={'n': len(lat)}))
        out.append(Row(NAME, case, 'ACTIVE -> ready p95', percentile(lat, 95), 's',
                       goal=Goal('<', 1.0, text='< 1 s at the default config'),
                       detail={'max': max(lat) if lat else None}))
        out.append(Row(NAME, case, 'peak threads (one launch process)', got['threads'],
                       'threads'))
        out.append(Row(NAME, case, 'peak RSS (one launch process)', got['rss'], 'MiB',
                       goal=Goal('<', 150, text='< 150 MiB') if n == big else None))
    return out

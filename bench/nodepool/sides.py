"""One fill of each side on a fresh local cloud: the measuring parts.

Each run gets its own local cloud process (same boot delay, no cloud-side API
limit or latency: each side spaces its calls at its own default rate), and
Nodepool its own ZooKeeper.  The clock starts when the side's process is
started; a pool is full when its N-th node is recorded ready (the side's own
``state_time``: Nodepool's ZooKeeper node, our database row).  The cloud's
call counts are read at that moment.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from bench import common
from bench.launch import base_dir
from bench.nodepool import config as cfg
from bench.nodepool.zookeeper import zookeeper

ZKCLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'zkclient.py')
FETCH = os.path.join(common.ROOT, 'devstack-vm-fetch.py')
#: Seconds one fill may take, beyond which the run fails.
FILL_TIMEOUT = 900
#: Seconds one NodeRequest may take to be fulfilled from a ready pool.
REQUEST_TIMEOUT = 120
#: Seconds a launcher gets to exit after SIGTERM.
STOP_TIMEOUT = 30
#: Seconds the local cloud gets to start.
CLOUD_STARTUP = 60
SEED = 11
CREATE_KEY = 'POST /compute/v2.1/servers'


def create_pacing(spans):
    """How the side spaced its server creates: {'creates', 'spread_s' (first to last
    start), 'min_gap_s' (least time between two starts)}, from the cloud's call spans."""
    starts = sorted(start for start, _ in spans)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    return {'creates': len(starts),
            'spread_s': round(starts[-1] - starts[0], 3) if starts else None,
            'min_gap_s': round(min(gaps), 3) if gaps else None}


def say(msg):
    print('%s bench: nodepool: %s' % (time.strftime('%Y-%m-%d %H:%M:%S'), msg),
          file=sys.stderr, flush=True)


def cloud_yaml(name, delay, ssh_port, base):
    return {'name': name, 'seed': SEED, 'ssh-port': ssh_port,
            'images': [{'name': cfg.BASE_IMAGE, 'directory': base}],
            'faults': {'boot-delay': delay}}


def _private_yaml(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        yaml.safe_dump(data, f, default_flow_style=False)
    return path


def _terminate(proc, timeout=STOP_TIMEOUT):
    common.terminate(proc, timeout)


def _tail(path, lines=8):
    try:
        with open(path, errors='replace') as f:
            return ' | '.join(line.strip() for line in f.readlines()[-lines:])
    except OSError:
        return ''


def _json_lines(text):
    import json
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('{'):
            out.append(json.loads(line))
    return out


# -- Nodepool ----------------------------------------------------------------------

def nodepool_fill(workdir, venv, delay, nodes, host_key_checking, requests, ssh_port):
    """Fill one Nodepool pool of `nodes` on a fresh cloud, then time `requests`
    NodeRequests from the ready pool.  A dict of figures."""
    from localcloud.testing import local_clouds_subprocess
    run_dir = tempfile.mkdtemp(prefix='nodepool-', dir=workdir)
    name = 'npcloud'
    python = os.path.join(venv, 'bin', 'python')
    launcher = os.path.join(venv, 'bin', 'nodepool-launcher')
    with local_clouds_subprocess({'clouds': [cloud_yaml(name, delay, ssh_port,
                                                        base_dir(workdir))]},
                                 tmp_dir=run_dir, startup_timeout=CLOUD_STARTUP) as lc, \
            zookeeper(run_dir) as zk:
        handle = lc[name]
        conf = _private_yaml(os.path.join(run_dir, 'nodepool.yaml'), cfg.nodepool_yaml(
            zk, name, nodes, host_key_checking=host_key_checking, ssh_port=ssh_port))
        zk_args = [python, ZKCLIENT, '--hosts', '%s:%d' % (zk['host'], zk['port']),
                   '--ca', zk['ca'], '--cert', zk['cert'], '--key', zk['key']]
        env = dict(os.environ, OS_CLIENT_CONFIG_FILE=lc.clouds_yaml, PYTHONUNBUFFERED='1')
        for var in ('PYTHONPATH', 'DEVSTACK_GATE_CONFIG', 'STATSD_HOST'):
            env.pop(var, None)
        log_path = os.path.join(run_dir, 'launcher.log')
        handle.reset_stats()
        log = open(log_path, 'wb')
        started = time.time()
        proc = subprocess.Popen([launcher, '-d', '--no-webapp', '-c', conf], env=env,
                                cwd=run_dir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            waited = _wait_beside(zk_args + ['wait-ready', cfg.LABEL, str(nodes),
                                             str(FILL_TIMEOUT)], env, proc, log_path)
            stats = handle.stats()
            pacing = create_pacing(handle.call_spans(CREATE_KEY))
            got = _json_lines(waited.stdout)
            if waited.returncode != 0 or not got or got[-1].get('event') != 'ready':
                raise RuntimeError('Nodepool filled %s of %d nodes (%s); launcher log: %s'
                                   % (got[-1].get('count') if got else '?', nodes,
                                      (got[-1].get('states') if got else
                                       waited.stderr.strip()[-300:]), _tail(log_path)))
            ready_times = got[-1]['ready_times'][:nodes]
            req = []
            if requests:
                asked = subprocess.run(zk_args + ['request', cfg.LABEL, str(requests),
                                                  str(REQUEST_TIMEOUT)],
                                       capture_output=True, text=True, env=env,
                                       stdin=subprocess.DEVNULL,
                                       timeout=REQUEST_TIMEOUT * requests + 60)
                req = [e for e in _json_lines(asked.stdout) if e.get('event') == 'request']
                if asked.returncode != 0 or any(e['state'] != 'fulfilled' for e in req):
                    raise RuntimeError('Nodepool request failed: %s %s'
                                       % (req[-1:] or '', asked.stderr.strip()[-300:]))
        finally:
            _terminate(proc)
            log.close()
        servers = handle.servers()
    return {'fill': max(ready_times) - started, 'ready_times': [t - started for t in ready_times],
            'calls': stats['calls'], 'events': stats.get('events', {}),
            'servers_created': sum(1 for s in servers),
            'requests': [e['seconds'] for e in req], 'ssh_port': ssh_port, 'pacing': pacing}


def _wait_beside(argv, env, launcher, log_path, timeout=FILL_TIMEOUT + 60):
    """Run the zkclient to its end, failing at once if the launcher dies meanwhile."""
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    waiter = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    deadline = time.monotonic() + timeout
    try:
        while waiter.poll() is None:
            if launcher.poll() is not None:
                raise RuntimeError('nodepool-launcher exited %s: %s'
                                   % (launcher.returncode, _tail(log_path)))
            if time.monotonic() > deadline:
                raise RuntimeError('ZooKeeper watcher did not finish within %d s' % timeout)
            time.sleep(0.05)
    finally:
        _terminate(waiter, 5)
    out.seek(0)
    err.seek(0)
    return subprocess.CompletedProcess(argv, waiter.returncode, out.read().decode(),
                                       err.read().decode())


# -- devstack-gate ------------------------------------------------------------------

def _our_env(workdir, config_path, clouds_yaml):
    env = common.child_env({'OS_CLIENT_CONFIG_FILE': clouds_yaml,
                            'DEVSTACK_GATE_CONFIG': config_path, 'PYTHONUNBUFFERED': '1',
                            'PYTHONPYCACHEPREFIX': os.path.join(workdir, 'pycache'),
                            'DEVSTACK_GATE_CACHE_DIR': os.path.join(workdir, 'dg-cache')})
    env.pop('PYTHONDONTWRITEBYTECODE', None)
    for var in ('JOB_NAME', 'BUILD_NUMBER', 'ZUUL_CHANGE', 'GERRIT_CHANGE_NUMBER',
                'STATSD_HOST'):
        env.pop(var, None)
    return env


def ours_fill(workdir, delay, nodes, requests, ssh_port):
    """Fill our pool of `nodes` with one devstack-vm-launch.py run on a fresh cloud,
    then time `requests` whole fetch processes and `requests` in-process claims."""
    import vmdatabase
    from localcloud.testing import local_clouds_subprocess
    run_dir = tempfile.mkdtemp(prefix='ours-', dir=workdir)
    name = 'dgcloud'
    db_path = os.path.join(run_dir, 'devstack-gate.db')
    url = 'sqlite:///%s' % db_path
    with local_clouds_subprocess({'clouds': [cloud_yaml(name, delay, ssh_port,
                                                        base_dir(workdir))]},
                                 tmp_dir=run_dir, startup_timeout=CLOUD_STARTUP) as lc:
        handle = lc[name]
        db = vmdatabase.Database(url).upgrade()
        (image,) = [i for i in handle.images() if i['name'] == cfg.BASE_IMAGE]
        db.transact(lambda s: s.create_image(name, cfg.LABEL, state='ready',
                                             name=cfg.BASE_IMAGE, external_id=image['id']))
        config_path = os.path.join(run_dir, 'devstack-gate.yaml')
        with open(config_path, 'w') as f:
            yaml.safe_dump({'database': url,
                            'ssh-private-key': os.path.join(run_dir, 'keys', 'id_rsa'),
                            'providers': [cfg.our_provider(name, nodes, ssh_port=ssh_port)]}, f)
        env = _our_env(workdir, config_path, lc.clouds_yaml)
        handle.reset_stats()
        started = time.time()
        proc = common.spawn_measured(python_script('devstack-vm-launch.py', name), env=env,
                                     cwd=run_dir, timeout=FILL_TIMEOUT)
        stats = handle.stats()
        pacing = create_pacing(handle.call_spans(CREATE_KEY))
        if proc['rc'] != 0:
            raise RuntimeError('devstack-vm-launch.py exited %d: %s'
                               % (proc['rc'], proc['stderr'].strip()[-500:]))
        ready = [n for n in db.transact(lambda s: s.nodes()) if n.state == 'ready']
        if len(ready) < nodes:
            raise RuntimeError('devstack-vm-launch.py made %d of %d nodes ready'
                               % (len(ready), nodes))
        ready_times = sorted(n.state_time for n in ready)[:nodes]
        fetches, claims = [], []
        if requests:
            argv = common.python_cmd() + [FETCH, '--config', config_path, cfg.LABEL]
            # bytecode into the private cache and the validated configuration cached,
            # as on a slave in steady state: one earlier fetch (it takes a node too)
            warm = common.spawn_measured(argv, env=dict(env, JOB_NAME='warm-up'))
            if warm['rc'] != 0:
                raise RuntimeError('devstack-vm-fetch.py exited %d: %s'
                                   % (warm['rc'], warm['stderr'].strip()[-300:]))
            for i in range(requests):
                got = common.spawn_measured(argv, env=dict(env, JOB_NAME='bench',
                                                           BUILD_NUMBER=str(i)))
                if got['rc'] != 0 or 'NODE_ID=' not in got['stdout']:
                    raise RuntimeError('devstack-vm-fetch.py exited %d: %s'
                                       % (got['rc'], got['stderr'].strip()[-300:]))
                fetches.append(got['wall'])
            claimer = vmdatabase.Database(url)
            claimer.transact(lambda s: s.node_counts(cfg.LABEL))      # connected first
            for i in range(requests):
                t = time.perf_counter()
                node, _ = claimer.claim_node(cfg.LABEL, 'bench-claim-%d' % i)
                claims.append(time.perf_counter() - t)
                if node is None:
                    raise RuntimeError('in-process claim found no ready node')
    return {'fill': max(ready_times) - started, 'ready_times': [t - started for t in ready_times],
            'launch_wall': proc['wall'], 'calls': stats['calls'],
            'events': stats.get('events', {}), 'fetches': fetches, 'claims': claims,
            'ssh_port': ssh_port, 'pacing': pacing}


def python_script(name, *args):
    return common.python_cmd() + [os.path.join(common.ROOT, name)] + list(args)


def median(values):
    return statistics.median(values) if values else None

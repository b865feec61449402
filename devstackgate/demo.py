"""The one-command demo: the whole life of the pool on two local clouds.

    ./dev.sh demo [--keep] [--workdir DIR]
    python -m devstackgate.demo [--keep] [--workdir DIR]     (from a checkout)

A developer tool, not a stage.  It starts two local clouds with
``devstack-localcloud run`` (``demo/localcloud.yaml``: "fast" behaves,
"flaky" fails seeded boots and API calls), writes a product configuration
(``demo/devstack-gate.yaml`` completed with paths in the work dir: the
embedded SQLite database, the pool's SSH key, a local git "Gerrit") and then
runs the real top-level scripts as subprocesses, exactly as Jenkins would:

1. ``devstack-vm-update-image.py PROVIDER``, both providers at once: a cached
   image each, built with ``demo/cache-packages.sh``;
2. ``devstack-vm-launch.py PROVIDER``, run again (as the ten-minute job would)
   until the provider's pool is full or ``MAX_LAUNCH_RUNS`` runs were made;
3. ``devstack-vm-gate.sh --label precise``, one Jenkins build per change of
   ``demo/changes.yaml``, all at once, each console saved to
   ``WORKDIR/consoles/``;
4. ``devstack-vm-reap.py PROVIDER``, again while rows are still settling
   (deletion is two-phase).

Then it compares what the clouds still hold with the database, stops the
clouds (unless ``--keep``), checks that no process, port or node is left,
and prints a summary, also written to ``WORKDIR/summary.json``.  Every line
is timestamped like the product's; the scripts' own output goes to one log
file per step in ``WORKDIR/logs/``.  Exit status: 0 when everything went as
the demo expects, 1 otherwise (each problem named in one line), 2 for bad
usage, 130 when interrupted (the steps and the clouds are stopped first).

The database is read only through ``vmdatabase``; the clouds only through
localcloud's admin endpoint.  The demo itself starts no thread.
"""

import argparse
import collections
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import yaml

import vmdatabase
from devstackgate import config as configmod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(ROOT, 'demo')
PROG = 'demo'
DATE_FORMAT = '%Y-%m-%d %H:%M:%S'
JOB = 'gate-integration-tests-devstack-vm'
LABEL = 'precise'
MARKER = '.devstack-gate-demo'
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

PROGRESS_EVERY = 5.0            # seconds between "still waiting" lines
MAX_LAUNCH_RUNS = 4             # launch runs per provider to fill its pool
MAX_REAP_RUNS = 3               # reap runs per provider while rows settle
STEP_TIMEOUT = 300.0            # no single script run of the demo takes longer
CLOUD_START_TIMEOUT = 60.0
CLOUD_STOP_TIMEOUT = 30.0
GONE_TIMEOUT = 10.0             # for stray processes and ports after the clouds stop

# What Jenkins sets for a build; inherited values would confuse the scripts.
JENKINS_VARS = ('ZUUL_PROJECT', 'ZUUL_BRANCH', 'ZUUL_REF', 'ZUUL_URL', 'ZUUL_CHANGE',
                'ZUUL_PATCHSET', 'GERRIT_PROJECT', 'GERRIT_BRANCH', 'GERRIT_REFSPEC',
                'GERRIT_CHANGE_NUMBER', 'GERRIT_PATCHSET_NUMBER', 'JOB_NAME', 'BUILD_NUMBER',
                'WORKSPACE')
GIT_ENV = {'GIT_AUTHOR_NAME': 'Demo Developer', 'GIT_AUTHOR_EMAIL': 'developer@example.org',
           'GIT_COMMITTER_NAME': 'Demo Developer', 'GIT_COMMITTER_EMAIL': 'developer@example.org',
           'GIT_CONFIG_GLOBAL': os.devnull, 'GIT_CONFIG_NOSYSTEM': '1'}


class DemoError(Exception):
    """A one-line reason the demo cannot go on (exit 1)."""
    exit_code = EXIT_FAILED


class UsageError(DemoError):
    exit_code = EXIT_USAGE


class Interrupted(BaseException):
    """SIGTERM or SIGINT: unwind so that the steps and the clouds are stopped."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


def say(message, *args, prog=PROG):
    text = message % args if args else message
    print('%s %s: %s' % (time.strftime(DATE_FORMAT), prog, text), flush=True)


def plural(n, word, words=None):
    return '%d %s' % (n, word if n == 1 else (words or word + 's'))


def counts_text(counts, empty='none'):
    """{'hold': 1, 'ready': 2} -> 'hold 1, ready 2' (sorted by name)."""
    return ', '.join('%s %d' % (k, v) for k, v in sorted(counts.items()) if v) or empty


# -- the work dir ----------------------------------------------------------------------

class Work:
    """Where everything of one demo run lives."""

    def __init__(self, root):
        self.root = root

        def j(*parts):
            return os.path.join(root, *parts)
        self.config = j('devstack-gate.yaml')
        self.localcloud_config = j('clouds-local.yaml')
        self.clouds_yaml = j('clouds.yaml')
        self.ready_file = j('localcloud.json')
        self.state = j('state')
        self.db_path = j('devstack-gate.db')
        self.db_url = 'sqlite:///' + self.db_path
        self.key = j('keys', 'id_rsa')
        self.known_hosts = j('known_hosts')
        self.git = j('git')
        self.git_work = j('git-work')
        self.logs = j('logs')
        self.consoles = j('consoles')
        self.jobs = j('jobs')
        self.summary = j('summary.json')
        self.localcloud_log = j('logs', 'localcloud.txt')

    def rel(self, path):
        return os.path.relpath(path, self.root)


def prepare_workdir(path):
    """A Work in `path` (default: a new temporary directory), emptied of an earlier demo."""
    if path is None:
        root = tempfile.mkdtemp(prefix='devstack-gate-demo-')
    else:
        root = os.path.abspath(os.path.expanduser(path))
        if os.path.isdir(root) and os.listdir(root):
            if not os.path.exists(os.path.join(root, MARKER)):
                raise UsageError('--workdir %s is not empty and holds no earlier demo; give a new '
                                 'or empty directory' % root)
            left = processes_mentioning(root)
            if left:
                raise DemoError('an earlier demo in %s is still running (pid %s: %s); stop it '
                                'first: kill -TERM %s' % (root, left[0][0], left[0][1],
                                                          ' '.join(str(p) for p, _ in left)))
            for entry in os.listdir(root):
                full = os.path.join(root, entry)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                else:
                    os.unlink(full)
        elif os.path.exists(root) and not os.path.isdir(root):
            raise UsageError('--workdir %s is not a directory' % root)
    work = Work(root)
    for d in (root, work.logs, work.consoles, work.jobs, work.git, work.git_work):
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(root, MARKER), 'w') as f:
        f.write('a work dir of ./dev.sh demo; a later demo may empty it\n')
    return work


# -- processes and ports ---------------------------------------------------------------

def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open('/proc/%d/stat' % pid) as f:
                pid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def processes_mentioning(text):
    """[(pid, command line)] of processes (not this one or its parents) whose command
    line contains `text`: what a demo in that work dir left running."""
    mine = _ancestors()
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                argv = [a.decode(errors='replace') for a in f.read().split(b'\0') if a]
        except OSError:
            continue
        if any(text in a for a in argv):
            found.append((int(entry), ' '.join(argv)))
    return sorted(found)


def listening(addresses):
    """The (address, port) pairs of `addresses` that something still listens on."""
    from localcloud.testing import listening_sockets
    now = listening_sockets()
    return sorted(a for a in addresses if a in now or ('0.0.0.0', a[1]) in now)


def wait_until(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# -- the local clouds ------------------------------------------------------------------

class Clouds:
    """The running ``devstack-localcloud run`` process and its ready file."""

    def __init__(self, proc, command, info):
        self.proc = proc
        self.command = command
        self.info = info
        self.admin_url = info['admin_url']
        self.names = list(info['clouds'])
        self.stopped = False

    def client(self, name):
        from localcloud.cmd import AdminClient
        return AdminClient(self.admin_url, name)

    def ports(self):
        """The loopback (address, port) pairs the clouds listen on (not the nodes)."""
        port = int(self.admin_url.rsplit(':', 1)[1].split('/')[0])
        return [('127.0.0.1', port)] + [('127.0.0.1', c['api_port'])
                                        for c in self.info['clouds'].values()]


def write_localcloud_config(work):
    """demo/localcloud.yaml with free ports, random address ranges and absolute
    base-image directories, as WORKDIR/clouds-local.yaml."""
    from localcloud.testing import prepare_config
    with open(os.path.join(DEMO_DIR, 'localcloud.yaml')) as f:
        data = yaml.safe_load(f)
    for cloud in data.get('clouds') or ():
        for image in cloud.get('images') or ():
            directory = image.get('directory')
            if directory and not os.path.isabs(directory):
                image['directory'] = os.path.join(DEMO_DIR, directory)
    data = prepare_config(data)
    with open(work.localcloud_config, 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return data


def start_clouds(work, env):
    command = [sys.executable, '-m', 'localcloud.cmd', 'run', '--config',
               work.localcloud_config, '--clouds-yaml', work.clouds_yaml,
               '--state-dir', work.state, '--ready-file', work.ready_file]
    with open(work.localcloud_log, 'ab') as log:
        # Its own session: a Ctrl-C in the terminal reaches the demo, which stops it.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + CLOUD_START_TIMEOUT
    while not os.path.exists(work.ready_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise DemoError('the local clouds did not start (exit status %s): %s; log %s'
                            % (proc.returncode, last_line(work.localcloud_log),
                               work.localcloud_log))
        time.sleep(0.05)
    with open(work.ready_file) as f:
        return Clouds(proc, command, json.load(f))


def stop_clouds(clouds, node_addresses):
    """SIGTERM, then check the process, its ports and every node's SSH port are gone.
    Returns the problems found (strings)."""
    problems = []
    proc = clouds.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(CLOUD_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append('localcloud pid %d ignored SIGTERM for %.0f s; killed it'
                            % (proc.pid, CLOUD_STOP_TIMEOUT))
            proc.kill()
            proc.wait()
    clouds.stopped = True
    if proc.returncode not in (0, -signal.SIGTERM) and not problems:
        problems.append('localcloud exited %s' % proc.returncode)
    ports = clouds.ports() + sorted(node_addresses)
    if not wait_until(lambda: not listening(ports), GONE_TIMEOUT):
        left = listening(ports)
        if left:
            problems.append('still listening after the clouds stopped: %s'
                            % ', '.join('%s:%d' % a for a in left))
    return problems


# -- the local "Gerrit" ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Change:
    number: int
    patchset: int
    subject: str
    expect: str
    project: str
    ref: str

    @property
    def id(self):
        return '%d,%d' % (self.number, self.patchset)


def git(cwd, *args):
    proc = subprocess.run(['git'] + list(args), cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, **GIT_ENV), stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise DemoError('git %s (in %s) failed: %s' % (' '.join(args), cwd,
                                                       (proc.stderr.strip().splitlines()
                                                        or ['exit %d' % proc.returncode])[-1]))
    return proc.stdout.strip()


def make_gerrit(work):
    """A bare repository of the sample project under WORKDIR/git (the gate's
    git-base) and every change of demo/changes.yaml as refs/changes/NN/N/P."""
    with open(os.path.join(DEMO_DIR, 'changes.yaml')) as f:
        spec = yaml.safe_load(f)
    project = spec['project']
    bare = os.path.join(work.git, project)
    scratch = os.path.join(work.git_work, project)
    os.makedirs(bare)
    git(bare, 'init', '-q', '--bare')
    git(bare, 'symbolic-ref', 'HEAD', 'refs/heads/master')
    shutil.copytree(os.path.join(DEMO_DIR, 'sample', project.split('/')[-1]), scratch)
    git(scratch, 'init', '-q')
    git(scratch, 'checkout', '-q', '-b', 'master')
    git(scratch, 'add', '-A')
    git(scratch, 'commit', '-q', '-m', 'Import the sample project')
    git(scratch, 'push', '-q', bare, 'HEAD:refs/heads/master')
    master = git(scratch, 'rev-parse', 'HEAD')
    changes = []
    for entry in spec['changes']:
        number, patchset = int(entry['change']), int(entry['patchset'])
        git(scratch, 'checkout', '-q', '--detach', master)
        for path, text in entry['files'].items():
            full = os.path.join(scratch, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, 'w') as f:
                f.write(text)
            if path.endswith('.sh'):
                os.chmod(full, 0o755)
            git(scratch, 'add', path)
        git(scratch, 'commit', '-q', '-m', entry['subject'])
        ref = 'refs/changes/%02d/%d/%d' % (number % 100, number, patchset)
        git(scratch, 'push', '-q', bare, 'HEAD:%s' % ref)
        changes.append(Change(number, patchset, entry['subject'], entry['expect'], project, ref))
    return project, changes


# -- the product configuration ---------------------------------------------------------

def write_product_config(work, clouds, env):
    """demo/devstack-gate.yaml completed for this work dir and these clouds; validated."""
    with open(os.path.join(DEMO_DIR, 'devstack-gate.yaml')) as f:
        data = yaml.safe_load(f)
    data['database'] = work.db_url
    data['ssh-private-key'] = work.key
    data.setdefault('gate', {})['git-base'] = work.git
    for provider in data['providers']:
        cloud = clouds.info['clouds'].get(provider['cloud'])
        if cloud is None:
            raise DemoError('demo/devstack-gate.yaml: provider %s: no local cloud %r in '
                            'demo/localcloud.yaml' % (provider['name'], provider['cloud']))
        provider['ssh-port'] = cloud['ssh_port']
        for image in provider['images']:
            image['setup'] = [entry if os.path.isabs(shlex.split(entry)[0])
                              else os.path.join(DEMO_DIR, entry) for entry in image['setup']]
    with open(work.config, 'w') as f:
        f.write('# Written by ./dev.sh demo from demo/devstack-gate.yaml.\n')
        yaml.safe_dump(data, f, sort_keys=False)
    try:
        return configmod.load(work.config, environ=env)
    except configmod.ConfigError as e:
        raise DemoError('the demo configuration is not valid: %s' % '; '.join(
            getattr(e, 'errors', None) or [str(e)]))


def script_env(work):
    """The environment of every script: ours, minus Jenkins' and devstack-gate's own
    variables and OpenStack credentials, plus the demo's config and clouds.yaml."""
    env = {k: v for k, v in os.environ.items()
           if k not in JENKINS_VARS and not k.startswith(('DEVSTACK_GATE_', 'OS_'))}
    env.update(DEVSTACK_GATE_CONFIG=work.config, OS_CLIENT_CONFIG_FILE=work.clouds_yaml,
               DEVSTACK_GATE_PYTHON=sys.executable, PYTHONUNBUFFERED='1',
               PYTHONPATH=ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH')
                                  else ''))
    return env


# -- running the scripts ---------------------------------------------------------------

@dataclasses.dataclass
class Step:
    """One script run: its console goes to `log`."""
    name: str
    argv: list
    log: str
    env: dict
    cwd: str = ROOT
    data: dict = dataclasses.field(default_factory=dict)
    proc: object = None
    started: float = None
    elapsed: float = None
    rc: int = None
    before: object = None           # what on_start recorded

    def output(self):
        try:
            with open(self.log, errors='replace') as f:
                return f.read()
        except OSError:
            return ''


RUNNING = []        # steps whose process runs, for the interrupt handler


def script(name, *args):
    path = os.path.join(ROOT, name)
    return ([sys.executable, path] if name.endswith('.py') else [path]) + list(args)


def last_line(path_or_text, is_text=False):
    text = path_or_text
    if not is_text:
        try:
            with open(path_or_text, errors='replace') as f:
                text = f.read()
        except OSError:
            return 'no output'
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else 'no output'


def start_step(step):
    with open(step.log, 'ab') as log:
        # Its own session, as a Jenkins build has: a stop signal goes to the whole run.
        step.proc = subprocess.Popen(step.argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=step.cwd, env=step.env,
                                     start_new_session=True)
    step.started = time.monotonic()
    RUNNING.append(step)


def run_steps(what, steps, on_done, on_start=None):
    """Run `steps` at once; on_done(step) says one line and returns the next step
    to start (or None).  A progress line every PROGRESS_EVERY seconds."""
    started = last_progress = time.monotonic()
    active = []

    def begin(step):
        if on_start is not None:
            step.before = on_start(step)
        start_step(step)
        active.append(step)

    for step in steps:
        begin(step)
    while active:
        time.sleep(0.1)
        for step in list(active):
            if step.proc.poll() is None:
                if time.monotonic() - step.started > STEP_TIMEOUT:
                    stop_process_group(step.proc)
                continue
            step.rc = step.proc.returncode
            step.elapsed = time.monotonic() - step.started
            active.remove(step)
            RUNNING.remove(step)
            following = on_done(step)
            if following is not None:
                begin(following)
        now = time.monotonic()
        if active and now - last_progress >= PROGRESS_EVERY:
            last_progress = now
            say('%s stage, %.0f s so far: still waiting for %s', what, now - started,
                ', '.join('%s [%.0f s]' % (s.name, now - s.started) for s in active))
    return time.monotonic() - started


def stop_process_group(proc, timeout=30.0):
    """SIGTERM to a step's session (its children too), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


# -- reading the database ---------------------------------------------------------------

def open_db(work):
    return vmdatabase.Database(work.db_url)


def create_schema(db):
    """Create the schema before any script runs.

    Two scripts that start at once on a brand-new SQLite file race to create it:
    ``vmdatabase`` switches every new connection to WAL, and SQLite answers that
    switch with "database is locked" at once, without waiting, while another
    connection holds the write lock of a file not yet in WAL mode, so one build
    would fail.  Once the file is in WAL mode the switch is a no-op.
    """
    db.upgrade()


def rows(db):
    """(nodes, images, results), every row."""
    return db.transact(lambda s: (s.nodes(), s.images(), s.results()))


def by_provider_state(items, providers):
    table = {p: collections.Counter() for p in providers}
    for item in items:
        table.setdefault(item.provider, collections.Counter())[item.state] += 1
    return {p: dict(sorted(c.items())) for p, c in table.items()}


def table_text(table):
    return '; '.join('%s: %s' % (p, counts_text(c)) for p, c in table.items())


# -- 1. images --------------------------------------------------------------------------

def build_images(work, config, env, db):
    providers = [p.name for p in config.providers]
    say('1. building the cached images: devstack-vm-update-image.py for %s at once '
        '(setup script demo/cache-packages.sh)', ', '.join(providers))
    results = {}

    def done(step):
        provider = step.data['provider']
        current = db.transact(lambda s: s.current_image(provider, LABEL))
        ok = step.rc == 0 and current is not None
        results[provider] = {'exit': step.rc, 'seconds': round(step.elapsed, 1),
                             'image': current.name if current else None,
                             'log': step.log}
        if ok:
            say('image %s %s: %s built, cache-packages.sh ran on the template, canary passed; '
                'now current (exit 0, %.0f s; log %s)', provider, LABEL, current.name,
                step.elapsed, work.rel(step.log))
        else:
            say('image %s %s: build failed (exit %s, %.0f s): %s; log %s', provider, LABEL,
                step.rc, step.elapsed, last_line(step.log), work.rel(step.log))
        return None

    steps = [Step('update-image %s' % p, script('devstack-vm-update-image.py', p),
                  os.path.join(work.logs, '1-update-image-%s.txt' % p), env,
                  data={'provider': p}) for p in providers]
    run_steps('images', steps, done)
    return results


# -- 2. launch ---------------------------------------------------------------------------

def fill_pools(work, config, env, db):
    providers = {p.name: p for p in config.providers}
    say('2. filling the pools: devstack-vm-launch.py for %s at once, run again (as the '
        'ten-minute job would) until min-ready nodes are ready',
        ', '.join(providers))
    runs = collections.Counter()
    failures = {p: collections.Counter() for p in providers}
    failed_nodes = []
    history = {p: [] for p in providers}

    def want(provider):
        return sum(i.min_ready for i in providers[provider].images)

    def ready(provider):
        return len(db.transact(lambda s: s.nodes(provider=provider, state='ready')))

    def make(provider):
        runs[provider] += 1
        n = runs[provider]
        return Step('launch %s (run %d)' % (provider, n), script('devstack-vm-launch.py', provider),
                    os.path.join(work.logs, '2-launch-%s-%d.txt' % (provider, n)), env,
                    data={'provider': provider, 'run': n})

    def start(step):
        return {n.id for n in db.transact(lambda s: s.nodes(provider=step.data['provider']))}

    def done(step):
        provider = step.data['provider']
        nodes = db.transact(lambda s: s.nodes(provider=provider))
        new = [n for n in nodes if n.id not in step.before]
        failed = [n for n in new if n.fail_reason]
        reasons = collections.Counter(n.fail_reason for n in failed)
        failures[provider].update(reasons)
        failed_nodes.extend({'provider': provider, 'node': n.name, 'reason': n.fail_reason,
                             'run': step.data['run'], 'log': step.log} for n in failed)
        have = sum(1 for n in nodes if n.state == 'ready')
        history[provider].append({'run': step.data['run'], 'exit': step.rc,
                                  'seconds': round(step.elapsed, 1), 'booted': len(new),
                                  'failed': dict(reasons), 'ready': have, 'log': step.log})
        detail = 'booted %d, failed %d%s' % (len(new), len(failed), ' (%s)' % counts_text(reasons)
                                              if failed else '')
        outcome = 'exit %s' % step.rc
        if step.rc == 1 and failed:
            outcome = 'exit 1: every node of this run failed'
        say('launch %s (run %d): %s; ready %d of min-ready %d (%s, %.0f s; log %s)', provider,
            step.data['run'], detail, have, want(provider), outcome, step.elapsed,
            work.rel(step.log))
        if have < want(provider):
            if runs[provider] < MAX_LAUNCH_RUNS:
                return make(provider)
            say('launch %s: pool still short after %d runs; the gate jobs may wait for nodes',
                provider, runs[provider])
        return None

    elapsed = run_steps('launch', [make(p) for p in providers], done, on_start=start)
    return {'runs': dict(runs), 'failures': {p: dict(sorted(c.items()))
                                             for p, c in failures.items()},
            'failed_nodes': failed_nodes, 'history': history, 'seconds': round(elapsed, 1),
            'ready': {p: ready(p) for p in providers}}


# -- 3. gate -----------------------------------------------------------------------------

def console_header(step, change):
    return ('Started by the devstack-gate demo: %s #%s for change %s (%s) of %s\n'
            'Building in workspace %s\n'
            '[%s] $ %s\n' % (JOB, step.data['build'], change.id, change.subject, change.project,
                             step.cwd, os.path.basename(step.cwd),
                             ' '.join(shlex.quote(a) for a in step.argv)))


def console_value(text, name):
    prefix = name + '='
    for line in text.splitlines():
        if line.startswith(prefix):
            value = line[len(prefix):].strip()
            try:
                return shlex.split(value)[0] if value else ''
            except ValueError:
                return value
    return None


def run_gates(work, env, db, changes):
    say('3. gate jobs: %d builds of %s (devstack-vm-gate.sh --label %s) at once, one per '
        'change: %s', len(changes), JOB, LABEL, ', '.join(c.id for c in changes))
    gates = []
    steps = []
    for build, change in enumerate(changes, 1):
        workspace = os.path.join(work.jobs, '%s-%d' % (JOB, build))
        os.makedirs(workspace)
        genv = dict(env, WORKSPACE=workspace, JOB_NAME=JOB, BUILD_NUMBER=str(build),
                    GERRIT_PROJECT=change.project, GERRIT_BRANCH='master',
                    GERRIT_REFSPEC=change.ref, GERRIT_CHANGE_NUMBER=str(change.number),
                    GERRIT_PATCHSET_NUMBER=str(change.patchset))
        console = os.path.join(work.consoles, 'gate-%d-change-%d-%d.txt'
                               % (build, change.number, change.patchset))
        step = Step('gate #%d (%s)' % (build, change.id),
                    script('devstack-vm-gate.sh', '--label', LABEL), console, genv,
                    cwd=workspace, data={'build': build, 'change': change})
        with open(console, 'w') as f:
            f.write(console_header(step, change))
        steps.append(step)

    def done(step):
        change = step.data['change']
        build = str(step.data['build'])
        text = step.output()
        with open(step.log, 'a') as f:
            f.write('Finished: %s\n' % ('SUCCESS' if step.rc == 0 else 'FAILURE'))
        result = [r for r in db.transact(lambda s: s.results())
                  if r.job_name == JOB and r.build_number == build]
        outcome = result[-1].result if result else 'no result recorded'
        provider = console_value(text, 'NODE_PROVIDER')
        node = console_value(text, 'NODE_NAME')
        row = None
        if result and result[-1].node_id is not None:
            row = db.transact(lambda s: s.get_node(result[-1].node_id))
        gate = {'build': int(build), 'job': JOB, 'change': change.id, 'ref': change.ref,
                'subject': change.subject, 'expected': change.expect, 'result': outcome,
                'exit': step.rc, 'seconds': round(step.elapsed, 1), 'provider': provider,
                'node': node, 'node_state': row.state if row else None,
                'console': step.log, 'logs': os.path.join(step.cwd, 'logs')}
        gates.append(gate)
        fate = {'delete': 'node deleted', 'hold': 'node held'}.get(gate['node_state'], '')
        say('gate #%s change %s (%s): %s%s on %s (%s)%s, exit %s in %.0f s; console %s', build,
            change.id, change.subject, outcome,
            '' if outcome == change.expect else ' (expected %s)' % change.expect,
            node or 'no node', provider or '-', ', ' + fate if fate else '', step.rc,
            step.elapsed, work.rel(step.log))
        return None

    run_steps('gate', steps, done)
    return sorted(gates, key=lambda g: g['build'])


# -- 4. reap -----------------------------------------------------------------------------

def reap(work, config, env, db):
    providers = [p.name for p in config.providers]
    say('4. reaping: devstack-vm-reap.py for %s at once, again while rows are still settling',
        ', '.join(providers))
    runs = collections.Counter()
    history = {p: [] for p in providers}

    def snapshot(provider):
        return db.transact(lambda s: (s.nodes(provider=provider), s.images(provider=provider)))

    def make(provider):
        runs[provider] += 1
        n = runs[provider]
        return Step('reap %s (run %d)' % (provider, n), script('devstack-vm-reap.py', provider),
                    os.path.join(work.logs, '4-reap-%s-%d.txt' % (provider, n)), env,
                    data={'provider': provider, 'run': n})

    def done(step):
        provider = step.data['provider']
        nodes_before, images_before = step.before
        nodes, images = snapshot(provider)
        gone_nodes = collections.Counter(n.state for n in nodes_before
                                         if n.id not in {x.id for x in nodes})
        gone_images = collections.Counter(i.state for i in images_before
                                          if i.id not in {x.id for x in images})
        doomed = collections.Counter(n.state for n in nodes if n.state in ('delete', 'error'))
        doomed += collections.Counter(i.state for i in images if i.state == 'delete')
        left_nodes = collections.Counter(n.state for n in nodes)
        left_images = collections.Counter(i.state for i in images)
        history[provider].append({'run': step.data['run'], 'exit': step.rc,
                                  'seconds': round(step.elapsed, 1),
                                  'removed_nodes': dict(gone_nodes),
                                  'removed_images': dict(gone_images), 'log': step.log})
        say('reap %s (run %d): removed %s (%s) and %s; left: nodes %s; images %s (exit %s, '
            '%.0f s; log %s)', provider, step.data['run'],
            plural(sum(gone_nodes.values()), 'node row'), counts_text(gone_nodes),
            plural(sum(gone_images.values()), 'image row'), counts_text(left_nodes),
            counts_text(left_images), step.rc, step.elapsed, work.rel(step.log))
        if doomed and runs[provider] < MAX_REAP_RUNS:
            return make(provider)
        return None

    run_steps('reap', [make(p) for p in providers], done,
              on_start=lambda step: snapshot(step.data['provider']))
    return {'runs': dict(runs), 'history': history}


# -- the clouds against the database -------------------------------------------------------

def audit_clouds(clouds, db, providers):
    """What each cloud still holds, each server and image matched to its row."""
    nodes, images, _ = rows(db)
    report = {}
    for name in providers:
        client = clouds.client(name)
        servers = [s for s in client.servers() if not s['deleted'] or s['lingering']]
        glance = client.images()
        stats = client.stats()
        node_rows = {n.external_id: n for n in nodes if n.provider == name and n.external_id}
        image_rows = {i.external_id: i for i in images if i.provider == name and i.external_id}
        live, leaked, ours, base = [], [], [], []
        for s in servers:
            row = node_rows.get(s['id'])
            entry = {'id': s['id'], 'name': s['name'], 'address': s['address'],
                     'ssh_port': s['ssh_port'], 'row': row.id if row else None,
                     'state': row.state if row else None}
            live.append(entry)
            if row is None or row.state in ('delete', 'error'):
                leaked.append('server %s (%s)' % (s['name'], s['id']))
        for i in glance:
            row = image_rows.get(i['id'])
            tagged = i['properties'].get('dg-provider') == name
            if not tagged and row is None:
                base.append(i['name'])
                continue
            ours.append({'id': i['id'], 'name': i['name'], 'status': i['status'],
                         'row': row.id if row else None, 'state': row.state if row else None})
            if row is None or row.state == 'delete':
                leaked.append('image %s (%s)' % (i['name'], i['id']))
        report[name] = {'servers': live, 'images': ours, 'base_images': base,
                        'leaked': leaked, 'api_calls': stats.get('total', 0),
                        'api_errors_injected': sum(v for k, v in stats.get('responses', {}).items()
                                                   if k in ('500', '429')),
                        'events': stats.get('events', {})}
    return report


def audit_line(name, cloud):
    servers = ', '.join('%s (%s)' % (s['name'], s['state'] or 'no row') for s in cloud['servers'])
    images = ', '.join('%s (%s)' % (i['name'], i['state'] or 'no row') for i in cloud['images'])
    return ('cloud %s before stopping: %s%s, %s%s, %s; %s; API: %d calls, %d answered with an '
            'injected error' % (
                name, plural(len(cloud['servers']), 'server'), ': ' + servers if servers else '',
                plural(len(cloud['images']), 'image'), ' of ours: ' + images if images else '',
                plural(len(cloud['base_images']), 'base image'),
                'LEAKED: ' + ', '.join(cloud['leaked']) if cloud['leaked'] else 'nothing leaked',
                cloud['api_calls'], cloud['api_errors_injected']))


# -- the held node -------------------------------------------------------------------------

def held_nodes(work, db, config):
    ports = {p.name: p.ssh_port for p in config.providers}
    held = [n for n in db.transact(lambda s: s.nodes(state='hold'))]
    lines, out = [], []
    for n in held:
        port = ports.get(n.provider, 22)
        if n.host_key:
            host = n.ip if port == 22 else '[%s]:%d' % (n.ip, port)
            lines.append('%s %s\n' % (host, n.host_key))
        command = ['ssh', '-i', work.key, '-p', str(port), '-o', 'IdentitiesOnly=yes',
                   '-o', 'StrictHostKeyChecking=yes', '-o', 'UserKnownHostsFile=%s'
                   % work.known_hosts, '%s@%s' % (n.username or 'jenkins', n.ip)]
        out.append({'id': n.id, 'node': n.name, 'provider': n.provider, 'ip': n.ip,
                    'port': port, 'username': n.username, 'reason': n.hold_reason,
                    'held_by': n.held_by, 'hold_until': n.hold_until,
                    'ssh': ' '.join(shlex.quote(a) for a in command), 'ssh_argv': command})
    with open(work.known_hosts, 'w') as f:
        f.writelines(lines)
    return out


# -- the whole demo --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='./dev.sh demo', description='The whole life of the pool on two local clouds '
        '(one flaky), as Jenkins would run it: build images, fill the pools, run gate jobs '
        '(one fails and its node is held), reap; then a summary (also WORKDIR/summary.json).')
    p.add_argument('--keep', action='store_true',
                   help='leave the local clouds running, and say how to reach and stop them')
    p.add_argument('--workdir', metavar='DIR',
                   help='where everything goes (default: a new temporary directory); an '
                   'earlier demo there is removed first')
    try:
        return p.parse_args(argv)
    except SystemExit as e:
        raise SystemExit(e.code if isinstance(e.code, int) else EXIT_USAGE)


CURRENT = {}        # the work dir of the running demo, for main's last resort


def run(args):
    """The demo; returns (exit code, summary)."""
    began = time.monotonic()
    work = prepare_workdir(args.workdir)
    CURRENT['work'] = work
    say('work dir %s (logs in logs/, gate consoles in consoles/, summary in summary.json)',
        work.root)
    summary = {'workdir': work.root, 'keep': bool(args.keep)}
    problems = []
    env = script_env(work)
    clouds = None
    finished = False
    try:
        data = write_localcloud_config(work)
        say('starting the local clouds %s with devstack-localcloud run (log %s)', ' and '.join(
            '%s (%s)' % (c['name'], ', '.join('%s %s' % (k, v) for k, v in sorted(
                c.get('faults', {}).items()) if k not in ('boot-delay', 'snapshot-delay',
                                                          'api-latency')) or 'no faults')
            for c in data['clouds']), work.rel(work.localcloud_log))
        clouds = start_clouds(work, env)
        summary['localcloud'] = {
            'pid': clouds.proc.pid, 'command': clouds.command, 'admin_url': clouds.admin_url,
            'clouds': {name: {k: c.get(k) for k in ('auth_url', 'api_port', 'region',
                                                      'address_range', 'ssh_port')}
                       for name, c in clouds.info['clouds'].items()}}
        for name, c in clouds.info['clouds'].items():
            say('cloud %s: %s, nodes on %s port %d', name, c['auth_url'], c['address_range'],
                c['ssh_port'])
        config = write_product_config(work, clouds, env)
        providers = [p.name for p in config.providers]
        project, changes = make_gerrit(work)
        say('local Gerrit: %s in %s with %s: %s', project, work.rel(work.git),
            plural(len(changes), 'change'), ', '.join('%s %s' % (c.id, c.ref) for c in changes))
        say('configuration %s (database %s, clouds.yaml %s)', work.rel(work.config), work.db_url,
            work.rel(work.clouds_yaml))
        db = open_db(work)
        # As an operator would before the first Jenkins runs: the two image builds start at
        # once, and on a brand-new SQLite file one of them can find it locked (see
        # create_schema).
        create_schema(db)
        say('database %s: schema version %d created (SQLite, the embedded default)',
            work.rel(work.db_path), db.version())

        summary['image_builds'] = build_images(work, config, env, db)
        problems += ['image build of %s failed (exit %s); log %s' % (p, b['exit'], b['log'])
                     for p, b in summary['image_builds'].items() if not b['image']]
        summary['launch'] = fill_pools(work, config, env, db)
        gates = run_gates(work, env, db, changes)
        summary['gates'] = gates
        problems += ['gate #%d change %s: %s, expected %s; console %s' % (
            g['build'], g['change'], g['result'], g['expected'], g['console'])
            for g in gates if g['result'] != g['expected']]
        summary['reap'] = reap(work, config, env, db)

        nodes, images, results = rows(db)
        summary['nodes'] = by_provider_state(nodes, providers)
        summary['images'] = by_provider_state(images, providers)
        summary['results'] = dict(sorted(collections.Counter(r.result for r in results).items()))
        summary['launch_failures'] = summary['launch']['failures']
        summary['held'] = held_nodes(work, db, config)
        summary['clouds'] = audit_clouds(clouds, db, providers)
        for name in providers:
            say(audit_line(name, summary['clouds'][name]))
            problems += ['cloud %s: %s leaked' % (name, what)
                         for what in summary['clouds'][name]['leaked']]
        for what in ('nodes', 'images'):
            problems += ['provider %s: %d %s rows still in delete after reaping'
                         % (p, c['delete'], what[:-1]) for p, c in summary[what].items()
                         if c.get('delete')]
        summary['leaks'] = sum(len(c['leaked']) for c in summary['clouds'].values())

        if args.keep:
            summary['kept'] = {
                'pid': clouds.proc.pid, 'command': clouds.command,
                'admin_url': clouds.admin_url, 'ready_file': work.ready_file,
                'stop': 'kill -TERM %d' % clouds.proc.pid,
                'log': work.localcloud_log}
        else:
            node_addresses = {(s['address'], s['ssh_port']) for name in providers
                              for s in clouds.client(name).servers() if s['address']}
            say('stopping the local clouds (SIGTERM to localcloud pid %d: every node is '
                'deleted)', clouds.proc.pid)
            stop_problems = stop_clouds(clouds, node_addresses)
            problems += stop_problems
            left = wait_until(lambda: not processes_mentioning(work.root), GONE_TIMEOUT)
            stray = [] if left is True else processes_mentioning(work.root)
            problems += ['still running: pid %d: %s' % p for p in stray]
            summary['stopped'] = {'localcloud_exit': clouds.proc.returncode,
                                  'problems': stop_problems,
                                  'processes_left': [p for p, _ in stray]}
            if not stop_problems and not stray:
                say('local clouds stopped (exit %s): no process, port or node of the demo is '
                    'left', clouds.proc.returncode)
        finished = True
    except Interrupted as e:
        for sig in (signal.SIGTERM, signal.SIGINT):   # a second signal must not cut the cleanup
            signal.signal(sig, signal.SIG_IGN)
        say('interrupted (%s): stopping %s and the local clouds', e.name,
            ', '.join(s.name for s in RUNNING) or 'no step')
        raise
    finally:
        for step in list(RUNNING):
            stop_process_group(step.proc)
            RUNNING.remove(step)
        if clouds is not None and not clouds.stopped and not (args.keep and finished):
            stop_clouds(clouds, ())
    summary['logs'] = {'steps': work.logs, 'consoles': work.consoles, 'jobs': work.jobs,
                       'localcloud': work.localcloud_log, 'config': work.config,
                       'clouds_yaml': work.clouds_yaml, 'database': work.db_url}
    summary['seconds'] = round(time.monotonic() - began, 1)
    summary['problems'] = problems
    with open(work.summary, 'w') as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write('\n')
    print_summary(work, summary, args.keep)
    return (EXIT_FAILED if problems else EXIT_OK), summary


def print_summary(work, summary, keep):
    say('summary (also in %s):', work.summary)
    say('summary: nodes per provider and state: %s', table_text(summary['nodes']))
    say('summary: images per provider and state: %s', table_text(summary['images']))
    say('summary: gate results: %s', counts_text(summary['results']))
    for g in summary['gates']:
        say('summary: gate #%d change %s: %s on %s (%s); console %s', g['build'], g['change'],
            g['result'], g['node'] or 'no node', g['provider'] or '-', g['console'])
    say('summary: launch failures by reason: %s', table_text(summary['launch_failures']))
    say('summary: clouds: %s', 'nothing leaked (every server and image left is a row: %s)' % (
        '; '.join('%s %s, %s' % (name, plural(len(c['servers']), 'server'),
                                 plural(len(c['images']), 'image'))
                  for name, c in summary['clouds'].items()))
        if not summary['leaks'] else '%d leaked resources (see above)' % summary['leaks'])
    say('summary: logs: %s (one file per step); consoles: %s; gate workspaces: %s',
        work.logs, work.consoles, work.jobs)
    for h in summary['held']:
        say('summary: held node %s (%s, %s): %s', h['node'], h['provider'], h['reason'],
            'log in with: %s' % h['ssh'] if keep else 'gone with the clouds; with --keep, log '
            'in with: %s' % h['ssh'])
    if keep:
        k = summary['kept']
        say('kept: the local clouds keep running: localcloud pid %d (%s); admin endpoint %s; '
            'log %s', k['pid'], ' '.join(shlex.quote(a) for a in k['command']), k['admin_url'],
            k['log'])
        say('kept: run a stage by hand: cd %s && DEVSTACK_GATE_CONFIG=%s OS_CLIENT_CONFIG_FILE=%s '
            '%s devstack-vm-launch.py fast', shlex.quote(ROOT), shlex.quote(work.config),
            shlex.quote(work.clouds_yaml), shlex.quote(sys.executable))
        say('kept: look at a cloud: %s -m localcloud.cmd servers --admin %s flaky',
            shlex.quote(sys.executable), k['admin_url'])
        say('kept: stop the clouds (deletes every node): %s', k['stop'])
    for problem in summary['problems']:
        say('problem: %s', problem)
    say('%s in %.0f s', 'done' if not summary['problems'] else
        'finished with %s' % plural(len(summary['problems']), 'problem'), summary['seconds'])


def main(argv=None):
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return e.code

    def interrupted(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code, _ = run(args)
        return code
    except DemoError as e:
        say('error: %s', e)
        return e.exit_code
    except Interrupted:
        say('interrupted: steps and clouds stopped; the work dir is kept')
        return EXIT_INTERRUPTED
    except Exception as e:       # a bug of the demo: one line here, the traceback in a file
        work = CURRENT.get('work')
        path = os.path.join(work.logs if work else tempfile.gettempdir(),
                            'demo-traceback-%d.txt' % os.getpid())
        with open(path, 'w') as f:
            traceback.print_exc(file=f)
        say('error: unexpected %s: %s (traceback in %s)', type(e).__name__, e, path)
        return EXIT_FAILED
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == '__main__':
    sys.exit(main())

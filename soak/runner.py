"""python -m soak: the pool's life under faults and crashes, cycle after cycle.

    python -m soak [--profile short|long] [--seed N] [--json PATH] [--workdir DIR]
                   [--keep] [--overlaps | --no-overlaps] [--OPTION VALUE ...]

Local clouds (``devstack-localcloud run``, one provider each), a local git
"Gerrit" and the product configuration are set up as ``./dev.sh demo`` does
(its functions are reused), on SQLite or a private MariaDB this run starts
itself.  A bootstrap builds one image per provider and fills the pools with
the faults off.  Then every cycle, with that cycle's faults on (see
``soak.schedule``):

1. the gate jobs start (``devstack-vm-gate.sh``, changes that pass and one
   that fails), then ``devstack-vm-launch.py`` for every provider (after
   --launch-delay, so it sees what the gates took), ``devstack-vm-reap.py``
   for every provider (after --reap-delay) and one
   ``devstack-vm-update-image.py``, all at once;
2. the planned SIGKILLs land (the whole process group of the step, N s after
   it started), tokens are revoked, MariaDB is restarted, a second launch or
   reap overlaps the first, as the plan says;
3. a background thread samples every cloud's servers (max-servers) and the
   current images;
4. when every step has ended the invariants are checked (``soak.invariants``).

Then the faults stop: launch runs every --launch-period until every pool is
back at min-ready (timed), the final reap runs until the rows settle, and the
clouds must agree exactly with the database.  The run ends with a table
(faults injected, crashes survived, jobs served, time back to min-ready,
violations), also as JSON.  Exit 0 when there is no violation, 1 when there
is (each named in one line), 2 for bad usage, 130 when interrupted (steps,
clouds and MariaDB are stopped first).

Nothing is left running.  The work dir (default: a new temporary directory)
is removed at the end of a clean run; after violations or an error it is
kept, and named, for its logs (``logs/``, ``consoles/``); --keep keeps it
always.  The database is read only through ``vmdatabase`` (read-only), the
clouds only through localcloud's admin endpoint.
"""

import argparse
import collections
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback

import yaml

import vmdatabase
from devstackgate import config as configmod
from devstackgate import demo
from devstackgate import log as logmod
from soak import invariants, profiles, schedule
from soak.invariants import Violation

PROG = 'soak'
LABEL = demo.LABEL
JOB = demo.JOB
EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TICK = 0.05
TRACEBACK = 'Traceback (most recent call last)'
BASE_FAULTS = {'boot-delay': {'min': 0.1, 'max': 0.3}, 'snapshot-delay': 0.3}
HOLD_SSH_TIMEOUT = 5.0


class SoakError(Exception):
    """A one-line reason the soak cannot go on (exit 1; not a violation)."""


Interrupted = demo.Interrupted     # SIGTERM or SIGINT: unwind, stopping steps and clouds


def say(message, *args):
    demo.say(message, *args, prog=PROG)


# -- steps: one script run each ------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """A step to start `start_at` s into its phase and maybe SIGKILL `kill_after` s later."""
    step: demo.Step
    kind: str                   # launch, gate, reap, update-image
    provider: str = None
    start_at: float = 0.0           # seconds into its phase (at the latest, with start_when)
    start_when: object = None       # or earlier, once this returns True
    has_node: bool = False          # a gate job: printed NODE_ID= or ended
    kill_after: float = None
    overlap: bool = False
    build: int = None
    change: object = None
    started_wall: float = None
    killed: bool = False        # the soak's SIGKILL hit it while it ran
    kill_missed: bool = False   # it had ended before its kill time
    hung: bool = False
    working_since: float = None     # monotonic time of its first line of output
    quiet_size: int = 0             # its log's size before it started
    killed_at: float = None         # seconds after its start the SIGKILL landed


class Steps:
    """Runs a phase's steps and timed actions; every process is its own session."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.active = []

    def run(self, runs, actions=()):
        """Start each run at its time, fire each action (at, fn, anchor) `at` s into
        the phase, or `at` s after its anchor run's first line of output (or when
        the anchor ends, if sooner); SIGKILL each run `kill_after` s after its first
        line of output.  Returns when every run ended and every action ran."""
        began = time.monotonic()
        pending = sorted(runs, key=lambda r: r.start_at)
        actions = list(actions)
        threads = []
        while pending or self.active or actions:
            now = time.monotonic()
            due = [r for r in pending if r.start_at <= now - began
                   or (r.start_when is not None and r.start_when())]
            for r in due:
                pending.remove(r)
                r.started_wall = time.time()
                r.quiet_size = os.path.getsize(r.step.log) if os.path.exists(r.step.log) else 0
                demo.start_step(r.step)
                demo.RUNNING.remove(r.step)
                self.active.append(r)
            for r in self.active:
                if r.working_since is None and os.path.getsize(r.step.log) > r.quiet_size:
                    r.working_since = now
            for action in list(actions):
                at, fn, anchor = action
                if anchor is None:
                    due = now - began >= at
                elif anchor.working_since is not None:
                    due = now - anchor.working_since >= at
                else:
                    due = anchor.step.rc is not None or anchor.hung
                if due:
                    actions.remove(action)
                    t = threading.Thread(target=fn, daemon=True)
                    t.start()
                    threads.append(t)
            for r in list(self.active):
                age = now - r.step.started
                if r.step.proc.poll() is not None:
                    r.step.rc = r.step.proc.returncode
                    r.step.elapsed = age
                    if r.kill_after is not None and not r.killed:
                        r.kill_missed = True
                    self.active.remove(r)
                    continue
                if (r.kill_after is not None and not r.killed and r.working_since is not None
                        and now - r.working_since >= r.kill_after):
                    try:
                        os.killpg(r.step.proc.pid, signal.SIGKILL)
                        r.killed = True
                        r.killed_at = age
                    except ProcessLookupError:
                        pass
                elif age > self.timeout and not r.hung:
                    r.hung = True
                    demo.stop_process_group(r.step.proc, timeout=5.0)
            time.sleep(TICK)
        for t in threads:
            t.join()
        return time.monotonic() - began

    def stop_all(self):
        for r in list(self.active):
            demo.stop_process_group(r.step.proc, timeout=5.0)
            self.active.remove(r)


# -- the background sampler -------------------------------------------------------------------

class Sampler(threading.Thread):
    """Reads every cloud's servers each interval (max-servers) and, every
    CURRENT_EVERY samples, the current images around the clouds' images."""
    CURRENT_EVERY = 4

    def __init__(self, clouds, providers, db, interval, max_servers):
        super().__init__(name='soak-sampler', daemon=True)
        self.clients = {p: clouds.client(p) for p in providers}
        self.providers = providers
        self.db = db
        self.interval = interval
        self.max_servers = max_servers
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.cycle = 'bootstrap'
        self.samples = 0
        self.errors = 0
        self.peak = {p: 0 for p in providers}
        self.cycle_peak = {p: 0 for p in providers}
        self.violations = []
        self.had_current = set()
        self.reported = set()

    def set_cycle(self, cycle):
        with self.lock:
            self.cycle = cycle
            self.cycle_peak = {p: 0 for p in self.providers}

    def run(self):
        n = 0
        while not self.stop_event.wait(self.interval):
            n += 1
            try:
                self.sample_servers()
                if n % self.CURRENT_EVERY == 0:
                    self.sample_current()
            except Exception:       # the admin endpoint or a database restart: next time
                self.errors += 1

    def _violation(self, v, key):
        with self.lock:
            if key in self.reported:
                return
            self.reported.add(key)
            self.violations.append(dataclasses.replace(v, cycle=self.cycle))

    def sample_servers(self):
        for p, client in self.clients.items():
            servers = client.servers()
            count = invariants.server_count(p, servers)
            with self.lock:
                self.samples += 1
                self.peak[p] = max(self.peak[p], count)
                self.cycle_peak[p] = max(self.cycle_peak[p], count)
            if count > self.max_servers:
                names = sorted('%s (%s)' % (s['name'], 'lingering' if s['deleted'] else
                                            s['status'])
                               for s in invariants.tagged_servers(p, servers))
                self._violation(Violation('max-servers', '%d servers listed, max-servers %d: %s'
                                          % (count, self.max_servers, ', '.join(names)), p),
                                ('max-servers', p, self.cycle, count))

    def current(self):
        def tx(s):
            out = {}
            for p in self.providers:
                row = s.current_image(p, LABEL)
                out[(p, LABEL)] = (row.id, row.external_id) if row else None
            return out
        return self.db.transact(tx)

    def sample_current(self):
        before = self.current()
        cloud_images = {p: c.images() for p, c in self.clients.items()}
        after = self.current()
        for v in invariants.current_usable(before, cloud_images, after, self.had_current):
            self._violation(v, ('current', v.provider, v.what))
        with self.lock:
            self.had_current |= {k for k, cur in after.items() if cur is not None}


# -- the soak ----------------------------------------------------------------------------------

class Soak:
    def __init__(self, args, profile):
        self.args = args
        self.profile = profile
        self.seed = args.seed
        self.providers = list(profiles.PROVIDER_NAMES[:profile.providers])
        self.changes_spec = load_changes()
        self.plan = schedule.make(profile, self.seed, self.providers,
                                  [(i, c['expect']) for i, c in enumerate(self.changes_spec)])
        self.violations = []
        self.work = None
        self.clouds = None
        self.mariadb = None
        self.sampler = None
        self.steps = Steps(profile.step_timeout)
        self.config = None
        self.db = None          # read-only
        self.env = None
        self.last_reap = {p: None for p in self.providers}
        self.held = {}
        self.canaries = set()
        self.consoles = {}
        self.gates = []
        self.steps_log = []
        self.faults = collections.Counter()
        self.kills = collections.Counter()
        self.kills_missed = collections.Counter()
        self.overlaps = []
        self.db_restarts = 0
        self.in_flight = []
        self.cycle_lines = []
        self.recovery = None
        self.final = {}
        self.hold_checks = 0
        self.tokens_revoked = 0
        self.overshoots = []
        self.started = time.monotonic()

    # -- set-up -----------------------------------------------------------------------
    def setup(self):
        args = self.args
        if args.workdir:
            root = os.path.abspath(args.workdir)
            if os.path.exists(root) and os.listdir(root):
                raise UsageError('--workdir %s is not empty; give a new or empty directory'
                                 % root)
        else:
            root = tempfile.mkdtemp(prefix='devstack-gate-soak-')
        self.work = work = demo.Work(root)
        for d in (root, work.logs, work.consoles, work.jobs, work.git, work.git_work):
            os.makedirs(d, exist_ok=True)
        say('work dir %s; profile %s, seed %d, plan %s: %d cycles on %s (%s), provider %s out '
            'for cycles %s', root, self.profile.name, self.seed, self.plan['digest'],
            self.profile.cycles, ', '.join(self.providers), self.profile.database,
            self.plan['outage']['provider'], ', '.join(map(str, self.plan['outage']['cycles'])))
        with open(os.path.join(root, 'plan.json'), 'w') as f:
            json.dump(self.plan, f, indent=1, sort_keys=True)
        self.env = demo.script_env(work)
        self.write_localcloud_config()
        self.clouds = demo.start_clouds(work, self.env)
        for name, c in self.clouds.info['clouds'].items():
            say('cloud %s: %s, nodes on %s port %d', name, c['auth_url'], c['address_range'],
                c['ssh_port'])
        if self.profile.database == 'mariadb':
            from soak.mariadb import PrivateMariaDB
            self.mariadb = PrivateMariaDB(os.path.join(root, 'mariadb'),
                                          self.profile.mariadb_start_timeout)
            say('starting a private MariaDB in %s', work.rel(self.mariadb.dir))
            self.mariadb.create()
            db_url = self.mariadb.url
        else:
            db_url = work.db_url
        self.write_config(db_url)
        vmdatabase.Database(db_url).upgrade()
        self.db = vmdatabase.Database(db_url, read_only=True, lock_timeout=5, retries=3)
        from devstackgate import ssh
        self.pkey, _ = ssh.ensure_private_key(work.key)
        project, changes = demo.make_gerrit(work)
        self.changes = changes
        say('local Gerrit %s with %d changes; database %s', project, len(changes),
            db_url if self.mariadb is None else 'MariaDB (unix socket, restarted %d times)'
            % self.profile.db_restarts)
        self.set_faults(None)
        self.sampler = Sampler(self.clouds, self.providers, self.db,
                               self.profile.sample_interval, self.profile.max_servers)
        self.sampler.start()

    def write_localcloud_config(self):
        from localcloud.testing import prepare_config
        clouds = []
        for p in self.providers:
            clouds.append({'name': p, 'region': 'RegionOne', 'seed': self.plan['cloud_seeds'][p],
                           'images': [{'name': 'Ubuntu 12.04 LTS',
                                       'directory': os.path.join(demo.DEMO_DIR, 'base-image'),
                                       'properties': {'os_distro': 'ubuntu',
                                                      'os_version': '12.04'}}],
                           'faults': dict(BASE_FAULTS)})
        with open(self.work.localcloud_config, 'w') as f:
            yaml.safe_dump(prepare_config({'admin-port': 0, 'clouds': clouds}), f,
                           sort_keys=False)

    def write_config(self, db_url):
        P = self.profile
        setup = os.path.join(demo.DEMO_DIR, 'cache-packages.sh')
        data = {
            'database': db_url, 'ssh-private-key': self.work.key, 'hold-hours': P.hold_hours,
            'poll-interval': 0.2, 'launch-deadline': P.launch_deadline, 'launch-workers': 4,
            'ssh-connect-timeout': 2, 'ready-check-timeout': 10, 'fetch-poll': 0.1,
            'max-used-hours': P.max_used_hours, 'leak-grace': P.leak_grace,
            'lease-ttl': P.lease_ttl, 'lease-wait': P.lease_wait, 'lease-poll': 0.2,
            'image-build-timeout': 60, 'snapshot-timeout': 20,
            'providers': [{
                'name': p, 'cloud': p, 'max-servers': P.max_servers,
                'boot-timeout': P.boot_timeout, 'api-rate': 0.02, 'api-timeout': P.api_timeout,
                'api-retries': 6, 'api-backoff': 0.1,
                'ssh-port': self.clouds.info['clouds'][p]['ssh_port'],
                'images': [{'name': LABEL, 'base-image': 'Ubuntu 12.04 LTS', 'min-ram': 1024,
                            'min-ready': P.min_ready, 'setup': [setup],
                            'ready-check': 'getent ahostsv4 localhost >/dev/null && '
                                           'test -s cache/packages.txt',
                            'validate': "grep -q '^rabbitmq-server ' cache/packages.txt"}]}
                for p in self.providers],
            'gate': {'projects': ['openstack/devstack'], 'git-base': self.work.git,
                     'test-command': 'cd devstack && ./stack.sh && ./exercise.sh',
                     'test-timeout': 60, 'fetch-wait': P.fetch_wait, 'git-timeout': 30,
                     'git-retries': 2, 'rsync-timeout': 60},
        }
        with open(self.work.config, 'w') as f:
            f.write('# Written by python -m soak.\n')
            yaml.safe_dump(data, f, sort_keys=False)
        try:
            self.config = configmod.load(self.work.config, environ=self.env)
        except configmod.ConfigError as e:
            raise SoakError('the soak configuration is not valid: %s' % '; '.join(
                getattr(e, 'errors', None) or [str(e)]))
        provider = self.config.providers[0]
        self.limits = invariants.Limits(
            boot_timeout=P.boot_timeout, max_servers=P.max_servers,
            interrupted_build=(self.config.image_build_timeout + self.config.snapshot_timeout
                               + provider.boot_timeout + self.config.launch_deadline
                               + self.config.ready_check_timeout))

    # -- faults -------------------------------------------------------------------------
    def set_faults(self, cycle):
        """Every knob of every cloud: the baseline, plus this cycle's faults."""
        from localcloud import faults as faults_mod
        for p in self.providers:
            knobs = faults_mod.defaults()
            knobs.update(BASE_FAULTS)
            if cycle is not None:
                if p in cycle['outage']:
                    knobs['outage'] = True
                for kind, values in cycle['faults'].get(p, {}).items():
                    values = dict(values)
                    if 'quota-headroom' in values:
                        used = len([s for s in self.clouds.client(p).servers()
                                    if invariants.listed(s)])
                        headroom = values['quota-headroom']
                        values = {'quota': {'instances': 0 if headroom < 0 else used + headroom,
                                            'cores': None, 'ram': None}}
                    knobs.update(values)
            self.clouds.client(p).set_faults(knobs)

    def stats(self):
        out = {}
        for p in self.providers:
            c = self.clouds.client(p)
            s = c.stats()
            stuck = sum(1 for x in c.servers() if x.get('outcome') == 'stuck')
            out[p] = {'responses': s.get('responses', {}), 'events': s.get('events', {}),
                      'total': s.get('total', 0), 'stuck': stuck}
        return out

    def count_faults(self, cycle, before, after):
        for p in self.providers:
            if p in cycle['outage']:
                self.faults['outage'] += 1
                continue
            b, a = before[p], after[p]

            def delta(section, key):
                return a[section].get(key, 0) - b[section].get(key, 0)
            kinds = cycle['faults'].get(p, {})
            got = {'api-error': delta('responses', '500'),
                   'api-latency': a['total'] - b['total'],
                   'boot-error': delta('events', 'servers-error'),
                   'no-network': delta('events', 'servers-no-network'),
                   'stuck-build': a['stuck'] - b['stuck'],
                   'quota': delta('responses', '403'),
                   'lying-delete': delta('events', 'servers-deleted'),
                   'snapshot-failure': delta('events', 'images-killed')}
            for kind in kinds:
                self.faults[kind] += got[kind]
            self.faults['token-revocation'] += delta('responses', '401')

    # -- making steps ------------------------------------------------------------------------
    def step(self, kind, provider, tag, extra=()):
        name = {'launch': 'devstack-vm-launch.py', 'reap': 'devstack-vm-reap.py',
                'update-image': 'devstack-vm-update-image.py'}[kind]
        log = os.path.join(self.work.logs, '%s-%s-%s.txt' % (tag, kind, provider))
        n = 2
        while os.path.exists(log):
            log = os.path.join(self.work.logs, '%s-%s-%s-%d.txt' % (tag, kind, provider, n))
            n += 1
        return Run(demo.Step('%s %s' % (kind, provider), demo.script(name, provider, *extra),
                             log, self.env), kind, provider)

    def gate(self, build, change_index):
        change = self.changes[change_index]
        workspace = os.path.join(self.work.jobs, '%s-%d' % (JOB, build))
        os.makedirs(workspace)
        genv = dict(self.env, WORKSPACE=workspace, JOB_NAME=JOB, BUILD_NUMBER=str(build),
                    GERRIT_PROJECT=change.project, GERRIT_BRANCH='master',
                    GERRIT_REFSPEC=change.ref, GERRIT_CHANGE_NUMBER=str(change.number),
                    GERRIT_PATCHSET_NUMBER=str(change.patchset))
        console = os.path.join(self.work.consoles, 'gate-%d-change-%d-%d.txt'
                               % (build, change.number, change.patchset))
        step = demo.Step('gate #%d (%s)' % (build, change.id),
                         demo.script('devstack-vm-gate.sh', '--label', LABEL), console, genv,
                         cwd=workspace, data={'build': build, 'change': change})
        with open(console, 'w') as f:
            f.write(demo.console_header(step, change))
        return Run(step, 'gate', build=build, change=change)

    # -- reading ---------------------------------------------------------------------------------
    def rows(self):
        return self.db.transact(lambda s: (s.nodes(), s.images(), s.results()))

    def cloud_view(self):
        return ({p: self.clouds.client(p).servers() for p in self.providers},
                {p: self.clouds.client(p).images() for p in self.providers})

    def ready_counts(self):
        nodes = self.db.transact(lambda s: s.nodes(state='ready'))
        counts = collections.Counter((n.provider, n.label) for n in nodes)
        return {p: counts[(p, LABEL)] for p in self.providers}

    # -- after steps ---------------------------------------------------------------------------
    def after_steps(self, runs, cycle_name):
        """Note each step's outcome; tracebacks, bad exits and hangs are violations."""
        for r in runs:
            text = r.step.output()
            entry = {'cycle': cycle_name, 'kind': r.kind, 'provider': r.provider,
                     'build': r.build, 'exit': r.step.rc, 'seconds': round(r.step.elapsed or 0, 1),
                     'killed': r.killed, 'overlap': r.overlap, 'log': self.work.rel(r.step.log)}
            self.steps_log.append(entry)
            if r.killed:
                self.kills[r.kind] += 1
            elif r.kill_missed:
                self.kills_missed[r.kind] += 1
            if TRACEBACK in text:
                at = text.index(TRACEBACK)
                tail = [l for l in text[at:].splitlines() if l.strip()]
                self.violate(Violation('traceback', '%s (%s): %s' % (
                    r.step.name, self.work.rel(r.step.log), tail[-1] if tail else '?'),
                    r.provider, cycle_name))
            if r.hung:
                self.violate(Violation('hung', '%s ran longer than --step-timeout %g s; log %s'
                                       % (r.step.name, self.profile.step_timeout,
                                          self.work.rel(r.step.log)), r.provider, cycle_name))
            elif not r.killed and r.step.rc not in (0, 1):
                self.violate(Violation('bad-exit', '%s exited %s: %s; log %s' % (
                    r.step.name, r.step.rc, demo.last_line(text, is_text=True),
                    self.work.rel(r.step.log)), r.provider, cycle_name))
            if r.kind == 'reap' and r.step.rc == 0 and not r.killed:
                self.last_reap[r.provider] = max(self.last_reap[r.provider] or 0, r.started_wall)
            if r.kind == 'gate':
                self.gate_done(r, text, cycle_name)

    def gate_done(self, r, text, cycle_name):
        build = str(r.build)
        node_id = demo.console_value(text, 'NODE_ID')
        self.consoles[build] = node_id or None
        results = [x for x in self.db.transact(lambda s: s.results())
                   if x.job_name == JOB and x.build_number == build]
        self.gates.append({'cycle': cycle_name, 'build': r.build, 'change': r.change.id,
                           'expected': r.change.expect,
                           'result': results[-1].result if results else None,
                           'node_id': node_id or None, 'killed': r.killed,
                           'provider': demo.console_value(text, 'NODE_PROVIDER'),
                           'exit': r.step.rc, 'console': self.work.rel(r.step.log)})

    def violate(self, v):
        self.violations.append(v)
        say('VIOLATION %s', v.line())

    def check(self, cycle_name):
        """Every invariant, after a phase (nothing runs)."""
        found = []
        with self.sampler.lock:
            found += self.sampler.violations
            self.sampler.violations = []
        nodes, images, results = self.rows()
        servers, glance = self.cloud_view()
        self.canaries |= {n.id for n in nodes if (n.claimed_by or '').startswith('canary')}
        found += [dataclasses.replace(v, cycle=cycle_name) for v in invariants.handed_out_twice(
            results, self.consoles, self.canaries, nodes)]
        in_flight = []
        for p in self.providers:
            v, f = invariants.consistency(
                p, [n for n in nodes if n.provider == p], [i for i in images if i.provider == p],
                servers[p], glance[p], self.limits, self.last_reap[p], cycle_name)
            found += v
            in_flight += ['%s: %s' % (p, x) for x in f]
        now = time.time()
        for n in nodes:
            if n.state == 'hold' and n.id not in self.held:
                self.held[n.id] = invariants.Held(n.id, n.provider, n.name, n.external_id, n.ip,
                                                  n.username, n.host_key, n.hold_until)
        found += invariants.hold_changes(self.held, nodes, servers, now, cycle_name)
        found += self.hold_logins(nodes, now, cycle_name)
        self.held = {k: h for k, h in self.held.items() if now < h.hold_until}
        for v in found:
            self.violate(v)
        return nodes, images, in_flight

    def hold_logins(self, nodes, now, cycle_name):
        from devstackgate import ssh
        out = []
        rows = {n.id: n for n in nodes}
        for h in self.held.values():
            row = rows.get(h.node_id)
            if row is None or row.state != 'hold' or now >= h.hold_until - HOLD_SSH_TIMEOUT:
                continue
            port = self.config.provider(h.provider).ssh_port
            self.hold_checks += 1
            try:
                client = ssh.connect(h.ip, port, h.username, self.pkey, HOLD_SSH_TIMEOUT,
                                     host_key=h.host_key)
                try:
                    status, output = ssh.run(client, 'test -d workspace', HOLD_SSH_TIMEOUT)
                finally:
                    client.close()
            except Exception as e:
                status, output = None, '%s: %s' % (type(e).__name__, e)
            if status != 0:
                out.append(Violation('hold-intact', 'held node %s (row %d) at %s: %s' % (
                    h.name, h.node_id, h.ip, 'no workspace on it' if status is not None
                    else 'cannot log in: %s' % output), h.provider, cycle_name))
        return out

    # -- phases ----------------------------------------------------------------------------------
    def bootstrap(self):
        say('bootstrap (faults off): an image per provider, then the pools filled')
        runs = [self.step('update-image', p, '0') for p in self.providers]
        self.steps.run(runs)
        self.after_steps(runs, 'bootstrap')
        missing = [p for p in self.providers
                   if self.db.transact(lambda s: s.current_image(p, LABEL)) is None]
        if missing:
            raise SoakError('bootstrap: no image could be built for %s; log %s' % (
                ', '.join(missing), ', '.join(self.work.rel(r.step.log) for r in runs
                                              if r.provider in missing)))
        runs = [self.step('launch', p, '0') for p in self.providers]
        self.steps.run(runs)
        self.after_steps(runs, 'bootstrap')
        say('bootstrap: images %s; ready nodes %s', ', '.join(
            '%s %s' % (p, self.db.transact(lambda s: s.current_image(p, LABEL)).name)
            for p in self.providers), counts_text(self.ready_counts()))
        self.check('bootstrap')

    def cycle(self, cycle):
        c = cycle['cycle']
        P = self.profile
        self.sampler.set_cycle(c)
        kinds = {p: ', '.join(sorted(cycle['faults'].get(p, {}))) or 'none'
                 for p in self.providers}
        for p in cycle['outage']:
            kinds[p] = 'OUTAGE'
        say('cycle %d/%d: faults %s; %d gate jobs, %s%s%s%s', c, P.cycles,
            '; '.join('%s: %s' % (p, kinds[p]) for p in self.providers), len(cycle['gates']),
            'image build on %s' % cycle['image'] if cycle['image'] else 'no image build',
            '; kill %s' % ', '.join('%s%s after %.1f s' % (
                k['kind'], ' ' + k.get('provider', '') if 'provider' in k else
                ' #%d' % k['build'] if 'build' in k else '', k['after']) for k in cycle['kills'])
            if cycle['kills'] else '',
            '; overlapping %s %s' % (cycle['overlap']['kind'], cycle['overlap']['provider'])
            if cycle['overlap'] else '',
            '; MariaDB restart at %.1f s' % cycle['db_restart']['after']
            if cycle['db_restart'] else '')
        before = self.stats()
        self.set_faults(cycle)
        tag = '%d' % c
        runs = [self.gate(g['build'], g['change']) for g in cycle['gates']]
        gate_runs = list(runs)

        def gates_have_nodes():
            # The launch sees what the gates took: it starts once every gate job
            # has printed its NODE_ID= (or ended), at the latest at launch-delay.
            for g in gate_runs:
                if g.has_node:
                    continue
                if g.step.proc is None:
                    return False
                if g.step.proc.poll() is None and 'NODE_ID=' not in g.step.output():
                    return False
                g.has_node = True
            return True
        for p in self.providers:
            r = self.step('launch', p, tag)
            r.start_at = P.launch_delay
            r.start_when = gates_have_nodes
            runs.append(r)
            r = self.step('reap', p, tag)
            r.start_at = P.reap_delay
            runs.append(r)
        if cycle['image']:
            runs.append(self.step('update-image', cycle['image'], tag))
        if cycle['overlap']:
            o = cycle['overlap']
            r = self.step(o['kind'], o['provider'], tag)
            first = [x for x in runs if x.kind == o['kind'] and x.provider == o['provider']][0]
            r.start_at = first.start_at + o['after']
            r.overlap = True
            runs.append(r)
            self.overlaps.append({'cycle': c, 'kind': o['kind'], 'provider': o['provider']})
        for k in cycle['kills']:
            for r in runs:
                if r.kind == k['kind'] and not r.overlap and r.kill_after is None and (
                        r.provider == k.get('provider', r.provider)
                        and r.build == k.get('build', r.build)):
                    r.kill_after = k['after']
                    break
        actions = []
        build_run = ([r for r in runs if r.kind == 'update-image']
                     or [r for r in runs if r.kind == 'launch'
                         and r.provider in cycle['revoke']['providers']])[0] \
            if cycle['revoke'] else None
        if cycle['revoke']:
            def revoke(providers=cycle['revoke']['providers']):
                n = sum(self.clouds.client(p).revoke_tokens() for p in providers)
                self.tokens_revoked += n
                say('cycle %d: revoked %d tokens of %s', c, n, ', '.join(providers))
            actions.append((cycle['revoke']['after'], revoke, build_run))
        if cycle['db_restart']:
            def restart():
                say('cycle %d: restarting MariaDB (down %g s)', c, P.db_down)
                try:
                    self.mariadb.restart(P.db_down)
                    self.db_restarts += 1
                    say('cycle %d: MariaDB is back', c)
                except Exception as e:
                    self.restart_error = str(e)
            actions.append((cycle['db_restart']['after'], restart, None))
        seconds = self.steps.run(runs, actions)
        if getattr(self, 'restart_error', None):
            raise SoakError('MariaDB did not come back: %s' % self.restart_error)
        self.set_faults(None)
        after = self.stats()
        self.count_faults(cycle, before, after)
        self.after_steps(runs, c)
        nodes, images, in_flight = self.check(c)
        self.in_flight = in_flight
        # Not an invariant, a sign of a double launch: more nodes than min-ready.
        for p in self.providers:
            pool = sum(1 for n in nodes if n.provider == p and n.state in ('ready', 'building'))
            if pool > P.min_ready:
                self.overshoots.append({'cycle': c, 'provider': p, 'ready+building': pool})
                say('cycle %d: %s holds %d ready+building nodes, more than min-ready %d',
                    c, p, pool, P.min_ready)
        gates = [g for g in self.gates if g['cycle'] == c]
        line = ('cycle %d: %.0f s; gates %s; launch %s; reap %s; build %s; killed %s; ready now '
                '%s; held %d; in flight %d; violations so far %d' % (
                    c, seconds, counts_text(collections.Counter(
                        'killed' if g['killed'] else g['result'] or 'no result' for g in gates)),
                    exits(runs, 'launch'), exits(runs, 'reap'), exits(runs, 'update-image'),
                    ', '.join('%s at %.1f s' % (r.step.name, r.killed_at) for r in runs
                              if r.killed) or 'none',
                    counts_text(self.ready_counts()), sum(1 for n in nodes if n.state == 'hold'),
                    len(in_flight), len(self.violations)))
        say(line)
        for x in in_flight:
            say('cycle %d: in flight (allowed): %s', c, x)
        self.cycle_lines.append(line)

    def final_phase(self):
        P = self.profile
        self.sampler.set_cycle('final')
        self.set_faults(None)
        limit = P.launch_period * P.recovery_periods
        say('faults off: launch every %g s until every pool is back at min-ready %d (limit %g s '
            '= %g launch periods)', P.launch_period, P.min_ready, limit, P.recovery_periods)
        began = time.monotonic()
        period = 0
        recovered = None
        while recovered is None and time.monotonic() - began <= limit + P.launch_period:
            period += 1
            runs = [self.step('launch', p, 'final')for p in self.providers]
            if period == 1:
                runs += [self.step('reap', p, 'final') for p in self.providers]
            for r in runs:
                demo.start_step(r.step)
                demo.RUNNING.remove(r.step)
                r.started_wall = time.time()
                self.steps.active.append(r)
            end = time.monotonic() + P.launch_period
            while time.monotonic() < end or any(r.step.proc.poll() is None for r in runs):
                if recovered is None and all(n >= P.min_ready
                                             for n in self.ready_counts().values()):
                    recovered = time.monotonic() - began
                if recovered is not None and all(r.step.proc.poll() is not None for r in runs):
                    break
                time.sleep(0.2)
            for r in runs:
                r.step.rc = r.step.proc.wait()
                r.step.elapsed = time.monotonic() - r.step.started
                self.steps.active.remove(r)
            self.after_steps(runs, 'final')
        self.recovery = {'seconds': round(recovered, 1) if recovered is not None else None,
                         'limit': limit, 'launch_runs': period}
        if recovered is None or recovered > limit:
            self.violate(Violation('recovery', 'pools not back at min-ready %d within %g s (%s); '
                                   'ready now %s' % (P.min_ready, limit, 'took %.1f s' % recovered
                                                     if recovered else 'never',
                                                     counts_text(self.ready_counts())),
                                   cycle='final'))
        else:
            say('pools back at min-ready %d after %.1f s (%d launch runs per provider)',
                P.min_ready, recovered, period)
        # The final clean reap (the recovery's first period ran one with the faults
        # off): again while anything is unsettled.
        for n in range(1, P.final_reap_runs + 1):
            if not self.agreement()[0]:
                break
            runs = [self.step('reap', p, 'final') for p in self.providers]
            self.steps.run(runs)
            self.after_steps(runs, 'final')
            problems, _ = self.agreement()
            say('final reap %d: %s', n, '%d unsettled' % len(problems) if problems
                else 'clouds and database agree')
            if not problems:
                break
            time.sleep(P.leak_grace)
        problems, in_flight = self.agreement()
        for v in problems:
            self.violate(v)
        nodes, images, _ = self.check('final')
        servers, glance = self.cloud_view()
        self.final = {p: {
            'servers': invariants.server_count(p, servers[p]),
            'images': len(invariants.tagged_images(p, glance[p])),
            'nodes': dict(collections.Counter(n.state for n in nodes if n.provider == p)),
            'image_rows': dict(collections.Counter(i.state for i in images if i.provider == p)),
        } for p in self.providers}
        self.final['leaks'] = len(problems)
        self.final['in_flight'] = in_flight
        say('final: clouds %s; %s', '; '.join(
            '%s %d servers, %d images, nodes %s' % (p, f['servers'], f['images'],
                                                   counts_text(f['nodes']))
            for p, f in self.final.items() if p in self.providers),
            'zero leaks' if not problems else '%d LEAKS' % len(problems))
        for x in in_flight:
            say('final: in flight (allowed, the reaper settles it after its interrupted-build '
                'limit): %s', x)

    def agreement(self):
        nodes, images, _ = self.rows()
        servers, glance = self.cloud_view()
        out, flight = [], []
        for p in self.providers:
            v, f = invariants.final_agreement(
                p, [n for n in nodes if n.provider == p], [i for i in images if i.provider == p],
                servers[p], glance[p], self.limits, self.last_reap[p])
            out += v
            flight += ['%s: %s' % (p, x) for x in f]
        return out, flight

    # -- the whole run ---------------------------------------------------------------------------
    def run(self):
        self.setup()
        self.bootstrap()
        for cycle in self.plan['cycles']:
            self.cycle(cycle)
        self.final_phase()

    def teardown(self):
        problems = []
        if self.steps is not None:
            self.steps.stop_all()
        for step in list(demo.RUNNING):
            demo.stop_process_group(step.proc)
            demo.RUNNING.remove(step)
        if self.sampler is not None:
            self.sampler.stop_event.set()
            self.sampler.join(10)
        if self.clouds is not None and not self.clouds.stopped:
            addresses = set()
            try:
                addresses = {(s['address'], s['ssh_port']) for p in self.providers
                             for s in self.clouds.client(p).servers() if s['address']}
            except Exception:
                pass
            problems += demo.stop_clouds(self.clouds, addresses)
        if self.mariadb is not None:
            self.mariadb.stop()
        if self.work is not None:
            left = demo.wait_until(lambda: not demo.processes_mentioning(self.work.root),
                                   demo.GONE_TIMEOUT)
            if left is not True:
                problems += ['still running: pid %d: %s' % p
                             for p in demo.processes_mentioning(self.work.root)]
        return problems

    # -- the report -----------------------------------------------------------------------------
    def report(self, seconds, error=None):
        planned = schedule.planned_kinds(self.plan)
        served = [g for g in self.gates if g['node_id']]
        results = collections.Counter(g['result'] or ('killed' if g['killed'] else 'no result')
                                      for g in self.gates)
        matched = sum(1 for g in self.gates if g['result'] == g['expected'])
        by_invariant = collections.Counter(v.invariant for v in self.violations)
        return {
            'profile': self.profile.name, 'seed': self.seed, 'plan_digest': self.plan['digest'],
            'settings': dataclasses.asdict(self.profile), 'providers': self.providers,
            'seconds': round(seconds, 1), 'error': error,
            'faults_planned': planned,
            'faults_injected': {k: self.faults.get(k, 0) for k in schedule.FAULT_KINDS},
            'tokens_revoked': self.tokens_revoked,
            'crashes': {'sigkill': {k: self.kills.get(k, 0) for k in schedule.KILL_KINDS},
                        'sigkill_missed': {k: self.kills_missed.get(k, 0)
                                           for k in schedule.KILL_KINDS},
                        'mariadb_restarts': self.db_restarts},
            'overlaps': self.overlaps,
            'pool_overshoots': self.overshoots,
            'jobs': {'started': len(self.gates), 'served': len(served),
                     'results': dict(sorted(results.items())), 'as_expected': matched},
            'steps': dict(collections.Counter(s['kind'] for s in self.steps_log)),
            'recovery': self.recovery,
            'max_servers': {'limit': self.profile.max_servers,
                            'peak': dict(self.sampler.peak) if self.sampler else {},
                            'samples': self.sampler.samples if self.sampler else 0,
                            'sample_errors': self.sampler.errors if self.sampler else 0},
            'held_logins': self.hold_checks,
            'final': self.final,
            'violations': len(self.violations),
            'violations_by_invariant': {k: by_invariant.get(k, 0) for k in invariants.INVARIANTS},
            'violation_list': [v.as_dict() for v in self.violations],
            'cycles': self.cycle_lines, 'gates': self.gates, 'step_runs': self.steps_log,
            'workdir': self.work.root if self.work else None,
        }


def table(data):
    """The closing table: one row per figure, aligned."""
    def kv(d):
        return ', '.join('%s %s' % (k, v) for k, v in d.items() if v) or 'none'
    rec = data['recovery'] or {}
    rows = [
        ('faults injected', kv(data['faults_injected'])),
        ('crashes survived', 'SIGKILL %s; MariaDB restarts %d%s' % (
            kv(data['crashes']['sigkill']), data['crashes']['mariadb_restarts'],
            '; kills that found the step ended: %s' % kv(data['crashes']['sigkill_missed'])
            if any(data['crashes']['sigkill_missed'].values()) else '')),
        ('overlapping runs', (', '.join('cycle %d %s %s' % (o['cycle'], o['kind'], o['provider'])
                                        for o in data['overlaps']) or 'none')
         + ('; pools above min-ready after a cycle: %s' % ', '.join(
             'cycle %d %s %d' % (o['cycle'], o['provider'], o['ready+building'])
             for o in data['pool_overshoots']) if data['pool_overshoots'] else '')),
        ('jobs served', '%d of %d gate jobs got a node; results %s; %d as the change expects' % (
            data['jobs']['served'], data['jobs']['started'], kv(data['jobs']['results']),
            data['jobs']['as_expected'])),
        ('script runs', kv(data['steps'])),
        ('time to min-ready', '%s s (limit %g s)' % (rec.get('seconds'), rec.get('limit', 0))
         if rec else 'not measured'),
        ('max servers seen', '%s (max-servers %d, %d samples)' % (
            kv(data['max_servers']['peak']), data['max_servers']['limit'],
            data['max_servers']['samples'])),
        ('leaks at the end', str(data['final'].get('leaks', 'not checked'))),
        ('violations', '%d%s' % (data['violations'], ' (%s)' % kv(
            data['violations_by_invariant']) if data['violations'] else '')),
    ]
    width = max(len(r[0]) for r in rows)
    head = 'soak %s, seed %d, plan %s: %.0f s' % (data['profile'], data['seed'],
                                                  data['plan_digest'], data['seconds'])
    return [head] + ['  %-*s  %s' % (width, k, v) for k, v in rows]


def counts_text(counts):
    return ', '.join('%s %s' % (k, v) for k, v in sorted(counts.items())) or 'none'


def exits(runs, kind):
    rs = [r for r in runs if r.kind == kind]
    return ', '.join('%s %s' % (r.provider, 'killed' if r.killed else 'hung' if r.hung
                                else 'exit %s' % r.step.rc) for r in rs) or 'none'


def load_changes():
    with open(os.path.join(demo.DEMO_DIR, 'changes.yaml')) as f:
        return yaml.safe_load(f)['changes']


class UsageError(SoakError):
    pass


# -- the command -------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='python -m soak', description='Run the pool (launch, gate jobs, image builds, '
        'reap: the real scripts) against local clouds with faults and SIGKILLs, cycle after '
        'cycle, and check its invariants after every cycle.  Exit 0: no violation; 1: '
        'violations (or the soak could not run); 2: bad usage; 130: interrupted.')
    p.add_argument('--profile', choices=sorted(profiles.PROFILES), default='short',
                   help='short: under a minute, as the test suite runs it (default); '
                   'long: minutes, on a private MariaDB restarted mid-cycle, with overlaps')
    p.add_argument('--seed', type=int, default=1, help='seeds the whole plan (default 1)')
    p.add_argument('--json', metavar='PATH', help='where to write the JSON (default: '
                   'soak-results-PROFILE.json in the current directory)')
    p.add_argument('--workdir', metavar='DIR', help='a new or empty directory for the run '
                   '(default: a temporary one, removed after a clean run)')
    p.add_argument('--keep', action='store_true', help='keep the work dir (logs, consoles, '
                   'database) even after a clean run')
    p.add_argument('--plan', action='store_true', help='print the plan (JSON) and exit')
    p.add_argument('--overlaps', dest='overlaps', type=int, metavar='N',
                   help='cycles with a second, overlapping launch or reap run for one provider '
                   '(default: the profile\'s: short 0, long 4); --no-overlaps is 0')
    p.add_argument('--no-overlaps', dest='overlaps', action='store_const', const=0)
    helps = profiles.helps()
    for option, f in profiles.fields():
        if f.name == 'overlaps':
            continue
        default = getattr(profiles.SHORT, f.name)
        kind = {int: int, float: float, str: str}[type(default)]
        p.add_argument(option, type=kind, dest=f.name, default=None, metavar=f.name.upper(),
                       choices=profiles.CHOICES.get(f.name),
                       help='%s (short %s, long %s)' % (helps.get(f.name, ''), default,
                                                        getattr(profiles.LONG, f.name)))
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        raise SystemExit(e.code if isinstance(e.code, int) else EXIT_USAGE)
    changes = {f.name: getattr(args, f.name) for _, f in profiles.fields()
               if getattr(args, f.name) is not None}
    profile = dataclasses.replace(profiles.PROFILES[args.profile], **changes)
    problems = profiles.check(profile)
    if problems:
        p.print_usage(sys.stderr)
        for problem in problems:
            print('python -m soak: error: %s' % problem, file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return args, profile


def log_warnings():
    """The soak's own database reads may warn (a MariaDB restart): as soak lines, with
    the libraries' noise kept off, like every other line it prints."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('%(asctime)s ' + PROG + ': %(name)s: %(message)s',
                                           demo.DATE_FORMAT))
    handler.addFilter(logmod.libraries_filter(False))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def main(argv=None):
    try:
        args, profile = parse_args(argv)
    except SystemExit as e:
        return e.code
    soak = Soak(args, profile)
    log_warnings()
    if args.plan:
        print(json.dumps(soak.plan, indent=1, sort_keys=True))
        return EXIT_OK

    def interrupted(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    code, error = EXIT_OK, None
    try:
        try:
            soak.run()
        except Interrupted as e:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            say('interrupted (%s): stopping the steps, the clouds and the database', e.name)
            code, error = EXIT_INTERRUPTED, 'interrupted (%s)' % e.name
        except UsageError as e:
            say('error: %s', e)
            return EXIT_USAGE
        except (SoakError, OSError, vmdatabase.DatabaseError) as e:
            say('error: %s', e)
            code, error = EXIT_VIOLATIONS, str(e)
        except Exception as e:      # a bug of the soak: one line here, the traceback in a file
            path = os.path.join(soak.work.logs if soak.work else tempfile.gettempdir(),
                                'soak-traceback-%d.txt' % os.getpid())
            with open(path, 'w') as f:
                traceback.print_exc(file=f)
            say('error: unexpected %s: %s (traceback in %s)', type(e).__name__, e, path)
            code, error = EXIT_VIOLATIONS, '%s: %s' % (type(e).__name__, e)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            left = soak.teardown()
        for problem in left:
            soak.violate(Violation('hung', 'after the run: %s' % problem, cycle='end'))
        data = soak.report(time.monotonic() - soak.started, error)
        path = os.path.abspath(args.json or 'soak-results-%s.json' % profile.name)
        with open(path, 'w') as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write('\n')
        for line in table(data):
            say(line)
        for v in soak.violations:
            say('violation: %s', v.line())
        if code == EXIT_OK and soak.violations:
            code = EXIT_VIOLATIONS
        # Kept for their logs after violations or a failure; never after a clean run
        # or an interruption (unless asked for).
        keep = bool(args.keep or args.workdir or code == EXIT_VIOLATIONS)
        if soak.work is not None and not keep:
            shutil.rmtree(soak.work.root, ignore_errors=True)
        say('%s; JSON in %s%s', 'no violations' if code == EXIT_OK else
            'interrupted' if code == EXIT_INTERRUPTED else
            '%d violations' % len(soak.violations) if soak.violations else 'failed: %s' % error,
            path, '; work dir kept: %s' % soak.work.root if soak.work and keep else '')
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

"""Launch: keep min-ready nodes per label of one provider, within max-servers.

One run (what Jenkins starts every ten minutes, one matrix cell per provider):

1. list the provider's servers once, and pick up nodes an earlier run left
   building (a node row is written before its server is created, and the
   server carries the node id in its metadata, so nothing is lost to a crash);
2. per label that is not disabled or quarantined and has a current image (a
   paused label is launched too: a pause stops image builds only, so the pool
   keeps being topped up from the current image, or the previous one after a
   demote): deficit = wanted - (ready + building), where wanted is min-ready,
   or with ``pool-sizing: demand`` the target of devstackgate.sizing (logged
   with its figures), all labels together capped by
   max-servers minus everything this provider holds (every node row in any
   state, plus our tagged servers that have no node row, such as image
   templates);
3. boot the deficit in parallel from the label's current image on the
   smallest flavor with at least min-ram;
4. wait with one shared server list per poll: ACTIVE -> address -> SSH as the
   image's user -> ready check -> host key stored -> ready.  ERROR, no
   address, SSH timeout, a failed ready check or boot-timeout: the server is
   deleted and the row marked delete with the reason;
5. stop at the run's deadline; nodes still building are finished by the next run.

A run holds the provider's launch lease throughout (devstackgate.lease): a
second run waits for it or skips.  If the lease is lost (the database down for
lease-ttl, or the lease taken over) the run boots nothing more, stops polling
and leaves its nodes building for the next holder, then exits 1.
"""

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time

import vmdatabase
from devstackgate import (cells, cloud, lease as leasemod, log as console, metrics, sizing,
                          ssh, wait)
from devstackgate.errors import GateError

log = logging.getLogger('launch')


@dataclasses.dataclass(frozen=True)
class Check:
    """How a node's SSH check ended."""
    outcome: str                # 'ready', 'failed', or 'pending' (the run's deadline came first)
    reason: str = None          # why it failed: no-network, ready-check, host-key, ...
    message: str = None
    host_key: str = None


@dataclasses.dataclass
class LabelSummary:
    ready: int = 0
    building: int = 0
    launched: int = 0
    became_ready: int = 0
    failed: int = 0
    note: str = ''

    def line(self, label):
        text = ('%s: ready %d, building %d, launched %d, failed %d'
                % (label, self.ready, self.building, self.launched, self.failed))
        return text + ('; ' + self.note if self.note else '')


@dataclasses.dataclass
class Summary:
    provider: str
    labels: dict

    @property
    def failed(self):
        return sum(s.failed for s in self.labels.values())

    @property
    def became_ready(self):
        return sum(s.became_ready for s in self.labels.values())


def servers_held(provider_name, rows, servers):
    """(servers counting against max-servers, the untracked ones among them).

    Every node row but a delete row whose server is not in the list (the
    reaper removes such a row on its next run), plus every listed
    server of this provider without a node row (templates, canaries of other
    runs, leaks).  Launch and the image builder count alike.
    """
    tracked = {str(n.id) for n in rows}
    untracked = [s for s in servers
                 if s.metadata.get(cloud.META_PROVIDER) == provider_name
                 and s.metadata.get(cloud.META_NODE_ID) not in tracked]
    listed = {s.id for s in servers}
    held = sum(1 for n in rows if n.state != 'delete' or n.external_id in listed) + len(untracked)
    return held, untracked


@dataclasses.dataclass(frozen=True)
class OwnDisk:
    """What the nodes of a kind that builds no images boot from: no image row."""
    id: int = None
    name: str = 'its own pristine root'
    external_id: str = None


OWN_DISK = OwnDisk()


def node_name(config, label, provider, node_id):
    return config.node_name_format.format(prefix=config.node_prefix, label=label,
                                          provider=provider, id=node_id)


def describe(node):
    return '%s %s %s' % (node.provider, node.label, node.name or 'node-%d' % node.id)


class Launcher:
    def __init__(self, config, provider, db, adapter, pkey, clock=time.monotonic,
                 sleep=time.sleep, ready_state='ready', claimed_by=None, lease=None):
        """ready_state/claimed_by: what a node that passes its checks becomes.  The
        image builder's canary becomes 'used' (by the build), so no gate job
        can be handed a node of an image that is not yet promoted.  lease: what
        the run holds (devstackgate.lease); it boots and polls only while it is
        still held."""
        self.lease = lease or leasemod.UNLEASED
        self.ready_state = ready_state
        self.claimed_by = claimed_by
        self.config = config
        self.provider = provider
        self.db = db
        self.adapter = adapter
        self.pkey = pkey
        self.clock = clock
        self.sleep = sleep
        self.started = clock()
        self.deadline = self.started + config.launch_deadline
        self.summary = Summary(provider.name, {i.name: LabelSummary() for i in provider.images})
        self._key_name = None
        self._key_lock = threading.Lock()
        self.canary_labels = {}     # label -> the Quarantine its canary (this run's) probes
        self.canaries = set()       # node ids booted as canaries
        self._count_lock = threading.Lock()     # the summary's counters, bumped by workers
        # The logins (handshake and ready check) in flight at once: the waits for a
        # node's SSH before them are cheap and not counted (ssh.answering).
        self._logins = threading.BoundedSemaphore(config.ssh_parallel_logins)

    # -- bookkeeping ------------------------------------------------------
    def _nodes(self):
        return self.db.transact(lambda s: s.nodes(provider=self.provider.name))

    def _update(self, node_id, **fields):
        self.db.transact(lambda s: s.update_node(node_id, **fields))

    def _finish(self, node, to_state, **fields):
        """Move a building node on, unless someone (the reaper) took it meanwhile;
        the launch history (kept after the row is reaped) notes how it ended."""
        ended = []

        def tx(s):
            now = time.time()
            ended[:] = [now]
            if not s.transition(node, to_state, now=now, **fields):
                return False
            s.record_launch(node.provider, node.label, node.id,
                            'failed' if to_state == 'delete' else to_state,
                            fields.get('fail_reason'), now - node.created, now)
            return True
        if self.db.transact(tx):
            self._count(node, to_state, fields.get('fail_reason'), ended[0] - node.created)
            return True
        log.warning('%s: no longer building (changed by another run); leaving it as it is',
                    describe(node))
        return False

    def _count(self, node, to_state, reason, seconds):
        """dg.launch.<provider>.<label>.ready (and its ready_time), or .failed.<reason>."""
        stats = metrics.get()
        if to_state == 'delete':
            stats.incr(metrics.key('launch', node.provider, node.label, 'failed',
                                   reason or 'unknown'))
        else:
            stats.incr(metrics.key('launch', node.provider, node.label, 'ready'))
            stats.timing(metrics.key('launch', node.provider, node.label, 'ready_time'),
                         seconds * 1000)

    def _label(self, label):
        return self.summary.labels.setdefault(label, LabelSummary())

    def _bump(self, label, counter):
        with self._count_lock:
            s = self._label(label)
            setattr(s, counter, getattr(s, counter) + 1)

    def key_name(self):
        """The pool's keypair, made sure of once per run."""
        with self._key_lock:
            if self._key_name is None:
                self._key_name = self.adapter.pool_keypair(ssh.public_line(self.pkey))
            return self._key_name

    def fail(self, node, reason, message):
        """Delete the node's server (if any) and mark its row, with the reason."""
        log.warning('%s: failed (%s): %s; deleting it', describe(node), reason, message)
        if node.external_id:
            self.adapter.delete_quietly('server', node.external_id, describe(node))
        self._finish(node, 'delete', fail_reason=reason)
        self._bump(node.label, 'failed')

    # -- 1. pick up what earlier runs left --------------------------------
    def resume(self, rows, servers):
        by_node_id = {s.metadata.get(cloud.META_NODE_ID): s for s in servers
                      if s.metadata.get(cloud.META_PROVIDER) == self.provider.name}
        watch = []
        now = time.time()
        for node in rows:
            if node.state != 'building':
                continue
            if node.external_id:
                log.info('%s: still building from an earlier run (%.0f s old); waiting for it',
                         describe(node), now - node.created)
                watch.append(node)
                continue
            server = by_node_id.get(str(node.id))
            if server is not None:
                log.info('%s: found its server %s by metadata; waiting for it',
                         describe(node), server.id)
                self._update(node.id, external_id=server.id)
                watch.append(dataclasses.replace(node, external_id=server.id))
            elif now - node.created > self.provider.api_timeout:
                # Its create call cannot still be in flight: nothing to wait on.
                log.warning('%s: no server was ever recorded for it; marking it delete',
                            describe(node))
                self._finish(node, 'delete', fail_reason='lost')
        return watch
    # -- 2. how many to boot ----------------------------------------------
    def plan(self, rows, servers):
        held, untracked = servers_held(self.provider.name, rows, servers)
        capacity = max(0, self.provider.max_servers - held)
        counts = collections.Counter((n.label, n.state) for n in rows)
        disabled = cells.disabled(self.config, self.db)
        quarantines = {q.label: q for q in self.db.transact(
            lambda ses: ses.quarantines(provider=self.provider.name))}
        wanted = {}
        now = time.time()
        for image in self.provider.images:
            s = self._label(image.name)
            s.ready, s.building = counts[(image.name, 'ready')], counts[(image.name, 'building')]
            if image.name in disabled:
                s.note = disabled[image.name]
                log.info('%s %s: %s; not launching', self.provider.name, image.name,
                         disabled[image.name])
                continue
            q = quarantines.get(image.name)
            if q is not None and (now < q.probe_after or s.building):
                s.note = 'quarantined by %s since %s: %s' % (q.set_by, console.utc(q.since),
                                                              q.reason)
                log.info('%s %s: quarantined (%s); not launching%s', self.provider.name,
                         image.name, q.reason, '' if s.building else
                         ', a canary probes it after %s' % console.utc(q.probe_after))
                continue
            current = self.current_image(image.name)
            if current is None:
                s.note = 'no ready image (run devstack-vm-update-image.py %s %s)' % (
                    self.provider.name, image.name)
                log.warning('%s %s: no ready image; not launching', self.provider.name,
                            image.name)
                continue
            want = image.min_ready
            if image.pool_sizing == 'demand':
                decision = sizing.decide(self.db, self.config, self.provider, image)
                log.info('%s', decision.line())
                metrics.get().gauge(metrics.key('sizing', self.provider.name, image.name,
                                                'target'), decision.target)
                want = decision.target
                s.note = 'demand target %d' % want
            deficit = want - (s.ready + s.building)
            if q is not None:           # cooled down: one canary, watched before it ends it
                log.info('%s %s: quarantined since %s; probing it with one canary node',
                         self.provider.name, image.name, console.utc(q.since))
                self.canary_labels[image.name] = q
                deficit = 1
            if deficit > 0:
                wanted[image.name] = (deficit, current)
        # Share the capacity round-robin, so one label cannot starve the others.
        allocation = collections.Counter()
        while capacity > 0 and any(allocation[l] < d for l, (d, _) in wanted.items()):
            for label, (deficit, _) in wanted.items():
                if capacity > 0 and allocation[label] < deficit:
                    allocation[label] += 1
                    capacity -= 1
        for label, (deficit, _) in wanted.items():
            if allocation[label] < deficit:
                self._label(label).note = 'max-servers %d reached: %d of %d wanted' % (
                    self.provider.max_servers, allocation[label], deficit)
        log.info('%s: %d servers held of max-servers %d (%d untracked); launching %s',
                 self.provider.name, held, self.provider.max_servers, len(untracked),
                 ', '.join('%d %s' % (n, l) for l, n in allocation.items()) or 'nothing')
        return [(label, wanted[label][1]) for label, n in allocation.items() for _ in range(n)]

    def current_image(self, label):
        """The image row new nodes of the label boot from (None: no ready image);
        OWN_DISK for a kind that builds no images (bare metal)."""
        if not self.adapter.builds_images:
            return OWN_DISK
        return self.db.transact(lambda ses: ses.current_image(self.provider.name, label))

    # -- 3. boot ----------------------------------------------------------
    def boot(self, label, image_row):
        """Record a node row, then create its server; the node, or None if the create failed."""
        if not self.lease.ok():
            log.warning('%s %s: %s lost; not booting', self.provider.name, label,
                        self.lease.name)
            return None
        image = self.provider.image(label)
        flavor = self.adapter.flavor_for(image.min_ram)
        key_name = self.key_name()

        def record(s):              # the row and its name in one transaction
            row = s.create_node(self.provider.name, label, image_id=image_row.id,
                                username=image.username)
            name = node_name(self.config, label, self.provider.name, row.id)
            s.update_node(row.id, name=name)
            return dataclasses.replace(row, name=name)
        node = self.db.transact(record)
        name = node.name
        if self.canary_labels.pop(label, None) is not None:
            self.canaries.add(node.id)
        log.info('%s: booting from image %s on flavor %s', describe(node), image_row.name,
                 flavor.name)
        self._bump(label, 'launched')
        try:
            server_id = self.adapter.create_server(
                name, image_row.external_id, flavor.id, key_name,
                cloud.tags(self.provider.name, 'node', label, node_id=node.id,
                           image_id=image_row.id))
        except GateError as e:
            # Even after an error the server may exist (a lost reply): the row
            # stays, marked, and the reaper finds any server by its metadata.
            self._bump(label, 'failed')
            log.warning('%s: boot failed (%s): %s; marking it delete', describe(node), e.reason, e)
            self._finish(node, 'delete', fail_reason=e.reason)
            return None
        self._update(node.id, external_id=server_id)
        return dataclasses.replace(node, external_id=server_id)

    # -- 4. wait ----------------------------------------------------------
    def check_node(self, node, ip):
        """SSH in, run the ready check, capture the host key: a Check."""
        image = self.provider.image(node.label)
        node_deadline = self.clock() + (node.created + self.provider.boot_timeout - time.time())
        deadline = min(node_deadline, self.deadline)
        try:
            client = ssh.wait_for_ssh(ip, self.provider.ssh_port, node.username, self.pkey,
                                      deadline, self.config.ssh_connect_timeout,
                                      interval=self.config.launch_poll_interval,
                                      describe=describe(node) + ': ', clock=self.clock,
                                      sleep=self.sleep, logins=self._logins)
        except ssh.SSHTimeout as e:
            if deadline < node_deadline:
                return Check('pending', message=str(e))
            return Check('failed', 'no-network', str(e))
        try:
            host_key = ssh.remote_host_key(client)
            with self._logins:
                status, output = ssh.run(client, image.ready_check,
                                         self.config.ready_check_timeout)
        except ssh.SSHError as e:
            return Check('failed', e.reason, str(e))
        except Exception as e:  # a connection dropped mid-check
            return Check('failed', 'ready-check', '%s: %s' % (type(e).__name__, e))
        finally:
            client.close()
        if status != 0:
            last = output.strip().splitlines()[-1:] or ['no output']
            return Check('failed', 'ready-check', 'ready check exited %d: %s' % (status, last[0]))
        return Check('ready', host_key=host_key)

    def wait(self, watch, booting=(), pool=None):
        """Poll the cloud (one server list per poll, every launch-poll-interval) and
        SSH-check active nodes, until every watched node is ready or failed, or the
        run's deadline.  `booting`: futures of boot() still running (in run()'s
        pool of creates); each node they return is watched from then on.  The checks
        run in `pool`, and each records its node's outcome as soon as it ends."""
        if pool is None:
            with concurrent.futures.ThreadPoolExecutor(self.config.launch_check_workers) as pool:
                return self.wait(watch, booting, pool)
        pending = {n.id: n for n in watch}
        booting = set(booting)
        checking = {}

        polled = None               # clock() of the last server list
        interval = self.config.launch_poll_interval
        early = False               # the last pause was ended by a check or boot, not by time

        def pause(seconds):         # a finished check or boot ends the pause early
            nonlocal early
            busy = list(checking) + list(booting)
            early = False
            if not busy:
                self.sleep(seconds)
                return
            if pending and polled is not None:      # the next list stays on the cadence
                seconds = max(0.0, min(seconds, polled + interval - self.clock()))
            done, _ = concurrent.futures.wait(busy, timeout=seconds,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            early = bool(done) and polled is not None and self.clock() - polled < interval

        def progress(waited):
            log.info('%s: waiting for %d node(s) to boot and %d to pass SSH checks, %.0f s so far',
                     self.provider.name, len(pending) + len(booting), len(checking), waited)

        try:
            for _ in wait.iterate(self.deadline, interval, '%s: nodes' % self.provider.name,
                                  clock=self.clock, sleep=pause, progress=progress):
                for future in [f for f in checking if f.done()]:
                    checking.pop(future)
                    future.result()             # a bug in a check is not swallowed
                for future in [f for f in booting if f.done()]:
                    booting.discard(future)
                    node = future.result()
                    if node is not None:
                        pending[node.id] = node
                if not (pending or checking or booting):
                    break
                if not self.lease.ok():
                    log.warning('%s: %s lost; no longer polling: %d node(s) are left '
                                'building for the run that holds it now', self.provider.name,
                                self.lease.name, len(pending) + len(booting) + len(checking))
                    break
                if not pending or early:    # woken by a check or a boot: not time to list
                    continue
                polled = self.clock()
                try:
                    servers = {s.id: s for s in self.adapter.list_servers()}
                except GateError as e:
                    log.warning('%s: cannot list servers (%s); will try again',
                                self.provider.name, e)
                    continue
                active = []
                for node in list(pending.values()):
                    ip = self._poll_one(node, servers.get(node.external_id), pending)
                    if ip is not None:
                        active.append(dataclasses.replace(node, ip=ip))
                if active:
                    self._record_addresses(active)
                    for node in active:
                        checking[pool.submit(self._check_and_finish, node)] = node
        except wait.Timeout:
            pass
        for future in list(checking):
            future.result()
        booted_late = [f.result() for f in list(booting)]   # the next run waits for these
        left = ([n for n in pending.values()] + [n for n in booted_late if n is not None]
                + [n for n in checking.values() if self._state(n) == 'building'])
        if left and self.lease.ok():
            log.info('%s: run deadline reached after %.0f s; %d node(s) still building are left '
                     'for the next run', self.provider.name, self.clock() - self.started, len(left))

    def _record_addresses(self, nodes):
        """The addresses of the nodes one poll found ACTIVE, in one transaction."""
        def tx(s):
            for node in nodes:
                s.update_node(node.id, ip=node.ip)
        self.db.transact(tx)

    def _check_and_finish(self, node):
        check = self.check_node(node, node.ip)
        if check.outcome == 'ready' and node.id in self.canaries:
            check = self.watch_canary(node, check)
        self._checked(node, check)

    def watch_canary(self, node, check):
        """A quarantined provider's canary: it must keep answering SSH for
        canary-watch seconds; then the quarantine ends, else it is probed again
        after another cool-down."""
        watch = self.config.canary_watch
        log.info('%s: canary of the quarantined %s %s: watching it for %g s',
                 describe(node), self.provider.name, node.label, watch)
        ok, why = True, None
        started = time.monotonic()
        try:
            client = ssh.connect(node.ip, self.provider.ssh_port, node.username, self.pkey,
                                 self.config.ssh_connect_timeout, host_key=check.host_key)
            try:
                client.get_transport().set_keepalive(max(1, int(watch // 10) or 1))
                status, output = ssh.run(client, 'sleep %s && echo canary-alive' % int(watch),
                                         watch + self.config.ssh_connect_timeout)
            finally:
                client.close()
            ok = status == 0 and 'canary-alive' in output
            if not ok:      # -1: the session was cut (paramiko's "no exit status")
                why = ('it stopped answering (its SSH session was cut after %.0f s)'
                       % (time.monotonic() - started) if status == -1
                       else 'its watch ended with exit %s' % status)
        except Exception as e:  # the node died under the watch: what a canary is for
            ok, why = False, 'it stopped answering (%s)' % type(e).__name__
        now = time.time()

        def tx(s):
            (q,) = s.quarantines(self.provider.name, node.label) or (None,)
            if q is None:
                return None
            if ok:
                s.release_quarantine(self.provider.name, node.label)
            else:
                s.probe_failed(q, now + self.config.quarantine_cooldown_minutes * 60)
            return q
        q = self.db.transact(tx)
        if ok:
            if q is not None:
                log.warning('%s %s: the canary %s stayed up for %g s: quarantine ended (it '
                            'began %s: %s)', self.provider.name, node.label, node.name, watch,
                            console.utc(q.since), q.reason)
            return check
        log.warning('%s %s: the canary %s failed: %s; still quarantined, probed again in %g '
                    'min', self.provider.name, node.label, node.name, why,
                    self.config.quarantine_cooldown_minutes)
        return Check('failed', 'canary', 'canary of a quarantined provider: %s' % why)

    def _state(self, node):
        row = self.db.transact(lambda s: s.get_node(node.id))
        return row.state if row else None

    def _poll_one(self, node, server, pending):
        """Act on one watched node's server as listed: its address when it is active
        and reachable (for an SSH check), else None."""
        age = time.time() - node.created
        state = server.state if server is not None else 'gone'
        if state == 'gone':
            del pending[node.id]
            self.fail(node, 'vanished', 'server %s is gone from the server list' % node.external_id)
        elif state == 'error':
            del pending[node.id]
            self.fail(node, 'error', 'server went to ERROR: %s' % (server.fault or 'no fault given'))
        elif state == 'active':
            ip = server.address
            if ip is None:
                if age > self.provider.boot_timeout:
                    del pending[node.id]
                    self.fail(node, 'no-address', 'active but no address to reach it by after '
                              '%.0f s' % age)
                return
            del pending[node.id]
            log.info('%s: ACTIVE at %s after %.0f s; waiting for SSH', describe(node), ip, age)
            return ip
        elif age > self.provider.boot_timeout:
            del pending[node.id]
            self.fail(node, 'timeout', 'still %s after boot-timeout %.0f s'
                      % (server.detail or state, self.provider.boot_timeout))

    def _checked(self, node, check):
        if check.outcome == 'ready':
            if self._finish(node, self.ready_state, ip=node.ip, host_key=check.host_key,
                            claimed_by=self.claimed_by):
                self._bump(node.label, 'became_ready')
        elif check.outcome == 'failed':
            self.fail(node, check.reason, check.message)

    # -- the run ----------------------------------------------------------
    def run(self):
        self.lease.check()
        servers = self.adapter.list_servers()
        rows = self._nodes()
        watch = self.resume(rows, servers)
        rows = self._nodes()
        self.lease.check()          # the plan's counts are ours only while we hold it
        boots = self.plan(rows, servers)
        if boots:
            for label in {label for label, _ in boots}:
                image = self.provider.image(label)
                try:
                    self.adapter.flavor_for(image.min_ram)
                except cloud.NoFlavor as e:
                    raise cloud.NoFlavor('%s (label %s)' % (e, label))
        # Creates and SSH checks have workers of their own: a check waits for its node
        # to answer SSH (on a real cloud seconds to minutes after ACTIVE), and eight
        # shared workers made the nodes of a big fill wait for each other's sshd.  The
        # polls start while nodes boot.
        with concurrent.futures.ThreadPoolExecutor(self.config.launch_workers) as boot_pool, \
                concurrent.futures.ThreadPoolExecutor(self.config.launch_check_workers) as pool:
            booting = [boot_pool.submit(self.boot, label, row) for label, row in boots]
            self.wait(watch, booting, pool)
        counts = collections.Counter((n.label, n.state) for n in self._nodes())
        metrics.node_gauges(metrics.get(), self.provider.name,
                            [i.name for i in self.provider.images], counts)
        for label, s in self.summary.labels.items():
            s.ready, s.building = counts[(label, 'ready')], counts[(label, 'building')]
            log.info('%s %s', self.provider.name, s.line(label))
        self.lease.check()
        return self.summary


def run(config, provider_name, db=None, adapter=None):
    """One launch run for one provider, holding its launch lease; returns its Summary
    (LeaseHeld if another run held the lease throughout lease-wait)."""
    provider = config.provider(provider_name)
    db = db or vmdatabase.Database.from_config(config).upgrade()
    pkey, _ = ssh.ensure_private_key(config.ssh_private_key)
    with leasemod.held(config, db, provider.name, leasemod.LAUNCH, 'launch') as lease:
        adapter = adapter or cloud.connect(provider, db=db)
        return Launcher(config, provider, db, adapter, pkey, lease=lease).run()

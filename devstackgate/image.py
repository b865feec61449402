"""Image builds: a cached snapshot per provider and label, promoted only after a canary passes.

One build (what the nightly Jenkins matrix runs per provider):

1. find the base image (newest match of base-image, never a hard-coded id) and
   the smallest flavor with min-ram;
2. record an image row (building) and boot a template with a fresh keypair,
   recording the server id before waiting on it; ERROR is seen at once;
3. copy the devstack checkout and the setup scripts over, run each script with
   its output streamed to the console, then sync the disks;
4. snapshot with a unique name (PREFIX-LABEL-PROVIDER-TIMESTAMP), record the
   image id at once, wait for it to be active, delete the template;
5. boot a canary node from it through the pool's own launch code (same ready
   check) plus the label's optional validate command; only then is the row
   marked ready, which makes it the current image;
6. retention (:func:`retention`, the reaper's rule too): keep the newest
   keep-images non-demoted ready images; older and demoted ones are deleted
   now that the new one is active.

Whatever fails or is interrupted, the row goes to delete with the reason, the
previous current image stays current, and the cloud resources are deleted now
or by the next reap (they carry our metadata).

Leases (devstackgate.lease): the build of a label holds that label's image
lease (a second build of it waits or skips); the template and the canary are
counted and booted under the provider's launch lease, taken just for that, so
no launch run counts the provider's servers without them and then boots past
max-servers.  A build whose lease is lost fails at its next step (lease-lost).
"""

import collections
import contextlib
import datetime
import logging
import os
import re
import shlex
import time

import paramiko

import vmdatabase
from devstackgate import cells, cloud, launch, lease as leasemod, metrics, ssh, wait
from devstackgate.errors import GateError, UsageError

log = logging.getLogger('image')

NODE_SETUP_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'node-setup')
REMOTE_SETUP_DIR = '.devstack-gate-setup'
REMOTE_NODE_SETUP_DIR = 'node-setup'    # the project's node-setup/, copied whole (helpers beside scripts)
REMOTE_DEVSTACK_DIR = 'devstack'
SYNC_TIMEOUT = 300


class Backoff:
    """The pauses of one wait of an image build: image-poll-fraction of the time
    waited so far, at least image-poll-min, and at most what the wait asks for
    (poll-interval, or what is left before its deadline).

    A build waits for things that take seconds on a fast cloud and minutes on a
    slow one; a fixed poll-interval overshoots a 3 s boot by up to 5 s, while a
    pause proportional to the wait so far overshoots any of them by at most
    that fraction, and polls a long wait no more often than poll-interval.
    """

    def __init__(self, config, clock=time.monotonic, sleep=time.sleep):
        self.fraction = config.image_poll_fraction
        self.minimum = config.image_poll_min
        self.clock = clock
        self._sleep = sleep
        self.started = clock()

    def pause(self, seconds):
        return min(seconds, max(self.minimum, self.fraction * (self.clock() - self.started)))

    def __call__(self, seconds):
        self._sleep(self.pause(seconds))


class BuildFailed(GateError):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def image_name(config, label, provider, when=None, image_id=None):
    """The name of a built image; {id} is its row id (`ID` before there is a row)."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    return config.image_name_format.format(prefix=config.node_prefix, label=label,
                                           provider=provider,
                                           timestamp=when.strftime('%Y%m%dT%H%M%SZ'),
                                           id='ID' if image_id is None else image_id)


def create_image_row(db, config, provider, label):
    """A new image row in state building, named with its own id: two builds of one label
    in the same second still get two names."""
    def create(s):
        row = s.create_image(provider, label)
        s.update_image(row.id, name=image_name(config, label, provider, image_id=row.id))
        return s.get_image(row.id)
    return db.transact(create)


def build_keypair_name(prefix, label, provider, image_row_id):
    """Nova refuses a '.' in a keypair name (label 12.04, provider rax.dfw): it becomes '-'."""
    return _keypair_safe('%s-build-%s-%s-%d' % (prefix, label, provider, image_row_id))


def _keypair_safe(text):
    return re.sub(r'[^A-Za-z0-9_-]', '-', text)


def build_keypair_row(prefix, provider, name):
    """The image row id a build keypair belongs to, or None if the name is not one of ours."""
    match = re.fullmatch(r'%s-build-.+-%s-(\d+)' % (re.escape(_keypair_safe(prefix)),
                                                   re.escape(_keypair_safe(provider))),
                         name)
    return int(match.group(1)) if match else None


def retention(images, keep):
    """The one retention rule, of the builder and the reaper alike.

    {row id: reason} for the ready rows to delete: demoted ones ('demoted'),
    and non-demoted ones older than the newest `keep` non-demoted ready rows
    of their provider and label ('beyond-retention').  So the current image
    and the previous one always stay.
    """
    by_label = collections.defaultdict(list)
    for row in images:
        if row.state == 'ready':
            by_label[(row.provider, row.label)].append(row)
    doomed = {}
    for rows in by_label.values():
        rows.sort(key=lambda r: (r.created, r.id), reverse=True)
        kept = [r.id for r in rows if not r.demoted][:keep]
        for r in rows:
            if r.id not in kept:
                doomed[r.id] = 'demoted' if r.demoted else 'beyond-retention'
    return doomed


def resolve_setup(config, entry):
    """(local script path, args) for one `setup:` entry.

    A relative script path is looked up beside the configuration file, then in
    the project's node-setup/ directory.
    """
    words = shlex.split(entry)
    script, args = words[0], words[1:]
    if os.path.isabs(script):
        candidates = [script]
    else:
        candidates = [os.path.join(os.path.dirname(os.path.abspath(config.path)), script),
                      os.path.join(NODE_SETUP_DIR, script)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate, args
    raise UsageError('setup script %r not found (looked in %s)'
                     % (script, ', '.join(os.path.dirname(c) for c in candidates)))


class Builder:
    def __init__(self, config, provider, db, adapter, pool_key, devstack_dir=None,
                 clock=time.monotonic, sleep=time.sleep):
        self.config = config
        self.provider = provider
        self.db = db
        self.adapter = adapter
        self.pool_key = pool_key
        self.devstack_dir = devstack_dir
        self.clock = clock
        self.sleep = sleep
        self.lease = leasemod.UNLEASED      # the label's image lease, while a build holds it

    def _tag(self, label):
        return '%s %s' % (self.provider.name, label)

    # -- the steps --------------------------------------------------------
    def choose(self, label):
        image = self.provider.image(label)
        base = cloud.newest_image(self.adapter.list_images(), image.base_image)
        if base is None:
            raise BuildFailed('no-base-image', 'no active image matches base-image %r'
                              % image.base_image)
        try:
            flavor = self.adapter.flavor_for(image.min_ram)
        except cloud.NoFlavor as e:
            raise BuildFailed(e.reason, str(e))
        return image, base, flavor

    def dry_run(self, label):
        image, base, flavor = self.choose(label)
        setup = [resolve_setup(self.config, e) for e in image.setup]
        tag = self._tag(label)
        print('%s: would boot a template from %s (%s) on flavor %s'
              % (tag, base.name, base.id, flavor.name))
        if self.devstack_dir:
            print('%s: would copy %s to ~/%s' % (tag, self.devstack_dir, REMOTE_DEVSTACK_DIR))
        for path, args in setup:
            print('%s: would run %s' % (tag, ' '.join(shlex.quote(w) for w in [path] + args)))
        print('%s: would snapshot it as %s, check a canary node, then promote it'
              % (tag, image_name(self.config, label, self.provider.name)))

    def build(self, label, lease=None):
        """Build, check and promote one image; raises BuildFailed.  Returns the row.
        lease: the label's image lease the build holds (checked between its steps).

        Sends dg.image.<provider>.<label>.duration and .ready or .failed.<reason>."""
        stats = metrics.get()
        started = self.clock()
        outcome = ('failed', 'interrupted')
        self.lease = lease or leasemod.UNLEASED
        try:
            row = self._build(label)
            outcome = ('ready',)
            return row
        except Exception as e:
            outcome = ('failed', getattr(e, 'reason', None) or 'error')
            raise
        finally:
            self.lease = leasemod.UNLEASED
            stats.timing(metrics.key('image', self.provider.name, label, 'duration'),
                         (self.clock() - started) * 1000)
            stats.incr(metrics.key('image', self.provider.name, label, *outcome))

    def launch_lease(self):
        """The provider's launch lease, held while a build counts the provider's
        servers and boots one more (a no-op for a build holding no lease itself)."""
        if self.lease is leasemod.UNLEASED:
            return contextlib.nullcontext()
        return leasemod.held(self.config, self.db, self.provider.name, leasemod.LAUNCH,
                             'update-image', wait=leasemod.launch_hold_bound(self.config))

    def _build(self, label):
        tag = self._tag(label)
        self.lease.check()
        image, base, flavor = self.choose(label)
        setup = [resolve_setup(self.config, e) for e in image.setup]
        row = create_image_row(self.db, self.config, self.provider.name, label)
        log.info('%s: building image %s (row %d) from %s on flavor %s',
                 tag, row.name, row.id, base.name, flavor.name)
        key = paramiko.RSAKey.generate(2048)
        keypair = build_keypair_name(self.config.node_prefix, label, self.provider.name, row.id)
        template_id = None
        try:
            self.adapter.ensure_keypair(keypair, ssh.public_line(key))
            with self.launch_lease():           # the count and the boot, as one
                self.lease.check()
                self.make_room(tag, 'the template')
                template_id = self.adapter.create_server(
                    '%s-template-%s-%s-%d' % (self.config.node_prefix, label,
                                              self.provider.name, row.id),
                    base.id, flavor.id, keypair,
                    cloud.tags(self.provider.name, 'template', label, image_id=row.id))
                self.db.transact(lambda s: s.update_image(row.id,
                                                          server_external_id=template_id))
            client = self.wait_for_template(tag, template_id, image, key)
            try:
                self.prepare(tag, client, setup)
            finally:
                client.close()
            self.lease.check()
            snapshot_id = self.adapter.create_image(
                template_id, row.name, cloud.tags(self.provider.name, 'image', label,
                                                  image_id=row.id))
            self.db.transact(lambda s: s.update_image(row.id, external_id=snapshot_id))
            log.info('%s: snapshotting as %s (%s)', tag, row.name, snapshot_id)
            self.wait_for_snapshot(tag, snapshot_id)
            self.adapter.delete_quietly('server', template_id, tag + ': template')
            template_id = None
            self.lease.check()
            self.canary(tag, label, self.db.transact(lambda s: s.get_image(row.id)))
        except BaseException as e:
            reason = getattr(e, 'reason', None) or (
                'interrupted' if isinstance(e, (KeyboardInterrupt, SystemExit)) else 'error')
            log.error('%s: build of %s failed (%s): %s; the current image stays current',
                      tag, row.name, reason, e)
            self._abandon(tag, row, template_id, reason)
            if isinstance(e, GateError) and not isinstance(e, BuildFailed):
                raise BuildFailed(reason, str(e))
            raise
        finally:
            self.adapter.delete_quietly('keypair', keypair, tag)
        if not self.db.transact(lambda s: s.transition(row, 'ready')):
            raise BuildFailed('changed-under-us', 'image row %d was changed by another run; '
                              'not promoting %s' % (row.id, row.name))
        log.info('%s: %s is now the current image', tag, row.name)
        self.retire_old(label)
        return self.db.transact(lambda s: s.get_image(row.id))

    def wait_for_template(self, tag, server_id, image, key):
        deadline = self.clock() + self.provider.boot_timeout
        started = self.clock()
        backoff = Backoff(self.config, clock=self.clock, sleep=self.sleep)
        try:
            server = wait.for_state(lambda: self.adapter.get_server(server_id), 'active',
                                    deadline, self.config.poll_interval,
                                    '%s: template %s' % (tag, server_id),
                                    failed=('error', 'gone'), ready=lambda s: s.address,
                                    clock=self.clock, sleep=backoff)
        except wait.Failure as e:
            raise BuildFailed('template-error', 'template went to %s: %s' % (
                e.last.detail or e.last.state, e.last.fault or 'no fault given'))
        except wait.Timeout as e:
            raise BuildFailed('template-timeout', 'template still %s after %.0f s' % (
                e.last.detail or e.last.state if e.last else 'unseen', self.provider.boot_timeout))
        log.info('%s: template ACTIVE at %s after %.0f s; waiting for SSH',
                 tag, server.address, self.clock() - started)
        return ssh.wait_for_ssh(server.address, self.provider.ssh_port, image.username, key,
                                deadline, self.config.ssh_connect_timeout,
                                interval=self.config.poll_interval, describe=tag + ': ',
                                clock=self.clock, sleep=backoff)

    def prepare(self, tag, client, setup):
        deadline = self.clock() + self.config.image_build_timeout
        if self.devstack_dir:
            log.info('%s: copying %s to ~/%s', tag, self.devstack_dir, REMOTE_DEVSTACK_DIR)
            ssh.put_tree(client, self.devstack_dir, REMOTE_DEVSTACK_DIR,
                         timeout=max(1.0, deadline - self.clock()))
        if any(os.path.dirname(path) == NODE_SETUP_DIR for path, _ in setup):
            ssh.put_tree(client, NODE_SETUP_DIR, REMOTE_NODE_SETUP_DIR,
                         timeout=max(1.0, deadline - self.clock()))
        for path, args in setup:
            name = os.path.basename(path)
            if os.path.dirname(path) == NODE_SETUP_DIR:
                remote = '%s/%s' % (REMOTE_NODE_SETUP_DIR, name)
            else:
                remote = '%s/%s' % (REMOTE_SETUP_DIR, name)
                ssh.put_file(client, path, remote)
            command = ' '.join(shlex.quote(w) for w in ['bash', remote] + args)
            step_started = self.clock()
            log.info('%s: running %s', tag, ' '.join([name] + args))
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise BuildFailed('setup-timeout', 'setup took longer than image-build-timeout')

            def stream(line, name=name, step_started=step_started):
                log.info('%s: %s [%4.0f s] %s', tag, name, self.clock() - step_started, line)
            try:
                status, _ = ssh.run(client, command, remaining, on_line=stream)
            except ssh.CommandTimeout:
                raise BuildFailed('setup-timeout', '%s did not finish within '
                                  'image-build-timeout %g s' % (name, self.config.image_build_timeout))
            if status != 0:
                raise BuildFailed('setup-failed', '%s exited %d' % (name, status))
            log.info('%s: %s done in %.0f s', tag, name, self.clock() - step_started)
        status, output = ssh.run(client, 'sync', SYNC_TIMEOUT)
        if status != 0:
            raise BuildFailed('setup-failed', 'sync exited %d: %s' % (status, output.strip()))

    def wait_for_snapshot(self, tag, snapshot_id):
        started = self.clock()
        try:
            wait.for_state(lambda: self.adapter.get_image(snapshot_id), 'active',
                           started + self.config.snapshot_timeout, self.config.poll_interval,
                           '%s: snapshot %s' % (tag, snapshot_id), failed=('failed', 'gone'),
                           clock=self.clock,
                           sleep=Backoff(self.config, clock=self.clock, sleep=self.sleep))
        except wait.Failure as e:
            raise BuildFailed('snapshot-failed', 'snapshot %s ended %s'
                              % (snapshot_id, e.last.detail or e.last.state))
        except wait.Timeout as e:
            raise BuildFailed('snapshot-timeout', 'snapshot still %s after %.0f s' % (
                e.last.detail or e.last.state if e.last else 'unseen',
                self.config.snapshot_timeout))
        log.info('%s: snapshot active after %.0f s', tag, self.clock() - started)

    def make_room(self, tag, what):
        """Keep the build within max-servers: when the provider is full, retire its
        oldest ready node (the pool refills it on the next launch run) so that the
        template or the canary has a server slot; with none ready, fail the build
        (the current image stays current)."""
        rows = self.db.transact(lambda s: s.nodes(provider=self.provider.name))
        held, _ = launch.servers_held(self.provider.name, rows, self.adapter.list_servers())
        if held < self.provider.max_servers:
            return
        for node in sorted((n for n in rows if n.state == 'ready'),
                           key=lambda n: (n.state_time, n.id)):
            # Compare-and-set: a gate job may be claiming this very node.
            if self.db.transact(lambda s: s.transition(node, 'delete',
                                                       fail_reason='room-for-build')):
                log.info('%s: %d servers of max-servers %d; retired ready node %s to make '
                         'room for %s', tag, held, self.provider.max_servers, node.name, what)
                if node.external_id:
                    self.adapter.delete_quietly('server', node.external_id,
                                                '%s: %s' % (tag, node.name))
                    # Its slot is free once the cloud no longer lists it.
                    for _ in wait.iterate(self.clock() + self.provider.boot_timeout,
                                          self.config.launch_poll_interval,
                                          '%s: %s to go' % (tag, node.name),
                                          clock=self.clock, sleep=self.sleep):
                        if all(srv.id != node.external_id
                               for srv in self.adapter.list_servers()):
                            break
                return
        raise BuildFailed('no-capacity', '%d servers of max-servers %d and none ready to make '
                          'room for %s' % (held, self.provider.max_servers, what))

    def canary(self, tag, label, row):
        """Boot one node from the new image through the pool's own launch path."""
        # The launch code's own polls (server list, SSH), paced like the build's.
        launcher = launch.Launcher(self.config, self.provider, self.db, self.adapter,
                                   self.pool_key, clock=self.clock,
                                   sleep=Backoff(self.config, clock=self.clock, sleep=self.sleep),
                                   ready_state='used', claimed_by='canary of image %s' % row.name,
                                   lease=self.lease)
        with self.launch_lease():               # the count and the boot, as one
            self.make_room(tag, 'the canary')
            log.info('%s: booting a canary node from %s', tag, row.name)
            node = launcher.boot(label, row)
        self.lease.check()
        if node is None:
            raise BuildFailed('canary-failed', 'the canary node could not be booted')
        launcher.wait([node])
        checked = self.db.transact(lambda s: s.get_node(node.id))
        try:
            if checked.state != 'used':
                raise BuildFailed('canary-failed', 'canary node %s did not become ready (%s)'
                                  % (checked.name, checked.fail_reason or checked.state))
            validate = self.provider.image(label).validate
            if validate:
                self._validate(tag, checked, validate)
            log.info('%s: canary node %s passed', tag, checked.name)
        finally:
            # The canary has done its job (and may have been changed by validate).
            if checked.state != 'delete':
                self.adapter.delete_quietly('server', checked.external_id,
                                            '%s: canary %s' % (tag, checked.name))
                self.db.transact(lambda s: s.transition(checked, 'delete', fail_reason='canary'))

    def _validate(self, tag, node, command):
        client = ssh.connect(node.ip, self.provider.ssh_port, node.username, self.pool_key,
                             self.config.ssh_connect_timeout, host_key=node.host_key)
        try:
            log.info('%s: validating on canary %s: %s', tag, node.name, command)
            status, output = ssh.run(client, command, self.config.ready_check_timeout,
                                     on_line=lambda line: log.info('%s: validate | %s', tag, line))
        finally:
            client.close()
        if status != 0:
            raise BuildFailed('canary-failed', 'validate command exited %d on canary %s'
                              % (status, node.name))

    # -- cleanup ----------------------------------------------------------
    def _abandon(self, tag, row, template_id, reason):
        """Mark a failed build; delete what it made, best effort (the reaper finishes)."""
        try:
            self.db.transact(lambda s: s.transition(row, 'delete', fail_reason=reason))
        except GateError as e:
            log.error('%s: could not mark image row %d: %s', tag, row.id, e)
        if template_id:
            self.adapter.delete_quietly('server', template_id, tag + ': template')
        current = self.db.transact(lambda s: s.get_image(row.id))
        if current is not None and current.external_id:
            self.adapter.delete_quietly('image', current.external_id, tag)

    def retire_old(self, label):
        """Apply the retention rule to this label's ready images now that a new one is current."""
        ready = self.db.transact(lambda s: s.images(
            provider=self.provider.name, label=label, state='ready'))
        doomed = retention(ready, self.config.keep_images)
        for old in ready:
            reason = doomed.get(old.id)
            if reason is None:
                continue
            log.info('%s: deleting image %s: %s (keep %d)',
                     self._tag(label), old.name, reason, self.config.keep_images)
            if self.db.transact(lambda s: s.transition(old, 'delete', fail_reason=reason)) \
                    and old.external_id:
                self.adapter.delete_quietly('image', old.external_id, self._tag(label))


def labels_to_build(provider, label=None):
    if label is not None:
        if provider.image(label) is None:
            raise UsageError('provider %s has no label %r; its labels: %s'
                             % (provider.name, label, ', '.join(i.name for i in provider.images)))
        return [provider.image(label)]
    return list(provider.images)


def run(config, provider_name, label=None, dry_run=False, devstack_dir=None, db=None,
        adapter=None):
    """Build every label of a provider (or one); returns {label: row or reason}, the
    reason a BuildFailed, or a LeaseHeld when another run holds the label's lease.

    A dry run reads the cloud (base images, flavors) and prints the plan; it
    opens no database, makes no key and creates nothing.
    """
    provider = config.provider(provider_name)
    images = labels_to_build(provider, label)
    for image in images:          # a missing script is bad input: nothing is touched
        for entry in image.setup:
            resolve_setup(config, entry)
    adapter = adapter or cloud.connect(provider)
    if not adapter.builds_images:
        log.info('%s: a %s provider builds no images: its nodes reset to their own pristine '
                 'root; nothing to do', provider.name, provider.kind)
        return {image.name: 'not-built' for image in images}
    if dry_run:
        builder = Builder(config, provider, None, adapter, None, devstack_dir=devstack_dir)
    else:
        db = db or vmdatabase.Database.from_config(config).upgrade()
        pool_key, _ = ssh.ensure_private_key(config.ssh_private_key)
        builder = Builder(config, provider, db, adapter, pool_key, devstack_dir=devstack_dir)
    # A dry run knows only the configuration's switches: it opens no database.
    disabled = cells.disabled(config, None if dry_run else db)
    pauses = cells.paused(config, provider, None if dry_run else db)
    outcome = {}
    for image in images:
        if image.name in disabled:
            log.info('%s %s: %s; not building', provider.name, image.name, disabled[image.name])
            outcome[image.name] = 'disabled'
            continue
        if image.name in pauses:
            log.info('%s %s: %s; not building', provider.name, image.name, pauses[image.name])
            outcome[image.name] = 'paused'
            continue
        if dry_run:
            builder.dry_run(image.name)
            outcome[image.name] = 'dry-run'
            continue
        try:
            with leasemod.held(config, db, provider.name, leasemod.image_scope(image.name),
                               'update-image') as lease:
                outcome[image.name] = builder.build(image.name, lease=lease)
        except (BuildFailed, leasemod.LeaseHeld) as e:
            outcome[image.name] = e     # LeaseHeld: another run is building this label
    return outcome


def demote(db, provider, label):
    """Demote the current image of provider+label; the previous ready one becomes current.

    Returns (demoted row, new current row or None).  A demoted image is never
    promoted again; ready nodes booted from it are replaced by the reaper and
    the next launch.
    """
    def do(s):
        current = s.current_image(provider, label)
        if current is None:
            raise GateError('provider %s label %s has no current image to demote'
                            % (provider, label))
        s.update_image(current.id, demoted=1)
        return current, s.current_image(provider, label)
    return db.transact(do)

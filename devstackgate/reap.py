"""Reap: delete what one provider no longer needs, and what we lost track of.

One run (what Jenkins starts hourly, one matrix cell per provider):

1. list the provider's servers and images once (before reading the database,
   so every server of ours in the list already has its row: launch and the
   image builder write the row first);
2. read the provider's node and image rows, and note untracked resources of
   ours (``dg-provider`` is this provider, but no row) as leak sightings;
3. plan, as a pure function of what was read (:func:`plan`), one step per
   resource with a short stable reason (:data:`REASONS`);
4. apply it: mark rows ``delete`` (only if the row did not change since it was
   read), ask the cloud to delete, and remove rows whose resources are gone.

Deletion is two-phase because delete APIs lie: a row stays in ``delete`` until
a run whose list was taken after the row entered ``delete`` no longer shows
its server (and, for an image row, its glance image and its template).  A
delete the cloud refuses is logged and asked again on the next run; the row is
never forgotten.  A server or image that carries our metadata but has no row
is deleted only once it has been seen on two runs in a row and is older than
``leak-grace``, so a server a concurrent launch booted a second ago is never
touched.  A node row's server is ours by the row (launch records it); anything
else is deleted only if it carries ``dg-provider`` set to this provider,
whatever its name.  So an image row may point at a glance image we did not
make (a base image recorded by hand): its row goes, the image stays.

Rows are changed only if they are still exactly as read (a gate job may claim
a ready node while the reaper runs): see :meth:`Reaper._compare_and_set`.
A dry run reads the same lists and rows and prints the same lines, prefixed
"would delete", and writes nothing to the cloud or the database.

A run holds the provider's reap lease (devstackgate.lease), so two reaps never
count one leak sighting twice or ask for the same deletes together; a dry run
takes none (it writes nothing).  A reap may run beside a launch: see above.  A
run whose lease is lost starts no more deletes, and exits 1 after its table.

Reasons per resource:

===================  ==========================================================
delete               a node row already in delete (launch or build failures,
                     earlier reap runs, canaries); an image row in delete
                     without a reason of ours
error                a node row in error
used-too-long        used longer than max-used-hours: its job died
hold-expired         held past hold_until (or hold-hours after it was held)
build-timeout        building longer than the provider's boot-timeout +
                     ready-check-timeout (launch may still be checking it)
image-not-current    ready, booted from an image that is no longer current
                     (kept while there is no current image at all, and for a
                     canary of an image still being built)
ready-too-old        ready longer than max-ready-hours after it was created
surplus              ready beyond a demand-sized label's target (devstackgate.sizing),
                     oldest first; never below min-ready, never a claimed node
failed-build         an image row a build marked delete, and extra snapshots
                     of a ready image's build
interrupted-build    an image row building longer than a build can take:
                     image-build-timeout + snapshot-timeout + boot-timeout +
                     launch-deadline (the canary) + ready-check-timeout
beyond-retention     a ready image older than the newest keep-images
                     non-demoted ready images (current and previous are kept)
demoted              a ready image an operator demoted
deleted-by-operator  an image row an operator deleted (``devstack-gate
                     image-delete``): the previous ready image is current
image-vanished       a ready image row whose glance image is gone from the cloud
                     (launch could not boot from it)
template-done        the template server of an image no longer building
snapshot-expired     a snapshot of a held node (``devstack-gate snapshot``,
                     ``dg-kind`` held-snapshot, no row) older than
                     snapshot-keep-hours; never counted as a leak before
leaked               an untracked server or image of ours, seen twice, past
                     the grace period
leaked-keypair       the fresh keypair of an image build that is no longer
                     building (a build that crashed before deleting it)
===================  ==========================================================
"""

import collections
import concurrent.futures
import dataclasses
import datetime
import logging
import sys
import time

import vmdatabase
from devstackgate import cloud, image, lease as leasemod, sizing
from devstackgate.errors import DatabaseError, GateError

log = logging.getLogger('reap')

REASONS = ('delete', 'error', 'used-too-long', 'hold-expired', 'build-timeout',
           'image-not-current', 'ready-too-old', 'surplus', 'failed-build', 'interrupted-build',
           'beyond-retention', 'demoted', 'deleted-by-operator', 'image-vanished',
           'template-done', 'snapshot-expired', 'leaked', 'leaked-keypair')
# An image row marked delete by the reaper or the builder carries one of
# these as its fail_reason; later runs count it under the same reason.
IMAGE_ROW_REASONS = ('interrupted-build', 'beyond-retention', 'demoted', 'deleted-by-operator',
                     'image-vanished')
REASON_WIDTH = max(len(r) for r in REASONS + ('changed-under-us',))

HOUR = 3600.0

#: The dg-kind of a snapshot an operator made of a held node for a developer
#: (devstack-gate snapshot).  It has no row: the reaper keeps it for
#: snapshot-keep-hours after its creation (the cloud's time, else
#: META_SNAPSHOT_TIME, epoch seconds), then deletes it.
KIND_HELD_SNAPSHOT = 'held-snapshot'
META_SNAPSHOT_TIME = 'dg-snapshot-time'


def parse_time(text):
    """Epoch seconds of a nova/glance timestamp ("2013-09-03T04:01:32Z"); None if unreadable."""
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(str(text).strip().replace('Z', '+00:00'))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


@dataclasses.dataclass(frozen=True)
class Step:
    """One line of a reap: one cloud resource to delete, or one row to settle.

    ``server_id``/``image_id``: what to ask the cloud to delete (neither: no
    cloud call).  ``row``: the node or image row the step belongs to; if the
    row's update fails because it changed under us, the step is skipped.
    ``remove``: the row's resources are gone from the cloud; remove it.
    """
    kind: str                   # node, template, server (leaked), image
    name: str
    id: str                     # the cloud id, or "row N" when there is none
    reason: str
    server_id: str = None
    image_id: str = None
    keypair: str = None
    row: object = None
    remove: bool = False
    note: str = ''

    def text(self):
        line = '%s %s (%s): %s' % (self.kind, self.name, self.id, self.reason)
        return line + ('; ' + self.note if self.note else '')


@dataclasses.dataclass
class Plan:
    updates: list = dataclasses.field(default_factory=list)    # (row, {fields}) before any step
    steps: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)      # log lines: kept, and why


@dataclasses.dataclass
class Summary:
    provider: str
    dry_run: bool = False
    deleted: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: int = 0
    nodes: dict = dataclasses.field(default_factory=dict)     # state -> rows remaining
    images: dict = dataclasses.field(default_factory=dict)

    def table(self):
        """Aligned lines: deleted (or would delete) per reason, failed, rows left per state."""
        verb = 'would delete' if self.dry_run else 'deleted'
        rows = [(verb, reason, self.deleted[reason]) for reason in REASONS
                if self.deleted[reason]] or [(verb, 'nothing', 0)]
        rows += [('failed', reason, self.failed[reason]) for reason in REASONS
                 if self.failed[reason]]
        if self.skipped:
            rows.append(('skipped', 'changed-under-us', self.skipped))
        for what, counts, states in (('nodes', self.nodes, vmdatabase.NODE_STATES),
                                     ('images', self.images, vmdatabase.IMAGE_STATES)):
            rows += [(what, state, counts[state]) for state in states if counts.get(state)] or [
                (what, 'none', 0)]
        head = 'reap %s%s: what this run %s, and the rows that remain' % (
            self.provider, ' (dry run)' if self.dry_run else '',
            'would delete' if self.dry_run else 'deleted')
        return [head] + ['  %-12s  %-*s  %5d' % (what, REASON_WIDTH, reason, n)
                         for what, reason, n in rows]


# -- what belongs to whom -----------------------------------------------------------

def is_ours(resource, provider_name):
    return resource.metadata.get(cloud.META_PROVIDER) == provider_name


def untracked(provider_name, nodes, images, servers, cloud_images):
    """Servers and images of ours that no row accounts for: {id: name} each.

    A server is accounted for by a row's external_id or server_external_id; a
    template by its image row; a node server by its node row while that row
    has no server recorded yet (a launch between create and record).  An
    image is accounted for by a row's external_id or its dg-image-id row.
    """
    node_rows = {str(n.id): n for n in nodes}
    image_rows = {str(i.id) for i in images}
    known_servers = ({n.external_id for n in nodes} | {i.server_external_id for i in images}) - {
        None}
    known_images = {i.external_id for i in images} - {None}
    leaked_servers, leaked_images = {}, {}
    for s in servers:
        if not is_ours(s, provider_name) or s.id in known_servers:
            continue
        if s.metadata.get(cloud.META_KIND) == 'template':
            if s.metadata.get(cloud.META_IMAGE_ID) in image_rows:
                continue
        else:
            row = node_rows.get(s.metadata.get(cloud.META_NODE_ID))
            if row is not None and not row.external_id:
                continue
        leaked_servers[s.id] = s.name
    for i in cloud_images:
        if not is_ours(i, provider_name) or i.id in known_images:
            continue
        if i.metadata.get(cloud.META_KIND) == KIND_HELD_SNAPSHOT:
            continue            # kept for snapshot-keep-hours by plan(), not a leak
        if i.metadata.get(cloud.META_IMAGE_ID) in image_rows:
            continue
        leaked_images[i.id] = i.name
    return leaked_servers, leaked_images


@dataclasses.dataclass(frozen=True)
class Limits:
    """The configured limits a plan needs, in seconds (all from the configuration)."""
    boot_timeout: float
    hold: float
    max_used: float
    max_ready: float
    leak_grace: float
    keep_images: int
    interrupted_build: float
    snapshot_keep: float = 72 * HOUR

    @classmethod
    def from_config(cls, config, provider):
        # A building node may still be in launch's ready check after boot-timeout.
        return cls(boot_timeout=provider.boot_timeout + config.ready_check_timeout,
                   hold=config.hold_hours * HOUR,
                   max_used=config.max_used_hours * HOUR, max_ready=config.max_ready_hours * HOUR,
                   leak_grace=config.leak_grace, keep_images=config.keep_images,
                   interrupted_build=(config.image_build_timeout + config.snapshot_timeout
                                      + provider.boot_timeout + config.launch_deadline
                                      + config.ready_check_timeout),
                   snapshot_keep=config.snapshot_keep_hours * HOUR)


# -- the plan: a pure function of what was read ----------------------------------------

def node_reason(node, limits, current, image_rows, now):
    """Why this node row goes, or None to keep it.

    `current` maps label -> the current image row (or None); `image_rows`
    maps image row id -> row, to tell a build's canary from a stale node.
    """
    if node.state in ('delete', 'error'):
        return node.state
    if node.state == 'used':
        return 'used-too-long' if now - node.state_time > limits.max_used else None
    if node.state == 'hold':
        until = node.hold_until if node.hold_until is not None else (
            node.state_time + limits.hold)
        return 'hold-expired' if now >= until else None
    if node.state == 'building':
        return 'build-timeout' if now - node.created > limits.boot_timeout else None
    if node.state == 'ready':
        cur = current.get(node.label)
        source = image_rows.get(node.image_id)
        canary = source is not None and source.state == 'building'
        if cur is not None and node.image_id != cur.id and not canary:
            return 'image-not-current'
        if now - node.created > limits.max_ready:
            return 'ready-too-old'
    return None


def image_row_reason(row, limits, doomed, now):
    if row.state == 'delete':
        if row.fail_reason in IMAGE_ROW_REASONS:
            return row.fail_reason
        return 'failed-build' if row.fail_reason else 'delete'
    if row.state == 'building':
        return 'interrupted-build' if now - row.created > limits.interrupted_build else None
    return doomed.get(row.id)


def plan(provider_name, limits, nodes, images, servers, cloud_images, current, leaks,
         now, listed_at, keypairs=(), prefix=None, targets=None):
    """What to delete and why.

    nodes, images: this provider's rows.  servers, cloud_images: the cloud's
    lists (taken at `listed_at`).  current: label -> current image row or None.
    leaks: the Leak rows of this run's sightings (one per untracked resource).
    keypairs: the cloud's keypair names; prefix: our node-prefix, to know
    image builds' keypairs.  targets: label -> the ready nodes a demand-sized
    label keeps (devstackgate.sizing; never below its min-ready).
    """
    p = Plan()
    listed_servers = {s.id: s for s in servers}
    listed_images = {i.id: i for i in cloud_images}
    ours_servers = [s for s in servers if is_ours(s, provider_name)]
    ours_images = [i for i in cloud_images if is_ours(i, provider_name)]
    image_by_id = {i.id: i for i in images}

    def settled(row, kind, name, ident, reason, nothing_note):
        """A row whose resources are absent from the list: removable once the list
        was taken after it entered delete."""
        if row.state == 'delete' and row.state_time < listed_at:
            p.steps.append(Step(kind, name, ident, reason, row=row, remove=True,
                                note='gone from the cloud, row removed'))
        elif row.state != 'delete':
            p.steps.append(Step(kind, name, ident, reason, row=row, note=nothing_note))
        else:
            p.notes.append('%s %s (%s): entered delete after the cloud was listed; '
                           'settled by the next run' % (kind, name, ident))

    # Node rows; ready nodes beyond a demand-sized label's target go too, oldest first.
    reasons = {n.id: node_reason(n, limits, current, image_by_id, now) for n in nodes}
    for label, target in (targets or {}).items():
        keep = sorted((n for n in nodes if n.label == label and n.state == 'ready'
                       and reasons[n.id] is None), key=lambda n: (n.created, n.id))
        for n in keep[:max(0, len(keep) - target)]:
            reasons[n.id] = 'surplus'
    for n in nodes:
        reason = reasons[n.id]
        if reason is None:
            continue
        name = n.name or 'node-%d' % n.id
        if n.external_id:
            sids = [n.external_id] if n.external_id in listed_servers else []
        else:
            sids = [s.id for s in ours_servers
                    if s.metadata.get(cloud.META_NODE_ID) == str(n.id)
                    and s.metadata.get(cloud.META_KIND) != 'template']
        fields = {}
        if n.state != 'delete':
            fields['state'] = 'delete'
        if not n.external_id and sids:
            fields['external_id'] = sids[0]
        if fields:
            p.updates.append((n, fields))
        for sid in sids:
            p.steps.append(Step('node', name, sid, reason, server_id=sid, row=n))
        if not sids:
            settled(n, 'node', name, n.external_id or 'row %d' % n.id, reason,
                    'no server in the cloud; the row goes on the next run')

    # Image rows.
    doomed = image.retention(images, limits.keep_images)
    for r in images:
        reason = image_row_reason(r, limits, doomed, now)
        if reason is None and r.state == 'ready' and r.external_id not in listed_images:
            reason = 'image-vanished'
        name = r.name or 'image-%d' % r.id
        tagged_images = [i.id for i in ours_images
                         if i.metadata.get(cloud.META_IMAGE_ID) == str(r.id)
                         and i.id != r.external_id]
        tagged_templates = [s.id for s in ours_servers
                            if s.metadata.get(cloud.META_KIND) == 'template'
                            and s.metadata.get(cloud.META_IMAGE_ID) == str(r.id)
                            and s.id != r.server_external_id]
        templates = []
        if r.server_external_id in listed_servers:
            if is_ours(listed_servers[r.server_external_id], provider_name):
                templates.append(r.server_external_id)
            else:
                p.notes.append('image %s (row %d): template %s does not carry %s=%s; left alone'
                               % (name, r.id, r.server_external_id, cloud.META_PROVIDER,
                                  provider_name))
        templates += tagged_templates
        if reason is None:
            if r.state == 'ready':
                for sid in templates:
                    p.steps.append(Step('template', listed_servers[sid].name, sid,
                                        'template-done', server_id=sid))
                for iid in tagged_images:
                    p.steps.append(Step('image', listed_images[iid].name, iid, 'failed-build',
                                        image_id=iid))
            continue
        glance = []
        if r.external_id in listed_images:
            if is_ours(listed_images[r.external_id], provider_name):
                glance.append(r.external_id)
            else:
                p.notes.append('image %s (row %d): glance image %s does not carry %s=%s; '
                               'the row goes, the image stays' % (
                                   name, r.id, r.external_id, cloud.META_PROVIDER, provider_name))
        glance += tagged_images
        if r.state != 'delete':
            fields = {'state': 'delete'}
            if reason in IMAGE_ROW_REASONS:
                fields['fail_reason'] = reason
            p.updates.append((r, fields))
        for iid in glance:
            p.steps.append(Step('image', listed_images[iid].name, iid, reason, image_id=iid, row=r))
        for sid in templates:
            p.steps.append(Step('template', listed_servers[sid].name, sid, reason, server_id=sid,
                                row=r))
        if not glance and not templates:
            settled(r, 'image', name, r.external_id or 'row %d' % r.id, reason,
                    'nothing of it in the cloud; the row goes on the next run')

    # Keypairs of image builds that are no longer building.
    building = {i.id for i in images if i.state == 'building'}
    for name in keypairs:
        row_id = image.build_keypair_row(prefix, provider_name, name) if prefix else None
        if row_id is not None and row_id not in building:
            p.steps.append(Step('keypair', name, name, 'leaked-keypair', keypair=name,
                                note='its build (image row %d) is over' % row_id))

    # Leaks: seen on two runs in a row and older than the grace period.
    for leak in leaks:
        listed = listed_servers if leak.kind == 'server' else listed_images
        resource = listed.get(leak.external_id)
        if resource is None:
            continue
        born = parse_time(resource.created)
        age = now - (born if born is not None else leak.first_seen)
        if leak.sightings >= 2 and age >= limits.leak_grace:
            p.steps.append(Step(
                leak.kind, resource.name, resource.id, 'leaked',
                server_id=resource.id if leak.kind == 'server' else None,
                image_id=resource.id if leak.kind == 'image' else None,
                note='no row; seen on %d runs in a row, %.0f s old' % (leak.sightings, age)))
        else:
            p.notes.append('untracked %s %s (%s): seen on %d run(s) in a row, %.0f s old; '
                           'deleted once seen twice and %g s old'
                           % (leak.kind, resource.name, resource.id, leak.sightings, age,
                              limits.leak_grace))

    # Snapshots of held nodes: no row, kept snapshot-keep-hours after their creation.
    for i in ours_images:
        if i.metadata.get(cloud.META_KIND) != KIND_HELD_SNAPSHOT:
            continue
        born = snapshot_time(i)
        node = i.metadata.get(cloud.META_NODE_ID) or '?'
        if born is None:
            p.notes.append('snapshot %s (%s) of node %s: no readable creation time; kept'
                           % (i.name, i.id, node))
        elif now - born >= limits.snapshot_keep:
            p.steps.append(Step('image', i.name, i.id, 'snapshot-expired', image_id=i.id,
                                note='snapshot of held node %s, %.1f h old' % (
                                    node, (now - born) / HOUR)))
        else:
            p.notes.append('snapshot %s (%s) of node %s: kept %.1f h more (snapshot-keep-hours)'
                           % (i.name, i.id, node, (limits.snapshot_keep - (now - born)) / HOUR))
    return p


def snapshot_time(resource):
    """Epoch seconds a held node's snapshot was made: the cloud's time, else ours; or None."""
    born = parse_time(resource.created)
    if born is None:
        try:
            born = float(resource.metadata.get(META_SNAPSHOT_TIME))
        except (TypeError, ValueError):
            return None
    return born


# -- the run ------------------------------------------------------------------------

class _Changed(Exception):
    """A row changed since it was read: roll back, leave it for the next run."""

    def __init__(self, fresh):
        super().__init__('row changed')
        self.fresh = fresh


@dataclasses.dataclass(frozen=True)
class Sighting:
    """A leak as a dry run would count it (a Leak row without the write)."""
    kind: str
    external_id: str
    name: str
    first_seen: float
    sightings: int


class Reaper:
    def __init__(self, config, provider, db, adapter, dry_run=False, out=None, err=None,
                 clock=time.time, lease=None):
        self.lease = lease or leasemod.UNLEASED
        self.config = config
        self.provider = provider
        self.db = db
        self.adapter = adapter
        self.dry_run = dry_run
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.clock = clock
        self.limits = Limits.from_config(config, provider)
        self.summary = Summary(provider.name, dry_run=dry_run)

    def read(self):
        name = self.provider.name

        def tx(s):
            nodes = s.nodes(provider=name)
            images = s.images(provider=name)
            labels = {n.label for n in nodes if n.state == 'ready'}
            current = {label: s.current_image(name, label) for label in labels}
            return nodes, images, current
        return self.db.transact(tx)

    def sightings(self, leaked_servers, leaked_images, now):
        name = self.provider.name
        if self.dry_run:
            def tx(s):
                known = {(l.kind, l.external_id): l for l in s.leaks(provider=name)}
                out = []
                for kind, seen in (('server', leaked_servers), ('image', leaked_images)):
                    for external_id, rname in seen.items():
                        old = known.get((kind, external_id))
                        out.append(Sighting(kind, external_id, rname,
                                            old.first_seen if old else now,
                                            old.sightings + 1 if old else 1))
                return out
            return self.db.transact(tx)
        return self.db.transact(lambda s: (
            s.record_sightings(name, 'server', leaked_servers, now=now)
            + s.record_sightings(name, 'image', leaked_images, now=now)))

    def run(self):
        name = self.provider.name
        listed_at = self.clock()
        servers = self.adapter.list_servers()
        cloud_images = self.adapter.list_images()
        keypairs = self.adapter.list_keypairs()
        nodes, images, current = self.read()
        now = self.clock()
        leaked_servers, leaked_images = untracked(name, nodes, images, servers, cloud_images)
        log.info('%s: %d servers and %d images listed (%d and %d ours); %d node rows, '
                 '%d image rows; %d untracked servers, %d untracked images%s',
                 name, len(servers), len(cloud_images),
                 sum(1 for s in servers if is_ours(s, name)),
                 sum(1 for i in cloud_images if is_ours(i, name)), len(nodes), len(images),
                 len(leaked_servers), len(leaked_images), '; dry run' if self.dry_run else '')
        self.lease.check()          # a sighting is counted by the lease's holder only
        leaks = self.sightings(leaked_servers, leaked_images, now)
        the_plan = plan(name, self.limits, nodes, images, servers, cloud_images, current, leaks,
                        now, listed_at, keypairs=keypairs, prefix=self.config.node_prefix,
                        targets=self.targets())
        for note in the_plan.notes:
            log.info('%s: %s', name, note)
        try:
            if self.dry_run:
                for step in the_plan.steps:
                    print('would delete %s' % step.text(), file=self.out)
                    self.summary.deleted[step.reason] += 1
            else:
                self.apply(the_plan)
        finally:
            self.remaining()
            for line in self.summary.table():
                print(line, file=self.err)
            self.err.flush()
        return self.summary

    def targets(self):
        """label -> ready nodes to keep, for the demand-sized labels (each logged)."""
        out = {}
        for label in self.provider.images:
            if label.pool_sizing == 'demand':
                decision = sizing.decide(self.db, self.config, self.provider, label)
                log.info('%s', decision.line())
                out[label.name] = decision.target
        return out

    # -- applying a plan --------------------------------------------------
    def _row_key(self, row):
        return (type(row).__name__, row.id)

    def _compare_and_set(self, row, change):
        """Run change(session) only if the row is still exactly as read.

        Returns (True, row) when it ran, else (False, the row as it is now or
        None).  The row is locked first by writing back the state_time it was
        read with, so on MySQL (READ COMMITTED) a concurrent claim either
        commits before the comparison (and is seen) or waits for our commit
        (and then finds the row no longer ready); on SQLite the transaction
        holds the write lock throughout.  A mismatch rolls that write back.
        """
        node = isinstance(row, vmdatabase.Node)

        def tx(s):
            if node:
                s.update_node(row.id, state_time=row.state_time)
                fresh = s.get_node(row.id)
            else:
                s.update_image(row.id, state_time=row.state_time)
                fresh = s.get_image(row.id)
            if fresh != row:
                raise _Changed(fresh)
            change(s)
            return True, fresh
        try:
            return self.db.transact(tx)
        except _Changed as e:
            return False, e.fresh

    def _update_row(self, row, fields):
        fields = dict(fields)
        to_state = fields.pop('state', None)

        def change(s):
            if to_state is not None:
                s.transition(row, to_state, **fields)
            elif isinstance(row, vmdatabase.Node):
                s.update_node(row.id, **fields)
            else:
                s.update_image(row.id, **fields)
        return self._compare_and_set(row, change)

    def _remove_row(self, row):
        if isinstance(row, vmdatabase.Node):
            def remove(s):
                s.delete_node(row.id)
                # A gate result still running on a node that is gone belongs to a job
                # that died (killed, its slave lost): it ends as aborted, not never.
                for result in s.results(node_id=row.id, result='running'):
                    s.finish_result(result.id, 'aborted')
            return self._compare_and_set(row, remove)
        return self._compare_and_set(row, lambda s: s.delete_image(row.id))

    def apply(self, the_plan):
        """Take the steps in the plan's order, each row marked (its plan update)
        just before its first step: rows are removed here, cloud deletes run
        reap-workers at a time (each call still spaced by the provider's
        api-rate).  A step whose row changed under us is skipped.  An outage
        stops the run: the deletes not yet started are dropped (the next run
        asks again), the rows are still marked."""
        name = self.provider.name
        # A row is marked just before its first step, so the deletes (in the
        # workers) overlap the marking of the rows after them.
        unmarked = {self._row_key(row): (row, fields) for row, fields in the_plan.updates}
        blocked = set()

        def mark(key):
            row, fields = unmarked.pop(key)
            done, fresh = self._update_row(row, fields)
            if not done:
                blocked.add(key)
                self._changed(row, fresh)

        outage = []
        lost = False
        futures = {}

        def note_outage(future):
            if not future.cancelled() and isinstance(future.exception(), cloud.CloudUnavailable):
                outage.append(future.exception())

        with concurrent.futures.ThreadPoolExecutor(max(1, self.config.reap_workers),
                                                   thread_name_prefix='reap-delete') as pool:
            for step in the_plan.steps:
                if outage:
                    pool.shutdown(wait=True, cancel_futures=True)
                    break
                if not self.lease.ok():
                    lost = True
                    log.warning('%s: %s lost; starting no more deletes', name,
                                self.lease.name)
                    pool.shutdown(wait=True, cancel_futures=True)
                    break
                if step.row is not None and self._row_key(step.row) in unmarked:
                    mark(self._row_key(step.row))
                if step.row is not None and self._row_key(step.row) in blocked:
                    continue
                if step.remove:
                    done, fresh = self._remove_row(step.row)
                    if done:
                        log.info('%s: deleting %s', name, step.text())
                        self.summary.deleted[step.reason] += 1
                    else:
                        self._changed(step.row, fresh)
                    continue
                log.info('%s: deleting %s', name, step.text())
                future = pool.submit(self._delete, step)
                future.add_done_callback(note_outage)
                futures[future] = step
            for key in list(unmarked if not lost else ()):  # rows with nothing to delete
                mark(key)                       # now, or left by an outage: marked all the same
        for future, step in futures.items():        # in the plan's order
            if future.cancelled():
                continue
            error = future.exception()
            if error is None:
                self.summary.deleted[step.reason] += 1
            elif isinstance(error, (cloud.CloudUnavailable, leasemod.LeaseLost)):
                continue                    # not started: asked again by the next run
            elif not isinstance(error, cloud.CloudError):
                raise error                 # not the cloud's doing: a bug
            else:
                self.summary.failed[step.reason] += 1
                log.warning('%s: delete of %s %s (%s) failed (%s): %s; asked again on the next '
                            'run', name, step.kind, step.name, step.id, error.reason, error)
        if outage:
            raise outage[0]
        self.lease.check()

    def _delete(self, step):
        """One step's cloud call (in a worker thread); CloudError if it failed,
        LeaseLost (and no call) once the run's lease is lost."""
        self.lease.check()
        if step.server_id:
            self.adapter.delete_server(step.server_id)
        elif step.image_id:
            self.adapter.delete_image(step.image_id)
        elif step.keypair:
            self.adapter.delete_keypair(step.keypair)

    def _changed(self, row, fresh):
        self.summary.skipped += 1
        log.info('%s: %s %s (row %d) changed since it was read (now %s); left for the next run',
                 self.provider.name, 'node' if isinstance(row, vmdatabase.Node) else 'image',
                 row.name, row.id, fresh.state if fresh is not None else 'gone')

    def remaining(self):
        name = self.provider.name

        def tx(s):
            by_label = collections.Counter((n.label, n.state) for n in s.nodes(provider=name))
            images = collections.Counter(i.state for i in s.images(provider=name))
            return by_label, dict(images)
        try:
            by_label, self.summary.images = self.db.transact(tx)
        except DatabaseError as e:
            log.warning('%s: cannot count the remaining rows: %s', name, e)
            return
        nodes = collections.Counter()
        for (_, state), n in by_label.items():
            nodes[state] += n
        self.summary.nodes = dict(nodes)
        from devstackgate import metrics
        metrics.node_gauges(metrics.get(), name, [i.name for i in self.provider.images],
                            by_label)


def open_database(config, dry_run):
    """The database; a dry run opens it read-only: it neither creates, upgrades nor writes."""
    if not dry_run:
        return vmdatabase.Database.from_config(config).upgrade()
    db = vmdatabase.Database.from_config(config, read_only=True)
    try:
        version = db.version()
    except DatabaseError as e:
        raise GateError('dry run: database %s has no devstack-gate schema (%s); nothing to reap'
                        % (db, e))
    if version != vmdatabase.schema_version():
        raise GateError('dry run: database %s has schema version %d, this devstack-gate writes %d; '
                        'a run without --dry-run upgrades it' % (db, version,
                                                                 vmdatabase.schema_version()))
    return db


def run(config, provider_name, dry_run=False, db=None, adapter=None, out=None, err=None):
    """One reap run for one provider; returns its Summary (the table is printed on err)."""
    provider = config.provider(provider_name)
    db = db or open_database(config, dry_run)
    if dry_run:
        note_reap_in_progress(db, provider.name)
        adapter = adapter or cloud.connect(provider, db=db)
        return Reaper(config, provider, db, adapter, dry_run=True, out=out, err=err).run()
    with leasemod.held(config, db, provider.name, leasemod.REAP, 'reap') as lease:
        adapter = adapter or cloud.connect(provider, db=db)
        return Reaper(config, provider, db, adapter, out=out, err=err, lease=lease).run()


def note_reap_in_progress(db, provider_name):
    """A dry run takes no lease; it says so when a real run holds it (its deletes
    may change what the dry run shows)."""
    try:
        rows = db.transact(lambda s: (s.leases(provider=provider_name), s.db_now()))
    except DatabaseError:
        return
    leases, now = rows
    for row in leases:
        if row.scope == leasemod.REAP and row.token is not None and row.expires >= now:
            log.info('%s: a reap run, %s, holds the reap lease until %s; what it deletes '
                     'meanwhile may differ from these lines', provider_name,
                     leasemod.holder(row), leasemod.when(row.expires))

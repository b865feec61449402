"""The soak's invariants: pure functions of what was read from the database
(vmdatabase rows) and from the clouds (localcloud's admin endpoint: every
server and glance image, as dicts).  Each returns a list of Violation.

Words used below, for one provider P:

- a *tagged* server or image carries ``dg-provider: P`` in its metadata (the
  product tags everything it creates, ``cloud.tags``);
- a server is *listed* while the compute API still shows it: not deleted, or
  deleted but lingering (``lying-delete-lists``); it is *live* while not
  deleted;
- the *settle time* of a row is when the reaper must have dealt with it: for a
  building node row ``created + boot-timeout`` (the reaper's build-timeout),
  for a building image row ``created + image-build-timeout + snapshot-timeout
  + boot-timeout + launch-deadline + ready-check-timeout`` (its
  interrupted-build); a row is *overdue* once a reap run of P that started
  after its settle time has completed with exit 0.

The invariants (checked after every cycle, when no step runs):

handed-out-twice
    No node id appears in two gate results, in two gate consoles
    (``NODE_ID=``), in a result and a console of different builds, or both as
    a gate's node and as an image build's canary; no claim token is on two
    node rows.
max-servers
    No sample (a background thread reading every server of every cloud each
    ``--sample-interval`` s while the cycle runs) shows more than max-servers
    listed tagged servers of P (nodes, canaries and image templates alike).
untracked-server / untracked-image
    Every listed tagged server has a row: a node server the node row whose
    id is its ``dg-node-id`` (any state, its ``external_id`` unset or this
    server), a template the image row of its ``dg-image-id``.  Every tagged
    glance image (but a held node's snapshot) has the image row of its
    ``dg-image-id``, whose ``external_id`` is unset or this image.
missing-resource
    Every node row in ready, used or hold has a live ACTIVE server with its
    ``external_id``; every image row in ready has an active glance image with
    its ``external_id``.
overdue-row
    A building node row with no live server, and a building image row (any
    resources), are allowed in flight (a killed launch whose create was never
    sent, a killed build) until they are overdue.  Rows in delete and error
    may have any resources: the reaper finishes them.
current-image
    Once a label of P has had a current image it always has one (sampled with
    the servers), and at every sample its glance image exists and is active:
    read the current image rows, then the clouds' images, then the rows
    again; the check applies when both reads agree.
hold-intact
    A node seen in hold stays, until its hold_until, in hold with the same
    server, that server live and ACTIVE, and the pool key logs in to it over
    SSH (host key pinned) and finds the ``workspace`` the failed run copied.
recovery
    After the faults stop, every label of every provider has min-ready ready
    nodes within ``--recovery-periods`` launch periods.
leak (final)
    After the final reap with faults off, the clouds and the database agree
    exactly: no untracked or missing resource, no node row in building,
    delete or error, no image row in delete, no lingering server; building
    image rows only of a killed build not yet overdue, reported as in flight.
traceback / bad-exit / hung
    No script log holds a Python traceback; every script exits 0 or 1 (or
    was SIGKILLed by the soak); none outlives ``--step-timeout``.
"""

import collections
import dataclasses

META_PROVIDER = 'dg-provider'
META_KIND = 'dg-kind'
META_NODE_ID = 'dg-node-id'
META_IMAGE_ID = 'dg-image-id'
HELD_SNAPSHOT = 'held-snapshot'

INVARIANTS = ('handed-out-twice', 'max-servers', 'untracked-server', 'untracked-image',
              'missing-resource', 'overdue-row', 'current-image', 'hold-intact', 'recovery',
              'leak', 'traceback', 'bad-exit', 'hung')


@dataclasses.dataclass(frozen=True)
class Violation:
    invariant: str
    what: str
    provider: str = None
    cycle: object = None        # cycle number, 'bootstrap' or 'final'

    def line(self):
        where = ', '.join(x for x in ('cycle %s' % self.cycle if self.cycle is not None else '',
                                      self.provider or '') if x)
        return '%s%s: %s' % (self.invariant, ' (%s)' % where if where else '', self.what)

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Limits:
    boot_timeout: float
    interrupted_build: float
    max_servers: int


def listed(server):
    return not server['deleted'] or server['lingering']


def live(server):
    return not server['deleted']


def tagged(resource, provider, key='metadata'):
    return (resource.get(key) or {}).get(META_PROVIDER) == provider


def tagged_servers(provider, servers):
    return [s for s in servers if listed(s) and tagged(s, provider)]


def tagged_images(provider, images):
    return [i for i in images if tagged(i, provider, 'properties')
            and i['properties'].get(META_KIND) != HELD_SNAPSHOT]


# -- handed out twice -------------------------------------------------------------------

def handed_out_twice(results, consoles, canaries=(), nodes=()):
    """results: vmdatabase Result rows; consoles: {build number: NODE_ID text or None};
    canaries: node ids an image build claimed; nodes: node rows now."""
    out = []
    by_node = collections.defaultdict(list)
    for r in results:
        if r.node_id is not None:
            by_node[r.node_id].append(r.build_number)
    for node_id, builds in sorted(by_node.items()):
        if len(builds) > 1:
            out.append(Violation('handed-out-twice', 'node %d is the node of gate results of '
                                 'builds %s' % (node_id, ', '.join(sorted(builds)))))
    by_console = collections.defaultdict(list)
    for build, node_id in consoles.items():
        if node_id:
            by_console[node_id].append(str(build))
    for node_id, builds in sorted(by_console.items()):
        if len(builds) > 1:
            out.append(Violation('handed-out-twice', 'NODE_ID=%s is in the consoles of builds %s'
                                 % (node_id, ', '.join(sorted(builds)))))
    for r in results:
        seen = consoles.get(str(r.build_number)) or consoles.get(r.build_number)
        if r.node_id is not None and seen and str(seen) != str(r.node_id):
            out.append(Violation('handed-out-twice', 'build %s: result row names node %s, its '
                                 'console NODE_ID=%s' % (r.build_number, r.node_id, seen)))
    for node_id in sorted(set(canaries) & set(by_node)):
        out.append(Violation('handed-out-twice', 'node %d was an image build\'s canary and the '
                             'node of gate build %s' % (node_id, ', '.join(by_node[node_id]))))
    tokens = collections.defaultdict(list)
    for n in nodes:
        if n.claim_token:
            tokens[n.claim_token].append(n.id)
    for token, ids in tokens.items():
        if len(ids) > 1:
            out.append(Violation('handed-out-twice', 'claim token %s is on node rows %s'
                                 % (token, ', '.join(map(str, sorted(ids))))))
    return out


# -- one provider's cloud against its rows ----------------------------------------------

def consistency(provider, nodes, images, servers, cloud_images, limits, last_reap, cycle=None):
    """(violations, in_flight): the untracked-*, missing-resource and overdue-row
    invariants for one provider.  last_reap: wall time the newest reap of the
    provider that exited 0 started (None: none yet).  in_flight: lines naming
    the rows allowed in flight."""
    out, in_flight = [], []
    node_rows = {str(n.id): n for n in nodes}
    image_rows = {str(i.id): i for i in images}
    ours = tagged_servers(provider, servers)
    by_id = {s['id']: s for s in ours}
    glance = {i['id']: i for i in cloud_images}

    def v(invariant, what):
        out.append(Violation(invariant, what, provider, cycle))

    for s in ours:
        meta = s.get('metadata') or {}
        if meta.get(META_KIND) == 'template':
            row = image_rows.get(meta.get(META_IMAGE_ID))
            if row is None:
                v('untracked-server', 'template %s (%s, %s) has no image row %s'
                  % (s['name'], s['id'], s['status'], meta.get(META_IMAGE_ID)))
            elif row.server_external_id not in (None, s['id']):
                v('untracked-server', 'template %s (%s) of image row %d, which records template %s'
                  % (s['name'], s['id'], row.id, row.server_external_id))
            continue
        row = node_rows.get(meta.get(META_NODE_ID))
        if row is None:
            v('untracked-server', 'server %s (%s, %s%s) has no node row %s' % (
                s['name'], s['id'], s['status'], ', lingering' if s['deleted'] else '',
                meta.get(META_NODE_ID)))
        elif row.external_id not in (None, s['id']):
            v('untracked-server', 'server %s (%s) of node row %d, which records server %s'
              % (s['name'], s['id'], row.id, row.external_id))
    for i in tagged_images(provider, cloud_images):
        row = image_rows.get(i['properties'].get(META_IMAGE_ID))
        if row is None:
            v('untracked-image', 'image %s (%s, %s) has no image row %s' % (
                i['name'], i['id'], i['status'], i['properties'].get(META_IMAGE_ID)))
        elif row.external_id not in (None, i['id']):
            v('untracked-image', 'image %s (%s) of image row %d, which records image %s'
              % (i['name'], i['id'], row.id, row.external_id))

    def overdue(row, settle):
        return last_reap is not None and last_reap > row.created + settle

    for n in nodes:
        name = '%s (row %d)' % (n.name or 'node-%d' % n.id, n.id)
        server = by_id.get(n.external_id) if n.external_id else None
        if n.state in ('ready', 'used', 'hold'):
            if server is None or not live(server) or server['status'] != 'ACTIVE':
                v('missing-resource', 'node %s is %s but its server %s is %s' % (
                    name, n.state, n.external_id, 'not there' if server is None else
                    'deleted' if not live(server) else server['status']))
        elif n.state == 'building':
            if server is None:
                server = next((s for s in ours if live(s) and (s.get('metadata') or {}).get(
                    META_NODE_ID) == str(n.id)), None)
            if server is not None and live(server):
                continue
            if overdue(n, limits.boot_timeout):
                v('overdue-row', 'node %s is building with no live server, past boot-timeout, '
                  'and a reap ran since' % name)
            else:
                in_flight.append('node %s building with no live server (its launch was killed '
                                 'or its create failed)' % name)
    for r in images:
        name = '%s (row %d)' % (r.name or 'image-%d' % r.id, r.id)
        if r.state == 'ready':
            g = glance.get(r.external_id)
            if g is None or g['status'] != 'active':
                v('missing-resource', 'image %s is ready but its glance image %s is %s'
                  % (name, r.external_id, 'not there' if g is None else g['status']))
        elif r.state == 'building':
            if overdue(r, limits.interrupted_build):
                v('overdue-row', 'image %s is still building past the interrupted-build limit '
                  'and a reap ran since' % name)
            else:
                in_flight.append('image %s building (a build was killed, or runs)' % name)
    return out, in_flight


def final_agreement(provider, nodes, images, servers, cloud_images, limits, last_reap):
    """The leak invariant after the final reap: consistency() plus settled rows."""
    problems, in_flight = consistency(provider, nodes, images, servers, cloud_images, limits,
                                      last_reap, cycle='final')
    out = [dataclasses.replace(p, invariant='leak', what='%s: %s' % (p.invariant, p.what))
           for p in problems]
    building_images = {str(i.id) for i in images if i.state == 'building'}
    for n in nodes:
        if n.state in ('building', 'delete', 'error'):
            out.append(Violation('leak', 'node %s (row %d) is still %s after the final reap'
                                 % (n.name, n.id, n.state), provider, 'final'))
    for r in images:
        if r.state == 'delete':
            out.append(Violation('leak', 'image %s (row %d) is still delete after the final reap'
                                 % (r.name, r.id), provider, 'final'))
    for s in tagged_servers(provider, servers):
        if s['deleted']:
            out.append(Violation('leak', 'server %s (%s) still lingers in the lists after the '
                                 'final reap' % (s['name'], s['id']), provider, 'final'))
        elif (s.get('metadata') or {}).get(META_KIND) == 'template' and \
                (s.get('metadata') or {}).get(META_IMAGE_ID) not in building_images:
            out.append(Violation('leak', 'template %s (%s) of a finished build is still there'
                                 % (s['name'], s['id']), provider, 'final'))
    return out, [x for x in in_flight if x.startswith('image ')]


# -- max-servers and current images (the sampler's) -------------------------------------

def server_count(provider, servers):
    return len(tagged_servers(provider, servers))


def current_usable(before, cloud_images, after, had_current):
    """before/after: {(provider, label): (image row id, external id) or None} read
    around cloud_images ({provider: [image dicts]}); had_current: the keys that
    had a current image earlier.  Returns [Violation]."""
    out = []
    for key, cur in sorted(before.items()):
        provider, label = key
        if after.get(key) != cur:
            continue                        # promoted between the reads: no verdict
        if cur is None:
            if key in had_current:
                out.append(Violation('current-image', 'label %s has no current image any more'
                                     % label, provider))
            continue
        row_id, external_id = cur
        g = {i['id']: i for i in cloud_images.get(provider, ())}.get(external_id)
        if g is None or g['status'] != 'active':
            out.append(Violation('current-image', 'label %s: current image row %d (%s) is %s in '
                                 'the cloud' % (label, row_id, external_id,
                                                'not there' if g is None else g['status']),
                                 provider))
    return out


# -- held nodes -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Held:
    node_id: int
    provider: str
    name: str
    external_id: str
    ip: str
    username: str
    host_key: str
    hold_until: float


def hold_changes(tracked, nodes, servers_by_provider, now, cycle=None):
    """tracked: {node id: Held}; nodes: every node row now.  Violations for held
    nodes changed before their expiry (the SSH check is the runner's)."""
    out = []
    rows = {n.id: n for n in nodes}
    for h in tracked.values():
        if now >= h.hold_until:
            continue
        row = rows.get(h.node_id)
        if row is None or row.state != 'hold' or row.external_id != h.external_id:
            out.append(Violation('hold-intact', 'held node %s (row %d) is %s %.0f s before its '
                                 'hold expires' % (h.name, h.node_id, 'gone' if row is None else
                                                   row.state, h.hold_until - now), h.provider,
                                 cycle))
            continue
        server = {s['id']: s for s in servers_by_provider.get(h.provider, ())}.get(h.external_id)
        if server is None or not live(server) or server['status'] != 'ACTIVE':
            out.append(Violation('hold-intact', 'held node %s (row %d): its server %s is %s '
                                 'before the hold expires' % (
                                     h.name, h.node_id, h.external_id,
                                     'gone' if server is None else
                                     'deleted' if not live(server) else server['status']),
                                 h.provider, cycle))
    return out

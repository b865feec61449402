"""Helpers for the reaper's tests: fabricate rows and cloud resources, read the outcome."""

import re

from localcloud.testing import wait_for_image, wait_for_server
from tests.pool import BASE_IMAGE

# "deleting <kind> <name> (<id>): <reason>[; note]" and the dry run's "would delete ...".
LINE_RE = re.compile(r'(?:deleting|would delete) (\w+) (\S+) \(([^)]+)\): ([a-z-]+)(?:; (.*))?$')
TABLE_RE = re.compile(r'^  (would delete|deleted|failed|skipped|nodes|images)\s+(\S+)\s+(\d+)$')


def node_meta(provider, node_id, label='precise'):
    return {'dg-provider': provider, 'dg-kind': 'node', 'dg-node-id': str(node_id),
            'dg-label': label}


def template_meta(provider, image_id, label='precise'):
    return {'dg-provider': provider, 'dg-kind': 'template', 'dg-image-id': str(image_id),
            'dg-label': label}


def image_meta(provider, image_id, label='precise'):
    return {'dg-provider': provider, 'dg-kind': 'image', 'dg-image-id': str(image_id),
            'dg-label': label}


class Fabricator:
    """Makes servers, snapshots and rows the way launch and the image builder would
    (or the way a crash would leave them), straight through the cloud's API."""

    def __init__(self, pool, cloud='rax', provider='rax'):
        self.pool = pool
        self.cloud = cloud
        self.provider = provider
        handle = pool.clouds[cloud]
        session = handle.session()
        self.nova = handle.nova('2.1', session=session)
        self.glance = handle.glance(session=session)
        (base,) = [i for i in handle.images() if i['name'] == BASE_IMAGE]
        self.base_id = base['id']

    def boot(self, name, meta=None, active=False):
        server = self.nova.servers.create(name, self.base_id, '1', meta=meta or {})
        if active:
            wait_for_server(self.nova, server.id, ('ACTIVE',))
        return server.id

    def snapshot(self, server_id, name, meta=None):
        wait_for_server(self.nova, server_id, ('ACTIVE',))
        image_id = self.nova.servers.create_image(server_id, name, meta or {})
        wait_for_image(self.glance, image_id, ('active',))
        return image_id

    def transact(self, fn):
        return self.pool.db.transact(fn)

    def node(self, state, created=None, record=True, boot=True, label='precise', **fields):
        """A node row (created at `created`) with a tagged server; `record=False` leaves
        external_id unset, as a crash between create and record would."""
        row = self.transact(lambda s: s.create_node(self.provider, label, state=state,
                                                    now=created, **fields))
        name = 'dg-%s-%s-%d' % (label, self.provider, row.id)
        server_id = self.boot(name, node_meta(self.provider, row.id, label)) if boot else None
        self.transact(lambda s: s.update_node(row.id, name=name,
                                              external_id=server_id if record else None))
        return self.transact(lambda s: s.get_node(row.id)), server_id

    def image(self, state, created=None, template=True, record_template=True, snapshot_from=None,
              snapshot=True, record_image=True, label='precise', **fields):
        """An image row with, as asked, a tagged template server and a tagged snapshot
        (of the template, or of `snapshot_from`).  Returns (row, snapshot id, template id)."""
        row = self.transact(lambda s: s.create_image(self.provider, label, state=state,
                                                     now=created, **fields))
        name = 'dg-%s-%s-%d' % (label, self.provider, row.id)
        template_id = image_id = None
        if template:
            template_id = self.boot('dg-template-%s-%s-%d' % (label, self.provider, row.id),
                                    template_meta(self.provider, row.id, label))
        if snapshot:
            image_id = self.snapshot(snapshot_from or template_id, name,
                                     image_meta(self.provider, row.id, label))
        self.transact(lambda s: s.update_image(
            row.id, name=name, external_id=image_id if record_image else None,
            server_external_id=template_id if record_template else None))
        return self.transact(lambda s: s.get_image(row.id)), image_id, template_id


def deletions(text):
    """{(kind, id, reason, note)} of the reap lines in a run's output."""
    found = []
    for line in text.splitlines():
        m = LINE_RE.search(line)
        if m and ('deleting ' in line or line.startswith('would delete')):
            found.append((m.group(1), m.group(3), m.group(4), m.group(5) or ''))
    return found


def table(text):
    """The end table as [(section, key, count)]."""
    return [(m.group(1), m.group(2), int(m.group(3)))
            for m in (TABLE_RE.match(line) for line in text.splitlines()) if m]


def cloud_state(pool, cloud='rax'):
    """What the cloud holds: servers (live or lingering) and images, by id."""
    servers = {s['id']: (s['name'], s['metadata'].get('dg-provider'), s['deleted'],
                         s['lingering']) for s in pool.clouds[cloud].servers()
               if not s['deleted'] or s['lingering']}
    images = {i['id']: (i['name'], i['properties'].get('dg-provider'), i['status'])
              for i in pool.clouds[cloud].images()}
    return servers, images


def live_ours(pool, provider='rax', cloud='rax'):
    """(server ids, image ids) in the cloud tagged dg-provider=provider, lingering ones included."""
    servers, images = cloud_state(pool, cloud)
    return ({i for i, (_, p, _, _) in servers.items() if p == provider},
            {i for i, (_, p, _) in images.items() if p == provider})


def database_state(pool):
    def read(s):
        return s.nodes(), s.images(), s.leaks()
    return pool.db.transact(read)


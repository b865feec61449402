"""Operators' tools: what the ``devstack-gate`` subcommands do, as plain functions.

Each function takes a :class:`vmdatabase.Database` and the
:class:`~devstackgate.config.Config` and returns plain data (dicts and lists,
the same that ``--json`` prints); nothing here prints.  The tables are drawn by
:mod:`devstackgate.cmd.operator`.

Every state change is one conditional :meth:`vmdatabase.Session.transition`
from the state the row was just read in.  If the row changed meanwhile (a gate
job claimed the node, the reaper took it, another operator acted first),
:class:`Changed` is raised and nothing is changed.

Bad image days (seed 004, Nodepool's operator page) need no configuration
edit: ``image-demote`` or ``image-delete`` makes the previous ready image
current, ``image-pause`` stops the nightly builds of the label (launches go on
from the current image), ``label-disable`` switches a matrix cell off (no
launches, no builds, gate runs skip it).  Pauses and switches live in the
database (``image_pauses``, ``label_switches``).
"""

import base64
import dataclasses
import getpass
import hashlib
import logging
import os
import shlex
import time

import vmdatabase
from devstackgate import cells, cloud, health, image, reap, ssh, wait
from devstackgate import log as console
from devstackgate.errors import DatabaseError, GateError, UsageError

log = logging.getLogger('operator')

HOUR = 3600.0
#: What hold accepts: a node a job may still use, has used, or that is held already.
HOLDABLE = ('ready', 'used', 'hold')
#: The fail_reason of rows an operator sent to delete.
DELETED_BY_OPERATOR = 'deleted-by-operator'
RELEASED_BY_OPERATOR = 'released-by-operator'


class Changed(GateError):
    """A row changed between reading it and changing it: nothing was changed."""
    reason = 'changed-under-us'


# -- small helpers ------------------------------------------------------------------

def age_text(seconds):
    """A duration as operators read it in a table: 45s, 5m, 3h, 2d."""
    seconds = max(0, int(seconds or 0))
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= size:
            return '%d%s' % (seconds // size, unit)
    return '%ds' % seconds


def user(environ=None):
    """Who is acting: $USER, else the login name."""
    environ = os.environ if environ is None else environ
    if environ.get('USER'):
        return environ['USER']
    try:
        return getpass.getuser()
    except Exception:       # no passwd entry (a container): still record something
        return 'unknown'


def describe(node):
    return '%s (%s, id %d)' % (node.name or 'node-%d' % node.id, node.provider, node.id)


def open_database(config, write):
    """The database: upgraded for the commands that write; read-only, and at this
    code's schema version, for the ones that only read (they create nothing)."""
    if write:
        return vmdatabase.Database.from_config(config).upgrade()
    db = vmdatabase.Database.from_config(config, read_only=True)
    version = db.version()
    if version != vmdatabase.schema_version():
        raise DatabaseError(
            'database %s has schema version %d, this devstack-gate reads %d; a command '
            'that writes (devstack-vm-launch.py, devstack-gate hold, ...) upgrades it'
            % (db, version, vmdatabase.schema_version()))
    return db


# -- checking what the operator named ------------------------------------------------

def check_label(config, label):
    if label not in config.labels():
        raise UsageError('label %r: no provider offers it; known labels: %s'
                         % (label, ', '.join(config.labels()) or 'none'))
    return label


def check_provider(config, name):
    return config.provider(name)        # ConfigError (exit 2) naming the known providers


def check_offered(config, provider_name, label):
    """The provider, if it offers the label (else the error names its labels)."""
    provider = check_provider(config, provider_name)
    image.labels_to_build(provider, label)
    return provider


def find_node(db, ref):
    """The node whose id or name is `ref`."""
    ref = str(ref)

    def tx(s):
        if ref.isdigit():
            node = s.get_node(int(ref))
            if node is not None:
                return [node]
        return s.nodes(name=ref)          # exactly this name (Session checks the match)
    found = db.transact(tx)
    if not found:
        raise GateError('node %r: no node with this id or name in database %s' % (ref, db))
    if len(found) > 1:
        raise GateError('node %r: %d nodes have this name (ids %s); give the id'
                        % (ref, len(found), ', '.join(str(n.id) for n in found)))
    return found[0]


# -- reading ------------------------------------------------------------------------

#: The columns of a node as list prints them (no claim token: it is the claim's handshake).
NODE_FIELDS = [f.name for f in dataclasses.fields(vmdatabase.Node) if f.name != 'claim_token']


def node_dict(node, image_names, now):
    """A node as --json prints it (no claim token: it is the claim's handshake)."""
    # Its fields are plain values: a shallow copy, not dataclasses.asdict's deep one
    # (which alone took most of a 10,000-node list).
    row = {name: getattr(node, name) for name in NODE_FIELDS}
    row['image'] = image_names.get(node.image_id)
    row['age'] = now - node.state_time
    return row


def list_nodes(db, config, provider=None, label=None, state=None, now=None):
    """The nodes (optionally of one provider, label, state), oldest first."""
    if provider is not None:
        check_provider(config, provider)
    if label is not None:
        check_label(config, label)
    if state is not None and state not in vmdatabase.NODE_STATES:
        raise UsageError('state %r: expected one of %s'
                         % (state, ', '.join(vmdatabase.NODE_STATES)))
    now = time.time() if now is None else now

    def tx(s):
        return (s.nodes(provider=provider, label=label, state=state),
                {i.id: i.name for i in s.images(provider=provider, label=label)})
    nodes, names = db.transact(tx)
    return [node_dict(n, names, now) for n in nodes]


def roles(images):
    """{image row id: 'current' | 'previous'}: per provider and label, the newest
    non-demoted ready image and the next one (what a demote or delete falls back to)."""
    out = {}
    by_label = {}
    for row in images:
        if row.state == 'ready' and not row.demoted:
            by_label.setdefault((row.provider, row.label), []).append(row)
    for rows in by_label.values():
        rows.sort(key=lambda r: (r.created, r.id), reverse=True)
        for row, role in zip(rows, ('current', 'previous')):
            out[row.id] = role
    return out


def image_dict(row, role, now):
    out = dataclasses.asdict(row)
    out['demoted'] = bool(row.demoted)
    out['role'] = role
    out['age'] = now - row.created
    return out


def list_images(db, config, provider=None, label=None, now=None):
    """Image rows per provider and label, oldest first, each with its role."""
    if provider is not None:
        check_provider(config, provider)
    if label is not None:
        check_label(config, label)
    now = time.time() if now is None else now
    rows = db.transact(lambda s: s.images(provider=provider, label=label))
    role = roles(rows)
    rows.sort(key=lambda r: (r.provider, r.label, r.created, r.id))
    return [image_dict(r, role.get(r.id), now) for r in rows]


def _offered(config, provider):
    return None if provider is None else {im.name for im in config.provider(provider).images}


def paused(db, config, provider=None, label=None, now=None):
    """The labels whose image builds are paused (cells.paused_rows), with their age:
    in the configuration (per provider) or in the database (one provider, or all)."""
    now = time.time() if now is None else now
    offered = _offered(config, provider)
    return [dict(row, age=None if row['since'] is None else now - row['since'])
            for row in cells.paused_rows(config, db, label=label)
            if offered is None or (row['label'] in offered
                                   and row['provider'] in (None, provider))]


def disabled(db, config, provider=None, label=None, now=None):
    """The labels switched off, on all providers (cells.disabled_rows), with their age."""
    now = time.time() if now is None else now
    offered = _offered(config, provider)
    return [dict(row, age=None if row['since'] is None else now - row['since'])
            for row in cells.disabled_rows(config, db)
            if label in (None, row['label']) and (offered is None or row['label'] in offered)]


def image_list(db, config, provider=None, label=None, now=None):
    """What ``image-list`` shows: {'images': [...], 'paused': [...], 'disabled': [...]}."""
    now = time.time() if now is None else now
    return {'images': list_images(db, config, provider, label, now),
            'paused': paused(db, config, provider, label, now),
            'disabled': disabled(db, config, provider, label, now)}


# -- nodes --------------------------------------------------------------------------

def _move(db, node, to_state, verb, now=None, **fields):
    """Transition `node` from the state it was read in; Changed if it moved meanwhile.
    Returns the row as it is now."""
    def tx(s):
        if s.transition(node, to_state, now=now, **fields):
            return True, s.get_node(node.id)
        return False, s.get_node(node.id)
    done, fresh = db.transact(tx)
    if not done:
        raise Changed('node %s changed meanwhile: it was %s, it is now %s; not %s'
                      % (describe(node), node.state, fresh.state if fresh else 'gone', verb))
    return fresh


def _image_names(db, node):
    row = db.transact(lambda s: s.get_image(node.image_id)) if node.image_id else None
    return {row.id: row.name} if row else {}


def hold(db, config, node, reason, hours=None, held_by=None, now=None):
    """Hold a ready, used or held node for `hours` (default hold-hours): the
    reaper keeps it until then, launch and fetch never hand it out."""
    if not reason or not reason.strip():
        raise UsageError('hold: give the reason (--reason TEXT)')
    if hours is None:
        hours = config.hold_hours
        if hours <= 0:
            raise UsageError('hold-hours is %g in %s: give --hours N' % (hours, config.path))
    elif hours <= 0:
        raise UsageError('--hours: expected a number > 0, got %g' % hours)
    if node.state not in HOLDABLE:
        raise GateError('node %s is in state %s; only a ready, used or held node can be held'
                        % (describe(node), node.state))
    now = time.time() if now is None else now
    held_by = held_by or user()
    fresh = _move(db, node, 'hold', 'held', now=now, hold_until=now + hours * HOUR,
                  held_by=held_by, hold_reason=reason)
    log.info('node %s: held until %s (%g h) by %s: %s', describe(fresh),
             console.utc(fresh.hold_until), hours, held_by, reason)
    return {'node': node_dict(fresh, _image_names(db, fresh), now), 'from_state': node.state}


def release(db, node, now=None):
    """A held node goes to delete; the reaper deletes its server."""
    if node.state != 'hold':
        raise GateError('node %s is in state %s, not held; only a held node can be released'
                        % (describe(node), node.state))
    now = time.time() if now is None else now
    fresh = _move(db, node, 'delete', 'released', now=now, fail_reason=RELEASED_BY_OPERATOR)
    log.info('node %s: released; the reaper deletes its server', describe(fresh))
    return {'node': node_dict(fresh, _image_names(db, fresh), now), 'from_state': node.state}


def delete(db, node, now=None):
    """Mark a node delete (the reaper, or delete_server, deletes its server)."""
    now = time.time() if now is None else now
    if node.state == 'delete':
        log.info('node %s: already marked delete', describe(node))
        fresh = node
    else:
        fresh = _move(db, node, 'delete', 'deleted', now=now, fail_reason=DELETED_BY_OPERATOR)
        log.info('node %s: marked delete (was %s)', describe(fresh), node.state)
    return {'node': node_dict(fresh, _image_names(db, fresh), now), 'from_state': node.state}


def delete_server(config, node, connect=None, environ=None):
    """Ask the node's cloud to delete its server now: (ok, what happened).

    The row is already in delete, so whatever happens here the reaper finishes."""
    if not node.external_id:
        return False, 'no server was recorded for it; the reaper finishes the delete'
    connect = connect or cloud.connect
    try:
        adapter = connect(config.provider(node.provider), environ=environ)
    except Exception as e:      # no clouds.yaml or credentials here, a provider gone from
        # the configuration: the row is marked, the reaper finishes
        return False, ('cannot reach provider %s (%s: %s); the reaper finishes the delete'
                       % (node.provider, getattr(e, 'reason', type(e).__name__),
                          str(e).splitlines()[0] if str(e) else 'no detail'))
    if adapter.delete_quietly('server', node.external_id, 'node %s' % describe(node)):
        return True, 'the cloud accepted the delete of server %s' % node.external_id
    return False, ('the cloud did not accept the delete of server %s (see above); the reaper '
                   'asks again' % node.external_id)


# -- images -------------------------------------------------------------------------

def _label_images(db, provider, label, now):
    rows = db.transact(lambda s: s.images(provider=provider, label=label))
    role = roles(rows)
    rows.sort(key=lambda r: (r.created, r.id))
    return [image_dict(r, role.get(r.id), now) for r in rows]


def _notes(db, config, provider, label, new):
    """Warnings, logged and returned: no ready image left, builds not paused."""
    notes = []
    if new is None:
        notes.append('%s %s: no ready image is left, so launches of this label stop until a '
                     'build succeeds' % (provider, label))
    if label not in cells.paused(config, config.provider(provider), db):
        notes.append('%s %s: image builds are not paused, so the next build makes a new '
                     'current image (devstack-gate image-pause %s --provider %s)'
                     % (provider, label, label, provider))
    for note in notes:
        log.warning('%s', note)
    return notes


def image_demote(db, config, provider, label, now=None):
    """Demote the current image (image.demote, as devstack-vm-update-image.py --demote)."""
    check_offered(config, provider, label)
    now = time.time() if now is None else now
    old, new = image.demote(db, provider, label)
    log.info('%s %s: demoted %s; current image is now %s', provider, label, old.name,
             new.name if new else 'none')
    return {'provider': provider, 'label': label, 'demoted': old.id,
            'current': new.id if new else None,
            'notes': _notes(db, config, provider, label, new),
            'images': _label_images(db, provider, label, now)}


def image_delete(db, config, provider, label, now=None):
    """The current image row goes to delete ('deleted-by-operator'): the previous
    ready image becomes current, and the reaper deletes the cloud image."""
    check_offered(config, provider, label)
    now = time.time() if now is None else now

    def tx(s):
        current = s.current_image(provider, label)
        if current is None:
            raise GateError('provider %s label %s has no current image to delete'
                            % (provider, label))
        if not s.transition(current, 'delete', now=now, fail_reason=DELETED_BY_OPERATOR):
            fresh = s.get_image(current.id)
            raise Changed('image %s (row %d) changed meanwhile: it was %s, it is now %s; '
                          'not deleted' % (current.name, current.id, current.state,
                                           fresh.state if fresh else 'gone'))
        return current, s.current_image(provider, label)
    old, new = db.transact(tx)
    log.info('%s %s: image %s (row %d) marked delete; current image is now %s; the reaper '
             'deletes it from the cloud', provider, label, old.name, old.id,
             new.name if new else 'none')
    return {'provider': provider, 'label': label, 'deleted': old.id,
            'current': new.id if new else None,
            'notes': _notes(db, config, provider, label, new),
            'images': _label_images(db, provider, label, now)}


def image_pause(db, config, label, provider=None, reason=None, set_by=None, now=None):
    """Pause image builds of a label (for one provider, or all): launches go on."""
    check_label(config, label)
    if provider is not None:
        check_offered(config, provider, label)
    set_by = set_by or user()
    db.transact(lambda s: s.pause_image(label, provider, reason=reason, set_by=set_by, now=now))
    log.info('%s: image builds paused on %s by %s%s; launches go on from the current image',
             label, provider or 'all providers', set_by, ': ' + reason if reason else '')
    return {'label': label, 'provider': provider,
            'paused': paused(db, config, provider, label, now)}


def image_unpause(db, config, label, provider=None, now=None):
    """Lift the run-time pause of a label (one provider's, or every one)."""
    check_label(config, label)
    if provider is not None:
        check_offered(config, provider, label)
    lifted = db.transact(lambda s: s.unpause_image(label, provider))
    left = paused(db, config, provider, label, now)
    log.info('%s: %s', label, 'image builds unpaused on %s' % (provider or 'all providers')
             if lifted else 'was not paused in the database')
    for pause in left:
        if pause['set_in'] == 'config':
            raise GateError('label %s: still paused in %s for provider %s (paused: true); '
                            'set paused: false there' % (label, config.path, pause['provider']))
        raise GateError('label %s: still paused for all providers%s; devstack-gate image-unpause '
                        '%s (without --provider) lifts it'
                        % (label, ' by %s' % pause['set_by'] if pause['set_by'] else '', label))
    return {'label': label, 'provider': provider, 'lifted': lifted, 'paused': left}


#: probe_after of an operator's quarantine: never probed; it lasts until released.
NEVER = 1e18


def quarantines(db, config, provider=None, label=None, now=None):
    """The quarantines in force, with their age."""
    now = time.time() if now is None else now
    rows = db.transact(lambda s: s.quarantines(provider=provider, label=label))
    return [dict(dataclasses.asdict(q), age=now - q.since,
                 probe_after=None if q.probe_after >= NEVER else q.probe_after) for q in rows]


def quarantine(db, config, provider, label, reason, set_by=None, probe_minutes=None, now=None):
    """Quarantine a provider's label by hand: fetch takes its nodes only when no other
    provider has one, launch does not top it up.  It lasts until released, or, with
    probe_minutes, until a canary passes after that long."""
    check_offered(config, provider, label)
    if not reason or not reason.strip():
        raise UsageError('quarantine: give the reason (--reason TEXT)')
    now = time.time() if now is None else now
    set_by = set_by or user()
    probe_after = NEVER if probe_minutes is None else now + probe_minutes * 60
    new = db.transact(lambda s: s.quarantine(provider, label, set_by, reason, probe_after,
                                             now=now))
    log.info('%s %s: %s by %s: %s; %s', provider, label,
             'quarantined' if new else 'quarantine renewed', set_by, reason,
             'until released' if probe_minutes is None
             else 'a canary probes it after %g min' % probe_minutes)
    return {'quarantines': quarantines(db, config, provider, label, now)}


def quarantine_release(db, config, provider, label, set_by=None, now=None):
    check_offered(config, provider, label)
    set_by = set_by or user()
    if not db.transact(lambda s: s.release_quarantine(provider, label)):
        raise GateError('%s %s is not quarantined' % (provider, label))
    log.info('%s %s: quarantine released by %s; fetch and launch use it again', provider,
             label, set_by)
    return {'provider': provider, 'label': label, 'released_by': set_by,
            'quarantines': quarantines(db, config, now=now)}


def image_guard_undo(db, config, provider, label, set_by=None, now=None):
    """Undo the image guard's demotion of provider+label's newest image (health.guard_undo)."""
    check_offered(config, provider, label)
    row = health.guard_undo(db, provider, label, set_by or user(), now=now)
    now = time.time() if now is None else now
    return {'provider': provider, 'label': label, 'image': row.id,
            'images': _label_images(db, provider, label, now)}


def label_disable(db, config, label, reason, set_by=None, now=None):
    """Switch a label off: not launched, not built, skipped by gate runs."""
    check_label(config, label)
    if not reason or not reason.strip():
        raise UsageError('label-disable: give the reason (--reason TEXT)')
    set_by = set_by or user()
    db.transact(lambda s: s.disable_label(label, reason, set_by=set_by, now=now))
    log.info('%s: disabled by %s: %s; not launched, not built, skipped by gate runs',
             label, set_by, reason)
    return {'label': label, 'disabled': disabled(db, config, label=label, now=now)}


def label_enable(db, config, label, now=None):
    """Switch a label back on (its run-time switch; the configuration's stays)."""
    check_label(config, label)
    was = db.transact(lambda s: s.enable_label(label))
    log.info('%s: %s', label, 'enabled' if was else 'was not disabled in the database')
    if label in config.disabled_labels:
        raise GateError('label %s: still disabled in %s: %s; remove it from disabled-labels '
                        'there' % (label, config.path, config.disabled_labels[label]))
    return {'label': label, 'enabled': was,
            'disabled': disabled(db, config, label=label, now=now)}


# -- giving a held node (or a snapshot of it) to a developer (seed 000) -------------------

#: The longest public key file or text ``give`` reads (an RSA 16384 line is ~2.8 kB).
MAX_KEY_BYTES = 16384
GIVE_COMMAND_TIMEOUT = 60.0


def public_key(key):
    """(the one authorized_keys line, its comment, its SHA256 fingerprint) of `key`:
    a public key file's path or the key text.  Anything else (a private key,
    several lines, options before the type, a bad blob) is refused with one line
    that never echoes what was given (it may be a private key)."""
    source = 'the text given'
    text = key or ''
    path = os.path.expanduser(text.strip())
    if text.strip() and '\n' not in text.strip() and os.path.isfile(path):
        source = 'file %s' % path
        try:
            with open(path, 'rb') as f:
                text = f.read(MAX_KEY_BYTES + 1).decode('utf-8')
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError('--key: cannot read %s: %s' % (path, getattr(e, 'strerror', e) or e))

    def bad(what):
        return UsageError('--key: %s is not one public key line (TYPE BASE64 [COMMENT], as in '
                          '~/.ssh/id_ed25519.pub): %s' % (source, what))
    if len(text) > MAX_KEY_BYTES:
        raise bad('longer than %d bytes' % MAX_KEY_BYTES)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise bad('%d lines' % len(lines) if lines else 'empty')
    parts = lines[0].split(None, 2)
    if len(parts) < 2:
        raise bad('no key after the type')
    kind, body = parts[0], parts[1]
    comment = parts[2] if len(parts) == 3 else ''
    try:
        blob = base64.b64decode(body, validate=True)
        parsed = ssh.paramiko.PKey.from_type_string(kind, blob)
    except Exception:       # binascii.Error, SSHException, UnknownKeyType, struct errors
        raise bad('not a valid public key of a known type')
    if parsed.get_name() != kind or parsed.can_sign():
        raise bad('not a valid public key of a known type')
    if not comment.isprintable():
        raise bad('the comment has control characters')
    fingerprint = 'SHA256:' + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip('=')
    line = '%s %s' % (kind, body) + (' ' + comment if comment else '')
    return line, comment, fingerprint


def known_hosts_line(node, port):
    """The node's pinned host key as a known_hosts line."""
    host = node.ip if int(port) == 22 else '[%s]:%d' % (node.ip, int(port))
    return '%s %s' % (host, node.host_key)


def _require_held(node, verb):
    if node.state != 'hold':
        raise GateError('node %s is in state %s, not held; only a held node can be %s'
                        % (describe(node), node.state, verb))


def _note_on_hold(db, node, note):
    """Append `note` to a held node's hold_reason (what list shows); False if the node
    is no longer held as it was read (then only the log has it)."""
    reason = '%s; %s' % (node.hold_reason, note) if node.hold_reason else note

    # hold -> hold at the time it was held: the note is added only while the node is
    # still held, and its hold_until and state_time stay as they are.
    done = db.transact(lambda s: s.transition(node, 'hold', now=node.state_time,
                                              hold_reason=reason))
    if not done:
        log.warning('node %s changed meanwhile (no longer held as read); not recorded in its '
                    'hold reason: %s', describe(node), note)
    return done


def give(db, config, node, key, given_by=None, now=None, connect=ssh.connect):
    """Add a developer's public key to a held node's ~/.ssh/authorized_keys (providers
    with ``giftable: true`` only), over SSH with the pool key and the node's recorded
    host key pinned; record it in the hold reason; return how to connect."""
    line, comment, fingerprint = public_key(key)
    _require_held(node, 'given to a developer')
    provider = config.provider(node.provider)
    if not provider.giftable:
        raise GateError('node %s: provider %s is not giftable; set giftable: true for it in %s '
                        'to give its held nodes to developers'
                        % (describe(node), provider.name, config.path))
    if not (node.ip and node.username and node.host_key):
        raise GateError('node %s: no address, login or host key was recorded for it; it '
                        'cannot be given' % describe(node))
    now = time.time() if now is None else now
    given_by = given_by or user()
    pkey, _ = ssh.ensure_private_key(config.ssh_private_key)
    quoted = shlex.quote(line)
    command = ('umask 077 && mkdir -p ~/.ssh && touch ~/.ssh/authorized_keys && '
               '{ grep -qxF %s ~/.ssh/authorized_keys || printf "%%s\\n" %s '
               '>> ~/.ssh/authorized_keys; }' % (quoted, quoted))
    try:
        client = connect(node.ip, provider.ssh_port, node.username, pkey,
                         timeout=config.ssh_connect_timeout, host_key=node.host_key)
    except ssh.SSHError:
        raise
    except Exception as e:      # refused, unreachable, auth failed
        raise ssh.SSHError('node %s: cannot log in to %s@%s:%d: %s: %s'
                           % (describe(node), node.username, node.ip, provider.ssh_port,
                              type(e).__name__, str(e).splitlines()[0] if str(e) else ''))
    try:
        status, output = ssh.run(client, command, timeout=GIVE_COMMAND_TIMEOUT)
    finally:
        client.close()
    if status != 0:
        raise ssh.SSHError('node %s: adding the key to ~/.ssh/authorized_keys exited %d: %s'
                           % (describe(node), status,
                              (output.strip().splitlines() or ['no output'])[-1]))
    given_to = comment or fingerprint
    note = 'given to %s (%s) by %s at %s' % (given_to, fingerprint, given_by, console.utc(now))
    log.info('node %s: key %s added to ~%s/.ssh/authorized_keys; %s', describe(node),
             fingerprint, node.username, note)
    recorded = _note_on_hold(db, node, note)
    fresh = db.transact(lambda s: s.get_node(node.id)) or node
    known_hosts = '%s.known_hosts' % (node.name or 'node-%d' % node.id)
    return {'node': node_dict(fresh, _image_names(db, fresh), now), 'given_to': given_to,
            'fingerprint': fingerprint, 'given_by': given_by, 'recorded': recorded,
            'known_hosts_file': known_hosts,
            'known_hosts_line': known_hosts_line(node, provider.ssh_port),
            'ssh_command': 'ssh -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -p %d '
                           '%s@%s' % (known_hosts, provider.ssh_port, node.username, node.ip)}


def snapshot_name(config, node, now):
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))
    return '%s-held-%s' % (node.name or '%s-node-%d' % (config.node_prefix, node.id), stamp)


def snapshot(db, config, node, connect=None, environ=None, now=None, clock=time.monotonic,
             sleep=time.sleep, made_by=None):
    """Snapshot a held node's server for a developer to boot elsewhere.

    The image carries our tags with dg-kind ``held-snapshot`` and the node id
    before we wait on it, so the reaper knows it (it is never a leak) and deletes
    it snapshot-keep-hours after its creation."""
    _require_held(node, 'snapshotted')
    if not node.external_id:
        raise GateError('node %s: no server was recorded for it; nothing to snapshot'
                        % describe(node))
    provider = config.provider(node.provider)
    now = time.time() if now is None else now
    made_by = made_by or user()
    adapter = (connect or cloud.connect)(provider, environ=environ)
    name = snapshot_name(config, node, now)
    metadata = cloud.tags(provider.name, reap.KIND_HELD_SNAPSHOT, node.label, node_id=node.id)
    metadata[reap.META_SNAPSHOT_TIME] = '%d' % now
    image_id = adapter.create_image(node.external_id, name, metadata)
    keep_until = now + config.snapshot_keep_hours * HOUR
    log.info('node %s: snapshotting server %s as %s (%s); the reaper deletes it after %s '
             '(snapshot-keep-hours %g)', describe(node), node.external_id, name, image_id,
             console.utc(keep_until), config.snapshot_keep_hours)
    what = 'node %s: snapshot %s (%s)' % (describe(node), name, image_id)
    try:
        result = wait.for_state(lambda: adapter.get_image(image_id), 'active',
                                clock() + config.snapshot_timeout, config.poll_interval, what,
                                failed=('failed', 'gone'), clock=clock, sleep=sleep)
    except wait.Failure as e:
        adapter.delete_quietly('image', image_id, what)
        raise GateError('%s ended %s; deleted' % (what, e.last.detail or e.last.state))
    except wait.Timeout:
        raise GateError('%s: not active after snapshot-timeout %g s; the reaper deletes it '
                        'after snapshot-keep-hours' % (what, config.snapshot_timeout))
    log.info('%s: active', what)
    recorded = _note_on_hold(db, node, 'snapshot %s (%s) by %s at %s' % (
        name, image_id, made_by, console.utc(now)))
    return {'node': node_dict(node, _image_names(db, node), now), 'provider': provider.name,
            'image': {'id': image_id, 'name': name, 'state': result.state},
            'made_by': made_by, 'recorded': recorded, 'keep_until': keep_until,
            'keep_hours': config.snapshot_keep_hours}

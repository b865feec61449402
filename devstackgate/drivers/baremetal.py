"""The bare-metal driver: static machines handed to one node at a time and reset, not deleted.

Seed 003's integration tests on bare metal: each machine's root filesystem is
an LVM copy-on-write snapshot of a pristine root; after a test the machine
drops the used snapshot, makes a fresh one and kexecs into it, clean again in
seconds (node-setup/baremetal-setup.sh once, node-setup/baremetal-reset.sh
after each use).

The stages see these machines through the same seam as a cloud's servers
(devstackgate.cloud.Adapter), so launch, fetch, gate, hold, reap and the
operator CLI treat their nodes like any other:

- a *server* is one use of a host: ``create_server`` takes a free host of the
  label and returns the use's id (``HOST/NODE-ID``), recorded as the node's
  external_id; ``list_servers`` lists the uses in progress;
- a use is ``building`` until the host answers SSH as the user, with the
  configured host key, *clean*: the marker file written just before its last
  reset (``MARKER``, in the user's home, so on the snapshot the reset
  discards) is gone.  A host that does not come back within its reset-timeout
  is ``error``, with the reason; launch then frees it (its node is marked
  delete with the reason) and takes it again on a later run;
- ``delete_server`` ends a use: a host that answered clean in it is reset (the
  marker, then the reset command, over SSH; the command returns at once and
  resets in the background), one that never did is freed as it is (nobody
  used it).  A reset that cannot be run (the host is down, the command
  fails) raises ``ResetFailed``: the use stays, and the reaper asks again on
  its next run.

Which host is in which use is kept in the pool's database (the ``hosts``
table), with compare-and-set updates, because launch, gate and reap run on
different Jenkins slaves.  Nothing is imaged here: ``builds_images`` is False,
so launch boots its labels without an image row and update-image has nothing
to build; snapshots are refused.
"""

import concurrent.futures
import dataclasses
import datetime
import json
import logging
import secrets as pysecrets
import socket
import threading
import time

import paramiko

import vmdatabase
from devstackgate import cloud, ssh
from devstackgate.cloud import CloudError, NotFound, QuotaExceeded
from devstackgate.errors import GateError

log = logging.getLogger('cloud')

#: Written in the user's home just before a reset; a host is back once it answers without it.
MARKER = '.devstack-gate-reset-requested'
#: The one flavor of a bare-metal label (launch asks for the smallest that fits min-ram 0).
FLAVOR = cloud.Flavor('bare-metal', 'bare-metal', 0, 0, 0)
#: Hosts probed at once while their uses wait for them.
PROBE_WORKERS = 16
#: The host-key types a configured fingerprint is looked for among, in turn.
FINGERPRINT_TYPES = (('ssh-ed25519',), ('ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384',
                                        'ecdsa-sha2-nistp521'), ('rsa-sha2-512', 'rsa-sha2-256'))


class ResetFailed(CloudError):
    """A host's reset could not be started (the host is down, the command failed)."""
    reason = 'reset-failed'


class Unsupported(CloudError):
    reason = 'unsupported'


@dataclasses.dataclass(frozen=True)
class Probe:
    """What one SSH probe of a host coming back found."""
    clean: bool
    reason: str = None          # why it is not (yet) usable
    fatal: bool = False         # a wrong host key: no waiting will fix it


def _iso(epoch):
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        '%Y-%m-%dT%H:%M:%SZ')


def _first_line(text):
    lines = (text or '').strip().splitlines()
    return lines[-1][:200] if lines else 'no output'


class Adapter(cloud.Adapter):
    def __init__(self, provider, environ=None, db=None, sleep=time.sleep, clock=time.monotonic):
        super().__init__(provider, sleep=sleep, clock=clock)
        self.settings = provider.settings
        # The stages pass theirs (a dry run's is read-only: probes then record nothing);
        # the gate and the operator CLI, which only end uses, open one here.
        self.db = db if db is not None else vmdatabase.Database(self.settings.database,
                                                                environ=environ)
        self._pkey = None
        self._probes = {}           # host name -> (clock() of the probe, Probe)
        self._lock = threading.Lock()

    # -- the hosts table --------------------------------------------------
    def _rows(self):
        """{name: Host row} of the configured hosts; a host seen for the first time
        gets its row (none is written by a read-only database: it is shown free)."""
        names = [h.name for h in self.settings.hosts]

        def tx(s):
            rows = {r.name: r for r in s.hosts(self.name)}
            missing = [n for n in names if n not in rows]
            if missing and not self.db.read_only:
                for name in missing:
                    s.add_host(self.name, name)
                rows = {r.name: r for r in s.hosts(self.name)}
            return rows
        rows = self.db.transact(tx)
        for name in names:
            rows.setdefault(name, vmdatabase.Host(self.name, name, None, None, None, 0, None,
                                                  None, None))
        return {n: rows[n] for n in names}

    def _set(self, row, **fields):
        """Compare-and-set one host row (False: it changed meanwhile, or a dry run)."""
        if self.db.read_only:
            return False
        return self.db.transact(lambda s: s.update_host(row, **fields))

    def _key(self):
        with self._lock:
            if self._pkey is None:
                self._pkey, _ = ssh.ensure_private_key(self.settings.ssh_private_key)
            return self._pkey

    # -- SSH to a host ----------------------------------------------------
    def _login(self, host, timeout):
        """An SSH client on the host, its host key checked when one is configured."""
        pinned = host.host_key if host.host_key and not host.host_key.startswith('SHA256:') \
            else None
        try:
            client = ssh.connect(host.address, self.provider.ssh_port, host.username,
                                 self._key(), timeout, host_key=pinned)
        except ssh.HostKeyMismatch:
            raise ssh.HostKeyMismatch('%s:%s does not offer the configured host-key'
                                      % (host.address, self.provider.ssh_port))
        if host.host_key and host.host_key.startswith('SHA256:'):
            # A fingerprint does not say its key's type, and a host offers several keys:
            # each type the host shows is checked, the one it prefers first.
            seen = [ssh.fingerprint(ssh.remote_host_key(client))]
            for types in FINGERPRINT_TYPES:
                if host.host_key in seen:
                    break
                client.close()
                try:
                    client = ssh.connect(host.address, self.provider.ssh_port, host.username,
                                         self._key(), timeout, host_key_types=types)
                except paramiko.SSHException:
                    client = None           # the host offers no key of this type
                    continue
                seen.append(ssh.fingerprint(ssh.remote_host_key(client)))
            if host.host_key not in seen:
                if client is not None:
                    client.close()
                raise ssh.HostKeyMismatch('%s:%s offers %s, not the configured host-key %s'
                                          % (host.address, self.provider.ssh_port,
                                             ', '.join(dict.fromkeys(seen)), host.host_key))
        return client

    def probe(self, host):
        """Is the host up, the configured one, and clean (no reset marker)?"""
        timeout = self.settings.probe_timeout
        try:
            client = self._login(host, timeout)
        except ssh.HostKeyMismatch as e:
            return Probe(False, 'wrong host key: %s' % e, fatal=True)
        except (OSError, EOFError, paramiko.SSHException) as e:
            return Probe(False, 'not answering SSH (%s)' % (
                str(e).splitlines()[0] if str(e) else type(e).__name__))
        try:
            status, _ = ssh.run(client, 'test ! -e %s' % MARKER, timeout)
        except (ssh.SSHError, OSError, EOFError, paramiko.SSHException) as e:
            return Probe(False, 'probe failed (%s)' % (
                str(e).splitlines()[0] if str(e) else type(e).__name__))
        finally:
            client.close()
        if status != 0:
            return Probe(False, 'still the system from before its reset')
        return Probe(True)

    def _probe_all(self, hosts):
        """{name: Probe} of the hosts, in parallel; a host probed less than
        probe-interval ago keeps that probe's answer."""
        now = self._clock()
        due, out = [], {}
        with self._lock:
            for host in hosts:
                last = self._probes.get(host.name)
                if last and now - last[0] < self.settings.probe_interval:
                    out[host.name] = last[1]
                else:
                    due.append(host)
        if due:
            with concurrent.futures.ThreadPoolExecutor(min(PROBE_WORKERS, len(due))) as pool:
                for host, probe in zip(due, pool.map(self.probe, due)):
                    out[host.name] = probe
            with self._lock:
                for host in due:
                    self._probes[host.name] = (now, out[host.name])
        return out

    # -- servers: the uses of hosts ---------------------------------------
    def list_servers(self):
        rows = self._rows()
        hosts = {h.name: h for h in self.settings.hosts}
        waiting = [hosts[n] for n, r in rows.items() if r.allocation and not r.verified]
        probes = self._probe_all(waiting)
        now = time.time()
        servers = []
        for name, row in rows.items():
            if not row.allocation:
                continue
            host, probe = hosts[name], probes.get(name)
            if probe is not None and probe.clean:
                if self._set(row, verified=1, reason=None) or self.db.read_only:
                    row = dataclasses.replace(row, verified=1, reason=None)
                log.info('%s: host %s is up and clean', self.name, name)
            servers.append(self._server(row, host, probe, now))
        return servers

    def _server(self, row, host, probe, now):
        use = json.loads(row.metadata or '{}')
        state, fault, detail = 'building', None, 'resetting'
        if row.verified:
            state, detail = 'active', 'up'
        elif probe is not None and probe.fatal:
            state, fault = 'error', 'host %s: %s' % (host.name, probe.reason)
        else:
            since = max(row.allocated or 0, row.reset_at or 0)
            detail = probe.reason if probe is not None else 'resetting'
            if now - since > host.reset_timeout:
                state = 'error'
                fault = ('host %s did not come back clean within reset-timeout %g s (%s)'
                         % (host.name, host.reset_timeout, detail))
        if fault and row.reason != fault:
            self._set(row, reason=fault)
        return cloud.Server(id=row.allocation, name=use.get('name') or host.name, state=state,
                            metadata=use.get('tags') or {},
                            address=host.address if state == 'active' else None,
                            image_id=None, created=_iso(row.allocated), fault=fault,
                            detail=detail)

    def get_server(self, server_id):
        for server in self.list_servers():
            if server.id == server_id:
                return server
        raise NotFound('provider %s: no use %s of a host' % (self.name, server_id))

    def create_server(self, name, image_id, flavor_id, key_name, metadata):
        """Take a free host of the label (metadata dg-label): healthy ones first,
        then those whose reset is longest past."""
        label = metadata.get(cloud.META_LABEL)
        members = [h.name for h in self.settings.hosts if h.label == label]
        token = metadata.get(cloud.META_NODE_ID) or pysecrets.token_hex(4)
        rows = self._rows()
        free = sorted((rows[n] for n in members if rows[n].allocation is None
                       and rows[n].resetting is None),
                      key=lambda r: (r.reason is not None, r.reset_at or 0))
        use = json.dumps({'name': name, 'tags': metadata}, sort_keys=True)
        for row in free:
            allocation = '%s/%s' % (row.name, token)
            if self._set(row, allocation=allocation, metadata=use, allocated=time.time(),
                         verified=0):
                return allocation
        raise QuotaExceeded('provider %s: no free host with label %s (%d host(s), all in use '
                            'or being reset)' % (self.name, label, len(members)))

    def delete_server(self, server_id):
        """End a use: reset the host if it answered clean in it, else free it as it is."""
        row = next((r for r in self._rows().values() if r.allocation == server_id), None)
        if row is None:
            return False
        host = self.settings.host(row.name)
        freed = dict(allocation=None, metadata=None, allocated=None, verified=0)
        if not row.verified:        # it never came back clean in this use: nobody used it
            self._set(row, **freed)
            return True
        started = time.time()
        busy_for = self.settings.reset_command_timeout + self.settings.probe_timeout
        if row.resetting is not None and started - row.resetting < busy_for:
            return True             # another run is resetting it right now
        if not self._set(row, resetting=started):
            return True             # another run took it first
        row = dataclasses.replace(row, resetting=started)
        try:
            self.reset(host)
        except ResetFailed as e:
            self._set(row, resetting=None, reason=str(e))
            raise
        self._set(row, resetting=None, reset_at=started, reason=None, **freed)
        with self._lock:
            self._probes.pop(host.name, None)
        log.info('%s: host %s reset requested (use %s ended)', self.name, host.name, server_id)
        return True

    def reset(self, host):
        """Write the marker and run the host's reset command, over SSH."""
        where = 'provider %s: host %s' % (self.name, host.name)
        try:
            client = self._login(host, self.settings.probe_timeout)
        except ssh.HostKeyMismatch as e:
            raise ResetFailed('%s: not reset: wrong host key: %s' % (where, e))
        except (OSError, EOFError, socket.timeout, paramiko.SSHException) as e:
            raise ResetFailed('%s: cannot log in to reset it (%s)' % (
                where, str(e).splitlines()[0] if str(e) else type(e).__name__))
        try:
            status, output = ssh.run(client, 'touch %s && %s' % (MARKER, host.reset_command),
                                     self.settings.reset_command_timeout)
        except ssh.CommandTimeout:
            raise ResetFailed('%s: the reset command did not return within %g s'
                              % (where, self.settings.reset_command_timeout))
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ResetFailed('%s: the connection dropped during the reset command (%s)'
                              % (where, type(e).__name__))
        finally:
            client.close()
        if status != 0:
            raise ResetFailed('%s: the reset command exited %d: %s'
                              % (where, status, _first_line(output)))

    # -- images, flavors, keypairs: none --------------------------------------
    def list_images(self):
        return []

    def get_image(self, image_id):
        raise NotFound('provider %s: bare-metal hosts have no images' % self.name)

    def create_image(self, server_id, name, metadata):
        raise Unsupported('provider %s: a bare-metal host cannot be snapshotted (its pristine '
                          'root is its image)' % self.name)

    def delete_image(self, image_id):
        return False

    def list_flavors(self):
        return [FLAVOR]

    def list_keypairs(self):
        return []

    def ensure_keypair(self, name, public_key):
        raise Unsupported('provider %s: bare-metal hosts take no keypairs (authorize the pool '
                          'key on each host at set-up)' % self.name)

    def delete_keypair(self, name):
        return False

    def pool_keypair(self, public_key):
        return None                 # authorized on each host at set-up

    def classify(self, what, exc):
        if isinstance(exc, GateError):
            return exc, None
        raise exc

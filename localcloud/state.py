"""What one local cloud holds and how its objects live: servers, images,
keypairs, tokens, quota usage.  No HTTP here; the API modules translate.

Life of a server::

    create_server()  -> BUILD (task_state spawning); outcome decided now from
                        the cloud's seeded random generator
    after boot-delay -> ACTIVE: the image's directory is copied into a fresh
                        node root (with the bad-image marker set or removed)
                        and a NodeHost (sshd) starts on the node's own
                        loopback address; or ERROR with a fault; or nothing
                        ever happens (stuck in BUILD)
    node-death       -> if create_server() drew it, "after" seconds past
                        ACTIVE (or at once through kill_node()) the NodeHost
                        is stopped and replaced by an unreachable one on the
                        same address and port; the server stays ACTIVE
    delete_server()  -> the NodeHost stops and the root is removed before the
                        204; with lying-delete-lists N the record keeps
                        showing up in the next N list calls first

Life of a snapshot image: createImage -> queued -> saving (the node root is
copied into the image store) -> after snapshot-delay active, or killed.

With the network service (``network-service: true``) every server with an
address has a port, and floating IPs come from the floating range: created
DOWN, ACTIVE while attached to a port (a TcpForwarder relays the floating
address's SSH port to the server's fixed address, and the server's
``floating_addresses`` lists it), DOWN again when detached or when the
server is deleted (the floating IP itself stays until it is deleted).

All mutable state is guarded by ``self.lock``; slow work (copying trees,
starting and stopping NodeHosts) runs outside it.
"""

import base64
import errno
import io
import hashlib
import ipaddress
import itertools
import logging
import os
import random
import re
import secrets
import selectors
import shutil
import socket
import threading
import time
import uuid
from collections import Counter, deque
from datetime import datetime, timezone

import paramiko
from cryptography.hazmat.primitives import serialization

from localcloud import faults as faults_mod
from localcloud.scheduler import Scheduler
from localcloud.sshhost import NodeHost

LOG = logging.getLogger("localcloud")

#: How many addresses a boot tries when binding fails (address taken by a
#: parallel run or a lingering socket) before the server goes to ERROR.
BIND_ATTEMPTS = 32
NO_VALID_HOST = ("No valid host was found. There are not enough hosts "
                 "available.")


class ApiError(Exception):
    """An error answer: HTTP status, message, extra headers.  Each API module
    renders it in its own service's error format."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def iso(ts, micro=False):
    """Nova/glance style UTC timestamp ("2013-09-03T04:01:32Z")."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    if micro:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def copy_tree(src, dst):
    """Copy a directory tree with modes, times and symlinks (like cp -a).

    Files that vanish while we copy (a node still running commands) are
    skipped, sockets and fifos are ignored."""
    os.makedirs(dst)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = os.path.join(dst, rel) if rel != "." else dst
        for name in dirnames + filenames:
            source = os.path.join(dirpath, name)
            target = os.path.join(target_dir, name)
            try:
                if os.path.islink(source):
                    os.symlink(os.readlink(source), target)
                elif name in dirnames:
                    os.mkdir(target)
                elif os.path.isfile(source):
                    shutil.copy2(source, target, follow_symlinks=False)
            except FileNotFoundError:
                continue
    # Directory times change while we fill them: copy their metadata last.
    for dirpath, dirnames, _ in os.walk(src):
        for name in dirnames:
            source = os.path.join(dirpath, name)
            if os.path.islink(source):
                continue
            target = os.path.join(dst, os.path.relpath(source, src))
            try:
                shutil.copystat(source, target)
            except (FileNotFoundError, NotADirectoryError):
                pass
    shutil.copystat(src, dst)


def tree_size(path):
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def remove_tree(path):
    if path and os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def parse_public_key(line):
    """(type, blob, fingerprint) of an OpenSSH public key line, or an
    exception.  Checked the way nova's crypto.generate_fingerprint does (with
    cryptography's loader, which refuses truncated keys that paramiko
    accepts); the fingerprint is the MD5 of the key blob."""
    parts = line.strip().split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line")
    serialization.load_ssh_public_key(line.strip().encode("utf-8"))
    blob = base64.b64decode(parts[1], validate=True)
    digest = hashlib.md5(blob).hexdigest()
    fingerprint = ":".join(digest[i:i + 2] for i in range(0, 32, 2))
    return parts[0], blob, fingerprint


class Token:
    def __init__(self, id, issued, expires, scoped):
        self.id, self.issued, self.expires, self.scoped = id, issued, expires, scoped
        self.audit_id = secrets.token_urlsafe(16)


class Keypair:
    def __init__(self, id, name, public_key, fingerprint, type, created):
        self.id, self.name = id, name
        self.public_key, self.fingerprint = public_key, fingerprint
        self.type, self.created = type, created


class Image:
    def __init__(self, id, name, seq, owner, store, owned, status="queued",
                 visibility="private", properties=None, protected=False,
                 min_ram=0, min_disk=0):
        now = time.time()
        self.id, self.name, self.seq, self.owner = id, name, seq, owner
        self.store, self.owned = store, owned
        self.status, self.visibility = status, visibility
        self.properties = dict(properties or {})
        self.protected = protected
        self.min_ram, self.min_disk = min_ram, min_disk
        self.created = self.updated = now
        self.size = None
        self.checksum = None

    def snapshot(self):
        return dict(vars(self))


class Server:
    def __init__(self, id, name, seq, flavor, image_id, key_name, public_key,
                 metadata, outcome, boot_delay):
        now = time.time()
        self.id, self.name, self.seq = id, name, seq
        self.flavor, self.image_id = flavor, image_id
        self.key_name, self.public_key = key_name, public_key
        self.metadata = dict(metadata)
        self.outcome, self.boot_delay = outcome, boot_delay
        self.created = self.updated = now
        self.launched_at = None
        self.status, self.vm_state, self.task_state = "BUILD", "building", "spawning"
        self.power_state = 0
        self.address = None
        self.mac = None
        self.root = None
        self.host = None
        self.host_key_line = None
        self.fault = None
        self.booting = False
        self.deleted = False
        self.deleted_at = None
        self.linger = 0
        self.purged = False
        self.timer = None       # the pending boot, then the pending death
        # node-death: seconds after ACTIVE it dies (None: never), when (wall
        # clock) it is due and when it died
        self.death_after = None
        self.dies_at = None
        self.died_at = None
        self.bad_image = None   # the bad-images marker's line, if it has one
        # floating IPs attached to its port (network service), in attach
        # order; nova lists them in addresses as OS-EXT-IPS:type floating
        self.floating_addresses = []
        self.admin_pass = secrets.token_urlsafe(9)
        self.description = None

    def snapshot(self):
        data = dict(vars(self))
        data.pop("host")
        data.pop("timer")
        data["metadata"] = dict(self.metadata)
        data["fault"] = dict(self.fault) if self.fault else None
        data["floating_addresses"] = list(self.floating_addresses)
        return data


class FloatingIP:
    """A floating IP of the network service: an address of the floating
    range, attached (port_id, server_id, fixed_address set; a TcpForwarder
    relays its SSH port to the server's) or not (status DOWN)."""

    def __init__(self, id, address, seq, description=""):
        now = time.time()
        self.id, self.address, self.seq = id, address, seq
        self.description = description
        self.port_id = self.server_id = self.fixed_address = None
        self.status = "DOWN"
        self.created = self.updated = now
        self.revision = 0
        self.forwarder = None

    def snapshot(self):
        data = dict(vars(self))
        data.pop("forwarder")
        return data


class CloudState:
    """Servers, images, keypairs and tokens of one cloud (see module doc)."""

    def __init__(self, config, state_dir):
        self.config = config
        self.name = config.name
        self.lock = threading.RLock()
        # One generator per kind of decision, so that e.g. how often a client
        # polls (API draws) never changes which boots fail (boot draws).
        seed = config.seed if config.seed is not None else \
            secrets.randbits(64)
        self.rng_api = random.Random("%s/api" % seed)
        self.rng_boot = random.Random("%s/boot" % seed)
        self.rng_snapshot = random.Random("%s/snapshot" % seed)
        self.rng_death = random.Random("%s/death" % seed)
        self.faults = faults_mod.merge(config.faults, {})
        self.state_dir = state_dir
        self.nodes_dir = os.path.join(state_dir, "nodes")
        self.images_dir = os.path.join(state_dir, "images")
        os.makedirs(self.nodes_dir, exist_ok=True)
        os.makedirs(self.images_dir, exist_ok=True)
        # identities, stable for the life of the cloud
        ident = random.Random("%s/%s" % (config.name, config.seed))
        self.user_id = "%032x" % ident.getrandbits(128)
        self.project_id = "%032x" % ident.getrandbits(128)
        self.admin_project_id = "%032x" % ident.getrandbits(128)
        # the network service's objects (drawn after the identities above,
        # so those are the same with or without it)
        self.private_network_id, self.private_subnet_id, \
            self.public_network_id, self.public_subnet_id = [
                str(uuid.UUID(int=ident.getrandbits(128), version=4))
                for _ in range(4)]
        self.network_created = time.time()
        self.domain_id = "default"
        self.host_id = hashlib.sha224(
            ("%s%s" % (self.project_id, config.name)).encode()).hexdigest()

        self.flavors = {f.id: f for f in config.flavors}
        self.servers = {}       # visible: live and lingering
        self.history = {}       # purged (deleted) servers, for admin + markers
        self.images = {}
        self.keypairs = {}
        self.tokens = {}
        self.stats = Counter()
        self.statuses = Counter()
        self.events = Counter()
        # key -> the newest (start, end) wall-clock times of its API calls
        self.spans = {}
        self._seq = itertools.count(1)
        self._keypair_ids = itertools.count(1)
        self._addresses_in_use = set()
        self._address_cursor = 0
        self.floating_ips = {}
        self._floating_cursor = 0
        self.scheduler = Scheduler("localcloud-%s" % self.name)
        self._closed = False
        for image in config.images:
            self._seed_image(image)

    # -- helpers -------------------------------------------------------------------

    def _seed_image(self, image_config):
        image_id = image_config.id or str(uuid.uuid4())
        if image_config.directory:
            store, owned = image_config.directory, False
        else:
            store, owned = os.path.join(self.images_dir, image_id), True
            os.makedirs(store, exist_ok=True)
        image = Image(image_id, image_config.name, next(self._seq),
                      owner=self.admin_project_id, store=store, owned=owned,
                      status="active", visibility="public",
                      properties=image_config.properties,
                      protected=image_config.protected,
                      min_ram=image_config.min_ram,
                      min_disk=image_config.min_disk)
        image.size = tree_size(store)
        self.images[image_id] = image
        LOG.info("cloud %s: base image %s (%s) from %s", self.name,
                 image_config.name, image_id, store if not owned else "nothing")

    def count(self, event):
        with self.lock:
            self.events[event] += 1

    # -- faults ------------------------------------------------------------------

    def get_faults(self):
        with self.lock:
            return faults_mod.merge(self.faults, {})

    def set_faults(self, update):
        with self.lock:
            self.faults = faults_mod.merge(self.faults, update)
            return faults_mod.merge(self.faults, {})

    def draw_api_fault(self, method=None):
        """Latency and the injected error for one API call: (seconds, status,
        retry-after); a DELETE also waits delete-latency."""
        with self.lock:
            f = self.faults
            latency = faults_mod.sample(self.rng_api, f["api-latency"])
            if method == "DELETE" and f["delete-latency"]["max"] > 0:
                latency += faults_mod.sample(self.rng_api, f["delete-latency"])
            status = None
            if faults_mod.chance(self.rng_api, f["api-error-rate"]):
                status = 500
            elif faults_mod.chance(self.rng_api, f["api-overlimit-rate"]):
                status = 429
            return latency, status, f["api-overlimit-retry-after"]

    # -- keystone ------------------------------------------------------------------

    def issue_token(self, scoped):
        with self.lock:
            now = time.time()
            for tid in [t for t, tok in self.tokens.items() if tok.expires < now]:
                del self.tokens[tid]
            token = Token("lc" + secrets.token_urlsafe(40), now,
                          now + self.faults["token-ttl"], scoped)
            self.tokens[token.id] = token
            self.events["tokens-issued"] += 1
            return token

    def check_token(self, token_id):
        """The valid token with this id, or None (unknown, revoked, expired)."""
        with self.lock:
            token = self.tokens.get(token_id or "")
            if token is None or token.expires < time.time():
                return None
            return token

    def revoke_tokens(self):
        with self.lock:
            count = len(self.tokens)
            self.tokens.clear()
        LOG.info("cloud %s: revoked %d tokens", self.name, count)
        return count

    # -- keypairs ------------------------------------------------------------------

    def create_keypair(self, name, public_key, key_type):
        """Returns (keypair, private key PEM or None)."""
        private = None
        if public_key is None:
            key = paramiko.RSAKey.generate(2048)
            buf = io.StringIO()
            key.write_private_key(buf)
            private = buf.getvalue()
            public_key = "ssh-rsa %s Generated-by-Nova\n" % key.get_base64()
        try:
            _, _, fingerprint = parse_public_key(public_key)
        except Exception:
            raise ApiError(400, "Keypair data is invalid: failed to generate "
                           "fingerprint") from None
        with self.lock:
            if name in self.keypairs:
                raise ApiError(409, "Key pair '%s' already exists." % name)
            keypair = Keypair(next(self._keypair_ids), name, public_key,
                              fingerprint, key_type, time.time())
            self.keypairs[name] = keypair
        LOG.info("cloud %s: keypair %s created", self.name, name)
        return keypair, private

    def get_keypair(self, name):
        with self.lock:
            keypair = self.keypairs.get(name)
        if keypair is None:
            raise ApiError(404, "Keypair %s not found for user %s"
                           % (name, self.user_id))
        return keypair

    def list_keypairs(self):
        with self.lock:
            return sorted(self.keypairs.values(), key=lambda k: k.name)

    def delete_keypair(self, name):
        with self.lock:
            self.get_keypair(name)
            del self.keypairs[name]

    # -- flavors -------------------------------------------------------------------

    def get_flavor(self, flavor_id):
        flavor = self.flavors.get(str(flavor_id))
        if flavor is None:
            raise ApiError(404, "Flavor %s could not be found." % flavor_id)
        return flavor

    # -- quota -----------------------------------------------------------------------

    def usage(self):
        with self.lock:
            servers = list(self.servers.values())
            return {"instances": len(servers),
                    "cores": sum(s.flavor.vcpus for s in servers),
                    "ram": sum(s.flavor.ram for s in servers)}

    def _check_quota(self, flavor, count):
        quota = self.faults["quota"]
        used = self.usage()
        wanted = {"instances": count, "cores": flavor.vcpus * count,
                  "ram": flavor.ram * count}
        overs = [r for r in ("cores", "instances", "ram")
                 if quota[r] is not None and used[r] + wanted[r] > quota[r]]
        if overs:
            def join(values):
                return ", ".join(str(v) for v in values)
            raise ApiError(403, "Quota exceeded for %s: Requested %s, but "
                           "already used %s of %s %s" % (
                               join(overs), join(wanted[r] for r in overs),
                               join(used[r] for r in overs),
                               join(quota[r] for r in overs), join(overs)))

    # -- servers -------------------------------------------------------------------

    def create_servers(self, name, image_id, flavor_id, key_name, metadata,
                       min_count=1, max_count=1):
        """Validate, check quota, record the servers in BUILD and schedule
        their boots.  Returns the list of new Servers."""
        with self.lock:
            image = self.images.get(image_id)
            if image is None:
                raise ApiError(400, "Can not find requested image")
            if image.status != "active":
                raise ApiError(400, "Image %s is not active." % image_id)
            flavor = self.flavors.get(flavor_id)
            if flavor is None:
                raise ApiError(400, "Flavor %s could not be found." % flavor_id)
            if image.min_ram and flavor.ram < image.min_ram:
                raise ApiError(400, "Flavor's memory is too small for "
                               "requested image.")
            if image.min_disk and flavor.disk < image.min_disk:
                raise ApiError(400, "Flavor's disk is too small for "
                               "requested image.")
            public_key = None
            if key_name is not None:
                keypair = self.keypairs.get(key_name)
                if keypair is None:
                    raise ApiError(400, "Invalid key_name provided.")
                public_key = keypair.public_key
            count = max_count
            while True:
                try:
                    self._check_quota(flavor, count)
                    break
                except ApiError:
                    if count <= min_count:
                        raise
                    count -= 1
            created = []
            for index in range(count):
                server_name = name if count == 1 else "%s-%d" % (name, index + 1)
                created.append(self._new_server(server_name, flavor, image_id,
                                                key_name, public_key, metadata))
            return created

    def _new_server(self, name, flavor, image_id, key_name, public_key,
                    metadata):
        f = self.faults
        if faults_mod.chance(self.rng_boot, f["stuck-build-rate"]):
            outcome = "stuck"
        elif faults_mod.chance(self.rng_boot, f["boot-error-rate"]):
            outcome = "error"
        elif faults_mod.chance(self.rng_boot, f["no-network-rate"]):
            outcome = "no-network"
        else:
            outcome = "active"
        delay = faults_mod.sample(self.rng_boot, f["boot-delay"])
        server = Server(str(uuid.uuid4()), name, next(self._seq), flavor,
                        image_id, key_name, public_key, metadata, outcome,
                        delay)
        # Drawn now, in creation order, not when the boot finishes (boots
        # finish on parallel workers): the same seed kills the same servers.
        death = f["node-death"]
        if outcome == "active" and faults_mod.chance(self.rng_death,
                                                     death["rate"]):
            server.death_after = faults_mod.sample(self.rng_death,
                                                   death["after"])
        self.servers[server.id] = server
        self.events["servers-created"] += 1
        if outcome != "stuck":
            server.timer = self.scheduler.call_later(delay, self._finish_boot,
                                                     server)
        LOG.info("cloud %s: server %s (%s) BUILD from image %s flavor %s",
                 self.name, server.id, name, image_id, flavor.name)
        return server

    def _finish_boot(self, server):
        with self.lock:
            if server.deleted or self._closed:
                return
            if server.outcome == "error":
                self._fail_boot(server, NO_VALID_HOST)
                return
            server.booting = True
            image = self.images.get(server.image_id)
            source = image.store if image is not None else None
            marker = None
            if image is not None and faults_mod.bad_image(self.faults,
                                                          image.name):
                marker = "%s (%s)\n" % (image.name, image.id)
        root = os.path.join(self.nodes_dir, server.id)
        host = None
        try:
            if source is None:
                raise _BootFailure("Image %s could not be found."
                                   % server.image_id)
            try:
                copy_tree(source, root)
            except OSError as e:
                raise _BootFailure("Failed to copy image %s: %s"
                                   % (server.image_id, e))
            try:
                self._mark_bad_image(root, marker)
            except OSError as e:
                raise _BootFailure("Failed to prepare image %s: %s"
                                   % (server.image_id, e))
            host = self._start_host(server, root)
        except _BootFailure as e:
            remove_tree(root)
            with self.lock:
                server.booting = False
                if not server.deleted:
                    self._fail_boot(server, str(e))
            return
        with self.lock:
            server.booting = False
            stale = server.deleted or self._closed
            if not stale:
                now = time.time()
                server.host = host
                server.root = root
                server.host_key_line = host.host_key_line
                server.status, server.vm_state = "ACTIVE", "active"
                server.task_state = None
                server.power_state = 1
                server.launched_at = server.updated = now
                self.events["servers-active"] += 1
                if server.outcome == "no-network":
                    self.events["servers-no-network"] += 1
                if marker is not None:
                    server.bad_image = marker.strip()
                    self.events["servers-bad-image"] += 1
                if server.death_after is not None:
                    server.dies_at = now + server.death_after
                    server.timer = self.scheduler.call_later(
                        server.death_after, self._die, server)
            else:
                self._addresses_in_use.discard(host.address)
        if stale:
            host.stop()
            remove_tree(root)
            return
        LOG.info("cloud %s: server %s (%s) ACTIVE at %s:%d after %.1f s%s%s%s",
                 self.name, server.id, server.name, server.address,
                 self.config.ssh_port, time.time() - server.created,
                 " (no network)" if server.outcome == "no-network" else "",
                 " (bad image)" if marker is not None else "",
                 " (dies in %.1f s)" % server.death_after
                 if server.death_after is not None else "")

    @staticmethod
    def _mark_bad_image(root, marker):
        """Write the bad-image marker (``marker`` is its line) or remove one
        the image brought along (a snapshot of a marked node, a base image
        directory): whether a node has it depends only on the name of the
        image it boots from."""
        path = os.path.join(root, faults_mod.BAD_IMAGE_MARKER)
        if os.path.lexists(path):
            os.unlink(path)
        if marker is not None:
            with open(path, "w") as f:
                f.write(marker)

    def _active_server(self, server_id, action):
        """The ACTIVE server (under the lock): ApiError 404 for an unknown or
        deleted one, 409 for one in another state."""
        server = self.servers.get(server_id)
        if server is None or server.deleted:
            raise ApiError(404, "Instance %s could not be found." % server_id)
        if server.status != "ACTIVE":
            raise ApiError(409, "Cannot %s instance %s while it is in vm_state %s"
                           % (action, server_id, server.vm_state))
        return server

    # -- node death --------------------------------------------------------------

    def kill_node(self, server_id):
        """Let an ACTIVE, reachable server die now (as node-death would);
        ApiError 404 for an unknown (or deleted) server, 409 for one that is
        not ACTIVE or does not answer SSH (no network, already dead)."""
        with self.lock:
            server = self._active_server(server_id, "kill")
            if server.died_at is not None or server.host is None \
                    or not server.host.reachable:
                raise ApiError(409, "Cannot kill instance %s: it does not "
                               "answer SSH already" % server_id)
        self._die(server)

    def _die(self, server):
        """Stop the server's NodeHost (every connection and command) and put
        an unreachable one on the same address and port: TCP is accepted, no
        banner ever comes.  The server stays ACTIVE and keeps its address
        and root; deleting it stops the new host."""
        with self.lock:
            old = server.host
            if server.deleted or self._closed or old is None \
                    or server.died_at is not None or not old.reachable:
                return
            server.died_at = time.time()
            if server.timer is not None:        # a death still pending
                server.timer.cancel()
                server.timer = None
            self.events["servers-died"] += 1
        old.stop()
        new = NodeHost(old.address, old.port, old.root, {},
                       host_key=old.host_key, reachable=False)
        try:
            new.start()
        except OSError as e:        # the port was taken meanwhile: refused
            LOG.warning("cloud %s: server %s died, but %s:%d could not be "
                        "bound again (%s); it refuses connections", self.name,
                        server.id, old.address, old.port, e.strerror)
            new = None
        with self.lock:
            stale = server.deleted or self._closed or server.host is not old
            if not stale:
                server.host = new
        if stale and new is not None:
            new.stop()
        LOG.info("cloud %s: server %s (%s) at %s died: no SSH banner any more",
                 self.name, server.id, server.name, old.address)

    def _start_host(self, server, root):
        users = {user: [server.public_key] if server.public_key else []
                 for user in self.config.ssh_users}
        for _ in range(BIND_ATTEMPTS):
            address = self._reserve_address()
            if address is None:
                break
            host = NodeHost(address, self.config.ssh_port, root, users,
                            reachable=server.outcome != "no-network")
            try:
                host.start()
            except OSError as e:
                LOG.info("cloud %s: cannot bind %s:%d (%s), trying the next "
                         "address", self.name, address, self.config.ssh_port,
                         e.strerror)
                with self.lock:
                    self._addresses_in_use.discard(address)
                continue
            with self.lock:
                server.address = address
                octets = [int(o) for o in address.split(".")]
                server.mac = "fa:16:3e:%02x:%02x:%02x" % tuple(octets[1:])
            return host
        raise _BootFailure(NO_VALID_HOST + " (no free address in %s)"
                           % self.config.fixed_range)

    def _reserve_address(self):
        """The next free address of the fixed range (the address-range, or
        its lower half with the network service), round-robin (so a freed
        address is not handed out again at once), skipping x.x.x.0, x.x.x.255
        and 127.0.0.1 and, with the network service, the subnet's network,
        gateway and broadcast addresses; None when every address is taken."""
        network = self.config.fixed_range
        with self.lock:
            address, self._address_cursor = _next_free(
                network, self._address_cursor, self._addresses_in_use,
                subnet_reserved(network) if self.config.network_service
                else ())
            if address is not None:
                self._addresses_in_use.add(address)
            return address

    def _fail_boot(self, server, message):
        now = time.time()
        server.status, server.vm_state = "ERROR", "error"
        server.task_state = None
        server.power_state = 0
        server.updated = now
        server.fault = {"code": 500, "created": iso(now), "message": message}
        self.events["servers-error"] += 1
        LOG.info("cloud %s: server %s (%s) ERROR: %s", self.name, server.id,
                 server.name, message)

    def get_server(self, server_id):
        """A visible server's snapshot, or ApiError 404."""
        with self.lock:
            server = self.servers.get(server_id)
            if server is None:
                raise ApiError(404, "Instance %s could not be found."
                               % server_id)
            return server.snapshot()

    def list_servers(self, name=None, statuses=None, image=None, flavor=None,
                     limit=None, marker=None):
        """Snapshots of visible servers, newest first, filtered and paged.

        Every call counts down the servers whose delete "lied"."""
        with self.lock:
            servers = sorted(self.servers.values(), key=lambda s: -s.seq)
            if marker is not None:
                anchor = self.servers.get(marker) or self.history.get(marker)
                if anchor is None:
                    raise ApiError(400, "marker [%s] not found" % marker)
                servers = [s for s in servers if s.seq < anchor.seq]
            if name is not None:
                try:
                    pattern = re.compile(name)
                except re.error:
                    servers = []
                else:
                    servers = [s for s in servers if pattern.search(s.name)]
            if statuses:
                servers = [s for s in servers if s.status in statuses]
            if image is not None:
                servers = [s for s in servers if s.image_id == image]
            if flavor is not None:
                servers = [s for s in servers if s.flavor.id == flavor]
            if limit is not None:
                servers = servers[:limit]
            result = [s.snapshot() for s in servers]
            for server in list(self.servers.values()):
                if server.deleted:
                    server.linger -= 1
                    if server.linger <= 0:
                        self._purge(server)
                        LOG.info("cloud %s: server %s (%s) finally gone from "
                                 "lists", self.name, server.id, server.name)
            return result

    def _purge(self, server):
        server.purged = True
        self.servers.pop(server.id, None)
        self.history[server.id] = server
        if server.address:
            self._addresses_in_use.discard(server.address)

    def delete_server(self, server_id):
        with self.lock:
            server = self.servers.get(server_id)
            if server is None:
                raise ApiError(404, "Instance %s could not be found."
                               % server_id)
            if server.deleted:      # lingering: nova answers 204 again
                return
            server.deleted = True
            server.deleted_at = server.updated = time.time()
            server.task_state = "deleting"
            if server.timer is not None:
                server.timer.cancel()
            host, root = server.host, server.root
            server.host = None
            # its port goes, so its floating IPs are disassociated (kept)
            forwarders = [self._detach_locked(fip) for fip in
                          list(self.floating_ips.values())
                          if fip.server_id == server.id]
            linger = self.faults["lying-delete-lists"]
            if linger > 0:
                server.linger = linger
            else:
                self._purge(server)
            self.events["servers-deleted"] += 1
        _stop_all(forwarders)
        if host is not None:
            host.stop()
        remove_tree(root)
        LOG.info("cloud %s: server %s (%s) deleted%s", self.name, server.id,
                 server.name, " (lingering in %d lists)" % linger
                 if linger > 0 else "")

    def console_output(self, server_id, length=None):
        with self.lock:
            server = self._active_server(server_id, "'get_console_output'")
            lines = ["localcloud node %s (%s)" % (server.name, server.id),
                     "-----BEGIN SSH HOST KEY FINGERPRINTS-----",
                     "-----END SSH HOST KEY FINGERPRINTS-----",
                     "-----BEGIN SSH HOST KEY KEYS-----",
                     server.host_key_line,
                     "-----END SSH HOST KEY KEYS-----",
                     "Cloud-init finished: %s" % server.name]
        if length is not None and length >= 0:
            lines = lines[-length:] if length else []
        return "\n".join(lines) + ("\n" if lines else "")

    # -- snapshots -----------------------------------------------------------------

    def create_snapshot(self, server_id, name, metadata):
        with self.lock:
            server = self.servers.get(server_id)
            if server is None:
                raise ApiError(404, "Instance %s could not be found."
                               % server_id)
            if server.status != "ACTIVE":
                raise ApiError(409, "Cannot 'createImage' instance %s while it "
                               "is in vm_state %s" % (server_id,
                                                      server.vm_state))
            if server.deleted or server.task_state is not None:
                raise ApiError(409, "Cannot 'createImage' instance %s while it "
                               "is in task_state %s"
                               % (server_id, server.task_state))
            properties = {"image_type": "snapshot", "instance_uuid": server.id,
                          "base_image_ref": server.image_id,
                          "user_id": self.user_id,
                          "owner_project_name": self.config.project,
                          "owner_user_name": self.config.username}
            base = self.images.get(server.image_id)
            if base is not None:
                for key, value in base.properties.items():
                    properties.setdefault(key, value)
            properties.update(metadata)
            image_id = str(uuid.uuid4())
            image = Image(image_id, name, next(self._seq),
                          owner=self.project_id,
                          store=os.path.join(self.images_dir, image_id),
                          owned=True, properties=properties,
                          min_disk=server.flavor.disk)
            self.images[image_id] = image
            server.task_state = "image_snapshot"
            fail = faults_mod.chance(self.rng_snapshot,
                                     self.faults["snapshot-failure-rate"])
            delay = faults_mod.sample(self.rng_snapshot, self.faults["snapshot-delay"])
            self.events["images-created"] += 1
            due = time.monotonic() + delay
            self.scheduler.call_later(0, self._snapshot_copy, image, server,
                                      server.root, fail, due)
        LOG.info("cloud %s: image %s (%s) queued from server %s", self.name,
                 image_id, name, server_id)
        return image_id

    def _snapshot_copy(self, image, server, root, fail, due):
        partial = image.store + ".partial"
        with self.lock:
            if image.id not in self.images:
                return
            image.status, image.updated = "saving", time.time()
            if server.task_state == "image_snapshot":
                server.task_state = "image_uploading"
        error = None
        try:
            copy_tree(root, partial)
        except OSError as e:
            error = "copy failed: %s" % e
        self.scheduler.call_later(due - time.monotonic(), self._snapshot_finish,
                                  image, server, partial, fail, error)

    def _snapshot_finish(self, image, server, partial, fail, error):
        with self.lock:
            if server.task_state in ("image_snapshot", "image_uploading"):
                server.task_state = None
            gone = image.id not in self.images
            if not gone:
                image.updated = time.time()
                if fail or error:
                    image.status = "killed"
                    self.events["images-killed"] += 1
                else:
                    os.rename(partial, image.store)
                    image.size = tree_size(image.store)
                    image.checksum = hashlib.md5(image.id.encode()).hexdigest()
                    image.status = "active"
                    self.events["images-active"] += 1
        if gone or fail or error:
            remove_tree(partial)
        if not gone:
            LOG.info("cloud %s: image %s (%s) %s", self.name, image.id,
                     image.name, image.status if not error else
                     "killed (%s)" % error)

    # -- images -----------------------------------------------------------------

    def get_image(self, image_id):
        with self.lock:
            image = self.images.get(image_id)
            if image is None:
                raise ApiError(404, "No image found with ID %s" % image_id)
            return image.snapshot()

    def list_images(self):
        with self.lock:
            return [image.snapshot() for image in self.images.values()]

    def delete_image(self, image_id):
        with self.lock:
            image = self.images.get(image_id)
            if image is None:
                raise ApiError(404, "No image found with ID %s" % image_id)
            if image.protected:
                raise ApiError(403, "Image %s is protected and cannot be "
                               "deleted." % image_id)
            del self.images[image_id]
            image.status = "deleted"
            self.events["images-deleted"] += 1
        if image.owned:
            remove_tree(image.store)
        LOG.info("cloud %s: image %s (%s) deleted", self.name, image_id,
                 image.name)

    # -- network service: ports and floating IPs --------------------------------

    @staticmethod
    def port_id(server_id):
        """The id of a server's (only) port: stable, derived from its id."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL,
                              "localcloud-port/%s" % server_id))

    def ports(self):
        """The ports of the private network: one per visible, not deleted
        server that has a fixed address (it got one when it went ACTIVE), in
        creation order: {id, server_id, address, mac, created, updated}."""
        with self.lock:
            servers = sorted((s for s in self.servers.values()
                              if s.address and not s.deleted),
                             key=lambda s: s.seq)
            return [{"id": self.port_id(s.id), "server_id": s.id,
                     "address": s.address, "mac": s.mac,
                     "created": s.launched_at or s.created,
                     "updated": s.launched_at or s.updated}
                    for s in servers]

    def _port_server(self, port_id):
        for server in self.servers.values():
            if self.port_id(server.id) == port_id and server.address \
                    and not server.deleted:
                return server
        raise ApiError(404, "Port %s could not be found." % port_id)

    def _require_network_service(self):
        if not self.config.network_service:
            raise ApiError(404, "The resource could not be found.")

    def list_floating_ips(self):
        with self.lock:
            return [f.snapshot() for f in
                    sorted(self.floating_ips.values(), key=lambda f: f.seq)]

    def get_floating_ip(self, fip_id):
        with self.lock:
            fip = self.floating_ips.get(fip_id)
            if fip is None:
                raise ApiError(404, "Floating IP %s could not be found"
                               % fip_id)
            return fip.snapshot()

    def create_floating_ip(self, port_id=None, fixed_address=None,
                           address=None, description=""):
        """Allocate a floating IP from the floating range (the next free
        address round-robin, or ``address``) and, with ``port_id``, attach it
        to that port's server.  Returns its snapshot."""
        self._require_network_service()
        network = self.config.floating_range
        with self.lock:
            server = None
            if port_id is not None:
                server = self._port_server(port_id)
                self._check_attachable(server, port_id, fixed_address)
            taken = {f.address for f in self.floating_ips.values()}
            if address is not None:
                try:
                    wanted = ipaddress.IPv4Address(address)
                except ValueError:
                    raise ApiError(400, "Invalid input for "
                                   "floating_ip_address. Reason: '%s' is "
                                   "not a valid IP address." % address) \
                        from None
                if wanted not in network or str(wanted) in \
                        subnet_reserved(network):
                    raise ApiError(400, "Bad floatingip request: IP address "
                                   "%s is not a valid IP for the specified "
                                   "subnet." % address)
                if str(wanted) in taken:
                    raise ApiError(409, "Unable to complete operation for "
                                   "network %s. The IP address %s is in use."
                                   % (self.public_network_id, address))
                candidates = [str(wanted)]
            else:
                candidates = None
            fip = FloatingIP(str(uuid.uuid4()), None, next(self._seq),
                             description or "")
            fip.address = self._allocate_floating(candidates, taken)
            self.floating_ips[fip.id] = fip
        if server is not None:
            try:
                self._attach(fip, server, port_id, fixed_address,
                             retry=candidates is None)
            except ApiError:
                with self.lock:
                    self.floating_ips.pop(fip.id, None)
                raise
        with self.lock:
            self.events["floating-ips-created"] += 1
        LOG.info("cloud %s: floating IP %s (%s) allocated", self.name,
                 fip.address, fip.id)
        return self.get_floating_ip(fip.id)

    def _allocate_floating(self, candidates, taken):
        if candidates is not None:
            return candidates[0]
        network = self.config.floating_range
        address, self._floating_cursor = _next_free(
            network, self._floating_cursor, taken, subnet_reserved(network))
        if address is None:
            raise ApiError(409, "No more IP addresses available on network "
                           "%s." % self.public_network_id)
        return address

    def _check_attachable(self, server, port_id, fixed_address, fip=None):
        """ApiError unless ``server`` (its port ``port_id``) can take a
        floating IP (``fip``, which may be on it already)."""
        if fixed_address is not None and fixed_address != server.address:
            raise ApiError(400, "Bad floatingip request: Port %s does not "
                           "have fixed ip %s." % (port_id, fixed_address))
        for other in self.floating_ips.values():
            if other.server_id == server.id and other is not fip:
                raise ApiError(409, "Cannot associate floating IP %s (%s) "
                               "with port %s using fixed IP %s, as that "
                               "fixed IP already has a floating IP on "
                               "external network %s."
                               % (other.address, other.id, port_id,
                                  server.address, self.public_network_id))

    def _attach(self, fip, server, port_id, fixed_address, retry):
        """Start the forwarder (its bind is the only thing that can fail:
        with ``retry`` another free address is tried) and record the
        association; ApiError 409 if it cannot be bound."""
        target = server.address
        for attempt in range(BIND_ATTEMPTS if retry else 1):
            forwarder = TcpForwarder(fip.address, self.config.ssh_port,
                                     target, self.config.ssh_port,
                                     "localcloud-fip-%s" % fip.address)
            try:
                forwarder.start()
                break
            except OSError as e:
                LOG.info("cloud %s: cannot bind floating IP %s:%d (%s)",
                         self.name, fip.address, self.config.ssh_port,
                         e.strerror)
                with self.lock:
                    taken = {f.address for f in self.floating_ips.values()}
                    if not retry or attempt == BIND_ATTEMPTS - 1:
                        raise ApiError(409, "Floating IP %s cannot be "
                                       "associated: %s:%d cannot be bound "
                                       "(%s)" % (fip.address, fip.address,
                                                 self.config.ssh_port,
                                                 e.strerror)) from None
                    fip.address = self._allocate_floating(None, taken)
        with self.lock:
            stale = (server.deleted or self._closed or fip.id not in
                     self.floating_ips or fip.forwarder is not None or
                     any(f.server_id == server.id
                         for f in self.floating_ips.values()))
            if not stale:
                fip.forwarder = forwarder
                fip.port_id, fip.server_id = port_id, server.id
                fip.fixed_address = target
                fip.status = "ACTIVE"
                fip.updated = time.time()
                fip.revision += 1
                server.floating_addresses.append(fip.address)
                self.events["floating-ips-attached"] += 1
        if stale:
            forwarder.stop()
            raise ApiError(409, "Floating IP %s could not be associated with "
                           "port %s: it changed meanwhile" % (fip.id, port_id))
        LOG.info("cloud %s: floating IP %s -> %s:%d (server %s)", self.name,
                 fip.address, target, self.config.ssh_port, server.id)

    def _detach_locked(self, fip):
        """Disassociate (under the lock); returns the forwarder to stop
        outside it (or None)."""
        forwarder, fip.forwarder = fip.forwarder, None
        server = self.servers.get(fip.server_id) or \
            self.history.get(fip.server_id)
        if server is not None and fip.address in server.floating_addresses:
            server.floating_addresses.remove(fip.address)
        if fip.port_id is not None:
            self.events["floating-ips-detached"] += 1
            fip.revision += 1
        fip.port_id = fip.server_id = fip.fixed_address = None
        fip.status = "DOWN"
        fip.updated = time.time()
        return forwarder

    def update_floating_ip(self, fip_id, port_id=None, fixed_address=None,
                           description=None):
        """Associate (``port_id``), re-associate or disassociate
        (``port_id=None``) a floating IP; returns its snapshot."""
        with self.lock:
            fip = self.floating_ips.get(fip_id)
            if fip is None:
                raise ApiError(404, "Floating IP %s could not be found"
                               % fip_id)
            if description is not None:
                fip.description = description
                fip.revision += 1
                fip.updated = time.time()
            same = port_id == fip.port_id and \
                fixed_address in (None, fip.fixed_address)
            server = None
            forwarder = None
            if not same:
                if port_id is not None:
                    server = self._port_server(port_id)
                    self._check_attachable(server, port_id, fixed_address,
                                           fip)
                forwarder = self._detach_locked(fip)
        _stop_all([forwarder])
        if server is not None:
            self._attach(fip, server, port_id, fixed_address, retry=False)
        return self.get_floating_ip(fip_id)

    def delete_floating_ip(self, fip_id):
        with self.lock:
            fip = self.floating_ips.get(fip_id)
            if fip is None:
                raise ApiError(404, "Floating IP %s could not be found"
                               % fip_id)
            forwarder = self._detach_locked(fip)
            del self.floating_ips[fip_id]
            self.events["floating-ips-deleted"] += 1
        _stop_all([forwarder])
        LOG.info("cloud %s: floating IP %s (%s) deleted", self.name,
                 fip.address, fip_id)

    # -- admin views --------------------------------------------------------------

    def servers_report(self):
        """Every server ever booted, including lingering and deleted ones."""
        with self.lock:
            servers = list(self.servers.values()) + list(self.history.values())
            report = []
            for s in sorted(servers, key=lambda s: s.seq):
                report.append({
                    "id": s.id, "name": s.name, "status": s.status,
                    "task_state": s.task_state, "outcome": s.outcome,
                    "address": s.address, "ssh_port": self.config.ssh_port,
                    "root": s.root, "image_id": s.image_id,
                    "flavor": s.flavor.id, "key_name": s.key_name,
                    "metadata": dict(s.metadata),
                    "host_key": s.host_key_line,
                    # every key a client has been shown (an unpinned one: ed25519)
                    "host_keys": (s.host.offered_key_lines if s.host is not None
                                  else [s.host_key_line] if s.host_key_line else []),
                    "deleted": s.deleted, "lingering": s.deleted and not s.purged,
                    "lingering_lists": s.linger if not s.purged else 0,
                    "created": iso(s.created),
                    # time.time() it turned ACTIVE (None: not yet, or never)
                    "launched_at": s.launched_at,
                    # node-death: time.time() it is due to die, it died
                    "dies_at": s.dies_at, "died_at": s.died_at,
                    # the bad-image marker's line, or None
                    "bad_image": s.bad_image,
                    # network service: floating IPs attached to its port
                    "floating_addresses": list(s.floating_addresses),
                    "deleted_at": iso(s.deleted_at) if s.deleted_at else None,
                })
            return report

    def images_report(self):
        with self.lock:
            return [{"id": i.id, "name": i.name, "status": i.status,
                     "store": i.store, "size": i.size,
                     "properties": dict(i.properties)}
                    for i in sorted(self.images.values(), key=lambda i: i.seq)]

    def stats_report(self):
        with self.lock:
            return {"calls": dict(sorted(self.stats.items())),
                    "total": sum(self.stats.values()),
                    "responses": {str(k): v for k, v in
                                  sorted(self.statuses.items())},
                    "events": dict(sorted(self.events.items()))}

    def spans_report(self, key=None):
        """{key: [(start, end), ...]} in start order, for every key that
        has spans, or for ``key`` alone (an empty list if it has none).
        Times are ``time.time()`` floats; at most ``span_history`` (the
        newest calls) per key."""
        with self.lock:
            if key is not None:
                return {key: sorted(self.spans.get(key, ()))}
            return {k: sorted(v) for k, v in sorted(self.spans.items())}

    def reset_stats(self):
        with self.lock:
            self.stats.clear()
            self.statuses.clear()
            self.events.clear()
            self.spans.clear()

    def record_call(self, key, status, start=None, end=None):
        """Count one answered API call; with ``start`` (and ``end``, default
        now) also keep its span."""
        with self.lock:
            self.stats[key] += 1
            self.statuses[status] += 1
            if start is not None:
                spans = self.spans.get(key)
                if spans is None:
                    spans = self.spans[key] = deque(
                        maxlen=self.config.span_history)
                spans.append((start, time.time() if end is None else end))

    # -- teardown -----------------------------------------------------------------

    def close(self):
        """Stop every node and forget pending work; the caller removes the
        state directory."""
        with self.lock:
            self._closed = True
        self.scheduler.shutdown()
        with self.lock:
            hosts = [s.host for s in self.servers.values() if s.host]
            for server in self.servers.values():
                server.host = None
            forwarders = [f.forwarder for f in self.floating_ips.values()
                          if f.forwarder is not None]
            for fip in self.floating_ips.values():
                fip.forwarder = None
        _stop_all(forwarders)
        for host in hosts:
            host.stop()


class _BootFailure(Exception):
    pass


def subnet_reserved(network):
    """Addresses of a network-service subnet no port gets: network address,
    gateway (the first host) and broadcast."""
    first = int(network.network_address)
    return {str(ipaddress.IPv4Address(first)),
            str(ipaddress.IPv4Address(first + 1)),
            str(network.broadcast_address)}


def _next_free(network, cursor, taken, reserved=()):
    """(address, new cursor): the next address of ``network`` from
    ``cursor`` on that is not taken, reserved, x.x.x.0, x.x.x.255 or
    127.0.0.1; (None, cursor) when there is none."""
    size = network.num_addresses
    for _ in range(size):
        number = int(network.network_address) + cursor % size
        cursor += 1
        address = str(ipaddress.IPv4Address(number))
        if number & 0xFF in (0, 255) or address == "127.0.0.1" \
                or address in taken or address in reserved:
            continue
        return address, cursor
    return None, cursor



def _stop_all(forwarders):
    for forwarder in forwarders:
        if forwarder is not None:
            forwarder.stop()


class TcpForwarder:
    """The NAT of a floating IP: every TCP connection to address:port is
    relayed to target:target_port, both ways, half-closes included.  One
    thread (a selector loop) per forwarder, however many connections;
    ``stop()`` closes the listener and every relayed connection and joins
    the thread."""

    #: Bytes buffered per direction before the sender is no longer read.
    BUFFER = 256 * 1024
    #: Relayed connections at once; more are accepted and closed at once.
    MAX_CONNECTIONS = 256
    POLL_INTERVAL = 0.1

    def __init__(self, address, port, target, target_port, name):
        self.address, self.port = address, port
        self.target, self.target_port = target, target_port
        self.name = name
        self._stopping = threading.Event()
        self._thread = None
        self._listener = None
        self._selector = None

    def __repr__(self):
        return "<TcpForwarder %s:%d -> %s:%d>" % (
            self.address, self.port, self.target, self.target_port)

    def start(self):
        """Bind and listen (OSError if the address cannot be bound), then
        serve in a thread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._serve, name=self.name,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _serve(self):
        links = set()
        try:
            while not self._stopping.is_set():
                for key, events in self._selector.select(self.POLL_INTERVAL):
                    if key.data is None:
                        self._accept(links)
                        continue
                    link, sock = key.data
                    link.handle(sock, events)
                    if link.closed:
                        links.discard(link)
        except Exception:       # never let the thread die silently
            LOG.exception("%r failed", self)
        finally:
            for link in list(links):
                link.close()
            self._selector.unregister(self._listener)
            self._listener.close()
            self._selector.close()

    def _accept(self, links):
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            LOG.debug("%r: accept failed: %s", self, e)
            return
        if len(links) >= self.MAX_CONNECTIONS:
            client.close()
            return
        client.setblocking(False)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        err = upstream.connect_ex((self.target, self.target_port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            client.close()
            upstream.close()
            return
        links.add(_Link(self._selector, client, upstream))


class _Link:
    """One relayed connection: the client's socket and ours to the target
    (connecting until it is writable)."""

    def __init__(self, selector, client, upstream):
        self.selector = selector
        self.client, self.upstream = client, upstream
        self.connecting = True
        self.closed = False
        # bytes waiting to be written to each socket; whether each socket
        # has sent EOF; whether we shut down writing to it; its event mask
        self.out = {client: bytearray(), upstream: bytearray()}
        self.eof = {client: False, upstream: False}
        self.shut = {client: False, upstream: False}
        self.mask = {client: 0, upstream: 0}
        self._update()

    def _peer(self, sock):
        return self.upstream if sock is self.client else self.client

    def _wanted(self, sock):
        if self.connecting:
            return selectors.EVENT_WRITE if sock is self.upstream else 0
        mask = 0
        if not self.eof[sock] and \
                len(self.out[self._peer(sock)]) < TcpForwarder.BUFFER:
            mask |= selectors.EVENT_READ
        if self.out[sock]:
            mask |= selectors.EVENT_WRITE
        return mask

    def _update(self):
        if not self.connecting and all(self.eof.values()) and \
                not any(self.out.values()):
            self.close()
            return
        for sock in (self.client, self.upstream):
            wanted, current = self._wanted(sock), self.mask[sock]
            if wanted == current:
                continue
            if current == 0:
                self.selector.register(sock, wanted, (self, sock))
            elif wanted == 0:
                self.selector.unregister(sock)
            else:
                self.selector.modify(sock, wanted, (self, sock))
            self.mask[sock] = wanted

    def handle(self, sock, events):
        try:
            if self.connecting:
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    self.close()
                    return
                self.connecting = False
            else:
                peer = self._peer(sock)
                if events & selectors.EVENT_READ:
                    data = sock.recv(65536)
                    if data:
                        self.out[peer] += data
                    else:
                        self.eof[sock] = True
                if events & selectors.EVENT_WRITE and self.out[sock]:
                    sent = sock.send(self.out[sock])
                    del self.out[sock][:sent]
                for target in (self.client, self.upstream):
                    if self.eof[self._peer(target)] and \
                            not self.out[target] and not self.shut[target]:
                        self.shut[target] = True
                        target.shutdown(socket.SHUT_WR)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close()
            return
        self._update()

    def close(self):
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.upstream):
            if self.mask[sock]:
                self.selector.unregister(sock)
                self.mask[sock] = 0
            sock.close()

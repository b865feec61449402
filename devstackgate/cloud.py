"""The cloud adapter: the only module that imports novaclient, glanceclient or keystoneauth1.

One :class:`OpenStackAdapter` per provider offers a handful of calls
(servers, images, flavors, keypairs) returning plain frozen dataclasses, so the
stages never see an SDK object.  Every call goes through one place
(:meth:`OpenStackAdapter._call`) that:

- serialises the provider's calls and spaces them by ``api-rate`` seconds;
- retries 5xx, 429 (honouring Retry-After) and connection errors with
  exponential backoff and jitter, bounded by ``api-retries`` attempts and an
  ``api-timeout`` deadline;
- turns the SDKs' exceptions into ours, which classify themselves (quota,
  not-found, outage, api) and are never retried blindly.

Credentials come from clouds.yaml; keystoneauth re-authenticates when a token
expires or a service answers 401, and the catalog is never cached past its
token.  Nothing here logs a password or a token.
"""

import dataclasses
import logging
import random
import re
import threading
import time

import yaml
from glanceclient import client as glance_client
from glanceclient import exc as glance_exc
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import session as ks_session
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from devstackgate import config as configmod
from devstackgate.errors import GateError

log = logging.getLogger('cloud')

# Metadata on every server and image we create, so a crash at any line leaves
# something the reaper can recognise as ours.
META_PROVIDER = 'dg-provider'
META_KIND = 'dg-kind'          # 'node', 'template' (image build) or 'image'
META_NODE_ID = 'dg-node-id'
META_IMAGE_ID = 'dg-image-id'
META_LABEL = 'dg-label'


class CloudError(GateError):
    """An API call failed for good."""
    reason = 'api'


class QuotaExceeded(CloudError):
    reason = 'quota'


class NotFound(CloudError):
    reason = 'not-found'


class CloudUnavailable(CloudError):
    """The provider's API could not be reached (outage, DNS, refused)."""
    reason = 'outage'


@dataclasses.dataclass(frozen=True)
class Server:
    id: str
    name: str
    status: str                 # BUILD, ACTIVE, ERROR, DELETED, ...
    metadata: dict
    fixed_ips: tuple
    floating_ips: tuple
    image_id: str
    created: str
    fault: str = None
    task_state: str = None

    def address(self, ip_type='any'):
        """The address to reach it by, as the provider config says; None if none yet."""
        if ip_type == 'fixed':
            candidates = self.fixed_ips
        elif ip_type == 'floating':
            candidates = self.floating_ips
        else:
            candidates = self.floating_ips + self.fixed_ips
        return candidates[0] if candidates else None


@dataclasses.dataclass(frozen=True)
class CloudImage:
    id: str
    name: str
    status: str                 # queued, saving, active, killed, deleted, ...
    metadata: dict
    created: str


@dataclasses.dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    ram: int
    vcpus: int
    disk: int


def smallest_flavor(flavors, min_ram):
    """The smallest flavor with at least min_ram MB; None if none fits."""
    fitting = [f for f in flavors if f.ram >= min_ram]
    if not fitting:
        return None
    return min(fitting, key=lambda f: (f.ram, f.vcpus, f.disk, f.name))


def newest_image(images, pattern):
    """The newest active image whose name equals pattern or fully matches it as a regex."""
    regex = re.compile(pattern)
    matching = [i for i in images if i.status == 'active'
                and (i.name == pattern or regex.fullmatch(i.name or ''))]
    if not matching:
        return None
    return max(matching, key=lambda i: (i.created or '', i.id))


def load_cloud_entry(cloud, environ=None):
    """The clouds.yaml entry named `cloud`, as a dict (holds secrets: never log it)."""
    path = configmod.clouds_yaml_path(environ)
    if path is None:
        raise CloudError('cloud %r: no clouds.yaml found (set $%s)'
                         % (cloud, configmod.CLOUDS_YAML_ENV))
    with open(path, encoding='utf-8') as f:
        data = yaml.safe_load(f) or {}
    entry = (data.get('clouds') or {}).get(cloud)
    if not isinstance(entry, dict):
        raise CloudError('cloud %r is not in %s' % (cloud, path))
    return entry


class RateLimiter:
    """Space calls at least `interval` seconds apart, across threads."""

    def __init__(self, interval):
        self.interval = interval
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self):
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                time.sleep(self._next - now)
                now = self._next
            self._next = now + self.interval


class OpenStackAdapter:
    """Servers, images, flavors and keypairs of one provider, through the real clients."""

    def __init__(self, provider, environ=None, sleep=time.sleep):
        self.provider = provider
        self.name = provider.name
        self._sleep = sleep
        entry = load_cloud_entry(provider.cloud, environ)
        auth_type = entry.get('auth_type', 'password')
        try:
            loader = ks_loading.get_plugin_loader(auth_type)
            auth = loader.load_from_options(**(entry.get('auth') or {}))
        except ks_exc.ClientException as e:
            # The message names missing options, never their values.
            raise CloudError('provider %s: cloud %r: bad auth settings in clouds.yaml: %s'
                             % (self.name, provider.cloud, e))
        verify = entry.get('cacert') or entry.get('verify', True)
        self._session = ks_session.Session(auth=auth, verify=verify,
                                           timeout=provider.api_timeout)
        region = provider.region or entry.get('region_name')
        interface = entry.get('interface', 'public')
        self._nova = nova_client.Client(provider.compute_api_version, session=self._session,
                                        region_name=region, endpoint_type=interface + 'URL')
        self._glance = glance_client.Client('2', session=self._session, region_name=region,
                                            interface=interface)
        self._limiter = RateLimiter(provider.api_rate)
        self._lock = threading.Lock()

    # -- the one place calls go through -----------------------------------
    def _call(self, what, fn, *args, **kwargs):
        p = self.provider
        deadline = time.monotonic() + p.api_timeout
        attempt = 0
        while True:
            attempt += 1
            with self._lock:
                self._limiter.wait()
                try:
                    return fn(*args, **kwargs)
                except Exception as e:    # classified below; nothing is swallowed
                    error, retry_after = self._classify(what, e)
            if retry_after is None:
                raise error
            delay = max(retry_after, p.api_backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
            if attempt >= p.api_retries or time.monotonic() + delay > deadline:
                raise error.__class__('%s (gave up after %d attempts)' % (error, attempt))
            log.info('%s: %s failed (%s); retry %d in %.1f s',
                     self.name, what, error.reason, attempt, delay)
            self._sleep(delay)

    def _classify(self, what, e):
        """Our error for an SDK exception, and a retry delay (None: do not retry)."""
        prefix = 'provider %s: %s' % (self.name, what)
        if isinstance(e, (ks_exc.ConnectFailure, ks_exc.ConnectTimeout,
                          glance_exc.CommunicationError, glance_exc.InvalidEndpoint)):
            return CloudUnavailable('%s: cannot reach the API (%s)'
                                    % (prefix, type(e).__name__)), 0.0
        if isinstance(e, ks_exc.DiscoveryFailure):
            # Keystone's version document did not come back: refused, or an error page.
            return CloudUnavailable('%s: identity API unavailable (version discovery failed)'
                                    % prefix), 0.0
        if isinstance(e, (ks_exc.Unauthorized, nova_exc.Unauthorized, glance_exc.Unauthorized)):
            return CloudError('%s: authentication failed (check clouds.yaml entry %r)'
                              % (prefix, self.provider.cloud)), None
        if isinstance(e, (nova_exc.NotFound, glance_exc.NotFound)):
            return NotFound('%s: not found' % prefix), None
        if isinstance(e, (nova_exc.OverLimit, nova_exc.RateLimit)):
            return CloudError('%s: rate limited (HTTP %s)' % (prefix, e.code)), float(
                e.retry_after or 0)
        if isinstance(e, (nova_exc.Forbidden, glance_exc.Forbidden)):
            message = getattr(e, 'message', None) or getattr(e, 'details', None) or str(e)
            if 'quota' in message.lower():
                return QuotaExceeded('%s: quota exceeded: %s' % (prefix, message)), None
            return CloudError('%s: forbidden: %s' % (prefix, message)), None
        if isinstance(e, nova_exc.ClientException):
            code = getattr(e, 'code', None)
            message = getattr(e, 'message', '') or type(e).__name__
            error = CloudError('%s: HTTP %s: %s' % (prefix, code, str(message).splitlines()[0]))
            return error, (0.0 if isinstance(code, int) and code >= 500 else None)
        if isinstance(e, glance_exc.HTTPException):
            code = e.code
            error = CloudError('%s: HTTP %s: %s' % (prefix, code, str(e.details).splitlines()[0]))
            # glanceclient maps 429 (and other unknown codes) to its base class.
            retry = type(e) is glance_exc.HTTPException or (isinstance(code, int) and code >= 500)
            return error, (0.0 if retry else None)
        if isinstance(e, ks_exc.HttpError):
            code = getattr(e, 'http_status', None)
            error = CloudError('%s: HTTP %s' % (prefix, code))
            return error, (0.0 if code and (code >= 500 or code == 429) else None)
        if isinstance(e, GateError):
            return e, None
        raise e

    # -- servers ----------------------------------------------------------
    def list_servers(self):
        """Every server of the account, in one paged list call."""
        return [self._server(s) for s in self._call(
            'list servers', self._nova.servers.list, detailed=True, limit=-1)]

    def get_server(self, server_id):
        return self._server(self._call('get server %s' % server_id,
                                       self._nova.servers.get, server_id))

    def create_server(self, name, image_id, flavor_id, key_name, metadata):
        kwargs = dict(meta=metadata, key_name=key_name)
        if _version_tuple(self.provider.compute_api_version) >= (2, 37):
            kwargs['nics'] = 'auto'
        server = self._call('create server %s' % name, self._nova.servers.create,
                            name, image_id, flavor_id, **kwargs)
        return server.id

    def delete_server(self, server_id):
        """Ask for deletion; True if the cloud accepted, False if it was already gone."""
        try:
            self._call('delete server %s' % server_id, self._nova.servers.delete, server_id)
            return True
        except NotFound:
            return False

    @staticmethod
    def _server(s):
        fixed, floating = [], []
        for entries in (getattr(s, 'addresses', None) or {}).values():
            for entry in entries:
                if entry.get('OS-EXT-IPS:type') == 'floating':
                    floating.append(entry['addr'])
                else:
                    fixed.append(entry['addr'])
        image = getattr(s, 'image', None)
        fault = getattr(s, 'fault', None)
        return Server(
            id=s.id, name=s.name, status=s.status, metadata=dict(getattr(s, 'metadata', {}) or {}),
            fixed_ips=tuple(fixed), floating_ips=tuple(floating),
            image_id=image.get('id') if isinstance(image, dict) else None,
            created=getattr(s, 'created', None),
            fault=fault.get('message') if isinstance(fault, dict) else None,
            task_state=getattr(s, 'OS-EXT-STS:task_state', None))

    # -- images -----------------------------------------------------------
    def list_images(self):
        return [self._image(i) for i in self._call(
            'list images', lambda: list(self._glance.images.list()))]

    def get_image(self, image_id):
        return self._image(self._call('get image %s' % image_id,
                                      self._glance.images.get, image_id))

    def create_image(self, server_id, name, metadata):
        """Snapshot a server; returns the new image's id."""
        return self._call('snapshot server %s as %s' % (server_id, name),
                          self._nova.servers.create_image, server_id, name, metadata)

    def delete_image(self, image_id):
        try:
            self._call('delete image %s' % image_id, self._glance.images.delete, image_id)
            return True
        except NotFound:
            return False

    _IMAGE_FIELDS = {'id', 'name', 'status', 'visibility', 'protected', 'os_hidden', 'owner',
                     'size', 'virtual_size', 'checksum', 'os_hash_algo', 'os_hash_value',
                     'container_format', 'disk_format', 'min_disk', 'min_ram', 'created_at',
                     'updated_at', 'tags', 'self', 'file', 'schema', 'direct_url', 'locations'}

    @classmethod
    def _image(cls, i):
        data = dict(i)
        return CloudImage(id=data['id'], name=data.get('name'), status=data.get('status'),
                          metadata={k: v for k, v in data.items() if k not in cls._IMAGE_FIELDS},
                          created=data.get('created_at'))

    # -- flavors and keypairs ---------------------------------------------
    def list_flavors(self):
        return [Flavor(id=str(f.id), name=f.name, ram=int(f.ram), vcpus=int(f.vcpus),
                       disk=int(f.disk))
                for f in self._call('list flavors', self._nova.flavors.list)]

    def ensure_keypair(self, name, public_key):
        """Make the keypair `name` hold public_key (create, or replace a different one)."""
        try:
            existing = self._call('get keypair %s' % name, self._nova.keypairs.get, name)
            if _key_body(existing.public_key) == _key_body(public_key):
                return False
            log.info('%s: keypair %s holds another key; replacing it', self.name, name)
            self._call('delete keypair %s' % name, self._nova.keypairs.delete, name)
        except NotFound:
            pass
        self._call('create keypair %s' % name, self._nova.keypairs.create, name,
                   public_key=public_key)
        return True

    def list_keypairs(self):
        return [k.name for k in self._call('list keypairs', self._nova.keypairs.list)]

    def delete_keypair(self, name):
        try:
            self._call('delete keypair %s' % name, self._nova.keypairs.delete, name)
            return True
        except NotFound:
            return False


def _key_body(line):
    parts = (line or '').split()
    return parts[1] if len(parts) > 1 else line


def _version_tuple(version):
    try:
        major, minor = version.split('.')
        return int(major), int(minor)
    except ValueError:
        return (2, 1)


def connect(provider, environ=None):
    """The adapter for one provider (the seam where another provider kind plugs in)."""
    return OpenStackAdapter(provider, environ=environ)

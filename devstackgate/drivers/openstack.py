"""The OpenStack driver: the only module that imports novaclient, glanceclient or keystoneauth1.

Credentials come from clouds.yaml; keystoneauth re-authenticates when a token
expires or a service answers 401, and the catalog is never cached past its
token.  Nothing here logs a password or a token.  The retries, the rate limit
and the shared conveniences are the seam's (devstackgate.cloud.Adapter); this
module turns the SDKs' objects into the seam's plain ones, with normalised
states, and their exceptions into the seam's errors.
"""

import contextlib
import logging

import yaml
from glanceclient import client as glance_client
from glanceclient import exc as glance_exc
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import session as ks_session
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from devstackgate import cloud
from devstackgate import config as configmod
from devstackgate.cloud import CloudError, CloudUnavailable, NotFound, QuotaExceeded
from devstackgate.errors import GateError

log = logging.getLogger('cloud')

# Nova's and Glance's status words, normalised (anything else: in transition).
SERVER_STATES = {'ACTIVE': 'active', 'ERROR': 'error', 'DELETED': 'gone',
                 'SOFT_DELETED': 'gone'}
IMAGE_STATES = {'active': 'active', 'killed': 'failed', 'deactivated': 'failed',
                'deleted': 'gone', 'pending_delete': 'gone'}


def load_cloud_entry(cloud_name, environ=None):
    """The clouds.yaml entry named `cloud_name`, as a dict (holds secrets: never log it)."""
    path = configmod.clouds_yaml_path(environ)
    if path is None:
        raise CloudError('cloud %r: no clouds.yaml found (set $%s)'
                         % (cloud_name, configmod.CLOUDS_YAML_ENV))
    with open(path, encoding='utf-8') as f:
        data = yaml.safe_load(f) or {}
    entry = (data.get('clouds') or {}).get(cloud_name)
    if not isinstance(entry, dict):
        raise CloudError('cloud %r is not in %s' % (cloud_name, path))
    return entry


class Adapter(cloud.Adapter):
    """Servers, images, flavors and keypairs of one OpenStack provider, through the real clients."""

    def __init__(self, provider, environ=None, **kwargs):
        super().__init__(provider, **kwargs)
        self.settings = s = provider.settings
        entry = load_cloud_entry(s.cloud, environ)
        auth_type = entry.get('auth_type', 'password')
        try:
            loader = ks_loading.get_plugin_loader(auth_type)
            auth = loader.load_from_options(**(entry.get('auth') or {}))
        except ks_exc.ClientException as e:
            # The message names missing options, never their values.
            raise CloudError('provider %s: cloud %r: bad auth settings in clouds.yaml: %s'
                             % (self.name, s.cloud, e))
        verify = entry.get('cacert') or entry.get('verify', True)
        self._session = ks_session.Session(auth=auth, verify=verify,
                                           timeout=provider.api_timeout)
        region = s.region or entry.get('region_name')
        interface = entry.get('interface', 'public')
        self._nova = nova_client.Client(s.compute_api_version, session=self._session,
                                        region_name=region, endpoint_type=interface + 'URL')
        self._glance = glance_client.Client('2', session=self._session, region_name=region,
                                            interface=interface)
        # novaclient writes a bash-completion cache of every list and create to
        # ~/.novaclient; a node pool's slaves have no use for it.
        for manager in (self._nova.servers, self._nova.flavors, self._nova.keypairs):
            manager.completion_cache = _no_completion_cache

    def classify(self, what, e):
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
                              % (prefix, self.settings.cloud)), None
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

    def _delete(self, kind, delete, ident):
        """One idempotent delete: True if accepted, False if it was already gone."""
        try:
            self.call('delete %s %s' % (kind, ident), delete, ident)
            return True
        except NotFound:
            return False

    # -- servers ----------------------------------------------------------
    def list_servers(self):
        return [self._server(s) for s in self.call(
            'list servers', self._nova.servers.list, detailed=True, limit=-1)]

    def get_server(self, server_id):
        return self._server(self.call('get server %s' % server_id,
                                      self._nova.servers.get, server_id))

    def create_server(self, name, image_id, flavor_id, key_name, metadata):
        kwargs = dict(meta=metadata, key_name=key_name)
        if _version_tuple(self.settings.compute_api_version) >= (2, 37):
            kwargs['nics'] = 'auto'
        server = self.call('create server %s' % name, self._nova.servers.create,
                           name, image_id, flavor_id, **kwargs)
        return server.id

    def delete_server(self, server_id):
        return self._delete('server', self._nova.servers.delete, server_id)

    def _server(self, s):
        fixed, floating = [], []
        for entries in (getattr(s, 'addresses', None) or {}).values():
            for entry in entries:
                if entry.get('OS-EXT-IPS:type') == 'floating':
                    floating.append(entry['addr'])
                else:
                    fixed.append(entry['addr'])
        candidates = {'fixed': fixed, 'floating': floating,
                      'any': floating + fixed}[self.settings.ip_type]
        image = getattr(s, 'image', None)
        fault = getattr(s, 'fault', None)
        return cloud.Server(
            id=s.id, name=s.name, state=SERVER_STATES.get(s.status, 'building'),
            metadata=dict(getattr(s, 'metadata', {}) or {}),
            address=candidates[0] if candidates else None,
            image_id=image.get('id') if isinstance(image, dict) else None,
            created=getattr(s, 'created', None),
            fault=fault.get('message') if isinstance(fault, dict) else None,
            detail=s.status)

    # -- images -----------------------------------------------------------
    def list_images(self):
        return [self._image(i) for i in self.call(
            'list images', lambda: list(self._glance.images.list()))]

    def get_image(self, image_id):
        return self._image(self.call('get image %s' % image_id,
                                     self._glance.images.get, image_id))

    def create_image(self, server_id, name, metadata):
        return self.call('snapshot server %s as %s' % (server_id, name),
                         self._nova.servers.create_image, server_id, name, metadata)

    def delete_image(self, image_id):
        return self._delete('image', self._glance.images.delete, image_id)

    _IMAGE_FIELDS = {'id', 'name', 'status', 'visibility', 'protected', 'os_hidden', 'owner',
                     'size', 'virtual_size', 'checksum', 'os_hash_algo', 'os_hash_value',
                     'container_format', 'disk_format', 'min_disk', 'min_ram', 'created_at',
                     'updated_at', 'tags', 'self', 'file', 'schema', 'direct_url', 'locations'}

    @classmethod
    def _image(cls, i):
        data = dict(i)
        status = data.get('status')
        return cloud.Image(id=data['id'], name=data.get('name'),
                           state=IMAGE_STATES.get(status, 'pending'),
                           metadata={k: v for k, v in data.items()
                                     if k not in cls._IMAGE_FIELDS},
                           created=data.get('created_at'), detail=status)

    # -- flavors and keypairs ---------------------------------------------
    def list_flavors(self):
        return [cloud.Flavor(id=str(f.id), name=f.name, ram=int(f.ram), vcpus=int(f.vcpus),
                             disk=int(f.disk))
                for f in self.call('list flavors', self._nova.flavors.list)]

    def ensure_keypair(self, name, public_key):
        try:
            existing = self.call('get keypair %s' % name, self._nova.keypairs.get, name)
            if _key_body(existing.public_key) == _key_body(public_key):
                return False
            log.info('%s: keypair %s holds another key; replacing it', self.name, name)
            self.call('delete keypair %s' % name, self._nova.keypairs.delete, name)
        except NotFound:
            pass
        self.call('create keypair %s' % name, self._nova.keypairs.create, name,
                  public_key=public_key)
        return True

    def pool_keypair(self, public_key):
        self.ensure_keypair(self.settings.keypair, public_key)
        return self.settings.keypair

    def list_keypairs(self):
        return [k.name for k in self.call('list keypairs', self._nova.keypairs.list)]

    def delete_keypair(self, name):
        return self._delete('keypair', self._nova.keypairs.delete, name)


def _no_completion_cache(*args, **kwargs):
    return contextlib.nullcontext()


def _key_body(line):
    parts = (line or '').split()
    return parts[1] if len(parts) > 1 else line


def _version_tuple(version):
    try:
        major, minor = version.split('.')
        return int(major), int(minor)
    except ValueError:
        return (2, 1)

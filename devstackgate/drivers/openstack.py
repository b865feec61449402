"""The OpenStack driver: the only module that imports novaclient, glanceclient or keystoneauth1.

Credentials come from clouds.yaml; keystoneauth re-authenticates when a token
expires or a service answers 401, and the catalog is never cached past its
token.  Nothing here logs a password or a token.  The retries, the rate limit
and the shared conveniences are the seam's (devstackgate.cloud.Adapter); this
module turns the SDKs' objects into the seam's plain ones, with normalised
states, and their exceptions into the seam's errors.

Every answer is converted inside the call that fetched it, so an answer that
is not what the call expects (not JSON, an HTML page, ``{}``, a server without
an id, metadata that is not a mapping) is a ``cloud.BadAnswer`` naming the
provider and the call, whether the SDK choked on it or the conversion refused
it.  The server list is paged here (marker after marker, until an empty
page), so a cloud whose pages do not advance is noticed; every request of a
logical call stops at its api-timeout deadline.  glanceclient is imported only
when an image call is made (it costs a slave that only launches or reaps
servers a noticeable part of its start-up).
"""

import contextlib
import logging
import sys
import threading
import urllib.parse

import requests
import yaml
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import session as ks_session
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from devstackgate import cloud, secrets
from devstackgate import config as configmod
from devstackgate.cloud import (BadAnswer, CloudError, CloudUnavailable, NotFound,
                                QuotaExceeded, RateLimited)
from devstackgate.errors import ConfigError, GateError

log = logging.getLogger('cloud')

# Nova's and Glance's status words, normalised (anything else: in transition).
SERVER_STATES = {'ACTIVE': 'active', 'ERROR': 'error', 'DELETED': 'gone',
                 'SOFT_DELETED': 'gone'}
IMAGE_STATES = {'active': 'active', 'killed': 'failed', 'deactivated': 'failed',
                'deleted': 'gone', 'pending_delete': 'gone'}


def load_cloud_entry(cloud_name, environ=None):
    """The clouds.yaml entry named `cloud_name`, as a dict (holds secrets: never log it).

    A clouds.yaml that cannot be read, is not UTF-8 or YAML, or has no such
    entry (or one of the wrong shape) is a ConfigError: one line naming the
    file and what was expected; never a value from it."""
    path = configmod.clouds_yaml_path(environ)
    if path is None:
        raise ConfigError(['cloud %r: no clouds.yaml found (set $%s or create '
                           '~/.config/openstack/clouds.yaml)'
                           % (cloud_name, configmod.CLOUDS_YAML_ENV)])
    secrets.warn_if_readable(path, 'clouds.yaml')
    try:
        with open(path, 'rb') as f:
            text = f.read().decode('utf-8')
    except OSError as e:
        raise ConfigError(['%s: cannot read clouds.yaml: %s' % (path, e.strerror or e)])
    except UnicodeDecodeError as e:
        raise ConfigError(['%s: not valid UTF-8 (byte 0x%02x at offset %d): expected a '
                           'clouds.yaml in UTF-8' % (path, e.object[e.start], e.start)])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = ' (line %d, column %d)' % (mark.line + 1, mark.column + 1) if mark else ''
        # The problem only ("found unexpected end of stream"), never the text around it.
        problem = getattr(e, 'problem', None) or 'not YAML'
        raise ConfigError(['%s: invalid YAML%s: %s: expected a clouds.yaml'
                           % (path, where, problem)])
    clouds = data.get('clouds') if isinstance(data, dict) else None
    if not isinstance(clouds, dict):
        raise ConfigError(['%s: expected a "clouds:" mapping of cloud names to entries, got %s'
                           % (path, _typename(clouds if isinstance(data, dict) else data))])
    if cloud_name not in clouds:
        raise ConfigError(['%s: cloud %r is not there; clouds there: %s'
                           % (path, cloud_name, ', '.join(sorted(map(str, clouds))) or 'none')])
    entry = clouds[cloud_name]
    if not isinstance(entry, dict):
        raise ConfigError(['%s: clouds.%s: expected a mapping (auth, region_name, ...), got %s'
                           % (path, cloud_name, _typename(entry))])
    for key, kinds, expected in _ENTRY_TYPES:
        if key in entry and entry[key] is not None and not isinstance(entry[key], kinds):
            raise ConfigError(['%s: clouds.%s.%s: expected %s, got %s'
                               % (path, cloud_name, key, expected, _typename(entry[key]))])
    for key, value in (entry.get('auth') or {}).items():
        if not isinstance(key, str) or isinstance(value, (dict, list)):
            raise ConfigError(['%s: clouds.%s.auth.%s: expected a string, got %s'
                               % (path, cloud_name, key, _typename(value))])
    return entry


_ENTRY_TYPES = (('auth', dict, 'a mapping (auth_url, username, password, ...)'),
                ('auth_type', str, 'a string (an auth plugin name: password, ...)'),
                ('region_name', str, 'a string'),
                ('interface', str, 'a string (public, internal or admin)'),
                ('cacert', str, 'a string (a file name)'),
                ('verify', (bool, str), 'true, false or a file name'))


def _typename(value):
    return {dict: 'a mapping', list: 'a list', str: 'a string', bool: 'a boolean',
            int: 'a number', float: 'a number', type(None): 'nothing'}.get(
                type(value), type(value).__name__)


class _RequestsSession(requests.Session):
    """A requests session that reads the environment's proxy and CA-bundle
    settings once per scheme and host, not for every request: requests scans
    os.environ three times a request, about a quarter of a launch run's CPU per
    API call with a Jenkins slave's environment.  A stage's environment does not
    change while it runs.  Mounts keystoneauth's keep-alive adapter, as the
    session keystoneauth makes for itself does."""

    def __init__(self):
        super().__init__()
        self._environment = {}
        adapter = ks_session.TCPKeepAliveAdapter()
        for scheme in list(self.adapters):
            self.mount(scheme, adapter)

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        parts = urllib.parse.urlsplit(url)
        try:
            key = (parts.scheme, parts.netloc, tuple(sorted((proxies or {}).items())),
                   stream, verify, cert)
            hash(key)
        except TypeError:       # something unhashable: as requests does it
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings = self._environment.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            self._environment[key] = settings
        return dict(settings, proxies=dict(settings['proxies'] or {}))


class _Session(ks_session.Session):
    """A keystoneauth session whose requests stop at the current logical call's
    deadline: none starts past it, and none waits longer than what is left."""

    def __init__(self, adapter, **kwargs):
        super().__init__(**kwargs)
        self._adapter = adapter
        self._last = threading.local()
        self._endpoints = (None, {})    # (the token they were looked up with, {filter: URL})

    def get_endpoint(self, auth=None, **kwargs):
        """As keystoneauth's, but remembered while the token is the same: its lookup
        deep-copies the whole service catalog, on every request."""
        plugin = auth or self.auth
        token = getattr(plugin, 'auth_ref', None)   # the token and catalog it holds now
        if kwargs.get('endpoint_override') or token is None:
            return super().get_endpoint(auth, **kwargs)
        key = (id(plugin), repr(sorted(kwargs.items())))
        held, found = self._endpoints
        if held is not token:
            held, found = token, {}
            self._endpoints = (held, found)
        if key not in found:
            found[key] = super().get_endpoint(auth, **kwargs)
        return found[key]

    def request(self, url, method, **kwargs):
        left = self._adapter.remaining()        # raises CallTimeout once it has run out
        cut = left is not None and left < (self.timeout or left + 1)
        if left is not None:
            kwargs['timeout'] = min(self.timeout or left, left)
        self._last.response = None
        try:
            response = super().request(url, method, **kwargs)
        except ks_exc.ConnectTimeout:
            if cut:             # it waited what was left of api-timeout
                raise self._adapter.call_timeout() from None
            raise
        self._last.response = response
        return response

    def last_answer(self):
        """What was wrong with this thread's last answer as a whole (not JSON, an
        HTML page), or None if it was JSON (or there was none)."""
        response = getattr(self._last, 'response', None)
        if response is None or not response.content:
            return None
        kind = (response.headers.get('Content-Type') or 'no Content-Type').split(';')[0]
        if 'json' not in kind:
            return 'HTTP %s with %s, not JSON' % (response.status_code, kind)
        try:
            response.json()
        except ValueError as e:
            return 'HTTP %s, not valid JSON: %s' % (response.status_code,
                                                    str(e).splitlines()[0][:100])
        return None


class _Nonsense(ValueError):
    """Raised by a conversion: the answer is not what the call expects."""


#: What an SDK raises when it chokes on an answer (``body['servers']`` of a
#: body that was not JSON, ``**image`` of a string) and what our conversions
#: raise: inside an SDK call these are the answer's doing.
_GARBLED = (ValueError, TypeError, KeyError, IndexError, AttributeError)


def _glance_exc():
    """glanceclient.exc if an image call has imported it (else no glance error can occur)."""
    return sys.modules.get('glanceclient.exc')


class Adapter(cloud.Adapter):
    """Servers, images, flavors and keypairs of one OpenStack provider, through the real clients."""

    def __init__(self, provider, environ=None, db=None, **kwargs):
        """db: unused (the cloud keeps every server's and image's state)."""
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
        self._session = _Session(self, auth=auth, verify=verify, timeout=provider.api_timeout,
                                 session=_RequestsSession())
        self._region = region = s.region or entry.get('region_name')
        self._interface = interface = entry.get('interface') or 'public'
        self._nova = nova_client.Client(s.compute_api_version, session=self._session,
                                        region_name=region, endpoint_type=interface + 'URL')
        self._glance_client = None
        # novaclient writes a bash-completion cache of every list and create to
        # ~/.novaclient; a node pool's slaves have no use for it.
        for manager in (self._nova.servers, self._nova.flavors, self._nova.keypairs):
            manager.completion_cache = _no_completion_cache

    @property
    def _glance(self):
        """The image client, made (and glanceclient imported) at the first image call."""
        if self._glance_client is None:
            from glanceclient import client as glance_client
            self._glance_client = glance_client.Client(
                '2', session=self._session, region_name=self._region,
                interface=self._interface)
        return self._glance_client

    def _call(self, what, expected, fn, *args, **kwargs):
        """call() of fn, whose answer it converts: an answer the SDK or the conversion
        cannot make sense of is a BadAnswer ("... is not `expected`"), never retried."""
        def run():
            try:
                return fn(*args, **kwargs)
            except _GARBLED as e:
                detail = str(e) if isinstance(e, _Nonsense) else (
                    self._session.last_answer() or '%s: %s' % (type(e).__name__, e))
                detail = (detail.splitlines() or [''])[0][:200]
                raise BadAnswer('provider %s: %s: the cloud answered something that is not %s '
                                '(%s)' % (self.name, what, expected, detail)) from None
        return self.call(what, run)

    def classify(self, what, e):
        """Our error for an SDK exception, and a retry delay (None: do not retry)."""
        prefix = 'provider %s: %s' % (self.name, what)
        glance_exc = _glance_exc()
        glance = (lambda *names: tuple(getattr(glance_exc, n) for n in names)) \
            if glance_exc else (lambda *names: ())
        if isinstance(e, GateError):
            return e, None
        if isinstance(e, (ks_exc.ConnectFailure, ks_exc.ConnectTimeout,
                          *glance('CommunicationError', 'InvalidEndpoint'))):
            return CloudUnavailable('%s: cannot reach the API (%s)'
                                    % (prefix, type(e).__name__)), 0.0
        if isinstance(e, ks_exc.DiscoveryFailure):
            # Keystone's version document did not come back: refused, or an error page.
            return CloudUnavailable('%s: identity API unavailable (version discovery failed)'
                                    % prefix), 0.0
        if isinstance(e, ks_exc.ConnectionError):     # SSL, or a connection error of no known kind
            return CloudUnavailable('%s: cannot reach the API (%s)'
                                    % (prefix, type(e).__name__)), 0.0
        if isinstance(e, (ks_exc.Unauthorized, nova_exc.Unauthorized, *glance('Unauthorized'))):
            return CloudError('%s: authentication failed (check clouds.yaml entry %r)'
                              % (prefix, self.settings.cloud)), None
        if isinstance(e, (nova_exc.NotFound, *glance('NotFound'))):
            return NotFound('%s: not found' % prefix), None
        if isinstance(e, (nova_exc.OverLimit, nova_exc.RateLimit)):
            return RateLimited('%s: rate limited (HTTP %s)' % (prefix, e.code)), float(
                e.retry_after or 0)
        if isinstance(e, (nova_exc.Forbidden, *glance('Forbidden'))):
            message = getattr(e, 'message', None) or getattr(e, 'details', None) or str(e)
            if 'quota' in message.lower():
                return QuotaExceeded('%s: quota exceeded: %s' % (prefix, message)), None
            return CloudError('%s: forbidden: %s' % (prefix, message)), None
        if isinstance(e, nova_exc.ClientException):
            code = getattr(e, 'code', None)
            message = getattr(e, 'message', '') or type(e).__name__
            error = CloudError('%s: HTTP %s: %s' % (prefix, code, str(message).splitlines()[0]))
            return error, (0.0 if isinstance(code, int) and code >= 500 else None)
        if glance_exc and isinstance(e, glance_exc.HTTPException):
            code = e.code
            error = CloudError('%s: HTTP %s: %s' % (prefix, code, str(e.details).splitlines()[0]))
            # glanceclient maps 429 (and other unknown codes) to its base class.
            retry = type(e) is glance_exc.HTTPException or (isinstance(code, int) and code >= 500)
            if code in (413, 429):
                error = RateLimited(str(error))
            return error, (0.0 if retry else None)
        if isinstance(e, ks_exc.HttpError):
            code = getattr(e, 'http_status', None)
            error = (RateLimited if code in (413, 429) else CloudError)(
                '%s: HTTP %s' % (prefix, code))
            return error, (0.0 if code and (code >= 500 or code == 429) else None)
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
        # The answer's JSON as it came, through novaclient's HTTP client (its
        # microversion header and endpoint): no Resource per server, no deep
        # copy of each (to_dict), which was most of a launch run's CPU per poll
        # at 100 servers; and the page's next link, so one page is one call.
        def page(marker):
            query = '?' + urllib.parse.urlencode({'marker': marker}) if marker else ''
            _, body = self._nova.client.get('/servers/detail' + query)
            if not isinstance(body, dict):      # not JSON (novaclient gives None), or not a mapping
                raise _Nonsense(self._session.last_answer()
                                or 'a server list that is %s' % _typename(body))
            servers = body.get('servers')
            if not isinstance(servers, list):
                raise _Nonsense('a server list whose servers are %s' % _typename(servers))
            links = body.get('servers_links')
            more = isinstance(links, list) and any(
                isinstance(link, dict) and link.get('rel') == 'next' for link in links)
            return [self._server(s) for s in servers], more
        return self.paged('list servers', lambda marker: self._call(
            'list servers', 'a server list', page, marker))

    def get_server(self, server_id):
        return self._call('get server %s' % server_id, 'a server',
                          lambda: self._server(self._nova.servers.get(server_id)))

    def create_server(self, name, image_id, flavor_id, key_name, metadata):
        kwargs = dict(meta=metadata, key_name=key_name)
        if _version_tuple(self.settings.compute_api_version) >= (2, 37):
            kwargs['nics'] = 'auto'

        def create():
            server = self._nova.servers.create(name, image_id, flavor_id, **kwargs)
            return _string(_fields(server, 'server'), 'id', 'server')
        return self._call('create server %s' % name, 'a new server', create)

    def delete_server(self, server_id):
        return self._delete('server', self._nova.servers.delete, server_id)

    def _server(self, s):
        data = _fields(s, 'server')
        sid = _string(data, 'id', 'server')
        what = 'server %s' % sid
        name, status = _string(data, 'name', what), _string(data, 'status', what)
        fixed, floating = [], []
        addresses = _mapping(data, 'addresses', what)
        for network, entries in addresses.items():
            if not isinstance(entries, list) or not all(
                    isinstance(e, dict) and isinstance(e.get('addr'), str) for e in entries):
                raise _Nonsense('%s: addresses of network %s are not a list of addresses'
                                % (what, network))
            for entry in entries:
                if entry.get('OS-EXT-IPS:type') == 'floating':
                    floating.append(entry['addr'])
                else:
                    fixed.append(entry['addr'])
        candidates = {'fixed': fixed, 'floating': floating,
                      'any': floating + fixed}[self.settings.ip_type]
        image, fault = data.get('image'), data.get('fault')
        return cloud.Server(
            id=sid, name=name, state=SERVER_STATES.get(status, 'building'),
            metadata=_metadata(data, what),
            address=candidates[0] if candidates else None,
            image_id=image.get('id') if isinstance(image, dict) else None,
            created=_optional_string(data, 'created', what),
            fault=fault.get('message') if isinstance(fault, dict) else None,
            detail=status)

    # -- images -----------------------------------------------------------
    def list_images(self):
        def images():
            # glanceclient follows the pages' next links: an image seen twice is a
            # next link that does not advance; the session's deadline bounds the rest.
            result, seen = [], set()
            for raw in self._glance.images.list():
                image = self._image(raw)
                if image.id in seen:
                    raise BadAnswer('provider %s: list images: the cloud\'s pages do not '
                                    'advance (image %s listed again after %d images)'
                                    % (self.name, image.id, len(result)))
                seen.add(image.id)
                result.append(image)
            return result
        return self._call('list images', 'an image list', images)

    def get_image(self, image_id):
        return self._call('get image %s' % image_id, 'an image',
                          lambda: self._image(self._glance.images.get(image_id)))

    def create_image(self, server_id, name, metadata):
        def snapshot():
            image_id = self._nova.servers.create_image(server_id, name, metadata)
            if not isinstance(image_id, str) or not image_id:
                raise _Nonsense('no image id')
            return str(image_id)
        return self._call('snapshot server %s as %s' % (server_id, name), 'a new image',
                          snapshot)

    def delete_image(self, image_id):
        return self._delete('image', self._glance.images.delete, image_id)

    _IMAGE_FIELDS = {'id', 'name', 'status', 'visibility', 'protected', 'os_hidden', 'owner',
                     'size', 'virtual_size', 'checksum', 'os_hash_algo', 'os_hash_value',
                     'container_format', 'disk_format', 'min_disk', 'min_ram', 'created_at',
                     'updated_at', 'tags', 'self', 'file', 'schema', 'direct_url', 'locations'}

    @classmethod
    def _image(cls, i):
        data = dict(i) if not isinstance(i, str) else i
        if not isinstance(data, dict):
            raise _Nonsense('an image that is %s' % _typename(data))
        iid = _string(data, 'id', 'image')
        what = 'image %s' % iid
        if 'name' not in data:
            raise _Nonsense('%s has no name' % what)
        status = _string(data, 'status', what)
        return cloud.Image(id=iid, name=_optional_string(data, 'name', what),
                           state=IMAGE_STATES.get(status, 'pending'),
                           metadata={k: v for k, v in data.items()
                                     if k not in cls._IMAGE_FIELDS},
                           created=_optional_string(data, 'created_at', what), detail=status)

    # -- flavors and keypairs ---------------------------------------------
    def list_flavors(self):
        def flavors():
            result = []
            for f in self._nova.flavors.list():
                data = _fields(f, 'flavor')
                fid = data.get('id')
                if isinstance(fid, bool) or not isinstance(fid, (str, int)) or fid == '':
                    raise _Nonsense('a flavor without an id')
                what = 'flavor %s' % fid
                result.append(cloud.Flavor(id=str(fid), name=_string(data, 'name', what),
                                           ram=_count(data, 'ram', what),
                                           vcpus=_count(data, 'vcpus', what),
                                           disk=_count(data, 'disk', what)))
            return result
        return self._call('list flavors', 'a flavor list', flavors)

    def ensure_keypair(self, name, public_key):
        try:
            existing = self._call('get keypair %s' % name, 'a keypair', lambda: _string(
                _fields(self._nova.keypairs.get(name), 'keypair'), 'public_key',
                'keypair %s' % name))
            if _key_body(existing) == _key_body(public_key):
                return False
            log.info('%s: keypair %s holds another key; replacing it', self.name, name)
            self.call('delete keypair %s' % name, self._nova.keypairs.delete, name)
        except NotFound:
            pass
        def create():
            _fields(self._nova.keypairs.create(name, public_key=public_key), 'keypair')
        self._call('create keypair %s' % name, 'a keypair', create)
        return True

    def pool_keypair(self, public_key):
        self.ensure_keypair(self.settings.keypair, public_key)
        return self.settings.keypair

    def list_keypairs(self):
        return self._call('list keypairs', 'a keypair list', lambda: [
            _string(_fields(k, 'keypair'), 'name', 'keypair')
            for k in self._nova.keypairs.list()])

    def delete_keypair(self, name):
        return self._delete('keypair', self._nova.keypairs.delete, name)


def _fields(resource, kind):
    """The answer's fields of a novaclient resource (a plain dict)."""
    data = resource.to_dict() if hasattr(resource, 'to_dict') else resource
    if kind == 'keypair' and isinstance(data, dict) and isinstance(data.get('keypair'), dict):
        data = data['keypair']
    if not isinstance(data, dict):
        raise _Nonsense('a %s that is %s' % (kind, _typename(data)))
    return data


def _string(data, key, what):
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise _Nonsense('%s has no %s' % (what, key) if value in (None, '') else
                        '%s: %s is %s, not a string' % (what, key, _typename(value)))
    return value


def _optional_string(data, key, what):
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise _Nonsense('%s: %s is %s, not a string' % (what, key, _typename(value)))
    return value


def _mapping(data, key, what):
    """A mapping field; absent is empty, anything else but a mapping is nonsense."""
    if key not in data:
        return {}
    value = data[key]
    if not isinstance(value, dict):
        raise _Nonsense('%s: %s is %s, not a mapping' % (what, key, _typename(value)))
    return value


def _metadata(data, what):
    metadata = _mapping(data, 'metadata', what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _Nonsense('%s: metadata is not a mapping of strings' % what)
    return dict(metadata)


def _count(data, key, what):
    value = data.get(key)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Nonsense('%s: %s is %s, not a whole number' % (what, key, _typename(value)))
    return value


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

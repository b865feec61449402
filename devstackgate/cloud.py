"""The provider seam: what the stages know of a cloud, free of any cloud SDK.

The stages (launch, image, reap, gate) talk to a provider only through an
:class:`Adapter`, chosen by the provider's ``kind`` (:func:`connect`).  An
adapter answers in plain frozen objects whose states are normalised, so no
stage compares a cloud's own status strings:

- :class:`Server` states: ``building``, ``active``, ``error``, ``gone``;
- :class:`Image` states: ``pending``, ``active``, ``failed``, ``gone``.

Errors classify themselves (``reason``: quota, not-found, outage, api,
bad-answer, api-timeout, no-flavor), so callers record and count them without
isinstance chains.  The metadata every server and image we create carries is
built here
(:func:`tags`), and so are the selection rules (:func:`smallest_flavor`,
:func:`newest_image`).

Writing a new kind: one module in ``devstackgate/drivers/`` with a subclass of
:class:`Adapter` named ``Adapter``, its entry in :data:`DRIVERS`, and its table
of provider keys in ``devstackgate.config.KIND_KEYS``.  The driver implements
the methods marked "driver" below and :meth:`Adapter.classify`; the retries,
the rate limit and the conveniences are shared.
"""

import contextlib
import dataclasses
import importlib
import logging
import random
import re
import threading
import time

from devstackgate import metrics
from devstackgate.errors import GateError

log = logging.getLogger('cloud')

#: kind -> the driver module that implements it (imported only when connecting).
DRIVERS = {'openstack': 'devstackgate.drivers.openstack',
           'baremetal': 'devstackgate.drivers.baremetal'}

SERVER_STATES = ('building', 'active', 'error', 'gone')
IMAGE_STATES = ('pending', 'active', 'failed', 'gone')

# Metadata on every server and image we create, so a crash at any line leaves
# something the reaper can recognise as ours.
META_PROVIDER = 'dg-provider'
META_KIND = 'dg-kind'          # 'node', 'template' (image build) or 'image'
META_NODE_ID = 'dg-node-id'
META_IMAGE_ID = 'dg-image-id'
META_LABEL = 'dg-label'


def tags(provider, kind, label, node_id=None, image_id=None):
    """The metadata of a server or image we create: whose it is, and which row it belongs to."""
    meta = {META_PROVIDER: provider, META_KIND: kind, META_LABEL: label}
    if node_id is not None:
        meta[META_NODE_ID] = str(node_id)
    if image_id is not None:
        meta[META_IMAGE_ID] = str(image_id)
    return meta


class CloudError(GateError):
    """An API call failed for good."""
    reason = 'api'


class QuotaExceeded(CloudError):
    reason = 'quota'


class NotFound(CloudError):
    reason = 'not-found'


class RateLimited(CloudError):
    """The cloud answered 429 or 413 (over its rate limit)."""
    reason = 'rate-limited'


class CloudUnavailable(CloudError):
    """The provider's API could not be reached (outage, DNS, refused)."""
    reason = 'outage'


class NoFlavor(CloudError):
    reason = 'no-flavor'


class BadAnswer(CloudError):
    """The cloud answered, but not what the call expects: not JSON, the wrong
    shape, a server without an id, a list whose pages do not advance.  Never
    retried: the cloud is broken or something in front of it is."""
    reason = 'bad-answer'


class CallTimeout(CloudError):
    """One logical call (all its pages and retries) ran past api-timeout."""
    reason = 'api-timeout'


@dataclasses.dataclass(frozen=True)
class Server:
    id: str
    name: str
    state: str                  # one of SERVER_STATES
    metadata: dict
    address: str                # the address to reach it by (the provider's ip-type); None yet
    image_id: str
    created: str                # ISO 8601, as the cloud gave it
    fault: str = None           # why it is in error, when the cloud says
    detail: str = None          # the cloud's own status word, for messages only


@dataclasses.dataclass(frozen=True)
class Image:
    id: str
    name: str
    state: str                  # one of IMAGE_STATES
    metadata: dict
    created: str
    detail: str = None          # the cloud's own status word, for messages only


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
    matching = [i for i in images if i.state == 'active'
                and (i.name == pattern or regex.fullmatch(i.name or ''))]
    if not matching:
        return None
    return max(matching, key=lambda i: (i.created or '', i.id))


class RateLimiter:
    """Space the starts of calls at least `interval` seconds apart, across threads.

    A caller reserves the next start under the lock and sleeps outside it, so
    calls run in parallel: only their starts are spaced.  The spacing adapts to
    the cloud: an answer that says it is over its rate limit doubles it (up to
    `ceiling`) and holds every call until its Retry-After; each call that
    succeeds takes a tenth of the way back to `interval`.  So the configured
    spacing can be short (a fill's creates need not queue a second apart) and
    a cloud that limits harder is heard at once by every thread.
    """

    RECOVERY = 0.9          # per successful call, the extra spacing left

    def __init__(self, interval, clock=time.monotonic, sleep=time.sleep, ceiling=None):
        self.base = self.interval = float(interval)
        self.ceiling = max(self.base, float(ceiling if ceiling is not None else interval))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def limited(self, retry_after=0.0):
        """The cloud said it is over its rate limit: slow down, and hold every
        call until `retry_after` s from now."""
        with self._lock:
            floor = min(self.ceiling, 0.1) if self.base == 0 else self.base
            self.interval = min(self.ceiling, max(floor, self.interval * 2))
            self._next = max(self._next, self._clock() + max(0.0, retry_after))

    def succeeded(self):
        if self.interval > self.base:
            with self._lock:
                self.interval = self.base + (self.interval - self.base) * self.RECOVERY
                if self.interval - self.base < 0.001:
                    self.interval = self.base

    def wait(self):
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


class Adapter:
    """One provider's servers, images, flavors and keypairs.

    Every method may raise :class:`CloudError` (or a subclass): the call was
    retried as far as api-retries and api-timeout allow, and failed for good.
    """

    @property
    def builds_images(self):
        """False for a kind whose nodes boot from their own disk (bare metal): launch
        then needs no image row, and update-image has nothing to build."""
        return self.provider.builds_images

    def __init__(self, provider, sleep=time.sleep, clock=time.monotonic):
        self.provider = provider
        self.name = provider.name
        self._sleep = sleep
        self._clock = clock
        self._limiter = RateLimiter(provider.api_rate, clock=clock, sleep=sleep,
                                    ceiling=provider.api_rate_max)
        self._local = threading.local()     # this thread's logical call
        self._flavors = None

    # -- driver: servers --------------------------------------------------
    def list_servers(self):
        """Every server of the account, [Server], in one logical call."""
        raise NotImplementedError

    def get_server(self, server_id):
        """One Server; raises NotFound."""
        raise NotImplementedError

    def create_server(self, name, image_id, flavor_id, key_name, metadata):
        """Boot a server and return its id at once (not idempotent: each call boots one)."""
        raise NotImplementedError

    def delete_server(self, server_id):
        """Ask for deletion; True if accepted, False if it was already gone (idempotent)."""
        raise NotImplementedError

    # -- driver: images ---------------------------------------------------
    def list_images(self):
        """Every image the account sees, [Image]."""
        raise NotImplementedError

    def get_image(self, image_id):
        """One Image; raises NotFound."""
        raise NotImplementedError

    def create_image(self, server_id, name, metadata):
        """Snapshot a server; return the new image's id at once (not idempotent)."""
        raise NotImplementedError

    def delete_image(self, image_id):
        """True if accepted, False if it was already gone (idempotent)."""
        raise NotImplementedError

    # -- driver: flavors and keypairs -------------------------------------
    def list_flavors(self):
        """[Flavor]."""
        raise NotImplementedError

    def list_keypairs(self):
        """The names of the account's keypairs."""
        raise NotImplementedError

    def ensure_keypair(self, name, public_key):
        """Make keypair `name` hold public_key; True if it was created or replaced (idempotent)."""
        raise NotImplementedError

    def delete_keypair(self, name):
        """True if deleted, False if there was none (idempotent)."""
        raise NotImplementedError

    def pool_keypair(self, public_key):
        """Make sure nodes can be booted with the pool's key; return the key_name
        create_server takes for it (idempotent)."""
        raise NotImplementedError

    def classify(self, what, exc):
        """Our error for a driver exception, and the seconds to wait before a retry
        (None: never retry).  Re-raise what is not the cloud's doing."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------
    @contextlib.contextmanager
    def logical_call(self, what):
        """One logical call, however many API calls it takes (the pages of a
        list): api-timeout bounds them all, retries included.  Calls made in
        it (call(), nested logical calls, the driver's own requests through
        remaining()) share its deadline; only its first call waits for
        api-rate, as one call would."""
        state = self._local
        if getattr(state, 'deadline', None) is not None:
            yield state.deadline                # nested: the outer call's deadline
            return
        state.deadline = self._clock() + self.provider.api_timeout
        state.what, state.calls = what, 0
        try:
            yield state.deadline
        finally:
            state.deadline = None

    def remaining(self):
        """Seconds left of the current logical call (None outside one); raises
        CallTimeout once it has run out, so no request starts past it."""
        deadline = getattr(self._local, 'deadline', None)
        if deadline is None:
            return None
        left = deadline - self._clock()
        if left <= 0:
            raise self.call_timeout()
        return left

    def call_timeout(self):
        """The CallTimeout of the current logical call."""
        return CallTimeout('provider %s: %s: no complete answer within api-timeout (%g s)'
                           % (self.name, getattr(self._local, 'what', 'call'),
                              self.provider.api_timeout))

    def call(self, what, fn, *args, **kwargs):
        """Run one API call: start it no sooner than api-rate allows, retry what
        classify() says may be retried with backoff and jitter, within
        api-retries attempts and the api-timeout deadline (of the logical call
        it is part of)."""
        with self.logical_call(what) as deadline:
            return self._attempts(what, deadline, fn, args, kwargs)

    def _attempts(self, what, deadline, fn, args, kwargs):
        p = self.provider
        stats = metrics.get()
        state = self._local
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1 or state.calls == 0:
                self._limiter.wait()
            state.calls += 1
            self.remaining()
            stats.incr(metrics.key('api', self.name, metrics.api_operation(what)))
            try:
                out = fn(*args, **kwargs)
            except Exception as e:    # classified; what is not the cloud's is re-raised
                error, retry_after = self.classify(what, e)
                stats.incr(metrics.key('api', self.name, 'error', error.reason))
            else:
                self._limiter.succeeded()
                return out
            if isinstance(error, RateLimited):
                self._limiter.limited(retry_after or 0.0)
            if retry_after is None:
                raise error
            delay = max(retry_after, p.api_backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
            if attempt >= p.api_retries or self._clock() + delay > deadline:
                raise error.__class__('%s (gave up after %d attempts)' % (error, attempt))
            log.info('%s: %s failed (%s); retry %d in %.1f s',
                     self.name, what, error.reason, attempt, delay)
            self._sleep(delay)

    def paged(self, what, page, key=lambda item: item.id):
        """One logical list call made of pages: page(marker) gives the items
        after `marker` (None: the first page), each page through its own
        call() (with its retries), until an empty page, or a page that says
        it is the last: page() may give (items, more), more false when the
        cloud linked no next page (nova links one only from a full page), so
        a list that fits one page is one call.  api-timeout bounds all the
        pages; a page ending on a marker already used (a cloud whose paging
        does not advance) is a BadAnswer.  An item listed twice is kept once."""
        with self.logical_call(what):
            items, seen, markers, marker = [], set(), set(), None
            while True:
                batch, more = page(marker), True
                if isinstance(batch, tuple):
                    batch, more = batch
                if not batch:
                    return items
                for item in batch:
                    if key(item) not in seen:
                        seen.add(key(item))
                        items.append(item)
                if not more:
                    return items
                marker = key(batch[-1])
                if marker in markers:
                    raise BadAnswer('provider %s: %s: the cloud\'s pages do not advance '
                                    '(marker %s repeated after %d pages)'
                                    % (self.name, what, marker, len(markers) + 1))
                markers.add(marker)

    def flavor_for(self, min_ram):
        """The smallest flavor with at least min_ram MB (flavors listed once per adapter)."""
        if self._flavors is None:
            self._flavors = self.list_flavors()
        flavor = smallest_flavor(self._flavors, min_ram)
        if flavor is None:
            raise NoFlavor('provider %s: no flavor has min-ram %d MB' % (self.name, min_ram))
        return flavor

    def delete_quietly(self, kind, external_id, what):
        """Delete a server, image or keypair, best effort: True if accepted or
        already gone; on failure log one line and leave it to the reaper."""
        delete = {'server': self.delete_server, 'image': self.delete_image,
                  'keypair': self.delete_keypair}[kind]
        try:
            delete(external_id)
            return True
        except CloudError as e:
            log.warning('%s: could not delete %s %s now (%s), the reaper will retry: %s',
                        what, kind, external_id, e.reason, e)
            return False


def connect(provider, environ=None, db=None):
    """The adapter of one provider, by its kind.  db: the pool's database, for a
    kind that keeps state of its own there (bare metal: which host is in which
    use); without it such a driver opens the configured one."""
    module = importlib.import_module(DRIVERS[provider.kind])
    return module.Adapter(provider, environ=environ, db=db)

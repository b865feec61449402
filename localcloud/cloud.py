"""One running local cloud: its state, its API listener and its knobs.

The API listener (127.0.0.1, one port) serves keystone under /identity, nova
under /compute, glance under /image, cinder under /volume (unless
``block-storage: false``) and, with ``network-service: true``, neutron under
/networking: the URLs the token's catalog lists.
Every call is counted under "METHOD /path/{template}", then delayed by
api-latency (and a DELETE also by delete-latency), then possibly answered with
an injected 500 or 429, then handled, and its answer garbled if the
``nonsense`` knob says so (localcloud.nonsense).  Its span (wall-clock time it
reached dispatch, before the latency, and time its answer was ready) is kept
too, the newest ``span-history`` per key, so tests can tell parallel calls
from sequential or rate-limited ones.
An outage closes the listener (connection refused) and reopens it on the
same port when it ends.

The admin operations (faults, stats, servers, killing a node, revoke tokens)
are plain methods here; the admin HTTP endpoint and the test fixtures call them.
"""

import logging
import shutil
import threading
import time
import uuid

from localcloud import faults as faults_mod
from localcloud import cinder, glance, keystone, neutron, nova, nonsense
from localcloud.state import ApiError, CloudState
from localcloud.web import (ListenError, Listener, NoRoute, Response,
                            generic_template)

LOG = logging.getLogger("localcloud")
#: Always served.
SERVICES = (keystone, nova, glance)


def services_of(config):
    """The API modules one cloud serves: keystone, nova and glance, cinder
    unless ``block-storage: false``, neutron with ``network-service:
    true``.  A module not served answers 404 like any unknown path."""
    return SERVICES + ((cinder,) if config.block_storage else ()) + \
        ((neutron,) if config.network_service else ())


def _knob_names(update, kwargs):
    """Merge a dict of knobs and keyword arguments (underscores -> dashes)."""
    merged = dict(update or {})
    for key, value in kwargs.items():
        merged[key.replace("_", "-")] = value
    return merged


class Cloud:
    def __init__(self, config, state_dir):
        self.config = config
        self.name = config.name
        self.state_dir = state_dir
        self.state = CloudState(config, state_dir)
        self.services = services_of(config)
        self.port = None
        self._listener = None
        self._transition = threading.Lock()

    def __repr__(self):
        return "<Cloud %s port=%s>" % (self.name, self.port)

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def auth_url(self):
        return self.base_url + keystone.PREFIX

    # -- lifecycle ------------------------------------------------------------------

    def start(self):
        """Bind the API port (the configured one, or a free one) and serve,
        unless the configuration starts the cloud in an outage."""
        with self._transition:
            self._listener = self._listen(self.config.port)
            self.port = self._listener.port
            if self.state.faults["outage"]:
                self._listener.close()
                self._listener = None
        LOG.info("cloud %s: API on %s (identity %s)%s", self.name,
                 self.base_url, self.auth_url,
                 " - in outage" if self._listener is None else "")

    def _listen(self, port):
        try:
            return Listener("127.0.0.1", port, self.dispatch,
                            "localcloud-api-%s" % self.name)
        except OSError as e:
            raise ListenError(e.errno, "cloud %s: cannot listen on 127.0.0.1:%d: "
                          "%s" % (self.name, port, e.strerror)) from None

    def close(self):
        """Stop the listener and every node; remove the cloud's state."""
        with self._transition:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self.state.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        LOG.info("cloud %s: stopped", self.name)

    def _apply_outage(self, outage):
        with self._transition:
            if outage and self._listener is not None:
                self._listener.close()
                self._listener = None
                LOG.info("cloud %s: outage begins, port %d refuses "
                         "connections", self.name, self.port)
            elif not outage and self._listener is None and self.port:
                self._listener = self._listen(self.port)
                LOG.info("cloud %s: outage over, port %d answers again",
                         self.name, self.port)

    # -- admin operations -----------------------------------------------------------

    def get_faults(self):
        return self.state.get_faults()

    def set_faults(self, update=None, **kwargs):
        """Merge knobs (kebab-case keys, or keyword arguments with
        underscores); FaultError names a bad knob.  Returns all knobs."""
        result = self.state.set_faults(_knob_names(update, kwargs))
        self._apply_outage(result["outage"])
        LOG.info("cloud %s: faults now %s", self.name,
                 {k: v for k, v in result.items()
                  if k in _knob_names(update, kwargs)})
        return result

    def stats(self):
        return self.state.stats_report()

    def reset_stats(self):
        self.state.reset_stats()

    def spans(self, key=None):
        """{"METHOD /path/{template}": [(start, end), ...]}: when each of
        the newest ``span-history`` calls per key reached the cloud (before
        api-latency) and when its answer was ready, as ``time.time()``
        floats, in start order.  With ``key``: that key only (maybe [])."""
        return self.state.spans_report(key)

    def spans_report(self, key=None):
        """What ``GET /clouds/<name>/stats/spans`` answers (JSON-ready)."""
        return {"limit": self.config.span_history,
                "spans": {k: [list(span) for span in v]
                          for k, v in self.spans(key).items()}}

    def servers(self):
        return self.state.servers_report()

    def images(self):
        return self.state.images_report()

    def kill_node(self, server_id):
        """Let an ACTIVE, reachable server stop answering SSH now, as the
        node-death knob would (it stays ACTIVE).  Returns its servers()
        entry; ApiError 404 (unknown server) or 409 (not ACTIVE, or not
        answering SSH anyway)."""
        self.state.kill_node(server_id)
        (entry,) = [s for s in self.state.servers_report()
                    if s["id"] == server_id]
        return entry

    def revoke_tokens(self):
        return self.state.revoke_tokens()

    def info(self):
        return {"name": self.name, "api_port": self.port,
                "auth_url": self.auth_url, "region": self.config.region,
                "ssh_port": self.config.ssh_port,
                "address_range": str(self.config.address_range),
                # network service: where fixed and floating addresses come
                # from (without it: the address range and None)
                "fixed_range": str(self.config.fixed_range),
                "floating_range": str(self.config.floating_range)
                if self.config.floating_range is not None else None,
                "services": [module.PREFIX.strip("/")
                             for module in self.services],
                "outage": self._listener is None}

    # -- API ------------------------------------------------------------------------

    def _service(self, path):
        for module in self.services:
            prefix = module.PREFIX
            if path == prefix or path.startswith(prefix + "/"):
                return module, path[len(prefix):]
        return None, path

    def dispatch(self, request):
        start = time.time()         # wall clock: comparable across processes
        module, subpath = self._service(request.path)
        handler, allowed = None, ()
        key = generic_template(request.path)
        if module is not None:
            try:
                handler, request.params, template = module.router.match(
                    request.method, subpath)
                key = module.PREFIX + template
            except NoRoute as e:
                allowed = e.allowed
        latency, injected, retry_after = self.state.draw_api_fault(request.method)
        if latency:
            time.sleep(latency)
        try:
            if module is None:
                response = Response(404, "404 Not Found\n\nThe resource could "
                                    "not be found.\n", "text/plain")
            elif injected:
                raise ApiError(injected, module.injected_message(injected),
                               {"Retry-After": str(retry_after)}
                               if injected == 429 else {})
            elif handler is None:
                if allowed:
                    raise ApiError(405, "The method specified is not allowed "
                                   "for this resource.",
                                   {"Allow": ", ".join(allowed)})
                raise ApiError(404, "The resource could not be found.")
            else:
                response = module.handle(self, request, handler)
                kind = nonsense.ROUTES.get("%s %s" % (request.method, key))
                garbled = kind and faults_mod.nonsense_for(
                    self.state.faults, kind)   # replaced whole on a change
                if garbled:
                    response = nonsense.garble(response, garbled)
        except ApiError as e:
            request.error = e       # for a module's own error types
            response = module.render_error(self, request, e.status, e.message,
                                           e.headers)
            if e.status == 401:
                response.headers["WWW-Authenticate"] = \
                    'Keystone uri="%s"' % self.auth_url
        request_id = "req-%s" % uuid.uuid4()
        response.headers["x-openstack-request-id"] = request_id
        if module is nova:
            response.headers["x-compute-request-id"] = request_id
        self.state.record_call("%s %s" % (request.method, key),
                               response.status, start, time.time())
        return response

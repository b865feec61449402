"""statsd metrics: counters, timers and gauges for Graphite, or nothing at all.

Set ``STATSD_HOST`` (and optionally ``STATSD_PORT``, default 8125, and
``STATSD_PREFIX``, default none) in a script's environment and it sends its
metrics over UDP through the ``statsd`` client library.  Without
``STATSD_HOST``, :func:`get` returns a no-op client: the ``statsd`` library is
not even imported (fetch must stay fast), and nothing is sent.  Sending is
fire-and-forget UDP; a metric can never fail or slow down a script.

Every key starts with ``dg.`` (after ``STATSD_PREFIX.`` when that is set).
Each variable part (provider, label, state, reason, result, API operation) is
sanitised by :func:`key`: anything but letters, digits, ``_`` and ``-``
(notably ``.``) becomes ``_``, so ``rax.dfw`` is one Graphite node,
``rax_dfw``.  Keys hold only names and states, values only counts and
durations: never an address, a server id or anything secret.

=========================================================  =======  ===============================
key                                                        type     sent by
=========================================================  =======  ===============================
``dg.launch.<provider>.<label>.ready``                     counter  launch: a node passed its checks
``dg.launch.<provider>.<label>.ready_time``                timer    launch: ms from row created to ready
``dg.launch.<provider>.<label>.failed.<reason>``           counter  launch: a node failed (error,
                                                                    timeout, no-network, quota, ...)
``dg.nodes.<provider>.<label>.<state>``                    gauge    end of every launch and reap run:
                                                                    node rows per state (every state
                                                                    of every label, 0 included)
``dg.fetch.<label>.wait``                                  timer    fetch: ms waited for the claim
``dg.fetch.<label>.got``                                   counter  fetch: a node was handed out
``dg.fetch.<label>.none``                                  counter  fetch: no ready node in time
``dg.gate.<provider>.<label>.duration``                    timer    gate finish: ms from fetch to result
``dg.gate.<provider>.<label>.<result>``                    counter  gate finish: success, failure,
                                                                    timeout or aborted
``dg.image.<provider>.<label>.duration``                   timer    image build: ms, success or not
``dg.image.<provider>.<label>.ready``                      counter  image build promoted
``dg.image.<provider>.<label>.failed.<reason>``            counter  image build failed
``dg.api.<provider>.<operation>``                          counter  every API call attempt (retries
                                                                    count again), e.g. ``list_servers``,
                                                                    ``create_server``, ``delete_image``
``dg.api.<provider>.error.<reason>``                       counter  every failed attempt, by reason
                                                                    (api, quota, outage, not-found, ...)
=========================================================  =======  ===============================

Timers are in milliseconds, as statsd expects.
"""

import logging
import os
import re
import threading

log = logging.getLogger('metrics')

HOST_ENV, PORT_ENV, PREFIX_ENV = 'STATSD_HOST', 'STATSD_PORT', 'STATSD_PREFIX'
DEFAULT_PORT = 8125
ROOT = 'dg'

_UNSAFE = re.compile(r'[^A-Za-z0-9_-]')
_clients = {}
_lock = threading.Lock()


def sanitise(part):
    """One Graphite path component: '.', ':', '|', spaces and non-ASCII become '_'."""
    return _UNSAFE.sub('_', str(part)) or '_'


def key(*parts):
    """``dg.<part>.<part>...`` with every part sanitised."""
    return '.'.join([ROOT] + [sanitise(p) for p in parts])


def api_operation(what):
    """The operation of an Adapter.call description, without ids or names:
    'get server 1f2e' -> 'get_server', 'snapshot server X as Y' -> 'snapshot_server'."""
    return '_'.join(what.split()[:2]) or 'call'


class Null:
    """What :func:`get` returns without STATSD_HOST: every method does nothing."""
    enabled = False

    def incr(self, name, count=1):
        pass

    def timing(self, name, ms):
        pass

    def gauge(self, name, value):
        pass


class Client:
    """A statsd client that never raises: a metric must not break a script."""
    enabled = True

    def __init__(self, statsd_client):
        self._statsd = statsd_client

    def incr(self, name, count=1):
        try:
            self._statsd.incr(name, count)
        except Exception as e:      # pragma: no cover - the library swallows socket errors
            log.debug('statsd: %s not sent: %s', name, e)

    def timing(self, name, ms):
        try:
            self._statsd.timing(name, max(0.0, ms))
        except Exception as e:      # pragma: no cover
            log.debug('statsd: %s not sent: %s', name, e)

    def gauge(self, name, value):
        try:
            # A negative gauge would be read as a delta by statsd; counts never are.
            self._statsd.gauge(name, max(0, value))
        except Exception as e:      # pragma: no cover
            log.debug('statsd: %s not sent: %s', name, e)


NULL = Null()


def get(environ=None):
    """The client for this process's STATSD_* settings (cached), or the no-op :data:`NULL`."""
    environ = os.environ if environ is None else environ
    host = environ.get(HOST_ENV, '').strip()
    if not host:
        return NULL
    settings = (host, environ.get(PORT_ENV, '').strip(), environ.get(PREFIX_ENV, '').strip())
    with _lock:
        client = _clients.get(settings)
        if client is None:
            client = _clients[settings] = _connect(*settings)
        return client


def _connect(host, port, prefix):
    try:
        port = int(port) if port else DEFAULT_PORT
    except ValueError:
        log.warning('%s=%r is not a port number; sending no metrics', PORT_ENV, port)
        return NULL
    try:
        import statsd          # only when asked for: fetch must not pay for it
        return Client(statsd.StatsClient(host, port, prefix=prefix.strip('.') or None))
    except ImportError:
        log.warning('%s is set but the statsd library is not installed; sending no metrics',
                    HOST_ENV)
    except OSError as e:        # the host does not resolve
        log.warning('statsd host %s:%d: %s; sending no metrics', host, port, e)
    return NULL


def node_gauges(client, provider, labels, counts):
    """Send dg.nodes.<provider>.<label>.<state> for every label and node state.

    counts: {(label, state): n}; a state with no rows is sent as 0, so a
    gauge never keeps showing nodes that are gone.
    """
    if not client.enabled:
        return
    from vmdatabase import NODE_STATES      # already imported by every caller
    for label in sorted(set(labels) | {label for label, _ in counts}):
        for state in NODE_STATES:
            client.gauge(key('nodes', provider, label, state), counts.get((label, state), 0))

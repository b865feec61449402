"""Fetch: hand the oldest ready node of a label to one gate job, in milliseconds.

This path reads the configuration and the database, nothing else: it imports
no cloud client and makes no cloud call.  A fetch that gets its node at once
imports only what it uses (see devstackgate.cmd.fetch): waiting, metrics and
logging are imported when they are needed.
"""

import os
import sys
import time

from devstackgate import log as logmod
from devstackgate.errors import NoNodeAvailable, UsageError

# Jenkins and Gerrit/Zuul variables recorded with the gate result, in order of preference.
_CHANGE_VARS = (('ZUUL_CHANGE', 'ZUUL_PATCHSET'), ('GERRIT_CHANGE_NUMBER', 'GERRIT_PATCHSET_NUMBER'))
_REF_VARS = ('ZUUL_REF', 'GERRIT_REFSPEC')
# shlex.quote's safe characters (its [^\w@%+=:,./-] with re.ASCII), without importing re.
_SAFE = frozenset('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-')


def job_identity(environ):
    """(claimed_by, result columns) from the Jenkins/Gerrit/Zuul environment."""
    job, build = environ.get('JOB_NAME'), environ.get('BUILD_NUMBER')
    change = None
    for number_var, patchset_var in _CHANGE_VARS:
        if environ.get(number_var):
            change = environ[number_var]
            if environ.get(patchset_var):
                change += ',' + environ[patchset_var]
            break
    if change is None:
        change = next((environ[v] for v in _REF_VARS if environ.get(v)), None)
    if job:
        claimed_by = '%s #%s' % (job, build or '?')
    else:
        claimed_by = '%s:%d' % (os.uname().nodename, os.getpid())
    return claimed_by, {'job_name': job, 'build_number': build, 'change_ref': change}


def quote(s):
    """shlex.quote(s), the same characters out (tests check it), without re."""
    if not s:
        return "''"
    if all(c in _SAFE for c in s):
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"


def shell_lines(node, ssh_port, result):
    """NODE_*=value lines, each value quoted so that `eval` gives it back exactly."""
    values = [
        ('NODE_PROVIDER', node.provider), ('NODE_NAME', node.name), ('NODE_IP', node.ip),
        ('NODE_ID', node.id), ('NODE_IMAGE', node.label), ('NODE_USERNAME', node.username),
        ('NODE_HOST_KEY', node.host_key), ('NODE_SSH_PORT', ssh_port),
        ('NODE_RESULT_ID', result.id if result else ''),
    ]
    return ['%s=%s' % (k, quote('' if v is None else str(v))) for k, v in values]


def _metrics():
    """The statsd client, or None without STATSD_HOST (metrics.get's rule), when
    metrics is not even imported."""
    if not os.environ.get('STATSD_HOST', '').strip():
        return None, None
    from devstackgate import metrics
    return metrics, metrics.get()


def tiers(offering, providers=None, avoid=(), quarantined=()):
    """The provider lists a claim tries in turn: the healthy ones first, then the
    quarantined ones (devstackgate.health), then those to avoid (a run retrying
    after an infra failure prefers another provider, but takes the same one
    rather than none).  [None]: any provider."""
    if not avoid and not quarantined:
        return [providers or None]
    allowed = list(providers or offering)
    out = [[p for p in allowed if p not in avoid and p not in quarantined],
           [p for p in allowed if p in quarantined and p not in avoid],
           [p for p in allowed if p in avoid]]
    return [t for t in out if t]


def fetch(config, label, providers=None, wait_for=0.0, db=None, environ=None,
          clock=time.monotonic, sleep=time.sleep, avoid=()):
    """Claim a node; returns (node, result).  Raises UsageError or NoNodeAvailable.

    `config` is a config.Config or a config_cache.FetchConfig; `db` a
    claim.FastDatabase (the default) or a vmdatabase.Database.  `avoid`:
    providers to take a node from only when no other has one ready.
    """
    environ = os.environ if environ is None else environ
    labels = config.labels()
    if label not in labels:
        raise UsageError('unknown label %r; known labels: %s' % (label, ', '.join(labels)))
    offering = [p.name for p in config.providers if p.image(label)]
    if providers:
        unknown = [p for p in providers if p not in offering]
        if unknown:
            raise UsageError('provider(s) %s do not offer label %r; providers offering it: %s'
                             % (', '.join(unknown), label, ', '.join(offering)))
    if db is None:
        from devstackgate.claim import FastDatabase
        db = FastDatabase(config)
        try:        # its connection is kept for a next call: say goodbye to the server
            return fetch(config, label, providers, wait_for, db, environ, clock, sleep, avoid)
        finally:
            db.close()
    claimed_by, result = job_identity(environ)
    metrics, stats = _metrics()
    started = clock()
    def claim():            # the quarantines read and the claim: one transaction
        return db.claim_node(label, claimed_by, result=result,
                             order=lambda quarantined: tiers(offering, providers, avoid,
                                                             quarantined))
    # The first attempt at once (as wait.iterate makes it); the wait's machinery
    # (and its logging) only when there is something to wait for.
    node, row = claim()
    if node is None and not wait_for <= 0:
        from devstackgate import wait
        logmod.ensure_setup()       # its "waiting for" lines
        attempts = wait.iterate(started + wait_for, config.fetch_poll,
                                'a ready %s node' % label, clock=clock, sleep=sleep)
        next(attempts)              # its first attempt was the one above
        try:
            for _ in attempts:
                node, row = claim()
                if node is not None:
                    break
        except wait.Timeout:
            pass
    if stats is not None:
        stats.timing(metrics.key('fetch', label, 'wait'), (clock() - started) * 1000)
        stats.incr(metrics.key('fetch', label, 'got' if node is not None else 'none'))
    if node is not None:
        return node, row
    counts = (db.node_counts(label) if hasattr(db, 'node_counts')
              else db.transact(lambda s: s.node_counts(label)))
    by_provider = {}
    for (provider, state), n in sorted(counts.items()):
        by_provider.setdefault(provider, []).append('%s %d' % (state, n))
    detail = '; '.join('%s: %s' % (p, ', '.join(v)) for p, v in by_provider.items()) or 'no nodes'
    raise NoNodeAvailable('no ready node of label %r%s after waiting %g s (%s)'
                          % (label, ' on ' + ', '.join(providers) if providers else '', wait_for,
                             detail))


def print_node(config, node, result, out=None):
    out = sys.stdout if out is None else out
    port = config.provider(node.provider).ssh_port
    for line in shell_lines(node, port, result):
        print(line, file=out)
    out.flush()
    logmod.emit('fetch', 'fetched %s (%s, label %s) at %s for %s'
                % (node.name, node.provider, node.label, node.ip, node.claimed_by))

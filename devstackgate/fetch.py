"""Fetch: hand the oldest ready node of a label to one gate job, in milliseconds.

This path reads the configuration and the database, nothing else: it imports
no cloud client and makes no cloud call.
"""

import logging
import os
import shlex
import sys
import time

import vmdatabase
from devstackgate import metrics, wait
from devstackgate.errors import NoNodeAvailable, UsageError

log = logging.getLogger('fetch')

# Jenkins and Gerrit/Zuul variables recorded with the gate result, in order of preference.
_CHANGE_VARS = (('ZUUL_CHANGE', 'ZUUL_PATCHSET'), ('GERRIT_CHANGE_NUMBER', 'GERRIT_PATCHSET_NUMBER'))
_REF_VARS = ('ZUUL_REF', 'GERRIT_REFSPEC')


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


def shell_lines(node, ssh_port, result):
    """NODE_*=value lines, each value quoted so that `eval` gives it back exactly."""
    values = [
        ('NODE_PROVIDER', node.provider), ('NODE_NAME', node.name), ('NODE_IP', node.ip),
        ('NODE_ID', node.id), ('NODE_IMAGE', node.label), ('NODE_USERNAME', node.username),
        ('NODE_HOST_KEY', node.host_key), ('NODE_SSH_PORT', ssh_port),
        ('NODE_RESULT_ID', result.id if result else ''),
    ]
    return ['%s=%s' % (k, shlex.quote('' if v is None else str(v))) for k, v in values]


def fetch(config, label, providers=None, wait_for=0.0, db=None, environ=None,
          clock=time.monotonic, sleep=time.sleep):
    """Claim a node; returns (node, result).  Raises UsageError or NoNodeAvailable."""
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
    db = db or vmdatabase.Database.from_config(config)
    claimed_by, result = job_identity(environ)
    stats = metrics.get()
    started = clock()
    try:
        for _ in wait.iterate(started + wait_for, config.fetch_poll, 'a ready %s node' % label,
                              clock=clock, sleep=sleep):
            node, row = db.claim_node(label, claimed_by, providers=providers, result=result)
            if node is not None:
                stats.timing(metrics.key('fetch', label, 'wait'), (clock() - started) * 1000)
                stats.incr(metrics.key('fetch', label, 'got'))
                return node, row
    except wait.Timeout:
        pass
    stats.timing(metrics.key('fetch', label, 'wait'), (clock() - started) * 1000)
    stats.incr(metrics.key('fetch', label, 'none'))
    counts = db.transact(lambda s: s.node_counts(label))
    by_provider = {}
    for (provider, state), n in sorted(counts.items()):
        by_provider.setdefault(provider, []).append('%s %d' % (state, n))
    detail = '; '.join('%s: %s' % (p, ', '.join(v)) for p, v in by_provider.items()) or 'no nodes'
    raise NoNodeAvailable('no ready node of label %r%s after waiting %g s (%s)'
                          % (label, ' on ' + ', '.join(providers) if providers else '', wait_for,
                             detail))


def print_node(config, node, result, out=sys.stdout):
    port = config.provider(node.provider).ssh_port
    for line in shell_lines(node, port, result):
        print(line, file=out)
    out.flush()
    log.info('fetched %s (%s, label %s) at %s for %s',
             node.name, node.provider, node.label, node.ip, node.claimed_by)

"""The gate run's Python side: settings for devstack-vm-gate.sh, and finishing a run.

``devstack-vm-gate.sh`` (what the gate Jenkins job runs) does the work in bash
with the real git, ssh and rsync.  It asks this module for two things:

- its settings (:func:`settings`), printed by ``python3 -m
  devstackgate.cmd.gate_settings`` as shell-quoted ``GATE_*=`` lines, so the
  YAML configuration stays the single source of truth;
- the end of a run (:func:`finish`), through ``python3 -m
  devstackgate.cmd.finish``: the result and its end time are recorded, then a
  node whose run passed (or was aborted) is deleted and a node whose run
  failed or timed out is held for ``hold-hours`` with the job, build and
  change recorded as the reason.

Deleting is two-phase: the row goes to ``delete`` first, then the cloud is
asked to delete the server, best effort.  If that call fails (a provider
outage, no credentials on this slave) the hourly reaper finishes the job, so
a gate run never fails or hangs on a cloud API.
"""

import logging
import os
import shlex
import time

import vmdatabase
from devstackgate import cells, fetch, health, log as console, metrics
from devstackgate.errors import GateError, UsageError

log = logging.getLogger('gate')

#: DEVSTACK_GATE_TEMPEST=1 selects TEMPEST_COMMAND instead of gate.test-command.
TEMPEST_ENV = 'DEVSTACK_GATE_TEMPEST'
#: devstack installs tempest into $DEST/tempest; the gate's local.conf sets
#: DEST to the copied workspace and enables the tempest service.
TEMPEST_COMMAND = 'cd devstack && ./stack.sh && cd ../tempest && tox -e full'
#: Seconds the local safety timeout adds to the remote test-timeout, so the
#: node's own `timeout` normally fires first and the local one only catches a
#: hung connection.
SAFETY_MARGIN = 60
#: Seconds log collection may take after Jenkins aborted the run (at most
#: rsync-timeout): Jenkins does not wait long after its SIGTERM.
ABORT_COPY_TIMEOUT = 120

FINAL_RESULTS = ('success', 'failure', 'timeout', 'infra', 'aborted')
DELETE_RESULTS = ('success', 'aborted')
HOLD_RESULTS = ('failure', 'timeout', 'infra')
#: How each result reads on the console: its failure class.  'infra' is a node
#: (or the pool) that failed, not the change: SSH, the host key, a copy, the
#: node stopping mid-run, or no node in time.
CLASSES = {'success': 'success', 'failure': 'test failure', 'timeout': 'timeout',
           'infra': 'infra failure', 'aborted': 'aborted'}


def _number(value):
    """A config number as the shell and `timeout` want it: 5400, not 5400.0."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def tempest_selected(environ):
    return environ.get(TEMPEST_ENV, '').strip().lower() in ('1', 'true', 'yes')


def settings(config, labels=None, environ=None, db=None):
    """The gate's settings as (NAME, value) pairs; a tuple value is a bash array.

    `labels` (default gate.labels) are the cells the run tests: GATE_LABELS
    holds the enabled ones, GATE_SKIPPED and GATE_SKIPPED_WHY the disabled
    ones and why (switched off in the configuration or in `db`).  Raises
    UsageError for a label no provider offers, or for two projects that would
    be cloned to the same directory.
    """
    environ = os.environ if environ is None else environ
    gate = config.gate
    labels = list(dict.fromkeys(labels or gate.labels))
    known = config.labels()
    for label in labels:
        if label not in known:
            raise UsageError('label %r: no provider offers it; known labels: %s'
                             % (label, ', '.join(known) or 'none'))
    off = cells.disabled(config, db)
    enabled = [label for label in labels if label not in off]
    skipped = [label for label in labels if label in off]
    seen = {}
    for project in gate.projects:
        name = project.rstrip('/').rsplit('/', 1)[-1]
        if name in seen:
            raise UsageError('%s: gate.projects: %s and %s would both be cloned to %s/%s'
                             % (config.path, seen[name], project, gate.workspace, name))
        seen[name] = project
    tempest = tempest_selected(environ)
    return [
        ('GATE_CONFIG', os.path.abspath(config.path)),
        ('GATE_LABELS', tuple(enabled)),
        ('GATE_SKIPPED', tuple(skipped)),
        ('GATE_SKIPPED_WHY', tuple(off[label] for label in skipped)),
        ('GATE_GIT_BASE', gate.git_base.rstrip('/') or gate.git_base),
        ('GATE_PROJECTS', tuple(p.strip('/') for p in gate.projects)),
        ('GATE_BRANCH', gate.branch),
        ('GATE_WORKSPACE', gate.workspace),
        ('GATE_TEMPEST', '1' if tempest else ''),
        ('GATE_TEST_COMMAND', TEMPEST_COMMAND if tempest else gate.test_command),
        ('GATE_TEST_TIMEOUT', _number(gate.test_timeout)),
        ('GATE_TEST_SAFETY_TIMEOUT', _number(gate.test_timeout + SAFETY_MARGIN)),
        ('GATE_FETCH_WAIT', _number(gate.fetch_wait)),
        ('GATE_GIT_TIMEOUT', _number(gate.git_timeout)),
        ('GATE_GIT_RETRIES', str(gate.git_retries)),
        ('GATE_RSYNC_TIMEOUT', _number(gate.rsync_timeout)),
        ('GATE_ABORT_COPY_TIMEOUT', _number(min(gate.rsync_timeout, ABORT_COPY_TIMEOUT))),
        ('GATE_HOLD_HOURS', _number(config.hold_hours)),
        ('GATE_ATTEMPTS', str(gate.attempts)),
        ('GATE_INFRA_HOLD_MINUTES', _number(gate.infra_hold_minutes)),
        ('GATE_ALIVE_INTERVAL', _number(gate.alive_interval)),
        ('GATE_ALIVE_COUNT', str(gate.alive_count)),
        ('GATE_SSH_KEY', config.ssh_private_key),
    ]


def shell_lines(pairs):
    """NAME=value lines for bash's eval; a tuple becomes an array."""
    lines = []
    for name, value in pairs:
        if isinstance(value, tuple):
            lines.append('%s=(%s)' % (name, ' '.join(shlex.quote(v) for v in value)))
        else:
            lines.append('%s=%s' % (name, shlex.quote(str(value))))
    return lines


def hold_seconds(config, result):
    """How long a node that ended so is held: hold-hours, or briefly for an infra failure
    (the node, not the change, failed; it is kept only to look at)."""
    if result == 'infra':
        return config.gate.infra_hold_minutes * 60
    return config.hold_hours * 3600


def hold_reason(result, change, job, build, detail=None):
    reason = '%s: change %s (job %s, build %s)' % (result, change or 'none', job or 'unknown',
                                                   build or 'unknown')
    return reason + ('; ' + detail if detail else '')


def describe(node):
    return '%s (%s, id %d)' % (node.name or 'node-%d' % node.id, node.provider, node.id)


def finish(config, node_id, result, result_id=None, detail=None, environ=None, db=None,
           connect=None, now=None):
    """Record a gate run's result, then delete or hold its node.

    Returns the action taken: 'delete', 'hold' or None (the node was no
    longer in use, so it was left as it is).  `connect` gives the cloud
    adapter of a provider (default: devstackgate.cloud.connect).
    """
    if result not in FINAL_RESULTS:
        raise UsageError('result %r: expected one of %s' % (result, ', '.join(FINAL_RESULTS)))
    environ = os.environ if environ is None else environ
    db = db or vmdatabase.Database.from_config(config)
    now = time.time() if now is None else now
    claimed_by, identity = fetch.job_identity(environ)

    def record(s):
        node = s.get_node(node_id)
        if node is None:
            raise GateError('node %d: not in the database %s' % (node_id, db))
        row = None
        if result_id is not None:
            row = s.get_result(result_id)
            if row is None:
                raise GateError('node %s: result %d is not in the database' % (describe(node),
                                                                             result_id))
            if row.node_id != node.id:
                raise UsageError('result %d belongs to node %s, not to node %s'
                                 % (result_id, row.node_id, describe(node)))
            s.finish_result(result_id, result, now=now, detail=detail)
        if node.state != 'used':
            return node, row, None, None
        # Conditional updates: the reaper may take a node that ran past
        # max-used-hours at this very moment; its decision stands.
        if result in DELETE_RESULTS:
            if not s.transition(node, 'delete', now=now):
                return node, row, None, None
            return node, row, 'delete', None
        job = (row and row.job_name) or identity['job_name']
        build = (row and row.build_number) or identity['build_number']
        change = (row and row.change_ref) or identity['change_ref']
        hold = dict(hold_until=now + hold_seconds(config, result),
                    held_by=node.claimed_by or claimed_by,
                    hold_reason=hold_reason(result, change, job, build, detail))
        if not s.transition(node, 'hold', now=now, **hold):
            return node, row, None, None
        return node, row, 'hold', hold

    node, row, action, hold = db.transact(record)
    for line in health.after_result(db, config, node.provider, node.label, result,
                                    image_id=row.image_id if row else node.image_id, now=now):
        log.warning('node %s: %s', describe(node), line)
    stats = metrics.get()
    stats.incr(metrics.key('gate', node.provider, node.label, result))
    if row is not None:
        stats.timing(metrics.key('gate', node.provider, node.label, 'duration'),
                     (now - row.start_time) * 1000)
    ran = ' after %.0f s' % (now - row.start_time) if row is not None else ''
    if action is None:
        log.warning('node %s: result %s%s; the node is %s, not used, so it is left as it is',
                    describe(node), result, ran, node.state)
    elif action == 'hold':
        log.info('node %s: result %s%s; held until %s (%s h) for %s: %s',
                 describe(node), result, ran, console.utc(hold['hold_until']),
                 _number(round(hold_seconds(config, result) / 3600, 2)), hold['held_by'],
                 hold['hold_reason'])
    else:
        ok, outcome = _delete_server(config, node, connect, environ)
        (log.info if ok else log.warning)('node %s: result %s%s; deleting it: %s',
                                          describe(node), result, ran, outcome)
    return action


def _delete_server(config, node, connect, environ):
    """Ask the cloud to delete the node's server, best effort: (ok, what happened).

    The row is already in state delete, so whatever happens here the reaper
    finishes the job.
    """
    if not node.external_id:
        return False, 'no server id recorded; the reaper will finish the delete'
    try:
        if connect is None:
            from devstackgate import cloud     # a driver, only when deleting
            connect = cloud.connect
        adapter = connect(config.provider(node.provider), environ=environ)
    except Exception as e:      # no credentials on this slave, a provider gone from the config:
        # a gate result never waits on a cloud
        return False, ('deleting server %s failed (%s: %s); the reaper will finish the delete'
                       % (node.external_id, getattr(e, 'reason', type(e).__name__),
                          str(e).splitlines()[0] if str(e) else ''))
    if not adapter.delete_quietly('server', node.external_id, 'node %s' % describe(node)):
        return False, ('deleting server %s failed (see above); the reaper will finish the delete'
                       % node.external_id)
    return True, ('server %s deletion requested; the reaper removes the row once it is gone'
                  % node.external_id)

"""Leases: at most one run of a stage per provider at a time, across hosts.

Jenkins can start two runs of one stage for one provider at once (a manual
run beside the timer's, or the job configured on two slaves).  Two launches
would both count the same deficit and boot it twice (past min-ready, even past
max-servers); two reaps would count each leak sighting twice and ask for the
same deletes twice.  So every writing run holds a lease in the database
(``leases``, one row per provider and scope) for as long as it works:

==============  =====================================================================
scope           held by
==============  =====================================================================
``launch``      devstack-vm-launch, for its whole run (count, boot, wait); and
                devstack-vm-update-image, briefly, around the boot of its template
                and of its canary: they count against max-servers, so no launch
                may be between its count and its boots when they appear
``reap``        devstack-vm-reap, for its whole run (not a dry run: it writes
                nothing and needs none)
``image LABEL`` devstack-vm-update-image, for the build of that label (builds of
                different labels are matrix cells that run side by side)
==============  =====================================================================

A launch and a reap of one provider may run side by side: a launch writes a
node row before it creates the server, the reaper lists the cloud before it
reads the rows, and every row change of the reaper is a compare-and-set (see
devstackgate.reap), so neither undoes the other's work.

Taking a lease is one conditional UPDATE (free or expired) in one transaction,
so exactly one run gets it.  The holder is named by host, pid, stage and a
random token.  Its expiry is the database server's clock plus lease-ttl,
renewed by a heartbeat thread every lease-renew-fraction of it; the lease is
released when the run ends, however it ends (an error, SIGTERM).  A SIGKILLed
holder's lease simply expires: the next run waits at most lease-ttl.

A run that finds the lease held waits up to lease-wait, then exits 0 with one
line naming the holder and when its lease expires: the work is being done by
the other run, so a skipped timer run is not a red build.

A holder that cannot renew its lease before it expires (the database is
down), or finds it taken, stops starting new cloud work at its next step (a
boot, a poll, a delete) and exits 1 saying so, instead of running on beside the
new holder.  Its own clock decides that: the lease counts as lost lease-ttl
after the start of the last renewal that succeeded, which is never later than
the expiry the database recorded.
"""

import contextlib
import datetime
import logging
import os
import socket
import threading
import time

from devstackgate.errors import DatabaseError, GateError

log = logging.getLogger('lease')

LAUNCH = 'launch'
REAP = 'reap'


def image_scope(label):
    return 'image %s' % label


class LeaseHeld(GateError):
    """Another run holds the lease: this run skips its work (exit 0)."""
    reason = 'lease-held'
    exit_code = 0


class LeaseLost(GateError):
    """This run's lease expired unrenewed or was taken over: it stopped."""
    reason = 'lease-lost'
    exit_code = 1


def when(ts):
    """An epoch time on a console line: 2013-09-03 04:01:32 UTC."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        '%Y-%m-%d %H:%M:%S UTC')


def holder(row):
    return 'host %s pid %s (%s)' % (row.host, row.pid, row.stage)


def launch_hold_bound(config):
    """How long an image build waits for the provider's launch lease: a launch run
    ends within launch-deadline plus a last ready check; then lease-wait more."""
    return config.launch_deadline + config.ready_check_timeout + config.lease_wait


class Unleased:
    """What a run given no lease checks (in-process callers, tests): always held."""
    name = 'no lease'

    def ok(self):
        return True

    def check(self):
        pass


UNLEASED = Unleased()


class Lease:
    """One run's hold on (provider, scope).  acquire(), then ok()/check() at each
    step that starts cloud work, then release()."""

    def __init__(self, db, provider, scope, stage, ttl, renew_fraction=0.25,
                 clock=time.monotonic):
        self.db = db
        self.provider = provider
        self.scope = scope
        self.stage = stage
        self.ttl = float(ttl)
        self.interval = self.ttl * min(0.5, float(renew_fraction))
        self.clock = clock
        self.token = os.urandom(16).hex()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.short = 'lease %s' % scope
        self.name = '%s of provider %s' % (self.short, provider)
        self.valid_until = None     # clock() by which a renewal must have succeeded
        self.lost = None            # why it is lost, once it is
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    # -- taking it ----------------------------------------------------------
    def try_acquire(self):
        """Take it if free or expired; (True, row) or (False, the holder's row, db time)."""
        started = self.clock()
        taken, before, row, now = self.db.transact(lambda s: s.acquire_lease(
            self.provider, self.scope, self.token, self.host, self.pid, self.stage, self.ttl))
        if taken:
            self.valid_until = started + self.ttl
            if before is not None and before.token is not None:
                log.warning('%s: taken over from %s, whose lease expired at %s unreleased '
                            '(killed?)', self.name, holder(before), when(before.expires))
        return taken, row, now

    def acquire(self, wait, poll=1.0, sleep=time.sleep):
        """Take the lease, waiting up to `wait` seconds while another run holds it;
        LeaseHeld naming the holder if it is still held then."""
        deadline = self.clock() + wait
        said = None
        while True:
            taken, row, now = self.try_acquire()
            if taken:
                break
            left = deadline - self.clock()
            if left <= 0:
                raise LeaseHeld('provider %s: skipped: %s is held by %s until %s (%.0f s '
                                'from now, unless renewed); that run is doing this work'
                                % (self.provider, self.short, holder(row),
                                   when(row.expires), max(0.0, row.expires - now)))
            if said != row.token:
                log.info('%s is held by %s until %s; waiting up to %.0f s for it',
                         self.name, holder(row), when(row.expires), left)
                said = row.token
            sleep(max(0.0, min(poll, left)))
        log.info('%s: taken by this run (host %s pid %d, %s) for %g s, renewed every %g s',
                 self.name, self.host, self.pid, self.stage, self.ttl, self.interval)
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name='lease-%s-%s' % (self.provider, self.scope))
        self._thread.start()
        return self

    # -- keeping it ---------------------------------------------------------
    def _lose(self, why):
        with self._lock:
            if self.lost is None:
                self.lost = why
                log.error('%s: lost (%s); starting no new work', self.name, why)

    def renew(self):
        """One renewal; False once the lease is lost."""
        if self.lost is not None:
            return False
        started = self.clock()
        try:
            renewed = self.db.transact(lambda s: s.renew_lease(
                self.provider, self.scope, self.token, self.ttl))
        except DatabaseError as e:
            if self.clock() >= self.valid_until:
                self._lose('not renewed for %g s: %s' % (self.ttl, e))
                return False
            log.warning('%s: cannot renew it (%s); it is held %.0f s more without a renewal',
                        self.name, e, self.valid_until - self.clock())
            return True
        if not renewed:
            row = self._row()
            if row is not None and row.token is not None and row.token != self.token:
                self._lose('taken by %s, until %s' % (holder(row), when(row.expires)))
            else:
                self._lose('expired unrenewed')
            return False
        with self._lock:
            if self.lost is None:
                self.valid_until = started + self.ttl
        return True

    def _row(self):
        try:
            rows = self.db.transact(lambda s: s.leases(provider=self.provider))
        except DatabaseError:
            return None
        return next((r for r in rows if r.scope == self.scope), None)

    def _heartbeat(self):
        while not self._stop.wait(self.interval):
            if not self.renew():
                return

    def ok(self):
        """Whether the lease is still ours: False once it is lost or past the time by
        which a renewal had to succeed."""
        if self.lost is None and self.valid_until is not None \
                and self.clock() >= self.valid_until:
            self._lose('not renewed within %g s' % self.ttl)
        return self.lost is None

    def check(self):
        """LeaseLost if the lease is no longer ours."""
        if not self.ok():
            raise LeaseLost('provider %s: %s lost (%s); stopped starting new work'
                            % (self.provider, self.short, self.lost))

    # -- giving it back -----------------------------------------------------
    def release(self):
        """Stop renewing and free the lease (if it is still ours).  Never raises for a
        database error: an unreleased lease expires after lease-ttl."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 1)
        try:
            released = self.db.transact(lambda s: s.release_lease(
                self.provider, self.scope, self.token))
        except DatabaseError as e:
            log.warning('%s: cannot release it (%s); it expires within %g s', self.name, e,
                        self.ttl)
            return False
        if released:
            log.debug('%s: released', self.name)
        return released


@contextlib.contextmanager
def held(config, db, provider, scope, stage, wait=None):
    """Hold the lease of (provider, scope) for a with block; released however it ends."""
    lease = Lease(db, provider, scope, stage, config.lease_ttl, config.lease_renew_fraction)
    lease.acquire(config.lease_wait if wait is None else wait, config.lease_poll)
    try:
        yield lease
    finally:
        lease.release()

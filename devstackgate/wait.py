"""One way to wait: poll until a deadline, telling a timeout from a failure.

Every wait in the product (a template or a snapshot becoming active, SSH
answering, a node being fetched, launch's shared poll) goes through
:func:`iterate` or :func:`for_state`.  Deadlines are values of the injected
``clock``; ``sleep`` is injected too, so tests (and launch, which sleeps by
waiting on its SSH checks) decide what a pause is.
"""

import logging
import time

from devstackgate.errors import GateError

log = logging.getLogger('wait')

#: Seconds between "still waiting" lines of a long wait.
PROGRESS_EVERY = 30.0


class Timeout(GateError):
    """The deadline passed first.  ``last`` is what was seen last (or None)."""
    reason = 'timeout'

    def __init__(self, message, last=None):
        super().__init__(message)
        self.last = last


class Failure(GateError):
    """What was waited on reached a state it cannot come back from."""

    def __init__(self, message, last=None, reason='error'):
        super().__init__(message)
        self.last = last
        self.reason = reason


def iterate(deadline, interval, what, clock=time.monotonic, sleep=time.sleep,
            progress=None, progress_every=PROGRESS_EVERY):
    """Yield the seconds waited so far: at once, then after each pause of `interval`.

    The first attempt always happens; the last one happens at the deadline
    (a pause never overshoots it); then :class:`Timeout` is raised.
    ``progress(waited)`` is called about every `progress_every` seconds,
    else one "waiting for WHAT" line is logged then.
    """
    started = clock()
    last_progress = started
    yield 0.0
    while True:
        now = clock()
        if now >= deadline:
            raise Timeout('%s: still not done after %.0f s' % (what, now - started))
        if now - last_progress >= progress_every:
            last_progress = now
            if progress is not None:
                progress(now - started)
            else:
                log.info('waiting for %s, %.0f s so far', what, now - started)
        sleep(max(0.0, min(interval, deadline - now)))
        yield clock() - started


def for_state(get, wanted, deadline, interval, what, failed=(), ready=None,
              clock=time.monotonic, sleep=time.sleep, progress=None):
    """Call get() until the object it returns is in state `wanted` (and ready(obj)).

    A state in `failed` raises :class:`Failure` at once; the deadline raises
    :class:`Timeout` whose ``last`` is the last object seen.
    """
    last = None
    try:
        for _ in iterate(deadline, interval, what, clock=clock, sleep=sleep, progress=progress):
            last = get()
            if last.state in failed:
                raise Failure('%s ended %s' % (what, last.state), last=last)
            if last.state == wanted and (ready is None or ready(last)):
                return last
    except Timeout as e:
        raise Timeout(str(e), last=last) from None

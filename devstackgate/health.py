"""Provider health and the image guard: false failures found from the results table, and acted on.

Seed 003 asks developers to spot a provider that causes false failures; seed
004 has operators notice a bad image by hand.  Here both are found from the
gate results themselves, with a test for the difference of two proportions
(not a bare threshold), so that a handful of runs never triggers anything:

- **infra**: per label, each provider's infra-failure rate (results ``infra``
  among its finished runs) against the other providers' together.  A provider
  clearly worse is *quarantined* for that label: fetch hands out its nodes only
  when no other provider has one ready, and launch stops topping it up.  After
  ``quarantine-cooldown-minutes`` launch probes it with one canary node, kept
  under watch for ``canary-watch`` seconds; if the canary stays up the
  quarantine ends, else it is probed again after another cool-down.
- **test**: each provider's test-failure rate (failures and timeouts among runs
  with a verdict) against the others' for the same label.  Changes reach the
  providers at random (a gate job takes the oldest ready node of its label),
  so the providers run samples of the same changes; a provider clearly worse
  is *flagged* (stats, the status page, a metric, the console of each failed
  run on it), never quarantined: a provider may only be hiding a real bug.
- **image guard**: a provider's current image of a label against the image it
  replaced, by their runs' test-failure rates.  A new image clearly worse is
  demoted (the previous one is current again), the label's builds on that
  provider are paused, and the figures are kept (image-list shows them);
  ``devstack-gate image-guard-undo`` reverses it.

"Clearly worse": at least ``health-min-runs`` runs on each side, at least
``health-min-failures`` failures on the worse side, and the one-sided p-value
of the pooled two-proportion z-test at most ``health-alpha`` (0.001: checked
after every run, a provider must not be quarantined by a run of bad luck) or,
for the image guard, ``image-guard-alpha`` (0.01: an image has fewer runs, and
a demotion costs only the previous image's return and one command to undo).  The window is
the last ``health-window-runs`` runs of each provider and label that started
within ``health-window-hours``.  Every automatic action logs its figures.
"""

import collections
import dataclasses
import logging
import math
import time

from devstackgate import metrics

log = logging.getLogger('health')

#: Results that say how a run ended (aborted and running say nothing about the node).
FINISHED = ('success', 'failure', 'timeout', 'infra')
#: Results that are a verdict on the change.
VERDICTS = ('success', 'failure', 'timeout')
TEST_FAILURES = ('failure', 'timeout')
AUTO = 'auto'
#: The fail_reason of an image the guard demoted, and of one an operator put back.
GUARD_DEMOTED = 'image guard: '
GUARD_OVERRULED = 'image guard overruled by '


def one_sided_p(x1, n1, x2, n2):
    """P(a rate at least x1/n1 - x2/n2 higher) if both sides had the same rate:
    the pooled two-proportion z-test, one-sided.  1.0 when it cannot be told."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    if pooled <= 0 or pooled >= 1:
        return 1.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (x1 / n1 - x2 / n2) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclasses.dataclass(frozen=True)
class Limits:
    window_hours: float
    window_runs: int
    min_runs: int
    min_failures: int
    alpha: float

    @classmethod
    def from_config(cls, config):
        return cls(config.health_window_hours, config.health_window_runs,
                   config.health_min_runs, config.health_min_failures, config.health_alpha)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One side (a provider, or an image) against the other (the other providers,
    the previous image), by one rate."""
    subject: str            # the provider's name, or the image's
    label: str
    what: str               # 'infra' or 'test'
    x: int                  # failures of that kind on this side
    n: int                  # runs counted on this side
    other_x: int
    other_n: int
    p_value: float
    worse: bool             # clearly worse (the limits)
    why: str                # why not judged, when it was not

    @property
    def rate(self):
        return self.x / self.n if self.n else None

    @property
    def other_rate(self):
        return self.other_x / self.other_n if self.other_n else None

    def figures(self):
        return ('%s of %d runs (%s) against %s of %d (%s); p = %.2g'
                % (self.x, self.n, percent(self.rate), self.other_x, self.other_n,
                   percent(self.other_rate), self.p_value))


def percent(fraction):
    return '-' if fraction is None else '%.0f %%' % (100 * fraction)


def judge(subject, label, what, x, n, other_x, other_n, limits):
    """A Comparison of x of n against other_x of other_n under the limits."""
    p = one_sided_p(x, n, other_x, other_n)
    why = None
    if n < limits.min_runs or other_n < limits.min_runs:
        why = 'too few runs (%d here, %d to compare with; %d each needed)' % (
            n, other_n, limits.min_runs)
    elif x < limits.min_failures:
        why = 'too few failures (%d; %d needed)' % (x, limits.min_failures)
    worse = why is None and p <= limits.alpha and x * other_n > other_x * n
    return Comparison(subject, label, what, x, n, other_x, other_n, p, worse, why)


def window(s, label, limits, now, provider=None):
    """The finished runs of a label (of one provider, or all) in the window: the
    last window-runs of each provider that started within window-hours."""
    rows = [r for r in s.results_between(now - limits.window_hours * 3600, now, label=label)
            if r.result in FINISHED
            and (provider is None or r.provider == provider)]
    by_provider = collections.defaultdict(list)
    for r in sorted(rows, key=lambda r: (r.start_time, r.id)):
        by_provider[r.provider].append(r)
    return {p: runs[-limits.window_runs:] for p, runs in by_provider.items()}


def _counts(runs, what):
    if what == 'infra':
        return sum(r.result == 'infra' for r in runs), len(runs)
    verdicts = [r for r in runs if r.result in VERDICTS]
    return sum(r.result in TEST_FAILURES for r in verdicts), len(verdicts)


def compare_providers(by_provider, label, what, limits):
    """{provider: Comparison} of each provider of the label against the others together."""
    counts = {p: _counts(runs, what) for p, runs in by_provider.items()}
    out = {}
    for provider, (x, n) in counts.items():
        ox = sum(c[0] for p, c in counts.items() if p != provider)
        on = sum(c[1] for p, c in counts.items() if p != provider)
        out[provider] = judge(provider, label, what, x, n, ox, on, limits)
    return out


def providers_health(s, config, label, now=None):
    """{provider: {'infra': Comparison, 'test': Comparison}} of one label."""
    now = time.time() if now is None else now
    limits = Limits.from_config(config)
    by_provider = window(s, label, limits, now)
    infra = compare_providers(by_provider, label, 'infra', limits)
    test = compare_providers(by_provider, label, 'test', limits)
    return {p: {'infra': infra[p], 'test': test[p]} for p in by_provider}


# -- acting on a finished run ---------------------------------------------------------

def after_result(db, config, provider, label, result, image_id=None, now=None):
    """What one finished run changes: the quarantine of its provider (an infra
    failure), the image guard (a test failure).  Returns the console lines for
    the run (a flagged provider's figures); never raises for a database error."""
    now = time.time() if now is None else now
    lines = []
    try:
        if result == 'infra' and config.auto_quarantine:
            _maybe_quarantine(db, config, provider, label, now)
        if result in TEST_FAILURES:
            health = db.transact(lambda s: providers_health(s, config, label, now))
            test = health.get(provider, {}).get('test')
            if test is not None and test.worse:
                metrics.get().incr(metrics.key('health', provider, label, 'flagged'))
                lines.append('provider %s: its test-failure rate for %s is %s against %s '
                             'elsewhere (%s): the failure may be the provider\'s, not the '
                             'change\'s' % (provider, label, percent(test.rate),
                                            percent(test.other_rate), test.figures()))
            if config.image_guard and image_id is not None:
                _maybe_guard(db, config, provider, label, now)
    except Exception as e:      # the run's result is recorded; judging it is best effort
        log.warning('provider health of %s %s not judged: %s: %s', provider, label,
                    type(e).__name__, e)
    return lines


def _maybe_quarantine(db, config, provider, label, now):
    def tx(s):
        health = providers_health(s, config, label, now)
        infra = health.get(provider, {}).get('infra')
        if infra is None or not infra.worse:
            return None
        others = [p.name for p in config.providers
                  if p.name != provider and p.image(label) is not None]
        held = {q.provider for q in s.quarantines(label=label)}
        if provider in held or not [p for p in others if p not in held]:
            return None         # already, or no healthy provider of the label would be left
        reason = 'infra failures %s' % infra.figures()
        s.quarantine(provider, label, AUTO, reason,
                     now + config.quarantine_cooldown_minutes * 60, now=now)
        return infra
    infra = db.transact(tx)
    if infra is not None:
        log.warning('provider %s quarantined for %s: its infra-failure rate is %s against %s '
                    'on the other providers (%s); fetch takes its nodes only when no other '
                    'provider has one, launch stops topping it up, a canary probes it after '
                    '%g min', provider, label, percent(infra.rate), percent(infra.other_rate),
                    infra.figures(), config.quarantine_cooldown_minutes)
        metrics.get().incr(metrics.key('health', provider, label, 'quarantined'))


def image_pair(s, provider, label):
    """(current, previous) image rows of provider+label: the current one and the
    ready one it replaced (None if none)."""
    current = s.current_image(provider, label)
    if current is None:
        return None, None
    older = [i for i in s.images(provider=provider, label=label, state='ready')
             if not i.demoted and i.id != current.id and (i.created, i.id) < (current.created,
                                                                                current.id)]
    return current, max(older, key=lambda i: (i.created, i.id)) if older else None


def guard_comparison(s, config, provider, label, now):
    """The current image against its predecessor (a Comparison), or None."""
    current, previous = image_pair(s, provider, label)
    if current is None or previous is None or (current.fail_reason or '').startswith(
            GUARD_OVERRULED):
        return None
    limits = dataclasses.replace(Limits.from_config(config), alpha=config.image_guard_alpha)
    mine = [r for r in s.results(provider=provider, label=label, image_id=current.id)
            if r.result in VERDICTS][-limits.window_runs:]
    theirs = [r for r in s.results(provider=provider, label=label, image_id=previous.id)
              if r.result in VERDICTS][-limits.window_runs:]
    x, n = _counts(mine, 'test')
    ox, on = _counts(theirs, 'test')
    return judge(current.name, label, 'test', x, n, ox, on, limits), current, previous


def _maybe_guard(db, config, provider, label, now):
    def tx(s):
        found = guard_comparison(s, config, provider, label, now)
        if found is None or not found[0].worse:
            return None
        comparison, current, previous = found
        reason = '%sfailed %s, its predecessor %s %s' % (
            GUARD_DEMOTED, comparison.figures(), previous.name, percent(comparison.other_rate))
        s.update_image(current.id, demoted=1, fail_reason=reason)
        s.pause_image(label, provider, reason=reason, set_by=AUTO, now=now)
        return comparison, current, previous
    done = db.transact(tx)
    if done is not None:
        comparison, current, previous = done
        log.warning('image %s (%s %s) demoted and the label\'s builds on %s paused by the '
                    'image guard: its runs failed %s, against %s for %s before it (%s); '
                    'undo with: devstack-gate image-guard-undo %s %s', current.name,
                    provider, label, provider, percent(comparison.rate),
                    percent(comparison.other_rate), previous.name, comparison.figures(),
                    provider, label)
        metrics.get().incr(metrics.key('health', provider, label, 'image_demoted'))


def guard_undo(db, provider, label, set_by, now=None):
    """Put back the image the guard last demoted and lift the pause it set; the image
    is then never judged by the guard again.  Returns the image row."""
    from devstackgate.errors import GateError

    def tx(s):
        demoted = [i for i in s.images(provider=provider, label=label, state='ready')
                   if i.demoted and (i.fail_reason or '').startswith(GUARD_DEMOTED)]
        if not demoted:
            raise GateError('%s %s: no image demoted by the image guard' % (provider, label))
        row = max(demoted, key=lambda i: (i.created, i.id))
        s.update_image(row.id, demoted=0, fail_reason=GUARD_OVERRULED + set_by)
        for pause in s.image_pauses(label):
            if pause.provider == provider and pause.set_by == AUTO:
                s.unpause_image(label, provider)
        return row
    row = db.transact(tx)
    log.info('image %s (%s %s): the image guard\'s demotion undone by %s; it is current again '
             'if newest, its builds unpaused, and the guard leaves it alone', row.name, provider,
             label, set_by)
    return row

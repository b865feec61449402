"""Pool statistics of the last days, per provider and label: gate runs and launches.

What operators ask on a bad day (seed 004): is one provider failing gate runs
more than the others, and how often do its launches fail, and why?

Gate runs come from the ``results`` table: the runs *started* within the
window.  A run with a verdict is one that ended ``success``, ``failure`` or
``timeout``; its failure rate is (failures + timeouts) / runs with a verdict.
``aborted`` (a cancelled job says nothing about the node) and ``running`` runs
are counted beside it but not in the rate.  The median run time is over the
runs with a verdict.

Launches come from the ``launches`` history (node rows are deleted by the
reaper once their servers are gone, so the nodes table alone forgets): every
launch that *ended* within the window, either ready (``ready``, or ``used``
for an image build's canary) or failed with a reason (error, no-network,
timeout, quota, vanished, no-address, ready-check, lost, ...).  The time to
ready is from the node row's creation to the node passing its checks.

The outlier rule (:func:`judge`), the provider-health test of
devstackgate.health: a provider is marked for a label when its failure rate is
clearly worse than that of all the other providers' runs of the label taken
together: at least ``health-min-runs`` runs with a verdict on each side, at
least ``health-min-failures`` failures here, and a one-sided p-value of the
two-proportion z-test of at most ``health-alpha``.  A small sample is never
judged, and everyone failing alike (the change, not a provider) is not marked.
Its infra-failure rate (runs ended ``infra``) is judged the same way
(``infra_outlier``), and a quarantine in force is shown (``quarantined``).  The
figure compared to is kept with the result (``compared_to``, ``compared_runs``).
"""

import collections
import dataclasses
import statistics
import time

from devstackgate import health, sizing
from devstackgate.errors import UsageError

DAY = 86400.0
#: The results that are a verdict on a run.
VERDICTS = ('success', 'failure', 'timeout')
#: The launch outcomes that count as a node that became ready.
READY_OUTCOMES = ('ready', 'used')


@dataclasses.dataclass
class GateRuns:
    runs: int = 0               # with a verdict: success, failure or timeout
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    infra: int = 0              # ended by the node, not the change (no verdict on it)
    aborted: int = 0
    running: int = 0
    failure_rate: float = None  # (failures + timeouts) / runs; None without runs
    median_seconds: float = None


@dataclasses.dataclass
class Launches:
    launches: int = 0           # ended in the window, ready or failed
    ready: int = 0
    failed: int = 0
    failure_rate: float = None  # failed / launches; None without launches
    reasons: dict = dataclasses.field(default_factory=dict)       # reason: failed launches
    reason_rates: dict = dataclasses.field(default_factory=dict)  # reason: share of launches
    median_seconds_to_ready: float = None


@dataclasses.dataclass
class Cell:
    """One provider and label."""
    provider: str
    label: str
    gate: GateRuns
    launch: Launches
    judged: bool = False        # enough runs here and on the other providers to judge
    outlier: bool = False
    compared_to: float = None   # failure rate of the other providers' runs of this label
    compared_runs: int = 0      # how many runs with a verdict that rate is over
    why: str = ''               # the judgement in words
    p_value: float = None       # of the test behind the judgement
    infra_outlier: bool = False  # its infra-failure rate is clearly worse than the others'
    infra_why: str = ''
    quarantined: str = None     # the reason of a quarantine in force, else None
    sizing: dict = None         # a demand-sized label's figures now (devstackgate.sizing)


@dataclasses.dataclass
class Stats:
    since: float
    until: float
    days: float
    min_runs: int
    min_failures: int
    alpha: float
    cells: list                 # [Cell], by provider then label

    def to_dict(self):
        """Plain dicts, lists, numbers and strings (what --json prints)."""
        return dataclasses.asdict(self)

    def cell(self, provider, label):
        for c in self.cells:
            if (c.provider, c.label) == (provider, label):
                return c
        return None

    @property
    def outliers(self):
        return [c for c in self.cells if c.outlier]


def rate(part, whole):
    return part / whole if whole else None


def gate_runs(results):
    """GateRuns of Result rows."""
    counts = collections.Counter(r.result for r in results)
    durations = [r.end_time - r.start_time for r in results
                 if r.result in VERDICTS and r.end_time is not None]
    return _gate_runs(counts, statistics.median(durations) if durations else None)


def _gate_runs(counts, median_seconds):
    """GateRuns of {result: runs} and the median run time."""
    g = GateRuns(running=counts.get('running', 0), aborted=counts.get('aborted', 0),
                 successes=counts.get('success', 0), failures=counts.get('failure', 0),
                 timeouts=counts.get('timeout', 0), infra=counts.get('infra', 0))
    g.runs = g.successes + g.failures + g.timeouts
    g.failure_rate = rate(g.failures + g.timeouts, g.runs)
    g.median_seconds = median_seconds
    return g


def launches(rows):
    """Launches of Launch rows."""
    counts = collections.Counter((row.outcome, row.reason) for row in rows)
    to_ready = [row.seconds for row in rows
                if row.outcome in READY_OUTCOMES and row.seconds is not None]
    return _launches(counts, statistics.median(to_ready) if to_ready else None)


def _launches(counts, median_seconds_to_ready):
    """Launches of {(outcome, reason): launches} and the median time to ready."""
    out = Launches()
    reasons = collections.Counter()
    for (outcome, reason), n in counts.items():
        out.launches += n
        if outcome in READY_OUTCOMES:
            out.ready += n
        else:
            out.failed += n
            reasons[reason or 'unknown'] += n
    out.failure_rate = rate(out.failed, out.launches)
    out.reasons = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    out.reason_rates = {k: v / out.launches for k, v in out.reasons.items()}
    out.median_seconds_to_ready = median_seconds_to_ready
    return out


def median_of(n, fetch):
    """The median of n sorted values of which fetch(offset, limit) reads a slice:
    statistics.median's, from the one or two middle values only."""
    if not n:
        return None
    return statistics.median(fetch((n - 1) // 2, 1 if n % 2 else 2))


def judge(cells, limits):
    """Mark the outliers among `cells` (see the module docstring), in place."""
    by_label = collections.defaultdict(list)
    for c in cells:
        by_label[c.label].append(c)
    for label, group in by_label.items():
        for c in group:
            others = [o for o in group if o is not c]
            bad = sum(o.gate.failures + o.gate.timeouts for o in others)
            c.compared_runs = sum(o.gate.runs for o in others)
            c.compared_to = rate(bad, c.compared_runs)
            if not others:
                c.why = c.infra_why = 'no other provider ran %s' % label
                continue
            test = health.judge(c.provider, label, 'test', c.gate.failures + c.gate.timeouts,
                                c.gate.runs, bad, c.compared_runs, limits)
            c.p_value = test.p_value
            c.judged = test.why is None or test.why.startswith('too few failures')
            c.outlier = test.worse
            c.why = '%s failed %s of %d runs; the other providers %s of %d' % (
                c.provider, percent(test.rate), c.gate.runs, percent(c.compared_to),
                c.compared_runs)
            if test.why:
                c.why = '%s: %s' % (test.why, c.why)
            elif c.outlier:
                c.why += ' (outlier: p = %.2g <= %g)' % (test.p_value, limits.alpha)
            infra = health.judge(c.provider, label, 'infra', c.gate.infra,
                                 c.gate.runs + c.gate.infra,
                                 sum(o.gate.infra for o in others),
                                 sum(o.gate.runs + o.gate.infra for o in others), limits)
            c.infra_outlier = infra.worse
            c.infra_why = 'infra failures %s' % infra.figures() + (
                ' (%s)' % infra.why if infra.why else '')
    return cells


def percent(fraction):
    return '-' if fraction is None else '%.0f%%' % (100 * fraction)


def compute(db, config, days=7, now=None, limits=None):
    """Stats of the last `days` days up to `now`, per provider and label (`limits`:
    health.Limits, default the configuration's).

    The cells are every (provider, label) of the configuration, and any other
    that has results or launches in the window (a provider since removed).
    """
    if not days or days <= 0:
        raise UsageError('days: expected a number > 0, got %r' % (days,))
    now = time.time() if now is None else now
    since = now - days * DAY

    keys = {(p.name, i.name) for p in config.providers for i in p.images}

    def tx(s):
        # Counted and medians taken by the database: at 100,000 results a week's
        # rows are too many to read back one by one (seconds on MariaDB).
        runs = collections.defaultdict(collections.Counter)
        ended = collections.Counter()
        for (provider, label, result), (n, with_end) in s.result_counts(since, now).items():
            if provider and label:
                runs[(provider, label)][result] += n
                if result in VERDICTS:
                    ended[(provider, label)] += with_end
        outcomes = collections.defaultdict(collections.Counter)
        timed = collections.Counter()
        for (provider, label, outcome, reason), (n, with_seconds) in \
                s.launch_counts(since, now).items():
            outcomes[(provider, label)][(outcome, reason)] += n
            if outcome in READY_OUTCOMES:
                timed[(provider, label)] += with_seconds
        cells = []
        for provider, label in sorted(keys | set(runs) | set(outcomes)):
            gate = _gate_runs(runs[(provider, label)], median_of(
                ended[(provider, label)], lambda offset, limit: s.result_durations(
                    provider, label, VERDICTS, since, now, offset, limit)))
            launch = _launches(outcomes[(provider, label)], median_of(
                timed[(provider, label)], lambda offset, limit: s.launch_seconds(
                    provider, label, READY_OUTCOMES, since, now, offset, limit)))
            cells.append(Cell(provider, label, gate, launch))
        quarantines = {(q.provider, q.label): q for q in s.quarantines()}
        for c in cells:
            q = quarantines.get((c.provider, c.label))
            c.quarantined = None if q is None else '%s (by %s)' % (q.reason, q.set_by)
        return cells
    limits = limits or health.Limits.from_config(config)
    cells = db.transact(tx)
    judge(cells, limits)
    for c in cells:
        p = next((p for p in config.providers if p.name == c.provider), None)
        image = p.image(c.label) if p is not None else None
        if image is not None and image.pool_sizing == 'demand':
            decision = sizing.decide(db, config, p, image, now=now)
            c.sizing = dict(dataclasses.asdict(decision), line=decision.line())
    return Stats(since=since, until=now, days=days, min_runs=limits.min_runs,
                 min_failures=limits.min_failures, alpha=limits.alpha, cells=cells)

"""Sizing: a day of gate fetches replayed against static min-ready and demand sizing.

A discrete-event simulation (a heap of events, seeded, no clouds, no
database) of one label on two providers, whose demand-sized targets come from
the product's own estimator, ``devstackgate.sizing.estimate``, with the
product's default settings (history days, recent minutes, trend limit,
launch period):

- the fetches: a trace of arrival times, by default the shipped synthetic one
  (``bench/traces/synthetic-week.csv``, made by ``bench/traces/make_trace.py``:
  seven days of history, then the replayed day, a Monday with a working-hours
  peak 5.5 times the night rate and bursts of approved changes), or the file
  named by ``$DEVSTACK_GATE_TRACE`` (start times exported from the results
  table; the make_trace docstring says how).  The replayed day is the trace's
  last UTC day (the day of its last start); everything before it is history;
- the providers: PROVIDERS below: boot times lognormal around a median, a
  failure rate (a failed boot is lost after its boot time and counts as
  nothing), max-servers bounding the provider's ready + building nodes (a used
  node is gone: the gate holds it, then it is deleted);
- launch: every launch period (on the period's multiples, both providers at
  once) it tops each provider's ready + building up to its target.  Static:
  the setting's min-ready on each provider.  Demand: ``estimate`` with the
  history = every trace arrival before now (the history days included), the
  provider's median time to ready = the median of its simulated successful
  boots so far (None at first: boot-timeout / 2), its share by max-servers,
  min-ready 1 on each provider, max-ready unset; and, as the product's reap
  does, the ready nodes beyond the target are removed at each tick, oldest
  first, never below min-ready;
- a fetch takes the oldest ready node of either provider at once (wait 0), or
  waits, first come first served, for the next node to become ready.

The simulation starts with an empty pool a warm-up before the replayed day
(a day in the full profile: the history days before it are data only, the
estimator reads them) so the pool is in steady state when the measured window
begins, and runs on past its end until every measured fetch has a node.  The
figures are of the fetches of the measured window (the whole replayed day in
the full profile; 07:00-13:00 of it in the short one), pooled over the seeds:
the fraction that waited at all (> 0 s), the p95 and the max wait, and the
idle ready-node-hours (the integral of the count of ready nodes over the
window, / 3600), the mean over the seeds.

One row per setting gives the frontier (waits against idle hours).  The plot
of it, an SVG drawn with matplotlib (the max wait too), is
``bench-sizing-frontier.svg`` in the current directory, or in
``$DEVSTACK_GATE_BENCH_PLOT_DIR``; the short profile writes it in the run's
temporary directory unless that variable is set, so the test suite leaves no
file behind.  The first row's detail names it.

The goal (the issue's): at equal or fewer idle node-hours than static sizing,
demand sizing at service level 0.99 cuts the fraction of waiting fetches and
the p95 wait by at least half.  The comparator is the cheapest static setting
that spends at least as many idle node-hours as the demand one (fewest idle
hours among those with idle >= demand's): the static point the demand point
must beat without spending more.  When no static setting spends that much the
goal rows have no reference and are missed.  A p95 of 0 (fewer than 5 % of
the comparator's fetches waited) cannot be halved: the row then states the
goal on the value, demand's p95 must be 0 too (half of 0), without a
reference (a ratio to 0 is undefined); the same for a waiting fraction of 0.
"""

import bisect
import collections
import dataclasses
import heapq
import math
import os
import random
import statistics
import time
import types

from bench.common import Goal, Row, percentile

NAME = 'sizing'
LABEL = 'precise'
HERE = os.path.dirname(os.path.abspath(__file__))
TRACE = os.path.join(HERE, 'traces', 'synthetic-week.csv')
TRACE_ENV = 'DEVSTACK_GATE_TRACE'
PLOT_ENV = 'DEVSTACK_GATE_BENCH_PLOT_DIR'
PLOT_NAME = 'bench-sizing-frontier.svg'
DAY = 86400.0
HOUR = 3600.0
STATIC = (1, 2, 3, 4, 6, 8, 12)         # min-ready on each provider
LEVELS = (0.9, 0.95, 0.99, 0.999)       # demand sizing's service levels
GOAL_LEVEL = 0.99
DEMAND_MIN_READY = 1


@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    boot_median: float      # seconds
    boot_sigma: float       # of the log
    failure: float          # a boot's chance to fail
    max_servers: int
    boot_timeout: float = 600.0


PROVIDERS = (Provider('rax', 300.0, 0.3, 0.05, 40),
             Provider('hp', 480.0, 0.3, 0.10, 30))


def load_trace(path):
    """The sorted start times (epoch seconds) in a trace file: one a line; empty
    lines, comments (#) and anything not a number (a column header) skipped."""
    times = []
    with open(path) as f:
        for line in f:
            text = line.strip().split(',')[0].strip()
            if not text or text.startswith('#'):
                continue
            try:
                times.append(float(text))
            except ValueError:
                continue
    if not times:
        raise ValueError('%s: no start times' % path)
    return sorted(times)


def settings_defaults():
    """The product's default sizing settings (its configuration's keys)."""
    from devstackgate import config, sizing
    keys = config.GLOBAL_KEYS
    return sizing.Settings(keys['demand-history-days'].default,
                           keys['demand-recent-minutes'].default,
                           keys['demand-trend-limit'].default,
                           keys['launch-period'].default)


class Replay:
    """One setting, one seed: the pool through [start, w1), measured over [w0, w1)."""

    # At one instant: a node becomes ready first, then launch runs, then fetches arrive.
    READY, TICK, FETCH = 0, 1, 2

    def __init__(self, arrivals, start, w0, w1, settings, seed, static=None, level=None,
                 sample_at=None):
        from devstackgate import sizing
        self.sizing = sizing
        self.arrivals, self.start, self.w0, self.w1 = arrivals, start, w0, w1
        self.settings = settings
        self.static, self.level = static, level
        self.rngs = {p.name: random.Random('%s/%d' % (p.name, seed)) for p in PROVIDERS}
        self.ready = {p.name: collections.deque() for p in PROVIDERS}    # ready since, oldest first
        self.building = dict.fromkeys(self.ready, 0)
        self.boots = {p.name: [] for p in PROVIDERS}        # successful boot times, sorted
        self.waiting = collections.deque()                  # arrival times of waiting fetches
        self.waits = []                                     # of the measured fetches
        self.idle = 0.0                                     # ready-node-seconds in [w0, w1)
        self.n_ready, self.last = 0, start
        self.targets = {p.name: [] for p in PROVIDERS}      # per tick in [w0, w1)
        self.launched = self.failed = self.trimmed = 0
        self.sample = None                                  # a decision line at sample_at
        self.sample_at = w0 if sample_at is None else sample_at
        total = sum(p.max_servers for p in PROVIDERS)
        self.share = {p.name: p.max_servers / total for p in PROVIDERS}
        self.images = {p.name: types.SimpleNamespace(
            name=LABEL, min_ready=DEMAND_MIN_READY if level is not None else static,
            max_ready=None, service_level=level or GOAL_LEVEL) for p in PROVIDERS}

    # -- the ready nodes' integral -------------------------------------------

    def _advance(self, now):
        lo, hi = max(self.last, self.w0), min(now, self.w1)
        if hi > lo:
            self.idle += self.n_ready * (hi - lo)
        self.last = now

    def _add_ready(self, provider, now):
        self._advance(now)
        self.ready[provider].append(now)
        self.n_ready += 1

    def _take_ready(self, provider, oldest=True):
        self.n_ready -= 1
        return self.ready[provider].popleft() if oldest else self.ready[provider].pop()

    # -- launch ---------------------------------------------------------------

    def target(self, p, now):
        if self.level is None:
            return self.static
        lo = bisect.bisect_left(self.arrivals, now - self.settings.history_days * DAY)
        hi = bisect.bisect_left(self.arrivals, now)
        boots = self.boots[p.name]
        ttr = boots[len(boots) // 2] if len(boots) % 2 else (
            (boots[len(boots) // 2 - 1] + boots[len(boots) // 2]) / 2 if boots else None)
        d = self.sizing.estimate(p, self.images[p.name], self.arrivals[lo:hi], ttr,
                                 self.share[p.name], self.settings, now)
        if self.sample is None and now >= self.sample_at and p is PROVIDERS[0]:
            self.sample = d.line()
        return d.target

    def tick(self, p, now, push):
        target = self.target(p, now)
        if self.w0 <= now < self.w1:
            self.targets[p.name].append(target)
        ready = self.ready[p.name]
        if self.level is not None:      # reap trims beyond the target, oldest first
            floor = max(target, self.images[p.name].min_ready)
            if len(ready) > floor:
                self._advance(now)
                while len(ready) > floor:
                    self._take_ready(p.name)
                    self.trimmed += 1
        have = len(ready) + self.building[p.name]
        room = p.max_servers - have
        rng = self.rngs[p.name]
        for _ in range(max(0, min(target - have, room))):
            seconds = rng.lognormvariate(math.log(p.boot_median), p.boot_sigma)
            failed = rng.random() < p.failure
            self.building[p.name] += 1
            self.launched += 1
            push(now + seconds, self.READY, (p, seconds, failed))

    # -- the run --------------------------------------------------------------

    def run(self):
        heap, seq = [], [0]

        def push(t, kind, data):
            seq[0] += 1
            heapq.heappush(heap, (t, kind, seq[0], data))

        lo = bisect.bisect_left(self.arrivals, self.start)
        hi = bisect.bisect_left(self.arrivals, self.w1)
        for t in self.arrivals[lo:hi]:
            push(t, self.FETCH, t)
        period = self.settings.launch_period
        first = math.ceil(self.start / period) * period
        for p in PROVIDERS:
            push(first, self.TICK, p)
        horizon = self.w1 + DAY         # a safety stop: nothing waits a day
        while heap:
            now, kind, _, data = heapq.heappop(heap)
            if now > horizon or (now >= self.w1 and not self.waiting):
                break       # (every measured fetch arrived before w1)
            if kind == self.TICK:
                self.tick(data, now, push)
                push(now + period, self.TICK, data)
            elif kind == self.READY:
                p, seconds, failed = data
                self.building[p.name] -= 1
                if failed:
                    self.failed += 1
                    continue
                bisect.insort(self.boots[p.name], seconds)
                if self.waiting:
                    self._record(self.waiting.popleft(), now)
                else:
                    self._add_ready(p.name, now)
            else:       # a fetch: the oldest ready node of either provider
                heads = [(q[0], name) for name, q in self.ready.items() if q]
                if heads:
                    self._advance(now)
                    self._take_ready(min(heads)[1])
                    self._record(now, now)
                else:
                    self.waiting.append(now)
        self._advance(max(self.last, self.w1))
        unserved = [t for t in self.waiting if self.w0 <= t < self.w1]
        self.waits.extend(horizon - t for t in unserved)    # (none, in practice)
        return self

    def _record(self, arrived, now):
        if self.w0 <= arrived < self.w1:
            self.waits.append(now - arrived)


def measure(arrivals, start, w0, w1, settings, seeds, static=None, level=None, sample_at=None):
    """The figures of one setting, pooled over the seeds."""
    waits, idle, targets, launched, failed, trimmed, sample = [], [], [], 0, 0, 0, None
    for seed in seeds:
        r = Replay(arrivals, start, w0, w1, settings, seed, static=static, level=level,
                   sample_at=sample_at).run()
        waits += r.waits
        idle.append(r.idle / HOUR)
        targets.append({name: (statistics.fmean(v) if v else None, max(v, default=None))
                        for name, v in r.targets.items()})
        launched += r.launched
        failed += r.failed
        trimmed += r.trimmed
        sample = sample or r.sample
    waited = [w for w in waits if w > 0]
    return {
        'setting': ('static %d' % static) if level is None else ('demand %g' % level),
        'static': static, 'level': level,
        'fetches': len(waits), 'waited': len(waited),
        'waiting_fraction': len(waited) / len(waits) if waits else 0.0,
        'p95_wait_s': percentile(waits, 95) or 0.0,
        'p99_wait_s': percentile(waits, 99) or 0.0,
        'max_wait_s': max(waits, default=0.0),
        'mean_wait_s': statistics.fmean(waits) if waits else 0.0,
        'idle_node_hours': statistics.fmean(idle),
        'idle_node_hours_per_seed': [round(x, 2) for x in idle],
        'launched': launched, 'failed_boots': failed, 'trimmed': trimmed,
        'targets_mean_max_seed1': targets[0], 'sample_decision': sample,
    }


def plot(results, path, title):
    """The frontier as an SVG: waiting fraction, p95 and max wait against idle node-hours."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    static = sorted((r for r in results if r['level'] is None), key=lambda r: r['idle_node_hours'])
    demand = sorted((r for r in results if r['level'] is not None),
                    key=lambda r: r['idle_node_hours'])
    fig, axes = pyplot.subplots(1, 3, figsize=(15, 4.5))
    # symlog: the settings that matter are near 0, the starved ones far above.
    for ax, key, label, linear in (
            (axes[0], 'waiting_fraction', 'fetches that waited (fraction, symlog)', 0.01),
            (axes[1], 'p95_wait_s', 'p95 wait (s, symlog)', 10.0),
            (axes[2], 'max_wait_s', 'max wait (s, symlog)', 10.0)):
        ax.plot([r['idle_node_hours'] for r in static], [r[key] for r in static], 'o-',
                color='tab:blue', label='static min-ready (per provider)')
        for r in static:
            ax.annotate(str(r['static']), (r['idle_node_hours'], r[key]),
                        textcoords='offset points', xytext=(4, 4), fontsize=8, color='tab:blue')
        ax.plot([r['idle_node_hours'] for r in demand], [r[key] for r in demand], 'D',
                color='tab:red', markersize=7, label='demand (service level)')
        for r in demand:
            ax.annotate('%g' % r['level'], (r['idle_node_hours'], r[key]),
                        textcoords='offset points', xytext=(4, -10), fontsize=8, color='tab:red')
        ax.set_yscale('symlog', linthresh=linear)
        ax.set_xlabel('idle ready-node-hours')
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format='svg')
    pyplot.close(fig)
    return path


def _figures(r):
    return 'p95 %s s, max %s s, idle %.1f node-h' % (
        _s(r['p95_wait_s']), _s(r['max_wait_s']), r['idle_node_hours'])


def _s(x):
    return '%.0f' % x


def goal_rows(case, results):
    demand = next(r for r in results if r['level'] == GOAL_LEVEL)
    spend = [r for r in results if r['level'] is None
             and r['idle_node_hours'] >= demand['idle_node_hours']]
    static = min(spend, key=lambda r: r['idle_node_hours']) if spend else None
    rows = []
    for metric, key, unit in (('waiting fetches', 'waiting_fraction', 'of fetches'),
                              ('p95 wait', 'p95_wait_s', 's')):
        detail = {'demand': demand['setting'], 'demand_idle_node_hours': demand['idle_node_hours'],
                  'demand_' + key: demand[key]}
        text = '<= 0.5 x static'
        if static is None:
            ref, name, goal = None, None, Goal('<=', 0.5, of='ratio', text=text)
            detail['comparator'] = ('none: every static setting spends fewer idle node-hours '
                                    'than demand %g' % GOAL_LEVEL)
            where = 'no static at >= %.1f idle node-h' % demand['idle_node_hours']
        else:
            detail.update(comparator=static['setting'],
                          comparator_idle_node_hours=static['idle_node_hours'],
                          **{'comparator_' + key: static[key]})
            for k in ('waiting_fraction', 'p95_wait_s', 'p99_wait_s', 'max_wait_s', 'mean_wait_s'):
                detail['figures'] = detail.get('figures', {})
                detail['figures'][k] = {'demand': demand[k], 'static': static[k]}
            where = '%s, %.1f >= %.1f idle node-h' % (
                static['setting'], static['idle_node_hours'], demand['idle_node_hours'])
            if static[key] == 0:
                ref, name = None, None
                goal = Goal('<=', 0, text='0 (half of the static 0)')
                detail['note'] = ('the comparator\'s %s is 0: no ratio; demand must be 0 too'
                                  % metric)
            else:
                ref, name = static[key], static['setting']
                goal = Goal('<=', 0.5, of='ratio', text=text)
        rows.append(Row(NAME, '%s; demand %g vs %s' % (case, GOAL_LEVEL, where),
                        '%s, demand vs static at >= its idle hours' % metric, demand[key], unit,
                        reference=ref, reference_name=name, goal=goal, detail=detail))
    return rows


def run(ctx):
    path = os.environ.get(TRACE_ENV) or TRACE
    arrivals = load_trace(path)
    settings = settings_defaults()
    day = math.floor(arrivals[-1] / DAY) * DAY          # the last UTC day: replayed
    w0, w1 = ctx.pick((day + 7 * HOUR, day + 13 * HOUR), (day, day + DAY))
    start = w0 - ctx.pick(3 * HOUR, DAY)
    seeds = ctx.pick([1], [1, 2, 3])
    statics = ctx.pick((2, 4, 8, 12), STATIC)
    levels = ctx.pick((GOAL_LEVEL,), LEVELS)
    started = time.perf_counter()
    results = [measure(arrivals, start, w0, w1, settings, seeds, static=m)
               for m in statics]
    results += [measure(arrivals, start, w0, w1, settings, seeds, level=s,
                       sample_at=day + 12 * HOUR) for s in levels]
    elapsed = time.perf_counter() - started
    hours = [sum(1 for t in arrivals if day + h * HOUR <= t < day + (h + 1) * HOUR)
             for h in range(24)]
    span = '%s %02d:00-%02d:00 UTC' % (time.strftime('%Y-%m-%d', time.gmtime(day)),
                                       (w0 - day) // HOUR, (w1 - day) // HOUR)
    case = '%s, %s x %d seed(s)' % (os.path.basename(path), span, len(seeds))
    rows = [Row(NAME, case, 'fetches replayed', results[0]['fetches'] // len(seeds), 'fetches',
                detail={'trace': path, 'trace_fetches': len(arrivals),
                        'replayed_day_fetches': sum(hours), 'per_hour': hours,
                        'history_days': (day - arrivals[0]) / DAY,
                        'providers': [dataclasses.asdict(p) for p in PROVIDERS],
                        'settings': dataclasses.asdict(settings), 'simulated_s': elapsed})]
    for r in results:
        what = ('static min-ready %d per provider' % r['static'] if r['level'] is None else
                'demand at %g (min-ready %d per provider)' % (r['level'], DEMAND_MIN_READY))
        rows.append(Row(NAME, '%s; %s' % (case, what), 'waiting fetches | ' + _figures(r),
                        r['waiting_fraction'], 'of fetches', detail=r))
    rows += goal_rows(case, results)
    where = os.environ.get(PLOT_ENV) or (os.getcwd() if ctx.full else ctx.workdir)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        rows[0].detail['plot'] = ('not drawn: matplotlib is not installed (pip install '
                                  'matplotlib, or ./dev.sh, which installs the test extras)')
        if ctx.full:
            raise RuntimeError(rows[0].detail['plot'])
    else:
        os.makedirs(where, exist_ok=True)
        rows[0].detail['plot'] = plot(results, os.path.join(where, PLOT_NAME),
                                      'Pool sizing frontier: %s' % case)
    return rows

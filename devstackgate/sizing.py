"""Demand-aware pool sizing: keep as many ready nodes as the coming demand needs.

A label whose ``pool-sizing`` is ``demand`` (``static``, the default, keeps
min-ready) gets, per provider, the number of ready nodes that serves the
fetches expected while a new node is being made ready, at a stated service
level:

- **rate**: the label's fetches per second expected now, from the gate
  results (each fetch starts one): the mean count of the same hour of the week
  over the last ``demand-history-days`` (the weekly profile; with less than a
  week of history, the same hour of the day: the daily one), times the
  short-term trend (the last ``demand-recent-minutes``' fetches against what
  the profile expected for them, (recent + 1) / (expected + 1), within
  ``demand-trend-limit`` either way), so a busier day than usual, or a batch
  of approvals, raises it at once;
- **lead**: the provider's median time to ready (the launch history of the
  last ``demand-history-days``; ``boot-timeout`` / 2 without one) plus
  ``launch-period``, because the next top-up is up to one launch period away;
- **share**: the provider's part of the label's fetches, in proportion to its
  max-servers among the label's providers that are not quarantined (a
  quarantined one gets only its floor);
- **target**: the smallest T with P(D <= T) >= ``service-level`` for the
  fetches D of the provider's share during the lead: a Poisson quantile, or,
  when the fetches of the history come in bursts, the measured quantile: mean
  + z x sqrt(mean), z the service-level quantile of the history's
  standardised counts over lead-long intervals around the profile (bursts
  make it larger than Poisson's); then at least min-ready and at most
  ``max-ready`` (and launch's max-servers).

:func:`estimate` gives the figures behind one decision (a :class:`Decision`),
which launch logs on one line per label and ``devstack-gate stats`` shows;
reap trims ready nodes beyond the target (oldest first, never below
min-ready, never a node already claimed).
"""

import collections
import dataclasses
import math
import statistics
import time

HOUR = 3600.0
WEEK = 7 * 24 * HOUR
DAY = 24 * HOUR


def poisson_quantile(mean, q):
    """The smallest k with P(X <= k) >= q for X ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    if not 0 < q < 1:
        raise ValueError('service level %r: expected a fraction between 0 and 1' % (q,))
    k, term = 0, math.exp(-mean)
    if term == 0.0:             # a large mean: the normal approximation, continuity-corrected
        return max(0, math.ceil(mean + normal_quantile(q) * math.sqrt(mean) - 0.5))
    total = term
    while total < q:
        k += 1
        term *= mean / k
        total += term
    return k


def normal_quantile(q):
    """The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9)."""
    if not 0 < q < 1:
        raise ValueError('quantile %r: expected a fraction between 0 and 1' % (q,))
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
         1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
         6.680131188771972e+01, -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
         -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
         3.754408661907416e+00)
    low = 0.02425
    if q < low:
        r = math.sqrt(-2 * math.log(q))
        return (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / \
            ((((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1)
    if q > 1 - low:
        return -normal_quantile(1 - q)
    r = q - 0.5
    s = r * r
    return (((((a[0] * s + a[1]) * s + a[2]) * s + a[3]) * s + a[4]) * s + a[5]) * r / \
        (((((b[0] * s + b[1]) * s + b[2]) * s + b[3]) * s + b[4]) * s + 1)


def demand_quantile(mean, q, tail=None):
    """Nodes that cover q of the lead's demand: Poisson's quantile, or, when the
    history's fetches come in bursts, mean + tail x sqrt(mean), where tail is the
    measured q-quantile of the standardised counts (:func:`measured_tail`), if
    that is more."""
    if mean <= 0:
        return 0
    k = poisson_quantile(mean, q)
    if tail is not None:
        k = max(k, math.ceil(mean + tail * math.sqrt(mean)))
    return k


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the estimate needs of the configuration (all named keys)."""
    history_days: float
    recent_minutes: float
    trend_limit: float
    launch_period: float

    @classmethod
    def from_config(cls, config):
        return cls(config.demand_history_days, config.demand_recent_minutes,
                   config.demand_trend_limit, config.launch_period)


def profile_rate(starts, now, settings):
    """(fetches per second expected at `now` by the profile, which profile).

    `starts`: the label's fetch times (epoch seconds), any order.  The weekly
    profile: the fetches of this hour of the week in each past week the history
    covers (demand-history-days back from this hour, at most), averaged; the
    daily one (less than a week of history): this hour of each past day.
    """
    this_hour = now - now % HOUR
    since = this_hour - settings.history_days * DAY
    starts = [t for t in starts if since <= t < now]
    if not starts:
        return 0.0, 'no history'
    first = min(starts)
    span = this_hour - max(since, first - first % HOUR)
    period, name = (WEEK, 'weekly') if span >= WEEK else (DAY, 'daily')
    periods = int(span // period)
    if periods == 0:
        return 0.0, 'less than a day of history'
    counts = sum(1 for t in starts
                 if (t - this_hour) % period < HOUR and this_hour - periods * period <= t
                 < this_hour)
    return counts / (periods * HOUR), '%s over %d %s(s)' % (name, periods,
                                                          'week' if period == WEEK else 'day')


def trend(starts, now, settings, rate):
    """The short-term trend: (recent + 1) / (expected + 1) over the last recent-minutes."""
    window = settings.recent_minutes * 60
    recent = sum(1 for t in starts if now - window <= t < now)
    expected = rate * window
    factor = (recent + 1) / (expected + 1)
    limit = settings.trend_limit
    return min(limit, max(1 / limit, factor)), recent


#: Lead-long intervals of the history a measured tail needs (else Poisson's alone).
MIN_INTERVALS = 50


def measured_tail(starts, now, settings, lead, q):
    """The q-quantile of the history's standardised fetch counts, (count -
    expected) / sqrt(expected), over lead-long intervals whose expected count (the
    hourly profile's, as profile_rate: the same hour of the week or day) is at
    least 1.  Poisson counts give about the normal quantile; bursts (a batch of
    approvals) a larger one; the daily and weekly swings, which the profile
    follows, do not raise it.  None with too little history to tell."""
    this_hour = now - now % HOUR
    since = this_hour - settings.history_days * DAY
    starts = [t for t in starts if since <= t < now]
    if len(starts) < 2 or lead <= 0:
        return None
    first = max(since, min(starts) - min(starts) % HOUR)
    span = this_hour - first
    period = WEEK if span >= WEEK else DAY
    periods = max(1, int(span // period))
    per_slot = collections.Counter(int((t % period) // HOUR) for t in starts)
    counts = collections.Counter(int((t - first) // lead) for t in starts)
    scores = []
    for i in range(int((now - first) // lead)):
        middle = first + (i + 0.5) * lead
        expected = per_slot.get(int((middle % period) // HOUR), 0) / (periods * HOUR) * lead
        if expected >= 1:
            scores.append((counts.get(i, 0) - expected) / math.sqrt(expected))
    if len(scores) < MIN_INTERVALS:
        return None
    scores.sort()
    return scores[min(len(scores) - 1, math.ceil(q * len(scores)) - 1)]


@dataclasses.dataclass(frozen=True)
class Decision:
    """The figures behind one provider's target for one label."""
    provider: str
    label: str
    rate: float             # the label's fetches per second expected now (all providers)
    profile: float          # the profile's part of it
    how: str                # which profile
    trend: float
    recent: int             # fetches in the last recent-minutes
    share: float            # this provider's part of the label's fetches
    time_to_ready: float    # its median, seconds
    lead: float             # time_to_ready + launch-period
    mean: float             # rate x share x lead
    tail: float             # the measured quantile of standardised counts (None: Poisson's)
    service_level: float
    wanted: int             # the quantile
    target: int             # wanted within min-ready and max-ready
    min_ready: int
    max_ready: int

    def line(self):
        return ('%s %s: demand %.4f fetches/s (%s profile %.4f x trend %.2f, %d in the last '
                'minutes), share %.0f %%, lead %.0f s (ready in %.0f s + launch period): mean '
                '%.1f, %s quantile %d at %g: target %d (min-ready %d, max-ready %s)'
                % (self.provider, self.label, self.rate, self.how, self.profile, self.trend,
                   self.recent, 100 * self.share, self.lead, self.time_to_ready, self.mean,
                   'Poisson' if self.tail is None else 'measured (z %.2f)' % self.tail,
                   self.wanted, self.service_level, self.target, self.min_ready,
                   self.max_ready if self.max_ready is not None else '-'))


def shares(config, label, quarantined=()):
    """{provider: its part of the label's fetches}: max-servers among those not quarantined."""
    offering = [p for p in config.providers if p.image(label) is not None]
    healthy = [p for p in offering if p.name not in quarantined] or offering
    total = sum(p.max_servers for p in healthy) or 1
    return {p.name: (p.max_servers / total if p in healthy else 0.0) for p in offering}


def estimate(provider, image, starts, time_to_ready, share, settings, now=None):
    """The Decision for one provider's label from the label's fetch times (`starts`)
    and the provider's median time to ready (None: boot-timeout / 2)."""
    now = time.time() if now is None else now
    ttr = time_to_ready if time_to_ready is not None else provider.boot_timeout / 2
    lead = ttr + settings.launch_period
    base, how = profile_rate(starts, now, settings)
    factor, recent = trend(starts, now, settings, base)
    rate = base * factor
    if base == 0.0:     # no profile for this hour: the recent fetches alone
        rate = recent / (settings.recent_minutes * 60)
    mean = rate * share * lead
    tail = measured_tail(starts, now, settings, lead, image.service_level)
    wanted = demand_quantile(mean, image.service_level, tail)
    target = max(image.min_ready, wanted)
    if image.max_ready is not None:
        target = min(target, max(image.min_ready, image.max_ready))
    return Decision(provider.name, image.name, rate, base, how, factor, recent, share, ttr,
                    lead, mean, tail, image.service_level, wanted, target, image.min_ready,
                    image.max_ready)


def decide(db, config, provider, image, now=None):
    """The Decision for one provider's demand-sized label, read from the database."""
    now = time.time() if now is None else now
    settings = Settings.from_config(config)
    since = now - settings.history_days * DAY

    def tx(s):
        starts = [r.start_time for r in s.results_between(since, now, label=image.name)]
        seconds = [row.seconds for row in s.launches(since, now, provider=provider.name,
                                                     label=image.name)
                   if row.outcome == 'ready' and row.seconds is not None]
        quarantined = {q.provider for q in s.quarantines(label=image.name)}
        return starts, (statistics.median(seconds) if seconds else None), quarantined
    starts, ttr, quarantined = db.transact(tx)
    share = shares(config, image.name, quarantined).get(provider.name, 0.0)
    return estimate(provider, image, starts, ttr, share, settings, now)

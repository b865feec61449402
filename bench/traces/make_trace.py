"""Generate bench/traces/synthetic-week.csv: eight days of one label's gate fetches.

    python bench/traces/make_trace.py [--seed N] [--out PATH]

Standard library only, seeded: the same seed writes the same file.  The file is
shipped (bench/sizing.py replays it); this script is how it was made.

The shape (UTC, starting Monday 2026-11-02 00:00; days 1-7 are the history the
sizing learns from, day 8, again a Monday, is the replayed one):

- a smooth daily rate: NIGHT fetches an hour at night, rising from about
  07:00 to a working-hours plateau of PEAK an hour (PEAK / NIGHT = 5.5 on a
  weekday) and falling again from about 20:00; Saturdays and Sundays run at
  WEEKEND of the weekday rate;
- arrivals: a Poisson process of that rate (thinning);
- bursts: a batch of changes approved at once: BURSTS_WEEKDAY a day on average
  on weekdays (BURSTS_WEEKEND on weekends), at a working hour, each of 5-15
  fetches within 60-120 seconds.

A weekday comes to a few hundred fetches (about 300 from the rate, plus about
40 in bursts).

The file: a comment line (``#``, the generator and its seed), then one fetch
start time a line, epoch seconds, ascending.

A real trace instead: export the start times of one label's gate runs from the
results table, one a line, ending at a UTC midnight (bench/sizing.py replays
the trace's last UTC day, the day of its last start, and learns from the days
before it, so export at least eight whole days), and point
``DEVSTACK_GATE_TRACE`` at the file::

    sqlite3 -noheader state.db \\
      "SELECT start_time FROM results WHERE label = 'precise'
         AND start_time < strftime('%s', 'now', 'start of day')
       ORDER BY start_time" > precise.csv
    mysql -N -B devstackgate -e \\
      "SELECT start_time FROM results WHERE label = 'precise'
         AND start_time < UNIX_TIMESTAMP(CURDATE()) ORDER BY start_time" > precise.csv
    DEVSTACK_GATE_TRACE=precise.csv python -m bench --only sizing

Lines that are empty, start with ``#`` or are not a number (a column header)
are skipped.
"""

import argparse
import calendar
import math
import os
import random

SEED = 20261102
START = calendar.timegm((2026, 11, 2, 0, 0, 0))    # a Monday, 00:00 UTC
DAYS = 8
NIGHT = 4.0             # fetches an hour at night (weekday)
PEAK = 22.0             # on the weekday working-hours plateau
WEEKEND = 0.35          # weekend days: this part of the weekday rate
BURSTS_WEEKDAY = 4.0    # bursts a day on average
BURSTS_WEEKEND = 1.0
BURST_SIZE = (5, 15)
BURST_SPREAD = (60.0, 120.0)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, 'synthetic-week.csv')


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def working(hour):
    """0 at night, 1 on the working-hours plateau (about 09:00-19:00 UTC), smooth."""
    return _sigmoid((hour - 8.0) / 0.8) * _sigmoid((20.5 - hour) / 1.0)


def rate(t):
    """Fetches per second at epoch time t (without bursts)."""
    day = int((t - START) // 86400)
    hour = ((t - START) % 86400) / 3600.0
    per_hour = NIGHT + (PEAK - NIGHT) * working(hour)
    if day % 7 in (5, 6):       # Saturday, Sunday
        per_hour *= WEEKEND
    return per_hour / 3600.0


def _poisson(rng, mean):
    # Knuth's: fine for the small means here.
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def generate(seed=SEED, days=DAYS, bursts=None):
    """The sorted fetch times (epoch seconds) of `days` days from START; each burst's
    (start, size) is appended to `bursts` when given."""
    rng = random.Random(seed)
    top = PEAK / 3600.0
    times = []
    t = float(START)
    end = START + days * 86400
    while True:                         # thinning of a homogeneous process of rate `top`
        t += rng.expovariate(top)
        if t >= end:
            break
        if rng.random() * top < rate(t):
            times.append(t)
    for day in range(days):
        weekend = day % 7 in (5, 6)
        for _ in range(_poisson(rng, BURSTS_WEEKEND if weekend else BURSTS_WEEKDAY)):
            at = START + day * 86400 + rng.uniform(9.0, 19.0) * 3600
            spread = rng.uniform(*BURST_SPREAD)
            size = rng.randint(*BURST_SIZE)
            times.extend(at + rng.uniform(0, spread) for _ in range(size))
            if bursts is not None:
                bursts.append((at, size))
    return sorted(times)


def write(path, times, seed):
    with open(path, 'w') as f:
        f.write('# synthetic gate fetch trace: bench/traces/make_trace.py --seed %d '
                '(%d days from %s UTC, night %g/h, weekday peak %g/h, weekend x%g, '
                '%g bursts a weekday of %d-%d fetches)\n'
                % (seed, DAYS, '2026-11-02 00:00', NIGHT, PEAK, WEEKEND, BURSTS_WEEKDAY,
                   BURST_SIZE[0], BURST_SIZE[1]))
        for t in times:
            f.write('%.3f\n' % t)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--seed', type=int, default=SEED)
    p.add_argument('--out', default=OUT)
    args = p.parse_args(argv)
    bursts = []
    times = generate(args.seed, bursts=bursts)
    write(args.out, times, args.seed)
    for d in range(DAYS):
        lo, hi = START + d * 86400, START + (d + 1) * 86400
        hours = [sum(1 for t in times if lo + h * 3600 <= t < lo + (h + 1) * 3600)
                 for h in range(24)]
        mine = [(int((at - lo) // 60), n) for at, n in bursts if lo <= at < hi]
        print('day %d: %d fetches, busiest hour %d, quietest %d; bursts %s'
              % (d + 1, sum(hours), max(hours), min(hours),
                 ', '.join('%02d:%02d x%d' % (m // 60, m % 60, n) for m, n in mine) or '-'))
    print('%d fetches in %s' % (len(times), args.out))


if __name__ == '__main__':
    main()

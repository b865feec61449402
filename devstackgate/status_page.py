"""The status page: one self-contained HTML file a Jenkins job publishes every ten minutes.

:func:`render` reads the database (it writes nothing) and returns the page:
the pool per provider and label now, ready nodes and gate runs over the last
day as charts, gate and launch failure rates per provider with the outliers
marked (:mod:`devstackgate.stats`), image ages (current and previous), held
nodes with their reasons and expiry, disabled labels and paused image builds.

The file fetches nothing: no script, no external style sheet, font or image;
the charts are inline SVG drawn here.  Every name and reason comes from users
(hold reasons, pause reasons, node names) and is escaped.

Ready nodes over time are reconstructed, since no one samples the pool: each
node is ready from its launch record (the ``launches`` history) until its gate
run started (``results``), or until its row left ``ready`` (the row's
state_time), or now if it still is.  A node whose row the reaper has already
deleted without a gate run on it counts until max-ready-hours after it became
ready at most, so after a mass delete (a demoted image) the line is an upper
bound.  Ready nodes from before the launch history existed count from their
row's state_time.
"""

import collections
import datetime
import html
import math
import time

from devstackgate import operator, stats
from devstackgate.operator import age_text

HOUR = 3600.0
HISTORY_HOURS = 24          # the charts' span
HISTORY_STEP = 600.0        # seconds between samples of the ready pool
STATS_DAYS = 7              # the failure-rate table's window
STATES = ('building', 'ready', 'used', 'hold', 'delete', 'error')
STATE_COLORS = {'building': '#f0b429', 'ready': '#2f9e44', 'used': '#1c7ed6',
                'hold': '#ae3ec9', 'delete': '#868e96', 'error': '#e03131'}
RESULT_COLORS = {'success': '#2f9e44', 'failure': '#e03131', 'timeout': '#f76707',
                 'infra': '#ae3ec9',
                 'aborted': '#868e96', 'running': '#74c0fc'}
PALETTE = ('#1c7ed6', '#e8590c', '#2f9e44', '#ae3ec9', '#0c8599', '#f59f00', '#c2255c',
           '#5c940d')

CSS = """
body { font: 14px/1.4 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #212529;
       background: #f1f3f5; margin: 0; }
header { background: #212529; color: #f8f9fa; padding: 14px 24px; }
header h1 { margin: 0; font-size: 22px; }
header p { margin: 4px 0 0; color: #ced4da; }
main { padding: 8px 24px 24px; max-width: 1400px; }
section { background: #fff; border: 1px solid #dee2e6; border-radius: 6px; margin: 14px 0;
          padding: 10px 16px 14px; }
h2 { font-size: 17px; margin: 4px 0 8px; }
h3 { font-size: 14px; margin: 10px 0 4px; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { border-bottom: 1px solid #e9ecef; padding: 3px 10px 3px 0; text-align: left;
         vertical-align: top; }
th { font-weight: 600; color: #495057; }
td.n, th.n { text-align: right; padding-right: 14px; }
td:first-child { white-space: nowrap; }
.switch { color: #c92a2a; font-size: 12px; }
.note { color: #6c757d; font-size: 12px; margin: 4px 0; max-width: 1100px; }
.badges span { display: inline-block; border-radius: 12px; padding: 2px 10px; margin: 6px 6px 0 0;
               background: #e9ecef; }
.badges .bad, .outlier { background: #ffe3e3; color: #c92a2a; font-weight: 600; }
.outlier { border-radius: 4px; padding: 0 6px; }
.ok { color: #2b8a3e; }
.legend span { margin-right: 14px; white-space: nowrap; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 4px; vertical-align: middle; }
.reason { max-width: 520px; word-break: break-word; }
svg text { font: 11px "DejaVu Sans", Arial, sans-serif; fill: #495057; }
"""


def esc(value):
    return html.escape('' if value is None else str(value), quote=True)


def utc(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        '%Y-%m-%d %H:%M UTC')


def percent(fraction):
    return stats.percent(fraction)


def seconds_text(seconds):
    return '-' if seconds is None else age_text(seconds)


def colors_for(names):
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


# -- what the page shows ----------------------------------------------------------

def ready_history(nodes, launches, results, now, max_ready_hours, hours=HISTORY_HOURS,
                  step=HISTORY_STEP):
    """{provider: [(t, ready nodes)]} sampled every `step` seconds over the last
    `hours` (see the module docstring for how it is reconstructed)."""
    rows = {n.id: n for n in nodes}
    claimed = {}
    for r in results:
        if r.node_id is not None:
            claimed[r.node_id] = min(claimed.get(r.node_id, r.start_time), r.start_time)
    intervals = collections.defaultdict(list)
    recorded = set()
    for launch in launches:
        if launch.outcome != 'ready':
            continue
        start = launch.finished
        recorded.add(launch.node_id)
        row = rows.get(launch.node_id)
        if launch.node_id in claimed and claimed[launch.node_id] >= start:
            end = claimed[launch.node_id]
        elif row is not None:
            end = now if row.state == 'ready' else row.state_time
        else:
            end = start + max_ready_hours * HOUR
        intervals[launch.provider].append((start, end))
    for row in nodes:        # ready before there was a launch history
        if row.state == 'ready' and row.id not in recorded:
            intervals[row.provider].append((row.state_time, now))
    samples = [now - hours * HOUR + k * step for k in range(int(hours * HOUR / step) + 1)]
    providers = sorted(set(intervals) | {n.provider for n in nodes})
    return {p: [(t, sum(1 for a, b in intervals[p] if a <= t < b or (t == now and a <= t <= b)))
                for t in samples] for p in providers}


def runs_by_hour(results, now, hours=HISTORY_HOURS):
    """[(hour start, Counter(result))] of the gate runs started in each of the last
    `hours` whole hours (the last one up to now)."""
    end = math.floor(now / HOUR) * HOUR + HOUR
    buckets = [(end - (hours - k) * HOUR, collections.Counter()) for k in range(hours)]
    for r in results:
        k = int((r.start_time - buckets[0][0]) // HOUR)
        if 0 <= k < hours and r.start_time <= now:
            buckets[k][1][r.result] += 1
    return buckets


# -- charts (inline SVG) ------------------------------------------------------------

def nice_max(value):
    """The smallest 1, 2 or 5 times a power of ten at or above value (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * power >= value:
            return m * power
    return 10 * power


def _axes(out, t0, t1, vmax, ml, mt, pw, ph, unit):
    ticks = 5 if vmax % 5 == 0 and vmax >= 5 else (vmax if vmax <= 4 else 4)
    for k in range(ticks + 1):
        v = vmax * k / ticks
        y = mt + ph - v / vmax * ph
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e9ecef"/>'
                   % (ml, ml + pw, y, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>'
                   % (ml - 6, y + 4, esc('%g' % v)))
    first = math.ceil(t0 / (3 * HOUR)) * 3 * HOUR
    t = first
    while t <= t1:
        x = ml + (t - t0) / (t1 - t0) * pw
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#dee2e6"/>'
                   % (x, x, mt, mt + ph + 4))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (
            x, mt + ph + 16, esc(datetime.datetime.fromtimestamp(
                t, datetime.timezone.utc).strftime('%H:%M'))))
        t += 3 * HOUR
    out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#adb5bd"/>'
               % (ml, ml + pw, mt + ph, mt + ph))
    out.append('<text x="%d" y="%d">%s</text>' % (ml, mt - 4, esc(unit)))


def step_chart(series, t0, t1, colors, label, width=1180, height=220):
    """Step lines (counts that change at events), one per series {name: [(t, v)]}."""
    ml, mr, mt, mb = 44, 16, 18, 26
    pw, ph = width - ml - mr, height - mt - mb
    vmax = nice_max(max([v for points in series.values() for _, v in points] + [1]))
    out = ['<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 %d %d" '
           'width="%d" height="%d"><title>%s</title>' % (width, height, width, height, esc(label))]
    _axes(out, t0, t1, vmax, ml, mt, pw, ph, label)

    def x(t):
        return ml + (t - t0) / (t1 - t0) * pw

    def y(v):
        return mt + ph - v / vmax * ph
    for name, points in series.items():
        if not points:
            continue
        d = ['M%.1f,%.1f' % (x(points[0][0]), y(points[0][1]))]
        for (_, prev), (t, v) in zip(points, points[1:]):
            d.append('H%.1f' % x(t))
            if v != prev:
                d.append('V%.1f' % y(v))
        out.append('<path d="%s" fill="none" stroke="%s" stroke-width="2">'
                   '<title>%s: now %d</title></path>'
                   % (' '.join(d), colors[name], esc(name), points[-1][1]))
    out.append('</svg>')
    return ''.join(out)


def stacked_bars(buckets, keys, colors, label, width=1180, height=220):
    """One bar per (start, Counter) bucket of an hour, stacked in `keys` order."""
    ml, mr, mt, mb = 44, 16, 18, 26
    pw, ph = width - ml - mr, height - mt - mb
    t0, t1 = buckets[0][0], buckets[-1][0] + HOUR
    vmax = nice_max(max([sum(c.values()) for _, c in buckets] + [1]))
    out = ['<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 %d %d" '
           'width="%d" height="%d"><title>%s</title>' % (width, height, width, height, esc(label))]
    _axes(out, t0, t1, vmax, ml, mt, pw, ph, label)
    slot = pw / len(buckets)
    for k, (start, counts) in enumerate(buckets):
        base = 0
        hour = datetime.datetime.fromtimestamp(start, datetime.timezone.utc).strftime('%H:00')
        for key in keys:
            n = counts.get(key, 0)
            if not n:
                continue
            y0 = mt + ph - (base + n) / vmax * ph
            out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s">'
                       '<title>%s UTC: %d %s</title></rect>'
                       % (ml + k * slot + 2, y0, max(1.0, slot - 4), n / vmax * ph, colors[key],
                          esc(hour), n, esc(key)))
            base += n
    out.append('</svg>')
    return ''.join(out)


def state_bar(counts, width=260, height=14):
    """A horizontal bar of a label's nodes per state."""
    total = sum(counts.values())
    out = ['<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 %d %d" '
           'width="%d" height="%d"><title>nodes per state</title>'
           '<rect width="%d" height="%d" fill="#f1f3f5"/>' % (width, height, width, height,
                                                            width, height)]
    x = 0.0
    scale = width / max(total, 1)
    for state in STATES:
        n = counts.get(state, 0)
        if n:
            out.append('<rect x="%.1f" width="%.1f" height="%d" fill="%s"><title>%d %s</title>'
                       '</rect>' % (x, n * scale, height, STATE_COLORS[state], n, state))
            x += n * scale
    out.append('</svg>')
    return ''.join(out)


def rate_bar(rate, compared_to, outlier, width=120, height=14):
    """The failure rate as a bar, with a tick at the other providers' rate."""
    out = ['<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 %d %d" '
           'width="%d" height="%d"><title>failure rate %s; other providers %s</title>'
           '<rect width="%d" height="%d" fill="#f1f3f5"/>'
           % (width, height, width, height, percent(rate), percent(compared_to), width, height)]
    if rate is not None:
        out.append('<rect width="%.1f" height="%d" fill="%s"/>'
                   % (rate * width, height, '#e03131' if outlier else '#fa5252aa'))
    if compared_to is not None:
        x = compared_to * width
        out.append('<line x1="%.1f" x2="%.1f" y1="0" y2="%d" stroke="#212529" '
                   'stroke-width="2"/>' % (x, x, height))
    out.append('</svg>')
    return ''.join(out)


def legend(colors, keys=None):
    return '<p class="legend">%s</p>' % ''.join(
        '<span><span class="swatch" style="background:%s"></span>%s</span>'
        % (colors[k], esc(k)) for k in (keys or colors))


def table(headers, rows, numeric=()):
    """rows: lists of cells already escaped (HTML)."""
    out = ['<table><tr>']
    out += ['<th%s>%s</th>' % (' class="n"' if i in numeric else '', esc(h))
            for i, h in enumerate(headers)]
    out.append('</tr>')
    for row in rows:
        out.append('<tr>' + ''.join('<td%s>%s</td>' % (' class="n"' if i in numeric else '', c)
                                    for i, c in enumerate(row)) + '</tr>')
    out.append('</table>')
    return ''.join(out)


# -- the page -----------------------------------------------------------------------

def render(db, config, now=None):
    """The status page as one HTML string (reads the database, writes nothing)."""
    now = time.time() if now is None else now
    since = now - HISTORY_HOURS * HOUR
    horizon = since - config.max_ready_hours * HOUR

    def tx(s):
        return (s.nodes(), s.images(), s.launches(since=horizon, until=now),
                s.results_between(horizon, now))
    nodes, images, launches, results = db.transact(tx)
    figures = stats.compute(db, config, days=STATS_DAYS, now=now)
    disabled = operator.disabled(db, config, now=now)
    paused = operator.paused(db, config, now=now)
    providers = [p.name for p in config.providers]
    providers += sorted({n.provider for n in nodes} - set(providers))
    colors = colors_for(providers)

    held = [n for n in nodes if n.state == 'hold']
    ready = sum(1 for n in nodes if n.state == 'ready')
    badges = ['<span>%d nodes, %d ready</span>' % (len(nodes), ready)]
    badges += ['<span class="bad">outlier: %s %s fails %s of gate runs</span>'
               % (esc(c.provider), esc(c.label), percent(c.gate.failure_rate))
               for c in figures.outliers]
    badges += ['<span class="bad">quarantined: %s %s (%s)</span>'
               % (esc(c.provider), esc(c.label), esc(c.quarantined))
               for c in figures.cells if c.quarantined]
    badges.append('<span>%d held</span>' % len(held))
    if disabled:
        badges.append('<span class="bad">%d label(s) disabled</span>' % len(disabled))
    if paused:
        badges.append('<span>%d image build pause(s)</span>' % len(paused))

    body = [
        '<header><h1>devstack-gate pool status</h1><p>generated %s</p></header>'
        '<main><div class="badges">%s</div>' % (esc(utc(now)), ''.join(badges)),
        _pool_section(config, nodes, providers, disabled, paused),
        _history_section(nodes, launches, results, now, config, colors),
        _rates_section(figures),
        _images_section(images, now),
        _held_section(held, now),
        _switches_section(disabled, paused),
        '<p class="note">Every figure is read from the devstack-gate database; this page '
        'fetches nothing and runs no script.</p></main>',
    ]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta http-equiv="refresh" content="600">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<title>devstack-gate pool status, %s</title><style>%s</style></head><body>%s'
            '</body></html>\n' % (esc(utc(now)), CSS, '\n'.join(body)))


def _pool_section(config, nodes, providers, disabled, paused):
    off = {d['label'] for d in disabled}
    counts = collections.defaultdict(collections.Counter)
    for n in nodes:
        counts[(n.provider, n.label)][n.state] += 1
    out = ['<section id="pool"><h2>The pool now</h2>', legend(STATE_COLORS)]
    for name in providers:
        provider = next((p for p in config.providers if p.name == name), None)
        labels = [i.name for i in provider.images] if provider else []
        labels += sorted({lab for p, lab in counts if p == name} - set(labels))
        total = sum(sum(counts[(name, lab)].values()) for lab in labels)
        out.append('<h3>%s <span class="note">%s</span></h3>' % (
            esc(name), esc('%d nodes; max-servers %d' % (total, provider.max_servers)
                           if provider else 'not in the configuration any more')))
        rows = []
        for label in labels:
            c = counts[(name, label)]
            image = provider.image(label) if provider else None
            notes = (['disabled'] if label in off else []) + (
                ['builds paused'] if any(p['label'] == label and p['provider'] in (None, name)
                                         for p in paused) else [])
            rows.append([esc(label)] + [str(c.get(s, 0)) for s in STATES]
                        + [esc(image.min_ready if image else '-'), state_bar(c),
                           '<span class="switch">%s</span>' % esc(', '.join(notes))])
        out.append(table(['label'] + list(STATES) + ['min-ready', '', ''], rows,
                         numeric=range(1, len(STATES) + 2)))
    out.append('</section>')
    return ''.join(out)


def _history_section(nodes, launches, results, now, config, colors):
    t0 = now - HISTORY_HOURS * HOUR
    series = ready_history(nodes, launches, results, now, config.max_ready_hours)
    day_results = [r for r in results if r.start_time >= t0]
    buckets = runs_by_hour(day_results, now)
    keys = [k for k in RESULT_COLORS if any(c.get(k) for _, c in buckets)]
    out = ['<section id="history"><h2>Ready nodes, last %d hours</h2>' % HISTORY_HOURS,
           legend({p: colors[p] for p in series}),
           step_chart(series, t0, now, colors, 'ready nodes'),
           '<p class="note">Sampled every %d minutes, reconstructed from the launch history '
           '(when each node became ready), the gate results (when it was claimed) and the node '
           'rows (when they left ready).  A node the reaper deleted unused counts for at most '
           'max-ready-hours (%g h) after it became ready, so after a mass delete the line is an '
           'upper bound.</p>' % (HISTORY_STEP // 60, config.max_ready_hours),
           '<h2>Gate runs, last %d hours</h2>' % HISTORY_HOURS]
    if day_results:
        out += [legend(RESULT_COLORS, keys),
                stacked_bars(buckets, keys, RESULT_COLORS, 'gate runs per hour (by start)')]
    else:
        out.append('<p>No gate runs started in the last %d hours.</p>' % HISTORY_HOURS)
    out.append('</section>')
    return ''.join(out)


def _rates_section(figures):
    rows = []
    for c in figures.cells:
        mark = ('<span class="outlier">outlier</span>' if c.outlier
                else '<span class="ok">ok</span>' if c.judged else '')
        if c.quarantined:
            mark += ' <span class="outlier">quarantined</span>'
        elif c.infra_outlier:
            mark += ' <span class="outlier">infra</span>'

        reasons = ', '.join('%s %d (%s)' % (esc(k), v, percent(c.launch.reason_rates[k]))
                            for k, v in c.launch.reasons.items()) or '-'
        rows.append([
            esc(c.provider), esc(c.label), str(c.gate.runs), str(c.gate.failures),
            str(c.gate.timeouts), percent(c.gate.failure_rate),
            rate_bar(c.gate.failure_rate, c.compared_to, c.outlier),
            '%s of %d' % (percent(c.compared_to), c.compared_runs) if c.compared_runs else '-',
            mark, seconds_text(c.gate.median_seconds), str(c.launch.launches),
            percent(c.launch.failure_rate), '<span class="reason">%s</span>' % reasons,
            seconds_text(c.launch.median_seconds_to_ready)])
    return ''.join([
        '<section id="rates"><h2>Failure rates, last %g days</h2>' % figures.days,
        table(['provider', 'label', 'runs', 'failures', 'timeouts', 'failure rate', '',
               'other providers', '', 'median run', 'launches', 'launch failures',
               'by reason', 'median to ready'], rows, numeric=(2, 3, 4, 5, 9, 10, 11, 13)),
        '<p class="note">Gate runs started in the window with a verdict (success, failure, '
        'timeout); the failure rate counts failures and timeouts.  The bar is the rate, the '
        'black tick the rate of all the other providers\' runs of that label.  A provider is '
        'an outlier when both it and the other providers have at least %d runs, it has at '
        'least %d failures, and a two-proportion z-test puts the chance that its rate is as '
        'much higher by luck at most %g.  Launches: every launch that '
        'ended in the window (the launch history), failed ones by reason.</p>'
        % (figures.min_runs, figures.min_failures, figures.alpha),
        '</section>'])


def _images_section(images, now):
    role = operator.roles(images)
    shown = sorted((r for r in images if r.state != 'delete'),
                   key=lambda r: (r.provider, r.label, -r.created, -r.id))
    rows = [[esc(r.provider), esc(r.label), esc(role.get(r.id) or ('demoted' if r.demoted
                                                                  else r.state)),
             ('<strong>%s</strong>' if role.get(r.id) == 'current' else '%s') % esc(r.name),
             esc(r.state), esc(age_text(now - r.created)), esc(utc(r.created))]
            for r in shown]
    out = ['<section id="images"><h2>Images</h2>']
    if rows:
        out.append(table(['provider', 'label', 'role', 'name', 'state', 'age', 'built'], rows,
                         numeric=(5,)))
    else:
        out.append('<p>No images yet.</p>')
    out.append('<p class="note">Current: the newest ready image that is not demoted (what '
               'launches boot); previous: the one a demote falls back to.</p></section>')
    return ''.join(out)


def _held_section(held, now):
    out = ['<section id="held"><h2>Held nodes</h2>']
    if held:
        rows = [[esc(n.name), esc(n.provider), esc(n.label), esc(n.ip), esc(n.held_by),
                 '<span class="reason">%s</span>' % esc(n.hold_reason),
                 esc(utc(n.hold_until)) if n.hold_until else '-',
                 esc(('in ' + age_text(n.hold_until - now)) if n.hold_until and n.hold_until > now
                     else 'expired' if n.hold_until else '-')]
                for n in sorted(held, key=lambda n: (n.hold_until or 0, n.id))]
        out.append(table(['node', 'provider', 'label', 'ip', 'held by', 'reason', 'until',
                          'expires'], rows))
    else:
        out.append('<p>No node is held.</p>')
    out.append('</section>')
    return ''.join(out)


def _switches_section(disabled, paused):
    out = ['<section id="switches"><h2>Disabled labels</h2>']
    if disabled:
        out.append(table(['label', 'set in', 'by', 'since', 'reason'], [
            [esc(d['label']), esc(d['set_in']), esc(d['set_by'] or '-'),
             esc(utc(d['since'])) if d['since'] else '-',
             '<span class="reason">%s</span>' % esc(d['reason'])] for d in disabled]))
    else:
        out.append('<p>No label is disabled.</p>')
    out.append('<h2>Paused image builds</h2>')
    if paused:
        out.append(table(['label', 'provider', 'set in', 'by', 'since', 'reason'], [
            [esc(p['label']), esc(p['provider'] or 'all providers'), esc(p['set_in']),
             esc(p['set_by'] or '-'), esc(utc(p['since'])) if p['since'] else '-',
             '<span class="reason">%s</span>' % esc(p['reason'] or '-')] for p in paused]))
    else:
        out.append('<p>No image build is paused.</p>')
    out.append('<p class="note">A disabled label is neither launched nor built, and gate runs '
               'skip it; a pause stops image builds only (launches go on from the current '
               'image).</p></section>')
    return ''.join(out)

"""From the runs' results to the table's rows (pure: no process, no cloud)."""

import statistics

from bench.common import Goal, Row

NAME = 'nodepool'
OURS = 'devstack-gate'
NODEPOOL = 'nodepool'                   # Nodepool at its defaults: host-key-checking true
NODEPOOL_NO_HKC = 'nodepool-no-hkc'     # the same with host-key-checking false
SIDES = (OURS, NODEPOOL, NODEPOOL_NO_HKC)
#: Fill goals (ratio us / Nodepool at its defaults) by boot delay; other delays: none.
FILL_GOALS = {2.0: 0.5, 10.0: 0.9}
CALLS_GOAL = 0.6
REQUEST_GOAL = 0.05


def run_order(rep, sides=SIDES):
    """Who goes first in repetition `rep`: the sides rotated by one each time."""
    k = rep % len(sides)
    return list(sides[k:]) + list(sides[:k])


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def calls_per_node(calls, nodes):
    return sum(calls.values()) / float(nodes)


def per_kind(calls, nodes):
    return {k: round(v / float(nodes), 3) for k, v in sorted(calls.items())}


def _mean_kinds(runs):
    kinds = {}
    for r in runs:
        for k, v in per_kind(r['calls'], r['nodes']).items():
            kinds.setdefault(k, []).append(v)
    return {k: round(sum(v) / len(runs), 3) for k, v in sorted(kinds.items())}


def rows(results, settings=None):
    """`results`: [{'side', 'delay', 'nodes', 'rep', 'fill', 'calls', 'requests' (Nodepool:
    seconds submit -> fulfilled), 'fetches', 'claims' (ours: seconds)}, ...].
    `settings`: {side: {setting: why}}, stated in the rows' detail."""
    settings = settings or {}
    out = []
    cases = sorted({(r['delay'], r['nodes']) for r in results})
    by = {}
    for r in results:
        by.setdefault((r['delay'], r['nodes'], r['side']), []).append(r)
    for delay, nodes in cases:
        case = 'D=%gs N=%d' % (delay, nodes)
        ours = by.get((delay, nodes, OURS), [])
        fill_ours = _median(r['fill'] for r in ours)
        calls_ours = _median(calls_per_node(r['calls'], nodes) for r in ours)
        for side, goal_on in ((NODEPOOL, True), (NODEPOOL_NO_HKC, False)):
            theirs = by.get((delay, nodes, side), [])
            if not theirs:
                continue
            label = 'Nodepool' if side == NODEPOOL else 'Nodepool, no host-key check'
            fill_goal = FILL_GOALS.get(delay) if goal_on else None
            out.append(Row(
                NAME, case, 'fill N ready, us / %s' % label, fill_ours, 's',
                reference=_median(r['fill'] for r in theirs), reference_name='s ' + label,
                goal=Goal('<=', fill_goal, of='ratio', text='ratio <= %g' % fill_goal)
                if fill_goal is not None else None,
                detail={'ours': [r['fill'] for r in ours],
                        side: [r['fill'] for r in theirs],
                        'create_pacing': {OURS: [r.get('pacing') for r in ours],
                                          side: [r.get('pacing') for r in theirs]},
                        'repetitions': len(theirs),
                        'settings': {OURS: settings.get(OURS, {}),
                                     side: settings.get(side, {})}}))
            out.append(Row(
                NAME, case, 'API calls per ready node, us / %s' % label, calls_ours, 'calls',
                reference=_median(calls_per_node(r['calls'], nodes) for r in theirs),
                reference_name='calls ' + label,
                goal=Goal('<=', CALLS_GOAL, of='ratio', text='ratio <= %g' % CALLS_GOAL)
                if goal_on else None,
                detail={'per_kind': {OURS: _mean_kinds(ours) if ours else {},
                                     side: _mean_kinds(theirs)}}))
    for delay in sorted({d for d, _ in cases}):
        theirs = [s for side in (NODEPOOL, NODEPOOL_NO_HKC)
                  for r in results if r['side'] == side and r['delay'] == delay
                  for s in r.get('requests') or ()]
        ours = [r for r in results if r['side'] == OURS and r['delay'] == delay]
        fetches = [s for r in ours for s in r.get('fetches') or ()]
        claims = [s for r in ours for s in r.get('claims') or ()]
        if not theirs:
            continue
        reference = _median(theirs) * 1000.0
        case = 'D=%gs ready pool' % delay
        detail = {'nodepool_requests_ms': [round(s * 1000.0, 1) for s in theirs]}
        for metric, values in (('request-to-node: devstack-vm-fetch.py process / '
                                'Nodepool NodeRequest', fetches),
                               ('request-to-node: in-process claim / Nodepool NodeRequest',
                                claims)):
            if not values:
                continue
            out.append(Row(NAME, case, metric, _median(values) * 1000.0, 'ms',
                           reference=reference, reference_name='ms submitted -> fulfilled',
                           goal=Goal('<=', REQUEST_GOAL, of='ratio',
                                     text='ratio <= %g' % REQUEST_GOAL),
                           detail=dict(detail, ours_ms=[round(s * 1000.0, 2) for s in values])))
    return out

"""The seeded plan of a soak run: a pure function of (profile, seed).

Everything the soak does to the pool on purpose is decided here, before the
first cloud starts: which provider is in full outage for which cycles, which
fault kinds are on for each (cycle, provider) and with what values, which
provider builds an image in each cycle, which changes the gate jobs test,
when tokens are revoked, which step is SIGKILLed how many seconds after it
started working (its first line of output), which runs overlap and when MariaDB is restarted.  The same seed
gives the same plan (its digest is printed and kept in the JSON); what the
pool does in answer still depends on timing (a kill lands wherever the
process is at that second), which is the point of a soak.

Fault kinds.  The boot-blocking kinds (boot-error, no-network, stuck-build,
quota; outage blocks everything) are exclusive within a (cycle, provider):
at the short profile's rate of 1 only the first would ever be seen.  The API
kinds (api-error, api-latency, lying-delete, snapshot-failure) combine freely.
Each kind is placed at least once; snapshot-failure is placed on the provider
that builds in that cycle, in a slot without a boot-blocking kind, so a build
really reaches its snapshot and sees it fail.
"""

import hashlib
import json
import random

BOOT_KINDS = ('boot-error', 'no-network', 'stuck-build', 'quota')
API_KINDS = ('api-error', 'api-latency', 'lying-delete', 'snapshot-failure')
FAULT_KINDS = BOOT_KINDS + API_KINDS + ('outage', 'token-revocation')
KILL_KINDS = ('launch', 'update-image', 'gate', 'reap')
# Seconds after a step's first line of output (its work has begun: Python's
# start-up alone takes seconds on a busy machine) when its SIGKILL lands,
# uniform in the window.
KILL_WINDOWS = {'launch': (0.1, 2.0), 'update-image': (0.2, 4.0), 'gate': (0.5, 4.0),
                'reap': (0.05, 0.6)}
# Tokens are revoked this long after the first output of the cycle's image
# build (it holds a token then, and makes calls for seconds more).
REVOKE_WINDOW = (0.3, 2.0)
OVERLAP_KINDS = ('launch', 'reap')


def knobs(kind, profile, rng):
    """The localcloud fault knobs of one fault kind (quota is applied at run
    time as {'instances': live servers + headroom})."""
    rate = round(rng.uniform(profile.boot_fault_min, profile.boot_fault_max), 3)
    if kind == 'boot-error':
        return {'boot-error-rate': rate}
    if kind == 'no-network':
        return {'no-network-rate': rate}
    if kind == 'stuck-build':
        return {'stuck-build-rate': rate}
    if kind == 'quota':
        return {'quota-headroom': profile.quota_headroom}
    if kind == 'api-error':
        return {'api-error-rate': profile.api_error_rate}
    if kind == 'api-latency':
        return {'api-latency': {'min': 0.0, 'max': profile.api_latency}}
    if kind == 'lying-delete':
        return {'lying-delete-lists': profile.lying_delete_lists}
    if kind == 'snapshot-failure':
        return {'snapshot-failure-rate': 1.0}
    raise ValueError(kind)


def make(profile, seed, providers, changes):
    """The plan: a JSON-ready dict.  `changes` is [(index, expect)] of the
    local Gerrit's changes ('success' or 'failure')."""
    rng = random.Random('soak-%s' % seed)
    n = profile.cycles
    out_provider = rng.choice(providers)
    out_cycles = max(1, int(round(n * profile.outage_fraction)))
    out_start = rng.randrange(0, n - out_cycles + 1)
    outage = set(range(out_start, out_start + out_cycles))

    def up(c):
        return [p for p in providers if not (p == out_provider and c in outage)]

    cycles = [{'cycle': c + 1, 'outage': [out_provider] if c in outage else [],
               'faults': {p: {} for p in up(c)}, 'image': rng.choice(up(c)),
               'gates': [], 'kills': [], 'revoke': None, 'overlap': None,
               'db_restart': None} for c in range(n)]
    slots = [(c, p) for c in range(n) for p in up(c)]

    # snapshot-failure: a cycle's build provider, in a slot of its own.
    snap_cycle = rng.randrange(n)
    snap_slot = (snap_cycle, cycles[snap_cycle]['image'])
    free = [s for s in slots if s != snap_slot]
    rng.shuffle(free)
    boot_slots = {}
    for i, kind in enumerate(BOOT_KINDS):
        if i < len(free):
            boot_slots[free[i]] = kind
    for slot in free[len(BOOT_KINDS):]:         # the long profile: more, at random
        if rng.random() < profile.extra_fault_rate:
            boot_slots[slot] = rng.choice(BOOT_KINDS)
    api_slots = {s: set() for s in slots}
    # The failing build deletes its template and its killed snapshot: deletes
    # for lying-delete to lie about.
    api_slots[snap_slot] |= {'snapshot-failure', 'lying-delete'}
    for kind in API_KINDS:
        if kind not in ('snapshot-failure', 'lying-delete'):
            api_slots[rng.choice(slots)].add(kind)
    for slot in slots:
        for kind in API_KINDS:
            if kind != 'snapshot-failure' and rng.random() < profile.extra_fault_rate:
                api_slots[slot].add(kind)
    for c, p in slots:
        faults = cycles[c]['faults'][p]
        kinds = ([boot_slots[(c, p)]] if (c, p) in boot_slots else []) + sorted(api_slots[(c, p)])
        for kind in kinds:
            faults[kind] = knobs(kind, profile, rng)

    # Gate jobs: at least one failing and one passing change per cycle.
    failing = [i for i, expect in changes if expect == 'failure']
    passing = [i for i, expect in changes if expect == 'success']
    build = 0
    for cycle in cycles:
        picks = [rng.choice(failing), rng.choice(passing)]
        picks += [rng.choice(failing + passing) for _ in range(profile.gates_per_cycle - 2)]
        rng.shuffle(picks)
        for change in picks:
            build += 1
            cycle['gates'].append({'build': build, 'change': change})

    # SIGKILLs: launch, update-image, gate, reap in turn, each on a step no other
    # kill targets; never the build that is to see its snapshot fail.
    targets = set()                 # (cycle, kind, provider or build): one kill each
    for i in range(profile.kills):
        kind = KILL_KINDS[i % len(KILL_KINDS)]
        low, high = KILL_WINDOWS[kind]
        after = round(rng.uniform(low, high), 2)
        options = []
        for c in range(n):
            if kind == 'update-image':
                if c != snap_cycle:
                    options.append((c, None))
            elif kind == 'gate':
                options += [(c, g['build']) for g in cycles[c]['gates']]
            else:
                options += [(c, p) for p in up(c)]
        options = [o for o in options if (o[0], kind, o[1]) not in targets]
        if kind == 'launch':
            # A launch killed where a boot fault is on (or the next cycle, which
            # would resume its half-booted node instead of booting) could keep
            # that fault from ever being seen: elsewhere, where possible.
            calm = [o for o in options if (o[0], o[1]) not in boot_slots
                    and (o[0] + 1, o[1]) not in boot_slots]
            options = calm or options
        if not options:
            continue
        c, target = options[rng.randrange(len(options))]
        targets.add((c, kind, target))
        kill = {'kind': kind, 'after': after}
        if kind in ('launch', 'reap'):
            kill['provider'] = target
        elif kind == 'gate':
            kill['build'] = target
        cycles[c]['kills'].append(kill)

    # Image builds: the snapshot-failure cycle's, the killed builds', then others
    # at random up to profile.builds; the rest of the cycles build nothing.
    building = {snap_cycle} | {c for c in range(n) for k in cycles[c]['kills']
                               if k['kind'] == 'update-image'}
    others = [c for c in range(n) if c not in building]
    rng.shuffle(others)
    building |= set(others[:max(0, profile.builds - len(building))])
    for c in range(n):
        if c not in building:
            cycles[c]['image'] = None
        elif c != snap_cycle:
            # A build to be killed runs where no boot fault ends it early; any other
            # on a provider with a boot fault, if any: its template boot meets it.
            killed = any(k['kind'] == 'update-image' for k in cycles[c]['kills'])
            pick = [p for p in up(c) if ((c, p) in boot_slots) != killed]
            if pick:
                cycles[c]['image'] = pick[rng.randrange(len(pick))]

    for c in rng.sample(range(n), min(n, profile.revocations)):
        cycles[c]['revoke'] = {'after': round(rng.uniform(*REVOKE_WINDOW), 2),
                               'providers': up(c)}
    for c in rng.sample(range(n), min(n, profile.overlaps)):
        cycles[c]['overlap'] = {'kind': rng.choice(OVERLAP_KINDS), 'provider': rng.choice(up(c)),
                                'after': round(rng.uniform(0.0, 0.3), 2)}
    if profile.database == 'mariadb':
        for c in rng.sample(range(1, n), min(n - 1, profile.db_restarts)):
            cycles[c]['db_restart'] = {'after': round(rng.uniform(1.0, 4.0), 2)}

    plan = {'seed': seed, 'profile': profile.name, 'providers': list(providers),
            'outage': {'provider': out_provider, 'cycles': sorted(c + 1 for c in outage)},
            'cloud_seeds': {p: rng.randrange(1, 2 ** 31) for p in providers},
            'cycles': cycles}
    plan['digest'] = digest(plan)
    return plan


def digest(plan):
    body = {k: v for k, v in plan.items() if k != 'digest'}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def planned_kinds(plan):
    """{fault kind: how many (cycle, provider) slots have it} (outage: cycles)."""
    counts = {k: 0 for k in FAULT_KINDS}
    for cycle in plan['cycles']:
        for faults in cycle['faults'].values():
            for kind in faults:
                counts[kind] += 1
        counts['outage'] += len(cycle['outage'])
        counts['token-revocation'] += 1 if cycle['revoke'] else 0
    return counts

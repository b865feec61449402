"""The soak's two profiles.  Every limit is a field here, and every field is a
command-line option (``--boot-timeout 8``), so nothing is a hidden constant.

short: what tests/test_soak.py runs, well under a minute on two busy cores:
3 cycles on SQLite, every fault kind and every step at least once, one
SIGKILL of each of launch, update-image, gate and reap.

long: on demand (minutes): 12 cycles on a private MariaDB that is restarted
mid-cycle, random extra faults, and overlapping runs of launch and reap for
one provider (what Jenkins can do when a run outlasts its period).
"""

import dataclasses
import inspect
import re

PROVIDER_NAMES = ('east', 'west', 'north', 'south')


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    cycles: int                 # cycles of launch + gates + build + reap under faults
    providers: int              # local clouds, one provider each (2 to 4)
    database: str               # sqlite (a file in the work dir) or mariadb (a private server)
    min_ready: int              # per provider (one label)
    max_servers: int            # per provider
    boot_timeout: float         # provider boot-timeout (s)
    launch_deadline: float      # seconds one launch run may wait
    api_timeout: float          # provider api-timeout (s)
    gates_per_cycle: int        # gate jobs started per cycle (at least one passes, one fails)
    builds: int                 # cycles with an image build (at least the snapshot-failure
                                # cycle and each cycle whose build is SIGKILLed)
    fetch_wait: float           # gate.fetch-wait (s)
    launch_delay: float         # launch starts once every gate job of the cycle has its node
                                # (or ended), at the latest this long into the cycle (s)
    reap_delay: float           # reap starts this long after the cycle starts (s)
    launch_period: float        # after the faults stop, launch runs every this many seconds
    recovery_periods: float     # the pools must be back at min-ready within this many periods
    hold_hours: float           # hold-hours of the product configuration
    max_used_hours: float       # max-used-hours (a killed gate's node is reaped after it)
    leak_grace: float           # leak-grace (s)
    lease_ttl: float            # lease-ttl (s): how long a SIGKILLed run's lease blocks the next
    lease_wait: float           # lease-wait (s): how long a run waits for a held lease, then skips
    kills: int                  # SIGKILLs over the run (launch, update-image, gate, reap in turn)
    revocations: int            # cycles whose tokens are revoked mid-cycle
    overlaps: int               # cycles with a second, overlapping launch or reap run
    db_restarts: int            # MariaDB restarts mid-cycle (mariadb only)
    db_down: float              # seconds MariaDB stays down in a restart
    outage_fraction: float      # share of the cycles one provider is in full outage
    extra_fault_rate: float     # chance of each extra API fault kind in a (cycle, provider)
    boot_fault_min: float       # rates of boot-error, no-network, stuck-build: uniform in
    boot_fault_max: float       # [boot_fault_min, boot_fault_max]
    api_error_rate: float       # api-error-rate when that fault is on
    api_latency: float          # api-latency max (s) when that fault is on
    lying_delete_lists: int     # lying-delete-lists when that fault is on
    quota_headroom: int         # quota fault: instances = servers at the cycle's start + this
                                # (-1: a quota of 0 instances, so every create is refused)
    step_timeout: float         # a script running longer is killed and counted as hung
    sample_interval: float      # seconds between the background server-count samples
    final_reap_runs: int        # reap runs at the end (faults off) while anything is unsettled
    mariadb_start_timeout: float


SHORT = Profile(
    name='short', cycles=3, providers=2, database='sqlite', min_ready=1, max_servers=6,
    boot_timeout=5.0, launch_deadline=8.0, api_timeout=10.0, gates_per_cycle=2, builds=3, fetch_wait=6.0,
    launch_delay=4.0, reap_delay=1.0, launch_period=6.0, recovery_periods=2.0, hold_hours=24.0,
    max_used_hours=24.0, leak_grace=1.0, lease_ttl=3.0, lease_wait=4.0, kills=4, revocations=1, overlaps=0, db_restarts=0,
    db_down=1.0, outage_fraction=1 / 3, extra_fault_rate=0.0, boot_fault_min=1.0,
    boot_fault_max=1.0, api_error_rate=0.15, api_latency=0.1, lying_delete_lists=3, quota_headroom=-1,
    step_timeout=60.0, sample_interval=0.3, final_reap_runs=4, mariadb_start_timeout=60.0)

LONG = dataclasses.replace(
    SHORT, name='long', cycles=12, database='mariadb', min_ready=2, max_servers=8,
    boot_timeout=10.0, launch_deadline=15.0, api_timeout=15.0, gates_per_cycle=3, builds=12,
    fetch_wait=20.0, launch_delay=6.0, reap_delay=2.0, launch_period=15.0, hold_hours=0.02,
    max_used_hours=0.03, leak_grace=3.0, kills=12, revocations=6, overlaps=4, db_restarts=2,
    db_down=2.0, extra_fault_rate=0.3, boot_fault_min=0.4, boot_fault_max=0.9,
    api_error_rate=0.1, api_latency=0.2, quota_headroom=0, step_timeout=120.0, sample_interval=0.3,
    final_reap_runs=6)

PROFILES = {p.name: p for p in (SHORT, LONG)}
CHOICES = {'database': ('sqlite', 'mariadb')}


def helps():
    """{field: its comment in Profile}, for --help."""
    out, last = {}, None
    for line in inspect.getsource(Profile).splitlines():
        m = re.match(r'\s+(\w+): \w+\s+# (.*)', line)
        if m:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and re.match(r'\s+# ', line):
            out[last] += ' ' + line.strip()[2:]
        else:
            last = None
    return out


def fields():
    """(option name, field) of every settable field (all but the name)."""
    return [('--' + f.name.replace('_', '-'), f) for f in dataclasses.fields(Profile)
            if f.name != 'name']


def check(profile):
    """A list of one-line problems with a profile's values (empty: fine)."""
    problems = []
    if not 2 <= profile.providers <= len(PROVIDER_NAMES):
        problems.append('--providers must be 2 to %d' % len(PROVIDER_NAMES))
    if profile.cycles < 3:
        problems.append('--cycles must be at least 3 (one provider is out for a third of them)')
    if profile.gates_per_cycle < 2:
        problems.append('--gates-per-cycle must be at least 2 (one passes, one fails)')
    if profile.min_ready < 1 or profile.max_servers < profile.min_ready + 2:
        problems.append('--min-ready must be at least 1 and --max-servers at least min-ready + 2')
    if profile.database not in CHOICES['database']:
        problems.append('--database must be one of %s' % ', '.join(CHOICES['database']))
    if profile.db_restarts and profile.database != 'mariadb':
        problems.append('--db-restarts needs --database mariadb (the soak restarts its own '
                        'private server)')
    if not 0 < profile.outage_fraction < 1:
        problems.append('--outage-fraction must be between 0 and 1')
    if not 0 <= profile.boot_fault_min <= profile.boot_fault_max <= 1:
        problems.append('--boot-fault-min/--boot-fault-max must be rates, min <= max')
    for name in ('boot_timeout', 'launch_deadline', 'api_timeout', 'fetch_wait',
                 'launch_period', 'step_timeout', 'sample_interval'):
        if getattr(profile, name) <= 0:
            problems.append('--%s must be > 0' % name.replace('_', '-'))
    return problems

"""The devstack-gate configuration file: load, validate, and give back plain objects.

Every script validates the whole file at start, before touching a database or a
cloud.  Validation is driven by one table per section (``GLOBAL_KEYS``,
``PROVIDER_KEYS``, ``IMAGE_KEYS``): each key has a type, a default (or is
required) and optional bounds or choices.  Every problem found becomes one line
naming the file, the key path (``providers[1].images[0].min-ready``) and what
was expected; all of them are reported together as a :class:`ConfigError`.

Credentials never live here: a provider names an entry of clouds.yaml (the
OpenStack convention), found on the usual search path or $OS_CLIENT_CONFIG_FILE.
"""

import base64
import binascii
import dataclasses
import os
import re
import string

import yaml

from devstackgate import config_cache
# Where the file is: config_cache (light, for fetch's fast path) owns the rules.
from devstackgate.config_cache import CONFIG_ENV, DEFAULT_CONFIG_PATHS  # noqa: F401
from devstackgate.config_cache import find_config_path  # noqa: F401
from devstackgate.errors import ConfigError, DatabaseError
DEFAULT_DATABASE = 'sqlite:///~/.devstack-gate/devstack-gate.db'
CLOUDS_YAML_ENV = 'OS_CLIENT_CONFIG_FILE'
CLOUDS_YAML_PATHS = (
    'clouds.yaml',
    os.path.join('~', '.config', 'openstack', 'clouds.yaml'),
    os.path.join(os.sep, 'etc', 'openstack', 'clouds.yaml'),
)
# A node must resolve names and have a gateway before it joins the pool.  The IPv4
# lookup (ahostsv4) is answered from /etc/hosts: `getent hosts` asks for IPv6 first, and
# on an image without '::1 localhost' that is a DNS query whose resolver, dropping a
# burst of them, kept a check waiting out its 5 s timeout.
DEFAULT_READY_CHECK = ('getent ahostsv4 localhost >/dev/null'
                       ' && ip -4 route show default | grep -q via')
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*\Z')    # \Z: no name ends in a newline
# Values that reach git, ssh, Nova or a shell as arguments: never an option ('-...'), never
# two lines.  A branch also follows git check-ref-format's rules (see _is_branch).
BRANCH_RE = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.+/-]*')
PROJECT_RE = re.compile(r'/?[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*/?')
KEYPAIR_RE = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_-]*')   # what Nova accepts in a keypair name
ADDRESS_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9.:-]*')    # a host's IP address or DNS name
#: Sample values a name format is rendered with to check the names it makes.
FORMAT_SAMPLE = dict(prefix='dg', label='precise', provider='rax', id=12345,
                     timestamp='20130101T000000Z')


class _Missing:
    def __repr__(self):
        return 'required'


REQUIRED = _Missing()


@dataclasses.dataclass(frozen=True)
class Key:
    """One row of a validation table."""
    kind: str                 # 'str', 'int', 'number', 'bool', 'list', 'strlist', 'name', 'mapping',
    #                           'format', 'branch', 'projects', 'source', 'keypair', 'address'
    default: object = REQUIRED
    minimum: float = None
    choices: tuple = None     # allowed values; for 'format', the allowed {fields}
    needs: str = None         # for 'format': the field that keeps names unique
    doc: str = ''

    def describe(self):
        what = {
            'str': 'a string', 'name': 'a name of letters, digits, ".", "_" or "-"',
            'int': 'a whole number', 'number': 'a number', 'bool': 'true or false',
            'list': 'a list', 'strlist': 'a list of strings', 'mapping': 'a mapping',
            'format': 'a name format', 'branch': 'a git branch name',
            'projects': 'a list of project paths such as openstack/nova',
            'source': 'a URL or a directory, on one line and not beginning with "-"',
            'keypair': 'a keypair name of letters, digits, "_" or "-"',
            'address': 'an IP address or DNS name',
        }[self.kind]
        if self.kind == 'format':
            what = ('a name format using {%s} and only %s, otherwise letters, digits, ".", "_" '
                    'or "-"' % (self.needs, ', '.join('{%s}' % c for c in self.choices)))
        elif self.choices:
            what = 'one of ' + ', '.join(repr(c) for c in self.choices)
        elif self.minimum is not None:
            what += ' >= %s' % _fmt(self.minimum)
        return what


def _fmt(n):
    return str(int(n)) if float(n).is_integer() else str(n)


GLOBAL_KEYS = {
    'database': Key('str', DEFAULT_DATABASE,
                    doc='sqlite:///path or mysql://user@host:port/db; no password here'),
    'hold-hours': Key('number', 24, minimum=0, doc='how long failed nodes are held'),
    'db-lock-timeout': Key('number', 30, minimum=1,
                           doc='seconds a database lock may be waited for, per attempt'),
    'db-retries': Key('int', 5, minimum=1, doc='attempts on a busy database'),
    'db-writer-queue': Key('int', 2, minimum=0,
                           doc='SQLite: writers that wait for the write lock in a queue in '
                               'the kernel, woken the moment it is free; the others wait '
                               'in SQLite\'s busy handler (0: all do)'),
    'db-claim-slots': Key('int', 2, minimum=0,
                          doc='MySQL/MariaDB: claims from one machine that talk to the server '
                              'at once; the others wait their turn in the kernel '
                              '(0: all claim at once)'),
    'db-claim-slot-wait': Key('number', 1, minimum=0,
                              doc='seconds a claim waits for a turn (db-claim-slots) before it '
                                  'claims without one'),
    'db-idle-reuse': Key('number', 30, minimum=0,
                         doc='seconds a process keeps an idle database connection for its next '
                             'transaction; 0 opens one per transaction'),
    'db-reconnect-wait': Key('number', 30, minimum=0,
                             doc='seconds to keep trying a MySQL server that refuses connections '
                                 '(a restart) before giving up'),
    'lease-ttl': Key('number', 60, minimum=1,
                     doc='seconds a run\'s lease on its stage and provider lasts unless '
                         'renewed; a killed run blocks the next one for at most this long'),
    'lease-renew-fraction': Key('number', 0.25, minimum=0.01,
                                doc='a lease is renewed every this fraction of lease-ttl '
                                    '(at most 0.5 is used)'),
    'lease-wait': Key('number', 60, minimum=0,
                      doc='seconds a run waits for the lease another run of its stage and '
                          'provider holds, before it skips (exit 0, one line naming the '
                          'holder)'),
    'lease-poll': Key('number', 1, minimum=0.01,
                      doc='seconds between attempts to take a held lease'),
    'node-prefix': Key('name', 'dg', doc='prefix of every server and image name we create'),
    'node-name-format': Key('format', '{prefix}-{label}-{provider}-{id}',
                            choices=('prefix', 'label', 'provider', 'id'), needs='id',
                            doc='server name of a node'),
    'image-name-format': Key('format', '{prefix}-{label}-{provider}-{timestamp}-{id}',
                             choices=('prefix', 'label', 'provider', 'timestamp', 'id'),
                             needs='id', doc='name of a built image; {id} (its row id) keeps '
                                             'two builds of one second apart'),
    'ssh-private-key': Key('str', os.path.join('~', '.devstack-gate', 'id_rsa'),
                           doc='key used to log in to nodes; created if missing'),
    'poll-interval': Key('number', 5, minimum=0.01,
                         doc='seconds between server list calls while waiting'),
    'image-poll-fraction': Key('number', 0.05, minimum=0.001,
                               doc='an image build waiting on its template, snapshot or canary '
                                   'polls again after this fraction of the time waited so far '
                                   '(at least image-poll-min, at most poll-interval seconds)'),
    'image-poll-min': Key('number', 0.1, minimum=0.01,
                          doc='shortest pause between the polls of an image build'),
    'launch-deadline': Key('number', 480, minimum=1,
                           doc='seconds one launch run may wait; shorter than its Jenkins period'),
    'launch-workers': Key('int', 8, minimum=1, doc='parallel server creates per run'),
    'launch-check-workers': Key('int', 64, minimum=1,
                                doc='parallel SSH checks per run (each waits for its node to '
                                    'answer SSH, seconds to minutes on a real cloud)'),
    'launch-poll-interval': Key('number', 0.5, minimum=0.01,
                                doc='seconds between the server list calls of a launch run '
                                    'while its nodes boot, and between SSH attempts on a node'),
    'ssh-connect-timeout': Key('number', 10, minimum=0.1, doc='seconds per SSH connect attempt'),
    'ssh-parallel-logins': Key('int', 8, minimum=1,
                               doc='SSH logins (handshake, then ready check) a launch run has '
                                   'in flight at once; its waits for nodes\' SSH banners '
                                   'are not counted'),
    'ready-check-timeout': Key('number', 120, minimum=1, doc='seconds the ready check may run'),
    'fetch-poll': Key('number', 2, minimum=0.01,
                      doc='seconds between database polls while fetch waits'),
    'max-ready-hours': Key('number', 24, minimum=0.01,
                           doc='ready nodes older than this are replaced by fresh ones'),
    'max-used-hours': Key('number', 8, minimum=0.01,
                          doc='a node in use longer than this belongs to a job that died'),
    'leak-grace': Key('number', 900, minimum=0,
                      doc='seconds an untracked server or image of ours must be old '
                          'before the reaper deletes it'),
    'reap-workers': Key('int', 8, minimum=1,
                        doc='delete calls a reap run makes in parallel (their starts are '
                            'still spaced by the provider\'s api-rate)'),
    'keep-images': Key('int', 2, minimum=2,
                       doc='ready images kept per provider and label (current and previous)'),
    'image-build-timeout': Key('number', 7200, minimum=1,
                               doc='seconds the setup scripts on a template may take'),
    'snapshot-timeout': Key('number', 3600, minimum=1,
                            doc='seconds a snapshot may take to become active'),
    'snapshot-keep-hours': Key('number', 72, minimum=0,
                               doc='how long the reaper keeps a snapshot of a held node '
                                   '(devstack-gate snapshot) before deleting it'),
    'health-window-hours': Key('number', 24, minimum=0.01,
                               doc='provider health and the image guard judge the runs that '
                                   'started within this many hours'),
    'health-window-runs': Key('int', 100, minimum=1,
                              doc='and at most this many of the latest runs of each provider '
                                  '(or image) and label'),
    'health-min-runs': Key('int', 5, minimum=1,
                           doc='runs each side needs before a provider or an image is judged'),
    'health-min-failures': Key('int', 3, minimum=1,
                               doc='failures the worse side needs before it is judged worse'),
    'health-alpha': Key('number', 0.001, minimum=0,
                        doc='largest one-sided p-value (two-proportion z-test) at which a '
                            'provider or an image is clearly worse than the others'),
    'launch-period': Key('number', 600, minimum=1,
                         doc='seconds between launch runs (its Jenkins timer); demand sizing '
                             'looks this far ahead beyond a node\'s time to ready'),
    'demand-history-days': Key('number', 14, minimum=0.01,
                               doc='demand sizing learns the fetches\' daily and weekly profile, '
                                   'and the times to ready, from this many days'),
    'demand-recent-minutes': Key('number', 30, minimum=1,
                                 doc='demand sizing\'s short-term trend: these minutes\' fetches '
                                     'against what the profile expected'),
    'demand-trend-limit': Key('number', 3, minimum=1,
                              doc='the trend raises or lowers the profile at most this many '
                                  'times'),
    'image-guard-alpha': Key('number', 0.01, minimum=0,
                             doc='the same for the image guard: a new image against the one it '
                                 'replaced (their runs are fewer, and a demotion is undone by '
                                 'one command)'),
    'auto-quarantine': Key('bool', True,
                           doc='quarantine a provider\'s label whose infra-failure rate is '
                               'clearly worse than the other providers\''),
    'quarantine-cooldown-minutes': Key('number', 60, minimum=0,
                                       doc='after this long a quarantine is probed with one '
                                           'canary node'),
    'canary-watch': Key('number', 60, minimum=0,
                        doc='seconds a quarantined provider\'s canary node must keep '
                            'answering SSH for the quarantine to end'),
    'image-guard': Key('bool', True,
                       doc='demote a new image whose runs fail clearly more than its '
                           'predecessor\'s, and pause its builds'),
    'disabled-labels': Key('mapping', None,
                           doc='label: reason; a disabled label (a matrix cell) is neither '
                               'launched nor built, and gate runs skip it'),
    'gate': Key('mapping', None, doc='settings of devstack-vm-gate.sh'),
    'providers': Key('list'),
}

# The keys of one provider kind, beside the common ones; a new kind adds its table here
# and its driver to devstackgate.cloud.DRIVERS.
OPENSTACK_KEYS = {
    'cloud': Key('str', doc='entry of clouds.yaml holding the credentials'),
    'region': Key('str', None),
    'compute-api-version': Key('str', '2.1', doc='Nova microversion to request'),
    'ip-type': Key('str', 'any', choices=('fixed', 'floating', 'any'),
                   doc='which server address to use; any prefers floating'),
    'keypair': Key('keypair', None,
                   doc='keypair name in the cloud; default PREFIX-PROVIDER, with any "." '
                       'of the provider name made "-"'),
}
BAREMETAL_KEYS = {
    'hosts': Key('list', doc='the machines, see providers[].hosts[]; they are never created or '
                             'deleted, only reset after each use'),
    'reset-command': Key('str', 'sudo -n /usr/local/sbin/baremetal-reset.sh',
                         doc='run on a host over SSH after each use; it must return at once '
                             'and reset the host in the background (node-setup/baremetal-reset.sh '
                             'does, by LVM snapshot and kexec)'),
    'reset-timeout': Key('number', 600, minimum=1,
                         doc='seconds a host may take to come back, clean, from its reset '
                             '(or, new, to answer) before it is marked error'),
    'reset-command-timeout': Key('number', 120, minimum=1,
                                 doc='seconds the reset command may run'),
    'probe-timeout': Key('number', 5, minimum=0.1,
                         doc='seconds one SSH probe of a host coming back may take'),
    'probe-interval': Key('number', 1, minimum=0,
                          doc='least seconds between two probes of one host'),
}
HOST_KEYS = {
    'name': Key('name', None, doc='default: the address'),
    'address': Key('address', doc='reached by SSH on the provider\'s ssh-port'),
    'label': Key('name', doc='the label its nodes are'),
    'username': Key('name', 'jenkins', doc='SSH user; the pool key must be authorized for it'),
    'host-key': Key('str', None,
                    doc='its SSH host key ("ssh-ed25519 AAAA...") or the key\'s fingerprint '
                        '("SHA256:..."); unset: the key first seen is recorded and pinned'),
    'reset-command': Key('str', None, doc='default: the provider\'s reset-command'),
    'reset-timeout': Key('number', None, minimum=1, doc='default: the provider\'s reset-timeout'),
}
KIND_KEYS = {'openstack': OPENSTACK_KEYS, 'baremetal': BAREMETAL_KEYS}

PROVIDER_KEYS = {
    'name': Key('name'),
    'kind': Key('str', 'openstack', choices=tuple(KIND_KEYS),
                doc='the driver; its own keys are listed below'),
    'max-servers': Key('int', 10, minimum=0),
    'boot-timeout': Key('number', 600, minimum=1),
    'api-rate': Key('number', 0.1, minimum=0,
                    doc='seconds between the starts of API calls; while the cloud answers '
                        'that it is over its rate limit, up to api-rate-max'),
    'api-rate-max': Key('number', 5.0, minimum=0,
                        doc='the longest spacing of API calls the limiter backs off to while '
                            'the cloud answers 429 or 413 (each such answer doubles it; each '
                            'success takes a tenth of the way back to api-rate)'),
    'api-timeout': Key('number', 120, minimum=1,
                       doc='seconds one API call may take, retries included'),
    'api-retries': Key('int', 6, minimum=1, doc='attempts of one API call on 5xx/429/connection'),
    'api-backoff': Key('number', 1.0, minimum=0, doc='first retry delay; doubles each attempt'),
    'ssh-port': Key('int', 22, minimum=1),
    'giftable': Key('bool', False,
                    doc='developers may be given SSH access to its held nodes '
                        '(devstack-gate give)'),
    'images': Key('list'),
}

IMAGE_KEYS = {
    'name': Key('name', doc='the label gate jobs ask for; with axes, a format such as '
                            '{release}-{dist} naming every axis'),
    'axes': Key('mapping', None,
                doc='axis: [values]; the entry stands for one label per combination '
                    '(a matrix cell), {axis} in its strings replaced by the value'),
    'base-image': Key('str', doc='image name or regex; newest match wins'),
    'min-ram': Key('int', 2048, minimum=0, doc='smallest flavor with at least this RAM (MB)'),
    'min-ready': Key('int', 1, minimum=0),
    'setup': Key('strlist', (), doc='scripts run on the template before the snapshot'),
    'username': Key('name', 'jenkins'),
    'paused': Key('bool', False, doc='stop building new images for this label'),
    'ready-check': Key('str', DEFAULT_READY_CHECK,
                       doc='command a node must pass over SSH before it joins the pool'),
    'validate': Key('str', None,
                    doc='extra command a canary node of a new image must pass'),
    'pool-sizing': Key('str', 'static', choices=('static', 'demand'),
                       doc='static keeps min-ready nodes ready; demand keeps what the coming '
                           'fetches need (devstackgate.sizing), min-ready the floor'),
    'max-ready': Key('int', None, minimum=0,
                     doc='demand sizing keeps at most this many ready (unset: max-servers '
                         'bounds it)'),
    'service-level': Key('number', 0.99, minimum=0.5,
                         doc='demand sizing: the chance that the fetches during a node\'s '
                             'time to ready all find a ready node'),
}

# A bare-metal label: its nodes are its hosts, reset to their own pristine root, so
# nothing is built (no base image, flavor, setup or canary).
BAREMETAL_IMAGE_KEYS = {
    'name': Key('name', doc='a label of its hosts'),
    'min-ready': Key('int', None, minimum=0, doc='default: every host of the label'),
    'ready-check': IMAGE_KEYS['ready-check'],
    'pool-sizing': IMAGE_KEYS['pool-sizing'],
    'max-ready': IMAGE_KEYS['max-ready'],
    'service-level': IMAGE_KEYS['service-level'],
}
KIND_IMAGE_KEYS = {'openstack': IMAGE_KEYS, 'baremetal': BAREMETAL_IMAGE_KEYS}

GATE_KEYS = {
    'labels': Key('strlist', ('precise',),
                  doc='the labels (cells) a gate run tests, each on its own node; it passes '
                      'only if every enabled one passes'),
    'git-base': Key('source', 'https://opendev.org',
                    doc='URL or local directory the projects are cloned from'),
    'projects': Key('projects', ('openstack/devstack',),
                    doc='repositories prepared in the workspace, in order'),
    'branch': Key('branch', 'master', doc='target branch when the change names none'),
    'workspace': Key('str', 'workspace', doc='directory (relative to the job) holding clones'),
    'test-command': Key('str', 'cd devstack && ./stack.sh && ./exercise.sh',
                        doc='run on the node, from the copied workspace'),
    'test-timeout': Key('number', 5400, minimum=1, doc='seconds the test command may run'),
    'fetch-wait': Key('number', 600, minimum=0, doc='seconds to wait for a ready node'),
    'git-timeout': Key('number', 300, minimum=1, doc='seconds one git network step may take'),
    'git-retries': Key('int', 3, minimum=1, doc='attempts of one git network step'),
    'rsync-timeout': Key('number', 1800, minimum=1, doc='seconds one copy may take'),
    'attempts': Key('int', 3, minimum=1,
                    doc='nodes a gate run may use: when its node fails (no SSH, a changed host '
                        'key, a failed copy, the node stops answering) it takes another, '
                        'preferring another provider; a test failure is never retried'),
    'infra-hold-minutes': Key('number', 60, minimum=0,
                              doc='how long a node abandoned for an infra failure is held '
                                  '(reason "infra") for diagnosis before the reaper takes it'),
    'alive-interval': Key('number', 10, minimum=1,
                          doc='seconds between SSH keep-alives to the node during a run'),
    'alive-count': Key('int', 3, minimum=1,
                       doc='unanswered keep-alives after which the node has stopped answering '
                           '(noticed within alive-interval x alive-count seconds)'),
}


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    name: str
    axes: dict          # the matrix cell this label is: {axis: value}, or None
    base_image: str
    min_ram: int
    min_ready: int
    setup: tuple
    username: str
    paused: bool
    ready_check: str
    validate: str
    pool_sizing: str
    max_ready: int
    service_level: float


@dataclasses.dataclass(frozen=True)
class OpenStackSettings:
    cloud: str
    region: str
    compute_api_version: str
    ip_type: str
    keypair: str


@dataclasses.dataclass(frozen=True)
class HostConfig:
    name: str
    address: str
    label: str
    username: str
    host_key: str           # a key line, a "SHA256:..." fingerprint, or None
    reset_command: str      # the provider's unless the host has its own
    reset_timeout: float


@dataclasses.dataclass(frozen=True)
class BareMetalSettings:
    hosts: tuple            # HostConfig
    reset_command: str
    reset_timeout: float
    reset_command_timeout: float
    probe_timeout: float
    probe_interval: float
    database: str           # the pool's database (where the hosts' uses are kept)
    ssh_private_key: str    # the pool's key, which logs in to reset and probe

    def host(self, name):
        return next((h for h in self.hosts if h.name == name), None)


KIND_SETTINGS = {'openstack': OpenStackSettings, 'baremetal': BareMetalSettings}
#: Whether a kind's nodes boot from images we build (bare metal: from the host's own
#: pristine root, so update-image has nothing to do and launch needs no image row).
KIND_BUILDS_IMAGES = {'openstack': True, 'baremetal': False}


@dataclasses.dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: str
    max_servers: int
    boot_timeout: float
    api_rate: float
    api_rate_max: float
    api_timeout: float
    api_retries: int
    api_backoff: float
    ssh_port: int
    giftable: bool
    images: tuple
    settings: object        # the kind's own settings (OpenStackSettings, ...)

    @property
    def builds_images(self):
        return KIND_BUILDS_IMAGES[self.kind]

    def image(self, label):
        for image in self.images:
            if image.name == label:
                return image
        return None


@dataclasses.dataclass(frozen=True)
class GateConfig:
    labels: tuple
    git_base: str
    projects: tuple
    branch: str
    workspace: str
    test_command: str
    test_timeout: float
    fetch_wait: float
    git_timeout: float
    git_retries: int
    rsync_timeout: float
    attempts: int
    infra_hold_minutes: float
    alive_interval: float
    alive_count: int


@dataclasses.dataclass(frozen=True)
class Config:
    path: str
    database: str
    hold_hours: float
    db_lock_timeout: float
    db_retries: int
    db_writer_queue: int
    db_claim_slots: int
    db_claim_slot_wait: float
    db_idle_reuse: float
    db_reconnect_wait: float
    lease_ttl: float
    lease_renew_fraction: float
    lease_wait: float
    lease_poll: float
    node_prefix: str
    node_name_format: str
    image_name_format: str
    ssh_private_key: str
    poll_interval: float
    image_poll_fraction: float
    image_poll_min: float
    launch_deadline: float
    launch_workers: int
    launch_check_workers: int
    launch_poll_interval: float
    ssh_connect_timeout: float
    ssh_parallel_logins: int
    ready_check_timeout: float
    fetch_poll: float
    max_ready_hours: float
    max_used_hours: float
    leak_grace: float
    reap_workers: int
    keep_images: int
    image_build_timeout: float
    snapshot_timeout: float
    snapshot_keep_hours: float
    health_window_hours: float
    health_window_runs: int
    health_min_runs: int
    health_min_failures: int
    health_alpha: float
    image_guard_alpha: float
    launch_period: float
    demand_history_days: float
    demand_recent_minutes: float
    demand_trend_limit: float
    auto_quarantine: bool
    quarantine_cooldown_minutes: float
    canary_watch: float
    image_guard: bool
    disabled_labels: dict       # label -> why it is switched off, from the configuration
    gate: 'GateConfig'
    providers: tuple

    def provider(self, name):
        for provider in self.providers:
            if provider.name == name:
                return provider
        raise ConfigError([
            '%s: providers: no provider named %r; known providers: %s'
            % (self.path, name, ', '.join(p.name for p in self.providers) or 'none')])

    def labels(self):
        """Every label any provider offers, sorted."""
        return sorted({i.name for p in self.providers for i in p.images})


def load(path=None, check_clouds=True, environ=None, cache=False):
    """Load and validate the configuration; raise ConfigError with every problem.

    check_clouds=False skips the clouds.yaml look-up, for scripts that never
    talk to a cloud (fetch runs on gate slaves that hold no credentials).
    A file that validates is recorded in fetch's cache (config_cache) when its
    directory exists; cache=True (fetch) creates the directory.
    """
    environ = os.environ if environ is None else environ
    path = find_config_path(path, environ)
    try:
        with open(path, 'rb') as f:     # decoded whole, so an error gives the file offset
            st = os.fstat(f.fileno())
            raw = f.read()
        text = raw.decode('utf-8')
    except OSError as e:
        raise ConfigError(['%s: cannot read: %s' % (path, e.strerror or e)])
    except UnicodeDecodeError as e:
        raise ConfigError([_not_utf8(path, e, 'a YAML file')])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = ' (line %d, column %d)' % (mark.line + 1, mark.column + 1) if mark else ''
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        raise ConfigError(['%s: invalid YAML%s: %s' % (path, where, problem)])
    config = validate(data, path, check_clouds=check_clouds, environ=environ)
    # What fetch needs of a file that validated, for its fast path (config_cache).
    config_cache.store(path, raw, st, config, create=cache)
    return config


def validate(data, path, check_clouds=True, environ=None):
    errors = []
    if not isinstance(data, dict):
        raise ConfigError(['%s: expected a mapping of settings at the top level, got %s'
                           % (path, _typename(data))])
    top = _section(data, GLOBAL_KEYS, '', path, errors)
    if 'database' in top:
        _check_database(top['database'], path, errors)
    gate = _section(top['gate'] if isinstance(top.get('gate'), dict) else {}, GATE_KEYS,
                    'gate.', path, errors)
    providers = []
    seen = set()
    for i, pdata in enumerate(top.get('providers') or ()):
        where = 'providers[%d]' % i
        if not isinstance(pdata, dict):
            errors.append('%s: %s: expected a mapping, got %s' % (path, where, _typename(pdata)))
            continue
        # An unknown kind is reported once, not again as every key of a known kind.
        kind = pdata.get('kind', PROVIDER_KEYS['kind'].default)
        kind_keys = KIND_KEYS.get(kind) or {
            k: dataclasses.replace(v, default=None)
            for table in KIND_KEYS.values() for k, v in table.items()}
        if kind == 'baremetal' and 'images' not in pdata:
            pdata = dict(pdata, images=[{'name': label} for label in _host_labels(pdata)])
        p = _section(pdata, dict(PROVIDER_KEYS, **kind_keys), where + '.', path, errors)
        if p.get('name') in seen:
            errors.append('%s: %s.name: duplicate provider name %r' % (path, where, p['name']))
        seen.add(p.get('name'))
        if 'images' in p and not p['images']:
            errors.append('%s: %s.images: a provider needs at least one image' % (path, where))
        images = []
        seen_images = set()
        entries = []
        for j, idata in enumerate(p.get('images') or ()):
            iwhere = '%s.images[%d]' % (where, j)
            if not isinstance(idata, dict):
                errors.append('%s: %s: expected a mapping, got %s'
                              % (path, iwhere, _typename(idata)))
                continue
            entries.extend(expand_axes(idata, iwhere, path, errors))
        for iwhere, idata in entries:
            im = _section(idata, KIND_IMAGE_KEYS.get(kind, IMAGE_KEYS), iwhere + '.', path,
                          errors)
            if im.get('name') in seen_images:
                errors.append('%s: %s.name: duplicate image name %r in provider %r'
                              % (path, iwhere, im['name'], p.get('name')))
            seen_images.add(im.get('name'))
            if im.get('service-level') is not None and not 0.5 <= im['service-level'] < 1:
                errors.append('%s: %s.service-level: expected a fraction >= 0.5 and below 1 '
                              '(0.99: 99 %% of the time), got %r'
                              % (path, iwhere, im['service-level']))
            if 'base-image' in im:
                try:
                    re.compile(im['base-image'])
                except re.error as e:
                    errors.append('%s: %s.base-image: not a valid name or regex: %s'
                                  % (path, iwhere, e))
            images.append(im)
        p['images'] = images
        if kind == 'baremetal':
            _check_hosts(p, pdata, where, path, errors)
        providers.append(p)
    if 'providers' in top and not top['providers']:
        errors.append('%s: providers: expected at least one provider' % path)
    known = {im.get('name') for p in providers for im in p['images']}
    for label, why in (top.get('disabled-labels') or {}).items():
        if label not in known:
            errors.append('%s: disabled-labels.%s: no provider offers this label; labels: %s'
                          % (path, _key(label), ', '.join(sorted(n for n in known if n)) or 'none'))
        elif not isinstance(why, str) or not why.strip():
            errors.append('%s: disabled-labels.%s: expected the reason, a string' % (path, label))
    if check_clouds and providers:
        _check_clouds(providers, path, errors, environ)
    if errors:
        raise ConfigError(errors)
    return _build(Config, top, GLOBAL_KEYS, path=path, gate=_build(GateConfig, gate, GATE_KEYS),
                  disabled_labels=dict(top.get('disabled-labels') or {}),
                  ssh_private_key=os.path.expanduser(top['ssh-private-key']),
                  providers=tuple(_build_provider(p, top) for p in providers))


def _build_provider(p, top):
    kind = p['kind']
    values = dict(p)
    extra = {}
    images = p['images']
    if kind == 'openstack':
        # Nova refuses a '.' in a keypair name (provider rax.dfw: keypair dg-rax-dfw).
        values['keypair'] = p['keypair'] or re.sub(
            r'[^A-Za-z0-9_-]', '-', '%s-%s' % (top['node-prefix'], p['name']))
    elif kind == 'baremetal':
        values['hosts'] = tuple(_build(HostConfig, h, HOST_KEYS) for h in p['hosts'])
        extra = dict(database=top['database'],
                     ssh_private_key=os.path.expanduser(top['ssh-private-key']))
        images = [dict(_BAREMETAL_IMAGE_DEFAULTS, **im) for im in images]
    return _build(ProviderConfig, p, PROVIDER_KEYS,
                  settings=_build(KIND_SETTINGS[kind], values, KIND_KEYS[kind], **extra),
                  images=tuple(_build(ImageConfig, im, IMAGE_KEYS) for im in images))


# What a bare-metal label's ImageConfig holds for the keys it has no use for.
_BAREMETAL_IMAGE_DEFAULTS = {'axes': None, 'base-image': None, 'min-ram': 0, 'setup': (),
                             'paused': False, 'validate': None}
HOST_KEY_TYPES = ('ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384',
                  'ecdsa-sha2-nistp521')
FINGERPRINT_RE = re.compile(r'SHA256:[A-Za-z0-9+/]{43}=?')


def _host_labels(pdata):
    """The labels of a bare-metal provider's hosts, in the order first listed."""
    hosts = pdata.get('hosts')
    labels = [h.get('label') for h in hosts if isinstance(h, dict)] if isinstance(
        hosts, list) else []
    return list(dict.fromkeys(label for label in labels if isinstance(label, str)))


def _check_hosts(p, pdata, where, path, errors):
    """A bare-metal provider's hosts, and what follows from them: each label's
    min-ready (default: all its hosts) and SSH user, and max-servers (default:
    the number of hosts)."""
    hosts, names, addresses = [], {}, {}
    if 'hosts' in p and not p['hosts']:
        errors.append('%s: %s.hosts: a bare-metal provider needs at least one host' % (path, where))
    for j, hdata in enumerate(p.get('hosts') or ()):
        hwhere = '%s.hosts[%d]' % (where, j)
        if not isinstance(hdata, dict):
            errors.append('%s: %s: expected a mapping, got %s' % (path, hwhere, _typename(hdata)))
            continue
        h = _section(hdata, HOST_KEYS, hwhere + '.', path, errors)
        if 'address' not in h or 'label' not in h:
            continue
        h['name'] = h['name'] or h['address']
        if not NAME_RE.match(h['name']):
            errors.append('%s: %s.name: %r is not a name; give the host a name'
                          % (path, hwhere, h['name']))
        # MariaDB compares names case-blind: two hosts must differ in more than case.
        for seen, key, what in ((names, h['name'].lower(), 'name'),
                                (addresses, h['address'].lower(), 'address')):
            if key in seen:
                errors.append('%s: %s.%s: %r is also %s.%s' % (path, hwhere, what, h[what],
                                                               seen[key], what))
            seen[key] = hwhere
        key = h['host-key']
        if key is not None and not FINGERPRINT_RE.fullmatch(key) and not _is_key_line(key):
            errors.append('%s: %s.host-key: expected "TYPE BASE64" (%s) or "SHA256:..." '
                          '(ssh-keygen -lf), got %r' % (path, hwhere, ', '.join(HOST_KEY_TYPES),
                                                         key[:40]))
        h['reset-command'] = h['reset-command'] or p.get('reset-command')
        h['reset-timeout'] = h['reset-timeout'] or p.get('reset-timeout')
        hosts.append((hwhere, h))
    p['hosts'] = [h for _, h in hosts]
    by_label = {}
    for hwhere, h in hosts:
        by_label.setdefault(h['label'], []).append((hwhere, h))
    labels = {im.get('name') for im in p['images']}
    for hwhere, h in hosts:
        if h['label'] not in labels:
            errors.append('%s: %s.label: %r is not one of the provider\'s images: %s'
                          % (path, hwhere, h['label'], ', '.join(sorted(map(str, labels)))))
    for j, im in enumerate(p['images']):
        members = by_label.get(im.get('name'), [])
        if not members:
            if hosts:
                errors.append('%s: %s.images[%d].name: no host has label %r'
                              % (path, where, j, im.get('name')))
            continue
        users = {h['username'] for _, h in members}
        if len(users) > 1:
            errors.append('%s: %s: the hosts of label %r log in as different users (%s); a '
                          'label has one' % (path, where, im['name'], ', '.join(sorted(users))))
        im['username'] = members[0][1]['username']
        if im.get('min-ready') is None:
            im['min-ready'] = len(members)
        elif im['min-ready'] > len(members):
            errors.append('%s: %s.images[%d].min-ready: %d, but only %d host(s) have label %r'
                          % (path, where, j, im['min-ready'], len(members), im['name']))
    if 'max-servers' not in pdata:
        p['max-servers'] = len(hosts)
    elif p.get('max-servers', 0) > len(hosts):
        errors.append('%s: %s.max-servers: %d, but the provider lists %d host(s)'
                      % (path, where, p['max-servers'], len(hosts)))


def _is_key_line(text):
    kind, _, body = text.partition(' ')
    body = body.split(' ')[0]
    if kind not in HOST_KEY_TYPES or not body:
        return False
    try:
        base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        return False
    return True


def expand_axes(data, where, path, errors):
    """[(where, image entry)]: the entry itself, or one entry per cell of its axes.

    Only ``{axis}`` for a declared axis is replaced, so a shell command's own
    braces (``${HOME}``) stay as they are.
    """
    axes = data.get('axes')
    if axes is None:
        return [(where, data)]
    if (not isinstance(axes, dict) or not axes or not all(
            isinstance(k, str) and NAME_RE.match(k) and isinstance(v, list) and v
            and all(isinstance(x, str) and NAME_RE.match(x) for x in v)
            for k, v in axes.items())):
        errors.append('%s: %s.axes: expected a mapping of axis names to non-empty lists of '
                      'names, got %s' % (path, where, _typename(axes)))
        return []
    name = data.get('name')
    missing = [a for a in axes if '{%s}' % a not in str(name)]
    if missing:
        errors.append('%s: %s.name: %r must name every axis so each cell has its own label; '
                      'missing %s' % (path, where, name, ', '.join('{%s}' % a for a in missing)))
        return []
    pattern = re.compile(r'\{(%s)\}' % '|'.join(re.escape(a) for a in axes))
    cells = [{}]
    for axis, values in axes.items():
        cells = [dict(cell, **{axis: v}) for cell in cells for v in values]

    def fill(value, cell):
        if isinstance(value, str):
            return pattern.sub(lambda m: cell[m.group(1)], value)
        if isinstance(value, list):
            return [fill(v, cell) for v in value]
        return value
    return [('%s[%s]' % (where, ','.join('%s=%s' % kv for kv in cell.items())),
             dict({k: fill(v, cell) for k, v in data.items() if k != 'axes'}, axes=cell))
            for cell in cells]


def _build(cls, values, table, **override):
    kwargs = {k.replace('-', '_'): values[k] for k in table}
    kwargs.update(override)
    return cls(**kwargs)


def _key(key):
    """A key from the file as it goes into a message: one line, whatever it holds."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key else repr(key)


def _typename(value):
    if value is None:
        return 'nothing'
    return {dict: 'a mapping', list: 'a list', str: 'a string', bool: 'a boolean',
            int: 'a number', float: 'a number'}.get(type(value), type(value).__name__)


def _section(data, table, prefix, path, errors):
    """Check one mapping against its table; return values with defaults filled in."""
    out = {}
    for key in data:
        if key not in table:
            errors.append('%s: %s%s: unknown key; valid keys are: %s'
                          % (path, prefix, _key(key), ', '.join(sorted(table))))
    for key, spec in table.items():
        if key not in data:
            if spec.default is REQUIRED:
                errors.append('%s: %s%s: missing; expected %s'
                              % (path, prefix, key, spec.describe()))
            else:
                out[key] = spec.default
            continue
        value = data[key]
        problem = _check(value, spec)
        if problem:
            errors.append('%s: %s%s: expected %s, got %s'
                          % (path, prefix, key, spec.describe(), problem))
        else:
            out[key] = tuple(value) if spec.kind in ('strlist', 'projects') else value
    return out


def _check(value, spec):
    """Return None if value fits spec, else a short description of what it is."""
    kind = spec.kind
    shown = '%r' % (value,) if not isinstance(value, (dict, list)) else _typename(value)
    if kind in ('str', 'name'):
        if not isinstance(value, str) or not value:
            return shown if value != '' else 'an empty string'
        if kind == 'name' and not NAME_RE.match(value):
            return shown
    elif kind in ('int', 'number'):
        ok = (isinstance(value, int) if kind == 'int' else isinstance(value, (int, float)))
        if isinstance(value, bool) or not ok:
            return shown
        if spec.minimum is not None and value < spec.minimum:
            return shown
    elif kind == 'bool':
        if not isinstance(value, bool):
            return shown
    elif kind == 'list':
        if not isinstance(value, list):
            return shown
    elif kind == 'mapping':
        if not isinstance(value, dict):
            return shown
    elif kind == 'format':
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except (ValueError, TypeError):
            return shown
        if spec.needs not in fields or not fields <= set(spec.choices):
            return shown
        try:        # the names it makes reach Nova, Glance and the gate's shell as they are
            sample = value.format(**FORMAT_SAMPLE)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return shown
        if not NAME_RE.match(sample):
            return shown
        return None
    elif kind == 'branch':
        if not isinstance(value, str) or not _is_branch(value):
            return shown if value != '' else 'an empty string'
    elif kind == 'projects':
        if not isinstance(value, list) or not all(
                isinstance(v, str) and PROJECT_RE.fullmatch(v) for v in value):
            return shown if not isinstance(value, list) else repr(value)
    elif kind == 'source':
        if (not isinstance(value, str) or not value or value.startswith('-')
                or any(ord(c) < 32 or ord(c) == 127 for c in value)):
            return shown if value != '' else 'an empty string'
    elif kind == 'address':
        if not isinstance(value, str) or not ADDRESS_RE.fullmatch(value):
            return shown if value != '' else 'an empty string'
    elif kind == 'keypair':
        if not isinstance(value, str) or not KEYPAIR_RE.fullmatch(value):
            return shown if value != '' else 'an empty string'
    elif kind == 'strlist':
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return shown
    if spec.choices and value not in spec.choices:
        return shown
    return None


def clouds_yaml_path(environ=None):
    environ = os.environ if environ is None else environ
    if environ.get(CLOUDS_YAML_ENV):
        return environ[CLOUDS_YAML_ENV]
    return config_cache.first_existing(CLOUDS_YAML_PATHS)


def cloud_names(environ=None):
    """The cloud names in clouds.yaml, and the file they came from.

    Only the names are read here; the credentials are read by the cloud adapter
    when it authenticates, and are never copied into our objects or logs.
    """
    cpath = clouds_yaml_path(environ)
    if cpath is None:
        return None, set()
    try:
        with open(cpath, 'rb') as f:
            data = yaml.safe_load(f.read().decode('utf-8')) or {}
    except UnicodeDecodeError as e:
        raise ConfigError([_not_utf8(cpath, e, 'a clouds.yaml')])
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(['%s: cannot read clouds.yaml: %s'
                           % (cpath, getattr(e, 'strerror', None) or str(e).splitlines()[0])])
    clouds = data.get('clouds') if isinstance(data, dict) else None
    if not isinstance(clouds, dict):
        raise ConfigError(['%s: expected a "clouds:" mapping' % cpath])
    return cpath, set(clouds)


def _not_utf8(path, e, what):
    return '%s: not valid UTF-8 (byte 0x%02x at offset %d): expected %s in UTF-8' % (
        path, e.object[e.start], e.start, what)


def _is_branch(value):
    """A branch name git takes as one (git check-ref-format --branch), never an option."""
    return (bool(BRANCH_RE.fullmatch(value)) and '..' not in value
            and not value.endswith(('/', '.')) and all(
                part and not part.startswith('.') and not part.endswith('.lock')
                for part in value.split('/')))


def _check_database(url, path, errors):
    """The database URL, by vmdatabase.parse_url's own rules, before anything is opened."""
    import vmdatabase       # here: vmdatabase is the one owner of the URL rules
    try:
        vmdatabase.parse_url(url)
    except DatabaseError as e:
        errors.append('%s: database: %s' % (path, e))


def _check_clouds(providers, path, errors, environ):
    if not any(p.get('kind') == 'openstack' for p in providers):
        return                  # bare metal only: no clouds.yaml is needed
    cpath, names = cloud_names(environ)
    for i, p in enumerate(providers):
        cloud = p.get('cloud') if p.get('kind') == 'openstack' else None
        if not cloud or cloud in names:
            continue
        if cpath is None:
            errors.append('%s: providers[%d].cloud: %r not found: no clouds.yaml '
                          '(set $%s or create ~/.config/openstack/clouds.yaml)'
                          % (path, i, cloud, CLOUDS_YAML_ENV))
        else:
            errors.append('%s: providers[%d].cloud: %r is not in %s; clouds there: %s'
                          % (path, i, cloud, cpath, ', '.join(sorted(names)) or 'none'))


def reference():
    """The configuration reference as reStructuredText, generated from the tables.

    README.rst carries this text verbatim (a test keeps them the same):
    python3 -c 'from devstackgate import config; print(config.reference())'
    """
    out = []
    for title, prefix, table in (('Top level', '', GLOBAL_KEYS),
                                 ('providers[]', 'providers[].', PROVIDER_KEYS),
                                 *(('providers[] of kind %s' % kind, 'providers[].', table)
                                   for kind, table in KIND_KEYS.items()),
                                 ('providers[].images[]', 'providers[].images[].', IMAGE_KEYS),
                                 ('providers[].images[] of kind baremetal', 'providers[].images[].',
                                  BAREMETAL_IMAGE_KEYS),
                                 ('providers[].hosts[] (kind baremetal)', 'providers[].hosts[].',
                                  HOST_KEYS),
                                 ('gate', 'gate.', GATE_KEYS)):
        out.append('``%s``' % title)
        out.append('')
        for key, spec in table.items():
            if spec.default is REQUIRED:
                default = 'required'
            elif spec.default is None:
                default = 'unset'
            elif isinstance(spec.default, (tuple, list)):
                default = '[%s]' % ', '.join(spec.default)
            elif isinstance(spec.default, bool):
                default = 'true' if spec.default else 'false'
            else:
                default = str(spec.default)
            out.append('- ``%s%s`` (%s; default ``%s``)%s' % (
                prefix, key, spec.describe(), default, ': ' + spec.doc if spec.doc else ''))
        out.append('')
    return '\n'.join(out).rstrip() + '\n'

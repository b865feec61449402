"""The Jenkins jobs, generated from the configuration the scripts read.

``jobs/devstack-gate.yaml`` holds the static jenkins-job-builder templates of
the four jobs; ``jobs/projects.yaml`` instantiates them with the values this
module computes from a validated :class:`~devstackgate.config.Config`: the
provider and label axes, the combination filter of the image matrix, the
timers, the build timeouts and the environment.  Providers and labels thus
come from one place, and adding a provider is one entry in the configuration
followed by ``devstack-vm-jobs.py --config PATH --output jobs/projects.yaml``.

Every timeout is a backstop that fits inside its job's period (so a stuck run
never delays the next one by more than the period) and is long enough that
the scripts' own limits, read from the same configuration, fire first.  A
configuration whose limits do not fit is refused, naming the keys.
"""

import dataclasses
import math
import os
import re
import shlex

import yaml

from devstackgate.errors import ConfigError, UsageError

DEFAULT_INSTALL_DIR = '/opt/devstack-gate'
DEFAULT_SLAVE_CONFIG = '/etc/devstack-gate/devstack-gate.yaml'
DEFAULT_PYTHON = 'python3'
DEFAULT_NODE = 'devstack-gate'
DEFAULT_APPROVAL_CATEGORY = 'Workflow'

IMAGE_JOB = 'devstack-update-vm-image'
LAUNCH_JOB = 'devstack-launch-vms'
REAP_JOB = 'devstack-reap-vms'
GATE_JOB = 'gate-integration-tests-devstack-vm'
JOB_NAMES = (IMAGE_JOB, LAUNCH_JOB, REAP_JOB, GATE_JOB)

#: Jenkins timer specs ("H" spreads the minute by job name) and the period each
#: one repeats with, in minutes: a job's timeout must be shorter than its period.
TIMERS = {
    IMAGE_JOB: ('H 2 * * *', 24 * 60),      # nightly, at 02:xx
    LAUNCH_JOB: ('H/10 * * * *', 10),       # every 10 minutes
    REAP_JOB: ('H * * * *', 60),            # hourly
}

#: Seconds a launch run needs after its launch-deadline: the closing summary,
#: deleting the boots that failed, the database.
LAUNCH_MARGIN = 60
#: Seconds an image cell needs beyond the build's own limits: updating the
#: devstack checkout (each git step has its own timeout and retries), finding
#: the base image and flavor, deleting the template, retention.
IMAGE_MARGIN = 30 * 60
#: The reaper's timeout, in minutes: half its period.  A reap that is cut off
#: is safe (deletion is two-phase) and the next run finishes the work.
REAP_TIMEOUT = 30
#: Seconds a gate run needs beyond its own limits: the SSH host-key check
#: (3 attempts of 60 s), the local safety margin around the test command,
#: writing local.conf, recording the result.
GATE_MARGIN = 10 * 60

#: The environment variables the builders' scripts read (EnvInject, per build).
#: Their values are written as Java properties, which EnvInject also expands
#: ($VAR) and unescapes (\): such characters are refused, not mangled.
_PROPERTY_VALUE_RE = re.compile(r'^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$')
_LABEL_RE = re.compile(r'^[A-Za-z0-9_.-]+$')
_HOST_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9.:-]*$')


@dataclasses.dataclass(frozen=True)
class Options:
    """What the generator needs beyond the configuration: where things are on the slaves."""
    install_dir: str = DEFAULT_INSTALL_DIR      # the devstack-gate checkout
    slave_config: str = DEFAULT_SLAVE_CONFIG    # this configuration, as the slaves see it
    python: str = DEFAULT_PYTHON                # a Python with devstack-gate's dependencies
    statsd_host: str = None
    node: str = DEFAULT_NODE                    # label of the slaves holding clouds.yaml
    gate_node: str = DEFAULT_NODE               # label of the slaves running gate jobs
    approval_category: str = DEFAULT_APPROVAL_CATEGORY

    def check(self):
        """Raise UsageError naming the first bad option."""
        for flag, value in (('--install-dir', self.install_dir),
                            ('--slave-config', self.slave_config)):
            _check_property(flag, value)
            if not value.startswith('/'):
                raise UsageError('%s: expected an absolute path on the Jenkins slaves, got %r'
                                 % (flag, value))
        _check_property('--python', self.python)
        if self.statsd_host is not None and not _HOST_RE.match(self.statsd_host):
            raise UsageError('--statsd-host: expected a host name or address, got %r'
                             % self.statsd_host)
        for flag, value in (('--node', self.node), ('--gate-node', self.gate_node),
                            ('--approval-category', self.approval_category)):
            if not _LABEL_RE.match(value):
                raise UsageError('%s: expected a name of letters, digits, ".", "_" or "-", got %r'
                                 % (flag, value))


def _check_property(flag, value):
    if not _PROPERTY_VALUE_RE.match(value) or '$' in value or '\\' in value:
        raise UsageError('%s: expected printable ASCII without "$", "\\" or surrounding '
                         'spaces (it becomes an EnvInject property), got %r' % (flag, value))


def offered_pairs(config):
    """The (provider, label) pairs whose images are built, in configuration order
    (a bare-metal provider's hosts reset to their own pristine root: no cell)."""
    return [(p.name, i.name) for p in config.providers if p.builds_images for i in p.images]


def combination_filter(config):
    """The image matrix's filter: a Groovy boolean admitting exactly the offered pairs
    (``false`` when no provider builds images).

    Names are validated as letters, digits, ".", "_" and "-", so they need no
    escaping inside a Groovy string.  Paused labels are kept: their cell logs
    "paused; not building", and unpausing needs no new jobs.
    """
    return ' || '.join('(provider == "%s" && label == "%s")' % pair
                       for pair in offered_pairs(config)) or 'false'



def _minutes(seconds):
    return int(math.ceil(seconds / 60.0))


def timeouts(config):
    """Build timeouts in minutes, per job; ConfigError when one does not fit its period.

    - launch: launch-deadline + LAUNCH_MARGIN, under the 10-minute period;
    - reap: REAP_TIMEOUT;
    - image (per cell, one label of one provider): template boot (the largest
      boot-timeout) + image-build-timeout + snapshot-timeout + the canary's
      launch-deadline + IMAGE_MARGIN, under a day;
    - gate: the sum of the run's own sequential limits: each git step of the
      workspace (gate.projects and the change, git-timeout x git-retries
      each), fetch-wait, the copy to the node and the copy of the logs back
      (rsync-timeout each), test-timeout, and GATE_MARGIN; it must stay below
      max-used-hours, after which the reaper deletes a node in use.
    """
    gate = config.gate
    path = config.path
    out = {
        LAUNCH_JOB: _minutes(config.launch_deadline + LAUNCH_MARGIN),
        REAP_JOB: REAP_TIMEOUT,
        IMAGE_JOB: _minutes(max(p.boot_timeout for p in config.providers)
                            + config.image_build_timeout + config.snapshot_timeout
                            + config.launch_deadline + IMAGE_MARGIN),
        GATE_JOB: _minutes((len(gate.projects) + 1) * gate.git_retries * gate.git_timeout
                           + gate.fetch_wait + 2 * gate.rsync_timeout + gate.test_timeout
                           + GATE_MARGIN),
    }
    problems = []
    period = TIMERS[LAUNCH_JOB][1]
    if out[LAUNCH_JOB] >= period:
        problems.append('%s: launch-deadline: %g s plus a %d s margin makes a %d-minute timeout '
                        'for %s, which does not fit its %d-minute period; at most %d s fits'
                        % (path, config.launch_deadline, LAUNCH_MARGIN, out[LAUNCH_JOB],
                           LAUNCH_JOB, period, (period - 1) * 60 - LAUNCH_MARGIN))
    period = TIMERS[IMAGE_JOB][1]
    if out[IMAGE_JOB] >= period:
        problems.append('%s: image-build-timeout, snapshot-timeout, providers[].boot-timeout, '
                        'launch-deadline: together with a %d s margin they make a %d-minute '
                        'timeout for %s, which does not fit its %d-minute period'
                        % (path, IMAGE_MARGIN, out[IMAGE_JOB], IMAGE_JOB, period))
    if out[GATE_JOB] >= config.max_used_hours * 60:
        problems.append('%s: max-used-hours: %g h is shorter than the %d-minute timeout of %s '
                        '(gate.test-timeout, gate.fetch-wait, gate.rsync-timeout, '
                        'gate.git-timeout x gate.git-retries per project, and a %d s margin); '
                        'the reaper would delete nodes under running gate jobs'
                        % (path, config.max_used_hours, out[GATE_JOB], GATE_JOB, GATE_MARGIN))
    if problems:
        raise ConfigError(problems)
    return out


def environment(options):
    """(name, value) pairs every job's builder gets."""
    env = [('DEVSTACK_GATE_CONFIG', options.slave_config),
           ('DEVSTACK_GATE_DIR', options.install_dir),
           ('DEVSTACK_GATE_PYTHON', options.python),
           ('PYTHONUNBUFFERED', '1')]
    if options.statsd_host:
        env.append(('STATSD_HOST', options.statsd_host))
    return env


def gerrit_projects(config):
    """The gerrit trigger's projects: every gate project, any branch."""
    return [{'project-compare-type': 'PLAIN', 'project-pattern': project,
             'branches': [{'branch-compare-type': 'ANT', 'branch-pattern': '**'}]}
            for project in config.gate.projects]


def project(config, options):
    """The JJB project that instantiates the templates of jobs/devstack-gate.yaml."""
    options.check()
    limits = timeouts(config)
    return {
        'name': 'devstack-gate',
        'providers': [p.name for p in config.providers],
        'labels': config.labels(),
        'image_combination_filter': combination_filter(config),
        'node': options.node,
        'gate_node': options.gate_node,
        'environment': ''.join('%s=%s\n' % pair for pair in environment(options)),
        'image_timer': TIMERS[IMAGE_JOB][0],
        'image_timeout': limits[IMAGE_JOB],
        'launch_timer': TIMERS[LAUNCH_JOB][0],
        'launch_timeout': limits[LAUNCH_JOB],
        'reap_timer': TIMERS[REAP_JOB][0],
        'reap_timeout': limits[REAP_JOB],
        'gate_timeout': limits[GATE_JOB],
        'gerrit_approval_category': options.approval_category,
        'gerrit_projects': gerrit_projects(config),
        'jobs': list(JOB_NAMES),
    }


def command_line(config_arg, options):
    """The generator command that reproduces this output (for the file's header)."""
    words = ['devstack-vm-jobs.py', '--config', config_arg]
    defaults = Options()
    for field in dataclasses.fields(Options):
        value = getattr(options, field.name)
        if value != getattr(defaults, field.name):
            words += ['--' + field.name.replace('_', '-'), value]
    return ' '.join(shlex.quote(w) for w in words)


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as literal blocks, lists indented under their key."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _represent_str(dumper, value):
    style = '|' if '\n' in value else None
    return dumper.represent_scalar('tag:yaml.org,2002:str', value, style=style)


_Dumper.add_representer(str, _represent_str)


def render(config, options, config_arg=None):
    """jobs/projects.yaml as text."""
    body = yaml.dump([{'project': project(config, options)}], Dumper=_Dumper,
                     default_flow_style=False, sort_keys=False, width=1000)
    config_arg = config_arg or os.path.relpath(config.path)
    header = ('# GENERATED from %s by devstack-vm-jobs.py: do not edit; change the\n'
              '# configuration (or jobs/devstack-gate.yaml) and regenerate with\n'
              '#   %s --output jobs/projects.yaml\n'
              % (config_arg, command_line(config_arg, options)))
    return header + body

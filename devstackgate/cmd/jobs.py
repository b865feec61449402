"""devstack-vm-jobs: write the Jenkins jobs' project file (jobs/projects.yaml) from the configuration.

The static job templates are jobs/devstack-gate.yaml; the generated file gives
them the providers, labels, timers, timeouts and environment of this
configuration.  Then ``jenkins-jobs test jobs/`` and ``jenkins-jobs update jobs/``.
"""

import sys

from devstackgate import jobs
from devstackgate.cmd import common

PROG = 'devstack-vm-jobs'


def main(argv=None):
    d = jobs.Options()
    p = common.parser(PROG, 'Generate the jenkins-job-builder project (jobs/projects.yaml) that '
                      'instantiates the job templates of jobs/devstack-gate.yaml for the '
                      'providers and labels of the configuration, with timeouts derived from '
                      'its limits.  Writes to stdout unless --output is given.')
    p.add_argument('--output', metavar='PATH',
                   help='write here (atomically) instead of stdout, e.g. jobs/projects.yaml')
    p.add_argument('--install-dir', metavar='DIR', default=d.install_dir,
                   help='the devstack-gate checkout on the Jenkins slaves (default: %(default)s)')
    p.add_argument('--slave-config', metavar='PATH', default=d.slave_config,
                   help='this configuration file as the slaves see it, exported as '
                        '$DEVSTACK_GATE_CONFIG (default: %(default)s)')
    p.add_argument('--python', metavar='PYTHON', default=d.python,
                   help="the slaves' Python with devstack-gate's dependencies, exported as "
                        '$DEVSTACK_GATE_PYTHON (default: %(default)s)')
    p.add_argument('--statsd-host', metavar='HOST', default=d.statsd_host,
                   help='export $STATSD_HOST to every job (default: not set)')
    p.add_argument('--node', metavar='LABEL', default=d.node,
                   help='Jenkins label of the slaves that run the image, launch and reap '
                        'jobs; they need clouds.yaml (default: %(default)s)')
    p.add_argument('--gate-node', metavar='LABEL', default=d.gate_node,
                   help='Jenkins label of the slaves that run the gate job; they need no '
                        'cloud credentials (default: %(default)s)')
    p.add_argument('--approval-category', metavar='NAME', default=d.approval_category,
                   help='Gerrit approval (label) whose +1 triggers the gate job; APRV on old '
                        'Gerrit 2.x (default: %(default)s)')

    def body(args, config):
        options = jobs.Options(install_dir=args.install_dir, slave_config=args.slave_config,
                               python=args.python, statsd_host=args.statsd_host,
                               node=args.node, gate_node=args.gate_node,
                               approval_category=args.approval_category)
        text = jobs.render(config, options, config_arg=args.config or config.path)
        if args.output:
            common.write_atomically(args.output, text)
            print('%s: wrote %s (%d jobs for providers %s)' % (
                PROG, args.output, len(jobs.JOB_NAMES),
                ', '.join(p.name for p in config.providers)), file=sys.stderr)
        else:
            sys.stdout.write(text)

    return common.run(PROG, p, argv, body, check_clouds=False)

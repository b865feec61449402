"""devstack-vm-launch: keep min-ready nodes per label of one provider, within max-servers."""

import sys

from devstackgate import launch
from devstackgate.cmd import common

PROG = 'devstack-vm-launch'


def main(argv=None):
    p = common.parser(PROG, 'Keep min-ready nodes per label of one provider, within max-servers.')
    p.add_argument('provider', metavar='PROVIDER', help='provider name from the configuration')

    def body(args, config):
        summary = launch.run(config, args.provider)
        if summary.failed and not summary.became_ready:
            print('%s: provider %s: every node finished in this run failed (%d); see the lines '
                  'above' % (PROG, args.provider, summary.failed), file=sys.stderr)
            return common.EXIT_FAILED
        return common.EXIT_OK

    return common.run(PROG, p, argv, body)

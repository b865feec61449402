"""devstack-vm-launch: Keep min-ready nodes per label of one provider, within max-servers."""

from devstackgate.cmd import common

PROG = 'devstack-vm-launch'


def main(argv=None):
    p = common.parser(PROG, 'Keep min-ready nodes per label of one provider, within max-servers.')
    p.add_argument('provider', metavar='PROVIDER', help='provider name from the configuration')
    return common.run(PROG, p, argv, common.not_yet(PROG, 4))

"""devstack-vm-reap: Delete used, expired, broken, stuck and leaked nodes and old images of one provider."""

from devstackgate.cmd import common

PROG = 'devstack-vm-reap'


def main(argv=None):
    p = common.parser(PROG, 'Delete used, expired, broken, stuck and leaked nodes and old images of one provider.')
    p.add_argument('provider', metavar='PROVIDER', help='provider name from the configuration')
    return common.run(PROG, p, argv, common.not_yet(PROG, 6))

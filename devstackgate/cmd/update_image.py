"""devstack-vm-update-image: Build a cached snapshot image per label of one provider, and promote it after a canary."""

from devstackgate.cmd import common

PROG = 'devstack-vm-update-image'


def main(argv=None):
    p = common.parser(PROG, 'Build a cached snapshot image per label of one provider, and promote it after a canary.')
    p.add_argument('provider', metavar='PROVIDER', help='provider name from the configuration')
    return common.run(PROG, p, argv, common.not_yet(PROG, 5))

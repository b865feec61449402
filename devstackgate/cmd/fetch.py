"""devstack-vm-fetch: hand the next ready node of a label to this gate job."""

from devstackgate.cmd import common

PROG = 'devstack-vm-fetch'


def main(argv=None):
    p = common.parser(PROG, 'Claim the oldest ready node of LABEL for this gate job.')
    p.add_argument('label', metavar='LABEL', help='the image label the job needs')
    return common.run(PROG, p, argv, common.not_yet(PROG, 4), check_clouds=False)

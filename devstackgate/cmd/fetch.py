"""devstack-vm-fetch: hand the next ready node of a label to this gate job.

Prints shell-sourceable NODE_*= lines on stdout (use: eval "$(devstack-vm-fetch.py LABEL)")
and one human line on stderr.  Imports no cloud client.
"""

from devstackgate import fetch
from devstackgate.cmd import common

PROG = 'devstack-vm-fetch'


def main(argv=None):
    p = common.parser(PROG, 'Claim the oldest ready node of LABEL for this gate job and print '
                      'NODE_PROVIDER=, NODE_NAME=, NODE_IP=, ... lines for eval.')
    p.add_argument('label', metavar='LABEL', help='the image label the job needs')
    p.add_argument('--provider', action='append', metavar='P',
                   help='only take a node from this provider (repeatable)')
    p.add_argument('--wait', type=float, default=0.0, metavar='SECONDS',
                   help='wait this long for a node to become ready (default: 0)')

    def body(args, config):
        node, result = fetch.fetch(config, args.label, providers=args.provider,
                                   wait_for=args.wait)
        fetch.print_node(config, node, result)

    return common.run(PROG, p, argv, body, check_clouds=False)

"""finish: record a gate run's result, then delete its node (passed, aborted) or hold it.

    python3 -m devstackgate.cmd.finish --config PATH --node-id N --result-id R \\
        --result success|failure|timeout|aborted [--detail TEXT]

Called by devstack-vm-gate.sh at the end of every run that fetched a node,
including from its trap when Jenkins aborts the job.  The job, build and
change recorded for a held node come from the result row (written when the
node was fetched), else from JOB_NAME, BUILD_NUMBER and the Gerrit/Zuul
variables.  Deleting the server is best effort: the hourly reaper finishes it.
"""

import sys

from devstackgate import gate
from devstackgate.cmd import common

PROG = 'devstack-vm-gate-finish'


def _optional_id(text):
    return int(text) if text.strip() else None


def main(argv=None):
    p = common.parser(PROG, 'Record the result of a gate run and delete its node (success, '
                      'aborted) or hold it for hold-hours (failure, timeout).')
    p.add_argument('--node-id', type=int, required=True, metavar='N',
                   help='the node the run used (NODE_ID)')
    p.add_argument('--result-id', type=_optional_id, metavar='R',
                   help='the result row of the run (NODE_RESULT_ID); may be empty')
    p.add_argument('--result', required=True, choices=gate.FINAL_RESULTS)
    p.add_argument('--detail', metavar='TEXT',
                   help='why, appended to the hold reason (for example "host key changed")')

    def body(args, config):
        gate.finish(config, args.node_id, args.result, result_id=args.result_id,
                    detail=args.detail)

    return common.run(PROG, p, argv, body, check_clouds=False)


if __name__ == '__main__':
    sys.exit(main())

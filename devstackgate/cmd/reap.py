"""devstack-vm-reap: Delete used, expired, broken, stuck and leaked nodes and old images of one provider."""

import sys

from devstackgate import reap
from devstackgate.cmd import common

PROG = 'devstack-vm-reap'


def main(argv=None):
    p = common.parser(PROG, 'Delete used, expired, broken, stuck and leaked nodes and old images of one provider.')
    p.add_argument('provider', metavar='PROVIDER', help='provider name from the configuration')
    p.add_argument('--dry-run', action='store_true',
                   help='print what would be deleted and why, one line each; change nothing '
                        'in the cloud or the database')

    def body(args, config):
        summary = reap.run(config, args.provider, dry_run=args.dry_run)
        failed = sum(summary.failed.values())
        if failed:
            print('%s: provider %s: %d delete(s) failed (see above); they are asked again on '
                  'the next run' % (PROG, args.provider, failed), file=sys.stderr)
            return common.EXIT_FAILED
        return common.EXIT_OK

    return common.run(PROG, p, argv, body)

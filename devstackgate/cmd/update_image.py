"""devstack-vm-update-image: build, check and promote a cached image per label of one provider."""

import os
import sys

import vmdatabase
from devstackgate import image, lease
from devstackgate.cmd import common
from devstackgate.errors import UsageError

PROG = 'devstack-vm-update-image'
DEVSTACK_DIR_ENV = 'DEVSTACK_GATE_DEVSTACK_DIR'


def main(argv=None):
    p = common.parser(PROG, 'Build a cached snapshot image per label of one provider, check it '
                      'on a canary node, and promote it; the previous image stays current if '
                      'anything fails.')
    p.add_argument('provider', metavar='PROVIDER', help='provider name from the configuration')
    p.add_argument('label', metavar='LABEL', nargs='?', help='only this label')
    p.add_argument('--dry-run', action='store_true',
                   help='print what would be built and run; change nothing')
    p.add_argument('--demote', action='store_true',
                   help='demote the current image of LABEL so the previous one is used again')
    p.add_argument('--devstack-dir', metavar='DIR', default=os.environ.get(DEVSTACK_DIR_ENV),
                   help='devstack checkout copied to the template as ~/devstack '
                   '(default: $%s)' % DEVSTACK_DIR_ENV)

    def body(args, config):
        provider = config.provider(args.provider)
        if args.demote:
            if not args.label:
                raise UsageError('--demote needs a LABEL')
            image.labels_to_build(provider, args.label)
            db = vmdatabase.Database.from_config(config)
            old, new = image.demote(db, provider.name, args.label)
            print('%s: %s %s: demoted %s; current image is now %s' % (
                PROG, provider.name, args.label, old.name, new.name if new else 'none'),
                file=sys.stderr)
            return common.EXIT_OK
        outcome = image.run(config, args.provider, args.label, dry_run=args.dry_run,
                            devstack_dir=args.devstack_dir)
        for label, e in outcome.items():
            if isinstance(e, lease.LeaseHeld):      # skipped: not a failure (exit 0)
                print('%s: %s' % (PROG, e), file=sys.stderr)
        failed = {label: e for label, e in outcome.items() if isinstance(e, image.BuildFailed)}
        for label, e in failed.items():
            print('%s: provider %s label %s: build failed (%s): %s; the previous image stays '
                  'current' % (PROG, args.provider, label, e.reason, e), file=sys.stderr)
        return common.EXIT_FAILED if failed else common.EXIT_OK

    return common.run(PROG, p, argv, body)

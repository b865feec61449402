"""gate_settings: the settings of devstack-vm-gate.sh, as shell-quoted GATE_*= lines.

    settings=$(python3 -m devstackgate.cmd.gate_settings --config PATH) && eval "$settings"

The YAML configuration (its ``gate:`` section, ``hold-hours`` and
``ssh-private-key``) stays the single source of truth; the only environment
override is DEVSTACK_GATE_TEMPEST=1, which selects the tempest test command.
"""

import sys

import vmdatabase
from devstackgate import gate
from devstackgate.cmd import common
from devstackgate.errors import DatabaseError

PROG = 'devstack-vm-gate-settings'


def main(argv=None):
    p = common.parser(PROG, 'Print the settings of devstack-vm-gate.sh as shell-quoted GATE_*= '
                      'lines for eval.  $%s=1 selects the tempest test command.'
                      % gate.TEMPEST_ENV)
    p.add_argument('--label', action='append', metavar='LABEL',
                   help='a label (cell) to test, repeatable (default: gate.labels)')
    p.add_argument('--no-switches', action='store_true',
                   help='do not read the run-time label switches from the database (a cell '
                        'run of a multi-cell gate, whose parent already did)')

    def body(args, config):
        db = None
        if not args.no_switches:
            db = vmdatabase.Database.from_config(config, read_only=True)
            try:
                db.transact(lambda s: s.label_switches())
            except DatabaseError as e:
                # No database yet (or no schema): no cell was switched off at run time.
                print('%s: cannot read the label switches (%s); testing every cell not '
                      'disabled in the configuration' % (PROG, e), file=sys.stderr)
                db = None
        for line in gate.shell_lines(gate.settings(config, labels=args.label, db=db)):
            print(line)

    return common.run(PROG, p, argv, body, check_clouds=False)


if __name__ == '__main__':
    sys.exit(main())

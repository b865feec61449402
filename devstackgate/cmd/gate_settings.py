"""gate_settings: the settings of devstack-vm-gate.sh, as shell-quoted GATE_*= lines.

    settings=$(python3 -m devstackgate.cmd.gate_settings --config PATH) && eval "$settings"

The YAML configuration (its ``gate:`` section, ``hold-hours`` and
``ssh-private-key``) stays the single source of truth; the only environment
override is DEVSTACK_GATE_TEMPEST=1, which selects the tempest test command.
"""

import sys

from devstackgate import gate
from devstackgate.cmd import common

PROG = 'devstack-vm-gate-settings'


def main(argv=None):
    p = common.parser(PROG, 'Print the settings of devstack-vm-gate.sh as shell-quoted GATE_*= '
                      'lines for eval.  $%s=1 selects the tempest test command.'
                      % gate.TEMPEST_ENV)
    p.add_argument('--label', metavar='LABEL',
                   help='label of the node to fetch (default: gate.label)')

    def body(args, config):
        for line in gate.shell_lines(gate.settings(config, label=args.label)):
            print(line)

    return common.run(PROG, p, argv, body, check_clouds=False)


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env bash
# devstack-vm-gate.sh: run the change under test on a pool node (what the gate Jenkins job runs).
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: devstack-vm-gate.sh [--help] LABEL

Prepare the workspace, fetch a ready node of LABEL, copy the workspace to it,
run devstack and the tests, bring the logs back, and delete the node on
success or hold it for diagnosis on failure.
USAGE
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
esac
echo "devstack-vm-gate.sh: not implemented yet (issue 6)" >&2
exit 1

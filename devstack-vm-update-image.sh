#!/usr/bin/env bash
# devstack-vm-update-image.sh: the nightly image job: update the devstack checkout, then build.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: devstack-vm-update-image.sh [--help] PROVIDER [LABEL]

Update the devstack checkout (clone if missing), then run
devstack-vm-update-image.py PROVIDER [LABEL].
USAGE
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
esac
echo "devstack-vm-update-image.sh: not implemented yet (issue 5)" >&2
exit 1

#!/usr/bin/env bash
# devstack-vm-update-image.sh: the nightly image job (one Jenkins matrix cell per provider).
#
# Brings the devstack checkout up to date (clone if missing, fetch and prune if
# present, re-clone if half-broken), with timeouts and retries on every network
# step, then runs devstack-vm-update-image.py with the same arguments and the
# checkout, which is copied to the template and read by the setup scripts.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: devstack-vm-update-image.sh [--help] PROVIDER [LABEL] [devstack-vm-update-image.py options]

Update the devstack checkout (clone if missing), then run
devstack-vm-update-image.py PROVIDER [LABEL] with it.

Environment (defaults in brackets):
  DEVSTACK_GATE_DEVSTACK_DIR     the checkout [~/.devstack-gate/devstack]
  DEVSTACK_GATE_DEVSTACK_REPO    where it comes from [https://opendev.org/openstack/devstack]
  DEVSTACK_GATE_DEVSTACK_BRANCH  branch [master]
  DEVSTACK_GATE_GIT_TIMEOUT      seconds one git network step may take [300]
  DEVSTACK_GATE_GIT_RETRIES      attempts of one git network step [3]
  DEVSTACK_GATE_GIT_BACKOFF      seconds before the first retry, doubling [5]
  DEVSTACK_GATE_PYTHON           the Python with devstack-gate's dependencies [python3]
USAGE
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") usage >&2; exit 2 ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEVSTACK_DIR=${DEVSTACK_GATE_DEVSTACK_DIR:-$HOME/.devstack-gate/devstack}
DEVSTACK_REPO=${DEVSTACK_GATE_DEVSTACK_REPO:-https://opendev.org/openstack/devstack}
DEVSTACK_BRANCH=${DEVSTACK_GATE_DEVSTACK_BRANCH:-master}
GIT_TIMEOUT=${DEVSTACK_GATE_GIT_TIMEOUT:-300}
GIT_RETRIES=${DEVSTACK_GATE_GIT_RETRIES:-3}
GIT_BACKOFF=${DEVSTACK_GATE_GIT_BACKOFF:-5}
PYTHON=${DEVSTACK_GATE_PYTHON:-python3}
scratch=""

say() { printf '%s devstack-vm-update-image.sh: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*" >&2; }

# The operator's values reach git as data, never as options: checked first, then passed after --.
if [[ $DEVSTACK_BRANCH == -* ]] || ! git check-ref-format "refs/heads/$DEVSTACK_BRANCH"; then
    say "error: \$DEVSTACK_GATE_DEVSTACK_BRANCH: $(printf '%q' "$DEVSTACK_BRANCH") is not a git branch name"
    exit 2
fi
if [[ $DEVSTACK_REPO == -* || $DEVSTACK_REPO == *[[:cntrl:]]* || -z $DEVSTACK_REPO ]]; then
    say "error: \$DEVSTACK_GATE_DEVSTACK_REPO: $(printf '%q' "$DEVSTACK_REPO") is not a URL or directory"
    exit 2
fi

cleanup() {
    if [[ -n "$scratch" ]]; then
        rm -rf "$scratch"
    fi
}
trap cleanup EXIT

# retry WHAT CLEAN_DIR CMD...: every git network step.  (shellcheck -x follows the source.)
# shellcheck source-path=SCRIPTDIR source=lib/retry.sh disable=SC1091
source "$here/lib/retry.sh"
retry_configure "$GIT_TIMEOUT" "$GIT_RETRIES" "$GIT_BACKOFF" || exit 2

fresh_clone() {
    scratch=$(mktemp -d "$(dirname "$DEVSTACK_DIR")/.devstack-clone.XXXXXX")
    retry "git clone $DEVSTACK_REPO" "$scratch/devstack" \
        git clone --quiet --branch "$DEVSTACK_BRANCH" -- "$DEVSTACK_REPO" "$scratch/devstack"
    rm -rf "$DEVSTACK_DIR"
    mv "$scratch/devstack" "$DEVSTACK_DIR"
}

update_devstack() {
    mkdir -p "$(dirname "$DEVSTACK_DIR")"
    if [[ ! -e "$DEVSTACK_DIR" ]]; then
        say "cloning devstack ($DEVSTACK_BRANCH) into $DEVSTACK_DIR"
        fresh_clone
    elif ! git -C "$DEVSTACK_DIR" rev-parse --verify --quiet HEAD >/dev/null 2>&1 \
            || [[ "$(git -C "$DEVSTACK_DIR" rev-parse --show-toplevel 2>/dev/null)" != "$(cd "$DEVSTACK_DIR" && pwd -P)" ]]; then
        say "devstack checkout $DEVSTACK_DIR is broken; cloning it again"
        fresh_clone
    else
        say "updating devstack checkout $DEVSTACK_DIR ($DEVSTACK_BRANCH)"
        git -C "$DEVSTACK_DIR" remote set-url origin "$DEVSTACK_REPO"
        if ! retry "git fetch $DEVSTACK_REPO" "" git -C "$DEVSTACK_DIR" fetch --quiet --prune origin \
                "+refs/heads/$DEVSTACK_BRANCH:refs/remotes/origin/$DEVSTACK_BRANCH"; then
            return 1
        fi
        git -C "$DEVSTACK_DIR" checkout --quiet --force -B "$DEVSTACK_BRANCH" "origin/$DEVSTACK_BRANCH"
        git -C "$DEVSTACK_DIR" clean --quiet -fdx
    fi
    say "devstack is at $(git -C "$DEVSTACK_DIR" log -1 --format='%h %s')"
}

update_devstack
cleanup
trap - EXIT
exec "$PYTHON" "$here/devstack-vm-update-image.py" --devstack-dir "$DEVSTACK_DIR" "$@"

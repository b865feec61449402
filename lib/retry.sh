# shellcheck shell=bash
# lib/retry.sh: a network step with a timeout, retries and a doubling backoff.
#
# Sourced, not run, by devstack-vm-gate.sh and devstack-vm-update-image.sh
# (from a checkout: `source "$here/lib/retry.sh"`).  Safe under set -euo pipefail.
#
#   retry_configure TIMEOUT ATTEMPTS BACKOFF
#       Once, before any retry: the seconds one attempt may take (a number
#       > 0), the attempts in all (a whole number >= 1), and the whole seconds
#       to wait before the first retry (0: none), doubled before each next one.
#       Returns 2, after a message, when a value is not usable.
#
#   retry WHAT CLEAN_DIR CMD...
#       Runs CMD under `timeout --kill-after=10 TIMEOUT` until it succeeds, at
#       most ATTEMPTS times.  CLEAN_DIR, unless empty, is removed before every
#       attempt (what a cut-off git clone leaves behind).  WHAT names the step
#       in the messages.  Returns 0 once CMD succeeded, 1 when every attempt
#       failed (2 when retry_configure was not called).
#
# The caller defines say MESSAGE..., which prints a message.  After sourcing,
# it may redefine retry_exec CMD..., which runs each attempt and each wait
# between attempts (by default CMD runs directly, in the foreground).

RETRY_TIMEOUT="" RETRY_ATTEMPTS="" RETRY_BACKOFF=""

retry_configure() {
    local timeout=${1-} attempts=${2-} backoff=${3-}
    if ! [[ $timeout =~ ^[0-9]+(\.[0-9]+)?$ && ! $timeout =~ ^[0.]+$ ]] \
            || ! [[ $attempts =~ ^[1-9][0-9]*$ ]] || ! [[ $backoff =~ ^(0|[1-9][0-9]*)$ ]]; then
        say "error: unusable retry settings: timeout '$timeout' (seconds > 0)," \
            "attempts '$attempts' (a whole number >= 1), backoff '$backoff' (whole seconds)"
        return 2
    fi
    RETRY_TIMEOUT=$timeout RETRY_ATTEMPTS=$attempts RETRY_BACKOFF=$backoff
}

retry_exec() {
    "$@"
}

retry() {
    local what=$1 clean=$2 attempt=1 delay rc why
    shift 2
    if [[ -z "$RETRY_ATTEMPTS" ]]; then
        say "error: $what: retry_configure was not called"
        return 2
    fi
    delay=$RETRY_BACKOFF
    while :; do
        if [[ -n "$clean" ]]; then
            rm -rf -- "$clean"
        fi
        rc=0
        retry_exec timeout --kill-after=10 "$RETRY_TIMEOUT" "$@" || rc=$?
        if ((rc == 0)); then
            return 0
        fi
        why="exit $rc"
        if ((rc == 124 || rc == 137)); then
            why="timed out after $RETRY_TIMEOUT s"
        fi
        if ((attempt >= RETRY_ATTEMPTS)); then
            say "$what: failed ($why), giving up after $attempt attempt(s)"
            return 1
        fi
        say "$what: failed ($why); attempt $((attempt + 1)) of $RETRY_ATTEMPTS in $delay s"
        retry_exec sleep "$delay"
        attempt=$((attempt + 1))
        delay=$((delay * 2))
    done
}

#!/usr/bin/env bash
# prepare-node.sh: cache what a devstack run downloads, on the template VM, before its snapshot.
#
# Package mirrors, PyPI and git hosts are down too often for a gate job to
# fetch anything: the nightly image build runs this on the template (over SSH,
# as the image's login user; sudo for apt) so that every node booted from the
# snapshot already has, for each configured branch:
#   - the debs devstack's files/debs/* name, in /var/cache/apt/archives (downloaded, not installed);
#   - the pip requirements of the projects (and global-requirements under
#     upper-constraints), in the pip cache (pip download);
#   - the test images of devstack's stackrc, in devstack's files/;
#   - a git clone of every project, with a local branch per configured branch.
#
# Self-contained: bash, python3 and its standard library, and
# devstack_cache_plan.py beside this file (the devstack-gate package is not
# installed here).  The planner decides what to run; this script runs it, one
# log line per step with its elapsed time, retrying network steps with backoff
# under a timeout.  Nothing is installed except the download tools (git,
# python3-pip, curl) when they are missing.
set -euo pipefail

PROG=prepare-node
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PLANNER="$HERE/devstack_cache_plan.py"

# Defaults; each can be set in the environment or by an option.
DEVSTACK_DIR=${PREPARE_NODE_DEVSTACK:-$HOME/devstack}
BRANCHES=${PREPARE_NODE_BRANCHES:-master}
PROJECTS_FILE=${PREPARE_NODE_PROJECTS_FILE:-}
GIT_CACHE=${PREPARE_NODE_GIT_CACHE:-$HOME/workspace-cache}
PIP_CACHE=${PREPARE_NODE_PIP_CACHE:-/var/cache/pip}
STEPS=${PREPARE_NODE_STEPS:-apt,git,pip,images}
DIST=${PREPARE_NODE_DIST:-}
RETRIES=${PREPARE_NODE_RETRIES:-3}
RETRY_DELAY=${PREPARE_NODE_RETRY_DELAY:-10}
RETRY_MAX_DELAY=${PREPARE_NODE_RETRY_MAX_DELAY:-120}
TIMEOUT=${PREPARE_NODE_TIMEOUT:-1800}
PYTHON=${PREPARE_NODE_PYTHON:-python3}
SUDO=${PREPARE_NODE_SUDO-}
SUDO_SET=${PREPARE_NODE_SUDO+1}
TESTONLY=1
DRY_RUN=0
PROJECTS=()
VARS=()

usage() {
    cat <<'USAGE'
usage: prepare-node.sh [options]

Cache the debs, pip packages, test images and git repositories a devstack run
needs, for every branch, so that nodes booted from this template's snapshot
need no network.  Run on the template VM, as its login user (sudo for apt).

  --devstack DIR        devstack checkout; each branch is read from its git
                        objects, a plain directory serves one branch
                        [$PREPARE_NODE_DEVSTACK, default ~/devstack]
  --branches LIST       comma or space separated [$PREPARE_NODE_BRANCHES, default master]
  --project SPEC        NAME=SOURCE, or SOURCE (a git URL or a local repository);
                        repeatable
  --projects-file FILE  one SPEC per line, # comments [$PREPARE_NODE_PROJECTS_FILE]
  --git-cache DIR       clones go to DIR/NAME [$PREPARE_NODE_GIT_CACHE, default ~/workspace-cache]
  --pip-cache DIR       pip download directory [$PREPARE_NODE_PIP_CACHE, default /var/cache/pip]
  --dist CODENAME       for dist:/not: markers [$PREPARE_NODE_DIST, default: /etc/os-release]
  --steps LIST          of apt,git,pip,images [$PREPARE_NODE_STEPS, default all]
  --no-testonly         leave out debs marked "# testonly"
  --var NAME=VALUE      a stackrc variable, as local.conf sets it; repeatable
  --retries N           attempts per network step [$PREPARE_NODE_RETRIES, default 3]
  --retry-delay S       wait after the first failed attempt, doubled after each
                        [$PREPARE_NODE_RETRY_DELAY, default 10]
  --retry-max-delay S   longest wait [$PREPARE_NODE_RETRY_MAX_DELAY, default 120]
  --timeout S           limit of one attempt of a network step [$PREPARE_NODE_TIMEOUT, default 1800]
  --sudo CMD            prefix of apt-get [$PREPARE_NODE_SUDO, default: none as root, else "sudo -n"]
  --python PATH         python3 for the planner and pip [$PREPARE_NODE_PYTHON, default python3]
  --dry-run             print every command, one per line, and run none
  -h, --help            this text

Exit status: 0 done, 1 a step failed (one line names it), 2 bad input, 130 interrupted.
USAGE
}

log() {
    printf '%s %s: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$PROG" "$*"
}

die() {  # die STATUS MESSAGE
    printf '%s: %s\n' "$PROG" "$2" >&2
    exit "$1"
}

now_us() {
    local t=${EPOCHREALTIME:-}
    if [[ -n $t ]]; then
        t=${t//[!0-9]/}
        echo "$((10#$t))"
    else
        echo "$(($(date +%s) * 1000000))"
    fi
}

elapsed() {  # elapsed START_US -> "12.3s"
    local us=$(($(now_us) - $1))
    printf '%d.%ds' "$((us / 1000000))" "$((us / 100000 % 10))"
}

need_int() {  # need_int OPTION VALUE MINIMUM
    if ! [[ $2 =~ ^[0-9]+$ ]] || (($2 < $3)); then
        die 2 "$1 must be an integer of at least $3, got '$2'"
    fi
}

while (($#)); do
    opt=$1
    value=
    has_value=0
    if [[ $opt == --*=* ]]; then
        value=${opt#*=}
        opt=${opt%%=*}
        has_value=1
    fi
    case $opt in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1 ;;
        --no-testonly) TESTONLY=0 ;;
        --devstack | --branches | --project | --projects-file | --git-cache | --pip-cache | \
            --dist | --steps | --var | --retries | --retry-delay | --retry-max-delay | \
            --timeout | --sudo | --python)
            if ((!has_value)); then
                (($# >= 2)) || die 2 "$opt needs a value (see --help)"
                value=$2
                shift
            fi
            case $opt in
                --devstack) DEVSTACK_DIR=$value ;;
                --branches) BRANCHES=$value ;;
                --project) PROJECTS+=("$value") ;;
                --projects-file) PROJECTS_FILE=$value ;;
                --git-cache) GIT_CACHE=$value ;;
                --pip-cache) PIP_CACHE=$value ;;
                --dist) DIST=$value ;;
                --steps) STEPS=$value ;;
                --var) VARS+=("$value") ;;
                --retries) RETRIES=$value ;;
                --retry-delay) RETRY_DELAY=$value ;;
                --retry-max-delay) RETRY_MAX_DELAY=$value ;;
                --timeout) TIMEOUT=$value ;;
                --sudo) SUDO=$value; SUDO_SET=1 ;;
                --python) PYTHON=$value ;;
            esac
            ;;
        *) die 2 "unknown argument '$opt' (see --help)" ;;
    esac
    shift
done

need_int --retries "$RETRIES" 1
need_int --retry-delay "$RETRY_DELAY" 0
need_int --retry-max-delay "$RETRY_MAX_DELAY" 0
need_int --timeout "$TIMEOUT" 1
[[ -f $PLANNER ]] || die 2 "$PLANNER is missing: copy the whole node-setup directory"

PLANNER_ARGS=(--devstack "$DEVSTACK_DIR" --branches "$BRANCHES" --git-cache "$GIT_CACHE"
    --pip-cache "$PIP_CACHE" --steps "$STEPS" --python "$PYTHON")
if [[ -n $DIST ]]; then PLANNER_ARGS+=(--dist "$DIST"); fi
if [[ -n $PROJECTS_FILE ]]; then PLANNER_ARGS+=(--projects-file "$PROJECTS_FILE"); fi
if [[ -n $SUDO_SET ]]; then PLANNER_ARGS+=(--sudo "$SUDO"); fi
if ((!TESTONLY)); then PLANNER_ARGS+=(--no-testonly); fi
for item in ${PROJECTS[@]+"${PROJECTS[@]}"}; do PLANNER_ARGS+=(--project "$item"); done
for item in ${VARS[@]+"${VARS[@]}"}; do PLANNER_ARGS+=(--var "$item"); done

WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/prepare-node.XXXXXX")
STEP_LOG="$WORKDIR/step.log"
PARTIAL=""      # what the running step leaves half-made if it is cut short
CHILD=""        # the running step's process
STEP_COUNT=0

cleanup() {
    local status=$?
    if [[ -n $PARTIAL ]]; then rm -rf -- "$PARTIAL"; fi
    rm -rf -- "$WORKDIR"
    exit "$status"
}

interrupted() {
    trap - INT TERM HUP
    printf '%s: interrupted\n' "$PROG" >&2
    if [[ -n $CHILD ]]; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    exit 130
}
trap cleanup EXIT
trap interrupted INT TERM HUP

run_once() {  # run_once KIND STDOUT ARGV...: one attempt; output to the step log
    local kind=$1 out=$2 status=0
    shift 2
    if [[ $kind == network ]]; then
        set -- timeout --kill-after=30 "$TIMEOUT" "$@"
    fi
    # In the background, so that a signal interrupts the wait at once.
    if [[ -n $out ]]; then
        "$@" </dev/null >"$out" 2>"$STEP_LOG" &
    else
        "$@" </dev/null >"$STEP_LOG" 2>&1 &
    fi
    CHILD=$!
    wait "$CHILD" || status=$?
    CHILD=""
    return "$status"
}

step() {  # step KIND LABEL SHELL-LINE STDOUT CLEANUP ARGV...
    local kind=$1 label=$2 line=$3 out=$4 partial=$5
    shift 5
    if ((DRY_RUN)); then
        printf '%s\n' "$line"
        return 0
    fi
    local start attempt=1 delay=$RETRY_DELAY status reason
    start=$(now_us)
    while :; do
        PARTIAL=$partial
        if [[ -n $partial ]]; then rm -rf -- "$partial"; fi
        status=0
        run_once "$kind" "$out" "$@" || status=$?
        if ((status == 0)); then
            PARTIAL=""
            STEP_COUNT=$((STEP_COUNT + 1))
            log "$label: ok in $(elapsed "$start")"
            return 0
        fi
        reason="exit status $status"
        if [[ $kind == network ]] && ((status == 124)); then
            reason="timed out after ${TIMEOUT}s"
        fi
        if [[ $kind != network ]] || ((attempt >= RETRIES)); then
            if [[ -n $partial ]]; then rm -rf -- "$partial"; fi
            PARTIAL=""
            # The tool's last words, with any URL password hidden: consoles are public.
            sed -E -e 's#(://[^/[:space:]:@]*:)[^/[:space:]@]*@#\1***@#g' -e 's/^/    /' \
                "$STEP_LOG" | tail -n 20 >&2
            die 1 "$label: failed ($reason) after $attempt attempt(s) in $(elapsed "$start"): $line"
        fi
        log "$label: attempt $attempt of $RETRIES failed ($reason); retrying in ${delay}s"
        sleep "$delay" &
        CHILD=$!
        wait "$CHILD"
        CHILD=""
        delay=$((delay * 2))
        if ((delay > RETRY_MAX_DELAY)); then delay=$RETRY_MAX_DELAY; fi
        attempt=$((attempt + 1))
    done
}

field() {  # field NAME: the next NUL-terminated field of the planner's records (fd 3)
    IFS= read -r -d '' -u 3 "$1" || die 1 "the planner's command list is truncated"
}

run_phase() {  # run_phase PHASE: ask the planner for the phase's commands, run each
    # A record: kind, label, shell line, stdout file, cleanup path, argc, arguments.
    local phase=$1 records="$WORKDIR/$1.records" status=0
    local kind label line out partial argc i arg
    local -a argv
    "$PYTHON" "$PLANNER" commands --phase "$phase" --format records "${PLANNER_ARGS[@]}" \
        >"$records" || status=$?
    if ((status != 0)); then
        exit "$status"   # the planner printed why
    fi
    while IFS= read -r -d '' -u 3 kind; do
        field label
        field line
        field out
        field partial
        field argc
        [[ $argc =~ ^[1-9][0-9]*$ ]] || die 1 "the planner's command list is garbled"
        argv=()
        for ((i = 0; i < argc; i++)); do
            field arg
            argv+=("$arg")
        done
        step "$kind" "$label" "$line" "$out" "$partial" "${argv[@]}"
    done 3<"$records"
}

T0=$(now_us)
if ((!DRY_RUN)); then
    log "caching for devstack $DEVSTACK_DIR, branches $BRANCHES, steps $STEPS"
fi
# tools: apt-get update and the download tools (the planner reads git branches);
# fetch: debs, images, clones; cache: what needs the clones (branches, pip).
for phase in tools fetch cache; do
    run_phase "$phase"
done
if ((!DRY_RUN)); then
    log "done: $STEP_COUNT steps in $(elapsed "$T0")"
fi

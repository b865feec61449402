#!/usr/bin/env bash
# devstack-vm-gate.sh: run the change under test on a pool node (what the gate Jenkins job runs).
#
# 1. Prepares $WORKSPACE/<gate.workspace>/<project> for each of gate.projects from
#    <gate.git-base>/<project> (a URL or a local directory), on the change's branch
#    (else gate.branch), and merges the change under test into its project.  A
#    change that does not merge fails here, before any node is fetched.
# 2. Fetches a ready node of the label with devstack-vm-fetch.py and prints its
#    NODE_PROVIDER=, NODE_NAME=, NODE_IP=, ... lines.
# 3. Checks the node's SSH host key against the one recorded when the node was
#    made ready (a changed key aborts the run), writes devstack's local.conf,
#    and copies the workspace to ~/workspace on the node with rsync over SSH.
# 4. Runs the test command on the node from ~/workspace under gate.test-timeout.
# 5. Copies ~/workspace/logs from the node to $WORKSPACE/logs/node/ whatever the
#    outcome (also when Jenkins aborts the job), records the result, and deletes
#    the node (success, aborted) or holds it for hold-hours (failure, timeout).
#
# Every run ends in one class, recorded with its result and named on the last
# console line: success, test failure (the test command exited non-zero),
# timeout, infra failure, aborted.  Infra is the node's fault, not the change's:
# no host key recorded, SSH does not answer, the host key changed, the copy
# failed, or the node stopped answering during the test (SSH keep-alives every
# gate.alive-interval s, gone after gate.alive-count unanswered).  Such a node is
# held for gate.infra-hold-minutes (reason "infra") and steps 2-5 run again on
# another node, from another provider when one has a node ready, up to
# gate.attempts nodes in all.  A test failure or a timeout is never retried.
#
# Every step's console also goes to $WORKSPACE/logs/<step>.txt (an abandoned node's
# logs to logs/node-attempt-N/).  Exit status: 0 success; 1 test failure, timeout,
# infra failure, merge conflict or no node; 2 bad configuration or
# usage; 128+N when killed by signal N (143 for Jenkins' SIGTERM), after the logs
# were collected and the result recorded.
#
# Settings come from the YAML configuration (gate: section, hold-hours,
# ssh-private-key) through `python3 -m devstackgate.cmd.gate_settings`.
# Environment:
#   WORKSPACE                 the Jenkins workspace (default: the current directory)
#   JOB_NAME, BUILD_NUMBER    recorded with the result and a held node
#   ZUUL_PROJECT, ZUUL_BRANCH, ZUUL_REF, ZUUL_URL, ZUUL_CHANGE, ZUUL_PATCHSET
#                             the change under test (Zuul), fetched from $ZUUL_URL/<project>;
#   GERRIT_PROJECT, GERRIT_BRANCH, GERRIT_REFSPEC, GERRIT_CHANGE_NUMBER,
#   GERRIT_PATCHSET_NUMBER    else the change under test (Gerrit Trigger), fetched from
#                             ${DEVSTACK_GATE_GERRIT_URL:-<gate.git-base>}/<project>
#   DEVSTACK_GATE_TEMPEST=1   run tempest instead of gate.test-command:
#                             cd devstack && ./stack.sh && cd ../tempest && tox -e full
#   DEVSTACK_GATE_CONFIG      the configuration file when --config is not given
#   DEVSTACK_GATE_PYTHON      the Python with devstack-gate's dependencies (default: python3)
set -euo pipefail

PROG=devstack-vm-gate
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${DEVSTACK_GATE_PYTHON:-python3}
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
# Never wait for a password prompt: git fails instead, and is retried.
export GIT_TERMINAL_PROMPT=0
export GIT_SSH_COMMAND=${GIT_SSH_COMMAND:-ssh -o BatchMode=yes}
# Only transports that move data: never ext:: (runs a command) or fd::, whatever a URL says.
export GIT_ALLOW_PROTOCOL=${GIT_ALLOW_PROTOCOL:-file:git:http:https:ssh}

usage() {
    cat <<'USAGE'
usage: devstack-vm-gate.sh [--config PATH] [--label LABEL]... [--help]

Prepare the workspace and merge the change under test, fetch a ready node of
LABEL (default: gate.labels), copy the workspace to it, run the test command
(default: devstack's stack.sh then exercise.sh; DEVSTACK_GATE_TEMPEST=1 runs
tempest; $DEVSTACK_GATE_LABEL tells it the label), bring the logs back to
$WORKSPACE/logs, and delete the node on success or hold it for hold-hours on
failure or timeout.

With several labels (cells of a label matrix), the workspace is prepared once
and every enabled cell runs at once on its own node, its console lines
prefixed with [LABEL] and its logs in $WORKSPACE/logs/LABEL/; a disabled cell
(disabled-labels in the configuration, or switched off in the database) is
skipped and named with its reason.  The run passes only if every enabled
cell passes.

  --config PATH   configuration file (default: $DEVSTACK_GATE_CONFIG, else
                  ~/.devstack-gate/devstack-gate.yaml or
                  /etc/devstack-gate/devstack-gate.yaml)
  --label LABEL   a label to test; repeatable (default: gate.labels)

Exit status: 0 success; 1 failure, timeout, merge conflict or no node; 2 bad
configuration or usage; 143 aborted by SIGTERM (logs collected, result recorded).
USAGE
}

say() {  # a console line; a URL's password (https://user:PASSWORD@host) shows as ***
    printf '%s %s: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$PROG" "$*" \
        | sed -E 's#(://[^/[:space:]:@]*:)[^/[:space:]@]*@#\1***@#g'
}
usage_error() {
    printf '%s: %s (see --help)\n' "$PROG" "$1" \
        | sed -E 's#(://[^/[:space:]:@]*:)[^/[:space:]@]*@#\1***@#g' >&2
    exit 2
}

config_args=()
label_args=()
CELL=""        # set in a cell run of a multi-cell gate: the parent prepared the workspace
while (($#)); do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --config) (($# >= 2)) || usage_error "--config needs a PATH"; config_args=(--config "$2"); shift 2 ;;
        --config=*) config_args=(--config "${1#*=}"); shift ;;
        # (--label=VALUE: a label beginning with "-" is a value, refused as an unknown label)
        --label) (($# >= 2)) || usage_error "--label needs a LABEL"; label_args+=("--label=$2"); shift 2 ;;
        --label=*) label_args+=("--label=${1#*=}"); shift ;;
        --cell) (($# >= 2)) || usage_error "--cell needs a LABEL"; CELL=$2; label_args=("--label=$2" --no-switches); shift 2 ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done

# -- settings ----------------------------------------------------------------
GATE_CONFIG="" GATE_GIT_BASE="" GATE_BRANCH="" GATE_WORKSPACE=""
GATE_TEMPEST="" GATE_TEST_COMMAND="" GATE_TEST_TIMEOUT="" GATE_TEST_SAFETY_TIMEOUT=""
GATE_FETCH_WAIT="" GATE_GIT_TIMEOUT="" GATE_GIT_RETRIES="" GATE_RSYNC_TIMEOUT=""
GATE_ABORT_COPY_TIMEOUT="" GATE_HOLD_HOURS="" GATE_SSH_KEY=""
GATE_PROJECTS=() GATE_LABELS=() GATE_SKIPPED=() GATE_SKIPPED_WHY=()
settings=$("$PYTHON" -m devstackgate.cmd.gate_settings "${config_args[@]}" "${label_args[@]}") \
    || exit $?
eval "$settings"

WORKSPACE=$(cd "${WORKSPACE:-$PWD}" && pwd)
case "$GATE_WORKSPACE" in
    /*) SRC=$GATE_WORKSPACE ;;
    *) SRC=$WORKSPACE/$GATE_WORKSPACE ;;
esac
LOGS=$WORKSPACE/logs
if [[ -n "$CELL" ]]; then
    SRC=$WORKSPACE/cells/$CELL/workspace
    LOGS=$WORKSPACE/logs/$CELL
fi
GATE_LABEL=${GATE_LABELS[0]:-}
JOB="${JOB_NAME:-unknown job} #${BUILD_NUMBER:-?}"
JOB=${JOB//[[:cntrl:]]/?}     # printed, and written into local.conf: always one line

# check_change_var VARIABLE KIND: a value from Gerrit or Zuul is data for git, never an
# option or a second line.  Checked before any git command; a bad one is one line, exit 2.
check_change_var() {
    local name=$1 value=${!1-} what
    [[ -n "$value" ]] || return 0
    case "$2" in
        ref) what="a git ref such as refs/changes/01/1001/1"
             [[ $value =~ ^refs/[A-Za-z0-9_.+/-]+$ ]] && git check-ref-format "$value" \
                 && return 0 ;;
        branch) what="a git branch name such as master or stable/icehouse"
             [[ $value =~ ^[A-Za-z0-9_][A-Za-z0-9_.+/-]*$ ]] \
                 && git check-ref-format "refs/heads/$value" && return 0 ;;
        project) what="a project path such as openstack/nova"
             [[ $value =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$ ]] \
                 && return 0 ;;
        url) what="a git URL or directory on one line, not beginning with \"-\""
             [[ $value != -* && ! $value =~ [[:cntrl:]] ]] && return 0 ;;
        id) what="a change or patchset number"
             [[ $value =~ ^[A-Za-z0-9]+$ ]] && return 0 ;;
    esac
    local q
    printf -v q '%q' "$value"
    usage_error "\$$name: $q is not usable: expected $what"
}

# The change under test: Zuul's variables, else Gerrit Trigger's.
CHANGE_PROJECT="" CHANGE_BRANCH="" CHANGE_REF="" CHANGE_URL="" CHANGE_ID=""
if [[ -n "${ZUUL_PROJECT:-}" ]]; then
    for var in ZUUL_PROJECT:project ZUUL_BRANCH:branch ZUUL_REF:ref ZUUL_URL:url \
               ZUUL_CHANGE:id ZUUL_PATCHSET:id; do
        check_change_var "${var%%:*}" "${var#*:}"
    done
    CHANGE_PROJECT=$ZUUL_PROJECT CHANGE_BRANCH=${ZUUL_BRANCH:-} CHANGE_REF=${ZUUL_REF:-}
    CHANGE_URL=${ZUUL_URL:-$GATE_GIT_BASE}
    CHANGE_ID=${ZUUL_CHANGE:-}${ZUUL_PATCHSET:+,$ZUUL_PATCHSET}
    [[ -n "$CHANGE_REF" ]] || usage_error "ZUUL_PROJECT is set but ZUUL_REF is empty"
elif [[ -n "${GERRIT_PROJECT:-}" ]]; then
    for var in GERRIT_PROJECT:project GERRIT_BRANCH:branch GERRIT_REFSPEC:ref \
               DEVSTACK_GATE_GERRIT_URL:url GERRIT_CHANGE_NUMBER:id GERRIT_PATCHSET_NUMBER:id; do
        check_change_var "${var%%:*}" "${var#*:}"
    done
    CHANGE_PROJECT=$GERRIT_PROJECT CHANGE_BRANCH=${GERRIT_BRANCH:-} CHANGE_REF=${GERRIT_REFSPEC:-}
    CHANGE_URL=${DEVSTACK_GATE_GERRIT_URL:-$GATE_GIT_BASE}
    CHANGE_ID=${GERRIT_CHANGE_NUMBER:-}${GERRIT_PATCHSET_NUMBER:+,$GERRIT_PATCHSET_NUMBER}
    [[ -n "$CHANGE_REF" ]] || usage_error "GERRIT_PROJECT is set but GERRIT_REFSPEC is empty"
fi
CHANGE_URL=${CHANGE_URL%/}
CHANGE_ID=${CHANGE_ID:-$CHANGE_REF}

# -- run state, read by the traps ----------------------------------------------
TMP=""             # private temporary directory (known_hosts, ssh wrapper, node lines)
CHILD=""           # the background command being waited for
TEE_PID=""         # the tee copying the current step's console to its log
NODE_ID=""         # set once a node is ours
FINISHED=""        # set once the result is being recorded
FINISH_RC=""       # the exit status of devstackgate.cmd.finish
LOGS_COLLECTED=""
NODE_SILENT=""       # set once the node was found not to answer SSH
NODE_PROVIDER="" NODE_NAME="" NODE_IP="" NODE_IMAGE="" NODE_USERNAME="" NODE_HOST_KEY=""
NODE_SSH_PORT="" NODE_RESULT_ID=""
TARGET=""
STEP=""

# -- steps and their logs --------------------------------------------------------
# fds 5 and 6 keep the console for when a step's tee is gone.
exec 5>&1 6>&2

begin_step() {  # begin_step NAME: the console of this step also goes to $LOGS/NAME.txt
    end_step
    STEP=$1
    # tee ignores the signals so that a SIGTERM sent to the whole process group
    # cannot cut the console of the trap that handles it.
    exec > >(trap '' INT TERM HUP; exec tee -a "$LOGS/$1.txt" >&5) 2>&1
    TEE_PID=$!
}

end_step() {
    if [[ -n "$TEE_PID" ]]; then
        exec 1>&5 2>&6
        for _ in {1..50}; do
            kill -0 "$TEE_PID" 2>/dev/null || break
            sleep 0.1
        done
        TEE_PID=""
    fi
}

run() {  # run CMD...: run in the background and wait, so a signal is handled at once
    "$@" </dev/null &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

# shellcheck disable=SC2317  # called from the signal trap
stop_child() {  # stop the command being waited for (timeout passes the signal to its group)
    local pid=$CHILD
    CHILD=""
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in {1..100}; do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# retry WHAT CLEAN_DIR CMD...: a git network step under gate.git-timeout, gate.git-retries
# attempts, 2 s before the first retry, doubling.  Each attempt and each wait runs through
# `run`, so that a signal is handled at once.  (shellcheck -x follows the source.)
# shellcheck source-path=SCRIPTDIR source=lib/retry.sh disable=SC1091
source "$here/lib/retry.sh"
retry_configure "$GATE_GIT_TIMEOUT" "$GATE_GIT_RETRIES" 2 || exit 2
# shellcheck disable=SC2317  # called by retry
retry_exec() { run "$@"; }

fail_early() {  # fail_early MESSAGE: a failure before any node was fetched
    say "error: $1"
    exit 1
}

# -- 1. the workspace --------------------------------------------------------------
prepare_project() {  # prepare_project PROJECT
    local project=$1 name dir url branch
    name=${project##*/}
    dir=$SRC/$name
    url=$GATE_GIT_BASE/$project
    if [[ -d "$dir/.git" ]]; then
        say "$project: git remote set-url origin $url"
        git -C "$dir" remote set-url -- origin "$url"
        say "$project: git fetch --prune origin"
        retry "$project: git fetch origin" "" git -C "$dir" fetch -q --prune -- origin \
            || fail_early "$project: cannot fetch from $url; no node was fetched"
    else
        say "$project: git clone $url"
        retry "$project: git clone $url" "$dir" git clone -q --no-checkout -- "$url" "$dir" \
            || fail_early "$project: cannot clone $url; no node was fetched"
    fi
    branch=${CHANGE_BRANCH:-$GATE_BRANCH}
    if ! git -C "$dir" rev-parse -q --verify "refs/remotes/origin/$branch" >/dev/null; then
        [[ "$project" != "$CHANGE_PROJECT" ]] \
            || fail_early "$project: the change's branch $branch is not in $url; no node was fetched"
        branch=$GATE_BRANCH
        git -C "$dir" rev-parse -q --verify "refs/remotes/origin/$branch" >/dev/null \
            || fail_early "$project: branch $branch is not in $url; no node was fetched"
    fi
    say "$project: git checkout -B $branch origin/$branch && git clean -fdx"
    git -C "$dir" checkout -q -f -B "$branch" "origin/$branch" --
    git -C "$dir" clean -q -fdx
    if [[ "$project" == "$CHANGE_PROJECT" ]]; then
        say "$project: git fetch $CHANGE_URL/$project $CHANGE_REF"
        retry "$project: git fetch $CHANGE_REF" "" \
            git -C "$dir" fetch -q -- "$CHANGE_URL/$project" "$CHANGE_REF" \
            || fail_early "$project: cannot fetch change $CHANGE_REF from $CHANGE_URL/$project; no node was fetched"
        say "$project: git merge FETCH_HEAD ($(git -C "$dir" log -1 --format='%h %s' FETCH_HEAD))"
        if ! git -C "$dir" -c user.name=devstack-gate -c user.email=devstack-gate@localhost \
                merge -q --no-edit FETCH_HEAD; then
            git -C "$dir" merge --abort >/dev/null 2>&1 || true
            fail_early "merge conflict: change $CHANGE_REF of $project does not merge into $branch; no node was fetched"
        fi
    fi
}

prepare_workspace() {
    local project found=""
    if [[ -n "$CHANGE_PROJECT" ]]; then
        for project in "${GATE_PROJECTS[@]}"; do
            [[ "$project" != "$CHANGE_PROJECT" ]] || found=1
        done
        [[ -n "$found" ]] || fail_early "change project $CHANGE_PROJECT is not in gate.projects (${GATE_PROJECTS[*]}) of $GATE_CONFIG"
    fi
    mkdir -p "$SRC"
    for project in "${GATE_PROJECTS[@]}"; do
        prepare_project "$project"
    done
    for project in "${GATE_PROJECTS[@]}"; do
        say "$project head: $(git -C "$SRC/${project##*/}" log -1 --format='%h %s')"
    done
}

# -- 2. the node -------------------------------------------------------------------
fetch_node() {
    local rc=0 avoid=() p
    for p in "${AVOID[@]}"; do avoid+=(--avoid "$p"); done
    say "fetching a node of label $GATE_LABEL (waiting up to $GATE_FETCH_WAIT s)${AVOID[*]:+, preferring another provider than ${AVOID[*]}}"
    run "$PYTHON" "$here/devstack-vm-fetch.py" --config "$GATE_CONFIG" --wait "$GATE_FETCH_WAIT" \
        "${avoid[@]}" -- "$GATE_LABEL" >"$TMP/node.sh" || rc=$?
    if ((rc != 0)); then
        # fetch's own line above says why (no node in time, the database, the config)
        say "error: devstack-vm-fetch gave no node of label $GATE_LABEL for $JOB (exit $rc)"
        ((rc == 2)) || say "$JOB: infra failure: no node of label $GATE_LABEL (attempt $ATTEMPT of $GATE_ATTEMPTS)"
        exit $((rc == 2 ? 2 : 1))
    fi
    # shellcheck source=/dev/null
    source "$TMP/node.sh"
    cat "$TMP/node.sh"
    check_node
    [[ -z "$INFRA" ]] || return 0
    TARGET=$NODE_USERNAME@$NODE_IP
    local host=$NODE_IP
    ((NODE_SSH_PORT == 22)) || host="[$NODE_IP]:$NODE_SSH_PORT"
    printf '%s %s\n' "$host" "$NODE_HOST_KEY" >"$TMP/known_hosts"
    local ssh=(ssh -i "$GATE_SSH_KEY" -p "$NODE_SSH_PORT" -o BatchMode=yes
               -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=\"$TMP/known_hosts\""
               -o GlobalKnownHostsFile=/dev/null -o CheckHostIP=no -o IdentitiesOnly=yes
               -o ConnectTimeout=30 -o "ServerAliveInterval=$GATE_ALIVE_INTERVAL"
               -o "ServerAliveCountMax=$GATE_ALIVE_COUNT"
               -o LogLevel=ERROR)
    # One wrapper for ssh and for rsync -e, so both pin the same host key.
    {
        printf '#!/usr/bin/env bash\nexec'
        printf ' %q' "${ssh[@]}"
        # shellcheck disable=SC2016  # "$@" is for the wrapper, not for us
        printf ' "$@"\n'
    } >"$TMP/ssh"
    chmod 700 "$TMP/ssh"
    say "node $NODE_NAME ($NODE_PROVIDER, label $NODE_IMAGE) at $NODE_IP:$NODE_SSH_PORT is ours for $JOB"
}

check_node() {  # the node's values from the database reach ssh, rsync and known_hosts
    local bad=""
    [[ $NODE_SSH_PORT =~ ^[1-9][0-9]*$ ]] || bad="NODE_SSH_PORT"
    [[ $NODE_IP =~ ^[A-Za-z0-9:._-]+$ && $NODE_IP != -* ]] || bad+=" NODE_IP"
    [[ $NODE_USERNAME =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || bad+=" NODE_USERNAME"
    [[ ! $NODE_HOST_KEY =~ [[:cntrl:]] ]] || bad+=" NODE_HOST_KEY"
    NODE_NAME=${NODE_NAME//[[:cntrl:]]/?}
    if [[ -n "$bad" ]]; then
        [[ -n "$NODE_ID" ]] || fail_early "devstack-vm-fetch gave no node id"
        infra_failure "node $NODE_NAME ($NODE_PROVIDER): unusable ${bad# } in the database; refusing to use it" "unusable${bad}"
    fi
}

# -- 3. to the node -----------------------------------------------------------------
check_host_key() {
    if [[ -z "$NODE_HOST_KEY" ]]; then
        infra_failure "no SSH host key recorded for node $NODE_NAME ($NODE_PROVIDER); refusing to use it" "no host key recorded"
        return 0
    fi
    local attempt rc
    for attempt in 1 2 3; do
        rc=0
        run timeout --kill-after=10 60 "$TMP/ssh" -- "$TARGET" true >"$TMP/ssh-check.txt" 2>&1 || rc=$?
        cat "$TMP/ssh-check.txt"
        ((rc != 0)) || return 0
        if grep -q -e 'Host key verification failed' -e 'IDENTIFICATION HAS CHANGED' \
                "$TMP/ssh-check.txt"; then
            infra_failure "node $NODE_NAME ($NODE_PROVIDER) at $NODE_IP:$NODE_SSH_PORT: SSH host key differs from the one recorded when the node was made ready; refusing to use it" "host key changed"
            return 0
        fi
        say "node $NODE_NAME ($NODE_PROVIDER): SSH check failed (exit $rc), attempt $attempt of 3"
        ((attempt == 3)) || run sleep 2
    done
    NODE_SILENT=1
    infra_failure "node $NODE_NAME ($NODE_PROVIDER) at $NODE_IP:$NODE_SSH_PORT: SSH does not answer" "no SSH"
}

password() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

write_devstack_config() {
    local dir=$SRC/devstack
    if [[ ! -d "$dir" ]]; then
        say "no devstack checkout in the workspace: no local.conf written"
        return 0
    fi
    local conf=$dir/local.conf
    : >"$conf"
    chmod 600 "$conf"   # before any password is in it
    cat >"$conf" <<EOF
# Written by devstack-vm-gate.sh for $JOB on node $NODE_NAME.
[[local|localrc]]
ADMIN_PASSWORD=$(password)
DATABASE_PASSWORD=$(password)
RABBIT_PASSWORD=$(password)
SERVICE_PASSWORD=$(password)
SERVICE_TOKEN=$(password)
# Use the checkouts the gate prepared (the change is merged there).
DEST=\$HOME/workspace
RECLONE=no
LOGDIR=\$HOME/workspace/logs
LOGFILE=\$HOME/workspace/logs/stack.sh.log
SCREEN_LOGDIR=\$HOME/workspace/logs
EOF
    if [[ -n "$GATE_TEMPEST" ]]; then
        echo 'enable_service tempest' >>"$conf"
    fi
    say "wrote devstack/local.conf for node $NODE_NAME (service passwords generated for this run, not shown)"
}

copy_to_node() {
    say "copying $SRC/ to node $NODE_NAME:workspace/ (rsync, up to $GATE_RSYNC_TIMEOUT s)"
    local rc=0
    run timeout --kill-after=10 "$GATE_RSYNC_TIMEOUT" \
        rsync -a --delete -e "'$TMP/ssh'" -- "$SRC/" "$TARGET:workspace/" || rc=$?
    ((rc == 0)) || infra_failure "copying the workspace to node $NODE_NAME ($NODE_PROVIDER) failed (rsync exit $rc)" "workspace copy failed"
}

# -- 4. the test -------------------------------------------------------------------
sq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

run_test() {
    local remote rc=0 started=$SECONDS
    remote="mkdir -p ~/workspace/logs && cd ~/workspace && DEVSTACK_GATE_LABEL=$(sq "$GATE_LABEL") exec timeout --kill-after=30 $GATE_TEST_TIMEOUT bash -c $(sq "$GATE_TEST_COMMAND")"
    say "running on node $NODE_NAME ($NODE_PROVIDER), in ~/workspace, for up to $GATE_TEST_TIMEOUT s: $GATE_TEST_COMMAND"
    run timeout --kill-after=30 "$GATE_TEST_SAFETY_TIMEOUT" "$TMP/ssh" -- "$TARGET" "$remote" || rc=$?
    case "$rc" in
        0) RESULT=success ;;
        124|137) RESULT=timeout ;;
        *) RESULT=failure ;;
    esac
    # ssh's own 255: the connection to the node broke (keep-alives unanswered for
    # alive-interval x alive-count s, or the node went away), unless the node
    # still answers, when it was the test command's own exit status.
    if ((rc == 255)) && ! node_answers; then
        NODE_SILENT=1
        infra_failure "node $NODE_NAME ($NODE_PROVIDER) stopped answering during the test command (ssh exit 255 after $((SECONDS - started)) s; it does not answer SSH now)" "node stopped answering"
        return 0
    fi
    say "test command on node $NODE_NAME: $RESULT (exit $rc) after $((SECONDS - started)) s"
}

node_answers() {  # does the node answer SSH now (within alive-interval x alive-count s)?
    local limit=$((${GATE_ALIVE_INTERVAL%.*} * GATE_ALIVE_COUNT))
    run timeout --kill-after=5 "$limit" "$TMP/ssh" -o "ConnectTimeout=$limit" -- "$TARGET" true \
        >/dev/null 2>&1
}

result_text() {  # result_text RESULT: the result with its failure class, as the last line says it
    case "$1" in
        failure) echo "failure (test failure)" ;;
        infra) echo "infra failure" ;;
        *) echo "$1" ;;
    esac
}

infra_failure() {  # infra_failure MESSAGE DETAIL: this attempt's node failed, not the change
    say "error: $1"
    INFRA=$2
}

# -- 5. logs and the result ----------------------------------------------------------
collect_logs() {  # collect_logs TIMEOUT [DIR]: ~/workspace/logs of the node -> $LOGS/DIR/ (node)
    [[ -z "$LOGS_COLLECTED" && -n "$TARGET" ]] || return 0
    LOGS_COLLECTED=1
    if [[ -n "$NODE_SILENT" ]]; then    # an rsync would only wait out its timeout
        say "no logs copied from node $NODE_NAME: it does not answer SSH"
        return 0
    fi
    local dir=${2:-node}
    mkdir -p "$LOGS/$dir"
    say "copying logs from node $NODE_NAME:workspace/logs/ to $LOGS/$dir/ (up to $1 s)"
    local rc=0
    # (the remote mkdir: a run that never got as far as the test has no logs there)
    run timeout --kill-after=10 "$1" rsync -a -e "'$TMP/ssh'" \
        --rsync-path='mkdir -p workspace/logs && rsync' \
        -- "$TARGET:workspace/logs/" "$LOGS/$dir/" || rc=$?
    ((rc == 0)) || say "copying logs from node $NODE_NAME failed (rsync exit $rc); continuing"
}

finish_node() {  # finish_node RESULT [DETAIL]: record the result; delete or hold the node
    [[ -z "$FINISHED" ]] || return 0
    FINISHED=1
    local detail=() rc=0
    [[ -z "${2:-}" ]] || detail=(--detail "$2")
    "$PYTHON" -m devstackgate.cmd.finish --config "$GATE_CONFIG" --node-id "$NODE_ID" \
        --result-id "$NODE_RESULT_ID" --result "$1" "${detail[@]}" </dev/null || rc=$?
    FINISH_RC=$rc
    ((rc == 0)) || say "recording the result of node $NODE_NAME failed (exit $rc); the reaper reclaims it after max-used-hours"
}

# -- several cells -------------------------------------------------------------------
CELL_PIDS=()

run_cells() {  # the parent of a multi-cell run: one cell run per enabled label, at once
    local i label rc failed=0 rcs=()
    for i in "${!GATE_SKIPPED[@]}"; do
        say "cell ${GATE_SKIPPED[i]}: skipped: ${GATE_SKIPPED_WHY[i]}"
    done
    if ((${#GATE_LABELS[@]} == 0)); then
        say "error: $JOB: every cell of this run is disabled; nothing was tested"
        exit 1
    fi
    for label in "${GATE_LABELS[@]}"; do     # each cell writes its own local.conf
        rm -rf "$WORKSPACE/cells/$label"
        mkdir -p "$WORKSPACE/cells/$label"
        cp -a "$SRC" "$WORKSPACE/cells/$label/workspace"
    done
    end_step
    say "$JOB: testing ${#GATE_LABELS[@]} cell(s) at once, each on its own node: ${GATE_LABELS[*]}"
    for label in "${GATE_LABELS[@]}"; do
        "$here/devstack-vm-gate.sh" "${config_args[@]}" --cell "$label" </dev/null \
            > >(sed -u "s/^/[$label] /") 2>&1 &
        CELL_PIDS+=("$!")
    done
    for i in "${!CELL_PIDS[@]}"; do
        rc=0
        wait "${CELL_PIDS[i]}" || rc=$?
        rcs+=("$rc")
    done
    CELL_PIDS=()
    wait    # the prefixing of the last lines
    rm -rf "$WORKSPACE/cells"
    for i in "${!GATE_LABELS[@]}"; do
        label=${GATE_LABELS[i]}
        if ((rcs[i] == 0)); then
            say "cell $label: passed; logs in $LOGS/$label"
        else
            say "cell $label: FAILED (exit ${rcs[i]}); logs in $LOGS/$label"
            failed=$((failed + 1))
        fi
    done
    for i in "${!GATE_SKIPPED[@]}"; do
        say "cell ${GATE_SKIPPED[i]}: skipped: ${GATE_SKIPPED_WHY[i]}"
    done
    if ((failed)); then
        say "$JOB: failure: $failed of ${#GATE_LABELS[@]} enabled cell(s) failed"
        exit 1
    fi
    say "$JOB: success: all ${#GATE_LABELS[@]} enabled cell(s) passed${GATE_SKIPPED[*]:+; skipped: ${GATE_SKIPPED[*]}}"
    exit 0
}

# -- traps ---------------------------------------------------------------------------
# shellcheck disable=SC2317  # trap handlers
on_error() {  # on_error STATUS LINE COMMAND: what set -e is about to exit for, in one line
    ((BASH_SUBSHELL == 0)) || return 0   # the shell that exits says it
    say "error: unexpected failure (exit $1) in step ${STEP:-settings} at line $2 of devstack-vm-gate.sh: ${3%%$'\n'*}"
}

# shellcheck disable=SC2317  # trap handlers
on_signal() {  # on_signal NAME NUMBER
    # Run to the end whatever fails, even with the console gone.
    set +e
    trap - ERR
    trap '' INT TERM HUP PIPE
    stop_child
    end_step
    if ((${#CELL_PIDS[@]})); then   # each cell records its own abort
        say "received SIG$1: aborting the cells ${GATE_LABELS[*]}"
        kill -TERM "${CELL_PIDS[@]}" 2>/dev/null
        wait
        exit $((128 + $2))
    fi
    begin_step aborted
    say "received SIG$1: aborting${NODE_NAME:+ the run on node $NODE_NAME ($NODE_PROVIDER)}"
    if [[ -n "$NODE_ID" && -z "$FINISHED" ]]; then
        collect_logs "$GATE_ABORT_COPY_TIMEOUT"
        finish_node aborted "aborted by SIG$1"
    fi
    end_step
    exit $((128 + $2))
}

# shellcheck disable=SC2317  # trap handlers
on_exit() {
    local rc=$?
    set +e
    trap - ERR
    trap '' INT TERM HUP PIPE
    if [[ -n "$NODE_ID" && -z "$FINISHED" ]]; then
        # An unexpected error once the node was ours: keep its logs, hold it.
        end_step
        begin_step finish
        say "unexpected exit (status $rc) on node $NODE_NAME; collecting logs and holding it"
        collect_logs "$GATE_RSYNC_TIMEOUT"
        finish_node failure "devstack-vm-gate.sh exited unexpectedly"
        rc=1
    fi
    end_step
    [[ -z "$TMP" ]] || rm -rf "$TMP"
    exit "$rc"
}

set -o errtrace
trap 'on_error "$?" "$LINENO" "$BASH_COMMAND"' ERR
trap on_exit EXIT
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
trap 'on_signal HUP 1' HUP

# -- main ------------------------------------------------------------------------------
rm -rf "$LOGS"
mkdir -p "$LOGS"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/devstack-vm-gate.XXXXXX")
RESULT=""

if [[ -z "$CELL" ]]; then
    begin_step workspace
    labels="label${GATE_LABELS[1]:+s} ${GATE_LABELS[*]:-none}${GATE_SKIPPED[*]:+ (skipped: ${GATE_SKIPPED[*]})}"
    if [[ -n "$CHANGE_PROJECT" ]]; then
        say "$JOB: change $CHANGE_ID ($CHANGE_REF) of $CHANGE_PROJECT on ${CHANGE_BRANCH:-$GATE_BRANCH}; $labels; workspace $SRC"
    else
        say "$JOB: no change under test (no ZUUL_* or GERRIT_* variables): testing the branch heads; $labels; workspace $SRC"
    fi
    prepare_workspace
    if ((${#GATE_LABELS[@]} != 1 || ${#GATE_SKIPPED[@]})); then
        run_cells
    fi
fi

# Up to gate.attempts nodes: a node that fails (INFRA: no SSH, a changed host key,
# a failed copy, stopping mid-run) is held briefly for diagnosis and another one
# is taken, from another provider when one has a node ready.  A test failure or a
# timeout is the change's verdict and is never retried.
ATTEMPT=0
AVOID=()
while :; do
    ATTEMPT=$((ATTEMPT + 1))
    INFRA=""
    begin_step fetch
    fetch_node

    begin_step copy-to-node
    [[ -n "$INFRA" ]] || check_host_key
    [[ -n "$INFRA" ]] || write_devstack_config
    [[ -n "$INFRA" ]] || copy_to_node

    if [[ -z "$INFRA" ]]; then
        begin_step test
        run_test
    fi

    begin_step copy-logs
    if [[ -n "$INFRA" ]]; then
        collect_logs "$GATE_ABORT_COPY_TIMEOUT" "node-attempt-$ATTEMPT"
    else
        collect_logs "$GATE_RSYNC_TIMEOUT"
    fi

    begin_step finish
    if [[ -z "$INFRA" ]]; then
        break
    fi
    RESULT=infra
    finish_node infra "$INFRA"
    if ((ATTEMPT >= GATE_ATTEMPTS)); then
        say "attempt $ATTEMPT of $GATE_ATTEMPTS: node $NODE_NAME ($NODE_PROVIDER) failed ($INFRA); no attempt left"
        break
    fi
    say "attempt $ATTEMPT of $GATE_ATTEMPTS: node $NODE_NAME ($NODE_PROVIDER) abandoned ($INFRA), held $GATE_INFRA_HOLD_MINUTES min with reason infra; the change is not at fault: taking another node"
    AVOID+=("$NODE_PROVIDER")
    NODE_ID="" FINISHED="" FINISH_RC="" LOGS_COLLECTED="" NODE_SILENT="" TARGET=""
    NODE_RESULT_ID=""
done

[[ "$RESULT" == infra ]] || finish_node "$RESULT"
tried=""
((ATTEMPT == 1)) || tried=" (attempt $ATTEMPT of $GATE_ATTEMPTS)"
if [[ "$RESULT" == infra && "$FINISH_RC" == 0 ]]; then
    say "$JOB: infra failure on node $NODE_NAME ($NODE_PROVIDER)$tried: $INFRA, held $GATE_INFRA_HOLD_MINUTES min; logs in $LOGS"
elif [[ "$RESULT" != success && "$FINISH_RC" == 0 ]]; then
    say "$JOB: $(result_text "$RESULT") on node $NODE_NAME ($NODE_PROVIDER)$tried, held for $GATE_HOLD_HOURS h; logs in $LOGS"
else
    say "$JOB: $(result_text "$RESULT") on node $NODE_NAME ($NODE_PROVIDER)$tried; logs in $LOGS"
fi
end_step
[[ "$RESULT" == success ]] || exit 1
exit 0

# shellcheck shell=bash
# baremetal-lib.sh: what baremetal-setup.sh and baremetal-reset.sh share; sourced, not run.
# Install it beside them (both look for it in their own directory).  The sourcing
# script sets PROG (its name, for messages) and DRY_RUN (1: print commands, run none).

die() {  # die STATUS MESSAGE: one line on stderr
    printf '%s: %s\n' "$PROG" "$2" >&2
    exit "$1"
}

q() {  # q WORD...: the words shell-quoted, space-separated
    local out
    printf -v out '%q ' "$@"
    printf '%s' "${out% }"
}

trace() {  # trace ARGV...: "+ " and the shell-quoted command
    printf '+ %s\n' "$(q "$@")"
}

say() {  # say MESSAGE: a progress line (real runs only; a dry run prints commands alone)
    if ((!DRY_RUN)); then printf '%s: %s\n' "$PROG" "$*"; fi
}

last_line() {  # last_line TEXT: its last non-blank line, without the leading blanks
    local line last=
    while IFS= read -r line; do
        line=${line#"${line%%[![:space:]]*}"}
        if [[ -n $line ]]; then last=$line; fi
    done <<<"$1"
    printf '%s' "$last"
}

STATUS=0
ERR=
attempt() {  # attempt ARGV...: trace and run; STATUS and ERR (its last stderr line) say how it went
    trace "$@"
    STATUS=0
    ERR=
    if ((DRY_RUN)); then return 0; fi
    local err
    { err=$("$@" 2>&1 1>&3 3>&-); } 3>&1 || STATUS=$?
    if ((STATUS == 0)); then
        if [[ -n $err ]]; then printf '%s\n' "$err" >&2; fi
    else
        ERR=$(last_line "$err")
    fi
    return 0
}

failure() {  # failure WHAT ARGV...: the one-line description of a failed attempt
    local what=$1
    shift
    printf "%s failed: \`%s\` exited %d%s" "$what" "$(q "$@")" "$STATUS" "${ERR:+: $ERR}"
}

run() {  # run WHAT ARGV...: attempt; on failure one line on stderr and exit 1
    local what=$1
    shift
    attempt "$@"
    if ((STATUS != 0)); then die 1 "$(failure "$what" "$@")"; fi
}

check() {  # check DRY_ANSWER ARGV...: trace; success of the (silenced) command; DRY_ANSWER in a dry run
    local answer=$1
    shift
    trace "$@"
    if ((DRY_RUN)); then
        [[ $answer == yes ]]
        return
    fi
    "$@" >/dev/null 2>&1
}

need_name() {  # need_name OPTION VALUE KIND
    if ! [[ $2 =~ ^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$ ]] || [[ $2 == . || $2 == .. ]]; then
        die 2 "$1: $(q "$2") is not a valid $3 name (letters, digits, + _ . -, not starting with -)"
    fi
}

need_size() {  # need_size OPTION VALUE
    if ! [[ $2 =~ ^[0-9]+(\.[0-9]+)?[bBsSkKmMgGtTpPeE]?$ ]]; then
        die 2 "$1: $(q "$2") is not a size (a number and an optional unit letter, as lvcreate -L takes)"
    fi
}

need_path() {  # need_path OPTION VALUE
    if [[ -z $2 || $2 == -* ]]; then
        die 2 "$1: $(q "$2") is not a usable path (empty or starting with -)"
    fi
}

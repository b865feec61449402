#!/usr/bin/env bash
# dev.sh: the set-up commands of a fresh machine.
#
#   ./dev.sh test [PYTEST ARGS...]   install what is missing, find or start MariaDB, run the tests
#   ./dev.sh demo [--keep] [--workdir DIR]
#                                    install what is missing, then run the whole pool (images,
#                                    launch, gate jobs, reap) on two local clouds and SQLite
#   ./dev.sh bench [--profile short|full] [--only NAME] [--json PATH]
#                                    install what is missing, find or start MariaDB, run the
#                                    benchmarks in bench/ and print their table (and JSON)
#   ./dev.sh soak [--profile short|long] [--seed N] [--json PATH]
#                                    install what is missing (a MariaDB server for the long
#                                    profile, which runs its own), run the pool under faults
#
# It installs missing system packages with apt-get when run as root (rsync, the
# OpenSSH client, git, shellcheck, curl, chromium and a font for the status page's
# browser test, a MariaDB server when none answers), keeps a virtualenv in
# .venv (reinstalled when pyproject.toml changes), and runs pytest.
#
# MariaDB for the tests: $DEVSTACK_GATE_TEST_MYSQL_URL if set, else
# 127.0.0.1:3306 ($DEVSTACK_GATE_MYSQL_PROBE_URL) if a server answers there as root
# without a password, else a
# private mariadbd on a temporary datadir and socket, stopped on exit.  With
# CI=true a missing server is a failure, never a silent skip.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
VENV=${DEVSTACK_GATE_VENV:-$here/.venv}
PY=${PYTHON:-python3}
MYSQL_START_TIMEOUT=${DEVSTACK_GATE_MYSQL_START_TIMEOUT:-60}
# Where a shared server is looked for before a private one is started.
MYSQL_PROBE_URL=${DEVSTACK_GATE_MYSQL_PROBE_URL:-mysql://root@127.0.0.1:3306/}
private_mysql_dir=""

say() { printf '%s dev.sh: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*" >&2; }
die() { say "error: $*"; exit 1; }

cleanup() {
    if [[ -n "$private_mysql_dir" ]]; then
        if [[ -f "$private_mysql_dir/mysqld.pid" ]]; then
            kill "$(cat "$private_mysql_dir/mysqld.pid")" 2>/dev/null || true
            for _ in $(seq 1 50); do
                [[ -f "$private_mysql_dir/mysqld.pid" ]] || break
                sleep 0.2
            done
        fi
        rm -rf "$private_mysql_dir"
    fi
}
trap cleanup EXIT

apt_updated=""
apt_install() {
    # apt_install PACKAGE...: install Debian packages when we may, else say what is missing.
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing system packages: $*; install them (for example: sudo apt-get install $*)"
    fi
    if [[ -z "$apt_updated" ]]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_system_packages() {
    local missing=()
    command -v rsync >/dev/null 2>&1 || missing+=(rsync)
    command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
    command -v git >/dev/null 2>&1 || missing+=(git)
    command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
    command -v tar >/dev/null 2>&1 || missing+=(tar)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    # The status page's test renders it in a real headless browser.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    [[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    fi
}

ensure_venv() {
    local stamp="$VENV/.devstack-gate-installed"
    local want
    # (the install mode is part of the stamp: changing it reinstalls)
    want=$( { cat pyproject.toml; echo editable_mode=compat; } | sha256sum | cut -d' ' -f1)
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating virtualenv $VENV"
        "$PY" -m venv "$VENV" || die "cannot create a virtualenv with $PY (is python3-venv installed?)"
    fi
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        say "installing devstack-gate with its test extras into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
        # compat: a plain path in a .pth, not setuptools' import-hook finder, which
        # costs every Python start-up (every fetch) about 30 ms.
        "$VENV/bin/python" -m pip install -q -e ".[test]" --config-settings editable_mode=compat \
            >"$VENV/pip-install.log" 2>&1 \
            || { tail -n 30 "$VENV/pip-install.log" >&2; die "pip install failed (log: $VENV/pip-install.log)"; }
        echo "$want" >"$stamp"
    fi
}

mysql_answers() {
    # mysql_answers URL: does a server answer there?
    "$VENV/bin/python" - "$1" <<'PYEOF'
import sys, urllib.parse
import mysql.connector
u = urllib.parse.urlsplit(sys.argv[1])
q = urllib.parse.parse_qs(u.query)
kw = dict(user=u.username or 'root', connection_timeout=3)
if 'unix_socket' in q:
    kw['unix_socket'] = q['unix_socket'][0]
else:
    kw.update(host=u.hostname or '127.0.0.1', port=u.port or 3306)
try:
    mysql.connector.connect(**kw).close()
except Exception as e:
    print(str(e).splitlines()[0], file=sys.stderr)
    sys.exit(1)
PYEOF
}

find_mariadbd() {
    local b
    for b in mariadbd mysqld; do
        if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
        if [[ -x "/usr/sbin/$b" ]]; then echo "/usr/sbin/$b"; return 0; fi
    done
    return 1
}

start_private_mysql() {
    local mysqld installdb
    mysqld=$(find_mariadbd) || return 1
    installdb=$(command -v mariadb-install-db || command -v mysql_install_db) || return 1
    private_mysql_dir=$(mktemp -d /tmp/devstack-gate-mysql.XXXXXX)
    say "starting a private MariaDB in $private_mysql_dir"
    "$installdb" --no-defaults --datadir="$private_mysql_dir/data" --user="$(id -un)" \
        --auth-root-authentication-method=normal --skip-test-db >"$private_mysql_dir/install.log" 2>&1 \
        || { cat "$private_mysql_dir/install.log" >&2; return 1; }
    "$mysqld" --no-defaults --datadir="$private_mysql_dir/data" --user="$(id -un)" \
        --socket="$private_mysql_dir/mysqld.sock" --pid-file="$private_mysql_dir/mysqld.pid" \
        --skip-networking --innodb-buffer-pool-size=64M \
        --log-error="$private_mysql_dir/error.log" >/dev/null 2>&1 &
    local url="mysql://root@localhost/?unix_socket=$private_mysql_dir/mysqld.sock"
    local waited=0
    until mysql_answers "$url" 2>/dev/null; do
        sleep 1
        waited=$((waited + 1))
        if ((waited >= MYSQL_START_TIMEOUT)); then
            tail -n 20 "$private_mysql_dir/error.log" >&2 || true
            die "private MariaDB did not answer within ${MYSQL_START_TIMEOUT}s"
        fi
    done
    export DEVSTACK_GATE_TEST_MYSQL_URL="$url"
}

ensure_mysql() {
    if [[ -n "${DEVSTACK_GATE_TEST_MYSQL_URL:-}" ]]; then
        mysql_answers "$DEVSTACK_GATE_TEST_MYSQL_URL" \
            || die "no MySQL server answers at \$DEVSTACK_GATE_TEST_MYSQL_URL"
        say "MySQL tests use \$DEVSTACK_GATE_TEST_MYSQL_URL"
        return
    fi
    if mysql_answers "$MYSQL_PROBE_URL" 2>/dev/null; then
        export DEVSTACK_GATE_TEST_MYSQL_URL="$MYSQL_PROBE_URL"
        say "MySQL tests use the server at $MYSQL_PROBE_URL"
        return
    fi
    if ! find_mariadbd >/dev/null; then
        apt_install mariadb-server || true
    fi
    start_private_mysql && return
    if [[ "${CI:-}" == "true" ]]; then
        die "no MySQL/MariaDB server answers and none could be started; CI never skips the MySQL tests"
    fi
    say "warning: no MySQL/MariaDB server; the MySQL tests will be skipped"
}

cmd_test() {
    ensure_system_packages
    ensure_venv
    ensure_mysql
    say "running pytest"
    set +e
    "$VENV/bin/python" -m pytest "$@"
    local rc=$?
    set -e
    return "$rc"
}

cmd_demo() {
    # The demo needs no MariaDB: the pool runs on the embedded SQLite default.
    ensure_system_packages
    ensure_venv
    # exec: Ctrl-C and SIGTERM reach the demo itself, which stops its steps and clouds.
    exec "$VENV/bin/python" -m devstackgate.demo "$@"
}

cmd_bench() {
    # The same MariaDB as the tests (found or started); the benchmarks make their own databases.
    ensure_system_packages
    ensure_venv
    ensure_mysql
    say "running the benchmarks"
    set +e
    "$VENV/bin/python" -m bench "$@"
    local rc=$?
    set -e
    return "$rc"
}

cmd_soak() {
    # The long profile starts (and restarts) a private mariadbd of its own.
    ensure_system_packages
    ensure_venv
    if ! find_mariadbd >/dev/null; then
        apt_install mariadb-server || say "warning: no MariaDB server; only the SQLite profile runs"
    fi
    set +e
    "$VENV/bin/python" -m soak "$@"
    local rc=$?
    set -e
    return "$rc"
}

case "${1:-}" in
    test) shift; cmd_test "$@" ;;
    demo) shift; cmd_demo "$@" ;;
    bench) shift; cmd_bench "$@" ;;
    soak) shift; cmd_soak "$@" ;;
    *) printf '%s\n' "usage: ./dev.sh test [PYTEST ARGS...]" \
           "       ./dev.sh demo [--keep] [--workdir DIR]" \
           "       ./dev.sh bench [--profile short|full] [--only NAME] [--json PATH]" \
           "       ./dev.sh soak [--profile short|long] [--seed N] [--json PATH]" >&2; exit 2 ;;
esac

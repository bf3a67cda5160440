# shellcheck shell=bash
# Shared helpers for the PayFlow scripts. Source it, do not run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ -n "${PAYFLOW_LIB_SOURCED:-}" ]]; then
    return 0
fi
PAYFLOW_LIB_SOURCED=1

# Derive the repo root from this file's location so the scripts work from any
# checkout path and any working directory.
PAYFLOW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PAYFLOW_SCRIPTS="$PAYFLOW_ROOT/scripts"
# Per-stack runtime state (data dirs, sockets, logs); gitignored.
PAYFLOW_STATE_ROOT="$PAYFLOW_ROOT/.payflow"
export PAYFLOW_ROOT PAYFLOW_SCRIPTS PAYFLOW_STATE_ROOT

# Keep build caches out of the repo so checkouts stay small and several
# worktrees can share one compiled dependency cache.
: "${HOME:=/root}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/payflow/target}"
export GOPATH="${GOPATH:-$HOME/.cache/payflow/go/path}"
export GOMODCACHE="${GOMODCACHE:-$HOME/.cache/payflow/go/mod}"
export GOCACHE="${GOCACHE:-$HOME/.cache/payflow/go/build}"

# OS packages the scripts need: the local stack's servers, etcd for the test
# cluster (scripts/testcluster.sh), Prometheus/promtool and PyYAML for
# scripts/check-observability.sh. Their own system services are never started.
# shellcheck disable=SC2034  # used by the scripts that source this file
PAYFLOW_STACK_APT_PACKAGES=(
    postgresql-15 postgresql-client-15
    redis-server redis-tools
    rabbitmq-server
    etcd-server
    curl ca-certificates
    prometheus python3-yaml
)

log() { printf '[%s] %s\n' "${PAYFLOW_LOG_TAG:-payflow}" "$*" >&2; }
warn() { log "WARNING: $*"; }
die() {
    log "ERROR: $*"
    exit 1
}

# Microseconds since the epoch; strips the decimal separator, which is
# locale dependent in EPOCHREALTIME.
now_us() { printf '%s' "${EPOCHREALTIME//[!0-9]/}"; }

# Seconds elapsed since a now_us timestamp, one decimal ("3.4").
elapsed_since() {
    local tenths=$((($(now_us) - $1) / 100000))
    printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

_payflow_apt_updated=0

# ensure_apt_packages PKG...: install only the packages that are missing.
# apt-get update runs at most once per process, and only when something is
# actually missing, so the common (all installed) case costs one dpkg-query.
ensure_apt_packages() {
    local missing=() pkg status
    if ! command -v dpkg-query >/dev/null 2>&1; then
        warn "dpkg-query not found; not a Debian system, assuming packages are present: $*"
        return 0
    fi
    for pkg in "$@"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == installed ]] || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0

    log "installing missing packages: ${missing[*]}"
    if ((_payflow_apt_updated == 0)); then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        _payflow_apt_updated=1
    fi
    # Packages like postgresql/redis/rabbitmq start their system-wide service
    # from postinst; we run private instances instead, so block those starts
    # (policy-rc.d exit 101 = "action forbidden") unless a policy already
    # exists. Ours carries a marker line and is removed by an EXIT trap of the
    # subshell, so Ctrl-C or a failure mid-install never leaves it behind (one
    # left by a killed run is reused and removed this time); a policy of
    # anyone else's is never touched.
    local rc=0
    (
        policy=/usr/sbin/policy-rc.d
        marker='# temporary: added by PayFlow scripts/lib.sh for one apt-get install'
        # shellcheck disable=SC2317  # only reached through the trap below
        remove_our_policy() {
            if grep -qxF "$marker" "$policy" 2>/dev/null; then
                as_root rm -f "$policy"
            fi
        }
        trap remove_our_policy EXIT
        trap 'exit 129' HUP
        trap 'exit 130' INT
        trap 'exit 143' TERM
        if [[ ! -e "$policy" ]]; then
            # noclobber: never replace a policy that appeared meanwhile.
            # shellcheck disable=SC2016  # expanded by that sh, not here
            as_root sh -c 'set -C; printf "#!/bin/sh\n%s\nexit 101\n" "$2" >"$1" && chmod 755 "$1"' \
                sh "$policy" "$marker" || true
        fi
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "${missing[@]}"
    ) || rc=$?
    ((rc == 0)) || die "apt-get install failed (exit $rc) for: ${missing[*]}"
}

# ensure_rust_components: rustfmt and clippy are needed by test.sh.
ensure_rust_components() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found in PATH (install Rust via rustup)"
    local comp=()
    cargo fmt --version >/dev/null 2>&1 || comp+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || comp+=(clippy)
    ((${#comp[@]} == 0)) && return 0
    command -v rustup >/dev/null 2>&1 || die "missing ${comp[*]} and rustup is not available to install them"
    log "installing rust components: ${comp[*]}"
    rustup component add "${comp[@]}"
}

# wait_for [-t SECONDS] [-i INTERVAL] CMD...: poll CMD until it succeeds or
# the deadline passes (returns 1 then). Defaults: WAIT_TIMEOUT (60s), 0.25s.
wait_for() {
    local timeout="${WAIT_TIMEOUT:-60}" interval=0.25
    while (($#)); do
        case "$1" in
            -t) timeout="$2"; shift 2 ;;
            -i) interval="$2"; shift 2 ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    (($#)) || die "wait_for: no command given"
    local deadline=$((EPOCHSECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((EPOCHSECONDS >= deadline)); then
            return 1
        fi
        sleep "$interval"
    done
}

# usage_of SCRIPT: print SCRIPT's help, the comment block at its top.
usage_of() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$1"
}

# payflow_ports: the ports of `payflow dev`'s components (gateway first), from
# the same PAYFLOW_*_PORT variables payflow reads.
payflow_ports() {
    echo "${PAYFLOW_GATEWAY_PORT:-3000}" "${PAYFLOW_WALLET_PORT:-3001}" "${PAYFLOW_TRANSACTION_PORT:-3002}" \
        "${PAYFLOW_NOTIFICATION_PORT:-3003}" "${PAYFLOW_AUTH_PORT:-3004}" "${PAYFLOW_WORKER_PORT:-3005}"
}

# wait_payflow_ready PID LOG TIMEOUT_S: wait until every component of
# `payflow dev` answers 200 on /readyz (the gateway alone can be ready while
# auth is still starting, and the first request would get a 503); die, showing
# LOG's tail, if PID exits first or time runs out.
wait_payflow_ready() {
    local pid="$1" log_file="$2" deadline=$((EPOCHSECONDS + $3)) port url
    for port in $(payflow_ports); do
        url="http://127.0.0.1:$port/readyz"
        until [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url")" == 200 ]]; do
            if ! kill -0 "$pid" 2>/dev/null; then
                log_tail "$log_file" 60
                die "payflow dev exited before $url answered 200"
            fi
            if ((EPOCHSECONDS >= deadline)); then
                log_tail "$log_file" 60
                die "$url did not answer 200 within ${3}s"
            fi
            sleep 0.25
        done
    done
}

# refuse_if_payflow_running: die when something listens on a port of
# `payflow dev` (a scripts/run.sh left running would answer our requests).
refuse_if_payflow_running() {
    local port
    for port in $(payflow_ports); do
        if port_open "$port"; then
            die "port $port is in use (scripts/run.sh running? stop it with: scripts/run.sh stop)"
        fi
    done
}

# hold_script_lock SCRIPT: one SCRIPT (run.sh, test.sh) per checkout at a
# time. Takes .payflow/SCRIPT.lock on fd 9 for the rest of this process and
# writes our pid into it; dies at once, naming the pid that holds it, when
# another run has it. The lock is released when this process ends. Children
# that may outlive us (servers) must not inherit it: start them with 9>&-
# (scripts/stack.sh replaces fd 9 with its own lock before starting any).
hold_script_lock() {
    local file="$PAYFLOW_STATE_ROOT/$1.lock" holder
    mkdir -p "$PAYFLOW_STATE_ROOT"
    # <>: open without truncating, so the holder's pid stays readable.
    exec 9<>"$file"
    if ! flock -n 9; then
        exec 9>&-
        holder="$(read_pidfile "$file")"
        if [[ -z "$holder" ]]; then
            sleep 0.2 # it may have just got the lock and not written its pid yet
            holder="$(read_pidfile "$file")"
        fi
        die "another scripts/$1 is running in this checkout (pid ${holder:-unknown}, lock $file); wait for it to end or stop it first"
    fi
    printf '%s\n' "$$" >"$file"
}

# release_script_lock SCRIPT: forget our pid in the lock file (the lock goes
# with the process); call it last, from the exit trap.
release_script_lock() {
    local file="$PAYFLOW_STATE_ROOT/$1.lock"
    if [[ "$(read_pidfile "$file")" == "$$" ]]; then
        : >"$file"
    fi
}

# script_lock_holder SCRIPT: the pid of the SCRIPT run holding its lock
# (empty when none runs; a pid left by a killed run is ignored).
script_lock_holder() {
    local pid
    pid="$(read_pidfile "$PAYFLOW_STATE_ROOT/$1.lock")"
    if pid_alive "$pid" "(^| |/)${1//./\\.}( |\$)"; then
        printf '%s' "$pid"
    fi
}

# start_run_stack: start the `run` stack with RabbitMQ and load its
# environment. A stack that was up before (scripts/run.sh --no-wait) is left
# up at the end: RUN_STACK_OURS says whether stop_run_stack_if_ours stops it.
RUN_STACK_OURS=0
start_run_stack() {
    local stack="$PAYFLOW_SCRIPTS/stack.sh" stack_env
    if port_open 24432; then
        port_open 24672 || log "the run stack is up without RabbitMQ; starting its RabbitMQ"
        log "the run stack was already up; it stays up afterwards"
    else
        RUN_STACK_OURS=1
    fi
    PAYFLOW_STACK_RABBITMQ=1 "$stack" start run || die "could not start the run stack"
    stack_env="$(PAYFLOW_STACK_RABBITMQ=1 "$stack" env run)" || die "scripts/stack.sh env run failed"
    eval "$stack_env"
}
stop_run_stack_if_ours() {
    if ((RUN_STACK_OURS)); then
        "$PAYFLOW_SCRIPTS/stack.sh" stop run || warn "stopping the run stack failed; try: scripts/stack.sh stop run"
    fi
}

# port_open PORT: is something listening on 127.0.0.1:PORT?
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pid_alive PID [REGEX]: process exists (and its name or command line
# matches REGEX), which guards against acting on a recycled pid from a stale
# pidfile.
pid_alive() {
    local pid="$1" pattern="${2:-}"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ -n "$pattern" ]] || return 0
    local comm cmdline
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [[ "$comm" =~ $pattern ]] && return 0
    cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)"
    [[ "$cmdline" =~ $pattern ]]
}

# pid_cwd_is PID DIR: the process's working directory is DIR (same inode, so
# symlinked paths agree). Tells our servers from the same server of another
# checkout, whose pid a stale pidfile may name.
pid_cwd_is() {
    [[ "$1" =~ ^[0-9]+$ && "/proc/$1/cwd" -ef "$2" ]]
}

# read_pidfile FILE: print the pid stored in FILE (empty if none).
read_pidfile() {
    [[ -r "$1" ]] || return 0
    head -n1 "$1" 2>/dev/null | tr -dc '0-9'
}

# stop_pid PID [SECONDS]: SIGTERM, wait up to SECONDS (default 30), then SIGKILL.
stop_pid() {
    local pid="$1" timeout="${2:-30}"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    if ! wait_for -t "$timeout" -i 0.1 _pid_gone "$pid"; then
        warn "pid $pid did not exit within ${timeout}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for -t 5 -i 0.1 _pid_gone "$pid" || true
    fi
}
_pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# log_tail FILE [LINES]: show the end of a server log to explain a failure.
log_tail() {
    local file="$1" lines="${2:-40}"
    if [[ -r "$file" ]]; then
        printf -- '----- last %s lines of %s -----\n' "$lines" "$file" >&2
        tail -n "$lines" "$file" >&2
        printf -- '----- end of %s -----\n' "$file" >&2
    else
        printf -- '(no log at %s)\n' "$file" >&2
    fi
}

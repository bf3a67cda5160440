#!/usr/bin/env bash
# Run PayFlow locally: build it, start the `run` stack (scripts/stack.sh),
# migrate, start `payflow dev`, wait until every component is ready (/readyz) and create
# two demo users.
#
# Usage:
#   scripts/run.sh            run in the foreground; Ctrl-C (or payflow
#                             exiting) stops payflow, and the run stack if
#                             this run started it
#   scripts/run.sh --no-wait  start everything, print how to use it, exit and
#                             leave it all running (stop it with `stop`)
#   scripts/run.sh stop       stop a detached run: payflow and the run stack
#   scripts/run.sh --help     this text
#
# One scripts/run.sh at a time per checkout: a second one exits at once. A
# payflow left by an earlier --no-wait is replaced once the new build
# succeeded. Nothing is started while ports 3000-3005 are taken by something
# else (a bench or chaos run, another payflow). A run stack that was already
# up (an earlier --no-wait, bench, chaos) is used and left up.
#
# Environment: PAYFLOW_GATEWAY_PORT (default 3000), the other PAYFLOW_*_PORT and PAYFLOW_*
# settings are passed through to payflow; PAYFLOW_READY_TIMEOUT (default 120) bounds the wait for /readyz.
#
# Logs: .payflow/run/payflow.log (payflow), .payflow/run/*/ (servers).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PAYFLOW_LOG_TAG=run

usage() {
    usage_of "${BASH_SOURCE[0]}"
}

STACK="$PAYFLOW_SCRIPTS/stack.sh"
RUN_DIR="$PAYFLOW_STATE_ROOT/run"
APP_LOG="$RUN_DIR/payflow.log"
APP_PID_FILE="$RUN_DIR/payflow.pid"
BIN="$CARGO_TARGET_DIR/debug/payflow"
GATEWAY_PORT="${PAYFLOW_GATEWAY_PORT:-3000}"
GATEWAY="http://127.0.0.1:$GATEWAY_PORT"
READY_TIMEOUT="${PAYFLOW_READY_TIMEOUT:-120}"

# app_ours PID: PID is a `payflow dev` that scripts/run.sh started from this
# checkout (it runs in the repo root), not a stranger that got a stale pid.
app_ours() {
    pid_alive "$1" '(^|/)payflow dev( |$)' && pid_cwd_is "$1" "$PAYFLOW_ROOT"
}

# stop_app: stop the payflow in the pidfile (an earlier run's).
stop_app() {
    local pid
    pid="$(read_pidfile "$APP_PID_FILE")"
    if app_ours "$pid"; then
        log "stopping payflow (pid $pid)"
        stop_pid "$pid" 30
    fi
    rm -f "$APP_PID_FILE"
}

# ports_free: die, before anything is started, when a port of payflow dev is
# taken (it would answer our /readyz and requests).
ports_free() {
    local port
    for port in $(payflow_ports); do
        if port_open "$port"; then
            die "port $port is already in use by another process (a bench or chaos run? see: ss -ltnp 'sport = :$port')"
        fi
    done
}

MODE=foreground
case "${1:-}" in
    "") ;;
    --no-wait) MODE=detach ;;
    stop)
        # Everything, whoever started it: that is this command's job.
        stop_app
        "$STACK" stop run
        exit 0
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac
(($# <= 1)) || { usage >&2; exit 2; }

# Until we exit (or hand over with --no-wait); our servers and payflow close
# fd 9 so they never hold it.
hold_script_lock run.sh

APP_PID=""
APP_STARTING=0
# Until we hand over (detach) or finish, any exit stops what this run started:
# its payflow, and the run stack only if it was not up before (another
# --no-wait, bench or chaos may be using it).
# shellcheck disable=SC2317  # only reached through the traps below
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Interrupted between starting payflow and noting its pid: $! has it.
    if ((APP_STARTING)) && [[ -z "$APP_PID" ]]; then
        APP_PID="${!:-}"
    fi
    if [[ -n "$APP_PID" ]] || ((RUN_STACK_OURS)); then
        log "shutting down"
    fi
    if [[ -n "$APP_PID" ]]; then
        if pid_alive "$APP_PID"; then
            log "stopping payflow (pid $APP_PID)"
            stop_pid "$APP_PID" 30
        fi
        if [[ "$(read_pidfile "$APP_PID_FILE")" == "$APP_PID" ]]; then
            rm -f "$APP_PID_FILE"
        fi
    fi
    stop_run_stack_if_ours
    release_script_lock run.sh
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A payflow left by an earlier --no-wait holds the ports until we replace it
# (after the build); anything else on them means we would start for nothing.
if ! app_ours "$(read_pidfile "$APP_PID_FILE")"; then
    ports_free
fi

ensure_apt_packages "${PAYFLOW_STACK_APT_PACKAGES[@]}"

cd "$PAYFLOW_ROOT"
log "building payflow (cargo build -p payflow)"
cargo build -p payflow
[[ -x "$BIN" ]] || die "build succeeded but $BIN is missing"

# The build works: replace an earlier --no-wait's payflow with it (no other
# run.sh runs, we hold the lock). Then the ports must be free.
if app_ours "$(read_pidfile "$APP_PID_FILE")"; then
    log "replacing the payflow of an earlier scripts/run.sh --no-wait"
    stop_app
fi
ports_free

start_run_stack

log "running migrations (payflow migrate)"
"$BIN" migrate

# Again, just before: something may have taken a port meanwhile.
ports_free
mkdir -p "$RUN_DIR"
log "starting payflow dev (log: $APP_LOG)"
printf '\n===== payflow dev started %s =====\n' "$(date -Is)" >>"$APP_LOG"
# setsid: own session, so closing the terminal (or Ctrl-C) does not hit
# payflow directly; we stop it via $APP_PID (cleanup) or the pidfile (`stop`).
# 9>&-: our lock stays ours.
APP_STARTING=1
setsid "$BIN" dev >>"$APP_LOG" 2>&1 </dev/null 9>&- &
APP_PID=$!
echo "$APP_PID" >"$APP_PID_FILE"

t0="$(now_us)"
wait_payflow_ready "$APP_PID" "$APP_LOG" "$READY_TIMEOUT"
log "payflow ready at $GATEWAY ($(elapsed_since "$t0")s)"

# register EMAIL PASSWORD NAME: create a demo user; 409 = exists already.
register() {
    local body code
    body="$(mktemp)"
    code="$(curl -s -o "$body" -w '%{http_code}' -m 10 \
        -H 'Content-Type: application/json' \
        -d "{\"email\":\"$1\",\"password\":\"$2\",\"name\":\"$3\"}" \
        "$GATEWAY/api/auth/register" || true)"
    case "$code" in
        200 | 201) log "demo user $1 created" ;;
        409) log "demo user $1 exists already" ;;
        *)
            cat "$body" >&2
            echo >&2
            rm -f "$body"
            log_tail "$APP_LOG" 40
            die "registering $1 failed with HTTP ${code:-no response}"
            ;;
    esac
    rm -f "$body"
}
register alice@payflow.local Alice-Passw0rd "Alice Demo"
register bob@payflow.local Bob-Passw0rd "Bob Demo"

# Quoted heredoc: the curl lines are printed literally for copy-pasting.
cat <<EOF

PayFlow is running.
  Gateway:      $GATEWAY   (readiness: $GATEWAY/readyz)
  Demo logins:  alice@payflow.local / Alice-Passw0rd
                bob@payflow.local   / Bob-Passw0rd
  payflow log:  $APP_LOG

Try it (copy-paste into a shell):
EOF
cat <<'EOF' | sed "s|@GATEWAY@|$GATEWAY|g"
  login() { curl -s -H 'Content-Type: application/json' -d "{\"email\":\"$1\",\"password\":\"$2\"}" \
    @GATEWAY@/api/auth/login; }
  field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
  ALICE=$(login alice@payflow.local Alice-Passw0rd); BOB=$(login bob@payflow.local Bob-Passw0rd)
  TOKEN=$(echo "$ALICE" | field 'd["accessToken"]'); ALICE_ID=$(echo "$ALICE" | field 'd["user"]["id"]')
  BOB_TOKEN=$(echo "$BOB" | field 'd["accessToken"]'); BOB_ID=$(echo "$BOB" | field 'd["user"]["id"]')
  curl -s -H "Authorization: Bearer $TOKEN" @GATEWAY@/api/auth/me; echo
  curl -s -H "Authorization: Bearer $TOKEN" @GATEWAY@/api/wallets/$ALICE_ID; echo
  # send money: 201 PENDING at once, COMPLETED a moment later
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -H "Idempotency-Key: demo-$RANDOM" -d "{\"toUserId\":\"$BOB_ID\",\"amount\":\"25.50\"}" \
    @GATEWAY@/api/transactions; echo
  sleep 1
  curl -s -H "Authorization: Bearer $TOKEN" @GATEWAY@/api/transactions; echo
  curl -s -H "Authorization: Bearer $TOKEN" @GATEWAY@/api/notifications/$ALICE_ID; echo
  curl -s -H "Authorization: Bearer $BOB_TOKEN" @GATEWAY@/api/notifications/$BOB_ID; echo
  curl -s -H "Authorization: Bearer $BOB_TOKEN" @GATEWAY@/api/wallets/$BOB_ID; echo
EOF

if [[ "$MODE" == detach ]]; then
    trap - EXIT INT TERM
    release_script_lock run.sh
    printf '\nLeft running in the background. Stop it with: scripts/run.sh stop\n'
    exit 0
fi

if ((RUN_STACK_OURS)); then
    printf '\nPress Ctrl-C to stop payflow and the run stack.\n'
else
    printf '\nPress Ctrl-C to stop payflow (the run stack was up before; it stays up: scripts/run.sh stop).\n'
fi
# wait returns when payflow exits or when a trapped signal arrives (the trap
# then exits and cleanup stops everything).
app_rc=0
wait "$APP_PID" || app_rc=$?
log_tail "$APP_LOG" 20
log "payflow exited with status $app_rc"
exit "$app_rc"

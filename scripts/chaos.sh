#!/usr/bin/env bash
# The kill -9 chaos experiment (a soak experiment, not a test; docs/chaos.md).
# Builds payflow (debug), starts the `run` stack with RabbitMQ unless it is up,
# migrates it, then runs tools/chaos/chaos.py: its own `payflow dev` under
# client load, killed with SIGKILL following a plan, then the checks of the
# money invariants in Postgres. Stops what it started when it ends, also on
# failure or Ctrl-C (the stack only if it started it).
#
# Usage: scripts/chaos.sh [OPTIONS]     (the options of `chaos.py run`)
#   --quick            the short plan random,burst,startup,redisflush,
#                      fault:transaction-after-hold,random (about 2 min in all)
#   --plan STEP,...    the steps to run, in order, e.g. random,burst,agedreversal
#                      (default: 11 steps with a RabbitMQ restart, 3-4 min)
#   --no-rabbit        drop the RabbitMQ restart steps (rabbit, rabbitkill)
#   --users N          users to register (default 40)
#   --workers N        client threads sending money (default 16)
#   --think LO,HI      seconds a client pauses between transfers (default 0.05,0.2)
#   --big-p P          share of 200.00-900.00 transfers, some refused (default 0)
#   --give-up-p P      share of transfers whose first request disconnects after
#                      2-30 ms, then retries with its key (default 0.05)
#   --reg-churn        also register new users during the chaos
#   --dry-run          check the options, print the plan and exit (no build)
#   -h, --help         this text
# The steps and fault points: python3 tools/chaos/chaos.py run --help.
#
# Exit status: 0 every check passed, 1 a check failed, 2 usage or setup error
# (build, stack, migration, ports 3000-3005 in use: a scripts/run.sh left
# running), 130/143 interrupted.
#
# Output: progress, events and PASS/FAIL lines on stdout, ending with
# `chaos: N checks passed, M failed (...)`; the run directory
# .payflow/run/chaos-<time>/ keeps chaos.log, payflow.log, results.json and the
# client's records.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PAYFLOW_LOG_TAG=chaos

usage() {
    usage_of "${BASH_SOURCE[0]}"
}

# Setup failures exit 2, as chaos.py's do: 1 means a check failed.
die() {
    log "ERROR: $*"
    exit 2
}

CHAOS="$PAYFLOW_ROOT/tools/chaos/chaos.py"
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        --dry-run) exec python3 "$CHAOS" run "$@" ;;
    esac
done
command -v python3 >/dev/null 2>&1 || die "python3 not found"
# Refuse bad options now, not after the build.
python3 "$CHAOS" run --dry-run "$@" >/dev/null || { log "see: scripts/chaos.sh --help"; exit 2; }

BIN="$CARGO_TARGET_DIR/debug/payflow"
# Written by chaos.py: the pid of the payflow dev it runs now.
CHAOS_PIDFILE="$PAYFLOW_STATE_ROOT/run/chaos-payflow.pid"

CHAOS_PID=""
# shellcheck disable=SC2317  # only reached through the traps below
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    if [[ -n "$CHAOS_PID" ]] && kill -0 "$CHAOS_PID" 2>/dev/null; then
        log "stopping chaos.py (pid $CHAOS_PID); it stops its payflow dev"
        stop_pid "$CHAOS_PID" 60
    fi
    # chaos.py stops its payflow itself; this is for one it could not stop.
    pid="$(read_pidfile "$CHAOS_PIDFILE")"
    if pid_alive "$pid" '(^|/)payflow( |$)'; then
        log "stopping the payflow dev chaos.py left running (pid $pid)"
        stop_pid "$pid" 30
    fi
    rm -f "$CHAOS_PIDFILE"
    stop_run_stack_if_ours
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

refuse_if_payflow_running

ensure_apt_packages "${PAYFLOW_STACK_APT_PACKAGES[@]}"
cd "$PAYFLOW_ROOT"

log "building (cargo build -p payflow)"
cargo build -p payflow || die "cargo build -p payflow failed"
[[ -x "$BIN" ]] || die "build succeeded but $BIN is missing"

start_run_stack

log "running migrations (payflow migrate)"
"$BIN" migrate >&2 || die "payflow migrate failed"

rm -f "$CHAOS_PIDFILE"
log "running tools/chaos/chaos.py run${*:+ $*}"
# In the background so a signal reaches our traps at once; cleanup stops it.
python3 "$CHAOS" run --bin "$BIN" "$@" &
CHAOS_PID=$!
rc=0
wait "$CHAOS_PID" || rc=$?
CHAOS_PID=""
exit "$rc"

#!/usr/bin/env bash
# The send-money benchmark (prints numbers; it is not a test). Builds payflow
# and payflow-bench (release), starts the `run` stack with RabbitMQ, measures
# what a wakeup costs the machine (pgbench, one client), migrates, starts
# `payflow dev` with the gateway's rate limits off, runs the load
# generator (tools/bench), then pgbench on the same Postgres for comparison.
# Stops what it started when it ends, also on failure or Ctrl-C.
#
# Usage: scripts/bench.sh [OPTIONS]
#   --quick               levels 1,8,32 at 5 s each
#   --levels LIST         concurrency levels, e.g. 1,2,4,8 (default 1,2,4,8,16,32,64,128);
#                         none: only the --paced-rates levels
#   --paced-rates LIST    extra open-loop levels at these rates, e.g. 200,400 (per second)
#   --duration SECS       seconds of load per level (default 10)
#   --users N             users to register (default 500)
#   --drain-timeout SECS  most seconds to wait for a level to settle (default 60)
#   --no-pgbench          skip the pgbench comparison
#   --no-paced            skip the last level: open loop at half the peak
#                         accepted/s (the p99 target is judged there)
#   -h, --help            this text
#
# Environment: PAYFLOW_PG_FAST=1 runs Postgres without fsync (only when this
# script starts the stack); PAYFLOW_READY_TIMEOUT (default 120) bounds the
# wait for /readyz; other PAYFLOW_* settings reach payflow dev.
#
# Output: the report on stdout and in .payflow/run/bench-<time>.md;
# payflow's log (level warn) in .payflow/run/bench-payflow.log.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PAYFLOW_LOG_TAG=bench

usage() {
    usage_of "${BASH_SOURCE[0]}"
}

LEVELS="1,2,4,8,16,32,64,128"
DURATION=10
USERS=500
DRAIN=60
PGBENCH=1
PACED_ARGS=()
PACED_RATES=""
ORIG_ARGS=("$@")
while (($#)); do
    case "$1" in
        --quick) LEVELS="1,8,32" DURATION=5; shift ;;
        --levels) LEVELS="${2:?--levels needs a list}"; shift 2 ;;
        --duration) DURATION="${2:?--duration needs seconds}"; shift 2 ;;
        --users) USERS="${2:?--users needs a number}"; shift 2 ;;
        --drain-timeout) DRAIN="${2:?--drain-timeout needs seconds}"; shift 2 ;;
        --no-pgbench) PGBENCH=0; shift ;;
        --no-paced) PACED_ARGS+=(--no-paced); shift ;;
        --paced-rates) PACED_RATES="${2:?--paced-rates needs a list}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done
[[ "$LEVELS" =~ ^([0-9]+(,[0-9]+)*|none)$ ]] || die "--levels must be a comma-separated list of numbers or none, got '$LEVELS'"
if [[ -n "$PACED_RATES" ]]; then
    [[ "$PACED_RATES" =~ ^[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?)*$ ]] || die "--paced-rates must be a comma-separated list of rates, got '$PACED_RATES'"
    PACED_ARGS+=(--paced-rates "$PACED_RATES")
fi
[[ "$LEVELS" != none || -n "$PACED_RATES" ]] || die "--levels none needs --paced-rates"
[[ "$DURATION" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--duration must be seconds, got '$DURATION'"
[[ "$DRAIN" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--drain-timeout must be seconds, got '$DRAIN'"
[[ "$USERS" =~ ^[0-9]+$ ]] || die "--users must be a number, got '$USERS'"


# Busy and total jiffies of the whole machine (/proc/stat; idle and iowait are not busy).
cpu_jiffies() {
    awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t-$5-$6, t; exit}' /proc/stat
}

# Milliseconds of machine CPU per query over one pgbench run, less the idle
# machine's own use (measured just before); prints "<ms> <queries>".
cpu_ms_per_query() {
    local url=$1 idle_b idle_t b0 t0 b1 t1 out n
    shift
    read -r b0 t0 < <(cpu_jiffies)
    sleep 2
    read -r idle_b idle_t < <(cpu_jiffies)
    idle_b=$((idle_b - b0)) idle_t=$((idle_t - t0))
    read -r b0 t0 < <(cpu_jiffies)
    out="$(pgbench "$@" "$url" 2>&1)" || { echo '? ?'; return; }
    read -r b1 t1 < <(cpu_jiffies)
    n="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")"
    awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" -v ib="$idle_b" -v it="$idle_t" -v n="${n:-0}" \
        -v hz="$(getconf CLK_TCK)" 'BEGIN {
            if (n == 0 || t == 0 || it == 0) { print "?", n; exit }
            busy = b - ib * t / it; if (busy < 0) busy = 0
            printf "%.3f %d\n", busy / hz * 1000 / n, n
        }'
}

# What a wakeup costs this machine: one client's `SELECT 1` round trips,
# paced (each wakes the client and a Postgres process from idle) and flat out
# (they rarely sleep). A PayFlow transfer is dozens of round trips between
# processes, so this prices its hops at low rates. Run on the idle stack.
wakeup_probe() {
    local url=$1 script paced flat
    script="$(mktemp)"
    echo 'SELECT 1;' >"$script"
    log "pgbench SELECT 1, one client, paced at 200/s and flat out (the price of a wakeup)"
    read -r -a paced < <(cpu_ms_per_query "$url" -n -f "$script" -c 1 -R 200 -T 5) || true
    read -r -a flat < <(cpu_ms_per_query "$url" -n -f "$script" -c 1 -T 5) || true
    rm -f "$script"
    # shellcheck disable=SC2016  # backticks are markdown here
    printf '\nThe price of a wakeup here: one client'"'"'s `SELECT 1` round trips (pgbench, before the load), machine CPU per query less the idle machine: '
    printf '**%s ms** paced at 200/s, **%s ms** flat out (%s queries in 5 s).\n' "${paced[0]:-?}" "${flat[0]:-?}" "${flat[1]:-?}"
}

RUN_DIR="$PAYFLOW_STATE_ROOT/run"
APP_LOG="$RUN_DIR/bench-payflow.log"
REPORT="$RUN_DIR/bench-$(date -u +%Y%m%dT%H%M%SZ).md"
BIN="$CARGO_TARGET_DIR/release/payflow"
BENCH_BIN="$CARGO_TARGET_DIR/release/payflow-bench"
READY_TIMEOUT="${PAYFLOW_READY_TIMEOUT:-120}"
GATEWAY_PORT="${PAYFLOW_GATEWAY_PORT:-3000}"
read -ra PORTS <<<"$(payflow_ports)"
GATEWAY="http://127.0.0.1:$GATEWAY_PORT"
METRICS_URLS="$GATEWAY/metrics,http://127.0.0.1:${PORTS[1]}/metrics,http://127.0.0.1:${PORTS[2]}/metrics,http://127.0.0.1:${PORTS[5]}/metrics"

APP_PID=""
stop_app() {
    if [[ -n "$APP_PID" ]] && pid_alive "$APP_PID" '(^|/)payflow( |$)'; then
        log "stopping payflow dev (pid $APP_PID)"
        stop_pid "$APP_PID" 30
    fi
    APP_PID=""
}
# shellcheck disable=SC2317  # only reached through the traps below
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_app
    stop_run_stack_if_ours
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_apt_packages "${PAYFLOW_STACK_APT_PACKAGES[@]}"
cd "$PAYFLOW_ROOT"

log "building (cargo build --release -p payflow -p payflow-bench)"
cargo build --release -p payflow -p payflow-bench
[[ -x "$BIN" && -x "$BENCH_BIN" ]] || die "build succeeded but $BIN or $BENCH_BIN is missing"

refuse_if_payflow_running
start_run_stack

wakeup="$(wakeup_probe "$PAYFLOW_DATABASE_URL")"

log "running migrations (payflow migrate)"
"$BIN" migrate >&2

mkdir -p "$RUN_DIR"
log "starting payflow dev, release build, rate limits off (log: $APP_LOG)"
printf '\n===== payflow dev (bench) started %s =====\n' "$(date -Is)" >>"$APP_LOG"
# setsid: Ctrl-C reaches us, not payflow; we stop it. fd 9 is stack.sh's lock.
PAYFLOW_RATE_LIMIT_IP_PER_MINUTE=0 \
    PAYFLOW_RATE_LIMIT_USER_PER_MINUTE=0 \
    PAYFLOW_RATE_LIMIT_AUTH_PER_MINUTE=0 \
    PAYFLOW_ACCESS_TOKEN_TTL_SECS="${PAYFLOW_ACCESS_TOKEN_TTL_SECS:-3600}" \
    PAYFLOW_LOG="${PAYFLOW_LOG:-warn,lapin=off,pinky_swear=off}" \
    setsid "$BIN" dev >>"$APP_LOG" 2>&1 </dev/null 9>&- &
APP_PID=$!

wait_payflow_ready "$APP_PID" "$APP_LOG" "$READY_TIMEOUT"
log "payflow ready at $GATEWAY"

pg_settings="$(psql "$PAYFLOW_DATABASE_URL" -XAtq -F ' ' -c \
    "SELECT 'fsync=' || current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit') \
     || ', shared_buffers=' || current_setting('shared_buffers') || ', max_connections=' || current_setting('max_connections')")"

log "running payflow-bench (levels $LEVELS, ${DURATION}s each, $USERS users); report: $REPORT"
{
    printf 'Command: `scripts/bench.sh'
    if ((${#ORIG_ARGS[@]})); then printf ' %s' "${ORIG_ARGS[@]}"; fi
    printf '` on %s (git %s)\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(git describe --always --dirty 2>/dev/null || echo '?')"
} | tee "$REPORT"
"$BENCH_BIN" --gateway "$GATEWAY" --levels "$LEVELS" --duration "$DURATION" --users "$USERS" \
    --drain-timeout "$DRAIN" --metrics-urls "$METRICS_URLS" "${PACED_ARGS[@]}" | tee -a "$REPORT"
printf '\nPostgres: %s (PayFlow and pgbench alike).\n%s\n' "$pg_settings" "$wakeup" | tee -a "$REPORT"
# Money must still add up after the load: balances sum to zero and match the ledger.
ledger="$(PAYFLOW_LOG=error "$BIN" ledger-check 2>&1 >/dev/null | tail -n1)" || warn "ledger check failed: $ledger"
# shellcheck disable=SC2016  # backticks are markdown here
printf 'Ledger after the run (`payflow ledger-check`): %s\n' "${ledger:-no answer}" | tee -a "$REPORT"

# Nothing else competes with pgbench for the two cores.
stop_app

if ((PGBENCH)); then
    PGBENCH_URL="${PAYFLOW_DATABASE_URL%/*}/pgbench"
    if [[ "$(psql "$PAYFLOW_DATABASE_URL" -XAtqc "SELECT 1 FROM pg_database WHERE datname = 'pgbench'")" != 1 ]]; then
        psql "$PAYFLOW_DATABASE_URL" -Xqc 'CREATE DATABASE pgbench'
    fi
    log "pgbench -i -s 10 (database pgbench)"
    pgbench -i -s 10 -q "$PGBENCH_URL" >"$RUN_DIR/pgbench-init.log" 2>&1 || { log_tail "$RUN_DIR/pgbench-init.log"; die "pgbench -i failed"; }
    log "pgbench -c 8 -j 2 -T 20 -b tpcb-like"
    pgbench -c 8 -j 2 -T 20 -b tpcb-like "$PGBENCH_URL" >"$RUN_DIR/pgbench.log" 2>&1 || { log_tail "$RUN_DIR/pgbench.log"; die "pgbench failed"; }
    tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$RUN_DIR/pgbench.log")"
    lat="$(sed -n 's/^latency average = \(.*\)$/\1/p' "$RUN_DIR/pgbench.log")"
    {
        printf '\n### pgbench on the same Postgres, for comparison\n\n'
        # shellcheck disable=SC2016  # backticks are markdown here
        printf '`pgbench -c 8 -j 2 -T 20 -b tpcb-like` (scale 10, payflow stopped): **%s tps**, latency average %s.\n' \
            "${tps:-?}" "${lat:-?}"
        printf 'Each tpcb-like transaction is 5 statements and 1 commit; a PayFlow transfer is several commits (see docs/benchmark.md).\n'
    } | tee -a "$REPORT"
    psql "$PAYFLOW_DATABASE_URL" -Xqc 'DROP DATABASE IF EXISTS pgbench' || warn "could not drop database pgbench"
fi
log "report written to $REPORT"

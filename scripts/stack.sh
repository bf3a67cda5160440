#!/usr/bin/env bash
# Project-local stack of real servers (Postgres, Redis, optionally RabbitMQ)
# for running and testing PayFlow without Docker or systemd.
#
# Usage: scripts/stack.sh start|stop|env|restart-rabbitmq|crash-postgres|restart-redis run|test
#
#   start NAME  start the NAME stack (idempotent; `test` always starts from
#               empty data, `run` keeps its data between runs)
#   stop NAME   stop everything of the NAME stack (safe when nothing runs)
#   env NAME    print `export` lines with the connection URLs
#   restart-rabbitmq NAME  stop and start the stack's RabbitMQ node (its
#               durable queues and persistent messages survive; crash tests)
#   crash-postgres NAME    stop the stack's Postgres as a crash does (`pg_ctl stop
#               -m immediate`: no checkpoint, open sessions cut) and start it again
#               (it recovers from its WAL); chaos experiments
#   restart-redis NAME     stop and start the stack's Redis (it keeps no data, so
#               everything in it is gone); chaos experiments
#
# Environment:
#   PAYFLOW_STACK_RABBITMQ=0  do not run RabbitMQ (default 1: the services need it)
#   PAYFLOW_PG_FAST=1         Postgres with fsync=off, synchronous_commit=off
#                             (throwaway data only; scripts/test.sh sets it)
#   PAYFLOW_PG_SETTINGS       extra postgresql.conf lines (experiments, e.g.
#                             shared_preload_libraries = 'pg_stat_statements')
#   PAYFLOW_PG_BIN            Postgres server binaries (/usr/lib/postgresql/15/bin)
#   PAYFLOW_STACK_TIMEOUT     seconds to wait for each server (default 60;
#                             RabbitMQ gets twice that)
#
# All servers listen on 127.0.0.1 only. State: .payflow/NAME/ in the repo (the
# Postgres socket goes to /tmp/payflow-HASH/ when the checkout path is too long
# for a Unix socket). While scripts/test.sh runs, start/stop/restart commands
# on the test stack from anywhere else are refused.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    usage_of "${BASH_SOURCE[0]}"
}

# ---------------------------------------------------------------- settings --

setup_stack() {
    STACK="$1"
    case "$STACK" in
        # Ports below 32768, outside Linux's range for outgoing connections,
        # so a client socket can never hold one when a server wants it.
        run)
            PG_PORT=24432 REDIS_PORT=24379
            AMQP_PORT=24672 MGMT_PORT=24673
            # Erlang distribution + a private epmd, so the node never collides
            # with a system RabbitMQ (25672/4369) or with the other stack.
            DIST_PORT=24674 EPMD_PORT=24675
            ;;
        test)
            PG_PORT=24442 REDIS_PORT=24389
            AMQP_PORT=24682 MGMT_PORT=24683
            DIST_PORT=24684 EPMD_PORT=24685
            ;;
        *) usage >&2; die "unknown stack name '$STACK' (expected run or test)" ;;
    esac
    PAYFLOW_LOG_TAG="stack:$STACK"
    STATE="$PAYFLOW_STATE_ROOT/$STACK"
    TIMEOUT="${PAYFLOW_STACK_TIMEOUT:-60}"
    RABBITMQ_ON="${PAYFLOW_STACK_RABBITMQ:-1}"

    PG_BIN="${PAYFLOW_PG_BIN:-/usr/lib/postgresql/15/bin}"
    PG_DIR="$STATE/postgres"
    PGDATA_DIR="$PG_DIR/data"
    PG_SOCK="$PG_DIR/run" PG_SOCK_SHORT=0
    # A Unix socket path (DIR/.s.PGSQL.PORT) holds at most 107 bytes; under a
    # long checkout path Postgres would refuse to start. Use a short private
    # directory then, the same for every command on this stack.
    if ((${#PG_SOCK} + ${#PG_PORT} + 10 > 107)); then
        PG_SOCK="/tmp/payflow-$(printf '%s' "$PG_DIR" | md5sum | cut -c1-16)" PG_SOCK_SHORT=1
    fi
    PG_LOG="$PG_DIR/postgres.log"
    PG_OS_USER="${PAYFLOW_PG_OS_USER:-postgres}"

    REDIS_DIR="$STATE/redis"
    REDIS_PID="$REDIS_DIR/redis.pid"
    REDIS_LOG="$REDIS_DIR/redis.log"

    RMQ_DIR="$STATE/rabbitmq"
    RMQ_NODE="payflow-$STACK@localhost"
    RMQ_PID="$RMQ_DIR/rabbitmq.pid"
    RMQ_LOG_DIR="$RMQ_DIR/log"
    RMQ_STARTUP_LOG="$RMQ_LOG_DIR/startup.log"
}

# -------------------------------------------------------------- postgres --

# Postgres refuses to run as root, so as root we run it as a dedicated user.
pg_as_user() {
    if [[ $EUID -eq 0 ]]; then
        # cd / so the server user is never stuck in an unreadable cwd (/root).
        (cd / && runuser -u "$PG_OS_USER" -- "$@")
    else
        "$@"
    fi
}

pg_ensure_os_user() {
    [[ $EUID -eq 0 ]] || return 0
    if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
        log "creating OS user $PG_OS_USER for Postgres"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$PG_OS_USER"
    fi
}

pg_running() {
    [[ -f "$PGDATA_DIR/PG_VERSION" ]] || return 1
    pg_as_user "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

pg_ready() {
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres -U postgres
}

# Admin SQL over the private unix socket as the bootstrap superuser (trust).
pg_psql() {
    pg_as_user "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" \
        -U postgres "$@"
}

pg_initdb() {
    log "postgres: initdb $PGDATA_DIR"
    rm -rf "$PGDATA_DIR"
    local extra=()
    # Throwaway clusters do not need initdb's fsync of every file.
    [[ "${PAYFLOW_PG_FAST:-0}" == 1 ]] && extra+=(--no-sync)
    # trust over the socket for admin work here; SCRAM passwords over TCP so
    # the app really authenticates with the URL's credentials.
    pg_as_user "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 "${extra[@]}" >"$PG_DIR/initdb.log" 2>&1 \
        || { log_tail "$PG_DIR/initdb.log"; die "postgres: initdb failed"; }
    printf "\n# PayFlow settings, rewritten by scripts/stack.sh on every start.\ninclude 'payflow.conf'\n" \
        >>"$PGDATA_DIR/postgresql.conf"
}

# Rewritten on every start so settings follow the script (and PAYFLOW_PG_FAST
# only affects the run it was given for).
pg_write_conf() {
    local fast_settings
    if [[ "${PAYFLOW_PG_FAST:-0}" == 1 ]]; then
        # Test data is thrown away, so durability buys nothing there.
        fast_settings="fsync = off
synchronous_commit = off
full_page_writes = off"
    else
        fast_settings="# durable defaults (fsync on); PAYFLOW_PG_FAST=1 turns them off"
    fi
    cat >"$PGDATA_DIR/payflow.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
# Sized for a 2-core dev box: many pooled connections from several services
# and parallel tests, modest memory.
max_connections = 300
shared_buffers = 256MB
effective_cache_size = 1GB
work_mem = 4MB
maintenance_work_mem = 64MB
wal_buffers = 16MB
max_wal_size = 1GB
checkpoint_completion_target = 0.9
random_page_cost = 1.1
max_worker_processes = 4
max_parallel_workers = 2
max_parallel_workers_per_gather = 1
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 1000
$fast_settings
${PAYFLOW_PG_SETTINGS:-}
EOF
    chown "$(stat -c %u:%g "$PGDATA_DIR")" "$PGDATA_DIR/payflow.conf"
    chmod 600 "$PGDATA_DIR/payflow.conf"
}

# Role and database are (re)checked on every start: cheap, and it repairs a
# cluster whose first start was interrupted.
pg_bootstrap_app() {
    local exists
    exists="$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'payflow'")"
    if [[ "$exists" != 1 ]]; then
        # CREATEDB lets test harnesses create one database per test.
        pg_psql -d postgres -c "CREATE ROLE payflow LOGIN CREATEDB PASSWORD 'payflow'"
    fi
    exists="$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'payflow'")"
    if [[ "$exists" != 1 ]]; then
        pg_psql -d postgres -c "CREATE DATABASE payflow OWNER payflow"
    fi
}

pg_start() {
    local t0
    t0="$(now_us)"
    [[ -x "$PG_BIN/pg_ctl" ]] || die "postgres: $PG_BIN/pg_ctl not found (set PAYFLOW_PG_BIN)"
    pg_ensure_os_user
    mkdir -p "$PG_DIR"
    if [[ $EUID -eq 0 ]]; then
        chown "$PG_OS_USER:" "$PG_DIR"
        # The server user must be able to reach its data dir through ours.
        pg_as_user test -x "$PG_DIR" ||
            die "postgres: user $PG_OS_USER cannot reach $PG_DIR (check permissions of its parent directories)"
    fi
    if ((PG_SOCK_SHORT)); then
        log "postgres: socket directory $PG_SOCK (the one under $PG_DIR would be too long for a Unix socket)"
        # A fixed name in /tmp: accept it only as a real directory of the
        # server user that no one else can write to.
        pg_as_user mkdir -p -m 700 "$PG_SOCK"
        [[ -d "$PG_SOCK" && ! -L "$PG_SOCK" && "$(stat -c %U "$PG_SOCK")" == "$(pg_as_user id -un)" ]] ||
            die "postgres: $PG_SOCK is not a directory owned by $(pg_as_user id -un); remove it"
        pg_as_user chmod 700 "$PG_SOCK"
    else
        pg_as_user mkdir -p "$PG_SOCK"
    fi
    [[ -f "$PGDATA_DIR/PG_VERSION" ]] || pg_initdb

    if pg_running; then
        log "postgres: already running"
    else
        if port_open "$PG_PORT"; then
            die "postgres: port $PG_PORT is already in use by another process (see: ss -ltnp 'sport = :$PG_PORT')"
        fi
        pg_write_conf
        # -W: do not let pg_ctl block; we poll below with our own deadline.
        pg_as_user "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -W start >/dev/null 9>&-
    fi
    if ! wait_for -t "$TIMEOUT" pg_ready; then
        log_tail "$PG_LOG"
        die "postgres: not ready on 127.0.0.1:$PG_PORT within ${TIMEOUT}s"
    fi
    pg_bootstrap_app
    log "postgres: ready on 127.0.0.1:$PG_PORT ($(elapsed_since "$t0")s)"
}

pg_stop() {
    pg_running || return 0
    log "postgres: stopping"
    if ! pg_as_user "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -t "$TIMEOUT" stop >/dev/null; then
        warn "postgres: fast shutdown failed; trying immediate"
        pg_as_user "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -t "$TIMEOUT" stop >/dev/null
    fi
}

# ours_in_proc COMM_GLOB TEST: print the pids of processes named COMM_GLOB
# for which the function TEST PID succeeds (finds our servers without a pidfile).
ours_in_proc() {
    local dir pid comm
    for dir in /proc/[0-9]*; do
        comm=""
        read -r comm 2>/dev/null <"$dir/comm" || continue
        # shellcheck disable=SC2053  # $1 is a glob on purpose
        [[ "$comm" == $1 ]] || continue
        pid="${dir#/proc/}"
        if "$2" "$pid"; then
            printf '%s\n' "$pid"
        fi
    done
}

# ----------------------------------------------------------------- redis --

# redis_ours PID: PID is this stack's redis-server: its command line (Redis
# shows "redis-server 127.0.0.1:PORT") names our port and its working
# directory is ours (--dir). A stale pidfile (after a reboot, pids are
# reused) may name another stack's or checkout's Redis; that is left alone.
redis_ours() {
    pid_alive "$1" "^redis-server .*(:| --port )$REDIS_PORT( |\$)" && pid_cwd_is "$1" "$REDIS_DIR"
}

# redis_pid: this stack's Redis: the pid in its pidfile, or one that
# redis_ours finds in /proc when the pidfile is missing or stale.
redis_pid() {
    local pid
    pid="$(read_pidfile "$REDIS_PID")"
    if ! redis_ours "$pid"; then
        pid="$(ours_in_proc redis-server redis_ours)"
        pid="${pid%%$'\n'*}"
    fi
    printf '%s' "$pid"
}

redis_running() {
    [[ -n "$(redis_pid)" ]]
}

redis_ping() {
    [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

redis_start() {
    local t0
    t0="$(now_us)"
    command -v redis-server >/dev/null 2>&1 || die "redis: redis-server not found"
    mkdir -p "$REDIS_DIR"
    if redis_running; then
        log "redis: already running"
    else
        rm -f "$REDIS_PID"
        if port_open "$REDIS_PORT"; then
            die "redis: port $REDIS_PORT is already in use by another process (see: ss -ltnp 'sport = :$REDIS_PORT')"
        fi
        # Pure cache/queue for dev: no persistence, loopback only.
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
            --dir "$REDIS_DIR" --daemonize yes --pidfile "$REDIS_PID" \
            --logfile "$REDIS_LOG" --save "" --appendonly no 9>&- \
            || { log_tail "$REDIS_LOG"; die "redis: redis-server failed to start"; }
    fi
    if ! wait_for -t "$TIMEOUT" redis_ping; then
        log_tail "$REDIS_LOG"
        die "redis: not answering PING on 127.0.0.1:$REDIS_PORT within ${TIMEOUT}s"
    fi
    log "redis: ready on 127.0.0.1:$REDIS_PORT ($(elapsed_since "$t0")s)"
}

redis_stop() {
    local pid
    pid="$(redis_pid)"
    if [[ -n "$pid" ]]; then
        log "redis: stopping (pid $pid)"
        stop_pid "$pid" "$TIMEOUT"
    fi
    rm -f "$REDIS_PID"
}

# -------------------------------------------------------------- rabbitmq --

# Debian's /usr/sbin/rabbitmq-* wrappers su to the rabbitmq user and reset
# HOME/cwd, which would defeat our private node; call the real scripts.
rmq_bin() {
    local dir
    for dir in /usr/lib/rabbitmq/bin "$(dirname "$(command -v rabbitmq-server 2>/dev/null || echo /x/x)")"; do
        if [[ -x "$dir/$1" ]]; then
            printf '%s/%s' "$dir" "$1"
            return 0
        fi
    done
    die "rabbitmq: $1 not found (is rabbitmq-server installed?)"
}

# Environment of the private node; CLI tools need the same HOME (cookie),
# node name and epmd port to reach it.
rmq_env_vars() {
    RMQ_ENV=(
        HOME="$RMQ_DIR/home"
        RABBITMQ_NODENAME="$RMQ_NODE"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$AMQP_PORT"
        RABBITMQ_DIST_PORT="$DIST_PORT"
        ERL_EPMD_PORT="$EPMD_PORT"
        ERL_EPMD_ADDRESS=127.0.0.1
        RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf"
        RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf"
        RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ_DIR/advanced.config"
        RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins"
        RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia"
        RABBITMQ_LOG_BASE="$RMQ_LOG_DIR"
        RABBITMQ_PID_FILE="$RMQ_PID"
        # Erlang distribution (node <-> CLI tools) on loopback only. No
        # scheduler busy-waiting: on a 2-core box shared with Postgres and
        # PayFlow, spinning Erlang schedulers take CPU the others need.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
        "RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
    )
}

rmq_env() {
    rmq_env_vars
    env "${RMQ_ENV[@]}" "$@"
}

rmq_ctl() { rmq_env "$(rmq_bin rabbitmqctl)" -n "$RMQ_NODE" "$@"; }
rmq_diag() { rmq_env "$(rmq_bin rabbitmq-diagnostics)" -n "$RMQ_NODE" "$@"; }

# rmq_ours PID: PID is this stack's Erlang VM: a beam whose command line has
# our epmd port (-epmd_port, one per stack) and our HOME (-home, one per
# stack and checkout). A stale pidfile naming another node is left alone.
rmq_ours() {
    local pid="$1" cmdline home
    pid_alive "$pid" '^beam' || return 1
    cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)"
    [[ "$cmdline" == *" -epmd_port $EPMD_PORT "* && "$cmdline" == *" -home "* ]] || return 1
    home="${cmdline#* -home }"
    home="${home%% *}"
    [[ -n "$home" && "$home" -ef "$RMQ_DIR/home" ]]
}

# rmq_pids: this stack's node: the pid in its pidfile, or, when there is none
# (the node writes it a few seconds into its boot, so an interrupted start
# leaves none), every process that rmq_ours finds in /proc.
rmq_pids() {
    local pid
    pid="$(read_pidfile "$RMQ_PID")"
    if rmq_ours "$pid"; then
        printf '%s\n' "$pid"
        return 0
    fi
    ours_in_proc 'beam*' rmq_ours
}

rmq_running() {
    [[ -n "$(rmq_pids)" ]]
}

rmq_write_config() {
    mkdir -p "$RMQ_DIR/home" "$RMQ_DIR/mnesia" "$RMQ_LOG_DIR"
    # Private cookie: CLI tools read $HOME/.erlang.cookie, and HOME is ours.
    local cookie="$RMQ_DIR/home/.erlang.cookie"
    if [[ ! -s "$cookie" ]]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$cookie")
        chmod 400 "$cookie"
    fi
    # Empty env file so /etc/rabbitmq/rabbitmq-env.conf cannot override us.
    : >"$RMQ_DIR/rabbitmq-env.conf"
    printf '[rabbitmq_management].\n' >"$RMQ_DIR/enabled_plugins"
    # default_user only applies when the node's database is first created.
    cat >"$RMQ_DIR/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
default_vhost = /
default_user = payflow
default_pass = payflow
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
log.console = false
log.file.level = info
EOF
}

rmq_mgmt_ready() {
    [[ "$(curl -s -o /dev/null -w '%{http_code}' -u payflow:payflow \
        "http://127.0.0.1:$MGMT_PORT/api/overview")" == 200 ]]
}

# Ready = started process alive, AMQP port open and the management API
# accepting our user (which implies the broker app finished booting). These
# probes are cheap; each rabbitmqctl call would boot a whole Erlang VM.
rmq_probe() {
    local launcher_pid="$1"
    if [[ -n "$launcher_pid" ]] && ! kill -0 "$launcher_pid" 2>/dev/null; then
        return 2
    fi
    port_open "$AMQP_PORT" && rmq_mgmt_ready
}

rmq_start() {
    local t0 launcher_pid=""
    t0="$(now_us)"
    command -v curl >/dev/null 2>&1 || die "rabbitmq: curl not found"
    if rmq_running; then
        log "rabbitmq: already running"
    else
        local port
        for port in "$AMQP_PORT" "$MGMT_PORT" "$DIST_PORT"; do
            if port_open "$port"; then
                die "rabbitmq: port $port is already in use by another process (see: ss -ltnp 'sport = :$port')"
            fi
        done
        rm -f "$RMQ_PID"
        rmq_write_config
        local server
        server="$(rmq_bin rabbitmq-server)"
        # setsid: own session, so Ctrl-C in the caller's terminal does not
        # reach the node; stop goes through rabbitmqctl instead.
        rmq_env_vars
        (cd "$RMQ_DIR" && exec setsid env "${RMQ_ENV[@]}" "$server" >>"$RMQ_STARTUP_LOG" 2>&1 </dev/null 9>&-) &
        launcher_pid=$!
    fi
    local deadline=$((EPOCHSECONDS + 2 * TIMEOUT)) rc
    while :; do
        rc=0
        rmq_probe "$launcher_pid" || rc=$?
        ((rc == 0)) && break
        if ((rc == 2)) || ((EPOCHSECONDS >= deadline)); then
            log_tail "$RMQ_STARTUP_LOG"
            log_tail "$RMQ_LOG_DIR/$RMQ_NODE.log"
            if ((rc == 2)); then
                die "rabbitmq: node $RMQ_NODE exited during startup"
            fi
            die "rabbitmq: not ready (AMQP 127.0.0.1:$AMQP_PORT, management :$MGMT_PORT) within $((2 * TIMEOUT))s"
        fi
        sleep 0.5
    done
    # One authoritative check through the Erlang CLI (also proves the cookie).
    if ! rmq_diag -q ping >/dev/null 2>&1; then
        log_tail "$RMQ_LOG_DIR/$RMQ_NODE.log"
        die "rabbitmq: rabbitmq-diagnostics ping to $RMQ_NODE failed"
    fi
    log "rabbitmq: ready, AMQP 127.0.0.1:$AMQP_PORT, management http://127.0.0.1:$MGMT_PORT ($(elapsed_since "$t0")s)"
}

rmq_stop() {
    [[ -d "$RMQ_DIR" ]] || return 0
    local pid pids
    pids="$(rmq_pids)"
    if [[ -n "$pids" ]]; then
        log "rabbitmq: stopping $RMQ_NODE (pid ${pids//$'\n'/ })"
        # `stop PIDFILE` returns once the OS process is gone. A node without
        # a pidfile (interrupted start) may not answer rabbitmqctl yet.
        local pidfile_arg=()
        [[ "$(read_pidfile "$RMQ_PID")" == "$pids" ]] && pidfile_arg=("$RMQ_PID")
        if ! rmq_ctl -q stop "${pidfile_arg[@]}" >/dev/null 2>&1; then
            warn "rabbitmq: rabbitmqctl stop failed; signalling pid ${pids//$'\n'/ }"
        fi
        for pid in $pids; do
            stop_pid "$pid" "$TIMEOUT"
        done
    fi
    rm -f "$RMQ_PID"
    # The node started its own epmd on our private port; it outlives the node.
    if port_open "$EPMD_PORT"; then
        rmq_env epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
    fi
}

# -------------------------------------------------------------- commands --

# Serialise the commands that start or stop servers of one stack (e.g. a
# `stop` while a `start` is half-way). This lock lasts one command only: a
# whole test run is guarded by scripts/test.sh's own lock (test.sh.lock), and
# while a test.sh runs, these commands on the test stack are refused unless
# they come from that run (PAYFLOW_TEST_SH_PID, which it exports).
lock_stack() {
    if [[ "$STACK" == test ]]; then
        local holder
        holder="$(script_lock_holder test.sh)"
        if [[ -n "$holder" && "$holder" != "${PAYFLOW_TEST_SH_PID:-}" ]]; then
            die "the test stack is in use by scripts/test.sh (pid $holder); wait for it to end"
        fi
    fi
    mkdir -p "$PAYFLOW_STATE_ROOT"
    exec 9>"$PAYFLOW_STATE_ROOT/$STACK.lock"
    # Commands that spawn servers close fd 9 (9>&-) so daemons never inherit
    # the lock.
    flock -w 300 9 || die "could not lock $PAYFLOW_STATE_ROOT/$STACK.lock within 300s"
}

stop_all() {
    [[ -d "$STATE" ]] || return 0
    # Reverse start order; keep going so one failure does not leave others up.
    local rc=0
    (rmq_stop) || rc=1
    (redis_stop) || rc=1
    (pg_stop) || rc=1
    return "$rc"
}

cmd_start() {
    lock_stack
    local t0
    t0="$(now_us)"
    ensure_apt_packages "${PAYFLOW_STACK_APT_PACKAGES[@]}"
    if [[ "$STACK" == test ]]; then
        # Every test run starts from empty data: stop leftovers, wipe state.
        stop_all || warn "could not cleanly stop the previous test stack"
        rm -rf -- "${STATE:?}"
    fi
    mkdir -p "$STATE"
    chmod 755 "$PAYFLOW_STATE_ROOT" "$STATE"
    pg_start
    redis_start
    if [[ "$RABBITMQ_ON" == 1 ]]; then
        rmq_start
    fi
    log "stack '$STACK' up in $(elapsed_since "$t0")s"
}

cmd_stop() {
    lock_stack
    if [[ ! -d "$STATE" ]]; then
        log "nothing to stop"
        return 0
    fi
    stop_all || die "some servers of stack '$STACK' failed to stop"
    log "stack '$STACK' stopped"
}

cmd_restart_rabbitmq() {
    [[ "$RABBITMQ_ON" == 1 ]] || die "RabbitMQ is off for this stack"
    lock_stack
    local t0
    t0="$(now_us)"
    rmq_stop
    rmq_start
    log "rabbitmq of stack '$STACK' restarted in $(elapsed_since "$t0")s"
}

cmd_crash_postgres() {
    lock_stack
    local t0
    t0="$(now_us)"
    if pg_running; then
        log "postgres: crashing it (pg_ctl stop -m immediate)"
        pg_as_user "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -t "$TIMEOUT" stop >/dev/null
    fi
    pg_start
    log "postgres of stack '$STACK' crashed and restarted in $(elapsed_since "$t0")s"
}

cmd_restart_redis() {
    lock_stack
    local t0
    t0="$(now_us)"
    redis_stop
    redis_start
    log "redis of stack '$STACK' restarted in $(elapsed_since "$t0")s"
}

cmd_env() {
    local -a vars=(
        "DATABASE_URL=postgres://payflow:payflow@127.0.0.1:$PG_PORT/payflow"
        "REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
    )
    if [[ "$RABBITMQ_ON" == 1 ]]; then
        vars+=(
            "AMQP_URL=amqp://payflow:payflow@127.0.0.1:$AMQP_PORT/%2f"
            "RABBITMQ_MANAGEMENT_URL=http://payflow:payflow@127.0.0.1:$MGMT_PORT"
        )
    fi
    local kv
    for kv in "${vars[@]}"; do
        printf "export PAYFLOW_%s='%s'\n" "${kv%%=*}" "${kv#*=}"
    done
    if [[ "$STACK" == test ]]; then
        for kv in "${vars[@]}"; do
            printf "export PAYFLOW_TEST_%s='%s'\n" "${kv%%=*}" "${kv#*=}"
        done
    fi
}

main() {
    if (($# == 1)) && [[ "$1" == -h || "$1" == --help ]]; then
        usage
        return 0
    fi
    if (($# != 2)); then
        usage >&2
        exit 2
    fi
    setup_stack "$2"
    case "$1" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        env) cmd_env ;;
        restart-rabbitmq) cmd_restart_rabbitmq ;;
        crash-postgres) cmd_crash_postgres ;;
        restart-redis) cmd_restart_redis ;;
        *) usage >&2; die "unknown command '$1'" ;;
    esac
}

main "$@"

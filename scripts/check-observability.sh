#!/usr/bin/env bash
# Check the Grafana dashboards and Prometheus alert rules in grafana/ (tools/obscheck):
#   1. promtool check + unit tests of every rules file (each must be in a test file's rule_files),
#      PrometheusRule == plain rules file, runbook anchors; dashboard JSON, uids, variables,
#      datasource and namespace filter of every query; every kustomization under grafana/ renders,
#      with the namespace and `release` label of its flavour (kube-prometheus-stack, microk8s);
#      the PodMonitor/ServiceMonitor select exactly the operator's pods and Service with metrics;
#   2. against the running test stack and test cluster: starts `payflow dev` (own database, own
#      AMQP prefix, free ports) and the operator on a PayFlow of its own namespace whose RabbitMQ
#      is the test stack's, has a real Prometheus (Debian's `prometheus`, with the rules loaded)
#      scrape all of them every second, drives traffic and one reversal pass, then checks that
#      every metric name the dashboards and rules use is exported;
#   3. every dashboard query returns a series from that Prometheus.
#
# Usage: scripts/check-observability.sh
# Needs the test stack and test cluster running (scripts/test.sh starts both; by hand:
# scripts/stack.sh start test && scripts/testcluster.sh start). Stops everything it started
# and deletes its database, namespace and queue when it ends, also on failure or Ctrl-C.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PAYFLOW_LOG_TAG=obscheck

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    usage_of "${BASH_SOURCE[0]}"
    exit 0
fi

T0="$(now_us)"
# Debian's python3 is the one python3-yaml belongs to.
PY=/usr/bin/python3
[[ -x "$PY" ]] || PY=python3
CHECK=("$PY" "$PAYFLOW_ROOT/tools/obscheck/obscheck.py")
BIN="$CARGO_TARGET_DIR/debug/payflow"
OPERATOR="$CARGO_TARGET_DIR/debug/payflow-operator"
RUN_ID="$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
NS="obscheck-$RUN_ID"
DB="obscheck_$RUN_ID"
QUEUE="payflow.transactions"
WORK="$(mktemp -d -t obscheck.XXXXXX)"
PIDS=()
NS_CREATED=0
DB_CREATED=0
QUEUE_CREATED=0

# shellcheck disable=SC2317  # only reached through the traps below
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    if ((NS_CREATED)); then
        # While the operator still runs, so it removes its finalizer; if it cannot, drop the
        # finalizer ourselves, or the namespace would stay Terminating for ever.
        kubectl -n "$NS" delete payflow --all --timeout=60s >/dev/null 2>&1 ||
            kubectl -n "$NS" patch payflow demo --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 ||
            true
    fi
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid" 20 || true
    done
    if ((NS_CREATED)); then
        kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || warn "could not delete namespace $NS"
    fi
    if ((QUEUE_CREATED)); then
        curl -s -o /dev/null -X DELETE "$PAYFLOW_RABBITMQ_MANAGEMENT_URL/api/queues/%2F/$QUEUE" || true
    fi
    delete_amqp_objects || warn "could not delete the queues and exchanges $NS.*"
    if ((DB_CREATED)); then
        psql "$PAYFLOW_DATABASE_URL" -Xqc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 ||
            warn "could not drop database $DB"
    fi
    if ((rc != 0)); then
        log_tail "$WORK/payflow.log" 30
        log_tail "$WORK/operator.log" 30
        log_tail "$WORK/prometheus.log" 15
    fi
    rm -rf "$WORK"
    log "$( ((rc == 0)) && echo ok || echo "FAILED (exit $rc)") after $(elapsed_since "$T0")s"
    exit "$rc"
}
# The queues and exchanges payflow dev declared under its prefix.
# shellcheck disable=SC2317  # only reached through cleanup
delete_amqp_objects() {
    [[ -n "${PAYFLOW_RABBITMQ_MANAGEMENT_URL:-}" ]] || return 0
    "$PY" - "$PAYFLOW_RABBITMQ_MANAGEMENT_URL" "$NS." <<'PY'
import base64, json, sys, urllib.parse, urllib.request
url, prefix = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2]
base = f"{url.scheme}://{url.hostname}:{url.port}"
auth = "Basic " + base64.b64encode(f"{urllib.parse.unquote(url.username)}:{urllib.parse.unquote(url.password)}".encode()).decode()
def call(method, path):
    req = urllib.request.Request(base + path, method=method, headers={"Authorization": auth})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")
for kind in ("queues", "exchanges"):
    for item in call("GET", f"/api/{kind}/%2F"):
        if item["name"].startswith(prefix):
            call("DELETE", f"/api/{kind}/%2F/{urllib.parse.quote(item['name'], safe='')}")
PY
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_apt_packages prometheus python3-yaml curl postgresql-client-15

# Assign first: a failing `env` would be masked inside eval "$(...)".
stack_env="$("$PAYFLOW_SCRIPTS/stack.sh" env test)"
eval "$stack_env"
cluster_env="$("$PAYFLOW_SCRIPTS/testcluster.sh" env)"
eval "$cluster_env"

log "static checks: rules, dashboards, kustomizations, scrape monitors"
"${CHECK[@]}" static

log "building payflow and payflow-operator"
(cd "$PAYFLOW_ROOT" && cargo build -q --locked -p payflow -p payflow-operator)

# Free ports, all at once so they differ from each other.
read -r P_GATEWAY P_AUTH P_WALLET P_TXN P_NOTIFY P_WORKER P_OPERATOR P_PROM < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

log "payflow dev on ports $P_GATEWAY-… with database $DB"
psql "$PAYFLOW_DATABASE_URL" -Xqc "CREATE DATABASE $DB" >/dev/null
DB_CREATED=1
DB_URL="${PAYFLOW_DATABASE_URL%/*}/$DB"
TOKEN="obscheck-$RUN_ID-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
PAYFLOW_DATABASE_URL="$DB_URL" PAYFLOW_AMQP_PREFIX="$NS" PAYFLOW_SERVICE_TOKEN="$TOKEN" \
    PAYFLOW_RATE_LIMIT_IP_PER_MINUTE=0 PAYFLOW_RATE_LIMIT_USER_PER_MINUTE=0 PAYFLOW_RATE_LIMIT_AUTH_PER_MINUTE=0 \
    PAYFLOW_LOG=warn setsid "$BIN" dev --gateway-port "$P_GATEWAY" --auth-port "$P_AUTH" --wallet-port "$P_WALLET" \
    --transaction-port "$P_TXN" --notification-port "$P_NOTIFY" --worker-port "$P_WORKER" \
    >"$WORK/payflow.log" 2>&1 </dev/null &
PIDS+=($!)
ready() { [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1")" == 200 ]]; }
wait_for -t 120 ready "http://127.0.0.1:$P_GATEWAY/readyz" || die "payflow dev not ready within 120s"

log "operator in namespace $NS (PayFlow with the test stack's RabbitMQ)"
"$OPERATOR" crd | kubectl apply --server-side --force-conflicts --field-manager=payflow-obscheck -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/payflows.payflow.io >/dev/null
kubectl create namespace "$NS" >/dev/null
NS_CREATED=1
# The scaler reads this queue (its name is fixed); create it only if nobody has, and delete only then.
if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$PAYFLOW_RABBITMQ_MANAGEMENT_URL/api/queues/%2F/$QUEUE")" == 404 ]]; then
    curl -sf -o /dev/null -X PUT -H 'content-type: application/json' -d '{"durable":true}' \
        "$PAYFLOW_RABBITMQ_MANAGEMENT_URL/api/queues/%2F/$QUEUE"
    QUEUE_CREATED=1
fi
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Secret
metadata: {name: mq}
stringData: {url: "$PAYFLOW_AMQP_URL", managementUrl: "$PAYFLOW_RABBITMQ_MANAGEMENT_URL"}
---
apiVersion: payflow.io/v1alpha1
kind: PayFlow
metadata: {name: demo}
spec:
  version: "0.1.0"
  rabbitmq: {mode: external, secretRef: mq}
  worker: {autoscaling: {minReplicas: 1, maxReplicas: 3, targetPerReplica: 10, pollingIntervalSeconds: 1}}
EOF
POD_NAMESPACE="$NS" POD_NAME="obscheck-operator" PAYFLOW_LOG=warn setsid "$OPERATOR" run --namespace "$NS" \
    --metrics-addr "127.0.0.1:$P_OPERATOR" >"$WORK/operator.log" 2>&1 </dev/null &
PIDS+=($!)
scaler_reported() { curl -sf "http://127.0.0.1:$P_OPERATOR/metrics" | grep -q '^payflow_operator_scaler_desired_replicas'; }
wait_for -t 120 scaler_reported || die "the operator's scaler reported nothing within 120s"

SERVICES=("$P_GATEWAY" "$P_AUTH" "$P_WALLET" "$P_TXN" "$P_NOTIFY" "$P_WORKER" "$P_OPERATOR")
URLS=()
TARGETS=""
for p in "${SERVICES[@]}"; do
    URLS+=("http://127.0.0.1:$p/metrics")
    TARGETS+="'127.0.0.1:$p', "
done
log "Prometheus on port $P_PROM scrapes them all every second"
cat >"$WORK/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ['$PAYFLOW_ROOT/grafana/alerts/payflow.rules.yaml']
scrape_configs:
  - job_name: payflow
    static_configs:
      - targets: [${TARGETS%, }]
        labels: {namespace: '$NS'}
EOF
setsid prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$P_PROM" >"$WORK/prometheus.log" 2>&1 </dev/null &
PIDS+=($!)
wait_for -t 60 ready "http://127.0.0.1:$P_PROM/-/ready" || die "Prometheus not ready within 60s"
# Events must come after a first scrape, or rate() sees no increase.
"${CHECK[@]}" scraped "http://127.0.0.1:$P_PROM" "$NS" "${#SERVICES[@]}"
log "traffic, a spec change for the operator, one reversal pass"
kubectl -n "$NS" patch payflow demo --type=merge -p '{"spec":{"worker":{"autoscaling":{"maxReplicas":4}}}}' >/dev/null
"${CHECK[@]}" traffic "http://127.0.0.1:$P_GATEWAY" "http://127.0.0.1:$P_PROM" "$NS"
PAYFLOW_DATABASE_URL="$DB_URL" PAYFLOW_SERVICE_TOKEN="$TOKEN" PAYFLOW_LOG=warn \
    "$BIN" reverse-pending --older-than 5s --wallet-url "http://127.0.0.1:$P_WALLET" --amqp-prefix "$NS" \
    >>"$WORK/payflow.log" 2>&1

log "every metric name used is exported"
"${CHECK[@]}" exported "${URLS[@]}"

log "every dashboard query returns a series"
"${CHECK[@]}" queries "http://127.0.0.1:$P_PROM" "$NS"

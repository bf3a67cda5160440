#!/usr/bin/env bash
# Checks the container image recipe and the Kubernetes bundle against the
# test control plane:
#   a. Dockerfile and .dockerignore by shape (there is no Docker engine here,
#      so the image itself is not built);
#   b. `kubectl kustomize` of every kustomization under crds/ and manifests/;
#   c. server-side dry-run apply of each rendered result;
#   d. the operator's RBAC for real: manifests/operator applied, the debug
#      operator binary run with a token of its ServiceAccount until a PayFlow
#      is Ready, scaled, pruned and deleted, with no `forbidden` in its log;
#      plus `kubectl auth can-i` of what it must and must not be able to do;
#   e. cleanup of everything it created (the CRD stays: the operator tests share it).
#
#   eval "$(scripts/testcluster.sh env)" && scripts/check-manifests.sh
#
# It owns, on the test cluster, the namespaces payflow-system and payflow,
# the ClusterRoles/ClusterRoleBindings payflow-operator(-keda) and a
# namespace check-manifests-<random>; do not run two at once.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck disable=SC2034  # read by log() in lib.sh
PAYFLOW_LOG_TAG=check-manifests

T0="$(now_us)"
ROOT="$PAYFLOW_ROOT"
FIELD_MANAGER=payflow-check-manifests
SA_USER=system:serviceaccount:payflow-system:payflow-operator
READY_TIMEOUT="${CHECK_MANIFESTS_READY_TIMEOUT:-120}"

[[ -n "${KUBECONFIG:-}" ]] ||
    die "KUBECONFIG is unset: start the test cluster and run eval \"\$(scripts/testcluster.sh env)\" first"
[[ -r "$KUBECONFIG" ]] || die "KUBECONFIG=$KUBECONFIG is not readable"
command -v kubectl >/dev/null 2>&1 || die "kubectl not in PATH (eval \"\$(scripts/testcluster.sh env)\" adds it)"
kubectl get --raw /readyz >/dev/null 2>&1 || die "the cluster of $KUBECONFIG does not answer /readyz"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-manifests.XXXXXX")"
TEST_NS="check-manifests-$(printf '%04x%04x' $RANDOM $RANDOM)"
OPERATOR_PID=""
CREATED_NAMESPACES=()
OPERATOR_APPLIED=0

cleanup() {
    local rc=$?
    set +e
    if [[ -n "$OPERATOR_PID" ]]; then
        stop_pid "$OPERATOR_PID" 10
    fi
    # The operator is gone, so nothing would run the PayFlow finalizer: drop it,
    # or the test namespace would stay Terminating.
    if kubectl get namespace "$TEST_NS" >/dev/null 2>&1; then
        local pf
        for pf in $(kubectl -n "$TEST_NS" get payflows -o name 2>/dev/null); do
            kubectl -n "$TEST_NS" patch "$pf" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1
        done
        kubectl delete namespace "$TEST_NS" --wait=false >/dev/null 2>&1
    fi
    if ((OPERATOR_APPLIED)); then
        kubectl delete -k "$ROOT/manifests/operator" --ignore-not-found --wait=false >/dev/null 2>&1
    fi
    local ns
    for ns in "${CREATED_NAMESPACES[@]}"; do
        kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1
    done
    if ((rc != 0)) && [[ -s "$WORK/operator.log" ]]; then
        log_tail "$WORK/operator.log" 30
    fi
    rm -rf "$WORK"
    log "done in $(elapsed_since "$T0")s (exit $rc)"
}
trap cleanup EXIT

# ------------------------------------------------------ a. Dockerfile shape --

# The Dockerfile with continuation lines joined, comments dropped.
dockerfile_lines() {
    sed -e '/^[[:space:]]*#/d' "$ROOT/Dockerfile" | sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta'
}

check_dockerfile() {
    [[ -f "$ROOT/Dockerfile" ]] || die "no Dockerfile"
    [[ -f "$ROOT/.dockerignore" ]] || die "no .dockerignore"
    local lines final stages user base
    lines="$(dockerfile_lines)"
    stages="$(grep -ciE '^[[:space:]]*FROM[[:space:]]' <<<"$lines")"
    ((stages >= 2)) || die "Dockerfile: expected a multi-stage build, found $stages FROM"
    # The final stage: everything after the last FROM.
    final="$(awk 'toupper($1) == "FROM" { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' <<<"$lines")"
    base="$(head -n1 <<<"$final" | awk '{print $2}')"
    [[ "$base" =~ distroless|slim ]] || die "Dockerfile: final stage base $base is neither distroless nor slim"
    ! grep -qiE '^[[:space:]]*RUN[[:space:]]' <<<"$final" ||
        die "Dockerfile: the final stage RUNs something (it must not need a shell)"
    user="$(grep -iE '^[[:space:]]*USER[[:space:]]' <<<"$final" | tail -n1 | awk '{print $2}')"
    [[ "$user" =~ ^([0-9]+)(:[0-9]+)?$ ]] || die "Dockerfile: final USER '${user:-none}' is not a numeric uid[:gid]"
    ((BASH_REMATCH[1] != 0)) || die "Dockerfile: final USER is root"
    local copy bin
    copy="$(grep -iE '^[[:space:]]*COPY[[:space:]]+--from=' <<<"$final" || true)"
    for bin in payflow payflow-operator; do
        grep -qE "/$bin([[:space:]]|\$)" <<<"$copy" || die "Dockerfile: the final stage does not copy the $bin binary"
    done
    grep -qE '/usr/local/bin/?([[:space:]]|$)' <<<"$copy" || die "Dockerfile: binaries do not go to /usr/local/bin"
    grep -qE '^[[:space:]]*ENTRYPOINT[[:space:]]+\[[[:space:]]*"/usr/local/bin/payflow"' <<<"$final" ||
        die 'Dockerfile: ENTRYPOINT must be the exec form ["/usr/local/bin/payflow", ...]'
    local build
    build="$(grep -E 'cargo build' <<<"$lines" || true)"
    [[ -n "$build" ]] || die "Dockerfile: no cargo build"
    grep -q -- '--mount=type=cache' <<<"$build" || die "Dockerfile: cargo build without BuildKit cache mounts"
    for flag in --release --locked; do
        grep -q -- "$flag" <<<"$build" || die "Dockerfile: cargo build without $flag"
    done
    local packages
    packages="$(grep -oE -- '(-p|--package)[[:space:]]+[A-Za-z0-9_-]+' <<<"$build" | awk '{print $2}' | sort -u)"
    [[ "$(tr '\n' ' ' <<<"$packages")" == "payflow payflow-operator " ]] ||
        die "Dockerfile: cargo build packages are '$(tr '\n' ' ' <<<"$packages")', expected payflow and payflow-operator"
    # Each package exists in the workspace and has a binary of its own name
    # (cargo writes the fields of a package and of a target in a fixed order).
    local metadata pkg
    metadata="$(cd "$ROOT" && cargo metadata --no-deps --format-version 1 --offline)" || die "cargo metadata failed"
    for pkg in $packages; do
        grep -qF "\"name\":\"$pkg\",\"version\"" <<<"$metadata" ||
            die "Dockerfile: cargo build -p $pkg, but the workspace has no package $pkg"
        grep -qF "\"kind\":[\"bin\"],\"crate_types\":[\"bin\"],\"name\":\"$pkg\"" <<<"$metadata" ||
            die "Dockerfile: package $pkg has no binary $pkg"
    done
    local pattern
    for pattern in target .git; do
        grep -qxE "/?${pattern//./\\.}/?" "$ROOT/.dockerignore" || die ".dockerignore does not exclude $pattern/"
    done
    log "Dockerfile: $stages stages, final $base as USER $user, both binaries, cache mounts; .dockerignore ok"
    log "  (shape only: no Docker engine here, the image was not built)"
}

# ------------------------------------------------ b. render kustomizations --

KUSTOMIZATIONS=()
render_all() {
    local file dir out
    while IFS= read -r file; do
        KUSTOMIZATIONS+=("$(dirname "${file#"$ROOT"/}")")
    done < <(find "$ROOT/crds" "$ROOT/manifests" -name kustomization.yaml | sort)
    ((${#KUSTOMIZATIONS[@]} > 0)) || die "no kustomization under crds/ or manifests/"
    for dir in "${KUSTOMIZATIONS[@]}"; do
        out="$WORK/render/$dir.yaml"
        mkdir -p "$(dirname "$out")"
        kubectl kustomize "$ROOT/$dir" >"$out" || die "kubectl kustomize $dir failed"
        [[ -s "$out" ]] || die "kubectl kustomize $dir rendered nothing"
    done
    # No wildcard in any RBAC rule we ship.
    if find "$WORK/render/manifests" -name '*.yaml' -exec \
        grep -nE "^[[:space:]]*-[[:space:]]*(\"\*\"|'\*'|\*)[[:space:]]*$|:[[:space:]]*\[[^]]*\"\*\"" {} +; then
        die "a rendered manifest holds a '*' (no wildcards in RBAC)"
    fi
    log "rendered ${#KUSTOMIZATIONS[@]} kustomizations: ${KUSTOMIZATIONS[*]}"
}

# ------------------------------------------------------- c. dry-run apply --

crd_established() {
    [[ "$(kubectl get crd payflows.payflow.io -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" == True ]]
}
namespace_absent() { ! kubectl get namespace "$1" >/dev/null 2>&1; }

ensure_namespace() {
    local ns="$1"
    # Left Terminating by an earlier run: let it go first.
    if [[ "$(kubectl get namespace "$ns" -o jsonpath='{.status.phase}' 2>/dev/null)" == Terminating ]]; then
        log "namespace $ns is terminating; waiting"
        wait_for -t 60 namespace_absent "$ns" || die "namespace $ns stays Terminating"
    fi
    if namespace_absent "$ns"; then
        kubectl create namespace "$ns" >/dev/null
        CREATED_NAMESPACES+=("$ns")
    fi
}

dry_run_all() {
    # The CRD for real (shared with the operator tests, so it stays), then the
    # namespaces the bundle uses: a dry run of a namespaced object needs both.
    kubectl apply --server-side --force-conflicts --field-manager="$FIELD_MANAGER" -k "$ROOT/crds" >/dev/null
    wait_for -t 30 crd_established || die "the PayFlow CRD is not established"
    local ns
    for ns in $(find "$WORK/render" -name '*.yaml' -exec cat {} + |
        awk '/^kind: Namespace$/ { ns = 1 } /^---/ { ns = 0 } ns && /^  name: / { print $2 }' | sort -u); do
        ensure_namespace "$ns"
    done
    local dir
    for dir in "${KUSTOMIZATIONS[@]}"; do
        kubectl apply --server-side --dry-run=server --field-manager="$FIELD_MANAGER" \
            -f "$WORK/render/$dir.yaml" >"$WORK/dry-run.out" 2>&1 || {
            cat "$WORK/dry-run.out" >&2
            die "server-side dry-run of $dir failed"
        }
    done
    log "server-side dry-run of every rendered kustomization: ok"
}

# --------------------------------------------------- d. RBAC for real --

deployment_available() {
    [[ "$(kubectl -n payflow-system get deployment payflow-operator \
        -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" == True ]]
}

apply_operator() {
    OPERATOR_APPLIED=1
    kubectl apply --server-side --field-manager="$FIELD_MANAGER" -k "$ROOT/manifests/operator" >/dev/null
    # kwok only pretends to run the pod; its admission under the namespace's
    # restricted Pod Security level is real.
    wait_for -t 60 deployment_available ||
        die "the operator Deployment did not become Available: $(kubectl -n payflow-system get events --field-selector reason=FailedCreate -o jsonpath='{.items[*].message}')"
    log "manifests/operator applied; its pod passed restricted Pod Security admission"
}

write_sa_kubeconfig() {
    local server ca token
    server="$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
    ca="$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
    [[ -n "$server" && -n "$ca" ]] || die "cannot read the server and CA from $KUBECONFIG"
    token="$(kubectl -n payflow-system create token payflow-operator --duration=15m)"
    umask 077
    cat >"$WORK/operator.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: payflow-operator
  user:
    token: $token
contexts:
- name: payflow-operator
  context: {cluster: test, user: payflow-operator, namespace: $TEST_NS}
current-context: payflow-operator
EOF
}

# A port nothing listens on, below 32768 like the stacks' ports (outside the
# kernel's range for outgoing connections, so no client socket holds it).
free_port() {
    local port tries
    for tries in {1..50}; do
        port=$((20000 + RANDOM % 12000))
        port_open "$port" || { echo "$port"; return 0; }
    done
    die "no free port found in $tries tries"
}

pf_phase() { kubectl -n "$TEST_NS" get payflow check -o jsonpath='{.status.phase}' 2>/dev/null; }
pf_ready() { [[ "$(pf_phase)" == Ready ]]; }
pf_gone() { ! kubectl -n "$TEST_NS" get payflow check >/dev/null 2>&1; }
worker_replicas() { kubectl -n "$TEST_NS" get deployment check-worker -o jsonpath='{.spec.replicas}' 2>/dev/null; }
worker_scaled() { [[ "$(worker_replicas)" == 2 ]]; }
exists() { kubectl -n "$TEST_NS" get "$1" >/dev/null 2>&1; }
absent() { ! exists "$1"; }
statefulset_ready() { [[ "$(kubectl -n "$TEST_NS" get statefulset "$1" -o jsonpath='{.status.readyReplicas}' 2>/dev/null)" == 1 ]]; }
no_pvcs() { [[ -z "$(kubectl -n "$TEST_NS" get pvc -o name 2>/dev/null)" ]]; }
has_pvcs() { [[ -n "$(kubectl -n "$TEST_NS" get pvc -o name 2>/dev/null)" ]]; }
event_reasons() {
    kubectl -n "$TEST_NS" get events.events.k8s.io \
        -o jsonpath='{range .items[?(@.reportingController=="payflow-operator")]}{.reason}{"\n"}{end}' 2>/dev/null
}
has_event() { event_reasons | grep -qx "$1"; }

run_operator() {
    local bin="$CARGO_TARGET_DIR/debug/payflow-operator" port
    if [[ ! -x "$bin" ]]; then
        log "building the debug operator binary"
        (cd "$ROOT" && cargo build -q -p payflow-operator) || die "cargo build -p payflow-operator failed"
    fi
    kubectl create namespace "$TEST_NS" >/dev/null
    # As manifests/payflow's namespace: Pod Security admission refuses any pod of the
    # operator's (components, Jobs, data StatefulSets) that is not `restricted`.
    kubectl label namespace "$TEST_NS" pod-security.kubernetes.io/enforce=restricted >/dev/null
    write_sa_kubeconfig
    port="$(free_port)"
    # payflow_operator=debug: event publishing failures are logged at debug.
    KUBECONFIG="$WORK/operator.kubeconfig" POD_NAMESPACE=payflow-system POD_NAME=check HOSTNAME=check \
        PAYFLOW_LOG="info,payflow_operator=debug" \
        "$bin" run --namespace "$TEST_NS" --metrics-addr "127.0.0.1:$port" >"$WORK/operator.log" 2>&1 &
    OPERATOR_PID=$!
    wait_for -t 20 port_open "$port" || die "the operator did not start listening on $port"
    log "operator (pid $OPERATOR_PID) runs as $SA_USER, watching $TEST_NS"
}

exercise_operator() {
    # Reaches Ready on kwok (pods turn Ready, the migration Job's pod
    # completes) and touches every permission: Secrets, all child kinds,
    # Ingress and PDB (then pruned), /scale (minReplicas 2 > the Deployment's
    # 1), status, finalizer, Events, PVC deletion (deletionPolicy Delete).
    kubectl apply --server-side --field-manager="$FIELD_MANAGER" -f - >/dev/null <<EOF
apiVersion: payflow.io/v1alpha1
kind: PayFlow
metadata: {name: check, namespace: $TEST_NS}
spec:
  version: "0.1.0"
  gateway: {replicas: 2, ingress: {host: check.payflow.local}}
  postgres: {storage: 1Gi}
  worker: {autoscaling: {minReplicas: 2, maxReplicas: 4, pollingIntervalSeconds: 1}}
  deletionPolicy: Delete
EOF
    local t
    t="$(now_us)"
    wait_for -t "$READY_TIMEOUT" pf_ready || die "PayFlow check not Ready after ${READY_TIMEOUT}s (phase '$(pf_phase)')"
    log "PayFlow Ready after $(elapsed_since "$t")s"
    wait_for -t 30 worker_scaled || die "the scaler did not set the worker to 2 replicas (has '$(worker_replicas)')"
    wait_for -t 10 exists ingress/check-gateway || die "no Ingress check-gateway"
    # Only the public API goes through the Ingress, never the gateway's /metrics or probes.
    local paths
    paths="$(kubectl -n "$TEST_NS" get ingress check-gateway -o jsonpath='{.spec.rules[0].http.paths[*].path}')"
    [[ "$paths" == "/api /health /.well-known/jwks.json" ]] ||
        die "Ingress check-gateway routes '$paths', expected '/api /health /.well-known/jwks.json'"
    wait_for -t 10 exists poddisruptionbudget/check-gateway || die "no PodDisruptionBudget check-gateway"
    wait_for -t 30 has_pvcs || die "no PersistentVolumeClaims for the managed data services"
    log "scaled through /scale, Ingress and PDB applied, volumes claimed"
    local sts
    for sts in postgres redis rabbitmq; do
        wait_for -t 60 statefulset_ready "check-$sts" ||
            die "StatefulSet check-$sts has no ready pod (refused by restricted Pod Security?): $(kubectl -n "$TEST_NS" get events --field-selector involvedObject.name="check-$sts" -o jsonpath='{.items[*].message}' 2>/dev/null)"
    done
    log "managed Postgres, Redis and RabbitMQ pods admitted under restricted Pod Security and Ready"

    kubectl -n "$TEST_NS" patch payflow check --type=json \
        -p '[{"op":"remove","path":"/spec/gateway/ingress"},{"op":"replace","path":"/spec/gateway/replicas","value":1}]' \
        >/dev/null
    wait_for -t 30 absent ingress/check-gateway || die "the Ingress was not pruned"
    wait_for -t 30 absent poddisruptionbudget/check-gateway || die "the PodDisruptionBudget was not pruned"
    log "Ingress and PDB pruned"

    kubectl -n "$TEST_NS" delete payflow check --wait=false >/dev/null
    wait_for -t 30 pf_gone || die "the PayFlow was not finalized"
    wait_for -t 30 no_pvcs || die "deletionPolicy Delete left volumes"
    local reason
    for reason in SecretsGenerated Migrating Scaled VolumesDeleted; do
        wait_for -t 10 has_event "$reason" || die "no $reason event from payflow-operator (events.k8s.io)"
    done
    log "finalizer removed the volumes; events published: $(event_reasons | sort -u | tr '\n' ' ')"

    if grep -qiE 'forbidden|"code":403| 403 ' "$WORK/operator.log"; then
        grep -iE 'forbidden|"code":403| 403 ' "$WORK/operator.log" | head -n 10 >&2
        die "the operator was refused something with the shipped RBAC (above)"
    fi
    local holder
    holder="$(kubectl -n payflow-system get lease payflow-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)"
    if [[ -n "$holder" ]]; then
        log "Lease payflow-system/payflow-operator held by '$holder'"
    else
        log "no Lease payflow-system/payflow-operator (this operator build does no leader election)"
    fi
    log "operator log: no forbidden request"
}

# can_i yes|no VERB RESOURCE [kubectl auth can-i flags...]
CAN_I_FAILURES=0
can_i() {
    local want="$1" got
    shift
    got="$(kubectl auth can-i --as="$SA_USER" "$@" 2>/dev/null || true)"
    if [[ "$got" != "$want" ]]; then
        warn "can-i $*: expected $want, got ${got:-error}"
        CAN_I_FAILURES=$((CAN_I_FAILURES + 1))
    fi
}

# keda_allowed VERB RESOURCE: a SubjectAccessReview, since `kubectl auth can-i`
# answers wrongly for a group the cluster does not serve (KEDA is not installed here).
keda_allowed() {
    local allowed
    allowed="$(kubectl create -o jsonpath='{.status.allowed}' -f - <<EOF
apiVersion: authorization.k8s.io/v1
kind: SubjectAccessReview
spec:
  user: $SA_USER
  groups: [system:serviceaccounts, system:serviceaccounts:payflow-system, system:authenticated]
  resourceAttributes: {group: keda.sh, resource: $2, verb: $1, namespace: $TEST_NS}
EOF
)"
    [[ "$allowed" == true ]]
}

check_can_i() {
    local ns="$TEST_NS"
    # What it needs.
    # The check runs the operator on one namespace (the cluster is shared);
    # without --namespace it watches these everywhere.
    local kind
    for kind in payflows.payflow.io deployments.apps statefulsets.apps jobs.batch cronjobs.batch configmaps services; do
        can_i yes watch "$kind" --all-namespaces
    done
    can_i yes patch payflows.payflow.io --subresource=status -n "$ns"
    can_i yes update payflows.payflow.io --subresource=finalizers -n "$ns"
    can_i yes create secrets -n "$ns"
    can_i yes get secrets -n "$ns"
    can_i yes patch deployments.apps --subresource=scale -n "$ns"
    can_i yes delete persistentvolumeclaims -n "$ns"
    can_i yes delete jobs.batch -n "$ns"
    can_i yes create events.events.k8s.io -n "$ns"
    can_i yes create leases.coordination.k8s.io -n payflow-system
    can_i yes patch leases.coordination.k8s.io/payflow-operator -n payflow-system
    # What it must not do.
    can_i no list secrets --all-namespaces
    can_i no watch secrets -n "$ns"
    can_i no update secrets -n "$ns"
    can_i no delete secrets -n "$ns"
    can_i no create pods -n "$ns"
    can_i no create pods/exec -n "$ns"
    can_i no delete deployments.apps -n "$ns"
    can_i no delete statefulsets.apps -n "$ns"
    can_i no update payflows.payflow.io -n "$ns"
    can_i no update payflows.payflow.io --subresource=status -n "$ns"
    can_i no patch deployments.apps --subresource=status -n "$ns"
    can_i no update deployments.apps --subresource=scale -n "$ns"
    can_i no delete payflows.payflow.io -n "$ns"
    can_i no delete nodes
    can_i no delete namespaces
    can_i no create clusterrolebindings.rbac.authorization.k8s.io
    can_i no escalate clusterroles.rbac.authorization.k8s.io
    can_i no patch customresourcedefinitions.apiextensions.k8s.io
    can_i no create leases.coordination.k8s.io -n kube-system
    can_i no patch leases.coordination.k8s.io/kube-scheduler -n kube-system
    can_i no patch leases.coordination.k8s.io/other -n payflow-system
    can_i no create events -n "$ns"
    ! keda_allowed create scaledobjects || die "KEDA ScaledObjects allowed without manifests/keda-rbac"
    can_i no impersonate serviceaccounts
    ((CAN_I_FAILURES == 0)) || die "$CAN_I_FAILURES RBAC expectations failed (above)"
    # The optional KEDA role adds exactly its two kinds.
    kubectl apply --server-side --field-manager="$FIELD_MANAGER" -k "$ROOT/manifests/keda-rbac" >/dev/null
    wait_for -t 10 keda_allowed create scaledobjects || die "manifests/keda-rbac does not allow ScaledObjects"
    keda_allowed patch triggerauthentications || die "manifests/keda-rbac does not allow TriggerAuthentications"
    # Pruned when a PayFlow turns keda off.
    keda_allowed delete scaledobjects || die "manifests/keda-rbac does not allow deleting ScaledObjects"
    keda_allowed list triggerauthentications || die "manifests/keda-rbac does not allow listing TriggerAuthentications"
    ! keda_allowed watch scaledobjects || die "manifests/keda-rbac allows watching ScaledObjects"
    kubectl delete -k "$ROOT/manifests/keda-rbac" --ignore-not-found >/dev/null
    ((CAN_I_FAILURES == 0)) || die "$CAN_I_FAILURES RBAC expectations failed (above)"
    log "kubectl auth can-i: needed verbs allowed, the rest refused"
}

check_dockerfile
render_all
dry_run_all
apply_operator
run_operator
check_can_i
exercise_operator
log "all checks passed"

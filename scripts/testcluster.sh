#!/usr/bin/env bash
# A throwaway Kubernetes control plane on 127.0.0.1 for the operator's tests
# (docs/testcluster.md): etcd (Debian's etcd-server), kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (fake nodes whose pods turn
# Ready and whose Job pods complete), the Kubernetes parts built with `go
# build` from the module pinned in tools/testcluster/.
#
#   scripts/testcluster.sh build    build (or reuse) the binaries for tools/testcluster/go.sum
#   scripts/testcluster.sh start    build if needed, start an empty cluster, wait until it is usable
#   scripts/testcluster.sh smoke    Deployment, Job, CronJob, /scale, CRD with CEL, cascading delete
#   scripts/testcluster.sh env      print KUBECONFIG, PAYFLOW_TEST_KUBECONFIG, PATH exports: eval "$(scripts/testcluster.sh env)"
#   scripts/testcluster.sh status   what runs
#   scripts/testcluster.sh stop     stop everything and delete the cluster state
#
# State (certificates, kubeconfigs, etcd data, pids, logs): .payflow/cluster/.
# Binaries: $PAYFLOW_TESTCLUSTER_CACHE/bin/<hash of go.mod+go.sum>/ (default
# ~/.cache/payflow/testcluster); Go caches under ~/.cache/payflow/go (lib.sh).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck disable=SC2034  # read by log() in lib.sh
PAYFLOW_LOG_TAG=testcluster

TC_MODULE="$PAYFLOW_ROOT/tools/testcluster"
TC_CACHE="${PAYFLOW_TESTCLUSTER_CACHE:-$HOME/.cache/payflow/testcluster}"
TC_STATE="$PAYFLOW_STATE_ROOT/cluster"
TC_PKI="$TC_STATE/pki"
TC_LOGS="$TC_STATE/logs"
TC_KUBECONFIG="$TC_STATE/kubeconfig"

# Ports, all on 127.0.0.1, below 32768 (outside Linux's range for outgoing
# connections, as in stack.sh) so a client socket can never hold one.
TC_ETCD_PORT="${TESTCLUSTER_ETCD_PORT:-23379}"
TC_ETCD_PEER_PORT="${TESTCLUSTER_ETCD_PEER_PORT:-23380}"
TC_APISERVER_PORT="${TESTCLUSTER_APISERVER_PORT:-23443}"
TC_KCM_PORT="${TESTCLUSTER_KCM_PORT:-23257}"
TC_SCHEDULER_PORT="${TESTCLUSTER_SCHEDULER_PORT:-23259}"
TC_KWOK_PORT="${TESTCLUSTER_KWOK_PORT:-23280}"

# Pure bookkeeping ranges: nothing routes them here, nothing may dial them.
TC_SERVICE_CIDR=10.96.0.0/16
TC_SERVICE_IP=10.96.0.1
TC_POD_CIDR=10.244.0.0/16
TC_NODES=(kwok-node-0 kwok-node-1)

# Built binaries; etcd comes from Debian's etcd-server package.
TC_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kwok kubectl)
TC_PACKAGES=(
    k8s.io/kubernetes/cmd/kube-apiserver
    k8s.io/kubernetes/cmd/kube-controller-manager
    k8s.io/kubernetes/cmd/kube-scheduler
    k8s.io/kubernetes/cmd/kubectl
    sigs.k8s.io/kwok/cmd/kwok
)
# Start order; stop goes the other way.
TC_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

START_TIMEOUT="${TESTCLUSTER_START_TIMEOUT:-120}"
CPU_WAIT_TIMEOUT="${TESTCLUSTER_CPU_WAIT_TIMEOUT:-1800}"
BUSY_PATTERN='release/payflow|payflow-bench|pgbench'

# ---------------------------------------------------------------- build --

tc_key() { cat "$TC_MODULE/go.mod" "$TC_MODULE/go.sum" | sha256sum | cut -c1-16; }
tc_bindir() { printf '%s/bin/%s' "$TC_CACHE" "$(tc_key)"; }

tc_built() {
    local dir="$1" b
    for b in "${TC_BINARIES[@]}"; do
        [[ -x "$dir/$b" ]] || return 1
    done
}

# Another engineer's benchmark must not share two cores with a Kubernetes
# build: wait (bounded) until it is gone.
wait_for_idle_cpu() {
    local deadline=$((EPOCHSECONDS + CPU_WAIT_TIMEOUT)) busy
    while busy="$(pgrep -f "$BUSY_PATTERN" 2>/dev/null | grep -vx "$$" || true)" && [[ -n "$busy" ]]; do
        if ((EPOCHSECONDS >= deadline)); then
            warn "a benchmark is still running after ${CPU_WAIT_TIMEOUT}s; building anyway"
            return 0
        fi
        log "a benchmark runs (pids: $(echo "$busy" | tr '\n' ' ')); waiting 30s before the build"
        sleep 30
    done
}

cmd_build() {
    local t0 bindir tmp version minor ldflags
    t0="$(now_us)"
    bindir="$(tc_bindir)"
    if tc_built "$bindir"; then
        log "binaries are cached for this go.sum: $bindir (checked in $(elapsed_since "$t0")s)"
        return 0
    fi
    command -v go >/dev/null 2>&1 || die "go not found in PATH"
    mkdir -p "$TC_CACHE/bin"
    # The Kubernetes version goes into the binaries like a release build
    # does it, so /version and kubectl report v1.X.Y instead of v0.0.0-master.
    version="$(cd "$TC_MODULE" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' k8s.io/kubernetes)"
    [[ "$version" =~ ^v1\.([0-9]+)\. ]] || die "unexpected k8s.io/kubernetes version: $version"
    minor="${BASH_REMATCH[1]}"
    ldflags="-s -w"
    local pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean"
    done
    wait_for_idle_cpu
    log "building ${TC_BINARIES[*]} ($version) into $bindir; a cold build takes a while on 2 cores"
    t0="$(now_us)"
    tmp="$(mktemp -d "$TC_CACHE/bin/.build.XXXXXX")"
    if ! (cd "$TC_MODULE" && GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly" \
        go build -trimpath -ldflags="$ldflags" -o "$tmp/" "${TC_PACKAGES[@]}"); then
        rm -rf "$tmp"
        die "go build failed"
    fi
    tc_built "$tmp" || die "go build did not produce ${TC_BINARIES[*]} in $tmp"
    chmod 755 "$tmp"
    rm -rf "$bindir"
    mv "$tmp" "$bindir"
    # Binaries of other go.sum versions are ~400 MB each: keep only this one.
    local old
    for old in "$TC_CACHE"/bin/*; do
        [[ "$old" == "$bindir" ]] || rm -rf "$old"
    done
    log "built in $(elapsed_since "$t0")s: $bindir ($(du -sh "$bindir" | cut -f1))"
}

# ---------------------------------------------------------- certificates --

# sign NAME SUBJECT CA EXTENSIONS: an EC P-256 key and a certificate signed by CA.
sign() {
    local name="$1" subj="$2" ca="$3" ext="$4"
    openssl ecparam -name prime256v1 -genkey -noout -out "$TC_PKI/$name.key" 2>/dev/null
    openssl req -new -key "$TC_PKI/$name.key" -subj "$subj" -out "$TC_PKI/$name.csr" 2>/dev/null
    printf '%b\n' "$ext" >"$TC_PKI/$name.ext"
    openssl x509 -req -in "$TC_PKI/$name.csr" -CA "$TC_PKI/$ca.crt" -CAkey "$TC_PKI/$ca.key" \
        -CAcreateserial -days 30 -sha256 -extfile "$TC_PKI/$name.ext" -out "$TC_PKI/$name.crt" 2>/dev/null
    rm -f "$TC_PKI/$name.csr" "$TC_PKI/$name.ext"
}

make_ca() {
    local name="$1" cn="$2"
    openssl ecparam -name prime256v1 -genkey -noout -out "$TC_PKI/$name.key" 2>/dev/null
    openssl req -x509 -new -key "$TC_PKI/$name.key" -subj "/CN=$cn" -days 30 -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
        -out "$TC_PKI/$name.crt" 2>/dev/null
}

make_pki() {
    command -v openssl >/dev/null 2>&1 || ensure_apt_packages openssl
    mkdir -p "$TC_PKI"
    chmod 700 "$TC_PKI"
    local client='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
    make_ca ca payflow-testcluster-ca
    make_ca front-proxy-ca payflow-testcluster-front-proxy-ca
    sign apiserver /CN=kube-apiserver ca \
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:$TC_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    sign admin "/O=system:masters/CN=payflow-admin" ca "$client"
    sign controller-manager /CN=system:kube-controller-manager ca "$client"
    sign scheduler /CN=system:kube-scheduler ca "$client"
    # The API server's client identity towards aggregated API servers.
    sign front-proxy-client /CN=front-proxy-client front-proxy-ca "$client"
    # Service-account tokens: signed by the API server, verified with the public key.
    openssl ecparam -name prime256v1 -genkey -noout -out "$TC_PKI/sa.key" 2>/dev/null
    openssl ec -in "$TC_PKI/sa.key" -pubout -out "$TC_PKI/sa.pub" 2>/dev/null
}

# write_kubeconfig FILE USER: credentials of pki/USER.{crt,key}, embedded.
write_kubeconfig() {
    local file="$1" user="$2"
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: payflow-testcluster
  cluster:
    server: https://127.0.0.1:$TC_APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$TC_PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$TC_PKI/$user.crt")
    client-key-data: $(base64 -w0 "$TC_PKI/$user.key")
contexts:
- name: payflow-testcluster
  context: {cluster: payflow-testcluster, user: $user}
current-context: payflow-testcluster
EOF
    chmod 600 "$file"
}

# ------------------------------------------------------------ processes --

pidfile() { printf '%s/%s.pid' "$TC_STATE" "$1"; }

# The pid in the pidfile, when that process still runs the component.
component_pid() {
    local pid
    pid="$(read_pidfile "$(pidfile "$1")")"
    [[ -n "$pid" ]] && pid_alive "$pid" "$1" && printf '%s' "$pid"
}

# launch NAME BINARY ARGS...: start in the background, own process group,
# output to logs/NAME.log, pid to NAME.pid.
launch() {
    local name="$1" bin="$2"
    shift 2
    setsid "$bin" "$@" >>"$TC_LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$name")"
}

# fail_start WHAT: show the logs that explain it, stop what started, exit.
fail_start() {
    log "ERROR: $1"
    local c
    for c in "${TC_COMPONENTS[@]}"; do
        log_tail "$TC_LOGS/$c.log" 25
    done
    # Keep the logs for a look; `stop` removes them.
    stop_components
    die "start failed: $1 (logs kept in $TC_LOGS)"
}

# wait_up NAME WHAT CMD...: poll CMD until START_TIMEOUT; fail when NAME died.
wait_up() {
    local name="$1" what="$2"
    shift 2
    local deadline=$((EPOCHSECONDS + START_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        [[ -n "$(component_pid "$name")" ]] || fail_start "$name exited while waiting for $what"
        ((EPOCHSECONDS < deadline)) || fail_start "$what not reached within ${START_TIMEOUT}s"
        sleep 0.2
    done
}

kc() { "$(tc_bindir)/kubectl" --kubeconfig="$TC_KUBECONFIG" "$@"; }

# shellcheck disable=SC2317  # called through wait_up/wait_for
apiserver_ready() {
    curl -fsS --max-time 2 --cacert "$TC_PKI/ca.crt" --cert "$TC_PKI/admin.crt" --key "$TC_PKI/admin.key" \
        "https://127.0.0.1:$TC_APISERVER_PORT/readyz" >/dev/null
}

# shellcheck disable=SC2317  # called through wait_up/wait_for
healthz_https() { curl -fsSk --max-time 2 "https://127.0.0.1:$1/healthz" >/dev/null; }

# shellcheck disable=SC2317  # called through wait_up/wait_for
nodes_ready() {
    local n
    for n in "${TC_NODES[@]}"; do
        [[ "$(kc get node "$n" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]] || return 1
    done
}

# The default ServiceAccount exists once the serviceaccount controller ran:
# before that, creating pods in a new namespace fails.
# shellcheck disable=SC2317  # called through wait_up/wait_for
default_sa_exists() { kc -n default get serviceaccount default; }

cmd_start() {
    local t0
    t0="$(now_us)"
    if [[ -n "$(component_pid kube-apiserver)" ]] && apiserver_ready 2>/dev/null; then
        local c down=0
        for c in "${TC_COMPONENTS[@]}"; do
            [[ -n "$(component_pid "$c")" ]] || down=1
        done
        if ((down == 0)); then
            log "already running; KUBECONFIG=$TC_KUBECONFIG"
            return 0
        fi
        log "partly running; restarting from scratch"
    fi
    # Always start empty: a leftover of an older run is thrown away.
    cmd_stop quiet

    ensure_apt_packages etcd-server curl openssl
    cmd_build
    local bin
    bin="$(tc_bindir)"
    local p
    for p in "$TC_ETCD_PORT" "$TC_ETCD_PEER_PORT" "$TC_APISERVER_PORT" "$TC_KCM_PORT" "$TC_SCHEDULER_PORT" "$TC_KWOK_PORT"; do
        port_open "$p" && die "port $p on 127.0.0.1 is in use by something else"
    done

    mkdir -p "$TC_STATE" "$TC_LOGS"
    local tp
    tp="$(now_us)"
    make_pki
    write_kubeconfig "$TC_KUBECONFIG" admin
    write_kubeconfig "$TC_STATE/controller-manager.kubeconfig" controller-manager
    write_kubeconfig "$TC_STATE/scheduler.kubeconfig" scheduler
    log "certificates and kubeconfigs in $(elapsed_since "$tp")s"

    launch etcd etcd \
        --name=payflow-testcluster \
        --data-dir="$TC_STATE/etcd" \
        --listen-client-urls="http://127.0.0.1:$TC_ETCD_PORT" \
        --advertise-client-urls="http://127.0.0.1:$TC_ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$TC_ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://127.0.0.1:$TC_ETCD_PEER_PORT" \
        --initial-cluster="payflow-testcluster=http://127.0.0.1:$TC_ETCD_PEER_PORT" \
        --initial-cluster-state=new \
        --logger=zap --log-outputs=stderr
    wait_up etcd "etcd health" curl -fsS --max-time 2 "http://127.0.0.1:$TC_ETCD_PORT/health"

    launch kube-apiserver "$bin/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$TC_ETCD_PORT" \
        --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 \
        --secure-port="$TC_APISERVER_PORT" \
        --endpoint-reconciler-type=none \
        --service-cluster-ip-range="$TC_SERVICE_CIDR" \
        --tls-cert-file="$TC_PKI/apiserver.crt" \
        --tls-private-key-file="$TC_PKI/apiserver.key" \
        --client-ca-file="$TC_PKI/ca.crt" \
        --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NodeRestriction \
        --allow-privileged=true \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$TC_PKI/sa.pub" \
        --service-account-signing-key-file="$TC_PKI/sa.key" \
        --requestheader-client-ca-file="$TC_PKI/front-proxy-ca.crt" \
        --requestheader-allowed-names=front-proxy-client \
        --requestheader-username-headers=X-Remote-User \
        --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --proxy-client-cert-file="$TC_PKI/front-proxy-client.crt" \
        --proxy-client-key-file="$TC_PKI/front-proxy-client.key" \
        --profiling=false \
        --v=1
    wait_up kube-apiserver "kube-apiserver /readyz" apiserver_ready
    log "kube-apiserver ready after $(elapsed_since "$t0")s"

    local common=(--bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1)
    launch kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig="$TC_STATE/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$TC_STATE/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$TC_STATE/controller-manager.kubeconfig" \
        --secure-port="$TC_KCM_PORT" \
        --controllers='*' \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$TC_PKI/sa.key" \
        --root-ca-file="$TC_PKI/ca.crt" \
        --cluster-signing-cert-file="$TC_PKI/ca.crt" \
        --cluster-signing-key-file="$TC_PKI/ca.key" \
        --service-cluster-ip-range="$TC_SERVICE_CIDR" \
        --enable-hostpath-provisioner=true \
        "${common[@]}"
    launch kube-scheduler "$bin/kube-scheduler" \
        --kubeconfig="$TC_STATE/scheduler.kubeconfig" \
        --authentication-kubeconfig="$TC_STATE/scheduler.kubeconfig" \
        --authorization-kubeconfig="$TC_STATE/scheduler.kubeconfig" \
        --secure-port="$TC_SCHEDULER_PORT" \
        "${common[@]}"
    launch kwok "$bin/kwok" \
        --kubeconfig="$TC_KUBECONFIG" \
        --config="$TC_MODULE/kwok-stages.yaml" \
        --manage-all-nodes=false \
        --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
        --cidr="$TC_POD_CIDR" \
        --node-lease-duration-seconds=40 \
        --server-address="127.0.0.1:$TC_KWOK_PORT" \
        --v=INFO

    local n nodes=""
    for n in "${TC_NODES[@]}"; do
        nodes+="---
apiVersion: v1
kind: Node
metadata:
  name: $n
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    kubernetes.io/hostname: $n
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: \"64\", memory: 256Gi, pods: \"250\"}
  capacity: {cpu: \"64\", memory: 256Gi, pods: \"250\"}
"
    done
    # A default StorageClass served by kube-controller-manager's own hostPath
    # provisioner (--enable-hostpath-provisioner): PVCs bind, StatefulSet pods
    # schedule, and reclaimPolicy Delete removes the PV (an empty directory
    # under /tmp/hostpath_pv/) when its claim goes.
    local storage='apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: false'
    wait_up kube-apiserver "node creation" kc apply -f - <<<"$nodes"
    wait_up kube-apiserver "StorageClass creation" kc apply -f - <<<"$storage"
    wait_up kwok "fake nodes Ready" nodes_ready
    wait_up kube-controller-manager "kube-controller-manager /healthz" healthz_https "$TC_KCM_PORT"
    wait_up kube-scheduler "kube-scheduler /healthz" healthz_https "$TC_SCHEDULER_PORT"
    wait_up kube-controller-manager "the default ServiceAccount" default_sa_exists
    log "cluster ready in $(elapsed_since "$t0")s: export KUBECONFIG=$TC_KUBECONFIG"
}

# Stop the Kubernetes components together (each takes 1-3 s to shut down
# gracefully), then etcd, whose clients are gone by then.
stop_components() {
    local c pid group
    for group in "kwok kube-scheduler kube-controller-manager kube-apiserver" etcd; do
        local stopping=() waiters=()
        for c in $group; do
            pid="$(component_pid "$c" || true)"
            if [[ -n "$pid" ]]; then
                stop_pid "$pid" 20 &
                waiters+=($!)
                stopping+=("$c($pid)")
            fi
        done
        # Only these: after a failed start the components are children too.
        ((${#waiters[@]} == 0)) || wait "${waiters[@]}"
        ((${#stopping[@]} == 0)) || log "stopped ${stopping[*]}"
        for c in $group; do
            rm -f "$(pidfile "$c")"
        done
    done
}

# Directories that the hostPath provisioner made for PVs still present.
remove_hostpath_volumes() {
    [[ -n "$(component_pid kube-apiserver)" ]] && [[ -x "$(tc_bindir)/kubectl" ]] || return 0
    local path
    while read -r path; do
        [[ "$path" == /tmp/hostpath_pv/?* && "$path" != *..* ]] && rm -rf "$path"
    done < <(kc get pv --request-timeout=5s -o 'jsonpath={range .items[*]}{.spec.hostPath.path}{"\n"}{end}' 2>/dev/null || true)
}

cmd_stop() {
    local quiet="${1:-}"
    [[ -d "$TC_STATE" ]] || { [[ -n "$quiet" ]] || log "not running"; return 0; }
    remove_hostpath_volumes
    stop_components
    rm -rf "$TC_STATE"
    [[ -n "$quiet" ]] || log "stopped; state removed"
}

cmd_env() {
    printf 'export KUBECONFIG=%q\n' "$TC_KUBECONFIG"
    printf 'export PAYFLOW_TEST_KUBECONFIG=%q\n' "$TC_KUBECONFIG"
    # shellcheck disable=SC2016  # $PATH is for the shell that evals this
    printf 'export PATH=%q:"$PATH"\n' "$(tc_bindir)"
}

cmd_status() {
    local c pid running=0
    for c in "${TC_COMPONENTS[@]}"; do
        pid="$(component_pid "$c" || true)"
        if [[ -n "$pid" ]]; then
            printf '%-24s running (pid %s)\n' "$c" "$pid"
            running=$((running + 1))
        else
            printf '%-24s not running\n' "$c"
        fi
    done
    if tc_built "$(tc_bindir)"; then
        printf '%-24s %s\n' binaries "$(tc_bindir)"
    else
        printf '%-24s not built for this go.sum\n' binaries
    fi
    if ((running > 0)) && apiserver_ready 2>/dev/null; then
        printf '%-24s https://127.0.0.1:%s (ready)\n' apiserver "$TC_APISERVER_PORT"
        printf '%-24s %s\n' KUBECONFIG "$TC_KUBECONFIG"
        kc get nodes --no-headers 2>/dev/null | sed 's/^/  node /' || true
    fi
    ((running == ${#TC_COMPONENTS[@]}))
}

# ----------------------------------------------------------------- smoke --

# kwait WHAT SECONDS KUBECTL-WAIT-ARGS...: kubectl wait with a deadline, and a
# description of the namespace when it fails.
kwait() {
    local what="$1" secs="$2"
    shift 2
    if ! kc wait --timeout="${secs}s" "$@" >/dev/null; then
        kc -n "$SMOKE_NS" get all,events 2>&1 | tail -40 >&2
        die "smoke: $what not reached within ${secs}s"
    fi
    log "smoke: $what ($(elapsed_since "$SMOKE_T0")s)"
}

cmd_smoke() {
    local t0
    t0="$(now_us)"
    cmd_start
    SMOKE_T0="$(now_us)"
    SMOKE_NS="smoke-$EPOCHSECONDS"
    kc create namespace "$SMOKE_NS" >/dev/null
    wait_for -t 60 kc -n "$SMOKE_NS" get serviceaccount default ||
        die "smoke: no default ServiceAccount in $SMOKE_NS"
    kc -n "$SMOKE_NS" apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: registry.invalid/web:1, ports: [{containerPort: 8080}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: migrate, image: registry.invalid/migrate:1}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: reversal}
spec:
  schedule: "* * * * *"
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - {name: reversal, image: registry.invalid/reversal:1}
EOF
    kwait "Deployment web has 2 available replicas" 60 -n "$SMOKE_NS" deployment/web --for=condition=Available
    [[ "$(kc -n "$SMOKE_NS" get deployment web -o 'jsonpath={.status.readyReplicas}')" == 2 ]] ||
        die "smoke: Deployment web is Available but does not have 2 ready replicas"
    kwait "Job migrate completed" 60 -n "$SMOKE_NS" job/migrate --for=condition=Complete
    [[ "$(kc -n "$SMOKE_NS" get events --field-selector reason=Scheduled -o 'jsonpath={.items[0].source.component}{.items[0].reportingComponent}')" == *default-scheduler* ]] ||
        die "smoke: pods were not scheduled by kube-scheduler"
    log "smoke: start-to-ready: cluster start + Deployment Ready + Job Complete in $(elapsed_since "$t0")s"

    # tools/testcluster/kwok-stages.yaml fails a Job's pod on request.
    kc -n "$SMOKE_NS" apply -f - >/dev/null <<'EOF'
apiVersion: batch/v1
kind: Job
metadata: {name: migrate-fails}
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations: {payflow.io/test-job-result: failed}
    spec:
      restartPolicy: Never
      containers:
      - {name: migrate, image: registry.invalid/migrate:1}
EOF
    kwait "Job migrate-fails failed (pod annotated payflow.io/test-job-result: failed)" 60 \
        -n "$SMOKE_NS" job/migrate-fails --for=condition=Failed

    # /scale subresource, the way the operator's worker scaler writes replicas.
    kc -n "$SMOKE_NS" scale deployment/web --replicas=3 >/dev/null
    kwait "kubectl scale to 3 replicas" 60 -n "$SMOKE_NS" deployment/web \
        --for=jsonpath='{.status.readyReplicas}'=3
    [[ "$(kc get --raw "/apis/apps/v1/namespaces/$SMOKE_NS/deployments/web/scale" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"]["replicas"])')" == 3 ]] ||
        die "smoke: the /scale subresource does not report 3 replicas"

    # A StatefulSet with a volume claim: the PVC binds (default StorageClass), the pod turns Ready.
    kc -n "$SMOKE_NS" apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: postgres
        image: registry.invalid/postgres:16
        volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
EOF
    kwait "StatefulSet db ready with a bound PVC" 60 -n "$SMOKE_NS" statefulset/db \
        --for=jsonpath='{.status.readyReplicas}'=1
    kwait "PVC data-db-0 Bound" 30 -n "$SMOKE_NS" pvc/data-db-0 --for=jsonpath='{.status.phase}'=Bound
    local pv
    pv="$(kc -n "$SMOKE_NS" get pvc data-db-0 -o 'jsonpath={.spec.volumeName}')"

    # Service-account tokens (TokenRequest, signed with pki/sa.key).
    [[ -n "$(kc -n "$SMOKE_NS" create token default --duration=10m)" ]] || die "smoke: no service-account token"

    # CRD with a CEL rule: the API server itself rejects an invalid object.
    kc apply -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.payflow.io}
spec:
  group: smoke.payflow.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: self.minReplicas <= self.maxReplicas
              message: minReplicas must not exceed maxReplicas
            properties:
              minReplicas: {type: integer}
              maxReplicas: {type: integer}
EOF
    kwait "CRD established" 30 crd/widgets.smoke.payflow.io --for=condition=Established
    local out
    if out="$(kc -n "$SMOKE_NS" apply -f - 2>&1 <<'EOF'
apiVersion: smoke.payflow.io/v1
kind: Widget
metadata: {name: bad}
spec: {minReplicas: 5, maxReplicas: 2}
EOF
    )"; then
        die "smoke: an object violating the CEL rule was accepted"
    fi
    [[ "$out" == *"minReplicas must not exceed maxReplicas"* ]] || die "smoke: unexpected rejection: $out"
    kc -n "$SMOKE_NS" apply -f - >/dev/null <<'EOF'
apiVersion: smoke.payflow.io/v1
kind: Widget
metadata: {name: good}
spec: {minReplicas: 1, maxReplicas: 2}
EOF
    log "smoke: CEL rule enforced (invalid Widget rejected, valid one accepted)"

    # The CronJob creates a Job on the next full minute.
    kwait "CronJob reversal ran a Job" 75 -n "$SMOKE_NS" cronjob/reversal \
        --for=jsonpath='{.status.lastSuccessfulTime}'

    # Cascading deletion: the namespace and everything owned in it go away.
    local pods
    pods="$(kc -n "$SMOKE_NS" get pods -o name | wc -l)"
    kc delete crd widgets.smoke.payflow.io --wait=false >/dev/null
    kc delete namespace "$SMOKE_NS" --wait=false >/dev/null
    if ! wait_for -t 90 -i 0.5 _namespace_gone "$SMOKE_NS"; then
        kc get namespace "$SMOKE_NS" -o yaml >&2 || true
        kc -n "$SMOKE_NS" get pods >&2 || true
        die "smoke: namespace $SMOKE_NS and its $pods pods not removed within 90s"
    fi
    log "smoke: namespace deleted, its $pods pods removed ($(elapsed_since "$SMOKE_T0")s)"
    wait_for -t 60 -i 0.5 _pv_gone "$pv" || die "smoke: PersistentVolume $pv (reclaimPolicy Delete) not deleted"
    log "smoke: PersistentVolume $pv of the deleted claim removed ($(elapsed_since "$SMOKE_T0")s)"
    # Garbage collection of owner references without a namespace delete.
    SMOKE_NS="$SMOKE_NS-gc"
    kc create namespace "$SMOKE_NS" >/dev/null
    wait_for -t 60 kc -n "$SMOKE_NS" get serviceaccount default || die "smoke: no default ServiceAccount"
    kc -n "$SMOKE_NS" create deployment gc --image=registry.invalid/gc:1 --replicas=2 >/dev/null
    kwait "Deployment gc Available" 60 -n "$SMOKE_NS" deployment/gc --for=condition=Available
    kc -n "$SMOKE_NS" delete deployment gc --cascade=background >/dev/null
    wait_for -t 60 -i 0.5 _no_pods "$SMOKE_NS" || die "smoke: pods of a deleted Deployment not garbage-collected"
    log "smoke: ReplicaSet and pods garbage-collected after deleting their Deployment ($(elapsed_since "$SMOKE_T0")s)"
    kc delete namespace "$SMOKE_NS" --wait=false >/dev/null
    log "smoke passed in $(elapsed_since "$t0")s (including start)"
}
# shellcheck disable=SC2317  # called through wait_up/wait_for
_namespace_gone() { ! kc get namespace "$1" >/dev/null 2>&1; }
# shellcheck disable=SC2317  # called through wait_up/wait_for
_pv_gone() { ! kc get pv "$1" >/dev/null 2>&1; }
# shellcheck disable=SC2317  # called through wait_for
_no_pods() { [[ -z "$(kc -n "$1" get pods,replicasets -o name 2>/dev/null)" ]]; }

main() {
    case "${1:-}" in
        build) cmd_build ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        env) cmd_env ;;
        status) cmd_status ;;
        smoke) cmd_smoke ;;
        *)
            usage_of "${BASH_SOURCE[0]}" >&2
            exit 2
            ;;
    esac
}

# One line, so that bash has read all of it before it runs: editing this file
# while a long build runs cannot change what the running script does.
main "$@"; exit $?

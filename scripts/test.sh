#!/usr/bin/env bash
# Run every PayFlow check: formatting, clippy, and the whole test suite
# against a fresh, throwaway test stack (scripts/stack.sh ... test).
#
# Usage: scripts/test.sh [ARGS...]   ARGS are appended to the workspace test step only
#        (`cargo test --workspace --locked ARGS`), e.g. a test-name filter or
#        `-- --nocapture`; every other step runs as always
#        (e.g. scripts/test.sh refresh -- --nocapture: in that step, only tests whose
#        name contains `refresh`, with their output shown)
#
# Exits non-zero on the first failing step; the test stack is always stopped.
# One run per checkout at a time (they share the test stack and cluster): a
# second run exits at once with an error naming the pid of the first.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PAYFLOW_LOG_TAG="test"

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    usage_of "${BASH_SOURCE[0]}"
    exit 0
fi

STACK="$PAYFLOW_SCRIPTS/stack.sh"
CLUSTER="$PAYFLOW_SCRIPTS/testcluster.sh"

# Held (fd 9) until we exit; before anything is started or stopped, so a
# refused run touches nothing of the running one. scripts/stack.sh refuses
# commands on the test stack from anyone but this run meanwhile.
hold_script_lock test.sh
export PAYFLOW_TEST_SH_PID=$$

ensure_apt_packages "${PAYFLOW_STACK_APT_PACKAGES[@]}"
ensure_rust_components

# Always tear the test stack and cluster down, also on failure or Ctrl-C.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    "$CLUSTER" stop || warn "stopping the test cluster failed"
    "$STACK" stop test || warn "stopping the test stack failed"
    release_script_lock test.sh
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

STEP=0
TOTAL=10
# step TITLE CMD...: print a heading, run CMD, report elapsed time; stop the
# whole run on failure with CMD's exit code. CMD does not get our lock (fd 9),
# so servers it starts never hold it after we end.
step() {
    local title="$1" t0 rc=0
    shift
    STEP=$((STEP + 1))
    printf '\n==> [%d/%d] %s\n' "$STEP" "$TOTAL" "$title"
    t0="$(now_us)"
    "$@" 9>&- || rc=$?
    if ((rc != 0)); then
        printf '<== [%d/%d] %s FAILED (exit %d) after %ss\n' "$STEP" "$TOTAL" "$title" "$rc" "$(elapsed_since "$t0")"
        exit "$rc"
    fi
    printf '<== [%d/%d] %s ok (%ss)\n' "$STEP" "$TOTAL" "$title" "$(elapsed_since "$t0")"
}

start_test_stack() {
    # Test data is disposable, so trade durability for speed.
    PAYFLOW_PG_FAST=1 "$STACK" start test
}

cd "$PAYFLOW_ROOT"
step "start test stack" start_test_stack
# Builds the Kubernetes binaries from the Go module proxy the first time (cached after).
step "start test cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok)" "$CLUSTER" start
# Assign first: a failing `stack.sh env` would be masked inside eval "$(...)".
stack_env="$("$STACK" env test)"
eval "$stack_env"
cluster_env="$("$CLUSTER" env)"
eval "$cluster_env"

step "cargo fmt --all --check" cargo fmt --all --check
step "cargo clippy --workspace --all-targets --locked -- -D warnings" \
    cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test --workspace --locked${*:+ $*}" cargo test --workspace --locked "$@"
# Tests that restart shared servers run alone, after everything else.
step "cargo test (alone: RabbitMQ restart)" \
    cargo test -p payflow --test it --locked -- --ignored --test-threads=1
step "cargo test (operator on the test cluster)" \
    cargo test -p payflow-operator --test cluster --locked -- --ignored --test-threads=2
# The shipped bundle: the image's shape, kustomize renders, server-side dry runs, and the
# operator under its own RBAC (uses the debug operator the step above built).
step "Kubernetes bundle (Dockerfile shape, kustomize, dry-run, operator RBAC)" "$PAYFLOW_SCRIPTS/check-manifests.sh"
step "Argo CD bundle (health Lua, Applications vs Argo CD's CRDs)" "$PAYFLOW_SCRIPTS/check-argocd.sh"
step "Grafana dashboards and alert rules (promtool, exported metrics, queries on a real Prometheus)" \
    "$PAYFLOW_SCRIPTS/check-observability.sh"

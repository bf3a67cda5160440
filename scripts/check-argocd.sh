#!/usr/bin/env bash
# Checks the Argo CD bundle in argocd/ (docs/argocd.md) with the Go tests in
# tools/argocd-check:
#   a. the Lua health checks of argocd/argocd-cm-patch.yaml run with
#      gopher-lua the way Argo CD runs them, against argocd/testdata/health;
#   b. every Application rendered as Argo CD would (kustomize of its path plus
#      its kustomize patches), checked against its AppProject: sources,
#      destinations, kind whitelists (exactly what the manifests contain),
#      sync waves crds < operator < payflow, the options that keep the CRD and
#      the data volumes;
#   c. against the test control plane: Argo CD's own Application and
#      AppProject CRDs (from the pinned Argo CD Go module, via the Go module
#      proxy) installed, our objects server-side dry-run applied to them in
#      namespace argocd, the argocd-cm patch applied to a stand-in argocd-cm.
#   d. cleanup of what it created: namespace argocd and the two Argo CD CRDs,
#      found by the label app.kubernetes.io/managed-by=payflow-argocd-check.
#
#   eval "$(scripts/testcluster.sh env)" && scripts/check-argocd.sh
#
# It refuses to run on a cluster whose argocd namespace or Argo CD CRDs it
# did not create; do not run two at once (they share the CRDs). Extra
# arguments go to `go test` (e.g. -run Health -v).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck disable=SC2034  # read by log() in lib.sh
PAYFLOW_LOG_TAG=check-argocd

T0="$(now_us)"
OWNER=app.kubernetes.io/managed-by=payflow-argocd-check

[[ -n "${KUBECONFIG:-}" ]] ||
    die "KUBECONFIG is unset: start the test cluster and run eval \"\$(scripts/testcluster.sh env)\" first"
[[ -r "$KUBECONFIG" ]] || die "KUBECONFIG=$KUBECONFIG is not readable"
command -v kubectl >/dev/null 2>&1 || die "kubectl not in PATH (eval \"\$(scripts/testcluster.sh env)\" adds it)"
command -v go >/dev/null 2>&1 || die "go not in PATH"
kubectl get --raw /readyz >/dev/null 2>&1 || die "the cluster of $KUBECONFIG does not answer /readyz"

# The test cleans up after itself; this covers a test binary that was killed.
cleanup() {
    kubectl delete namespace -l "$OWNER" --ignore-not-found --wait --timeout=120s >/dev/null 2>&1 || true
    kubectl delete crd -l "$OWNER" --ignore-not-found --wait --timeout=120s >/dev/null 2>&1 || true
}
trap cleanup EXIT

rc=0
# -count=1: the results depend on the cluster and on files outside the
# module, which go test's cache does not see.
(cd "$PAYFLOW_ROOT/tools/argocd-check" &&
    PAYFLOW_TEST_KUBECONFIG="$KUBECONFIG" GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly" go test -count=1 "$@" ./...) || rc=$?
cleanup
if ((rc == 0)); then
    log "OK in $(elapsed_since "$T0") s"
else
    log "FAILED in $(elapsed_since "$T0") s"
fi
exit "$rc"

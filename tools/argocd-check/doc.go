// Package argocdcheck holds the tests of the Argo CD bundle in argocd/
// (docs/argocd.md); everything is in the _test.go files:
//
//   - health_test.go runs the Lua health checks shipped in
//     argocd/argocd-cm-patch.yaml the way Argo CD does (gopher-lua, only the
//     base, table and package libraries, the object as the global `obj`)
//     against argocd/testdata/health.
//   - apps_test.go checks what a schema cannot: every Application's path
//     renders, projects, sync waves, destinations and kinds allowed by the
//     AppProject, options that protect the CRD and the data volumes.
//   - cluster_test.go installs Argo CD's own CRDs (from the pinned Argo CD Go
//     module) into the test control plane and server-side dry-runs our
//     objects against them; it runs only with PAYFLOW_TEST_KUBECONFIG set
//     (scripts/testcluster.sh env, scripts/check-argocd.sh).
package argocdcheck

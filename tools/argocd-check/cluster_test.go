package argocdcheck

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// Argo CD's CRDs come from its Go module through the Go module proxy (and
// GOMODCACHE), pinned by version and by the module's h1: hash; nothing of
// Argo CD is copied into this repository. v3.5.7 is the newest release
// whose go.mod accepts the Go toolchain here (go1.26).
const (
	argoModule  = "github.com/argoproj/argo-cd/v3"
	argoVersion = "v3.5.7"
	argoSum     = "h1:Xm1BF+I5OgDKUG3SDK49vn2/Y5AMyaNVko+/JT08gj0="

	// Everything this test creates carries this label, so a cleanup (here or
	// in scripts/check-argocd.sh) deletes ours and never someone else's.
	ownerLabel = "app.kubernetes.io/managed-by"
	ownerValue = "payflow-argocd-check"
	manager    = "payflow-argocd-check"
	argoNS     = "argocd"
)

var argoCRDs = map[string]string{
	"applications.argoproj.io": "application-crd.yaml",
	"appprojects.argoproj.io":  "appproject-crd.yaml",
}

// argoModuleDir downloads (or finds in GOMODCACHE) the pinned Argo CD
// module and returns its directory.
func argoModuleDir(t *testing.T) string {
	t.Helper()
	start := time.Now()
	cmd := exec.Command("go", "mod", "download", "-json", argoModule+"@"+argoVersion)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var info struct{ Dir, Sum, Error string }
	if jerr := json.Unmarshal(out, &info); jerr != nil || err != nil || info.Error != "" {
		t.Fatalf("go mod download %s@%s: %v %s %s", argoModule, argoVersion, err, info.Error, stderr.String())
	}
	if info.Sum != argoSum {
		t.Fatalf("%s@%s has hash %s, pinned %s", argoModule, argoVersion, info.Sum, argoSum)
	}
	t.Logf("%s@%s in %s (%.1fs)", argoModule, argoVersion, info.Dir, time.Since(start).Seconds())
	return info.Dir
}

// owned reports whether a cluster object exists, and whether it is ours.
func owned(t *testing.T, resource string) (exists, ours bool) {
	t.Helper()
	out, err := kubectl(nil, "get", resource, "--ignore-not-found", "-o", "jsonpath={.metadata.labels."+strings.ReplaceAll(ownerLabel, ".", `\.`)+"}")
	if err != nil {
		t.Fatal(err)
	}
	got, err := kubectl(nil, "get", resource, "--ignore-not-found", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	return len(bytes.TrimSpace(got)) > 0, string(out) == ownerValue
}

// cleanup deletes what this test created (by label) and waits for it to go.
func cleanup(t *testing.T) {
	if _, err := kubectl(nil, "delete", "namespace", "-l", ownerLabel+"="+ownerValue, "--ignore-not-found", "--wait", "--timeout=120s"); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	if _, err := kubectl(nil, "delete", "crd", "-l", ownerLabel+"="+ownerValue, "--ignore-not-found", "--wait", "--timeout=120s"); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

func labelled(o object) object {
	meta, _ := o["metadata"].(map[string]any)
	labels, _ := meta["labels"].(map[string]any)
	if labels == nil {
		labels = map[string]any{}
	}
	labels[ownerLabel] = ownerValue
	meta["labels"] = labels
	return o
}

func encodeDocs(t *testing.T, objs []object) []byte {
	t.Helper()
	var buf bytes.Buffer
	for _, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		buf.WriteString("---\n")
		buf.Write(b)
	}
	return buf.Bytes()
}

// Right after a CRD is established kubectl's discovery may not know the
// kind yet; only that error is retried, until a deadline.
var discoveryLag = regexp.MustCompile(`no matches for kind|could not find the requested resource|ensure CRDs are installed first`)

func dryRun(t *testing.T, objs []object) ([]byte, error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := kubectl(encodeDocs(t, objs), "apply", "--server-side", "--dry-run=server", "--field-manager="+manager, "-f", "-")
		if err == nil || !discoveryLag.MatchString(err.Error()) || time.Now().After(deadline) {
			return out, err
		}
		time.Sleep(500 * time.Millisecond) // polling a condition, bounded by the deadline
	}
}

func TestAgainstControlPlane(t *testing.T) {
	// Only the throwaway test cluster: this installs and deletes CRDs. An
	// ambient KUBECONFIG may point at a real cluster.
	kubeconfig := os.Getenv("PAYFLOW_TEST_KUBECONFIG")
	if kubeconfig == "" {
		t.Skip("PAYFLOW_TEST_KUBECONFIG is not set; scripts/check-argocd.sh runs this against the test control plane")
	}
	t.Setenv("KUBECONFIG", kubeconfig)
	repo := repoRoot(t)
	argoDir := argoModuleDir(t)

	// Never touch an Argo CD or an argocd namespace that is not ours.
	for _, res := range []string{"namespace/" + argoNS, "crd/applications.argoproj.io", "crd/appprojects.argoproj.io"} {
		if exists, ours := owned(t, res); exists && !ours {
			t.Fatalf("%s exists and was not created by this check; use a cluster without Argo CD", res)
		}
	}
	cleanup(t) // leftovers of an interrupted run
	t.Cleanup(func() { cleanup(t) })

	var crds []object
	for name, file := range argoCRDs {
		data, err := os.ReadFile(filepath.Join(argoDir, "manifests", "crds", file))
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeDocs(data)
		if err != nil || len(objs) != 1 || objs[0].name() != name {
			t.Fatalf("%s: want the one CRD %s (%v)", file, name, err)
		}
		crds = append(crds, labelled(objs[0]))
	}
	crds = append(crds, labelled(object{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": argoNS}}))
	if _, err := kubectl(encodeDocs(t, crds), "apply", "--server-side", "--field-manager="+manager, "-f", "-"); err != nil {
		t.Fatal(err)
	}
	for name := range argoCRDs {
		waitEstablished(t, name)
	}

	t.Run("BuiltinScopes", func(t *testing.T) { checkScopes(t, repo) })
	t.Run("DryRun", func(t *testing.T) {
		for _, f := range flavours {
			b := loadBundle(t, repo, f.dir)
			objs := []object{}
			for _, name := range []string{"payflow", "payflow-bootstrap"} {
				objs = append(objs, b.projects[name])
			}
			objs = append(objs, b.root)
			objs = append(objs, b.children...)
			out, err := dryRun(t, objs)
			if err != nil {
				t.Fatalf("%s: %v", f.name, err)
			}
			if n := strings.Count(string(out), "serverside-applied (server dry run)"); n != len(objs) {
				t.Fatalf("%s: %d of %d objects accepted:\n%s", f.name, n, len(objs), out)
			}
		}
	})
	// The dry run above only means something if the schema rejects mistakes.
	t.Run("SchemaRejectsMistakes", func(t *testing.T) {
		b := loadBundle(t, repo, "argocd")
		for name, mutate := range map[string]func(o map[string]any){
			"unknown field": func(o map[string]any) {
				o["spec"].(map[string]any)["syncPolicy"].(map[string]any)["syncOption"] = []any{"Prune=false"}
			},
			"wrong type": func(o map[string]any) {
				o["spec"].(map[string]any)["source"].(map[string]any)["kustomize"] = map[string]any{"patches": "Delete=false"}
			},
			"missing destination": func(o map[string]any) { delete(o["spec"].(map[string]any), "destination") },
		} {
			app := clone(t, b.children[len(b.children)-1])
			mutate(app)
			out, err := dryRun(t, []object{app})
			if err == nil {
				t.Errorf("%s: accepted:\n%s", name, out)
				continue
			}
			t.Logf("%s: rejected: %v", name, err)
		}
	})
	t.Run("ArgoCMPatch", func(t *testing.T) { checkCMPatch(t, repo) })
}

// waitEstablished polls the CRD's Established condition (kubectl wait
// fails at once while the CRD has no conditions yet).
func waitEstablished(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := kubectl(nil, "get", "crd", name, "-o", `jsonpath={.status.conditions[?(@.type=="Established")].status}`)
		if err == nil && string(out) == "True" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRD %s not established after 60s: %v %s", name, err, out)
		}
		time.Sleep(200 * time.Millisecond) // polling a condition, bounded by the deadline
	}
}

func clone(t *testing.T, o object) object {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// The built-in kinds in the bundle have the scope apps_test.go assumes.
func checkScopes(t *testing.T, repo string) {
	seen := map[string]bool{}
	for _, f := range flavours {
		b := loadBundle(t, repo, f.dir)
		custom := map[string]bool{}
		for _, objs := range b.rendered {
			for _, o := range objs {
				if groupKind(o) == "apiextensions.k8s.io/CustomResourceDefinition" {
					custom[o.str("spec", "group")] = true
				}
			}
		}
		for _, objs := range b.rendered {
			for _, o := range objs {
				gv, gk := o.str("apiVersion"), groupKind(o)
				if seen[gk] || custom[o.group()] {
					continue
				}
				seen[gk] = true
				path := "/apis/" + gv
				if o.group() == "" {
					path = "/api/" + gv
				}
				raw, err := kubectl(nil, "get", "--raw", path)
				if err != nil {
					t.Fatal(err)
				}
				var list struct {
					Resources []struct {
						Name       string `json:"name"`
						Kind       string `json:"kind"`
						Namespaced bool   `json:"namespaced"`
					} `json:"resources"`
				}
				if err := json.Unmarshal(raw, &list); err != nil {
					t.Fatal(err)
				}
				found := false
				for _, r := range list.Resources {
					if r.Kind == o.kind() && !strings.Contains(r.Name, "/") {
						found = true
						if r.Namespaced == clusterScoped[gk] {
							t.Errorf("%s: server says namespaced=%v, apps_test.go assumes cluster-scoped=%v", gk, r.Namespaced, clusterScoped[gk])
						}
					}
				}
				if !found {
					t.Errorf("%s is not served by the API server at %s", gk, gv)
				}
			}
		}
	}
	if len(seen) == 0 {
		t.Fatal("no built-in kinds checked")
	}
}

// The documented `kubectl -n argocd patch configmap argocd-cm --patch-file`
// adds our keys to an existing argocd-cm and keeps the others.
func checkCMPatch(t *testing.T, repo string) {
	existing := labelled(object{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": "argocd-cm", "namespace": argoNS,
			"labels": map[string]any{"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"}},
		"data": map[string]any{
			"url": "https://argocd.example.com",
			"resource.customizations.health.cert-manager.io_Certificate": "return {status = \"Healthy\"}\n",
		},
	})
	if _, err := kubectl(encodeDocs(t, []object{existing}), "apply", "--server-side", "--field-manager="+manager, "-f", "-"); err != nil {
		t.Fatal(err)
	}
	patchFile := filepath.Join(repo, "argocd", "argocd-cm-patch.yaml")
	if _, err := kubectl(nil, "-n", argoNS, "patch", "configmap", "argocd-cm", "--patch-file", patchFile); err != nil {
		t.Fatal(err)
	}
	raw, err := kubectl(nil, "-n", argoNS, "get", "configmap", "argocd-cm", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var live struct {
		Data map[string]string `json:"data"`
	}
	if err := json.Unmarshal(raw, &live); err != nil {
		t.Fatal(err)
	}
	for k, v := range existing["data"].(map[string]any) {
		if live.Data[k] != v {
			t.Errorf("the patch changed %s", k)
		}
	}
	scripts := healthScripts(t)
	for key, script := range scripts {
		if got := live.Data[healthKeyPrefix+key]; got != script {
			t.Errorf("%s%s in the live argocd-cm differs from the file:\n%s", healthKeyPrefix, key, got)
		}
	}
	if len(live.Data) != len(existing["data"].(map[string]any))+len(scripts) {
		t.Errorf("live argocd-cm has %d keys: %v", len(live.Data), keys(live.Data))
	}
}

func keys(m map[string]string) string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return fmt.Sprint(out)
}

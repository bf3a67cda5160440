package argocdcheck

import (
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The two ways to install: kubectl apply -k <dir>.
var flavours = []struct{ name, dir string }{
	{"default", "argocd"},
	{"microk8s", "argocd/microk8s"},
}

const (
	inCluster          = "https://kubernetes.default.svc"
	resourcesFinalizer = "resources-finalizer.argocd.argoproj.io"
	syncOptionsKey     = "argocd.argoproj.io/sync-options"
	syncWaveKey        = "argocd.argoproj.io/sync-wave"
)

// Built-in kinds that are cluster-scoped, among those a bundle might hold
// (cluster_test.go checks these against the API server); a custom
// resource's scope comes from its CRD in the bundle.
var clusterScoped = map[string]bool{
	"/Namespace": true, "/PersistentVolume": true,
	"apiextensions.k8s.io/CustomResourceDefinition": true,
	"rbac.authorization.k8s.io/ClusterRole":         true, "rbac.authorization.k8s.io/ClusterRoleBinding": true,
	"admissionregistration.k8s.io/ValidatingWebhookConfiguration": true,
	"admissionregistration.k8s.io/MutatingWebhookConfiguration":   true,
	"scheduling.k8s.io/PriorityClass":                             true, "storage.k8s.io/StorageClass": true,
	"networking.k8s.io/IngressClass": true, "apiregistration.k8s.io/APIService": true,
}

func groupKind(o object) string { return o.group() + "/" + o.kind() }

// bundle is one flavour as Argo CD would see it: what `kubectl apply -k`
// creates, and what the root app renders from git.
type bundle struct {
	projects map[string]object
	root     object
	children []object
	// rendered objects of each child Application, by Application name
	rendered map[string][]object
}

func loadBundle(t *testing.T, repo, dir string) bundle {
	t.Helper()
	b := bundle{projects: map[string]object{}, rendered: map[string][]object{}}
	for _, o := range kustomize(t, filepath.Join(repo, dir)) {
		switch groupKind(o) {
		case "argoproj.io/AppProject":
			b.projects[o.name()] = o
		case "argoproj.io/Application":
			if b.root != nil {
				t.Fatalf("%s: more than one Application (%s, %s)", dir, b.root.name(), o.name())
			}
			b.root = o
		default:
			t.Fatalf("%s: unexpected %s", dir, o.id())
		}
	}
	if b.root == nil {
		t.Fatalf("%s: no root Application", dir)
	}
	b.children = renderApp(t, repo, b.root)
	for _, c := range b.children {
		if groupKind(c) != "argoproj.io/Application" {
			t.Fatalf("root app path %s renders %s; only Applications belong there", b.root.str("spec", "source", "path"), c.id())
		}
		b.rendered[c.name()] = renderApp(t, repo, c)
	}
	return b
}

// renderApp renders an Application's source as Argo CD would: kustomize of
// spec.source.path with the Application's spec.source.kustomize.patches
// (Argo CD adds them to the kustomization; here a temporary kustomization
// includes the path and carries the patches).
func renderApp(t *testing.T, repo string, app object) []object {
	t.Helper()
	p := app.str("spec", "source", "path")
	if p == "" || filepath.IsAbs(p) || strings.Contains(p, "..") {
		t.Fatalf("%s: spec.source.path %q must be a relative path inside the repository", app.name(), p)
	}
	dir := filepath.Join(repo, p)
	if _, err := os.Stat(filepath.Join(dir, "kustomization.yaml")); err != nil {
		t.Fatalf("%s: spec.source.path %s has no kustomization.yaml: %v", app.name(), p, err)
	}
	k, _ := app.get("spec", "source", "kustomize").(map[string]any)
	for key := range k {
		if key != "patches" {
			t.Fatalf("%s: spec.source.kustomize.%s is not emulated by this check", app.name(), key)
		}
	}
	if len(k) == 0 {
		return kustomize(t, dir)
	}
	tmp := t.TempDir()
	rel, err := filepath.Rel(tmp, dir)
	if err != nil {
		t.Fatal(err)
	}
	kust, err := yaml.Marshal(map[string]any{
		"apiVersion": "kustomize.config.k8s.io/v1beta1",
		"kind":       "Kustomization",
		"resources":  []string{rel},
		"patches":    k["patches"],
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "kustomization.yaml"), kust, 0o644); err != nil {
		t.Fatal(err)
	}
	return kustomize(t, tmp)
}

func syncOptions(app object) []string { return app.strings("spec", "syncPolicy", "syncOptions") }

func has(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// annotationOptions splits an argocd.argoproj.io/sync-options annotation.
func annotationOptions(o object) []string {
	var out []string
	for _, s := range strings.Split(o.str("metadata", "annotations", syncOptionsKey), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// glob matches an AppProject pattern ("*" and path-style globs, as far as
// these projects use them; Argo CD's own matcher is a superset).
func glob(pattern, value string) bool {
	ok, err := path.Match(pattern, value)
	return err == nil && ok
}

func destinationPermitted(project object, server, namespace string) bool {
	for _, d := range project.objects("spec", "destinations") {
		if glob(d.str("server"), server) && glob(d.str("namespace"), namespace) {
			return true
		}
	}
	return false
}

func sourcePermitted(project object, repoURL string) bool {
	for _, r := range project.strings("spec", "sourceRepos") {
		if glob(r, repoURL) {
			return true
		}
	}
	return false
}

func whitelist(project object, field string) map[string]bool {
	out := map[string]bool{}
	for _, e := range project.objects("spec", field) {
		out[e.str("group")+"/"+e.str("kind")] = true
	}
	return out
}

func wave(t *testing.T, app object) int {
	t.Helper()
	w, err := strconv.Atoi(app.str("metadata", "annotations", syncWaveKey))
	if err != nil {
		t.Fatalf("%s: %s annotation: %v", app.name(), syncWaveKey, err)
	}
	return w
}

// role tells the three child Applications apart by what they deploy.
func role(app object) string {
	p := app.str("spec", "source", "path")
	switch {
	case p == "crds":
		return "crds"
	case path.Base(p) == "operator":
		return "operator"
	case path.Base(p) == "payflow":
		return "payflow"
	}
	return ""
}

func TestBundle(t *testing.T) {
	repo := repoRoot(t)
	for _, f := range flavours {
		t.Run(f.name, func(t *testing.T) {
			b := loadBundle(t, repo, f.dir)
			checkRoot(t, b)
			checkChildren(t, b)
			checkWhitelists(t, b)
		})
	}
}

func checkRoot(t *testing.T, b bundle) {
	root := b.root
	project, ok := b.projects[root.str("spec", "project")]
	if !ok {
		t.Fatalf("root app %s: project %q is not in the bundle", root.name(), root.str("spec", "project"))
	}
	if root.namespace() != "argocd" || root.str("spec", "destination", "namespace") != "argocd" {
		t.Errorf("root app must live in and deploy to namespace argocd")
	}
	if !destinationPermitted(project, root.str("spec", "destination", "server"), "argocd") {
		t.Errorf("root app destination is not permitted by project %s", project.name())
	}
	// The bootstrap project may create Applications and nothing else.
	if got := whitelist(project, "namespaceResourceWhitelist"); !reflect.DeepEqual(got, map[string]bool{"argoproj.io/Application": true}) {
		t.Errorf("project %s namespaced whitelist = %v, want only argoproj.io/Application", project.name(), got)
	}
	if got := whitelist(project, "clusterResourceWhitelist"); len(got) != 0 {
		t.Errorf("project %s must not allow cluster-scoped kinds, allows %v", project.name(), got)
	}
	if len(project.objects("spec", "destinations")) != 1 {
		t.Errorf("project %s must have the argocd namespace as its only destination", project.name())
	}
}

func checkChildren(t *testing.T, b bundle) {
	repoURL := b.root.str("spec", "source", "repoURL")
	byRole := map[string]object{}
	appNames := map[string]bool{b.root.name(): true}
	for _, app := range append([]object{b.root}, b.children...) {
		if app.str("spec", "source", "repoURL") != repoURL {
			t.Errorf("%s: repoURL %q differs from the root's %q (replace the URL everywhere)", app.name(), app.str("spec", "source", "repoURL"), repoURL)
		}
		if app.str("spec", "source", "targetRevision") == "" {
			t.Errorf("%s: no targetRevision", app.name())
		}
		if p, ok := b.projects[app.str("spec", "project")]; !ok || !sourcePermitted(p, app.str("spec", "source", "repoURL")) {
			t.Errorf("%s: project %q missing or does not permit its repoURL", app.name(), app.str("spec", "project"))
		}
	}
	for _, app := range b.children {
		appNames[app.name()] = true
		r := role(app)
		if r == "" || byRole[r] != nil {
			t.Fatalf("%s: path %s is not one of crds, .../operator, .../payflow, or twice", app.name(), app.str("spec", "source", "path"))
		}
		byRole[r] = app
		if app.namespace() != "argocd" {
			t.Errorf("%s: Applications live in namespace argocd, not %q", app.name(), app.namespace())
		}
		if app.str("spec", "project") != "payflow" {
			t.Errorf("%s: project %q, want payflow", app.name(), app.str("spec", "project"))
		}
		project := b.projects["payflow"]
		server, ns := app.str("spec", "destination", "server"), app.str("spec", "destination", "namespace")
		if server != inCluster || !destinationPermitted(project, server, ns) {
			t.Errorf("%s: destination %s %s not permitted by project payflow", app.name(), server, ns)
		}
		for _, o := range b.rendered[app.name()] {
			if groupKind(o) == "/PersistentVolumeClaim" {
				t.Errorf("%s: renders %s; volumes belong to the operator's StatefulSets, never to git", app.name(), o.id())
			}
		}
	}
	if len(byRole) != 3 {
		t.Fatalf("root app renders %d of the 3 Applications (crds, operator, payflow)", len(byRole))
	}
	crds, operator, instance := byRole["crds"], byRole["operator"], byRole["payflow"]
	if !(wave(t, crds) < wave(t, operator) && wave(t, operator) < wave(t, instance)) {
		t.Errorf("sync waves must order crds < operator < payflow, got %d, %d, %d", wave(t, crds), wave(t, operator), wave(t, instance))
	}

	// The CRD: server-side apply, never pruned, never deleted with the app.
	for _, o := range []string{"ServerSideApply=true", "Prune=false", "Delete=false"} {
		if !has(syncOptions(crds), o) {
			t.Errorf("%s: syncOptions lack %s", crds.name(), o)
		}
	}
	if prune, _ := crds.get("spec", "syncPolicy", "automated", "prune").(bool); prune {
		t.Errorf("%s: automated prune must be off", crds.name())
	}
	if has(crds.strings("metadata", "finalizers"), resourcesFinalizer) {
		t.Errorf("%s: the resources finalizer would delete the CRD with the app", crds.name())
	}
	for _, o := range b.rendered[crds.name()] {
		if groupKind(o) != "apiextensions.k8s.io/CustomResourceDefinition" {
			t.Errorf("%s: renders %s; only CRDs belong there", crds.name(), o.id())
		}
	}

	for _, app := range []object{operator, instance} {
		if !has(syncOptions(app), "CreateNamespace=true") {
			t.Errorf("%s: syncOptions lack CreateNamespace=true", app.name())
		}
	}
	if operator.str("spec", "destination", "namespace") != "payflow-system" {
		t.Errorf("%s: destination namespace must be payflow-system", operator.name())
	}
	if instance.str("spec", "destination", "namespace") != "payflow" {
		t.Errorf("%s: destination namespace must be payflow", instance.name())
	}
	if !has(syncOptions(instance), "PruneLast=true") {
		t.Errorf("%s: syncOptions lack PruneLast=true", instance.name())
	}
	// Deleting the namespace would take the data volumes with it.
	namespaces := 0
	for _, o := range b.rendered[instance.name()] {
		switch groupKind(o) {
		case "/Namespace":
			namespaces++
			opts := annotationOptions(o)
			if !has(opts, "Delete=false") || !has(opts, "Prune=false") {
				t.Errorf("%s: %s must carry %s: Delete=false,Prune=false, has %v", instance.name(), o.id(), syncOptionsKey, opts)
			}
		case "payflow.io/PayFlow":
			// With label tracking Argo CD would take the operator's children
			// (labelled app.kubernetes.io/instance=<PayFlow name>, the PVCs
			// included) for resources of an Application of that name.
			if appNames[o.name()] {
				t.Errorf("PayFlow %s has the name of an Application", o.name())
			}
		}
	}
	if namespaces == 0 {
		t.Errorf("%s: renders no Namespace; update this check if that is intended", instance.name())
	}
	for _, o := range b.rendered[operator.name()] {
		if groupKind(o) == "/Namespace" && has(annotationOptions(o), "Delete=false") {
			t.Logf("note: %s keeps %s on deletion", operator.name(), o.id())
		}
	}
}

// Every rendered object is allowed by project payflow, in a permitted
// namespace, and every whitelisted kind is used: the lists say exactly
// what the manifests contain.
func checkWhitelists(t *testing.T, b bundle) {
	project := b.projects["payflow"]
	clusterWL := whitelist(project, "clusterResourceWhitelist")
	namespacedWL := whitelist(project, "namespaceResourceWhitelist")
	crdScope := map[string]string{}
	for _, objs := range b.rendered {
		for _, o := range objs {
			if groupKind(o) == "apiextensions.k8s.io/CustomResourceDefinition" {
				crdScope[o.str("spec", "group")+"/"+o.str("spec", "names", "kind")] = o.str("spec", "scope")
			}
		}
	}
	usedCluster, usedNamespaced := map[string]bool{}, map[string]bool{}
	names := make([]string, 0, len(b.rendered))
	for n := range b.rendered {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, appName := range names {
		var app object
		for _, c := range b.children {
			if c.name() == appName {
				app = c
			}
		}
		for _, o := range b.rendered[appName] {
			gk := groupKind(o)
			scope, custom := crdScope[gk]
			isCluster := clusterScoped[gk] || (custom && scope == "Cluster")
			if isCluster {
				usedCluster[gk] = true
				if !clusterWL[gk] {
					t.Errorf("%s: %s is not in project payflow's clusterResourceWhitelist", appName, o.id())
				}
				if o.namespace() != "" {
					t.Errorf("%s: cluster-scoped %s has a namespace", appName, o.id())
				}
				continue
			}
			usedNamespaced[gk] = true
			if !namespacedWL[gk] {
				t.Errorf("%s: %s is not in project payflow's namespaceResourceWhitelist", appName, o.id())
			}
			ns := o.namespace()
			if ns == "" {
				ns = app.str("spec", "destination", "namespace")
			}
			if !destinationPermitted(project, app.str("spec", "destination", "server"), ns) {
				t.Errorf("%s: %s goes to namespace %q, not a destination of project payflow", appName, o.id(), ns)
			}
		}
	}
	for gk := range clusterWL {
		if !usedCluster[gk] {
			t.Errorf("project payflow allows cluster-scoped %s, which no manifest contains", gk)
		}
	}
	for gk := range namespacedWL {
		if !usedNamespaced[gk] {
			t.Errorf("project payflow allows %s, which no manifest contains", gk)
		}
	}
}

// The MicroK8s flavour is the default one with other paths for the
// operator and the PayFlow, nothing else: the overlays cannot drift.
func TestMicroK8sFlavourOnlyChangesPaths(t *testing.T) {
	repo := repoRoot(t)
	def := loadBundle(t, repo, "argocd")
	mk := loadBundle(t, repo, "argocd/microk8s")
	strip := func(apps ...object) map[string]object {
		out := map[string]object{}
		for _, a := range apps {
			c, _ := yaml.Marshal(a)
			var o map[string]any
			if err := yaml.Unmarshal(c, &o); err != nil {
				t.Fatal(err)
			}
			delete(o["spec"].(map[string]any)["source"].(map[string]any), "path")
			out[a.name()] = object(o)
		}
		return out
	}
	if !reflect.DeepEqual(strip(def.root), strip(mk.root)) {
		t.Errorf("root apps differ in more than the path")
	}
	if !reflect.DeepEqual(strip(def.children...), strip(mk.children...)) {
		t.Errorf("child Applications differ in more than the paths")
	}
	if !reflect.DeepEqual(def.projects, mk.projects) {
		t.Errorf("projects differ between flavours")
	}
	for _, c := range mk.children {
		p := c.str("spec", "source", "path")
		if role(c) != "crds" && !strings.HasPrefix(p, "manifests/microk8s/") {
			t.Errorf("microk8s %s: path %s is not a manifests/microk8s overlay", c.name(), p)
		}
	}
}

// Every kustomization under argocd/ renders (the two Argo CD renders and
// the two kubectl apply -k entry points are covered above; this catches
// any other).
func TestEveryKustomizationRenders(t *testing.T) {
	repo := repoRoot(t)
	err := filepath.WalkDir(filepath.Join(repo, "argocd"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == "kustomization.yaml" {
			kustomize(t, filepath.Dir(p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

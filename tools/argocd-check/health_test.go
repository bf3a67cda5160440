package argocdcheck

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

const healthKeyPrefix = "resource.customizations.health."

// healthScripts reads the Lua out of the shipped argocd-cm patch, keyed by
// "<group>_<kind>", so the tests run exactly the text that ships.
func healthScripts(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "argocd", "argocd-cm-patch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
	}
	if err := yaml.UnmarshalStrict(data, &cm); err != nil {
		t.Fatalf("argocd-cm-patch.yaml: %v", err)
	}
	if cm.APIVersion != "v1" || cm.Kind != "ConfigMap" || cm.Metadata.Name != "argocd-cm" || cm.Metadata.Namespace != "argocd" {
		t.Fatalf("argocd-cm-patch.yaml must patch v1 ConfigMap argocd/argocd-cm, got %s %s %s/%s",
			cm.APIVersion, cm.Kind, cm.Metadata.Namespace, cm.Metadata.Name)
	}
	scripts := map[string]string{}
	for k, v := range cm.Data {
		if !strings.HasPrefix(k, healthKeyPrefix) {
			t.Fatalf("argocd-cm-patch.yaml: unexpected key %q", k)
		}
		scripts[strings.TrimPrefix(k, healthKeyPrefix)] = v
	}
	for _, want := range []string{"payflow.io_PayFlow", "argoproj.io_Application"} {
		if scripts[want] == "" {
			t.Fatalf("argocd-cm-patch.yaml has no %s%s", healthKeyPrefix, want)
		}
	}
	return scripts
}

// The health statuses Argo CD accepts from a script (gitops-engine's
// HealthStatusCode); anything else it reports as Unknown.
var validHealth = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// runHealth evaluates a health script as Argo CD's util/lua VM does
// (v3.5.7 runLua/ExecuteHealthLua): a state without the standard libraries
// except package, base and table (Argo adds a restricted os, which our
// scripts do not use), a one-second deadline, the object as the global `obj`
// and the returned table read as {status, message}.
func runHealth(script string, obj map[string]any) (healthStatus, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return healthStatus{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return healthStatus{}, err
	}
	ret := l.Get(-1)
	switch ret.Type() {
	case lua.LTNil:
		// Argo CD treats it as an empty status; ours always return a table.
		return healthStatus{}, fmt.Errorf("script returned nil")
	case lua.LTTable:
	default:
		return healthStatus{}, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	var hs healthStatus
	var bad error
	ret.(*lua.LTable).ForEach(func(k, v lua.LValue) {
		key, ok := k.(lua.LString)
		if !ok {
			bad = fmt.Errorf("returned table has a non-string key %v", k)
			return
		}
		// Argo CD round-trips the table through JSON into
		// {status string, message string}: other types fail there.
		s, isString := v.(lua.LString)
		switch string(key) {
		case "status", "message":
			if !isString {
				bad = fmt.Errorf("returned %s is a %s, not a string", key, v.Type())
				return
			}
			if key == "status" {
				hs.Status = string(s)
			} else {
				hs.Message = string(s)
			}
		}
	})
	if bad != nil {
		return healthStatus{}, bad
	}
	if !validHealth[hs.Status] {
		return healthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return hs, nil
}

// decodeValue is Argo CD's conversion of the unstructured object into Lua
// values (util/lua/lua.go decodeValue).
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case []any:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}

// The table file, in the format of Argo CD's health_test.yaml.
type healthTable struct {
	Tests []struct {
		HealthStatus healthStatus `json:"healthStatus"`
		InputPath    string       `json:"inputPath"`
	} `json:"tests"`
}

func loadFixture(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return obj
}

// scriptKey is Argo CD's argocd-cm key suffix for an object: <group>_<kind>.
func scriptKey(obj map[string]any) string {
	return object(obj).group() + "_" + object(obj).kind()
}

func TestHealthChecksMatchTheTable(t *testing.T) {
	scripts := healthScripts(t)
	dir := filepath.Join(repoRoot(t), "argocd", "testdata", "health")
	data, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var table healthTable
	if err := yaml.UnmarshalStrict(data, &table); err != nil {
		t.Fatalf("health_test.yaml: %v", err)
	}
	listed := map[string]bool{}
	covered := map[string]map[string]bool{}
	for _, tc := range table.Tests {
		listed[tc.InputPath] = true
		t.Run(tc.InputPath, func(t *testing.T) {
			obj := loadFixture(t, filepath.Join(dir, tc.InputPath))
			key := scriptKey(obj)
			script, ok := scripts[key]
			if !ok {
				t.Fatalf("no health script for %s", key)
			}
			got, err := runHealth(script, obj)
			if err != nil {
				t.Fatalf("health script %s failed: %v", key, err)
			}
			if got != tc.HealthStatus {
				t.Errorf("got {status: %q, message: %q}, want {status: %q, message: %q}",
					got.Status, got.Message, tc.HealthStatus.Status, tc.HealthStatus.Message)
			}
			if covered[key] == nil {
				covered[key] = map[string]bool{}
			}
			covered[key][got.Status] = true
		})
	}

	// Every fixture is in the table, and the PayFlow script is exercised
	// for each status it can return.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "health_test.yaml" && strings.HasSuffix(e.Name(), ".yaml") && !listed[e.Name()] {
			t.Errorf("fixture %s is not in health_test.yaml", e.Name())
		}
	}
	for _, status := range []string{"Healthy", "Progressing", "Degraded", "Suspended"} {
		if !covered["payflow.io_PayFlow"][status] {
			t.Errorf("no PayFlow fixture yields %s", status)
		}
	}
	for key := range scripts {
		if len(covered[key]) == 0 {
			t.Errorf("no fixture for %s", key)
		}
	}
}

// Odd shapes must never make a script fail (Argo CD would show the error
// instead of a health): every field the PayFlow script reads, replaced by
// values of every JSON type, on top of a complete object.
func TestHealthChecksSurviveOddShapes(t *testing.T) {
	scripts := healthScripts(t)
	base := filepath.Join(repoRoot(t), "argocd", "testdata", "health", "healthy.yaml")
	odd := map[string]any{
		"null":   nil,
		"bool":   true,
		"number": float64(-1),
		"string": "x",
		"empty":  "",
		"list":   []any{"a", float64(1), nil, map[string]any{"type": "Ready"}},
		"map":    map[string]any{"type": float64(1), "status": false},
	}
	paths := [][]string{
		{"metadata"}, {"metadata", "generation"},
		{"spec"}, {"spec", "suspend"},
		{"status"}, {"status", "observedGeneration"}, {"status", "phase"}, {"status", "conditions"},
		{"status", "conditions", "0"}, {"status", "conditions", "0", "type"},
		{"status", "conditions", "0", "status"}, {"status", "conditions", "0", "message"},
		{"status", "conditions", "0", "reason"},
	}
	names := make([]string, 0, len(odd))
	for n := range odd {
		names = append(names, n)
	}
	sort.Strings(names)
	for key, script := range scripts {
		for _, p := range paths {
			for _, n := range names {
				obj := loadFixture(t, base)
				if !set(obj, p, odd[n]) {
					t.Fatalf("fixture has no %v", p)
				}
				if key == "argoproj.io_Application" {
					obj["apiVersion"], obj["kind"] = "argoproj.io/v1alpha1", "Application"
				}
				got, err := runHealth(script, obj)
				if err != nil {
					t.Errorf("%s with %s = %s: %v", key, strings.Join(p, "."), n, err)
					continue
				}
				if got.Status == "Unknown" {
					t.Errorf("%s with %s = %s: %s", key, strings.Join(p, "."), n, got.Message)
				}
			}
		}
	}
}

// set puts value at path ("0" indexes a list); false if a parent is absent.
func set(obj map[string]any, path []string, value any) bool {
	var cur any = obj
	for i, p := range path {
		last := i == len(path)-1
		switch c := cur.(type) {
		case map[string]any:
			if last {
				c[p] = value
				return true
			}
			if _, ok := c[p]; !ok {
				return false
			}
			cur = c[p]
		case []any:
			if p != "0" || len(c) == 0 {
				return false
			}
			if last {
				c[0] = value
				return true
			}
			cur = c[0]
		default:
			return false
		}
	}
	return false
}

// The scripts may not rely on the `string` library, which Argo CD does not
// open: calling a string method must fail under runHealth, so a script that
// used one would fail its fixtures above.
func TestHealthRunnerHasNoStringLibrary(t *testing.T) {
	_, err := runHealth(`return {status = ("Healthy"):lower()}`, map[string]any{})
	if err == nil {
		t.Fatal("string methods work in the runner; Argo CD does not provide them")
	}
	if _, err := runHealth(`return {status = string.lower("Healthy")}`, map[string]any{}); err == nil {
		t.Fatal("the string library is loaded in the runner; Argo CD does not load it")
	}
}

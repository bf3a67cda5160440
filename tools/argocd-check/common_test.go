package argocdcheck

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// repoRoot is the PayFlow checkout this module lives in (tools/argocd-check).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "argocd", "kustomization.yaml")); err != nil {
		t.Fatalf("not a PayFlow checkout: %v", err)
	}
	return root
}

// object is one Kubernetes object as decoded JSON.
type object map[string]any

func (o object) str(path ...string) string {
	s, _ := o.get(path...).(string)
	return s
}

func (o object) get(path ...string) any {
	var cur any = map[string]any(o)
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

func (o object) kind() string      { return o.str("kind") }
func (o object) name() string      { return o.str("metadata", "name") }
func (o object) namespace() string { return o.str("metadata", "namespace") }

// group is the API group of apiVersion ("" for the core group).
func (o object) group() string {
	gv := o.str("apiVersion")
	if i := strings.Index(gv, "/"); i >= 0 {
		return gv[:i]
	}
	return ""
}

func (o object) id() string {
	return fmt.Sprintf("%s %s/%s", o.kind(), o.namespace(), o.name())
}

func (o object) strings(path ...string) []string {
	var out []string
	list, _ := o.get(path...).([]any)
	for _, v := range list {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func (o object) objects(path ...string) []object {
	var out []object
	list, _ := o.get(path...).([]any)
	for _, v := range list {
		if m, ok := v.(map[string]any); ok {
			out = append(out, object(m))
		}
	}
	return out
}

// decodeDocs splits a multi-document YAML stream (as kubectl kustomize
// writes it: documents separated by a line "---") into objects.
func decodeDocs(data []byte) ([]object, error) {
	var out []object
	for _, doc := range splitDocs(data) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var o map[string]any
		if err := yaml.Unmarshal(doc, &o); err != nil {
			return nil, err
		}
		if o != nil {
			out = append(out, object(o))
		}
	}
	return out, nil
}

func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	var cur []byte
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if string(bytes.TrimRight(line, "\r\n")) == "---" {
			docs = append(docs, cur)
			cur = nil
			continue
		}
		cur = append(cur, line...)
	}
	return append(docs, cur)
}

// kubectl runs kubectl (the one on PATH: scripts/testcluster.sh env puts
// the cluster's own version first) and returns stdout.
func kubectl(stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.Command("kubectl", args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// kustomize renders a kustomization directory.
func kustomize(t *testing.T, dir string) []object {
	t.Helper()
	out, err := kubectl(nil, "kustomize", dir)
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v", dir, err)
	}
	objs, err := decodeDocs(out)
	if err != nil {
		t.Fatalf("decoding kubectl kustomize %s: %v", dir, err)
	}
	return objs
}

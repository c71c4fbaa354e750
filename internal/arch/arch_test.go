// Package arch holds the test that keeps Berth's layers honest: each package
// imports only the layers DESIGN.md allows below it.
package arch

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/berth-dev/berth"

// allowed maps a layer to the layers it may import, as DESIGN.md's table
// says. internal/ packages are shared helpers any layer may use; cmd/ wires
// everything together and is not listed.
var allowed = map[string][]string{
	"runtime": {},
	"image":   {"runtime"},
	"build":   {"image", "runtime"},
	"network": {},
	"agent":   {"runtime", "image", "network", "api"},
	"control": {"api", "pki"},
	"api":     {},
	// The cluster CA: a leaf the control plane signs with and cmd/berthd's
	// agent keeps its credentials with.
	"pki":     {},
	"console": {},
	"bench":   {"runtime", "image", "network", "api", "control", "agent", "build", "pki"},
	// The CLI is a lean API client: a server package linked in would cost
	// every command its initialisers (see cmd/berth/runtime.go).
	"cmd/berth": {"api"},
}

func TestLayersImportOnlyBelow(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if strings.HasPrefix(name, ".") || name == "node_modules" || name == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		// Tests may assemble a system from layers above their own (the
		// agent's tests run a real control plane); the rule is for code.
		if strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		layer := parts[0]
		if layer == "cmd" && len(parts) > 2 {
			layer = "cmd/" + parts[1]
		}
		allow, ok := allowed[layer]
		if !ok {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			if !strings.HasPrefix(p, module+"/") {
				continue
			}
			target := strings.Split(strings.TrimPrefix(p, module+"/"), "/")[0]
			if target == layer || target == "internal" || contains(allow, target) {
				continue
			}
			t.Errorf("%s imports %s: layer %q may import only %v (see DESIGN.md)", rel, p, layer, allow)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no Go files found under the layers; is the test running from internal/arch?")
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

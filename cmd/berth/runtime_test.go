package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `berth runtime` hands the whole command line to berth-runtime beside it,
// exit code included.
func TestRuntimeHandsOverToBerthRuntime(t *testing.T) {
	dir := os.Getenv("BERTH_BIN_DIR")
	if dir == "" {
		t.Skip("BERTH_BIN_DIR is not set: test.sh builds berth and berth-runtime there")
	}
	berth := filepath.Join(dir, "berth")
	out, err := exec.Command(berth, "runtime", "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "berth-runtime version ") {
		t.Fatalf("berth runtime --version: %v %q", err, out)
	}
	root := t.TempDir()
	out, err = exec.Command(berth, "runtime", "--root", root, "state", "nosuch").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "nosuch") {
		t.Fatalf("berth runtime state nosuch: %v %q", err, out)
	}
}

// Package testdir makes temporary directories for tests whose files are
// reached by other users, such as a container's root mapped to an
// unprivileged host uid.
package testdir

import (
	"os"
	"path/filepath"
	"testing"
)

// World returns a fresh directory, removed when the test ends, that every
// uid can traverse (mode 0755 all the way down from /). t.TempDir's are
// 0700, and some machines keep /tmp closed to other users, so it falls
// back to /var/tmp when the usual temp dir is not reachable.
func World(t testing.TB) string {
	t.Helper()
	for _, base := range []string{os.TempDir(), "/var/tmp"} {
		if !traversable(base) {
			continue
		}
		dir, err := os.MkdirTemp(base, "berth-test-")
		if err != nil {
			continue
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	t.Fatalf("no temporary directory that other users can traverse (tried %s and /var/tmp)", os.TempDir())
	return ""
}

// traversable reports whether others may search every directory from / down
// to dir.
func traversable(dir string) bool {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false
	}
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if p == "/" {
			return true
		}
	}
}

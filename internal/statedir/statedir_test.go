package statedir

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDefaultIsBaseAndHashOfAbsoluteDataDir(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	relative, err := Default("data")
	if err != nil {
		t.Fatal(err)
	}
	absolute, err := Default(filepath.Join(wd, "data"))
	if err != nil {
		t.Fatal(err)
	}
	if relative != absolute {
		t.Errorf("Default(data) in %s = %s, but Default of its absolute path = %s", wd, relative, absolute)
	}
	for _, tc := range []struct {
		name, dataDir, want string
	}{
		// printf %s /var/lib/berth | sha256sum | cut -c1-12
		{"up's default data dir", "/var/lib/berth", "/run/berth/5a2cdf17d6f6"},
		{"agent's default data dir", "/var/lib/berth/agent", "/run/berth/518658df6b09"},
		{"trailing slash", "/var/lib/berth/", "/run/berth/5a2cdf17d6f6"},
		{"dot-dot", "/var/lib/x/../berth", "/run/berth/5a2cdf17d6f6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Default(tc.dataDir)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Default(%q) = %s, want %s", tc.dataDir, got, tc.want)
			}
		})
	}
}

func TestEnsureTmpfsMountsOnceOnADisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	// A directory under the test's own, on whatever /tmp is; if that is a
	// tmpfs already there is nothing to mount.
	dir := filepath.Join(t.TempDir(), "state")
	t.Cleanup(func() {
		for unix.Unmount(dir, unix.MNT_DETACH) == nil {
		}
	})
	was, err := OnTmpfs(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	mounted, err := EnsureTmpfs(dir)
	if err != nil || mounted == was {
		t.Fatalf("EnsureTmpfs on a dir whose parent is tmpfs=%v: mounted %v, %v", was, mounted, err)
	}
	if ok, err := OnTmpfs(dir); !ok || err != nil {
		t.Fatalf("after EnsureTmpfs, %s on a tmpfs: %v %v", dir, ok, err)
	}
	if mounted, err := EnsureTmpfs(dir); mounted || err != nil {
		t.Fatalf("second EnsureTmpfs: mounted %v, %v; want nothing to do", mounted, err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o711 {
		t.Fatalf("state dir mode: %v %v", fi.Mode(), err)
	}
}

func TestHasOldLayoutSeesContainersRuntimeStateInTheDataDir(t *testing.T) {
	data := t.TempDir()
	if HasOldLayout(data) {
		t.Fatal("an empty data dir has the old layout")
	}
	if err := os.MkdirAll(filepath.Join(data, "runtime", ".seccomp"), 0o700); err != nil {
		t.Fatal(err)
	}
	if HasOldLayout(data) {
		t.Fatal("a runtime dir with only the seccomp cache has the old layout")
	}
	if err := os.Mkdir(filepath.Join(data, "runtime", "0a75f8da2fe29a3669d61a89f52adc50"), 0o700); err != nil {
		t.Fatal(err)
	}
	if !HasOldLayout(data) {
		t.Fatal("a container's runtime state in the data dir is not seen")
	}
}

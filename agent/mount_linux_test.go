package agent

import (
	"github.com/berth-dev/berth/image"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/internal/testdir"
)

// buildInit compiles berth-init into dir, as hack/build.sh does.
func buildInit(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "berth-init")
	// With the runtime's fast init linked in, as hack/build.sh builds it:
	// newEnv's runtime runs plans with it, as berth up's does.
	out, err := exec.Command("gcc", "-static", "-Os", "-o", p, "../cmd/berth-init/berth-init.c", "../runtime/fastinit/fastinit.c").CombinedOutput()
	if err != nil {
		t.Fatalf("build berth-init: %v\n%s", err, out)
	}
	return p
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts, namespaces and cgroups")
	}
}

// An overlay (the shape of every container rootfs) mounted idmapped shows
// the image's root-owned files as the container's root, and what the
// container writes lands in the upper directory unshifted.
func TestIdmappedOverlayShiftsOwnershipWithoutCopying(t *testing.T) {
	for name, withInit := range map[string]bool{"userns from berth-init": true, "userns by ptrace": false} {
		t.Run(name, func(t *testing.T) { testIdmappedOverlay(t, withInit) })
	}
}

func testIdmappedOverlay(t *testing.T, withInit bool) {
	needRoot(t)
	dir := testdir.World(t)
	exe := ""
	if withInit {
		exe = buildInit(t, dir)
	}
	for _, d := range []string{"lower", "snap", "snap/upper", "snap/work", "mlower", "mapped"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "lower", "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unmountAll(dir) })
	r := IDRange{Base: 1<<28 + 7*65536, Size: 65536}
	ns, err := usernsFile(r, exe)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	mapped := filepath.Join(dir, "mapped")
	for _, m := range [][2]string{{"lower", "mlower"}} {
		if err := idmapMount(filepath.Join(dir, m[0]), filepath.Join(dir, m[1]), ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := image.MountOverlay([]string{filepath.Join(dir, "mlower")}, filepath.Join(dir, "snap", "upper"), filepath.Join(dir, "snap", "work"), mapped, false); err != nil {
		t.Fatal(err)
	}
	if !isMountPoint(mapped) {
		t.Fatalf("%s is not a mount point after idmapMount", mapped)
	}
	fi, err := os.Stat(filepath.Join(mapped, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != r.Base {
		t.Fatalf("file owned by 0 in the image shows as %d through the idmapped mount, want %d", uid, r.Base)
	}
	// The upper directory is the container's own: it stores host ids.
	if err := os.WriteFile(filepath.Join(mapped, "new"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(mapped, "new"), int(r.Base)+5, int(r.Base)+5); err != nil {
		t.Fatal(err)
	}
	fi, err = os.Stat(filepath.Join(dir, "snap", "upper", "new"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != r.Base+5 {
		t.Fatalf("container uid 5 stored as %d in the upper dir, want %d", uid, r.Base+5)
	}
	if err := unmountAll(dir); err != nil {
		t.Fatal(err)
	}
	if ms, _ := mountsUnder(dir); len(ms) != 0 {
		t.Fatalf("mounts left after unmountAll: %v", ms)
	}
}

func TestUsernsCacheKeepsOneNamespacePerRange(t *testing.T) {
	needRoot(t)
	u := newUsernsCache(buildInit(t, testdir.World(t)))
	defer u.close()
	ino := func(f *os.File) uint64 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	get := func(r IDRange) *os.File {
		t.Helper()
		f, err := u.get(r)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	r1 := IDRange{Base: 1<<28 + 9*65536, Size: 65536}
	r2 := IDRange{Base: r1.Base + 65536, Size: 65536}
	a := get(r1)
	first := ino(a)
	// The caller's file is its own: closing it keeps the cached one.
	a.Close()
	if got := ino(get(r1)); got != first {
		t.Fatalf("second get of %v: namespace %d, want the first's %d", r1, got, first)
	}
	if got := ino(get(r2)); got == first {
		t.Fatalf("range %v got %v's namespace", r2, r1)
	}
	for i := range usernsCacheSize {
		get(IDRange{Base: r2.Base + uint32(i+1)*65536, Size: 65536}).Close()
	}
	if len(u.m) != usernsCacheSize || len(u.order) != usernsCacheSize {
		t.Fatalf("%d namespaces kept (%d in order), want at most %d", len(u.m), len(u.order), usernsCacheSize)
	}
	if got := ino(get(r1)); got == first {
		t.Fatalf("%v's namespace was kept past %d newer ones", r1, usernsCacheSize)
	}
}

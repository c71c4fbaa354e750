package unpack

import (
	"archive/tar"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// In a user namespace the kernel refuses device nodes; unpacking goes on
// and records them. The child half of this test runs inside the namespace.
func TestDevicesSkippedAndRecordedInAUserNamespace(t *testing.T) {
	if dir := os.Getenv("BERTH_UNPACK_USERNS_DIR"); dir != "" {
		layer := mkTar(t,
			entry{name: "dev/", typ: tar.TypeDir, mode: 0o755},
			entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
			entry{name: "dev/fifo", typ: tar.TypeFifo, mode: 0o600},
			entry{name: "file", body: "x"},
		)
		res, err := Layer(layer, dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(res)
		if err := os.WriteFile(filepath.Join(dir, "result.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to map a user namespace")
	}
	dir := filepath.Join(t.TempDir(), "layer")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	// The namespace's root must reach and own the target.
	for d := filepath.Dir(dir); d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil && d != "/tmp" {
			t.Fatal(err)
		}
		if d == os.TempDir() {
			break
		}
	}
	if err := os.Chown(dir, 100000, 100000); err != nil {
		t.Fatal(err)
	}
	// The go build cache is not reachable by the namespace's root: run a copy.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(dir), "unpack.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestDevicesSkippedAndRecordedInAUserNamespace$")
	cmd.Env = append(os.Environ(), "BERTH_UNPACK_USERNS_DIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		Credential:  &syscall.Credential{Uid: 0, Gid: 0},
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "result.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res Result
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.SkippedDevices) != 1 || res.SkippedDevices[0] != "/dev/null" {
		t.Fatalf("skipped devices %v, want [/dev/null]", res.SkippedDevices)
	}
	if _, err := os.Lstat(filepath.Join(dir, "dev", "fifo")); err != nil {
		t.Fatalf("fifo not made: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(dir, "file"), &st); err != nil || st.Uid != 100000 {
		t.Fatalf("file owner %d (%v), want the namespace's root 100000", st.Uid, err)
	}
}

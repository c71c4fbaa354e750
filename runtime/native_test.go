package runtime

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/busybox"
	"github.com/berth-dev/berth/internal/testdir"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The test binary doubles as the container init: the runtime re-executes
// it, and it must hand over to InitMain before the testing package starts.
func TestMain(m *testing.M) {
	if IsInit() {
		InitMain()
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates namespaces, cgroups and mounts")
	}
	if err := busybox.Available(); err != nil {
		t.Skip(err)
	}
}

// testRuntime is a Native runtime with its own state root, torn down with
// every container still in it when the test ends.
func testRuntime(t *testing.T) *Native {
	t.Helper()
	needRoot(t)
	root := worldDir(t)
	r, err := NewNative(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.GoInit = os.Getenv(envTestGoInit) == "1"
	t.Cleanup(func() {
		list, _ := r.List(context.Background())
		for _, s := range list {
			if err := r.Delete(context.Background(), s.ID, true); err != nil {
				t.Errorf("cleanup %s: %v", s.ID, err)
			}
		}
		if err := r.ReleaseExecutables(); err != nil {
			t.Errorf("release executables: %v", err)
		}
	})
	return r
}

func worldDir(t *testing.T) string { return testdir.World(t) }

// testBundle makes a busybox bundle with Berth's default spec, no
// terminal, and the given changes.
func testBundle(t *testing.T, args []string, mutate func(*specs.Spec)) string {
	t.Helper()
	dir := worldDir(t)
	if err := busybox.Rootfs(filepath.Join(dir, "rootfs")); err != nil {
		t.Fatal(err)
	}
	s := DefaultSpec()
	s.Process.Terminal = false
	s.Process.Args = args
	s.Linux.CgroupsPath = "/berth-test/" + filepath.Base(dir)
	if mutate != nil {
		mutate(s)
	}
	if err := WriteSpec(dir, s); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runOutput runs a container to completion and returns its exit code and
// combined output.
func runOutput(t *testing.T, r *Native, id, bundle string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	w := &syncWriter{b: &out}
	code, err := r.Run(context.Background(), id, bundle, CreateOpts{IO: IO{Stdout: w, Stderr: w}}, false)
	if err != nil {
		t.Fatalf("run %s: %v", id, err)
	}
	return code, out.String()
}

type syncWriter struct{ b *bytes.Buffer }

func (w *syncWriter) Write(p []byte) (int, error) { return w.b.Write(p) }

func TestRunReportsExitCode(t *testing.T) {
	r := testRuntime(t)
	code, out := runOutput(t, r, "exit3", testBundle(t, []string{"sh", "-c", "echo hello; exit 3"}, nil))
	if code != 3 || strings.TrimSpace(out) != "hello" {
		t.Fatalf("code %d output %q, want 3 and hello", code, out)
	}
	if _, err := r.State(context.Background(), "exit3"); !errors.Is(err, ErrNotExist) {
		t.Fatalf("run left the container behind: %v", err)
	}
}

// An in-process caller learns the exit code of a container it created,
// which a non-zero exit and a signal both set.
func TestExitCodeOfCreatedContainer(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	for _, tc := range []struct {
		args []string
		kill bool
		want int
	}{
		{[]string{"sh", "-c", "exit 42"}, false, 42},
		{[]string{"sleep", "100"}, true, 128 + int(syscall.SIGKILL)},
	} {
		id := fmt.Sprintf("exit%d", tc.want)
		if err := r.Create(ctx, id, testBundle(t, tc.args, nil), CreateOpts{}); err != nil {
			t.Fatal(err)
		}
		if _, ok := r.ExitCode(id); ok {
			t.Errorf("%s: an exit code before start", id)
		}
		if err := r.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
		if tc.kill {
			if err := r.Kill(ctx, id, syscall.SIGKILL, false); err != nil {
				t.Fatal(err)
			}
		}
		var code int
		ok := false
		for i := 0; i < 500 && !ok; i++ {
			if code, ok = r.ExitCode(id); !ok {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if !ok || code != tc.want {
			t.Errorf("%s: exit code %d (known %v), want %d", id, code, ok, tc.want)
		}
		if err := r.Delete(ctx, id, false); err != nil {
			t.Fatal(err)
		}
		if _, ok := r.ExitCode(id); ok {
			t.Errorf("%s: exit code kept after delete", id)
		}
	}
}

// A caller that wrote the bundle hands it over as written; the runtime
// takes it as it is, for its own bundle only, and still validates it.
func TestCreateTakesTheWrittenSpec(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	bundle := testBundle(t, []string{"sh", "-c", "echo from the spec written"}, nil)
	w, err := SaveSpec(bundle, loadTestSpec(t, bundle))
	if err != nil {
		t.Fatal(err)
	}
	// The file on disk says otherwise: the run shows which one was used.
	onDisk := loadTestSpec(t, bundle)
	onDisk.Process.Args = []string{"sh", "-c", "echo from the file"}
	if err := WriteSpec(bundle, onDisk); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	sw := &syncWriter{b: &out}
	code, err := r.Run(ctx, "written", bundle, CreateOpts{IO: IO{Stdout: sw, Stderr: sw}, Written: w}, false)
	if err != nil || code != 0 || strings.TrimSpace(out.String()) != "from the spec written" {
		t.Fatalf("run with the written spec: %d %v %q", code, err, out.String())
	}
	// Written for another bundle: ignored, the file is read.
	other := *w
	other.Bundle = worldDir(t)
	out.Reset()
	code, err = r.Run(ctx, "other", bundle, CreateOpts{IO: IO{Stdout: sw, Stderr: sw}, Written: &other}, false)
	if err != nil || code != 0 || strings.TrimSpace(out.String()) != "from the file" {
		t.Fatalf("run with another bundle's spec: %d %v %q", code, err, out.String())
	}
	// Validated all the same.
	bad := *w
	bad.Spec = loadTestSpec(t, bundle)
	bad.Spec.Root = nil
	if err := r.Create(ctx, "bad", bundle, CreateOpts{Written: &bad}); err == nil || !strings.Contains(err.Error(), "root.path") {
		t.Fatalf("create with a written spec without a root: %v, want a root.path error", err)
	}
}

func TestLifecycleCreateStartKillDelete(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	bundle := testBundle(t, []string{"sleep", "100"}, nil)
	var pid int
	if err := r.Create(ctx, "life", bundle, CreateOpts{Pid: &pid}); err != nil {
		t.Fatal(err)
	}
	st, err := r.State(ctx, "life")
	if err != nil || st.Status != Created || st.Pid == 0 || st.Pid != pid {
		t.Fatalf("after create: %+v, %v (CreateOpts.Pid %d)", st, err, pid)
	}
	if err := r.Delete(ctx, "life-missing", false); !errors.Is(err, ErrNotExist) {
		t.Fatalf("delete of unknown container: %v", err)
	}
	if err := r.Start(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	if st, _ = r.State(ctx, "life"); st.Status != Running {
		t.Fatalf("after start: %s", st.Status)
	}
	if err := r.Start(ctx, "life"); err == nil {
		t.Fatal("second start succeeded")
	}
	if err := r.Delete(ctx, "life", false); err == nil {
		t.Fatal("delete of a running container without force succeeded")
	}
	if err := r.Pause(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	if st, _ = r.State(ctx, "life"); st.Status != Paused {
		t.Fatalf("after pause: %s", st.Status)
	}
	if err := r.Resume(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	pids, err := r.Pids(ctx, "life")
	if err != nil || len(pids) != 1 || pids[0] != st.Pid {
		t.Fatalf("pids %v (init %d), %v", pids, st.Pid, err)
	}
	if err := r.Kill(ctx, "life", syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, r, "life", Stopped)
	if err := r.Delete(ctx, "life", false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory/berth-test/" + filepath.Base(bundle)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cgroup left behind after delete: %v", err)
	}
	if _, err := os.Stat(filepath.Join(r.Root, "life")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state left behind after delete: %v", err)
	}
}

func waitStatus(t *testing.T, r *Native, id string, want Status) {
	t.Helper()
	for i := 0; i < 500; i++ {
		st, err := r.State(context.Background(), id)
		if err == nil && st.Status == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	st, err := r.State(context.Background(), id)
	t.Fatalf("%s never became %s: %+v %v", id, want, st, err)
}

func TestContainerIsIsolated(t *testing.T) {
	r := testRuntime(t)
	script := `echo pid=$$; echo host=$(hostname); echo links=$(ls /sys/class/net | tr '\n' ' ');
echo root=$(stat -c %m /); ls /proc/kcore >/dev/null 2>&1 && echo kcore=$(wc -c < /proc/kcore);
touch /etc/x 2>/dev/null && echo rootrw || echo rootro; echo caps=$(grep CapEff /proc/self/status | cut -f2);
echo nnp=$(grep NoNewPrivs /proc/self/status | cut -f2); ls /dev | tr '\n' ' '; echo;
cat /sys/fs/cgroup/memory/memory.limit_in_bytes; cat /sys/fs/cgroup/pids/pids.max; echo ipc=$(readlink /proc/self/ns/ipc)`
	bundle := testBundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		s.Hostname = "isolated"
		limit := int64(64 << 20)
		pids := int64(50)
		s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
		s.Linux.Resources.Pids = &specs.LinuxPids{Limit: &pids}
	})
	code, out := runOutput(t, r, "iso", bundle)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	hostIPC, _ := os.Readlink("/proc/self/ns/ipc")
	for _, want := range []string{
		"pid=1\n", "host=isolated\n", "links=lo\n", "rootro\n",
		"caps=00000000a80425fb\n", // Docker's default set
		"nnp=1\n", "null", "urandom", "ptmx", "67108864\n", "50\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "kcore=") && !strings.Contains(out, "kcore=0") {
		t.Errorf("/proc/kcore is not masked:\n%s", out)
	}
	if strings.Contains(out, "ipc="+hostIPC) {
		t.Errorf("container shares the host's ipc namespace")
	}
}

func TestUserNamespaceRootIsNotHostRoot(t *testing.T) {
	r := testRuntime(t)
	bundle := testBundle(t, []string{"sh", "-c", "id -u; cat /proc/self/uid_map; echo hi > /hostfile && echo WROTE || echo DENIED; sleep 100"}, func(s *specs.Spec) {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 200000, Size: 65536}}
		s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 200000, Size: 65536}}
		s.Root.Readonly = false
	})
	// A host file owned by host root, bind-mounted in writable: container
	// root must still not be able to write it.
	hostFile := filepath.Join(worldDir(t), "hostfile")
	if err := os.WriteFile(hostFile, []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := loadTestSpec(t, bundle)
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/hostfile", Type: "bind", Source: hostFile, Options: []string{"bind", "rw"}})
	if err := WriteSpec(bundle, s); err != nil {
		t.Fatal(err)
	}
	chownTree(t, filepath.Join(bundle, "rootfs"), 200000)
	var out bytes.Buffer
	w := &syncWriter{b: &out}
	ctx := context.Background()
	if err := r.Create(ctx, "userns", bundle, CreateOpts{IO: IO{Stdout: w, Stderr: w}}); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx, "userns"); err != nil {
		t.Fatal(err)
	}
	st, _ := r.State(ctx, "userns")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "DENIED") && !strings.Contains(out.String(), "WROTE") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	status, err := os.ReadFile("/proc/" + strconv.Itoa(st.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "Uid:\t200000\t200000") {
		t.Errorf("container root runs as host uid other than 200000:\n%s", status)
	}
	got := out.String()
	if !strings.HasPrefix(got, "0\n") || !strings.Contains(got, "200000") || !strings.Contains(got, "DENIED") {
		t.Errorf("output %q: want uid 0 inside, mapped to 200000, host file not writable", got)
	}
	if b, _ := os.ReadFile(hostFile); string(b) != "host\n" {
		t.Errorf("host file changed: %q", b)
	}
}

func loadTestSpec(t *testing.T, bundle string) *specs.Spec {
	t.Helper()
	s, _, _, err := loadBundle(bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func chownTree(t *testing.T, dir string, id int) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, id, id)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestExecJoinsTheContainer(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	bundle := testBundle(t, []string{"sleep", "100"}, func(s *specs.Spec) { s.Hostname = "execme" })
	if err := r.Create(ctx, "ex", bundle, CreateOpts{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx, "ex"); err != nil {
		t.Fatal(err)
	}
	spec, _ := r.Spec("ex")
	p := *spec.Process
	p.Args = []string{"sh", "-c", "hostname; ps -o pid,comm | grep -c sleep; cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 7"}
	var out bytes.Buffer
	w := &syncWriter{b: &out}
	code, err := r.Exec(ctx, "ex", p, ExecOpts{IO: IO{Stdout: w, Stderr: w}})
	if err != nil {
		t.Fatal(err)
	}
	if code != 7 {
		t.Fatalf("exit code %d, want 7 (%s)", code, out.String())
	}
	got := out.String()
	if !strings.HasPrefix(got, "execme\n1\nsleep 100") {
		t.Fatalf("exec did not run inside the container's namespaces: %q", got)
	}
	pids, _ := r.Pids(ctx, "ex")
	if len(pids) != 1 {
		t.Fatalf("exec process left in cgroup or init missing: %v", pids)
	}
	p.Args = []string{"/no/such/binary"}
	if _, err := r.Exec(ctx, "ex", p, ExecOpts{}); err == nil || !strings.Contains(err.Error(), "process.args[0]") {
		t.Fatalf("exec of a missing binary: %v", err)
	}
}

func TestHooksRunInOrderWithState(t *testing.T) {
	r := testRuntime(t)
	logDir := t.TempDir()
	hook := func(name string) specs.Hook {
		return specs.Hook{Path: "/bin/sh", Args: []string{"sh", "-c", fmt.Sprintf(`cat > %s/%s.json; echo %s >> %s/order`, logDir, name, name, logDir)}}
	}
	bundle := testBundle(t, []string{"true"}, func(s *specs.Spec) {
		s.Hooks = &specs.Hooks{
			Prestart:        []specs.Hook{hook("prestart")},
			CreateRuntime:   []specs.Hook{hook("createRuntime")},
			CreateContainer: []specs.Hook{hook("createContainer")},
			Poststart:       []specs.Hook{hook("poststart")},
			Poststop:        []specs.Hook{hook("poststop")},
		}
	})
	if code, out := runOutput(t, r, "hooks", bundle); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	order, err := os.ReadFile(filepath.Join(logDir, "order"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(order)); strings.Join(got, ",") != "prestart,createRuntime,createContainer,poststart,poststop" {
		t.Fatalf("hook order %v", got)
	}
	st, _ := os.ReadFile(filepath.Join(logDir, "poststart.json"))
	if !strings.Contains(string(st), `"id":"hooks"`) || !strings.Contains(string(st), `"bundle":"`+bundle) {
		t.Fatalf("poststart hook got state %s", st)
	}
}

func TestFailingHookLeavesNothing(t *testing.T) {
	r := testRuntime(t)
	bundle := testBundle(t, []string{"true"}, func(s *specs.Spec) {
		s.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/bin/false"}}}
	})
	err := r.Create(context.Background(), "badhook", bundle, CreateOpts{})
	if err == nil || !strings.Contains(err.Error(), "createRuntime hook") {
		t.Fatalf("create with failing hook: %v", err)
	}
	assertNothingLeft(t, r, "badhook", bundle)
}

func assertNothingLeft(t *testing.T, r *Native, id, bundle string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(r.Root, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir left behind: %v", err)
	}
	for _, ctl := range []string{"memory", "pids", "cpu", "devices", "freezer"} {
		p := filepath.Join("/sys/fs/cgroup", ctl, "berth-test", filepath.Base(bundle))
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s left behind", p)
		}
	}
}

func TestBadInputLeavesNothing(t *testing.T) {
	r := testRuntime(t)
	cases := []struct {
		name   string
		mutate func(*specs.Spec)
		want   string
	}{
		{"unknown namespace", func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: "bogus"})
		}, "linux.namespaces"},
		{"missing rootfs", func(s *specs.Spec) { s.Root.Path = "nowhere" }, "root.path"},
		{"missing namespace path", func(s *specs.Spec) { s.Linux.Namespaces[1].Path = "/proc/999999999/ns/net" }, "linux.namespaces"},
		{"impossible memory", func(s *specs.Spec) {
			l, sw := int64(64<<20), int64(1<<20)
			s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &l, Swap: &sw}
		}, "linux.resources.memory"},
		{"missing binary", func(s *specs.Spec) { s.Process.Args = []string{"/nope"} }, "process.args[0]"},
		{"cpuset beyond the machine", func(s *specs.Spec) {
			s.Linux.Resources.CPU = &specs.LinuxCPU{Cpus: "0-4095"}
		}, "linux.resources.cpu.cpus"},
		{"mappings without a user namespace", func(s *specs.Spec) {
			s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 1000}}
		}, "linux.uidMappings"},
		{"mount on a file", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/bin/busybox/x", Type: "tmpfs", Source: "tmpfs"})
		}, "mounts[7]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bundle := testBundle(t, []string{"true"}, tc.mutate)
			id := "bad-" + strings.ReplaceAll(tc.name, " ", "-")
			err := r.Create(context.Background(), id, bundle, CreateOpts{})
			if err == nil {
				t.Fatalf("create accepted the bad spec")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %s", err, tc.want)
			}
			assertNothingLeft(t, r, id, bundle)
		})
	}
	malformed := t.TempDir()
	if err := os.WriteFile(filepath.Join(malformed, "config.json"), []byte("{\"ociVersion\": \"1.0.0\",\n\"process\": {\"args\": 5}}"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := r.Create(context.Background(), "malformed", malformed, CreateOpts{})
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("malformed config: %v", err)
	}
}

// A symlink in the image pointing at a host directory must not redirect a
// mount there: the mount lands inside the rootfs.
func TestMountThroughSymlinkStaysInRoot(t *testing.T) {
	r := testRuntime(t)
	hostDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostDir, "precious"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	bundle := testBundle(t, []string{"sh", "-c", "ls /evil; echo listed"}, func(s *specs.Spec) {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/evil", Type: "tmpfs", Source: "tmpfs"})
		s.Root.Readonly = false
	})
	if err := os.Symlink(hostDir, filepath.Join(bundle, "rootfs", "evil")); err != nil {
		t.Fatal(err)
	}
	code, out := runOutput(t, r, "symlink", bundle)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if strings.Contains(out, "precious") {
		t.Fatalf("container saw the host directory through the symlink: %s", out)
	}
	entries, _ := os.ReadDir(hostDir)
	if len(entries) != 1 {
		t.Fatalf("host directory changed: %v", entries)
	}
	if mounted(hostDir) {
		t.Fatalf("a mount landed on the host directory %s", hostDir)
	}
}

func mounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	return strings.Contains(string(b), " "+dir+" ")
}

// No runtime fd may reach the container: not as an open fd, not as a cwd
// through /proc/self/fd (CVE-2024-21626).
func TestNoHostFDReachesTheContainer(t *testing.T) {
	r := testRuntime(t)
	code, out := runOutput(t, r, "fds", testBundle(t, []string{"sh", "-c", "ls /proc/self/fd | tr '\\n' ' '"}, nil))
	if code != 0 || strings.TrimSpace(out) != "0 1 2 3" { // 3 is ls's own directory fd
		t.Fatalf("open fds in the container: %q (exit %d)", out, code)
	}
	for fd := 3; fd <= 12; fd++ {
		bundle := testBundle(t, []string{"sh", "-c", "pwd; ls"}, func(s *specs.Spec) {
			s.Process.Cwd = "/proc/self/fd/" + strconv.Itoa(fd)
		})
		var buf bytes.Buffer
		w := &syncWriter{b: &buf}
		code, err := r.Run(context.Background(), "cwd"+strconv.Itoa(fd), bundle, CreateOpts{IO: IO{Stdout: w, Stderr: w}}, false)
		if err == nil && code == 0 {
			t.Fatalf("cwd /proc/self/fd/%d was accepted: %s", fd, buf.String())
		}
	}
}

// CVE-2019-5736: while runtime code runs inside a container, a container
// process can open the runtime's executable through /proc/<pid>/exe, wait
// for it to stop running, and reopen it for writing. The write must fail.
func TestRuntimeBinaryCannotBeOverwrittenFromContainer(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	out := worldDir(t)
	bundle := testBundle(t, []string{"sleep", "100"}, func(s *specs.Spec) {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/out", Type: "bind", Source: out, Options: []string{"rbind", "rw"}})
	})
	// In the created state the container's pid 1 is still the runtime's
	// init, waiting for start.
	if err := r.Create(ctx, "exe", bundle, CreateOpts{}); err != nil {
		t.Fatal(err)
	}
	spec, _ := r.Spec("exe")
	p := *spec.Process
	// Every capability this host allows, CAP_SYS_PTRACE included: the
	// read-only mount must stop the write on its own.
	all := ownBoundingSet(t)
	p.Capabilities = &specs.LinuxCapabilities{Bounding: all, Effective: all, Permitted: all}
	p.NoNewPrivileges = false
	p.Args = []string{"sh", "-c", `exec 3</proc/1/exe || { echo noopen > /out/result; exit; }
touch /out/ready
while [ "$(cat /proc/1/comm)" != sleep ]; do usleep 1000; done
{ echo pwned >> /proc/self/fd/3; } 2>/out/err; echo rc=$? >> /out/err; mv /out/err /out/result`}
	if _, err := r.Exec(ctx, "exe", p, ExecOpts{Detach: true}); err != nil {
		t.Fatal(err)
	}
	waitFile(t, filepath.Join(out, "ready"))
	if err := r.Start(ctx, "exe"); err != nil {
		t.Fatal(err)
	}
	waitFile(t, filepath.Join(out, "result"))
	got, _ := os.ReadFile(filepath.Join(out, "result"))
	if !strings.Contains(string(got), "Read-only file system") || !strings.Contains(string(got), "rc=1") {
		t.Fatalf("reopening the runtime binary for writing from the container: %q", got)
	}
	init, err := r.initPath()
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(init); bytes.Contains(b[len(b)-64:], []byte("pwned")) {
		t.Fatal("the runtime binary was modified")
	}
}

func waitFile(t *testing.T, p string) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if _, err := os.Stat(p); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", p)
}

// ownBoundingSet lists the capabilities this process may still hold: a
// container cannot be given more.
func ownBoundingSet(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var mask uint64
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:\t"); ok {
			mask, _ = strconv.ParseUint(v, 16, 64)
		}
	}
	var out []string
	for _, n := range allCapabilityNames() {
		c, _ := capabilityByName(n)
		if mask&(1<<uint(c)) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// Making the copy of a new build removes the copies of earlier builds,
// read-only mounts included, but not one made moments ago by another.
func TestOldExecutableCopiesAreRemoved(t *testing.T) {
	r := testRuntime(t)
	dir := filepath.Join(r.Root, ".exe")
	if err := os.MkdirAll(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	old, recent := filepath.Join(dir, "0-0-0-1.1"), filepath.Join(dir, "0-0-0-2.2")
	for _, p := range []string{old, recent} {
		if err := os.WriteFile(p, []byte("an earlier build"), 0o555); err != nil {
			t.Fatal(err)
		}
	}
	hourAgo := time.Now().Add(-time.Hour)
	if err := os.Chtimes(old, hourAgo, hourAgo); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(old, old, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(old, syscall.MNT_DETACH) })
	if _, err := r.initPath(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("the hour-old copy is still there: %v", err)
	}
	if _, err := os.Stat(recent); err != nil {
		t.Errorf("the recent copy was removed: %v", err)
	}
}

// threads is the thread count of a process.
func threads(t *testing.T, pid int) int {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatalf("no thread count for %d", pid)
	return 0
}

// TestWaitingForContainersHoldsNoThreads: a runtime in a long-lived
// process (the agent) reaps every container it created; the wait must sit
// in Go's poller, not hold an OS thread per running container.
func TestWaitingForContainersHoldsNoThreads(t *testing.T) {
	r := testRuntime(t)
	const n = 16
	var bundles []string // one each: a bundle names its cgroup
	for range n + 1 {
		bundles = append(bundles, testBundle(t, []string{"sleep", "100"}, nil))
	}
	ctx := context.Background()
	// The first container warms up what a start needs once.
	if err := r.Create(ctx, "reap-warm", bundles[n], CreateOpts{}); err != nil {
		t.Fatal(err)
	}
	before := threads(t, os.Getpid())
	for i := range n {
		id := "reap-" + strconv.Itoa(i)
		if err := r.Create(ctx, id, bundles[i], CreateOpts{}); err != nil {
			t.Fatal(err)
		}
		if err := r.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if grew := threads(t, os.Getpid()) - before; grew >= n/2 {
		t.Errorf("%d running containers took %d more threads", n, grew)
	}
	if err := r.Kill(ctx, "reap-3", unix.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if code, ok := r.ExitCode("reap-3"); ok {
			if code != 137 {
				t.Errorf("exit code %d, want 137", code)
			}
			break
		}
		if i == 500 {
			t.Fatal("the killed container was never reaped")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

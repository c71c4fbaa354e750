package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/busybox"
	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/runtime"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The test binary is also the berth-runtime command line (and the container
// init), so these tests drive the real command line exactly as containerd
// or Podman drive runc: one process per verb.
func TestMain(m *testing.M) {
	if runtime.IsInit() {
		runtime.InitMain()
	}
	if os.Getenv("BERTH_RUNTIME_TEST_CLI") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// cli runs berth-runtime with a state root of its own.
type cli struct {
	t    *testing.T
	root string
	exe  string
	env  []string // more environment for every verb
}

func newCLI(t *testing.T) *cli {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates namespaces, cgroups and mounts")
	}
	if err := busybox.Available(); err != nil {
		t.Skip(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &cli{t: t, root: worldDir(t), exe: exe}
	t.Cleanup(func() {
		c.env = nil
		out, _ := c.run("list", "-q")
		for _, id := range strings.Fields(out) {
			if _, err := c.run("delete", "-f", id); err != nil {
				t.Errorf("cleanup %s: %v", id, err)
			}
		}
		// The runtime keeps a sealed copy of itself under the root.
		if r, err := runtime.NewNative(c.root, nil); err == nil {
			_ = r.ReleaseExecutables()
		}
	})
	return c
}

// run runs one verb and returns its combined output. Output goes through a
// file, not a pipe: a created container inherits the command's stdio and
// would hold a pipe open.
func (c *cli) run(args ...string) (string, error) {
	c.t.Helper()
	out, err := os.CreateTemp(c.root, "out-")
	if err != nil {
		c.t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(c.exe, append([]string{"--root", c.root}, args...)...)
	cmd.Env = append(append(os.Environ(), "BERTH_RUNTIME_TEST_CLI=1"), c.env...)
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	b, _ := os.ReadFile(out.Name())
	return string(b), err
}

func (c *cli) must(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("berth-runtime %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *cli) state(id string) specs.State {
	c.t.Helper()
	var st specs.State
	out := c.must("state", id)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("state %s printed %q: %v", id, out, err)
	}
	return st
}

func worldDir(t *testing.T) string { return testdir.World(t) }

// bundle makes a busybox bundle with `spec -- args` and applies mutate.
func (c *cli) bundle(mutate func(*specs.Spec), args ...string) string {
	c.t.Helper()
	dir := worldDir(c.t)
	if err := busybox.Rootfs(filepath.Join(dir, "rootfs")); err != nil {
		c.t.Fatal(err)
	}
	c.must(append([]string{"spec", "--bundle", dir, "--"}, args...)...)
	p := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		c.t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		c.t.Fatalf("spec wrote invalid JSON: %v", err)
	}
	if s.Process.Terminal || strings.Join(s.Process.Args, " ") != strings.Join(args, " ") {
		c.t.Fatalf("spec -- %v wrote process %+v", args, s.Process)
	}
	s.Linux.CgroupsPath = "/berth-cli-test/" + filepath.Base(dir)
	if mutate != nil {
		mutate(&s)
	}
	if b, err = json.Marshal(&s); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return dir
}

func waitStatus(c *cli, id, want string) {
	c.t.Helper()
	for i := 0; i < 500; i++ {
		if c.state(id).Status == specs.ContainerState(want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("container %s never became %s: %+v", id, want, c.state(id))
}

func TestLifecycleThroughTheCommandLine(t *testing.T) {
	c := newCLI(t)
	bundle := c.bundle(nil, "sleep", "300")
	pidFile := filepath.Join(c.root, "pid")
	c.must("create", "--bundle", bundle, "--pid-file", pidFile, "ctr")
	st := c.state("ctr")
	b, _ := os.ReadFile(pidFile)
	if st.Status != specs.StateCreated || st.ID != "ctr" || st.Bundle != bundle || strconv.Itoa(st.Pid) != string(b) {
		t.Fatalf("after create: state %+v, pid file %q", st, b)
	}
	if out := c.must("list", "-q"); out != "ctr\n" {
		t.Errorf("list -q printed %q", out)
	}
	c.must("start", "ctr")
	if st := c.state("ctr"); st.Status != specs.StateRunning {
		t.Fatalf("after start: %+v", st)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(c.must("list", "--format", "json")), &list); err != nil || len(list) != 1 || list[0]["id"] != "ctr" || list[0]["status"] != "running" {
		t.Errorf("list --format json: %v %v", list, err)
	}

	out := c.must("exec", "ctr", "sh", "-c", "echo pid1=$(cat /proc/1/comm) host=$(hostname)")
	if !strings.Contains(out, "pid1=sleep") {
		t.Errorf("exec did not join the container's pid namespace: %q", out)
	}
	// Repeated -e/--env (a value may hold commas) and -- after the ID,
	// as callers write them.
	if out := c.must("exec", "-e", "A=1", "--env", "B=2,3", "ctr", "--", "sh", "-c", "echo $A/$B"); out != "1/2,3\n" {
		t.Errorf("exec -e A=1 --env B=2,3 ctr -- sh -c ... printed %q", out)
	}
	_, err := c.run("exec", "ctr", "sh", "-c", "exit 7")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
		t.Errorf("exec exit code: %v, want 7", err)
	}
	// exec -d leaves the process to the caller's subreaper, as runc does:
	// conmon and containerd-shim learn its exit code by reaping it.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	execPid := filepath.Join(c.root, "exec.pid")
	c.must("exec", "-d", "--pid-file", execPid, "ctr", "sh", "-c", "exit 4")
	pb, _ := os.ReadFile(execPid)
	epid, _ := strconv.Atoi(strings.TrimSpace(string(pb)))
	var ws unix.WaitStatus
	if _, err := unix.Wait4(epid, &ws, 0, nil); err != nil || ws.ExitStatus() != 4 {
		t.Errorf("reaping the detached exec %d: %v, status %d, want 4", epid, err, ws.ExitStatus())
	}
	if out := c.must("ps", "ctr"); !strings.Contains(out, "sleep 300") {
		t.Errorf("ps does not show the container's process:\n%s", out)
	}
	var pids []int
	if err := json.Unmarshal([]byte(c.must("ps", "--format", "json", "ctr")), &pids); err != nil || len(pids) != 1 || pids[0] != st.Pid {
		t.Errorf("ps --format json: %v %v, want [%d]", pids, err, st.Pid)
	}

	c.must("pause", "ctr")
	if st := c.state("ctr"); st.Status != specs.ContainerState("paused") {
		t.Errorf("after pause: %+v", st)
	}
	c.must("resume", "ctr")
	if st := c.state("ctr"); st.Status != specs.StateRunning {
		t.Errorf("after resume: %+v", st)
	}

	if out, err := c.run("delete", "ctr"); err == nil || !strings.Contains(out, "running") {
		t.Errorf("delete of a running container without --force: %v %q", err, out)
	}
	// sleep is the namespace's init: the kernel drops SIGTERM for it, as
	// it has no handler, so it takes SIGKILL (by name, as runc accepts).
	c.must("kill", "ctr", "SIGKILL")
	waitStatus(c, "ctr", "stopped")
	c.must("delete", "ctr")
	if out, err := c.run("state", "ctr"); err == nil || !strings.Contains(out, "does not exist") {
		t.Errorf("state after delete: %v %q", err, out)
	}
	if entries, _ := os.ReadDir(c.root); hasDir(entries, "ctr") {
		t.Errorf("delete left the state directory behind")
	}
}

func hasDir(entries []os.DirEntry, name string) bool {
	for _, e := range entries {
		if e.Name() == name {
			return true
		}
	}
	return false
}

func TestRunPassesExitCodeAndStdio(t *testing.T) {
	c := newCLI(t)
	bundle := c.bundle(nil, "sh", "-c", "echo out; echo err >&2; exit 5")
	out, err := c.run("run", "--bundle", bundle, "once")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 {
		t.Fatalf("run: %v, want exit 5\n%s", err, out)
	}
	if out != "out\nerr\n" && out != "err\nout\n" {
		t.Errorf("run output %q", out)
	}
	if out := c.must("list", "-q"); out != "" {
		t.Errorf("run left containers: %q", out)
	}
}

// A terminal goes to the --console-socket as one SCM_RIGHTS message, as
// runc sends it to containerd and conmon.
func TestConsoleSocketReceivesThePty(t *testing.T) {
	c := newCLI(t)
	sock := filepath.Join(c.root, "console.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	master := make(chan *os.File, 1)
	go func() {
		conn, err := l.AcceptUnix()
		if err != nil {
			master <- nil
			return
		}
		defer conn.Close()
		buf, oob := make([]byte, 256), make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil {
			master <- nil
			return
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		if len(msgs) == 1 {
			if fds, _ := unix.ParseUnixRights(&msgs[0]); len(fds) == 1 {
				master <- os.NewFile(uintptr(fds[0]), "pty-master")
				return
			}
		}
		master <- nil
	}()
	bundle := c.bundle(func(s *specs.Spec) { s.Process.Terminal = true }, "sh", "-c", "echo tty=$(tty)")
	c.must("create", "--bundle", bundle, "--console-socket", sock, "tty")
	m := <-master
	if m == nil {
		t.Fatal("the console socket got no pty")
	}
	defer m.Close()
	c.must("start", "tty")
	_ = m.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got strings.Builder
	buf := make([]byte, 256)
	for !strings.Contains(got.String(), "\n") {
		n, err := m.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if !strings.Contains(got.String(), "tty=/dev/pts/") {
		t.Errorf("container output on the pty: %q", got.String())
	}
}

func TestBadInputIsRefusedClearly(t *testing.T) {
	c := newCLI(t)
	bundle := c.bundle(func(s *specs.Spec) {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: "time-travel"})
	}, "true")
	out, err := c.run("create", "--bundle", bundle, "bad")
	if err == nil || !strings.Contains(out, "linux.namespaces") || !strings.Contains(out, "time-travel") {
		t.Errorf("unknown namespace: %v %q", err, out)
	}
	if out, err := c.run("--systemd-cgroup", "create", "--bundle", bundle, "sd"); err == nil || !strings.Contains(out, "--systemd-cgroup") {
		t.Errorf("--systemd-cgroup: %v %q", err, out)
	}
	if out, err := c.run("create", "--bundle", filepath.Join(c.root, "missing"), "nobundle"); err == nil || !strings.Contains(out, "config.json") {
		t.Errorf("missing bundle: %v %q", err, out)
	}
	if out := c.must("list", "-q"); out != "" {
		t.Errorf("failed creates left containers: %q", out)
	}
	for _, id := range []string{"bad", "sd", "nobundle"} {
		if entries, _ := os.ReadDir(c.root); hasDir(entries, id) {
			t.Errorf("failed create left state for %s", id)
		}
	}
}

// containerd and conmon log runc's errors from --log in JSON, reading
// "level" and "msg".
func TestErrorsGoToTheLogAsJSON(t *testing.T) {
	c := newCLI(t)
	logPath := filepath.Join(c.root, "log.json")
	if _, err := c.run("--log", logPath, "--log-format", "json", "start", "nosuch"); err == nil {
		t.Fatal("start of a missing container succeeded")
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var entry struct{ Level, Msg string }
	if err := json.Unmarshal(b, &entry); err != nil || entry.Level != "error" || !strings.Contains(entry.Msg, "nosuch") {
		t.Errorf("log %q: %v", b, err)
	}
}

// Podman drives berth-runtime through conmon exactly as it drives runc:
// create with a console socket or pipes, start, state, kill and delete.
// Podman's storage and run state go to a temp dir, and the container has
// no network, so the host's storage and firewall stay untouched.
func TestPodmanDrivesBerthRuntime(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman is not installed")
	}
	bin := os.Getenv("BERTH_BIN_DIR")
	if bin == "" {
		t.Skip("BERTH_BIN_DIR is not set: test.sh builds berth-runtime there")
	}
	rt := filepath.Join(bin, "berth-runtime")
	dir := worldDir(t)
	rootfs := filepath.Join(dir, "rootfs")
	if err := busybox.Rootfs(rootfs); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(dir, "rootfs.tar")
	if out, err := exec.Command("tar", "-C", rootfs, "-cf", tarball, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	pm := func(args ...string) (string, error) {
		full := append([]string{
			"--root", filepath.Join(dir, "storage"), "--runroot", filepath.Join(dir, "run"),
			"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", rt,
			"--events-backend", "none",
		}, args...)
		out, err := exec.Command(podman, full...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		_, _ = pm("rm", "--all", "--force")
		// Podman runs the runtime with its default root, where it keeps a
		// sealed, mounted copy of itself: release it.
		if r, err := runtime.NewNative("/run/berth-runtime", nil); err == nil {
			_ = r.ReleaseExecutables()
		}
	})
	if out, err := pm("import", tarball, "localhost/berth-test:latest"); err != nil {
		t.Fatalf("podman import: %v\n%s", err, out)
	}
	// The hard nofile limit stays within this host's: podman asks for a
	// higher one by default, which needs CAP_SYS_RESOURCE.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	ulimit := "nofile=1024:" + strconv.FormatUint(lim.Max, 10)
	out, err := pm("run", "--rm", "--network", "none", "--ulimit", ulimit, "--ulimit", "nproc=1024:1024",
		"localhost/berth-test:latest", "sh", "-c", "echo pid=$$; grep CapEff /proc/self/status; exit 3")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("podman run: %v, want exit 3\n%s", err, out)
	}
	if !strings.Contains(out, "pid=1\n") || !strings.Contains(out, "CapEff:\t00000000800405fb") {
		t.Errorf("podman run output:\n%s", out)
	}
	// Detached, then stopped: kill and delete go through the runtime.
	out, err = pm("run", "-d", "--name", "sleeper", "--network", "none", "--ulimit", ulimit, "--ulimit", "nproc=1024:1024",
		"localhost/berth-test:latest", "sleep", "300")
	if err != nil {
		t.Fatalf("podman run -d: %v\n%s", err, out)
	}
	if out, err := pm("exec", "sleeper", "cat", "/proc/1/comm"); err != nil || out != "sleep\n" {
		t.Errorf("podman exec: %v %q", err, out)
	}
	if out, err := pm("stop", "--time", "1", "sleeper"); err != nil {
		t.Errorf("podman stop: %v\n%s", err, out)
	}
	if out, err := pm("rm", "sleeper"); err != nil {
		t.Errorf("podman rm: %v\n%s", err, out)
	}
}

// TestStartAndDeleteFastPaths proves that start and delete of a plain
// container run in fastpath.c, before Go starts (with
// GODEBUG=inittrace=1 a Go runtime that starts prints its package inits;
// the fast path prints nothing), and leave what the Go verbs leave.
func TestStartAndDeleteFastPaths(t *testing.T) {
	for _, fast := range []bool{true, false} {
		c := newCLI(t)
		c.env = []string{"BERTH_RUNTIME_FASTPATH=" + map[bool]string{true: "1", false: "0"}[fast]}
		marker := filepath.Join(c.root, "poststop-ran")
		plain := c.bundle(nil, "sleep", "300")
		hooked := c.bundle(func(s *specs.Spec) {
			s.Hooks = &specs.Hooks{Poststop: []specs.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "touch " + marker}}}}
		}, "sleep", "300")
		c.must("create", "--bundle", plain, "plain")
		c.must("create", "--bundle", hooked, "hooked")
		record, err := os.ReadFile(filepath.Join(c.root, "plain", "fastpath"))
		if err != nil {
			t.Fatalf("create wrote no fast record: %v", err)
		}
		if _, err := os.Stat(filepath.Join(c.root, "hooked", "fastpath")); err == nil {
			t.Errorf("a container with a poststop hook has a fast record")
		}
		traced := func(verb, id string) {
			t.Helper()
			env := c.env
			c.env = append(env, "GODEBUG=inittrace=1")
			out := c.must(verb, id)
			c.env = env
			if started := strings.Contains(out, "init runtime"); started == fast {
				t.Errorf("fast path %v: %s started Go: %v\n%s", fast, verb, started, out)
			}
		}
		traced("start", "plain")
		c.must("start", "hooked")
		for _, id := range []string{"plain", "hooked"} {
			if st := c.state(id); st.Status != specs.StateRunning {
				t.Fatalf("after start: %+v", st)
			}
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.state(id).Pid)); string(comm) != "sleep\n" {
				t.Errorf("%s: the init runs %q, not the workload", id, comm)
			}
			// Refused while it runs, by the Go verb in both modes.
			if out, err := c.run("delete", id); err == nil || !strings.Contains(out, "running") {
				t.Errorf("delete of running %s: %v %q", id, err, out)
			}
			c.must("kill", id, "KILL")
			waitStatus(c, id, "stopped")
		}
		traced("delete", "plain")
		c.must("delete", "hooked")
		if _, err := os.Stat(marker); err != nil {
			t.Errorf("the poststop hook did not run at delete: %v", err)
		}
		for _, id := range []string{"plain", "hooked"} {
			if _, err := os.Stat(filepath.Join(c.root, id)); !os.IsNotExist(err) {
				t.Errorf("delete left %s's state directory: %v", id, err)
			}
		}
		for _, line := range strings.Split(strings.TrimSpace(string(record)), "\n") {
			if dir, ok := strings.CutPrefix(line, "cgroup "); ok {
				if _, err := os.Stat(dir); !os.IsNotExist(err) {
					t.Errorf("delete left cgroup %s: %v", dir, err)
				}
			}
		}
	}
}

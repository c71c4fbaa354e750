package agent

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/image/imagetest"
	"github.com/berth-dev/berth/internal/busybox"
	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/runtime"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// The test binary doubles as the runtime's container init.
func TestMain(m *testing.M) {
	if runtime.IsInit() {
		runtime.InitMain()
	}
	if dir := os.Getenv(envHelper); dir != "" {
		agentHelper(dir)
	}
	os.Exit(m.Run())
}

// envHelper makes the test binary an agent process of its own (see
// agentHelper), so a test can kill an agent outright.
const envHelper = "BERTH_TEST_AGENT_DIR"

// agentHelper runs an agent on dir (an env's directory), starts one
// container, prints its ID and waits to be killed.
func agentHelper(dir string) {
	ctx := context.Background()
	images, err := image.Open(filepath.Join(dir, "images"), nil)
	if err == nil {
		var rt *runtime.Native
		if rt, err = runtime.NewNative(filepath.Join(dir, "runtime"), nil); err == nil {
			var a *Agent
			a, err = New(ctx, Config{Root: filepath.Join(dir, "agent"), Images: images, Runtime: rt, InitPath: filepath.Join(dir, "berth-init")})
			if err == nil {
				var id string
				if id, err = a.Run(ctx, ContainerSpec{Image: "busybox", Cmd: []string{"sh", "-c", "echo before; until [ -f /tmp/go ]; do sleep 0.05; done; sleep 0.5; echo after; exit 5"}}); err == nil {
					os.Stdout.WriteString(id + "\n")
					select {}
				}
			}
		}
	}
	os.Stderr.WriteString(err.Error() + "\n")
	os.Exit(1)
}

// env is one node: an image store with busybox, a native runtime, the
// berth-init binary, and the agent's root, all under one directory.
type env struct {
	dir    string
	images *image.Store
	rt     *runtime.Native
	init   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	needRoot(t)
	if err := busybox.Available(); err != nil {
		t.Skip(err)
	}
	dir := testdir.World(t)
	e := &env{dir: dir, init: buildInit(t, dir)}
	var err error
	if e.images, err = image.Open(filepath.Join(dir, "images"), nil); err != nil {
		t.Fatal(err)
	}
	if e.rt, err = runtime.NewNative(filepath.Join(dir, "runtime"), nil); err != nil {
		t.Fatal(err)
	}
	e.rt.PlanInitPath = e.init
	t.Cleanup(func() {
		list, _ := e.rt.List(context.Background())
		for _, s := range list {
			_ = e.rt.Delete(context.Background(), s.ID, true)
		}
		_ = e.rt.ReleaseExecutables()
		_ = unmountAll(dir)
	})
	_, err = e.images.Create(context.Background(), "busybox:latest", image.NewImage{
		Layers: []io.Reader{imagetest.BusyboxTar(t)},
		Config: ocispec.ImageConfig{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// agent opens an agent on the env's root; it is closed (containers
// removed) when the test ends unless keep is set.
func (e *env) agent(t *testing.T) *Agent {
	t.Helper()
	return openAgent(t, Config{Root: filepath.Join(e.dir, "agent"), Images: e.images, Runtime: e.rt, InitPath: e.init})
}

// removeCgroupParent removes an agent's (empty) parent cgroup from every
// hierarchy, so test runs leave no directories behind.
func removeCgroupParent(parent string) {
	hs, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range append(hs, "/sys/fs/cgroup") {
		_ = os.Remove(filepath.Join(h, parent))
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func logsOf(t *testing.T, a *Agent, id string, opt LogOptions) (string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	if err := a.Logs(ctxT(t), id, opt, &out, &errb); err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String()
}

func TestRunWaitLogsAndRemove(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	ctx := ctxT(t)
	id, err := a.Run(ctx, ContainerSpec{Image: "busybox", Cmd: []string{"sh", "-c", "echo out; echo err >&2; id -u; exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	code, err := a.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 {
		t.Fatalf("exit code %d, want 3", code)
	}
	out, errs := logsOf(t, a, id, LogOptions{Tail: -1})
	if out != "out\n0\n" || errs != "err\n" {
		t.Fatalf("logs: stdout %q stderr %q", out, errs)
	}
	c, err := a.Inspect(id)
	if err != nil {
		t.Fatal(err)
	}
	if c.State.Status != StatusExited || c.State.ExitCode != 3 || c.State.FinishedAt.IsZero() {
		t.Fatalf("state after exit: %+v", c.State)
	}
	if err := a.Remove(ctx, id, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.dir(id)); !os.IsNotExist(err) {
		t.Fatalf("container dir left after remove: %v", err)
	}
	if ms, _ := mountsUnder(filepath.Join(e.dir, "agent")); len(ms) != 0 {
		t.Fatalf("mounts left after remove: %v", ms)
	}
	if snaps, _ := e.images.Snapshots(); len(snaps) != 0 {
		t.Fatalf("snapshots left after remove: %v", snaps)
	}
	if _, err := a.Inspect(id); err == nil || !strings.Contains(err.Error(), "no such container") {
		t.Fatalf("inspect after remove: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func run(t *testing.T, a *Agent, s ContainerSpec) string {
	t.Helper()
	if s.Image == "" {
		s.Image = "busybox"
	}
	id, err := a.Run(ctxT(t), s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func execOut(t *testing.T, a *Agent, id string, e ExecSpec) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code, err := a.Exec(ctxT(t), id, e, runtime.IO{Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), code
}

func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == field {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Container root is an unprivileged host uid from a range no other
// container shares; the image's files still belong to the container's root;
// the workload runs under seccomp, no-new-privileges, Docker's capabilities.
func TestContainersAreConfinedByDefault(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	id1 := run(t, a, ContainerSpec{Cmd: []string{"sleep", "1000"}})
	id2 := run(t, a, ContainerSpec{Cmd: []string{"sleep", "1000"}})
	c1, _ := a.Inspect(id1)
	c2, _ := a.Inspect(id2)
	if c1.IDs.Base < 1<<28 || c1.IDs.Base+c1.IDs.Size > c2.IDs.Base && c2.IDs.Base+c2.IDs.Size > c1.IDs.Base {
		t.Fatalf("id ranges %+v and %+v overlap or include host ids", c1.IDs, c2.IDs)
	}
	uids := strings.Fields(procStatus(t, c1.State.Pid, "Uid"))
	if uids[0] != strconv.Itoa(int(c1.IDs.Base)) {
		t.Fatalf("container init runs as host uid %s, want %d", uids[0], c1.IDs.Base)
	}
	out, code := execOut(t, a, id1, ExecSpec{Args: []string{"sh", "-c", "stat -c %u /bin/busybox; grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; touch /newfile && echo wrote"}})
	if code != 0 {
		t.Fatalf("exec: code %d: %s", code, out)
	}
	for _, want := range []string{"0\n", "Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t00000000a80425fb", "wrote"} {
		if !strings.Contains(out, want) {
			t.Errorf("exec output lacks %q:\n%s", want, out)
		}
	}
	// The image's layers are shared, not copied: both containers' lower
	// layer is the store's one unpacked copy, seen through idmapped mounts.
	var st1, st2, st0 syscall.Stat_t
	if err := syscall.Stat(filepath.Join(a.dir(id1), "layers/0/bin/busybox"), &st1); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(filepath.Join(a.dir(id2), "layers/0/bin/busybox"), &st2); err != nil {
		t.Fatal(err)
	}
	img, _ := e.images.Get("busybox")
	_, enc, _ := strings.Cut(img.Config.RootFS.DiffIDs[0].String(), ":")
	if err := syscall.Stat(filepath.Join(e.images.Dir(), "layers", enc, "fs/bin/busybox"), &st0); err != nil {
		t.Fatal(err)
	}
	if st1.Ino != st0.Ino || st2.Ino != st0.Ino || st1.Dev != st0.Dev || st2.Dev != st0.Dev {
		t.Errorf("containers see copies of /bin/busybox, not the store's layer")
	}
	if st1.Uid != c1.IDs.Base || st2.Uid != c2.IDs.Base || st0.Uid != 0 {
		t.Errorf("/bin/busybox owned by %d in the store, seen as %d and %d, want 0, %d and %d", st0.Uid, st1.Uid, st2.Uid, c1.IDs.Base, c2.IDs.Base)
	}
	// A non-root user gets no effective capabilities.
	out, _ = execOut(t, a, id1, ExecSpec{Args: []string{"sh", "-c", "id -u; grep CapEff /proc/self/status"}, User: "1000:1000"})
	if !strings.Contains(out, "1000\n") || !strings.Contains(out, "CapEff:\t0000000000000000") {
		t.Errorf("exec as 1000: %s", out)
	}
}

func TestWorkloadRunsAsItsUserWithDroppedCapabilities(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	ctx := ctxT(t)
	id := run(t, a, ContainerSpec{User: "1000:1000", CapDrop: []string{"ALL"}, Cmd: []string{"sh", "-c", "id -u; id -g; grep -E '^Cap(Eff|Bnd):' /proc/self/status"}})
	if code, _ := a.Wait(ctx, id); code != 0 {
		c, _ := a.Inspect(id)
		t.Fatalf("exit %d: %+v", code, c.State)
	}
	out, _ := logsOf(t, a, id, LogOptions{Tail: -1})
	if out != "1000\n1000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n" {
		t.Fatalf("workload as 1000 with cap-drop ALL:\n%s", out)
	}
	// An exec as root into it has no more than the workload's bound.
	id2 := run(t, a, ContainerSpec{User: "1000", CapDrop: []string{"ALL"}, Cmd: []string{"sleep", "1000"}})
	out, _ = execOut(t, a, id2, ExecSpec{User: "0", Args: []string{"grep", "CapEff", "/proc/self/status"}})
	if out != "CapEff:\t0000000000000000\n" {
		t.Fatalf("exec as root after cap-drop ALL: %s", out)
	}
}

// berth-init forwards SIGTERM to the workload, and Stop waits for it.
func TestStopForwardsSIGTERMThroughInit(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	ctx := ctxT(t)
	id := run(t, a, ContainerSpec{Restart: RestartPolicy{Name: "always"},
		Cmd: []string{"sh", "-c", "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.05; done"}})
	waitFor(t, "ready", func() bool { out, _ := logsOf(t, a, id, LogOptions{Tail: -1}); return out == "ready\n" })
	if err := a.Stop(ctx, id, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	c, _ := a.Inspect(id)
	if c.State.Status != StatusExited || c.State.ExitCode != 7 {
		t.Fatalf("after stop: %+v", c.State)
	}
	out, _ := logsOf(t, a, id, LogOptions{Tail: -1})
	if !strings.Contains(out, "got TERM") {
		t.Fatalf("workload did not get SIGTERM: %q", out)
	}
	// Stopped by the user: "always" does not bring it back, Start does.
	time.Sleep(300 * time.Millisecond)
	if c, _ := a.Inspect(id); c.State.Status != StatusExited {
		t.Fatalf("a stopped container restarted: %+v", c.State)
	}
	if err := a.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if c, _ := a.Inspect(id); c.State.Status != StatusRunning {
		t.Fatalf("after start: %+v", c.State)
	}
	if err := a.Kill(ctx, id, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code, _ := a.Wait(ctx, id); code != 137 {
		t.Fatalf("killed: exit %d, want 137", code)
	}
}

// PID 1 reaps orphans: a grandchild that exits after its parent leaves no
// zombie behind.
func TestInitReapsOrphans(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	id := run(t, a, ContainerSpec{Cmd: []string{"sh", "-c", "sh -c 'sleep 0.2 &'; sleep 1000"}})
	time.Sleep(700 * time.Millisecond)
	out, _ := execOut(t, a, id, ExecSpec{Args: []string{"ps", "-o", "stat,comm"}})
	if strings.Contains(out, "Z") {
		t.Fatalf("zombie left:\n%s", out)
	}
	if !strings.Contains(out, "sleep") {
		t.Fatalf("ps shows no processes:\n%s", out)
	}
}

func TestRestartOnFailureCountsAndGivesUp(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	ctx := ctxT(t)
	id := run(t, a, ContainerSpec{Restart: RestartPolicy{Name: "on-failure", MaxRetries: 2}, Cmd: []string{"sh", "-c", "echo run; exit 4"}})
	waitFor(t, "two restarts", func() bool {
		c, _ := a.Inspect(id)
		return c.State.RestartCount == 2 && c.State.Status == StatusExited
	})
	time.Sleep(500 * time.Millisecond)
	c, _ := a.Inspect(id)
	if c.State.RestartCount != 2 || c.State.Status != StatusExited || c.State.ExitCode != 4 {
		t.Fatalf("after on-failure:2: %+v", c.State)
	}
	out, _ := logsOf(t, a, id, LogOptions{Tail: -1})
	if out != "run\nrun\nrun\n" {
		t.Fatalf("logs over three runs: %q", out)
	}
	// always brings back a container that keeps exiting, with back-off.
	id3 := run(t, a, ContainerSpec{Restart: RestartPolicy{Name: "always"}, Cmd: []string{"sh", "-c", "exit 0"}})
	waitFor(t, "restarts under always", func() bool { c, _ := a.Inspect(id3); return c.State.RestartCount >= 3 })
	// A success is not restarted by on-failure.
	id2 := run(t, a, ContainerSpec{Restart: RestartPolicy{Name: "on-failure"}, Cmd: []string{"true"}})
	if code, _ := a.Wait(ctx, id2); code != 0 {
		t.Fatalf("true exited %d", code)
	}
	time.Sleep(300 * time.Millisecond)
	if c, _ := a.Inspect(id2); c.State.RestartCount != 0 || c.State.Status != StatusExited {
		t.Fatalf("a success restarted: %+v", c.State)
	}
}

func TestOOMKillIsReported(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	ctx := ctxT(t)
	id := run(t, a, ContainerSpec{Memory: 64 << 20, Cmd: []string{"sh", "-c", "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived"}})
	code, err := a.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := a.Inspect(id)
	if !c.State.OOMKilled {
		t.Fatalf("not reported OOM-killed: exit %d %+v", code, c.State)
	}
	if out, _ := logsOf(t, a, id, LogOptions{Tail: -1}); strings.Contains(out, "survived") {
		t.Fatalf("the shell survived its memory limit")
	}
	// A container within its limit is not.
	id2 := run(t, a, ContainerSpec{Memory: 64 << 20, Cmd: []string{"true"}})
	a.Wait(ctx, id2)
	if c, _ := a.Inspect(id2); c.State.OOMKilled {
		t.Fatalf("true reported OOM-killed")
	}
}

func TestStatsFromTheCgroup(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	id := run(t, a, ContainerSpec{Memory: 64 << 20, PidsLimit: 50, Cmd: []string{"sh", "-c", "sleep 1000 & sleep 1000"}})
	waitFor(t, "three processes", func() bool { s, err := a.Stats(id); return err == nil && s.Pids == 3 })
	s, err := a.Stats(id)
	if err != nil {
		t.Fatal(err)
	}
	if s.MemoryBytes == 0 || s.MemoryLimit != 64<<20 || s.PidsLimit != 50 || s.CPUNanos == 0 {
		t.Fatalf("stats: %+v", s)
	}
}

// A named volume outlives its container; a read-only bind is read-only.
func TestVolumesSurviveReplacementAndBindsHonourReadOnly(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	ctx := ctxT(t)
	host := testdir.World(t)
	if err := os.WriteFile(filepath.Join(host, "in"), []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := run(t, a, ContainerSpec{
		Mounts: []Mount{{Type: "volume", Source: "data", Target: "/data"}, {Type: "bind", Source: host, Target: "/host", ReadOnly: true}},
		Cmd:    []string{"sh", "-c", "echo kept > /data/f && chown 33:33 /data/f && cat /host/in && ! touch /host/x"},
	})
	if code, _ := a.Wait(ctx, id); code != 0 {
		out, errs := logsOf(t, a, id, LogOptions{Tail: -1})
		t.Fatalf("first container: exit %d: %s %s", code, out, errs)
	}
	if out, _ := logsOf(t, a, id, LogOptions{Tail: -1}); out != "from host\n" {
		t.Fatalf("bind mount read: %q", out)
	}
	if err := a.Remove(ctx, id, false); err != nil {
		t.Fatal(err)
	}
	// Stored unshifted: the host sees uid 33 for the container's 33.
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(a.cfg.Root, "volumes", "data", "_data", "f"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 33 {
		t.Fatalf("volume file stored as uid %d, want 33", st.Uid)
	}
	id2 := run(t, a, ContainerSpec{Mounts: []Mount{{Type: "volume", Source: "data", Target: "/d"}}, Cmd: []string{"sh", "-c", "cat /d/f; stat -c %u /d/f"}})
	a.Wait(ctx, id2)
	if out, _ := logsOf(t, a, id2, LogOptions{Tail: -1}); out != "kept\n33\n" {
		t.Fatalf("second container sees %q in the volume", out)
	}
	if err := a.RemoveVolume("data"); err == nil {
		t.Fatal("removed a volume in use")
	}
}

func TestHealthChecks(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	fast := func(h HealthCheck) *HealthCheck {
		h.Interval, h.Timeout, h.Retries = 100*time.Millisecond, 5*time.Second, 2
		return &h
	}
	web := []string{"sh", "-c", "mkdir -p /www && echo ok > /www/index.html && httpd -f -p 8080 -h /www"}
	cases := []struct {
		name string
		cmd  []string
		hc   *HealthCheck
		want string
	}{
		{"cmd healthy", []string{"sh", "-c", "touch /tmp/ok; sleep 1000"}, fast(HealthCheck{Cmd: []string{"test", "-f", "/tmp/ok"}}), "healthy"},
		{"cmd unhealthy", []string{"sleep", "1000"}, fast(HealthCheck{Cmd: []string{"test", "-f", "/tmp/ok"}}), "unhealthy"},
		{"http healthy", web, fast(HealthCheck{HTTPPath: "/", Port: 8080}), "healthy"},
		{"http 404 unhealthy", web, fast(HealthCheck{HTTPPath: "/missing", Port: 8080}), "unhealthy"},
		{"tcp healthy", web, fast(HealthCheck{Port: 8080}), "healthy"},
		{"tcp closed unhealthy", web, fast(HealthCheck{Port: 8081}), "unhealthy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := run(t, a, ContainerSpec{Cmd: tc.cmd, Health: tc.hc})
			waitFor(t, tc.want, func() bool {
				c, _ := a.Inspect(id)
				return c.State.Health != nil && c.State.Health.Status == tc.want
			})
			if err := a.Remove(ctxT(t), id, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Restarting the agent never stops a container; an exit while no agent
// runs is recorded by the next one; leftovers of a crash are cleaned up.
func TestAgentRestartAdoptsAndReconciles(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	root := filepath.Join(e.dir, "agent")
	cfg := Config{Root: root, Images: e.images, Runtime: e.rt, InitPath: e.init}
	a1, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	long, err := a1.Run(ctx, ContainerSpec{Image: "busybox", Cmd: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	short, err := a1.Run(ctx, ContainerSpec{Image: "busybox", Cmd: []string{"sh", "-c", "sleep 0.3; exit 9"}})
	if err != nil {
		t.Fatal(err)
	}
	// One whose runtime state vanished while no agent ran (its init killed
	// and the state removed by hand): it must not stop the next agent.
	vanished, err := a1.Run(ctx, ContainerSpec{Image: "busybox", Cmd: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := a1.Inspect(long)
	cShort, _ := a1.Inspect(short)
	a1.Close()
	if err := e.rt.Delete(ctx, vanished, true); err != nil {
		t.Fatal(err)
	}

	// A crash in the middle of Create: a directory and a snapshot only.
	img, err := e.images.Get("busybox")
	if err != nil {
		t.Fatal(err)
	}
	ghost := "0123456789abcdef0123456789abcdef"
	if err := os.Mkdir(filepath.Join(root, "containers", ghost), 0o711); err != nil {
		t.Fatal(err)
	}
	if _, err := e.images.Snapshot(ctx, img, ghost); err != nil {
		t.Fatal(err)
	}
	// A cgroup whose container is gone.
	var strayCgroups []string
	for _, base := range cgroupBases() {
		p := filepath.Join(base, a1.cgroups, "fedcba9876543210fedcba9876543210")
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		strayCgroups = append(strayCgroups, p)
	}
	// short exits while no agent runs.
	waitFor(t, "short to exit", func() bool { return syscall.Kill(cShort.State.Pid, 0) != nil })

	a2 := e.agent(t)
	c2, err := a2.Inspect(long)
	if err != nil {
		t.Fatal(err)
	}
	if c2.State.Status != StatusRunning || c2.State.Pid != c1.State.Pid || syscall.Kill(c1.State.Pid, 0) != nil {
		t.Fatalf("after agent restart: %+v (was pid %d)", c2.State, c1.State.Pid)
	}
	if cv, err := a2.Inspect(vanished); err != nil || cv.State.Status != StatusExited {
		t.Errorf("container whose runtime state vanished: %+v %v, want exited", cv.State, err)
	}
	cs, _ := a2.Inspect(short)
	if cs.State.Status != StatusExited || cs.State.ExitCode != 9 {
		t.Fatalf("exit while the agent was down: %+v", cs.State)
	}
	if _, err := os.Stat(filepath.Join(root, "containers", ghost)); !os.IsNotExist(err) {
		t.Fatalf("leftover container dir not cleaned: %v", err)
	}
	for _, p := range strayCgroups {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("stray cgroup %s not removed: %v", p, err)
		}
	}
	if snaps, _ := e.images.Snapshots(); len(snaps) != 3 {
		t.Fatalf("snapshots after reconcile: %v", snaps)
	}
	// The adopted container is still supervised.
	if err := a2.Stop(ctx, long, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if code, _ := a2.Wait(ctx, long); code != 128+int(syscall.SIGTERM) {
		t.Fatalf("stopped adopted container: exit %d", code)
	}
}

func TestLogsRotateWithinTheirCapAndFilter(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	ctx := ctxT(t)
	id := run(t, a, ContainerSpec{Log: LogConfig{MaxSize: 8192, MaxFiles: 2},
		Cmd: []string{"sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done; echo err >&2"}})
	a.Wait(ctx, id)
	ents, err := os.ReadDir(a.logDir(id))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	n := 0
	for _, de := range ents {
		if strings.HasPrefix(de.Name(), logFile) {
			fi, _ := de.Info()
			total += fi.Size()
			n++
		}
	}
	if n != 2 || total > 2*8192 {
		t.Fatalf("%d log files of %d bytes in all, want 2 within 16 KiB", n, total)
	}
	out, errs := logsOf(t, a, id, LogOptions{Tail: 2})
	if out != "line1999\n" || errs != "err\n" {
		t.Fatalf("tail 2: %q %q", out, errs)
	}
	_, errs = logsOf(t, a, id, LogOptions{Tail: 1, Timestamps: true})
	ts, line, _ := strings.Cut(strings.TrimSpace(errs), " ")
	if _, err := time.Parse(time.RFC3339Nano, ts); err != nil || line != "err" {
		t.Fatalf("timestamps: %q", errs)
	}
	out, _ = logsOf(t, a, id, LogOptions{Tail: -1, Since: time.Now().Add(time.Hour)})
	if out != "" {
		t.Fatalf("since the future: %q", out)
	}
}

func TestLogsFollowUntilExit(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	id := run(t, a, ContainerSpec{Cmd: []string{"sh", "-c", "echo a; sleep 0.3; echo b; sleep 0.3; echo c"}})
	out, _ := logsOf(t, a, id, LogOptions{Tail: -1, Follow: true})
	if out != "a\nb\nc\n" {
		t.Fatalf("follow: %q", out)
	}
}

func TestBadSpecLeavesNothing(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	for _, s := range []ContainerSpec{
		{Image: "busybox", Memory: 100},
		{Image: "busybox", CapAdd: []string{"CAP_NOPE"}},
		{Image: "nosuch.invalid/x", Cmd: []string{"true"}},
		{Image: "busybox", User: "nobody-here", Cmd: []string{"true"}},
		{Image: "busybox", Mounts: []Mount{{Type: "bind", Source: "/does/not/exist", Target: "/x"}}, Cmd: []string{"true"}},
		{Image: "busybox", Network: "web", Cmd: []string{"true"}}, // this agent has no Networker
	} {
		if _, err := a.Run(ctxT(t), s); err == nil {
			t.Errorf("%+v: no error", s)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(a.cfg.Root, "containers"))
	for _, e := range ents {
		if e.Name() != ".spare" {
			t.Errorf("left behind: %v", e)
		}
	}
	if snaps, _ := e.images.Snapshots(); len(snaps) != 0 {
		t.Fatalf("snapshots left: %v", snaps)
	}
}

// A removed container's directory is kept for the next one, holding
// nothing of the old container's: not its output, not its exit code, not
// the ownership of its id range.
func TestSpareDirectoriesKeepNothingOfTheirContainer(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	first := run(t, a, ContainerSpec{Cmd: []string{"sh", "-c", "echo secret; echo err >&2; exit 3"}})
	if code, err := a.Wait(ctxT(t), first); err != nil || code != 3 {
		t.Fatalf("first: exit %d, %v", code, err)
	}
	if err := a.Remove(ctxT(t), first, false); err != nil {
		t.Fatal(err)
	}
	spare := filepath.Join(a.cfg.Root, "containers", ".spare", first)
	var files []string
	filepath.WalkDir(spare, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(spare, p)
		if fi, _ := d.Info(); d.Type().IsRegular() {
			files = append(files, rel)
			if fi.Size() != 0 {
				t.Errorf("spare file %s keeps %d bytes", rel, fi.Size())
			}
		}
		return nil
	})
	if len(files) == 0 {
		t.Fatalf("no spare directory at %s", spare)
	}
	// The next container takes the spare: its log and exit code are its
	// own, and its files belong to its id range.
	second := run(t, a, ContainerSpec{Cmd: []string{"sh", "-c", "echo mine"}})
	if _, err := os.Stat(spare); !os.IsNotExist(err) {
		t.Fatalf("the spare was not taken: %v", err)
	}
	if code, err := a.Wait(ctxT(t), second); err != nil || code != 0 {
		t.Fatalf("second: exit %d, %v", code, err)
	}
	out, errOut := logsOf(t, a, second, LogOptions{Tail: -1})
	if out != "mine\n" || errOut != "" {
		t.Fatalf("second's logs: %q %q", out, errOut)
	}
	c, _ := a.Inspect(second)
	for _, f := range []string{"", logFile, "exit"} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(a.logDir(second), f), &st); err != nil || st.Uid != c.IDs.Base {
			t.Errorf("log/%s: owner %d (%v), want the container's root %d", f, st.Uid, err, c.IDs.Base)
		}
	}
}

// The ContainerSpec's process fields reach the workload.
func TestSpecFieldsReachTheWorkload(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	ctx := ctxT(t)
	id := run(t, a, ContainerSpec{
		Entrypoint: []string{"sh", "-c"},
		Cmd:        []string{`echo "$GREETING $(pwd) $(hostname)"; touch /x 2>/dev/null || echo read-only; [ $$ -ne 1 ] && cat /proc/1/comm`},
		Env:        []string{"GREETING=hi"}, Workdir: "/tmp", ReadOnly: true, Name: "fields",
		Labels: map[string]string{"app": "t"},
	})
	if code, _ := a.Wait(ctx, id); code != 0 {
		t.Fatalf("exit %d", code)
	}
	out, _ := logsOf(t, a, "fields", LogOptions{Tail: -1})
	want := "hi /tmp " + id[:12] + "\nread-only\n.berth-init\n"
	if out != want {
		t.Fatalf("output %q, want %q", out, want)
	}
	if c, _ := a.Inspect("fields"); c.Spec.Labels["app"] != "t" {
		t.Fatalf("labels: %v", c.Spec.Labels)
	}
	if _, err := a.Run(ctx, ContainerSpec{Image: "busybox", Name: "fields", Cmd: []string{"true"}}); err == nil {
		t.Fatal("a second container took the name")
	}
	// --init=false: the workload is PID 1.
	id2 := run(t, a, ContainerSpec{NoInit: true, Cmd: []string{"sh", "-c", "echo $$; sleep 1000"}})
	waitFor(t, "output", func() bool { out, _ := logsOf(t, a, id2, LogOptions{Tail: -1}); return out == "1\n" })
	if err := a.Kill(ctx, id2, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code, _ := a.Wait(ctx, id2); code != 137 {
		t.Fatalf("killed without init: exit %d", code)
	}
}

// An agent killed outright (SIGKILL, no Close) leaves its container
// running: the next agent adopts it and still gets its output and exit.
func TestContainerOutlivesAKilledAgent(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), envHelper+"="+e.dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var line [33]byte
	if _, err := io.ReadFull(out, line[:]); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper agent: %v %s", err, stderr.String())
	}
	id := strings.TrimSpace(string(line[:]))
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	a := e.agent(t)
	c, err := a.Inspect(id)
	if err != nil {
		t.Fatal(err)
	}
	if c.State.Status != StatusRunning || syscall.Kill(c.State.Pid, 0) != nil {
		t.Fatalf("container after its agent was killed: %+v", c.State)
	}
	waitFor(t, "before", func() bool { o, _ := logsOf(t, a, id, LogOptions{Tail: -1}); return strings.HasPrefix(o, "before\n") })
	// The workload lingers after it sees the file: its exit ends the pid
	// namespace, which would kill a touch that has not quite exited.
	if _, code := execOut(t, a, id, ExecSpec{Args: []string{"touch", "/tmp/go"}}); code != 0 {
		t.Fatalf("exec touch: %d", code)
	}
	if code, _ := a.Wait(ctx, id); code != 5 {
		t.Fatalf("exit %d, want 5", code)
	}
	if o, _ := logsOf(t, a, id, LogOptions{Tail: -1}); o != "before\nafter\n" {
		t.Fatalf("logs across the agent's death: %q", o)
	}
}

// A stop sent the moment a container has started reaches its workload:
// berth-init may still be replacing the runtime's init then, and a
// namespace's init discards a signal it has no handler for. The exit code
// tells: 143 is the workload ending on SIGTERM, 137 the kill after the
// timeout.
func TestStopRightAfterRunReachesTheWorkload(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	a := e.agent(t)
	for range 3 {
		id, err := a.Run(ctx, ContainerSpec{Image: "busybox", Cmd: []string{"sleep", "1000"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Stop(ctx, id, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		c, err := a.Inspect(id)
		if err != nil {
			t.Fatal(err)
		}
		if c.State.ExitCode != 143 {
			t.Fatalf("stop right after run: exit %d, want 143 (the workload's SIGTERM)", c.State.ExitCode)
		}
		if err := a.Remove(ctx, id, true); err != nil {
			t.Fatal(err)
		}
	}
}

func TestInitReady(t *testing.T) {
	for status, want := range map[string]bool{
		"Name:\t.berth-init\nSigBlk:\tfffffffffffbfeff\nSigIgn:\t0000000000001000\n": true,
		"Name:\t.berth-init\nSigBlk:\t0000000000000000\n":                            false, // just exec'd
		"Name:\tberth-runtime\nSigBlk:\tfffffffffffbfeff\n":                          false, // the runtime's init, blocking for a moment
		"Name:\t.berth-init\nSigBlk:\t0000000000004000\n":                            true,  // SIGTERM alone
		"Name:\t.berth-init\n": false,
	} {
		if got := initReady(status); got != want {
			t.Errorf("%q: %v, want %v", status, got, want)
		}
	}
}

// Every container, network none included, has its loopback up: the
// runtime's init brings it up in every new network namespace, as runc does.
func TestLoopbackIsUp(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	id := run(t, a, ContainerSpec{Cmd: []string{"cat", "/sys/class/net/lo/flags"}})
	if code, err := a.Wait(ctxT(t), id); err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
	out, _ := logsOf(t, a, id, LogOptions{Tail: -1})
	flags, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(out, "0x")), 16, 32)
	if err != nil || flags&unix.IFF_UP == 0 {
		t.Fatalf("lo's flags %q: not up", out)
	}
}

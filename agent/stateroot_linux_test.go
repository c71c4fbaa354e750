package agent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/runtime"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a fresh tmpfs at dir, as /run is on a systemd host
// (nosuid, nodev, noexec), and unmounts it, with whatever is still
// mounted below it, when the test ends.
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755"); err != nil {
		t.Fatalf("mount tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = unmountAll(dir) })
}

// openAgent opens an agent on cfg; its containers are removed and it is
// closed when the test ends.
func openAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	a, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range a.List() {
			if err := a.Remove(context.Background(), c.ID, true); err != nil {
				t.Errorf("remove %s: %v", c.ID, err)
			}
		}
		a.Close()
		removeCgroupParent(a.cgroups)
	})
	return a
}

// nativeIn makes a runtime whose state is in dir; what containers it still
// has are deleted when the test ends. Its init is the test binary, run
// where it is, as berth up runs berth-runtime: not a copy in dir, which
// may be noexec.
func nativeIn(t *testing.T, dir string) *runtime.Native {
	t.Helper()
	rt, err := runtime.NewNative(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rt.InitPath, err = os.Executable(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		list, _ := rt.List(context.Background())
		for _, s := range list {
			_ = rt.Delete(context.Background(), s.ID, true)
		}
		_ = rt.ReleaseExecutables()
	})
	return rt
}

func TestMountPointsLiveInTheStateRootAndGoWithTheContainer(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	root, state := filepath.Join(e.dir, "agent"), filepath.Join(e.dir, "state")
	mountTmpfs(t, state)
	a := openAgent(t, Config{Root: root, StateRoot: state, Images: e.images, Runtime: e.rt, InitPath: e.init})
	id := run(t, a, ContainerSpec{Mounts: []Mount{{Type: "volume", Source: "data", Target: "/data"}},
		Cmd: []string{"sh", "-c", "echo kept > /data/f; exec sleep 1000"}})

	sd := filepath.Join(state, "containers", id)
	for _, p := range []string{"bundle/rootfs", "layers/0", "mounts/0"} {
		if !isMountPoint(filepath.Join(sd, p)) {
			t.Errorf("%s is not mounted in the state root", p)
		}
	}
	if ms, _ := mountsUnder(root); len(ms) != 0 {
		t.Errorf("mounts under Root: %v", ms)
	}
	for _, f := range []string{"meta.json", "bundle/config.json", "log"} {
		if _, err := os.Stat(filepath.Join(a.dir(id), f)); err != nil {
			t.Errorf("the container's %s is not under Root: %v", f, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(a.bundle(id), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(sd, "bundle", "rootfs"); spec.Root == nil || spec.Root.Path != want {
		t.Errorf("config.json root = %+v, want path %s", spec.Root, want)
	}
	// The workload has its image and its volume.
	waitFor(t, "the workload's write to the volume", func() bool {
		_, err := os.Stat(filepath.Join(root, "volumes", "data", "_data", "f"))
		return err == nil
	})
	if out, code := execOut(t, a, id, ExecSpec{Args: []string{"sh", "-c", "cat /data/f; ls /bin/busybox"}}); code != 0 || out != "kept\n/bin/busybox\n" {
		t.Errorf("exec: exit %d: %q", code, out)
	}

	if err := a.Remove(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{a.dir(id), sd} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s left after remove: %v", d, err)
		}
	}
	if ms, _ := mountsUnder(filepath.Join(state, "containers")); len(ms) != 0 {
		t.Errorf("mounts left in the state root after remove: %v", ms)
	}
	if b, err := os.ReadFile(filepath.Join(root, "volumes", "data", "_data", "f")); err != nil || string(b) != "kept\n" {
		t.Errorf("volume after remove: %q, %v", b, err)
	}
}

// A reboot empties the state root (a tmpfs) and, with the runtime's state
// on it too, forgets every container's run: the containers, on disk,
// start again.
func TestContainersStartAgainAfterARebootEmptiedTheStateRoot(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	root, state := filepath.Join(e.dir, "agent"), filepath.Join(e.dir, "state")
	mountTmpfs(t, state)
	config := func(rt runtime.Runtime) Config {
		return Config{Root: root, StateRoot: filepath.Join(state, "agent"), Images: e.images, Runtime: rt, InitPath: e.init}
	}
	a1, err := New(ctx, config(nativeIn(t, filepath.Join(state, "runtime"))))
	if err != nil {
		t.Fatal(err)
	}
	always := RestartPolicy{Name: "always"}
	stopped, err := a1.Run(ctx, ContainerSpec{Image: "busybox", Restart: always, Mounts: []Mount{{Type: "volume", Source: "v", Target: "/v"}},
		Cmd: []string{"sh", "-c", "echo run >> /v/runs; exec sleep 1000"}})
	if err != nil {
		t.Fatal(err)
	}
	running, err := a1.Run(ctx, ContainerSpec{Image: "busybox", Restart: always, Cmd: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	// Run returns once the container is set up, maybe before its shell
	// has written: a stop sent then would end the run before it does.
	runs := filepath.Join(root, "volumes", "v", "_data", "runs")
	waitFor(t, "the first run to write to its volume", func() bool {
		b, _ := os.ReadFile(runs)
		return string(b) == "run\n"
	})
	if err := a1.Stop(ctx, stopped, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	c, _ := a1.Inspect(running)
	a1.Close()

	// The reboot: the running container dies with the host, its cgroup
	// goes, and the tmpfs comes back empty.
	if err := syscall.Kill(c.State.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the running container's init to die", func() bool { return syscall.Kill(c.State.Pid, 0) != nil })
	if cg, err := a1.cgroup(running); err == nil {
		waitFor(t, "its cgroup to go", func() bool { return cg.Destroy() == nil })
	}
	if err := unmountAll(state); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, state)

	a2 := openAgent(t, config(nativeIn(t, filepath.Join(state, "runtime"))))
	// Its runtime state gone, the running one is taken for exited, and
	// its policy restarts it.
	waitFor(t, "the container that was running to restart", func() bool {
		c, err := a2.Inspect(running)
		return err == nil && c.State.Status == StatusRunning && c.State.RestartCount == 1
	})
	// The stopped one stays stopped until started.
	if c, err := a2.Inspect(stopped); err != nil || c.State.Status != StatusExited {
		t.Fatalf("stopped container after the reboot: %+v %v", c.State, err)
	}
	if err := a2.Start(ctx, stopped); err != nil {
		t.Fatalf("start after the reboot: %v", err)
	}
	waitFor(t, "the second run to write to its volume", func() bool {
		b, _ := os.ReadFile(runs)
		return string(b) == "run\nrun\n"
	})
	for _, id := range []string{running, stopped} {
		if p := a2.rootfs(id); !isMountPoint(p) || !strings.HasPrefix(p, state+"/") {
			t.Errorf("rootfs of %s: %s, mounted %v, want mounted in %s", id, p, isMountPoint(p), state)
		}
		if out, code := execOut(t, a2, id, ExecSpec{Args: []string{"ls", "/bin/busybox"}}); code != 0 {
			t.Errorf("exec in %s after the reboot: exit %d: %s", id, code, out)
		}
	}
}

// Reconcile removes what is left in the state root of a container that is
// gone, unmounting first: nothing reachable through a mount is deleted.
func TestReconcileUnmountsAndRemovesStateOfContainersThatAreGone(t *testing.T) {
	e := newEnv(t)
	root, state := filepath.Join(e.dir, "agent"), filepath.Join(e.dir, "state")
	mountTmpfs(t, state)
	src := filepath.Join(e.dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "keep"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ghost := filepath.Join(state, "containers", "0123456789abcdef0123456789abcdef")
	for _, p := range []string{"bundle/rootfs", "mounts/0"} {
		mp := filepath.Join(ghost, p)
		if err := os.MkdirAll(mp, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount(src, mp, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
	}
	openAgent(t, Config{Root: root, StateRoot: state, Images: e.images, Runtime: e.rt, InitPath: e.init})
	if _, err := os.Stat(ghost); !os.IsNotExist(err) {
		t.Errorf("state of a container that is gone left: %v", err)
	}
	if ms, _ := mountsUnder(filepath.Join(state, "containers")); len(ms) != 0 {
		t.Errorf("mounts left: %v", ms)
	}
	if _, err := os.Stat(filepath.Join(src, "keep")); err != nil {
		t.Errorf("a file seen through a leftover mount was removed: %v", err)
	}
}

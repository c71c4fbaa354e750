// Package agent_bench times the node agent against Podman on the same
// busybox image in one run, and measures what idle containers cost the host:
//
//	sudo go test -run '^$' -bench . -benchtime 20x ./bench/agent
//	sudo BERTH_BENCH_IDLE=300 go test -run '^$' -bench Idle -benchtime 1x ./bench/agent
//
// BenchmarkRunTrue is `busybox true` from nothing to removed: Berth's Run,
// Wait and Remove against `podman run --rm --network none` with Podman's
// own --root and --runroot in a temporary directory.
package agent_bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/image/imagetest"
	"github.com/berth-dev/berth/internal/busybox"
	"github.com/berth-dev/berth/internal/statedir"
	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/runtime"
	"github.com/berth-dev/berth/runtime/cgroups"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestMain(m *testing.M) {
	if runtime.IsInit() {
		runtime.InitMain()
	}
	os.Exit(m.Run())
}

// idleCount is how many containers BenchmarkIdleContainers starts:
// $BERTH_BENCH_IDLE, else 100.
func idleCount() int {
	if n, err := strconv.Atoi(os.Getenv("BERTH_BENCH_IDLE")); err == nil && n > 0 {
		return n
	}
	return 100
}

type node struct {
	dir   string
	agent *agent.Agent
	rt    *runtime.Native
}

// build returns berth-init and berth-runtime: hack/build.sh's in
// $BERTH_BIN_DIR, else built here (berth-init with glibc, as hack/build.sh
// does without musl-gcc).
func build(b *testing.B, dir string) (initPath, runtimePath string) {
	b.Helper()
	if bin := os.Getenv("BERTH_BIN_DIR"); bin != "" {
		return filepath.Join(bin, "berth-init"), filepath.Join(bin, "berth-runtime")
	}
	initPath = filepath.Join(dir, "berth-init")
	if out, err := exec.Command("gcc", "-static", "-Os", "-s", "-o", initPath, "../../cmd/berth-init/berth-init.c",
		"../../runtime/fastinit/fastinit.c").CombinedOutput(); err != nil {
		b.Fatalf("build berth-init: %v %s", err, out)
	}
	runtimePath = filepath.Join(dir, "berth-runtime")
	cmd := exec.Command("go", "build", "-tags", "netgo,osusergo", "-ldflags", "-linkmode external -extldflags -static",
		"-o", runtimePath, "github.com/berth-dev/berth/cmd/berth-runtime")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build berth-runtime: %v %s", err, out)
	}
	return initPath, runtimePath
}

// nodeParts makes what every benchmark node is built from: a directory,
// the built berth-init, an image store holding busybox, and a runtime.
func nodeParts(b *testing.B) (dir, initPath string, images *image.Store, rt *runtime.Native) {
	b.Helper()
	dir = testdir.World(b)
	initPath, rtPath := build(b, dir)
	images, err := image.Open(filepath.Join(dir, "images"), nil)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := images.Create(context.Background(), "busybox:latest", image.NewImage{
		Layers: []io.Reader{imagetest.BusyboxTar(b)},
		Config: ocispec.ImageConfig{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}},
	}); err != nil {
		b.Fatal(err)
	}
	rt, err = runtime.NewNative(filepath.Join(stateDir(b), "runtime"), nil)
	if err != nil {
		b.Fatal(err)
	}
	rt.InitPath, rt.PlanInitPath = rtPath, initPath
	if _, err := cgroups.FavorDynMods(); err != nil {
		b.Log(err)
	}
	return dir, initPath, images, rt
}

// stateDir is the benchmark's state directory, on a tmpfs under
// statedir.Base as a node's is.
func stateDir(b *testing.B) string {
	b.Helper()
	if _, err := statedir.EnsureTmpfs(statedir.Base); err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(statedir.Base, fmt.Sprintf("bench-%d", os.Getpid()))
	if err := os.MkdirAll(dir, 0o711); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newNode(b *testing.B) *node {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	if err := busybox.Available(); err != nil {
		b.Skip(err)
	}
	dir, initPath, images, rt := nodeParts(b)
	cgParent := fmt.Sprintf("/berth/bench-%d", os.Getpid())
	a, err := agent.New(context.Background(), agent.Config{Root: filepath.Join(dir, "agent"), StateRoot: filepath.Join(filepath.Dir(rt.Root), "agent"),
		Images: images, Runtime: rt, InitPath: initPath, CgroupParent: cgParent})
	if err != nil {
		b.Fatal(err)
	}
	n := &node{dir: dir, agent: a, rt: rt}
	b.Cleanup(func() {
		for _, c := range a.List() {
			_ = a.Remove(context.Background(), c.ID, true)
		}
		a.Close()
		hs, _ := filepath.Glob("/sys/fs/cgroup/*")
		for _, h := range append(hs, "/sys/fs/cgroup") {
			_ = os.Remove(filepath.Join(h, cgParent))
		}
	})
	return n
}

func podman(b *testing.B, dir string, args ...string) *exec.Cmd {
	b.Helper()
	base := []string{"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "runroot"),
		"--cgroup-manager", "cgroupfs", "--storage-driver", "overlay", "--runtime", "runc"}
	return exec.Command("podman", append(base, args...)...)
}

// podmanRunRm returns `podman run --rm --network none busybox true` in a
// store of the benchmark's own, busybox imported from tarball; nil without
// podman. (Podman needs the ulimits on this machine.)
func podmanRunRm(b *testing.B, tarball string) func() *exec.Cmd {
	b.Helper()
	if _, err := exec.LookPath("podman"); err != nil {
		b.Logf("podman not installed: %v", err)
		return nil
	}
	pdir := testdir.World(b)
	b.Cleanup(func() { _ = podman(b, pdir, "system", "reset", "-f").Run() })
	if out, err := podman(b, pdir, "import", tarball, "localhost/busybox:latest").CombinedOutput(); err != nil {
		b.Fatalf("podman import: %v %s", err, out)
	}
	return func() *exec.Cmd {
		return podman(b, pdir, "run", "--rm", "--network", "none", "--ulimit", "nofile=20000:20000",
			"--ulimit", "nproc=32768:32768", "localhost/busybox", "true")
	}
}

func BenchmarkRunTrue(b *testing.B) {
	n := newNode(b)
	ctx := context.Background()
	var berth, pod time.Duration
	b.Run("berth", func(b *testing.B) {
		start := time.Now()
		for range b.N {
			id, err := n.agent.Run(ctx, agent.ContainerSpec{Image: "busybox", Cmd: []string{"true"}})
			if err != nil {
				b.Fatal(err)
			}
			if code, err := n.agent.Wait(ctx, id); err != nil || code != 0 {
				b.Fatalf("exit %d %v", code, err)
			}
			if err := n.agent.Remove(ctx, id, false); err != nil {
				b.Fatal(err)
			}
		}
		berth = time.Since(start) / time.Duration(b.N)
	})
	rootfs := b.TempDir()
	if err := busybox.Rootfs(rootfs); err != nil {
		b.Fatal(err)
	}
	tarball := filepath.Join(b.TempDir(), "busybox.tar")
	if out, err := exec.Command("tar", "-C", rootfs, "-cf", tarball, ".").CombinedOutput(); err != nil {
		b.Fatalf("tar: %v %s", err, out)
	}
	runRm := podmanRunRm(b, tarball)
	if runRm == nil {
		return
	}
	b.Run("podman", func(b *testing.B) {
		start := time.Now()
		for range b.N {
			if out, err := runRm().CombinedOutput(); err != nil {
				b.Fatalf("podman run: %v %s", err, out)
			}
		}
		pod = time.Since(start) / time.Duration(b.N)
	})
	if berth > 0 && pod > 0 {
		fmt.Printf("run busybox true to removal: berth %v, podman %v: berth takes %.3f of podman's time (%.1fx faster)\n",
			berth.Round(time.Microsecond), pod.Round(time.Microsecond), float64(berth)/float64(pod), float64(pod)/float64(berth))
	}
}

// BenchmarkIdleContainers starts idleCount() containers running `sleep` and
// reports the time per start and what each costs the host beyond its
// workload: berth-init's proportional set size (its pages are one static
// binary's, shared by all), the agent process's growth, the container's
// cgroup memory (workload, init and the kernel memory charged to it), and
// the rise of the kernel's unreclaimable slab, page tables and stacks
// (system-wide, so other work on the machine moves it too).
func BenchmarkIdleContainers(b *testing.B) {
	n := newNode(b)
	ctx := context.Background()
	count := idleCount()
	for range b.N {
		kernBefore := kernelMem(b)
		agentBefore := pss(os.Getpid())
		start := time.Now()
		var ids []string
		for range count {
			id, err := n.agent.Run(ctx, agent.ContainerSpec{Image: "busybox", Cmd: []string{"sleep", "1000000"}})
			if err != nil {
				b.Fatal(err)
			}
			ids = append(ids, id)
		}
		elapsed := time.Since(start)
		time.Sleep(2 * time.Second)
		kernAfter := kernelMem(b)
		agentAfter := pss(os.Getpid())
		var initPSS, initRSS, workPSS, cgroupMem int64
		for _, id := range ids {
			c, err := n.agent.Inspect(id)
			if err != nil {
				b.Fatal(err)
			}
			st, err := n.agent.Stats(id)
			if err != nil {
				b.Fatal(err)
			}
			cgroupMem += int64(st.MemoryBytes)
			initPSS += pss(c.State.Pid)
			initRSS += rss(c.State.Pid)
			for _, child := range children(c.State.Pid) {
				workPSS += pss(child)
			}
		}
		k := int64(count)
		b.ReportMetric(float64(elapsed.Microseconds())/float64(k)/1000, "ms/start")
		b.ReportMetric(float64(initPSS/k)/1024, "KiB-init-PSS/ctr")
		b.ReportMetric(float64(cgroupMem/k)/1024, "KiB-cgroup/ctr")
		fmt.Printf("%d idle containers started in %v (%.1f ms each)\n", count, elapsed.Round(time.Millisecond), float64(elapsed.Microseconds())/float64(k)/1000)
		fmt.Printf("per container: berth-init PSS %d KiB (RSS %d KiB, mostly shared); workload PSS %d KiB; cgroup memory (all of it, kernel included) %d KiB; kernel slab+page tables+stacks +%d KiB (system-wide); agent PSS +%d KiB\n",
			initPSS/k/1024, initRSS/k/1024, workPSS/k/1024, cgroupMem/k/1024, (kernAfter-kernBefore)/k/1024, (agentAfter-agentBefore)/k/1024)
		b.StopTimer()
		for _, id := range ids {
			if err := n.agent.Remove(ctx, id, true); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
	}
}

// kernelMem is the kernel memory that containers' namespaces, mounts,
// cgroups and processes take and that is never reclaimed while they live.
func kernelMem(b *testing.B) int64 {
	raw, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		b.Fatal(err)
	}
	var sum int64
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "SUnreclaim:", "PageTables:", "KernelStack:":
			sum += v * 1024
		}
	}
	return sum
}

// pss and rss read /proc/pid/smaps_rollup, in bytes.
func pss(pid int) int64 { return rollup(pid, "Pss:") }
func rss(pid int) int64 { return rollup(pid, "Rss:") }

func rollup(pid int, field string) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, l := range bytes.Split(raw, []byte("\n")) {
		f := strings.Fields(string(l))
		if len(f) >= 2 && f[0] == field {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v * 1024
		}
	}
	return 0
}

func children(pid int) []int {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(raw)) {
		if v, err := strconv.Atoi(f); err == nil {
			out = append(out, v)
		}
	}
	return out
}

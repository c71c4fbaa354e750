// Package runtime_bench times a container's whole lifecycle with Berth's
// runtime, runc and crun in one run, on the same busybox bundle:
//
//	sudo go test -run '^$' -bench Lifecycle -benchtime 40x ./bench/runtime
//
// crun 1.8 refuses hybrid cgroup hosts, so the benchmark re-executes itself
// in a private mount namespace without the cgroup2 mount, and runs every
// runtime there alike.
package runtime_bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/busybox"
	"github.com/berth-dev/berth/runtime"
	"github.com/berth-dev/berth/runtime/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

const envInner = "BERTH_BENCH_MNTNS"

func TestMain(m *testing.M) {
	if os.Getenv(envInner) == "" && os.Geteuid() == 0 && benchRequested() {
		// Re-run this binary in a private mount namespace without the
		// cgroup2 mount, where crun accepts the host.
		args := append([]string{"-m", "--propagation", "private", "--", "sh", "-c",
			`umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"`, "sh", "/proc/self/exe"}, os.Args[1:]...)
		cmd := exec.Command("unshare", args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(), envInner+"=1")
		// /proc/self/exe in the sh is sh itself: pass our own path instead.
		self, _ := os.Executable()
		for i, a := range cmd.Args {
			if a == "/proc/self/exe" {
				cmd.Args[i] = self
			}
		}
		if err := cmd.Run(); err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				os.Exit(ee.ExitCode())
			}
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func benchRequested() bool {
	for _, a := range os.Args {
		if strings.HasPrefix(a, "-test.bench") {
			return true
		}
	}
	return false
}

// berthRuntime finds berth-runtime: BERTH_BIN_DIR (set by test.sh), else a
// fresh build.
func berthRuntime(b *testing.B) string {
	if d := os.Getenv("BERTH_BIN_DIR"); d != "" {
		p := filepath.Join(d, "berth-runtime")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	out := filepath.Join(b.TempDir(), "berth-runtime")
	cmd := exec.Command("go", "build", "-o", out, "github.com/berth-dev/berth/cmd/berth-runtime")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("build berth-runtime: %v", err)
	}
	return out
}

// benchBundle is the bundle every runtime runs: /bin/true in busybox, with
// pid, net, ipc, uts, mount and cgroup namespaces, memory, CPU and pids
// limits, and Docker's default capabilities.
func benchBundle(b *testing.B, seccompProfile bool) string {
	dir := b.TempDir()
	if err := busybox.Rootfs(filepath.Join(dir, "rootfs")); err != nil {
		b.Skip(err)
	}
	s := runtime.DefaultSpec()
	// crun 1.8 accepts only 1.0.x specs; nothing here needs a later one.
	s.Version = "1.0.2"
	s.Process.Terminal = false
	s.Process.Args = []string{"/bin/true"}
	mem, shares, quota, period, pids := int64(256<<20), uint64(512), int64(50000), uint64(100000), int64(100)
	s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &mem}
	s.Linux.Resources.CPU = &specs.LinuxCPU{Shares: &shares, Quota: &quota, Period: &period}
	s.Linux.Resources.Pids = &specs.LinuxPids{Limit: &pids}
	s.Linux.CgroupsPath = "/berth-bench/c"
	if seccompProfile {
		s.Linux.Seccomp = seccomp.DefaultProfile()
	}
	if err := runtime.WriteSpec(dir, s); err != nil {
		b.Fatal(err)
	}
	return dir
}

type contender struct {
	name       string
	bin        string
	root       string
	measureRSS bool // run each command under GNU time, in a pass of its own
}

// sample is one lifecycle: wall time and the largest resident set of any
// runtime process the harness started.
type sample struct {
	total  time.Duration
	phases [4]time.Duration // create, start, wait, delete (lifecycle only)
	maxRSS int64            // KiB
}

func (c contender) cmd(bundle string, args ...string) (int64, error) {
	full := append([]string{"--root", c.root}, args...)
	cmd := exec.Command(c.bin, full...)
	var rssFile string
	if c.measureRSS {
		// The kernel carries a process's peak RSS across exec, and Go
		// starts children with a vfork of this (large) test process, so
		// the child's own rusage would report our size. GNU time forks
		// the runtime from its own small image and reports its peak.
		rssFile = filepath.Join(c.root, "rss")
		cmd = exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", rssFile, c.bin}, full...)...)
	}
	cmd.Dir = bundle
	// Output goes to a file, not a pipe: a created container inherits the
	// runtime's stdio, and waiting for a pipe it holds would never end.
	out, err := os.CreateTemp(c.root, "out-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		msg, _ := os.ReadFile(out.Name())
		return 0, fmt.Errorf("%s %s: %v: %s", c.name, strings.Join(args, " "), err, msg)
	}
	if rssFile == "" {
		return 0, nil
	}
	b, err := os.ReadFile(rssFile)
	if err != nil {
		return 0, fmt.Errorf("peak RSS of %s %s: %w", c.name, args[0], err)
	}
	kib, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("peak RSS of %s %s: %q", c.name, args[0], b)
	}
	return kib, nil
}

// lifecycle: create, start, wait for the process to exit (a pidfd on the
// init, so waiting costs no runtime invocation), delete.
func (c contender) lifecycle(bundle, id string) (sample, error) {
	pidFile := filepath.Join(c.root, id+".pid")
	start := time.Now()
	var s sample
	mark := start
	phase := func(i int) {
		now := time.Now()
		s.phases[i] = now.Sub(mark)
		mark = now
	}
	kib, err := c.cmd(bundle, "create", "--bundle", bundle, "--pid-file", pidFile, id)
	phase(0)
	s.maxRSS = max(s.maxRSS, kib)
	if err != nil {
		return s, err
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return s, err
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return s, fmt.Errorf("pidfd of %s init: %w", c.name, err)
	}
	defer unix.Close(pfd)
	mark = time.Now() // reading the pid file is the harness's time
	kib, err = c.cmd(bundle, "start", id)
	phase(1)
	s.maxRSS = max(s.maxRSS, kib)
	if err != nil {
		return s, err
	}
	for {
		_, err := unix.Poll([]unix.PollFd{{Fd: int32(pfd), Events: unix.POLLIN}}, 10000)
		if err == nil {
			break
		}
		if err != unix.EINTR { // Go's preemption signals interrupt it
			return s, err
		}
	}
	phase(2)
	kib, err = c.cmd(bundle, "delete", id)
	phase(3)
	s.maxRSS = max(s.maxRSS, kib)
	s.total = time.Since(start)
	os.Remove(pidFile)
	return s, err
}

// run: one foreground `run`, which creates, starts, waits and deletes.
func (c contender) run(bundle, id string) (sample, error) {
	start := time.Now()
	kib, err := c.cmd(bundle, "run", "--bundle", bundle, id)
	s := sample{total: time.Since(start), maxRSS: kib}
	if err != nil {
		return s, err
	}
	// runc and crun delete on exit too; make sure nothing is left.
	_, _ = c.cmd(bundle, "delete", "--force", id)
	return s, nil
}

func contenders(b *testing.B) []contender {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	var cs []contender
	for _, c := range []contender{{name: "berth", bin: berthRuntime(b)}, {name: "crun", bin: "crun"}, {name: "runc", bin: "runc"}} {
		p, err := exec.LookPath(c.bin)
		if err != nil {
			b.Logf("%s not installed: left out", c.name)
			continue
		}
		c.bin = p
		c.root = filepath.Join(b.TempDir(), c.name)
		if err := os.MkdirAll(c.root, 0o711); err != nil {
			b.Fatal(err)
		}
		cs = append(cs, c)
	}
	b.Cleanup(func() {
		for _, c := range cs {
			if c.name == "berth" {
				// Unmount the read-only executable copy under its root.
				_ = filepath.Walk(filepath.Join(c.root, ".exe"), func(p string, fi os.FileInfo, err error) error {
					if err == nil && !fi.IsDir() {
						_ = unix.Unmount(p, unix.MNT_DETACH)
					}
					return nil
				})
			}
		}
	})
	return cs
}

func compare(b *testing.B, phase string, seccompProfile bool, fn func(contender, string, string) (sample, error)) {
	bundle := benchBundle(b, seccompProfile)
	cs := contenders(b)
	samples := map[string][]sample{}
	// Warm up each (page cache, the executable copy, seccomp caches).
	for _, c := range cs {
		if _, err := fn(c, bundle, "warm"); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Interleave so drift in the machine's speed hits all alike.
		for _, c := range cs {
			s, err := fn(c, bundle, fmt.Sprintf("c%d", i))
			if err != nil {
				b.Fatal(err)
			}
			samples[c.name] = append(samples[c.name], s)
		}
	}
	b.StopTimer()
	// Peak memory in a pass of its own: GNU time's fork and exec would
	// add to every timing above.
	peaks := map[string]int64{}
	for i := 0; i < 3; i++ {
		for _, c := range cs {
			c.measureRSS = true
			s, err := fn(c, bundle, fmt.Sprintf("rss%d", i))
			if err != nil {
				b.Fatal(err)
			}
			peaks[c.name] = max(peaks[c.name], s.maxRSS)
		}
	}
	med := map[string]float64{}
	var lines []string
	for _, c := range cs {
		ss := samples[c.name]
		ms := make([]float64, len(ss))
		peak := peaks[c.name]
		for i, s := range ss {
			ms[i] = float64(s.total.Microseconds()) / 1000
		}
		sort.Float64s(ms)
		med[c.name] = ms[len(ms)/2]
		var split []string
		for p, name := range []string{"create", "start", "wait", "delete"} {
			pm := make([]float64, len(ss))
			for i, s := range ss {
				pm[i] = float64(s.phases[p].Microseconds()) / 1000
			}
			sort.Float64s(pm)
			if pm[len(pm)-1] > 0 {
				split = append(split, fmt.Sprintf("%s %.1f", name, pm[len(pm)/2]))
			}
		}
		b.ReportMetric(med[c.name], c.name+"-ms")
		b.ReportMetric(float64(peak)/1024, c.name+"-peakMiB")
		lines = append(lines, fmt.Sprintf("%-6s median %7.2f ms  min %7.2f  max %7.2f  peak RSS of a runtime process %5.1f MiB  %s", c.name, med[c.name], ms[0], ms[len(ms)-1], float64(peak)/1024, strings.Join(split, ", ")))
	}
	if med["crun"] > 0 {
		b.ReportMetric(med["berth"]/med["crun"], "berth/crun")
		lines = append(lines, fmt.Sprintf("berth/crun %.2f", med["berth"]/med["crun"]))
	}
	if med["runc"] > 0 {
		b.ReportMetric(med["berth"]/med["runc"], "berth/runc")
		lines = append(lines, fmt.Sprintf("berth/runc %.2f", med["berth"]/med["runc"]))
	}
	fmt.Printf("\n%s of /bin/true, %d rounds:\n  %s\n", phase, b.N, strings.Join(lines, "\n  "))
}

func BenchmarkLifecycle(b *testing.B) {
	compare(b, "create+start+wait+delete", false, contender.lifecycle)
}

// BenchmarkLifecycleSeccomp adds Docker's default seccomp profile: crun and
// runc compile it at every start, Berth once per distinct profile.
func BenchmarkLifecycleSeccomp(b *testing.B) {
	compare(b, "create+start+wait+delete with the default seccomp profile", true, contender.lifecycle)
}

func BenchmarkRun(b *testing.B) {
	compare(b, "run (foreground)", false, contender.run)
}

// BenchmarkUnshareFloor is the kernel's floor for the same namespaces: a
// bare unshare(1) running /bin/true.
func BenchmarkUnshareFloor(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	var ms []float64
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if out, err := exec.Command("unshare", "-m", "-u", "-i", "-n", "-p", "-f", "-C", "/bin/true").CombinedOutput(); err != nil {
			b.Fatalf("unshare: %v %s", err, out)
		}
		ms = append(ms, float64(time.Since(start).Microseconds())/1000)
	}
	sort.Float64s(ms)
	b.ReportMetric(ms[len(ms)/2], "unshare-ms")
}

package agent_bench

// BenchmarkUpRunRm and BenchmarkUpIdle measure `berth up` end to end, the
// way a user drives it: through its API (the CLI or the Go client), with
// scheduling, snapshot, network, runtime, exit and clean-up. berth up
// runs in a network and mount namespace of the benchmark's own, so its
// routes, nftables policy and mounts never touch the machine's.
//
//	sudo go test -run '^$' -bench UpRunRm -benchtime 20x ./bench/agent
//	sudo BERTH_BENCH_UP_IDLE=1000 go test -run '^$' -bench UpIdle -benchtime 1x -timeout 2h ./bench/agent
//
// $BERTH_BIN_DIR (as test.sh sets it) names built berth, berth-init and
// berth-runtime; without it they are built first. $BERTH_BENCH_UP_LOG
// names a file to keep berth up's log in.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/image/imagetest"
	"github.com/berth-dev/berth/internal/busybox"
	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/internal/uptest"
	"github.com/berth-dev/berth/network/netnstest"
)

// upIdleCount is how many containers BenchmarkUpIdle starts:
// $BERTH_BENCH_UP_IDLE, else 1000.
func upIdleCount() int {
	if n, err := strconv.Atoi(os.Getenv("BERTH_BENCH_UP_IDLE")); err == nil && n > 0 {
		return n
	}
	return 1000
}

// upNode is a running `berth up` with busybox imported.
type upNode struct {
	dir, data, berth string
	ns               netnstest.NS
	up               *exec.Cmd
	addr, secret     string
	admin            *api.Client
}

func startUpNode(b *testing.B) *upNode {
	b.Helper()
	netnstest.RequireRoot(b, "nsenter", "tar")
	if err := busybox.Available(); err != nil {
		b.Skip(err)
	}
	n := &upNode{dir: testdir.World(b)}
	n.data = filepath.Join(n.dir, "data")
	bin := os.Getenv("BERTH_BIN_DIR")
	if bin == "" {
		bin = filepath.Join(n.dir, "bin")
		if err := os.Mkdir(bin, 0o755); err != nil {
			b.Fatal(err)
		}
		build(b, bin)
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "berth"), "github.com/berth-dev/berth/cmd/berth").CombinedOutput(); err != nil {
			b.Fatalf("build berth: %v %s", err, out)
		}
	}
	n.berth = filepath.Join(bin, "berth")
	tarball := filepath.Join(n.dir, "busybox.tar")
	if err := os.WriteFile(tarball, imagetest.BusyboxTar(b).Bytes(), 0o600); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command(n.berth, "image", "--root", n.data, "import", tarball, "busybox:latest", "-c", "ENV PATH=/bin").CombinedOutput(); err != nil {
		b.Fatalf("import busybox: %v %s", err, out)
	}

	n.ns = netnstest.New(b, "bu"+netnstest.Unique())
	// The host's address, which it reaches its containers from.
	n.ns.Run(b, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
	n.ns.Run(b, "ip", "addr", "add", "10.214.0.1/24", "dev", "uplink0")
	n.ns.Run(b, "ip", "link", "set", "uplink0", "up")
	n.ns.Run(b, "ip", "link", "set", "uplink1", "up")
	holder := exec.Command("nsenter", "--net="+n.ns.Path, "--", "sleep", "1000000")
	holder.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if err := holder.Start(); err != nil {
		b.Fatal(err)
	}
	// Until nsenter has switched, the holder is in the machine's network
	// namespace, and a berth up joining it then would run there.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		err := uptest.SameNetns(holder.Process.Pid, n.ns.Path)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			holder.Process.Kill()
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	b.Cleanup(func() { uptest.KillContainers(filepath.Join(n.data, "agent")) })

	n.up = exec.Command("nsenter", "--target", strconv.Itoa(holder.Process.Pid), "--mount", "--net", "--",
		n.berth, "up", "--data-dir", n.data, "--listen", "unix://"+filepath.Join(n.dir, "api.sock"), "--node-name", "bench")
	logf, err := os.Create(filepath.Join(n.dir, "up.log"))
	if err != nil {
		b.Fatal(err)
	}
	n.up.Stderr = logf
	stdout, err := n.up.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := n.up.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		n.up.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { n.up.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			n.up.Process.Kill()
			<-done
		}
		logf.Close()
		// $BERTH_BENCH_UP_LOG keeps berth up's log for a look at where the
		// time goes.
		if keep := os.Getenv("BERTH_BENCH_UP_LOG"); keep != "" {
			if raw, err := os.ReadFile(logf.Name()); err == nil {
				os.WriteFile(keep, raw, 0o644)
			}
		}
	})
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "API: ") {
		log, _ := os.ReadFile(logf.Name())
		b.Fatalf("berth up did not start: %q\n%s", sc.Text(), log)
	}
	n.addr = strings.TrimPrefix(sc.Text(), "API: ")
	go func() {
		for sc.Scan() {
		}
	}()
	tok, err := os.ReadFile(filepath.Join(n.data, "admin-token"))
	if err != nil {
		b.Fatal(err)
	}
	n.secret = strings.TrimSpace(string(tok))
	// The API is on a unix socket, as a local engine's is (Docker's
	// docker.sock): the CLI reaches it from here without entering berth
	// up's network namespace.
	n.admin = api.NewClient(n.addr, n.secret, nil)
	if err := n.admin.Create(context.Background(), &api.Tenant{Meta: api.Meta{Name: "bench"}}); err != nil {
		b.Fatal(err)
	}
	return n
}

// containers counts the containers on the node: the agent's container
// directories, but for .spare, which holds emptied ones kept for reuse.
func (n *upNode) containers(b *testing.B) int {
	b.Helper()
	ents, err := os.ReadDir(filepath.Join(n.data, "agent", "containers"))
	if err != nil {
		b.Fatal(err)
	}
	live := 0
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			live++
		}
	}
	return live
}

// quiesce waits until the node has removed every container of the runs
// before, and a moment more for the kernel's own clean-up (network
// namespaces and devices go in the background), so that one variant's
// removals are not timed in the next one's runs.
func (n *upNode) quiesce(b *testing.B) {
	b.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		busy := n.containers(b)
		if busy == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d containers still on the node", busy)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
}

// cli is berth's command line, as tenant bench.
func (n *upNode) cli(args ...string) *exec.Cmd {
	cmd := exec.Command(n.berth, args...)
	cmd.Env = append(os.Environ(), "BERTH_SERVER="+n.addr, "BERTH_TOKEN="+n.secret, "BERTH_TENANT=bench")
	return cmd
}

// runRmAPI is `berth run --rm busybox true` through the Go client: create
// an auto-removed instance, follow it until it is gone, and check that it
// exited 0.
func (n *upNode) runRmAPI(ctx context.Context, b *testing.B, i int, network string) {
	in := &api.Instance{Meta: api.Meta{Name: fmt.Sprintf("api-%s-%d", network, i), Tenant: "bench"}, Spec: api.InstanceSpec{
		AutoRemove: true, Desired: api.DesiredRunning,
		Template: api.Template{Image: "busybox", Command: []string{"true"}, Restart: api.RestartNever, Network: network}}}
	if err := n.admin.Create(ctx, in); err != nil {
		b.Fatal(err)
	}
	w := n.admin.Watch(ctx, api.KindInstance, "bench", "", in.ResourceVersion)
	defer w.Close()
	last := in.Status
	for {
		ev, err := w.Next()
		if err != nil {
			b.Fatalf("watch %s: %v (last status %+v)", in.Name, err, last)
		}
		got := &api.Instance{}
		if err := ev.Into(got); err != nil {
			b.Fatal(err)
		}
		if got.Name != in.Name {
			continue
		}
		if ev.Type == api.Deleted {
			break
		}
		last = got.Status
	}
	if last.Phase != api.PhaseExited || last.ExitCode != 0 {
		b.Fatalf("%s: last status %+v, want exited 0", in.Name, last)
	}
}

// BenchmarkUpRunRm is `berth run --rm busybox true` against `podman run
// --rm --network none busybox true` and, where a Docker engine can run,
// `docker run --rm --network none busybox true`, in the same run: berth through its CLI
// (with its network, and with --network none) and through the Go client,
// from the request to the container's removal.
func BenchmarkUpRunRm(b *testing.B) {
	n := startUpNode(b)
	ctx := context.Background()
	times := map[string]time.Duration{}
	for _, network := range []string{"", "none"} {
		name := "berth-cli-network"
		args := []string{"run", "--rm", "busybox", "true"}
		if network == "none" {
			name = "berth-cli-none"
			args = []string{"run", "--rm", "--network", "none", "busybox", "true"}
		}
		if err := n.cli("run", "--help").Run(); err != nil {
			b.Logf("no berth run yet: %v", err)
			break
		}
		n.quiesce(b)
		b.Run(name, func(b *testing.B) {
			start := time.Now()
			for range b.N {
				if out, err := n.cli(args...).CombinedOutput(); err != nil {
					b.Fatalf("berth %s: %v %s", strings.Join(args, " "), err, out)
				}
			}
			times[name] = time.Since(start) / time.Duration(b.N)
		})
	}
	for _, network := range []string{"", "none"} {
		name := "berth-api-network"
		if network == "none" {
			name = "berth-api-none"
		}
		n.quiesce(b)
		b.Run(name, func(b *testing.B) {
			start := time.Now()
			for i := range b.N {
				n.runRmAPI(ctx, b, i, network)
			}
			times[name] = time.Since(start) / time.Duration(b.N)
		})
	}
	tarball := filepath.Join(n.dir, "busybox.tar")
	if runRm := podmanRunRm(b, tarball); runRm != nil {
		n.quiesce(b)
		b.Run("podman", func(b *testing.B) {
			start := time.Now()
			for range b.N {
				if out, err := runRm().CombinedOutput(); err != nil {
					b.Fatalf("podman run: %v %s", err, out)
				}
			}
			times["podman"] = time.Since(start) / time.Duration(b.N)
		})
	}
	// Docker's engine, where one can run (Debian's docker.io), started
	// after berth up's runs so that it costs them nothing.
	if d, err := startDocker(b, tarball); err != nil {
		b.Logf("no docker engine: %v", err)
	} else {
		n.quiesce(b)
		b.Run("docker", func(b *testing.B) {
			start := time.Now()
			for range b.N {
				if out, err := d.cmd("run", "--rm", "--network", "none", "busybox", "true").CombinedOutput(); err != nil {
					b.Fatalf("docker run: %v %s", err, out)
				}
			}
			times["docker"] = time.Since(start) / time.Duration(b.N)
		})
	}
	for _, other := range []string{"podman", "docker"} {
		base, ok := times[other]
		if !ok {
			continue
		}
		for _, k := range []string{"berth-cli-network", "berth-cli-none", "berth-api-network", "berth-api-none"} {
			if t, ok := times[k]; ok {
				fmt.Printf("run --rm busybox true: %s %v, %s --network none %v: %.3f of %s's time (%.1fx faster)\n",
					k, t.Round(time.Microsecond), other, base.Round(time.Microsecond), float64(t)/float64(base), other, float64(base)/float64(t))
			}
		}
	}
}

// BenchmarkUpIdle starts a service of upIdleCount() `sleep` replicas with
// the network on, times it until every instance reports running with an
// IP, and measures what each container costs the host:
//   - the growth of pinned memory per container (memPinned: what the kernel
//     cannot reclaim), workload included, and MemAvailable's drop, which
//     also moves with the page cache;
//   - the workloads' own anonymous memory (sleep), which the goal excludes;
//   - berth-init's PSS (its pages are one static binary's, shared);
//   - the agent cgroup's memory (workloads, inits, kernel memory charged
//     to them) per container;
//   - berth up's own PSS growth per container.
//
// Host memory outside the workload is the growth of the memory the kernel
// cannot reclaim (memPinned) minus the workloads' own anonymous memory.
func BenchmarkUpIdle(b *testing.B) {
	n := startUpNode(b)
	ctx := context.Background()
	count := upIdleCount()
	upPid := n.up.Process.Pid
	for i := range b.N {
		// Let berth up's start-up allocations settle before the baseline.
		time.Sleep(2 * time.Second)
		availBefore, pinnedBefore := memAvailable(b), memPinned(b)
		upBefore := pss(upPid)
		name := fmt.Sprintf("idle%d", i)
		start := time.Now()
		svc := &api.Service{Meta: api.Meta{Name: name, Tenant: "bench"}, Spec: api.ServiceSpec{Replicas: count,
			Template: api.Template{Image: "busybox", Command: []string{"sleep", "1000000"}}}}
		if err := n.admin.Create(ctx, svc); err != nil {
			b.Fatal(err)
		}
		var items []*api.Instance
		for deadline := time.Now().Add(time.Hour); ; time.Sleep(250 * time.Millisecond) {
			l, err := api.ListOf[*api.Instance](ctx, n.admin, "bench", "service="+name)
			if err != nil {
				b.Fatal(err)
			}
			running := 0
			for _, in := range l.Items {
				if in.Status.Phase == api.PhaseRunning && in.Status.IP.IsValid() {
					running++
				}
			}
			if running == count && len(l.Items) == count {
				items = l.Items
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d running after an hour", running, count)
			}
		}
		elapsed := time.Since(start)
		b.StopTimer()
		time.Sleep(5 * time.Second)
		availAfter, pinnedAfter := memAvailable(b), memPinned(b)
		upAfter := pss(upPid)
		ips := map[string]bool{}
		for _, in := range items {
			ips[in.Status.IP.String()] = true
		}
		if len(ips) != count {
			b.Fatalf("%d distinct IPs for %d instances", len(ips), count)
		}
		var initPSS, workPSS, workAnon int64
		inits := containerInits(b, filepath.Join(n.data, "agent"))
		for _, pid := range inits {
			initPSS += pss(pid)
			for _, c := range children(pid) {
				workPSS += pss(c)
				workAnon += rollup(c, "Anonymous:")
			}
		}
		cg := cgroupMemory(filepath.Join(n.data, "agent"))
		k := int64(count)
		perCtr := (availBefore - availAfter) / k
		b.ReportMetric(elapsed.Seconds(), "s-all-running")
		pinned := (pinnedAfter - pinnedBefore) / k
		b.ReportMetric(float64(perCtr)/1024, "KiB-MemAvailable/ctr")
		b.ReportMetric(float64(pinned)/1024, "KiB-pinned/ctr")
		b.ReportMetric(float64(pinned-workAnon/k)/1024, "KiB-pinned-beyond-workload/ctr")
		fmt.Printf("%d idle containers (network on, %d inits found) all running in %v (%.1f ms each)\n",
			count, len(inits), elapsed.Round(time.Millisecond), float64(elapsed.Microseconds())/float64(k)/1000)
		fmt.Printf("per container: pinned memory (anon, shmem, unreclaimable slab, page tables, stacks, per-cpu) +%d KiB, "+
			"of which the workload's (sleep) own anonymous memory %d KiB: host memory beyond the workload %d KiB; "+
			"berth-init PSS %d KiB; agent cgroup memory (workloads, inits, kernel memory charged to them) %d KiB; berth up PSS +%d KiB; "+
			"MemAvailable -%d KiB (moves with the page cache too)\n",
			pinned/1024, workAnon/k/1024, (pinned-workAnon/k)/1024, initPSS/k/1024, cg/k/1024, (upAfter-upBefore)/k/1024, perCtr/1024)
		start = time.Now()
		if err := n.admin.Delete(ctx, api.KindService, "bench", name, 0); err != nil {
			b.Fatal(err)
		}
		for deadline := time.Now().Add(time.Hour); ; time.Sleep(250 * time.Millisecond) {
			left := n.containers(b)
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d containers left after an hour", left)
			}
		}
		fmt.Printf("service of %d removed, every container gone, in %v\n", count, time.Since(start).Round(time.Millisecond))
		b.StartTimer()
	}
}

// memAvailable is /proc/meminfo's MemAvailable, in bytes.
func memAvailable(b *testing.B) int64 { return meminfo(b, "MemAvailable") }

// memPinned is the memory the kernel cannot reclaim, in bytes: anonymous
// and shmem/tmpfs pages, unreclaimable slab, page tables, kernel stacks and
// per-CPU allocations. MemAvailable also moves with the page cache's
// reclaim estimate, which other work on the machine shifts by hundreds of
// MiB; this does not, so its growth is what the containers hold.
func memPinned(b *testing.B) int64 {
	return meminfo(b, "AnonPages", "Shmem", "SUnreclaim", "PageTables", "KernelStack", "Percpu")
}

func meminfo(b *testing.B, fields ...string) int64 {
	raw, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		b.Fatal(err)
	}
	var sum int64
	found := 0
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && slices.Contains(fields, strings.TrimSuffix(f[0], ":")) {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			sum += v * 1024
			found++
		}
	}
	if found != len(fields) {
		b.Fatalf("/proc/meminfo lacks some of %v", fields)
	}
	return sum
}

// containerInits are the host pids of the running containers' inits, from
// the agent's records.
func containerInits(b *testing.B, agentRoot string) []int {
	ms, _ := filepath.Glob(filepath.Join(agentRoot, "containers", "*", "meta.json"))
	var pids []int
	for _, m := range ms {
		raw, err := os.ReadFile(m)
		if err != nil {
			b.Fatal(err)
		}
		var c agent.Container
		if err := json.Unmarshal(raw, &c); err != nil {
			b.Fatalf("%s: %v", m, err)
		}
		if c.State.Pid > 0 {
			pids = append(pids, c.State.Pid)
		}
	}
	return pids
}

// cgroupMemory is the memory charged to the agent's cgroup parent, in
// bytes (cgroup v1's memory controller, else v2's).
func cgroupMemory(agentRoot string) int64 {
	sum := sha256.Sum256([]byte(agentRoot))
	parent := filepath.Join("berth", hex.EncodeToString(sum[:6]))
	for _, f := range []string{
		filepath.Join("/sys/fs/cgroup/memory", parent, "memory.usage_in_bytes"),
		filepath.Join("/sys/fs/cgroup", parent, "memory.current"),
	} {
		if raw, err := os.ReadFile(f); err == nil {
			v, _ := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
			return v
		}
	}
	return 0
}

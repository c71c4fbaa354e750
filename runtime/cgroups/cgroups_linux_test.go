package cgroups

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The test binary doubles as the process put into cgroups: with
// BERTH_CGROUPS_HELPER set it waits for one byte on stdin (sent once the
// test has placed it), then does what the mode says.
func TestMain(m *testing.M) {
	if mode := os.Getenv("BERTH_CGROUPS_HELPER"); mode != "" {
		os.Exit(helper(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func helper(mode string, args []string) int {
	var b [1]byte
	if _, err := os.Stdin.Read(b[:]); err != nil {
		return 2
	}
	switch mode {
	case "sleep":
		// Burn a little CPU so that usage counters move, say so, and
		// wait for stdin to close.
		x := 0
		for i := 0; i < 20_000_000; i++ {
			x += i ^ x
		}
		fmt.Println("running", x&1)
		_, _ = io.Copy(io.Discard, os.Stdin)
	case "hold":
		// Touch 8 MiB, so that the cgroup is charged for it, and keep it.
		hold := make([]byte, 8<<20)
		for j := 0; j < len(hold); j += 4096 {
			hold[j] = 1
		}
		fmt.Println("holding", len(hold))
		_, _ = io.Copy(io.Discard, os.Stdin)
		hold[0] = 2
	case "alloc":
		// Touch 256 MiB page by page; a 48 MiB limit must kill us first.
		var keep [][]byte
		for i := 0; i < 256; i++ {
			chunk := make([]byte, 1<<20)
			for j := 0; j < len(chunk); j += 4096 {
				chunk[j] = 1
			}
			keep = append(keep, chunk)
		}
		fmt.Println("survived", len(keep))
	case "open":
		for _, p := range args {
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				var errno syscall.Errno
				errors.As(err, &errno)
				fmt.Printf("%s %d\n", p, int(errno))
				continue
			}
			f.Close()
			fmt.Printf("%s ok\n", p)
		}
	}
	return 0
}

type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
}

// line reads one line of the child's output.
func (c *child) line(t *testing.T) string {
	t.Helper()
	l, err := c.stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("read child output: %v (got %q)", err, l)
	}
	return l
}

// rest reads the child's output to the end.
func (c *child) rest(t *testing.T) string {
	t.Helper()
	b, err := io.ReadAll(c.stdout)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// startChild starts a helper process; it does nothing until release.
func startChild(t *testing.T, mode string, args ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "BERTH_CGROUPS_HELPER="+mode)
	return start(t, cmd)
}

func start(t *testing.T, cmd *exec.Cmd) *child {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = nil
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &child{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout)}
}

func (c *child) release(t *testing.T) {
	t.Helper()
	if _, err := c.stdin.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
}

// shell starts busybox sh running script once released (it reads a line first).
func startShell(t *testing.T, script string) *child {
	t.Helper()
	return start(t, exec.Command("busybox", "sh", "-c", "exec 2>&1; read go; "+script))
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
}

func uniqueName(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("berth-test-%d-%s", os.Getpid(), hex.EncodeToString(b))
}

// hostV1 returns this host's v1 hierarchy, skipping on a v2-only host.
func hostV1(t *testing.T) Hierarchy {
	t.Helper()
	requireRoot(t)
	h, err := Detect()
	if err != nil {
		t.Fatal(err)
	}
	if h.V2() {
		t.Skip("host has no cgroup v1 hierarchies")
	}
	return h
}

// hostV2 returns a cgroup2 hierarchy to test on: the host's, or on a
// hybrid host its unified mount (where no controllers are enabled, but
// core files, the freezer and device filters work).
func hostV2(t *testing.T) Hierarchy {
	t.Helper()
	requireRoot(t)
	h, err := Detect()
	if err != nil {
		t.Fatal(err)
	}
	if h.Unified == "" {
		t.Skip("host has no cgroup2 mount")
	}
	return Hierarchy{Unified: h.Unified}
}

// testCgroup returns "/<unique>/ctr" and removes "/<unique>" from every
// hierarchy of h when the test ends, whatever happened.
func testCgroup(t *testing.T, h Hierarchy) string {
	t.Helper()
	top := "/" + uniqueName(t)
	t.Cleanup(func() {
		for _, mnt := range mounts(h) {
			pids, _ := readPidsTree(mnt + top)
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
		for _, mnt := range mounts(h) {
			if err := removeTree(mnt + top); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return top + "/ctr"
}

func mounts(h Hierarchy) []string {
	var out []string
	for _, m := range h.V1 {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	if h.V2() {
		out = append(out, h.Unified)
	}
	return out
}

func newManager(t *testing.T, h Hierarchy, path string, r *specs.LinuxResources) Manager {
	t.Helper()
	m, err := New(path, r, Options{Hierarchy: &h})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func readTrim(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// procCgroups maps each hierarchy of /proc/<pid>/cgroup to the path.
func procCgroups(t *testing.T, pid int) map[string]string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) == 3 {
			out[parts[1]] = parts[2]
		}
	}
	return out
}

func TestV1CreateWritesLimitsAndAddJoinsEveryHierarchy(t *testing.T) {
	h := hostV1(t)
	path := testCgroup(t, h)
	r := &specs.LinuxResources{
		Memory:  &specs.LinuxMemory{Limit: i64(64 << 20), Reservation: i64(32 << 20), Swap: i64(64 << 20), Swappiness: u64(10)},
		CPU:     &specs.LinuxCPU{Shares: u64(512), Quota: i64(50000), Period: u64(100000)},
		Pids:    &specs.LinuxPids{Limit: i64(100)},
		Devices: defaultDevices(),
	}
	disk, hasDisk := blockDevice(t)
	if hasDisk {
		r.BlockIO = &specs.LinuxBlockIO{ThrottleReadBpsDevice: []specs.LinuxThrottleDevice{
			{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: disk[0], Minor: disk[1]}, Rate: 1 << 20}}}
	}
	m := newManager(t, h, path, r)
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, "sleep")
	if err := m.Add(c.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	c.release(t)
	c.line(t)
	if hasDisk {
		want := fmt.Sprintf("%d:%d 1048576", disk[0], disk[1])
		if got := readTrim(t, h.V1["blkio"]+path+"/blkio.throttle.read_bps_device"); got != want {
			t.Errorf("blkio.throttle.read_bps_device = %q, want %q", got, want)
		}
	}
	for _, f := range []struct{ ctrl, file, want string }{
		{"memory", "memory.limit_in_bytes", "67108864"},
		{"memory", "memory.soft_limit_in_bytes", "33554432"},
		{"memory", "memory.memsw.limit_in_bytes", "67108864"},
		{"memory", "memory.swappiness", "10"},
		{"cpu", "cpu.shares", "512"},
		{"cpu", "cpu.cfs_quota_us", "50000"},
		{"cpu", "cpu.cfs_period_us", "100000"},
		{"pids", "pids.max", "100"},
	} {
		if got := readTrim(t, h.V1[f.ctrl]+path+"/"+f.file); got != f.want {
			t.Errorf("%s = %q, want %q", f.file, got, f.want)
		}
	}
	list := readTrim(t, h.V1["devices"]+path+"/devices.list")
	for _, want := range []string{"c 1:3 rwm", "c 136:* rwm", "c 5:2 rwm"} {
		if !strings.Contains(list, want) {
			t.Errorf("devices.list lacks %q:\n%s", want, list)
		}
	}
	if strings.Contains(list, "a *:* rwm") || strings.Contains(list, "b ") {
		t.Errorf("devices.list allows more than the spec:\n%s", list)
	}
	in := procCgroups(t, c.cmd.Process.Pid)
	for _, ctrl := range v1Default() {
		if _, ok := h.V1[ctrl]; ok && in[ctrl] != path {
			t.Errorf("child is in %s:%q, want %q", ctrl, in[ctrl], path)
		}
	}
	if cs, ok := h.V1["cpuset"]; ok && exists(cs+path) {
		t.Errorf("cpuset directory made though no cpus/mems were set")
	}
	pids, err := m.Pids()
	if err != nil || !slices.Equal(pids, []int{c.cmd.Process.Pid}) {
		t.Errorf("Pids = %v, %v; want [%d]", pids, err, c.cmd.Process.Pid)
	}
	st, err := m.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// pids.current counts threads, which the Go child starts as it likes.
	if st.Memory.Limit != 64<<20 || st.Memory.Usage == 0 || st.Pids.Current == 0 || st.Pids.Current > 100 ||
		st.Pids.Limit != 100 {
		t.Errorf("stats %+v", st)
	}
	if st.CPU.UsageNanos == 0 {
		t.Errorf("cpu usage is zero: %+v", st.CPU)
	}
}

// blockDevice returns the major and minor of a whole disk of this host.
func blockDevice(t *testing.T) ([2]int64, bool) {
	t.Helper()
	ents, _ := os.ReadDir("/sys/block")
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "loop") || strings.HasPrefix(n, "ram") || strings.HasPrefix(n, "zram") {
			continue
		}
		b, err := os.ReadFile("/sys/block/" + n + "/dev")
		if err != nil {
			continue
		}
		var d [2]int64
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &d[0], &d[1]); err == nil {
			return d, true
		}
	}
	return [2]int64{}, false
}

func TestV1MemoryLimitKillsAllocatorWithOOM(t *testing.T) {
	h := hostV1(t)
	path := testCgroup(t, h)
	m := newManager(t, h, path, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(48 << 20), Swap: i64(48 << 20)}})
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, "alloc")
	if err := m.Add(c.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	c.release(t)
	out := c.rest(t)
	err := c.cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("allocator ended with %v (output %q), want SIGKILL by the OOM killer", err, out)
	}
	st, err := m.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Memory.OOMKills == 0 {
		t.Errorf("cgroup counts no OOM kill: %+v", st.Memory)
	}
	if n, err := m.OOMKills(); err != nil || n != st.Memory.OOMKills {
		t.Errorf("OOMKills = %d, %v; Stats says %d", n, err, st.Memory.OOMKills)
	}
	if err := m.Destroy(); err != nil {
		t.Fatalf("Destroy right after the OOM kill: %v", err)
	}
}

func TestV1PidsLimitMakesForkFail(t *testing.T) {
	h := hostV1(t)
	path := testCgroup(t, h)
	m := newManager(t, h, path, &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(4)}})
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	// The shell is one task; it may start three sleeps, and no more.
	c := startShell(t, `n=0; while [ $n -lt 10 ]; do busybox sleep 30 >/dev/null 2>&1 & n=$((n+1)); done; echo launched`)
	if err := m.Add(c.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	out := c.rest(t)
	_ = c.cmd.Wait()
	events := readTrim(t, h.V1["pids"]+path+"/pids.events")
	if events == "max 0" || !strings.HasPrefix(events, "max ") {
		t.Errorf("pids.events = %q: no fork was refused", events)
	}
	if !strings.Contains(out, "fork") {
		t.Errorf("shell output %q does not report a failed fork", out)
	}
	pids, err := m.Pids()
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 3 {
		t.Errorf("cgroup holds %d processes after the shell exited, want the 3 sleeps the limit let in", len(pids))
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	if err := m.Destroy(); err != nil {
		t.Fatalf("Destroy right after killing the sleeps: %v", err)
	}
}

func TestV1FreezeThaw(t *testing.T) {
	h := hostV1(t)
	testFreezeThaw(t, h)
}

func TestV2FreezeThaw(t *testing.T) {
	h := hostV2(t)
	testFreezeThaw(t, h)
}

func testFreezeThaw(t *testing.T, h Hierarchy) {
	path := testCgroup(t, h)
	m := newManager(t, h, path, nil)
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, "sleep")
	pid := c.cmd.Process.Pid
	if err := m.Add(pid); err != nil {
		t.Fatal(err)
	}
	if s, err := m.State(); err != nil || s != Thawed {
		t.Fatalf("State = %q, %v; want THAWED", s, err)
	}
	if err := m.Freeze(); err != nil {
		t.Fatal(err)
	}
	if s, err := m.State(); err != nil || s != Frozen {
		t.Fatalf("State after Freeze = %q, %v; want FROZEN", s, err)
	}
	if err := m.Thaw(); err != nil {
		t.Fatal(err)
	}
	if s, err := m.State(); err != nil || s != Thawed {
		t.Fatalf("State after Thaw = %q, %v; want THAWED", s, err)
	}
	// The thawed child runs: it answers the release byte by exiting once
	// stdin closes.
	c.release(t)
	c.line(t)
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child after thaw: %v", err)
	}
	if err := m.Destroy(); err != nil {
		t.Fatalf("Destroy right after exit: %v", err)
	}
	for _, mnt := range mounts(h) {
		if exists(mnt + path) {
			t.Errorf("%s still exists", mnt+path)
		}
	}
}

func TestV1DestroyRemovesEveryDirectoryIncludingParents(t *testing.T) {
	h := hostV1(t)
	if _, ok := h.V1["cpuset"]; !ok {
		t.Skip("cpuset not mounted")
	}
	path := testCgroup(t, h)
	m := newManager(t, h, path, &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0", Mems: "0"}, Pids: &specs.LinuxPids{Limit: i64(10)}})
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	if got := readTrim(t, h.V1["cpuset"]+path+"/cpuset.cpus"); got != "0" {
		t.Errorf("cpuset.cpus = %q", got)
	}
	c := startChild(t, "sleep")
	if err := m.Add(c.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// The process is dying, not yet reaped, when Destroy runs; Destroy
	// waits out the kernel's EBUSY.
	_ = c.cmd.Process.Kill()
	if err := m.Destroy(); err != nil {
		t.Fatal(err)
	}
	top := filepath.Dir(path)
	for _, mnt := range mounts(h) {
		if exists(mnt + path) {
			t.Errorf("%s still exists", mnt+path)
		}
		if exists(mnt + top) {
			t.Errorf("parent %s, made by Create, still exists", mnt+top)
		}
	}
}

func TestV1FailedCreateLeavesNothing(t *testing.T) {
	h := hostV1(t)
	for _, tt := range []struct {
		name  string
		r     *specs.LinuxResources
		field string
	}{
		{"cpus the host lacks", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(5)}, CPU: &specs.LinuxCPU{Cpus: "0-4095"}}, fCPUCpus},
		{"knob the kernel lacks", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(5)}, BlockIO: &specs.LinuxBlockIO{LeafWeight: u16(100)}}, fBlkLeafWeight},
		// A new parent has no realtime budget to hand down.
		{"value the kernel refuses", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(64 << 20)}, Pids: &specs.LinuxPids{Limit: i64(5)},
			CPU: &specs.LinuxCPU{RealtimePeriod: u64(1000000), RealtimeRuntime: i64(10000)}}, fCPURtRuntime},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := testCgroup(t, h)
			m := newManager(t, h, path, tt.r)
			err := m.Create()
			if err == nil {
				t.Fatal("Create succeeded")
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Errorf("error %v does not name %s", err, tt.field)
			}
			top := filepath.Dir(path)
			for _, mnt := range mounts(h) {
				if exists(mnt + top) {
					t.Errorf("%s left behind after failed Create (%v)", mnt+top, err)
				}
			}
		})
	}
}

func TestV1SetUpdatesInPlaceAndAddsCpusetLater(t *testing.T) {
	h := hostV1(t)
	if _, ok := h.V1["cpuset"]; !ok {
		t.Skip("cpuset not mounted")
	}
	path := testCgroup(t, h)
	m := newManager(t, h, path, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(64 << 20), Swap: i64(64 << 20)}, Pids: &specs.LinuxPids{Limit: i64(50)}})
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, "hold")
	pid := c.cmd.Process.Pid
	if err := m.Add(pid); err != nil {
		t.Fatal(err)
	}
	c.release(t)
	c.line(t)
	// A second Manager, as `berth-runtime update` would make in a new process.
	m2 := newManager(t, h, path, nil)
	r := &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: i64(128 << 20), Swap: i64(256 << 20)}, // memsw must grow first
		Pids:   &specs.LinuxPids{Limit: i64(60)},
		CPU:    &specs.LinuxCPU{Cpus: "0"},
	}
	if err := m2.Set(r); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct{ ctrl, file, want string }{
		{"memory", "memory.limit_in_bytes", "134217728"},
		{"memory", "memory.memsw.limit_in_bytes", "268435456"},
		{"pids", "pids.max", "60"},
		{"cpuset", "cpuset.cpus", "0"},
	} {
		if got := readTrim(t, h.V1[f.ctrl]+path+"/"+f.file); got != f.want {
			t.Errorf("%s = %q, want %q", f.file, got, f.want)
		}
	}
	if got := procCgroups(t, pid)["cpuset"]; got != path {
		t.Errorf("child's cpuset cgroup is %q after Set, want %q", got, path)
	}

	// Lowering memory below usage is refused, naming the field.
	err := m2.Set(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 20)}})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != fMemLimit || !strings.Contains(err.Error(), "below the cgroup's current usage") {
		t.Errorf("Set below usage: %v", err)
	}
	err = m2.Set(&specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-4095"}})
	if !errors.As(err, &fe) || fe.Field != fCPUCpus {
		t.Errorf("Set with absent CPUs: %v", err)
	}
	if got := readTrim(t, h.V1["memory"]+path+"/memory.limit_in_bytes"); got != "134217728" {
		t.Errorf("refused Set changed memory.limit_in_bytes to %s", got)
	}
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
	if err := m2.Destroy(); err != nil {
		t.Fatal(err)
	}
	for _, mnt := range mounts(h) {
		if exists(mnt + path) {
			t.Errorf("%s still exists after Destroy by a second Manager", mnt+path)
		}
	}
}

func TestV2DeviceFilterAllowsAndDenies(t *testing.T) {
	h := hostV2(t)
	path := testCgroup(t, h)
	r := &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
		{Allow: false, Access: "rwm"},
		{Allow: true, Type: "c", Major: i64(1), Minor: i64(3), Access: "rwm"}, // /dev/null
	}}
	m := newManager(t, h, path, r)
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	open := func(wantNull, wantZero string) {
		t.Helper()
		c := startChild(t, "open", "/dev/null", "/dev/zero")
		if err := m.Add(c.cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		c.release(t)
		out := c.rest(t)
		if err := c.cmd.Wait(); err != nil {
			t.Fatalf("helper: %v: %s", err, out)
		}
		want := "/dev/null " + wantNull + "\n/dev/zero " + wantZero + "\n"
		if out != want {
			t.Errorf("opens in the cgroup:\n%s\nwant:\n%s", out, want)
		}
	}
	eperm := fmt.Sprint(int(syscall.EPERM))
	open("ok", eperm)

	// Set replaces the filter: now /dev/zero is allowed and /dev/null denied.
	r2 := &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
		{Allow: false, Access: "rwm"},
		{Allow: true, Type: "c", Major: i64(1), Minor: i64(5), Access: "rwm"},
	}}
	if err := newManager(t, h, path, nil).Set(r2); err != nil {
		t.Fatal(err)
	}
	open(eperm, "ok")
	if n := attachedDeviceFilters(t, h.Unified+path); n != 1 {
		t.Errorf("%d device filters attached after Set, want 1", n)
	}

	// Without a leading deny-all, only what is denied is denied, as on v1.
	r3 := &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
		{Allow: false, Type: "c", Major: i64(1), Minor: i64(5), Access: "w"},
	}}
	if err := newManager(t, h, path, nil).Set(r3); err != nil {
		t.Fatal(err)
	}
	open("ok", eperm) // O_RDWR asks for the denied write access
	if err := m.Destroy(); err != nil {
		t.Fatal(err)
	}
}

func TestV2MissingControllerFailsCleanly(t *testing.T) {
	h := hostV2(t)
	avail := readTrim(t, h.Unified+"/cgroup.controllers")
	if strings.Contains(avail, "memory") {
		t.Skip("this cgroup2 mount offers the memory controller")
	}
	path := testCgroup(t, h)
	m := newManager(t, h, path, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(64 << 20)}})
	err := m.Create()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != fMemLimit {
		t.Fatalf("Create: %v, want an error naming %s", err, fMemLimit)
	}
	if exists(h.Unified + filepath.Dir(path)) {
		t.Errorf("failed Create left %s", h.Unified+filepath.Dir(path))
	}
}

func TestV2PidsStatsDestroy(t *testing.T) {
	h := hostV2(t)
	path := testCgroup(t, h)
	m := newManager(t, h, path, &specs.LinuxResources{Unified: map[string]string{"cgroup.max.descendants": "2"}})
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	if got := readTrim(t, h.Unified+path+"/cgroup.max.descendants"); got != "2" {
		t.Errorf("cgroup.max.descendants = %q", got)
	}
	c := startChild(t, "sleep")
	if err := m.Add(c.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	c.release(t)
	c.line(t)
	if got := procCgroups(t, c.cmd.Process.Pid)[""]; got != path {
		t.Errorf("child's cgroup2 path %q, want %q", got, path)
	}
	pids, err := m.Pids()
	if err != nil || !slices.Equal(pids, []int{c.cmd.Process.Pid}) {
		t.Errorf("Pids = %v, %v", pids, err)
	}
	st, err := m.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.CPU.UsageNanos == 0 {
		t.Errorf("cpu usage zero: %+v", st.CPU)
	}
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
	if err := m.Destroy(); err != nil {
		t.Fatal(err)
	}
	if exists(h.Unified + filepath.Dir(path)) {
		t.Errorf("Destroy left %s", h.Unified+filepath.Dir(path))
	}
}

func TestSystemdPathIsRefused(t *testing.T) {
	_, err := New("system.slice:berth:abc", nil, Options{Hierarchy: &Hierarchy{Unified: "/nonexistent"}})
	if err == nil || !strings.Contains(err.Error(), "systemd cgroup driver is not supported") {
		t.Errorf("New: %v", err)
	}
}

func attachedDeviceFilters(t *testing.T, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ids, err := deviceProgramIDs(fd)
	if err != nil {
		t.Fatal(err)
	}
	return len(ids)
}

// TestV2HugetlbLimitIsWritten proves a v2 controller's writes against the
// kernel: on this hybrid host the unified mount offers hugetlb. Enabling
// it in the root's subtree_control is undone afterwards if the test did it.
func TestV2HugetlbLimitIsWritten(t *testing.T) {
	h := hostV2(t)
	if !strings.Contains(readTrim(t, h.Unified+"/cgroup.controllers"), "hugetlb") || !exists("/sys/kernel/mm/hugepages/hugepages-2048kB") {
		t.Skip("no hugetlb controller or no 2MB huge pages")
	}
	if !strings.Contains(readTrim(t, h.Unified+"/cgroup.subtree_control"), "hugetlb") {
		t.Cleanup(func() { _ = writeFile(h.Unified+"/cgroup.subtree_control", "-hugetlb") })
	}
	path := testCgroup(t, h)
	r := &specs.LinuxResources{HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 4 << 20}}}
	m := newManager(t, h, path, r)
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"hugetlb.2MB.max", "hugetlb.2MB.rsvd.max"} {
		if got := readTrim(t, h.Unified+path+"/"+f); got != "4194304" {
			t.Errorf("%s = %q", f, got)
		}
	}
	r.HugepageLimits[0].Limit = 8 << 20
	if err := m.Set(r); err != nil {
		t.Fatal(err)
	}
	if got := readTrim(t, h.Unified+path+"/hugetlb.2MB.max"); got != "8388608" {
		t.Errorf("after Set hugetlb.2MB.max = %q", got)
	}
	err := m.Set(&specs.LinuxResources{HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "3MB", Limit: 1}}})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "linux.resources.hugepageLimits[0]" || !strings.Contains(err.Error(), "no hugetlb.3MB.max") {
		t.Errorf("unknown page size: %v", err)
	}
	if err := m.Destroy(); err != nil {
		t.Fatal(err)
	}
}

// FavorDynMods changes the host's cgroup2 superblock; the test gives it
// back the flags it had.
func TestFavorDynModsKeepsTheOtherOptions(t *testing.T) {
	requireRoot(t)
	read := func() (string, string, bool) {
		f, err := os.Open("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		mnt, opts, ok, err := unifiedMount(f)
		if err != nil {
			t.Fatal(err)
		}
		return mnt, opts, ok
	}
	mnt, before, ok := read()
	if !ok {
		t.Skip("no cgroup2 mount")
	}
	changed, err := FavorDynMods()
	if err != nil {
		t.Fatal(err)
	}
	if changed {
		t.Cleanup(func() {
			var flags []string
			for _, o := range strings.Split(before, ",") {
				if o != "rw" && o != "ro" && o != "" {
					flags = append(flags, o)
				}
			}
			if err := reconfigureUnified(mnt, flags); err != nil {
				t.Errorf("restore %s to %s: %v", mnt, before, err)
			}
		})
	} else if !strings.Contains(before, "favordynmods") {
		t.Fatalf("no change reported, but the options were %q", before)
	}
	_, after, _ := read()
	want := strings.Split(before, ",")
	if !strings.Contains(before, "favordynmods") {
		want = append(want, "favordynmods")
	}
	got := strings.Split(after, ",")
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("options %q after, %q before: want %q", after, before, want)
	}
	if changed, err := FavorDynMods(); changed || err != nil {
		t.Fatalf("second call: changed %v, err %v; want neither", changed, err)
	}
}

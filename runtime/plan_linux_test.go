package runtime

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-dev/berth/runtime/cgroups"
	"github.com/berth-dev/berth/runtime/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// envTestGoInit makes testRuntime's runtimes use the Go init.
const envTestGoInit = "BERTH_TEST_GO_INIT"

// decodePlan reads a plan back into its steps, as fastinit.c does.
func decodePlan(t *testing.T, b []byte) [][]string {
	t.Helper()
	var steps [][]string
	for len(b) > 0 {
		n := binary.LittleEndian.Uint32(b)
		b = b[4:]
		var st []string
		for i := uint32(0); i < n; i++ {
			l := binary.LittleEndian.Uint32(b)
			st = append(st, string(b[4:4+l]))
			if b[4+l] != 0 {
				t.Fatalf("field %q of step %v is not NUL-terminated", st[len(st)-1], st)
			}
			b = b[5+l:]
		}
		steps = append(steps, st)
	}
	return steps
}

func planHostForTest() planHost {
	return planHost{
		cgroups: planCgroups(cgroups.Hierarchy{Unified: "/sys/fs/cgroup/unified", V1: map[string]string{
			"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct", "memory": "/sys/fs/cgroup/memory",
			"name=systemd": "/sys/fs/cgroup/systemd", "net_cls": "/elsewhere/net_cls",
		}}),
		lastCap: 40,
		kcore:   true,
		isFile:  func(p string) (bool, error) { return strings.HasSuffix(p, ".conf"), nil },
	}
}

func stepNames(steps [][]string) string {
	var names []string
	for _, s := range steps {
		names = append(names, s[0])
	}
	return strings.Join(names, " ")
}

func findStep(steps [][]string, name string) []string {
	for _, s := range steps {
		if s[0] == name {
			return s
		}
	}
	return nil
}

func TestPlanFollowsTheGoInitsOrder(t *testing.T) {
	s := DefaultSpec()
	s.Process.Args = []string{"sh", "-c", "true"}
	s.Hostname = "box"
	s.Linux.Sysctl = map[string]string{"net.ipv4.ip_forward": "1"}
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/x.conf", Type: "bind", Source: "/host/x.conf", Options: []string{"rbind", "ro", "rslave"}})
	prog := &seccomp.Program{Instructions: []seccomp.Instruction{{Code: 6, K: 0x7fff0000}}}
	cfg := &initConfig{Rootfs: "/b/rootfs", NewCgroupNS: true}
	b, ok := fastInitPlan(cfg, s, prog, 0, planHostForTest())
	if !ok {
		t.Fatal("the default spec got no plan")
	}
	steps := decodePlan(t, b)
	got := stepNames(steps)
	// The order of initProcess, initContainer, setupRootfs, finishRootfs
	// and finalize.
	for _, want := range []string{
		"cgroup-ready unshare lo-up hostname setsid host-mount host-mount root mount",
		"device device device device device device symlink",
		"pivot write readonly",
		"mask",
		"check-exec ready start-wait close-sync",
		"umask cloexec chdir capbset keepcaps setgroups setresgid setresuid capset ambient-clear no-new-privs seccomp exec",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("plan %q lacks %q", got, want)
		}
	}
	if st := findStep(steps, "hostname"); st[2] != "box" {
		t.Errorf("hostname step %v", st)
	}
	if st := findStep(steps, "write"); st[2] != "/proc/sys/net/ipv4/ip_forward" || st[3] != "1" {
		t.Errorf("sysctl step %v", st)
	}
	var bind, cg []string
	for _, st := range steps {
		if st[0] == "mount" && st[2] == "/etc/x.conf" {
			bind = st
		}
		if st[0] == "cgroup" {
			cg = st
		}
	}
	// A file bind mount, read-only through a remount, then made a slave.
	if bind == nil || bind[7] != "1" || bind[8] != "1" || bind[9] != "1" || len(bind) != 13 {
		t.Errorf("bind mount step %q", bind)
	}
	// Co-mounted controllers are one hierarchy; mounts outside
	// /sys/fs/cgroup are not the container's business.
	if want := "cpu,cpuacct|cgroup|cpu,cpuacct|memory|cgroup|memory|systemd|cgroup|name=systemd|unified|cgroup2|"; cg == nil || strings.Join(cg[4:], "|") != want {
		t.Errorf("cgroup step %q, want hierarchies %q", cg, want)
	}
	exe := findStep(steps, "exec")
	if exe[3] != "3" || strings.Join(exe[4:7], " ") != "sh -c true" || exe[7] != s.Process.Env[0] {
		t.Errorf("exec step %q", exe)
	}
	if sc := findStep(steps, "seccomp"); len(sc[3]) != 8 {
		t.Errorf("seccomp step carries %d bytes for one instruction", len(sc[3]))
	}
}

func TestPlanLoadsSeccompBeforeDroppingCapabilitiesWithoutNoNewPrivs(t *testing.T) {
	s := DefaultSpec()
	s.Process.NoNewPrivileges = false
	prog := &seccomp.Program{Instructions: []seccomp.Instruction{{Code: 6, K: 0x7fff0000}}}
	b, ok := fastInitPlan(&initConfig{Rootfs: "/r", NewCgroupNS: true}, s, prog, 0, planHostForTest())
	if !ok {
		t.Fatal("no plan")
	}
	got := stepNames(decodePlan(t, b))
	if !strings.Contains(got, "chdir seccomp capbset") || strings.Contains(got, "no-new-privs") {
		t.Errorf("plan %q", got)
	}
}

func TestPlanLeavesWhatOnlyTheGoInitDoesToIt(t *testing.T) {
	notify := &seccomp.Program{Instructions: []seccomp.Instruction{{Code: 6}}, Flags: seccomp.FlagNewListener}
	for name, c := range map[string]struct {
		cfg    initConfig
		mutate func(*specs.Spec)
		prog   *seccomp.Program
		joins  int
	}{
		"console":        {cfg: initConfig{Console: true}},
		"preserved fds":  {cfg: initConfig{PreserveFDs: 2}},
		"no pivot":       {cfg: initConfig{NoPivot: true}},
		"joined userns":  {joins: 1},
		"seccomp notify": {prog: notify},
		"personality":    {mutate: func(s *specs.Spec) { s.Linux.Personality = &specs.LinuxPersonality{Domain: specs.PerLinux} }},
		"startContainer": {mutate: func(s *specs.Spec) { s.Hooks = &specs.Hooks{StartContainer: []specs.Hook{{Path: "/bin/true"}}} }},
		"createRuntime":  {mutate: func(s *specs.Spec) { s.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/bin/true"}}} }},
		"cgroup, no ns":  {mutate: func(s *specs.Spec) { s.Linux.Namespaces = withoutNS(s.Linux.Namespaces, specs.CgroupNamespace) }},
		"unreadable bind": {mutate: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/x", Type: "bind", Source: "/missing"})
		}},
	} {
		t.Run(name, func(t *testing.T) {
			s := DefaultSpec()
			if c.mutate != nil {
				c.mutate(s)
			}
			cfg := c.cfg
			cfg.Rootfs = "/r"
			cfg.NewCgroupNS = hasNS(mustNS(s), specs.CgroupNamespace)
			host := planHostForTest()
			host.isFile = func(p string) (bool, error) {
				if p == "/missing" {
					return false, os.ErrNotExist
				}
				return false, nil
			}
			if _, ok := fastInitPlan(&cfg, s, c.prog, c.joins, host); ok {
				t.Error("got a plan; want the Go init")
			}
		})
	}
	// Poststart and poststop hooks run outside the init: still a plan.
	s := DefaultSpec()
	s.Hooks = &specs.Hooks{Poststart: []specs.Hook{{Path: "/bin/true"}}, Poststop: []specs.Hook{{Path: "/bin/true"}}}
	if _, ok := fastInitPlan(&initConfig{Rootfs: "/r", NewCgroupNS: true}, s, nil, 0, planHostForTest()); !ok {
		t.Error("poststart/poststop hooks cost the plan")
	}
}

func withoutNS(ns []specs.LinuxNamespace, t specs.LinuxNamespaceType) []specs.LinuxNamespace {
	var out []specs.LinuxNamespace
	for _, n := range ns {
		if n.Type != t {
			out = append(out, n)
		}
	}
	return out
}

// TestTheInitOfAPlainSpecIsTheCInit proves the fast path is taken: a created
// container's init waits at the exec fifo, and the C init does so with
// the one thread it has, where the Go runtime always has more.
func TestTheInitOfAPlainSpecIsTheCInit(t *testing.T) {
	for _, goInit := range []bool{false, true} {
		r := testRuntime(t)
		r.GoInit = goInit
		bundle := testBundle(t, []string{"true"}, nil)
		id := "cinit-" + strconv.FormatBool(goInit)
		if err := r.Create(context.Background(), id, bundle, CreateOpts{}); err != nil {
			t.Fatal(err)
		}
		st, err := r.State(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if n := threads(t, st.Pid); (n == 1) == goInit {
			t.Errorf("GoInit=%v: the init has %d threads", goInit, n)
		}
		if err := r.Delete(context.Background(), id, true); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWithGoInit runs this package's tests again with the Go init, so that
// both inits are held to the same tests (the attacks included).
func TestWithGoInit(t *testing.T) {
	if os.Getenv(envTestGoInit) == "1" {
		t.Skip("this is the Go init's pass")
	}
	needRoot(t)
	cmd := exec.Command(os.Args[0], "-test.count=1", "-test.skip", "^TestWithGoInit$")
	cmd.Env = append(os.Environ(), envTestGoInit+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the tests with the Go init: %v\n%s", err, out)
	}
}

// With a user namespace the C init makes the namespaces itself (Go's clone
// into a new user namespace copies the parent): the user namespace first
// and while the parent places it in its cgroup, the network and IPC ones
// while the parent maps it, the others after, all owned by it, then a fork
// into the new pid namespace; lo comes up in the new network namespace.
func TestPlanMakesTheNamespacesItselfWithAUserNamespace(t *testing.T) {
	s := DefaultSpec()
	s.Process.Args = []string{"true"}
	all := uintptr(unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS)
	cfg := &initConfig{Rootfs: "/b/rootfs", NewCgroupNS: true, Unshare: all, RootUID: 0, RootGID: 0}
	b, ok := fastInitPlan(cfg, s, nil, 0, planHostForTest())
	if !ok {
		t.Fatal("no plan")
	}
	steps := decodePlan(t, b)
	if got, want := stepNames(steps), "userns setresgid setresuid cgroup-ready unshare fork lo-up hostname setsid"; !strings.HasPrefix(got, want) {
		t.Fatalf("plan %q, want it to start %q", got, want)
	}
	early := uintptr(unix.CLONE_NEWNET | unix.CLONE_NEWIPC)
	if st := findStep(steps, "userns"); len(st) != 3 || st[2] != itoa(early) {
		t.Errorf("userns step %q, want the network and IPC namespaces made with it", st)
	}
	if st := findStep(steps, "unshare"); st[2] != itoa(all&^(unix.CLONE_NEWUSER|early)|unix.CLONE_NEWCGROUP) {
		t.Errorf("unshare step %q", st)
	}

	// Without a pid namespace there is nothing to fork into; in the
	// host's network namespace lo is left alone.
	cfg.Unshare = all &^ (unix.CLONE_NEWPID | unix.CLONE_NEWNET)
	s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace })
	b, _ = fastInitPlan(cfg, s, nil, 0, planHostForTest())
	got := stepNames(decodePlan(t, b))
	if strings.Contains(got, "lo-up") || strings.Contains(got, "fork") {
		t.Errorf("plan %q", got)
	}
}

// Started with the create (CreateOpts.Start), the plan goes from ready to
// the process without waiting for Start.
func TestPlanStartingNowDoesNotWaitForStart(t *testing.T) {
	s := DefaultSpec()
	s.Process.Args = []string{"true"}
	for _, now := range []bool{false, true} {
		b, ok := fastInitPlan(&initConfig{Rootfs: "/b/rootfs", NewCgroupNS: true, StartNow: now}, s, nil, 0, planHostForTest())
		if !ok {
			t.Fatal("no plan")
		}
		got := stepNames(decodePlan(t, b))
		want := "ready start-wait close-sync"
		if now {
			want = "ready close-sync"
		}
		if !strings.Contains(got, want) {
			t.Errorf("start now %v: plan %q, want %q in it", now, got, want)
		}
	}
}

package agent

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/runtime"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestValidateNamesTheBadField(t *testing.T) {
	ok := ContainerSpec{Image: "busybox"}
	cases := []struct {
		name string
		mod  func(*ContainerSpec)
		want string // "" means valid
	}{
		{"minimal", func(*ContainerSpec) {}, ""},
		{"no image", func(s *ContainerSpec) { s.Image = "" }, "image"},
		{"bad name", func(s *ContainerSpec) { s.Name = "../x" }, "name"},
		{"env without name", func(s *ContainerSpec) { s.Env = []string{"=x"} }, "env[0]"},
		{"relative workdir", func(s *ContainerSpec) { s.Workdir = "tmp" }, "workdir"},
		{"tiny memory", func(s *ContainerSpec) { s.Memory = 1 << 20 }, "memory"},
		{"negative cpus", func(s *ContainerSpec) { s.CPUs = -1 }, "cpus"},
		{"unknown capability", func(s *ContainerSpec) { s.CapAdd = []string{"FLY"} }, "capability"},
		{"capability without prefix", func(s *ContainerSpec) { s.CapAdd = []string{"net_admin"} }, ""},
		{"mount target relative", func(s *ContainerSpec) { s.Mounts = []Mount{{Type: "bind", Source: "/x", Target: "x"}} }, "mounts[0]"},
		{"mount target twice", func(s *ContainerSpec) {
			s.Mounts = []Mount{{Type: "volume", Source: "a", Target: "/x"}, {Type: "volume", Source: "b", Target: "/x"}}
		}, "mounts[1]"},
		{"volume name climbs", func(s *ContainerSpec) { s.Mounts = []Mount{{Type: "volume", Source: "../etc", Target: "/x"}} }, "volume name"},
		{"bind relative", func(s *ContainerSpec) { s.Mounts = []Mount{{Type: "bind", Source: "etc", Target: "/x"}} }, "bind source"},
		{"mount type", func(s *ContainerSpec) { s.Mounts = []Mount{{Type: "tmpfs", Target: "/x"}} }, "type"},
		{"restart policy", func(s *ContainerSpec) { s.Restart = RestartPolicy{Name: "sometimes"} }, "restart"},
		{"health two kinds", func(s *ContainerSpec) { s.Health = &HealthCheck{Cmd: []string{"true"}, Port: 80} }, "health"},
		{"health http without port", func(s *ContainerSpec) { s.Health = &HealthCheck{HTTPPath: "/"} }, "health"},
		{"log too small", func(s *ContainerSpec) { s.Log.MaxSize = 10 }, "log"},
		{"network name", func(s *ContainerSpec) { s.Network = "a b" }, "network"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			tc.mod(&s)
			err := s.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestParseRestartPolicy(t *testing.T) {
	for in, want := range map[string]RestartPolicy{
		"no": {Name: "no"}, "always": {Name: "always"}, "unless-stopped": {Name: "unless-stopped"},
		"on-failure": {Name: "on-failure"}, "on-failure:5": {Name: "on-failure", MaxRetries: 5},
	} {
		got, err := ParseRestartPolicy(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"always:3", "on-failure:x", "on-failure:-1", "never"} {
		if _, err := ParseRestartPolicy(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestShouldRestart(t *testing.T) {
	cases := []struct {
		policy   string
		code     int
		restarts int
		byUser   bool
		want     bool
	}{
		{"no", 1, 0, false, false},
		{"", 1, 0, false, false},
		{"always", 0, 10, false, true},
		{"always", 1, 0, true, false},
		{"unless-stopped", 0, 0, false, true},
		{"unless-stopped", 0, 0, true, false},
		{"on-failure", 0, 0, false, false},
		{"on-failure", 2, 100, false, true},
		{"on-failure:3", 2, 2, false, true},
		{"on-failure:3", 2, 3, false, false},
	}
	for _, tc := range cases {
		p, err := ParseRestartPolicy(tc.policy)
		if tc.policy == "" {
			p, err = RestartPolicy{}, nil
		}
		if err != nil {
			t.Fatal(err)
		}
		if got := ShouldRestart(p, tc.code, tc.restarts, tc.byUser); got != tc.want {
			t.Errorf("%+v: got %v", tc, got)
		}
	}
}

func TestRestartDelayDoublesAndResets(t *testing.T) {
	want := []time.Duration{100, 200, 400, 800, 1600}
	for i, w := range want {
		if got := RestartDelay(i, time.Second); got != w*time.Millisecond {
			t.Errorf("after %d quick failures: %v, want %v", i, got, w*time.Millisecond)
		}
	}
	if got := RestartDelay(30, time.Second); got != time.Minute {
		t.Errorf("capped: %v", got)
	}
	if got := RestartDelay(30, 10*time.Second); got != 100*time.Millisecond {
		t.Errorf("after a long run: %v", got)
	}
}

func TestIDPoolAllocatesLowestFreeNonOverlappingRange(t *testing.T) {
	p := IDPool{First: 1000, Last: 1000 + 4*100 - 1, Size: 100}
	cases := []struct {
		name string
		used []IDRange
		want IDRange
		err  bool
	}{
		{"empty", nil, IDRange{1000, 100}, false},
		{"after first", []IDRange{{1000, 100}}, IDRange{1100, 100}, false},
		{"hole", []IDRange{{1000, 100}, {1200, 100}}, IDRange{1100, 100}, false},
		{"unsorted", []IDRange{{1200, 100}, {1000, 100}}, IDRange{1100, 100}, false},
		{"odd sized neighbour", []IDRange{{1050, 10}}, IDRange{1060, 100}, false},
		{"outside pool ignored", []IDRange{{0, 65536 * 10}}, IDRange{}, true},
		{"full", []IDRange{{1000, 100}, {1100, 100}, {1200, 100}, {1300, 100}}, IDRange{}, true},
		{"last slot", []IDRange{{1000, 300}}, IDRange{1300, 100}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.Allocate(tc.used)
			if tc.err {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v %v, want %+v", got, err, tc.want)
			}
			for _, u := range tc.used {
				if got.Base < u.Base+u.Size && u.Base < got.Base+got.Size {
					t.Fatalf("%+v overlaps %+v", got, u)
				}
			}
		})
	}
	// Filling the default pool's first ranges one by one never overlaps.
	d := DefaultIDPool()
	var used []IDRange
	for range 50 {
		r, err := d.Allocate(used)
		if err != nil {
			t.Fatal(err)
		}
		if r.Base < 1<<28 {
			t.Fatalf("range %+v reaches below the pool", r)
		}
		used = append(used, r)
	}
}

func TestCapabilities(t *testing.T) {
	def := runtime.DefaultCapabilities()
	slices.Sort(def)
	got, _ := Capabilities(nil, nil)
	if !slices.Equal(got, def) {
		t.Fatalf("defaults: %v", got)
	}
	got, _ = Capabilities([]string{"net_admin"}, []string{"CAP_CHOWN", "mknod"})
	if !slices.Contains(got, "CAP_NET_ADMIN") || slices.Contains(got, "CAP_CHOWN") || slices.Contains(got, "CAP_MKNOD") {
		t.Fatalf("add/drop: %v", got)
	}
	got, _ = Capabilities([]string{"NET_BIND_SERVICE"}, []string{"ALL"})
	if !slices.Equal(got, []string{"CAP_NET_BIND_SERVICE"}) {
		t.Fatalf("drop ALL, add one: %v", got)
	}
	if _, err := Capabilities([]string{"CAP_FLY"}, nil); err == nil {
		t.Fatal("unknown capability accepted")
	}
}

func TestMergeEnv(t *testing.T) {
	got := MergeEnv([]string{"PATH=/bin", "A=1"}, []string{"A=2", "B=3"})
	if !slices.Equal(got, []string{"PATH=/bin", "A=2", "B=3"}) {
		t.Fatalf("%v", got)
	}
}

func genInput() BundleInput {
	return BundleInput{
		ID: "0123456789abcdef0123456789abcdef", Spec: ContainerSpec{Image: "busybox"},
		Process: specs.Process{Args: []string{"sh"}, Env: []string{"PATH=/bin"}, Cwd: "/"},
		Rootfs:  "/agent/c/bundle/rootfs", IDs: IDRange{Base: 1 << 28, Size: 65536},
		InitPath: "/usr/lib/berth/berth-init", LogDir: "/agent/c/log", CgroupsPath: "/berth/x/0123",
		AgentRoot: "/agent",
	}
}

func TestGenerateSecureDefaults(t *testing.T) {
	s, err := Generate(genInput())
	if err != nil {
		t.Fatal(err)
	}
	if !s.Process.NoNewPrivileges || s.Process.Terminal {
		t.Error("want no-new-privileges and no terminal")
	}
	if s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActErrno {
		t.Errorf("seccomp: %+v", s.Linux.Seccomp)
	}
	var hasUser bool
	for _, ns := range s.Linux.Namespaces {
		hasUser = hasUser || ns.Type == specs.UserNamespace
	}
	if !hasUser || len(s.Linux.UIDMappings) != 1 || s.Linux.UIDMappings[0] != (specs.LinuxIDMapping{ContainerID: 0, HostID: 1 << 28, Size: 65536}) ||
		s.Linux.GIDMappings[0] != s.Linux.UIDMappings[0] {
		t.Errorf("user namespace: %v %+v %+v", hasUser, s.Linux.UIDMappings, s.Linux.GIDMappings)
	}
	def := runtime.DefaultCapabilities()
	slices.Sort(def)
	if c := s.Process.Capabilities; !slices.Equal(c.Bounding, def) || !slices.Equal(c.Effective, def) {
		t.Errorf("capabilities: %+v", c)
	}
	if !slices.Contains(s.Linux.MaskedPaths, "/proc/kcore") || !slices.Contains(s.Linux.ReadonlyPaths, "/proc/sys") {
		t.Errorf("masked %v readonly %v", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
	}
	if s.Linux.CgroupsPath != "/berth/x/0123" || s.Annotations[annotationRoot] != "/agent" || s.Hostname != "0123456789ab" {
		t.Errorf("cgroup %q annotations %v hostname %q", s.Linux.CgroupsPath, s.Annotations, s.Hostname)
	}
	want := []string{initInContainer, "-l", logDirInContainer, "-s", "10485760", "-n", "3", "--", "sh"}
	if !slices.Equal(s.Process.Args, want) || s.Process.User.UID != 0 {
		t.Errorf("args %q user %+v, want %q as root", s.Process.Args, s.Process.User, want)
	}
	var initMount, logMount bool
	for _, m := range s.Mounts {
		initMount = initMount || m.Destination == initInContainer && m.Source == "/usr/lib/berth/berth-init" && slices.Contains(m.Options, "ro")
		logMount = logMount || m.Destination == logDirInContainer && m.Source == "/agent/c/log"
	}
	if !initMount || !logMount {
		t.Errorf("mounts lack berth-init (ro) or the log dir: %+v", s.Mounts)
	}
	if s.Root.Readonly || s.Linux.Resources.Memory != nil || s.Linux.Resources.CPU != nil || s.Linux.Resources.Pids != nil {
		t.Errorf("limits set that were not asked for: %+v %+v", s.Root, s.Linux.Resources)
	}
}

func TestGenerateFromContainerSpec(t *testing.T) {
	cases := []struct {
		name  string
		mod   func(*BundleInput)
		check func(*testing.T, *specs.Spec)
	}{
		{"limits", func(in *BundleInput) {
			in.Spec.Memory, in.Spec.CPUs, in.Spec.PidsLimit, in.Spec.ReadOnly = 64<<20, 1.5, 100, true
		}, func(t *testing.T, s *specs.Spec) {
			r := s.Linux.Resources
			if *r.Memory.Limit != 64<<20 || *r.Memory.Swap != 64<<20 || *r.CPU.Quota != 150000 || *r.CPU.Period != 100000 || *r.Pids.Limit != 100 || !s.Root.Readonly {
				t.Errorf("resources %+v %+v %+v readonly %v", *r.Memory, *r.CPU, *r.Pids, s.Root.Readonly)
			}
		}},
		{"env overrides image env", func(in *BundleInput) { in.Spec.Env = []string{"PATH=/usr/bin", "X=1"} }, func(t *testing.T, s *specs.Spec) {
			if !slices.Equal(s.Process.Env, []string{"PATH=/usr/bin", "X=1"}) {
				t.Errorf("env %v", s.Process.Env)
			}
		}},
		{"non-root user switched by init", func(in *BundleInput) {
			in.Process.User = specs.User{UID: 1000, GID: 100, AdditionalGids: []uint32{5, 6}}
			in.Spec.CapDrop = []string{"ALL"}
		}, func(t *testing.T, s *specs.Spec) {
			a := strings.Join(s.Process.Args, " ")
			if !strings.Contains(a, "-u 1000 -g 100 -G 5,6 -D 6,7,8 -- sh") || s.Process.User.UID != 0 {
				t.Errorf("args %q user %+v", a, s.Process.User)
			}
			if !slices.Equal(s.Process.Capabilities.Bounding, []string{"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP"}) {
				t.Errorf("init capabilities %v", s.Process.Capabilities.Bounding)
			}
		}},
		{"no init", func(in *BundleInput) {
			in.Spec.NoInit = true
			in.Process.User = specs.User{UID: 1000, GID: 1000}
		}, func(t *testing.T, s *specs.Spec) {
			if !slices.Equal(s.Process.Args, []string{"sh"}) || s.Process.User.UID != 1000 || len(s.Process.Capabilities.Effective) != 0 {
				t.Errorf("args %q user %+v caps %+v", s.Process.Args, s.Process.User, s.Process.Capabilities)
			}
			for _, m := range s.Mounts {
				if m.Destination == initInContainer {
					t.Errorf("berth-init mounted without init")
				}
			}
		}},
		{"log caps", func(in *BundleInput) { in.Spec.Log = LogConfig{MaxSize: 4096, MaxFiles: 5} }, func(t *testing.T, s *specs.Spec) {
			if a := strings.Join(s.Process.Args, " "); !strings.Contains(a, "-s 4096 -n 5") {
				t.Errorf("args %q", a)
			}
		}},
		{"mounts appended", func(in *BundleInput) {
			in.Mounts = []specs.Mount{{Destination: "/data", Type: "bind", Source: "/v", Options: []string{"rbind", "ro"}}}
		}, func(t *testing.T, s *specs.Spec) {
			if m := s.Mounts[len(s.Mounts)-1]; m.Destination != "/data" {
				t.Errorf("last mount %+v", m)
			}
		}},
		{"labels become annotations", func(in *BundleInput) { in.Spec.Labels = map[string]string{"app": "web"}; in.Spec.Name = "w" }, func(t *testing.T, s *specs.Spec) {
			if s.Annotations["app"] != "web" || s.Annotations[annotationName] != "w" {
				t.Errorf("annotations %v", s.Annotations)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := genInput()
			tc.mod(&in)
			s, err := Generate(in)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, s)
		})
	}
}

func TestGenerateRefuses(t *testing.T) {
	for name, mod := range map[string]func(*BundleInput){
		"no id range":        func(in *BundleInput) { in.IDs = IDRange{} },
		"user outside map":   func(in *BundleInput) { in.Process.User.UID = 70000 },
		"no command":         func(in *BundleInput) { in.Process.Args = nil },
		"unknown capability": func(in *BundleInput) { in.Spec.CapAdd = []string{"CAP_FLY"} },
	} {
		in := genInput()
		mod(&in)
		if _, err := Generate(in); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestLogRecordsJoinPartialsAndSelect(t *testing.T) {
	var asm logAssembler
	var got []LogEntry
	for _, rec := range []string{
		"2026-01-01T00:00:00.000000001Z stdout P hel",
		"2026-01-01T00:00:00.000000002Z stderr F oops",
		"2026-01-01T00:00:00.000000003Z stdout F lo",
		"garbage",
		"2026-01-01T00:00:01Z stdout F ",
		"2026-01-01T00:00:02Z stdout F with  spaces ",
	} {
		if e, ok := asm.add([]byte(rec)); ok {
			got = append(got, e)
		}
	}
	lines := func(es []LogEntry) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.Stream+":"+string(e.Line))
		}
		return out
	}
	if want := []string{"stderr:oops", "stdout:hello", "stdout:", "stdout:with  spaces "}; !slices.Equal(lines(got), want) {
		t.Fatalf("entries %q, want %q", lines(got), want)
	}
	if got[1].Time.Nanosecond() != 1 {
		t.Errorf("a joined line keeps its first part's time: %v", got[1].Time)
	}
	since := time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC)
	if s := lines(SelectLogs(got, LogOptions{Tail: -1, Since: since})); len(s) != 2 {
		t.Errorf("since: %q", s)
	}
	if s := lines(SelectLogs(got, LogOptions{Tail: 1})); !slices.Equal(s, []string{"stdout:with  spaces "}) {
		t.Errorf("tail 1: %q", s)
	}
	if s := SelectLogs(got, LogOptions{Tail: 0}); len(s) != 0 {
		t.Errorf("tail 0: %d entries", len(s))
	}
}

func TestNextHealth(t *testing.T) {
	hc := HealthCheck{Retries: 2}
	ok, bad := HealthProbe{ExitCode: 0}, HealthProbe{ExitCode: 1}
	h := HealthState{Status: "starting"}
	h = NextHealth(h, hc, bad, true)
	if h.Status != "starting" || h.FailingStreak != 0 {
		t.Fatalf("failure in start period counted: %+v", h)
	}
	h = NextHealth(h, hc, bad, false)
	if h.Status != "starting" || h.FailingStreak != 1 {
		t.Fatalf("one failure: %+v", h)
	}
	h = NextHealth(h, hc, bad, false)
	if h.Status != "unhealthy" {
		t.Fatalf("two failures: %+v", h)
	}
	h = NextHealth(h, hc, ok, false)
	if h.Status != "healthy" || h.FailingStreak != 0 {
		t.Fatalf("success: %+v", h)
	}
	for range 10 {
		h = NextHealth(h, hc, ok, false)
	}
	if len(h.Log) != 5 {
		t.Fatalf("log keeps %d probes, want 5", len(h.Log))
	}
}

func TestReconcileDecide(t *testing.T) {
	cases := []struct {
		meta, wasRunning bool
		status           runtime.Status
		want             ReconcileAction
	}{
		{false, false, "", ActCleanup},
		{false, true, runtime.Running, ActCleanup},
		{true, true, runtime.Running, ActAdopt},
		{true, false, runtime.Paused, ActAdopt},
		{true, true, runtime.Stopped, ActRecordExit},
		{true, true, "", ActRecordExit},
		{true, false, runtime.Created, ActRecordExit},
		{true, false, "", ActKeep},
	}
	for _, tc := range cases {
		if got := Decide(tc.meta, tc.wasRunning, tc.status); got != tc.want {
			t.Errorf("%+v: %s", tc, got)
		}
	}
}

func TestParseNetDev(t *testing.T) {
	s := `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    1500      10    0    0    0     0          0         0      700       5    0    0    0     0       0          0
  eth1:      10       1    0    0    0     0          0         0       20       1    0    0    0     0       0          0
`
	if rx, tx := ParseNetDev(s); rx != 1510 || tx != 720 {
		t.Fatalf("rx %d tx %d", rx, tx)
	}
}

package agent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

func testInstance() *api.Instance {
	return &api.Instance{Meta: api.Meta{Name: "web-abc", Tenant: "shop"}, Spec: api.InstanceSpec{
		Service: "web", Node: "n1", Desired: api.DesiredRunning, TemplateHash: "h1",
		Template: api.Template{
			Image: "busybox", Command: []string{"sleep", "1000"}, Env: map[string]string{"B": "2", "A": "1"},
			Resources: api.Resources{CPU: 250, Memory: 64 << 20}, Restart: api.RestartAlways,
			Labels: map[string]string{"app": "web"},
			Ports:  []api.Port{{Port: 80}, {Port: 8080, HostPort: 18080, Protocol: "tcp"}},
			Health: &api.HealthCheck{Command: []string{"true"}, Interval: api.Duration(2 * time.Second), Retries: 2},
		}}}
}

func TestInstanceSpecCarriesTheTemplate(t *testing.T) {
	s, err := InstanceSpec(testInstance(), "n1", "pool")
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "shop_web-abc" || s.Image != "busybox" || s.Tenant != "shop" || s.Network != "pool" {
		t.Errorf("identity: %+v", s)
	}
	if !slices.Equal(s.Cmd, []string{"sleep", "1000"}) || s.Entrypoint != nil {
		t.Errorf("cmd %q entrypoint %q", s.Cmd, s.Entrypoint)
	}
	if !slices.Equal(s.Env, []string{"A=1", "B=2"}) {
		t.Errorf("env %q: want sorted", s.Env)
	}
	if s.CPUs != 0.25 || s.Memory != 64<<20 {
		t.Errorf("resources: cpus %v memory %d", s.CPUs, s.Memory)
	}
	if s.Restart.Name != "no" {
		t.Errorf("restart %q: the control plane owns restarts", s.Restart.Name)
	}
	want := map[string]string{"app": "web", LabelNode: "n1", LabelTenant: "shop", LabelInstance: "web-abc", LabelTemplate: "h1"}
	for k, v := range want {
		if s.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, s.Labels[k], v)
		}
	}
	if !slices.Equal(s.Ports, []PortMapping{{HostPort: 18080, ContainerPort: 8080, Proto: "tcp"}}) {
		t.Errorf("ports %+v: only host ports are published", s.Ports)
	}
	if h := s.Health; h == nil || !slices.Equal(h.Cmd, []string{"true"}) || h.Interval != 2*time.Second || h.Retries != 2 {
		t.Errorf("health %+v", s.Health)
	}
	in := testInstance()
	in.Spec.Template.Command = nil
	if s, _ := InstanceSpec(in, "n1", "pool"); s.Cmd != nil {
		t.Errorf("no command: cmd %q, want the image's (nil)", s.Cmd)
	}
}

func TestInstanceSpecRejectsWhatCannotRun(t *testing.T) {
	for name, tc := range map[string]struct {
		mod     func(*api.Instance)
		network string
		want    string
	}{
		"host port without network": {func(*api.Instance) {}, "none", "ports[1]: host port 18080 needs a network"},
		"tiny memory":               {func(in *api.Instance) { in.Spec.Template.Resources.Memory = 1 << 20 }, "pool", "memory 1048576: the minimum is 6 MiB"},
		"no image":                  {func(in *api.Instance) { in.Spec.Template.Image = "" }, "pool", "image: is empty"},
		"bad env":                   {func(in *api.Instance) { in.Spec.Template.Env[""] = "x" }, "pool", "has no name"},
		"bad health":                {func(in *api.Instance) { in.Spec.Template.Health.Port = 80 }, "pool", "health: set exactly one"},
	} {
		t.Run(name, func(t *testing.T) {
			in := testInstance()
			tc.mod(in)
			_, err := InstanceSpec(in, "n1", tc.network)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

func TestInstanceStatusFromContainer(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	end := start.Add(time.Minute)
	run := Container{State: State{Status: StatusRunning, StartedAt: start, Pid: 7,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.1.0.5/24")}, Health: &HealthState{Status: "unhealthy"}}}
	got := InstanceStatus(run, 3)
	want := api.InstanceStatus{Phase: api.PhaseRunning, StartedAt: start, Restarts: 3, IP: netip.MustParseAddr("10.1.0.5"), Health: api.HealthUnhealthy}
	if got != want {
		t.Errorf("running: %+v, want %+v", got, want)
	}
	run.State.Health.Status = "starting"
	if got := InstanceStatus(run, 0); got.Health != api.HealthUnknown {
		t.Errorf("starting health reported as %q", got.Health)
	}
	oom := Container{State: State{Status: StatusExited, StartedAt: start, FinishedAt: end, ExitCode: 137, OOMKilled: true}}
	got = InstanceStatus(oom, 1)
	want = api.InstanceStatus{Phase: api.PhaseExited, StartedAt: start, FinishedAt: end, ExitCode: 137, Restarts: 1, Reason: "OOMKilled"}
	if got != want {
		t.Errorf("oom: %+v, want %+v", got, want)
	}
	if got := InstanceStatus(Container{State: State{Status: StatusExited, ExitCode: 3}}, 0); got.Reason != "exited with code 3" {
		t.Errorf("exit reason %q", got.Reason)
	}
	if got := InstanceStatus(Container{State: State{Status: StatusCreated}}, 0); got.Phase != api.PhasePlaced {
		t.Errorf("created: phase %q", got.Phase)
	}
}

func TestSameStatusComparesInstants(t *testing.T) {
	now := time.Now()
	a := api.InstanceStatus{Phase: api.PhaseRunning, StartedAt: now, Restarts: 1}
	b := a
	b.StartedAt = now.Round(0).In(time.FixedZone("x", 3600))
	b.CrashLoop, b.ObservedNode = true, "n1"
	if !SameStatus(a, b) {
		t.Error("the same instant in another zone, or the control plane's annotations, made a difference")
	}
	b.Restarts = 2
	if SameStatus(a, b) {
		t.Error("restarts differ but the statuses are the same")
	}
}

func TestDecideInstance(t *testing.T) {
	c := func(st Status, hash string, byUser bool) *Container {
		return &Container{Spec: ContainerSpec{Labels: map[string]string{LabelTemplate: hash}}, State: State{Status: st, StoppedByUser: byUser}}
	}
	for name, tc := range map[string]struct {
		desired string
		gen     int
		have    *Container
		acted   int
		want    NodeAction
	}{
		"new":                        {api.DesiredRunning, 0, nil, 0, ActCreate},
		"running as wanted":          {api.DesiredRunning, 0, c(StatusRunning, "h1", false), 0, ActNone},
		"exited, no restart asked":   {api.DesiredRunning, 0, c(StatusExited, "h1", false), 0, ActNone},
		"exited, restart asked":      {api.DesiredRunning, 1, c(StatusExited, "h1", false), 0, ActStart},
		"restart already done":       {api.DesiredRunning, 1, c(StatusExited, "h1", false), 1, ActNone},
		"running, restart asked":     {api.DesiredRunning, 2, c(StatusRunning, "h1", false), 1, ActRestart},
		"other template":             {api.DesiredRunning, 0, c(StatusRunning, "h0", false), 0, ActReplace},
		"created":                    {api.DesiredRunning, 0, c(StatusCreated, "h1", false), 0, ActStart},
		"stopped, wanted again":      {api.DesiredRunning, 1, c(StatusExited, "h1", true), 0, ActStart},
		"killed by a user":           {api.DesiredRunning, 0, c(StatusExited, "h1", true), 0, ActNone},
		"stop asked":                 {api.DesiredStopped, 0, c(StatusRunning, "h1", false), 0, ActStop},
		"stop asked, already exited": {api.DesiredStopped, 0, c(StatusExited, "h1", false), 0, ActNone},
		"stop asked, no container":   {api.DesiredStopped, 0, nil, 0, ActNone},
	} {
		in := testInstance()
		in.Spec.Desired, in.Spec.RestartGeneration = tc.desired, tc.gen
		if got := DecideInstance(in, tc.have, tc.acted); got != tc.want {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
	}
}

func TestInstanceSpecMapsTheRunFlags(t *testing.T) {
	in := testInstance()
	tp := &in.Spec.Template
	tp.Entrypoint = []string{"/bin/sh", "-c"}
	tp.User, tp.Workdir, tp.ReadOnly = "1000:1000", "/srv", true
	tp.CapAdd, tp.CapDrop = []string{"NET_ADMIN"}, []string{"CHOWN"}
	tp.PidsLimit, tp.NoInit = 64, false
	tp.TTY, tp.Stdin = true, true
	tp.Mounts = []api.Mount{{Type: api.MountVolume, Source: "data", Target: "/data"}, {Type: api.MountBind, Source: "/etc", Target: "/host-etc", ReadOnly: true}}
	s, err := InstanceSpec(in, "n1", "pool")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Entrypoint, []string{"/bin/sh", "-c"}) || s.User != "1000:1000" || s.Workdir != "/srv" || !s.ReadOnly {
		t.Errorf("process: %+v", s)
	}
	if !slices.Equal(s.CapAdd, []string{"NET_ADMIN"}) || !slices.Equal(s.CapDrop, []string{"CHOWN"}) || s.PidsLimit != 64 {
		t.Errorf("confinement: add %q drop %q pids %d", s.CapAdd, s.CapDrop, s.PidsLimit)
	}
	if !s.TTY || !s.Stdin || s.NoInit {
		t.Errorf("tty %v stdin %v noInit %v", s.TTY, s.Stdin, s.NoInit)
	}
	// A tenant's volume is its own: another tenant's "data" is another.
	want := []Mount{{Type: "volume", Source: "shop_data", Target: "/data"}, {Type: "bind", Source: "/etc", Target: "/host-etc", ReadOnly: true}}
	if !slices.Equal(s.Mounts, want) {
		t.Errorf("mounts %+v, want %+v", s.Mounts, want)
	}

	in = testInstance()
	in.Spec.Template.Network = "none"
	in.Spec.Template.Ports = nil
	if s, err := InstanceSpec(in, "n1", "pool"); err != nil || s.Network != "none" {
		t.Errorf("template network none on a pool node: network %q err %v", s.Network, err)
	}
	in.Spec.Template.NoInit = true
	if s, err := InstanceSpec(in, "n1", "pool"); err != nil || !s.NoInit {
		t.Errorf("noInit: %v %v", s.NoInit, err)
	}
	in.Spec.Template.TTY = true
	if _, err := InstanceSpec(in, "n1", "pool"); err == nil || !strings.Contains(err.Error(), "tty/stdin: need Berth's init") {
		t.Errorf("tty without init: %v", err)
	}
}

func TestDecideHandoff(t *testing.T) {
	now := time.Unix(1000, 0)
	grace := 2 * time.Second
	elsewhere := &api.FabricEndpoint{Node: "b", Ready: true}
	for _, c := range []struct {
		name       string
		e          *api.FabricEndpoint
		running    bool
		readySince time.Time
		want       Handoff
	}{
		{"deleted", nil, true, time.Time{}, HandoffRemove},
		{"wanted stopped", &api.FabricEndpoint{Node: "b", Stopped: true}, true, time.Time{}, HandoffRemove},
		{"not running here", &api.FabricEndpoint{Node: ""}, false, time.Time{}, HandoffRemove},
		{"unplaced", &api.FabricEndpoint{Node: ""}, true, time.Time{}, HandoffKeep},
		{"placed, not ready", &api.FabricEndpoint{Node: "b"}, true, time.Time{}, HandoffKeep},
		{"back here", &api.FabricEndpoint{Node: "a"}, true, time.Time{}, HandoffBack},
		{"ready, just seen", elsewhere, true, time.Time{}, HandoffWait},
		{"ready, within grace", elsewhere, true, now.Add(-time.Second), HandoffWait},
		{"ready, grace over", elsewhere, true, now.Add(-grace), HandoffRemove},
	} {
		if got := DecideHandoff(c.e, "a", c.running, c.readySince, now, grace); got != c.want {
			t.Errorf("%s: got %d, want %d", c.name, got, c.want)
		}
	}
}

func TestSettleUntilHoldsAFreshRunningReportAndAHandedOnExit(t *testing.T) {
	start := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	running := api.InstanceStatus{Phase: api.PhaseRunning, StartedAt: start}
	exited := api.InstanceStatus{Phase: api.PhaseExited, StartedAt: start, FinishedAt: start.Add(time.Millisecond)}
	restarted := api.InstanceStatus{Phase: api.PhaseRunning, StartedAt: start.Add(time.Second)}
	placed := api.InstanceStatus{Phase: api.PhasePlaced}
	for _, c := range []struct {
		name     string
		st       api.InstanceStatus
		reported *api.InstanceStatus
		want     time.Time
	}{
		{"first running", running, nil, start.Add(runningSettle)},
		{"running after placed", running, &placed, start.Add(runningSettle)},
		{"running again", running, &running, time.Time{}},
		{"running with a new health", api.InstanceStatus{Phase: api.PhaseRunning, StartedAt: start, Health: api.HealthHealthy}, &running, time.Time{}},
		{"restarted", restarted, &running, restarted.StartedAt.Add(runningSettle)},
		{"exited", exited, nil, time.Time{}},
		{"exited after running", exited, &running, time.Time{}},
	} {
		if got := SettleUntil(c.st, c.reported, false); !got.Equal(c.want) {
			t.Errorf("%s: SettleUntil = %v, want %v", c.name, got, c.want)
		}
	}
	// An exit a follower took (and removes the instance after) waits;
	// what it ran to before is no matter.
	if got := SettleUntil(exited, &running, true); !got.Equal(exited.FinishedAt.Add(followedSettle)) {
		t.Errorf("handed-on exit: SettleUntil = %v", got)
	}
	if got := SettleUntil(running, nil, true); !got.Equal(start.Add(runningSettle)) {
		t.Errorf("running, handed on: SettleUntil = %v", got)
	}
}

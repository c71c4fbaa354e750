package reconcile

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

func svc(replicas, par int, image string) *api.Service {
	return &api.Service{Meta: api.Meta{Name: "web", Tenant: "t"}, Spec: api.ServiceSpec{Replicas: replicas, Parallelism: par, Template: api.Template{Image: image}}}
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func inst(name, image, phase, health string) *api.Instance {
	t := api.Template{Image: image}
	return &api.Instance{Meta: api.Meta{Name: name, Tenant: "t"}, Spec: api.InstanceSpec{Service: "web", Template: t, TemplateHash: t.Hash(), Node: "n"},
		Status: api.InstanceStatus{Phase: phase, Health: health, IP: netip.MustParseAddr("10.0.0.1")}}
}

func with(in *api.Instance, f func(*api.Instance)) *api.Instance {
	f(in)
	return in
}

func retiring(in *api.Instance, at time.Time) *api.Instance {
	return with(in, func(in *api.Instance) { in.Spec.StopAt = at })
}

func grace(d time.Duration) *api.Duration {
	g := api.Duration(d)
	return &g
}

func TestService(t *testing.T) {
	run, ok := api.PhaseRunning, api.HealthHealthy
	g2 := t0.Add(api.DefaultStopGracePeriod)
	checked := func(image string) *api.Service {
		s := svc(3, 1, image)
		s.Spec.Template.Health = &api.HealthCheck{Command: []string{"true"}}
		return s
	}
	checkedInst := func(name, image, health string) *api.Instance {
		in := inst(name, image, run, health)
		in.Spec.Template = checked(image).Spec.Template
		in.Spec.TemplateHash = in.Spec.Template.Hash()
		return in
	}
	cases := []struct {
		name    string
		svc     *api.Service
		ins     []*api.Instance
		now     time.Time
		create  int
		retire  map[string]time.Time
		del     []string
		rollout string
	}{
		{"scale up from nothing", svc(3, 1, "v1"), nil, t0, 3, nil, nil, api.RolloutProgressing},
		{"steady", svc(2, 1, "v1"), []*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok)}, t0, 0, nil, nil, api.RolloutComplete},
		{"scale in deletes what does not serve at once", svc(1, 1, "v1"), []*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", api.PhasePending, "")}, t0,
			0, nil, []string{"b"}, api.RolloutComplete},
		{"scale in retires serving instances for the grace period", svc(1, 1, "v1"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("c", "v1", run, ok)}, t0,
			0, map[string]time.Time{"b": g2, "c": g2}, nil, api.RolloutComplete},
		{"the instance's own grace period", svc(0, 1, "v1"),
			[]*api.Instance{with(inst("a", "v1", run, ok), func(in *api.Instance) { in.Spec.Template.StopGracePeriod = grace(30 * time.Second) })}, t0,
			0, map[string]time.Time{"a": t0.Add(30 * time.Second)}, nil, api.RolloutComplete},
		{"a zero grace period deletes at once", svc(0, 1, "v1"),
			[]*api.Instance{with(inst("a", "v1", run, ok), func(in *api.Instance) { in.Spec.Template.StopGracePeriod = grace(0) })}, t0,
			0, nil, []string{"a"}, api.RolloutComplete},
		{"retiring instances count toward nothing", svc(2, 1, "v1"),
			[]*api.Instance{inst("a", "v1", run, ok), retiring(inst("b", "v1", run, ok), t0.Add(time.Second))}, t0,
			1, nil, nil, api.RolloutProgressing},
		{"a retiring instance stays until its deadline", svc(0, 1, "v1"),
			[]*api.Instance{retiring(inst("b", "v1", run, ok), t0.Add(time.Second))}, t0.Add(time.Second - 1),
			0, nil, nil, api.RolloutComplete},
		{"and is deleted when it passes", svc(0, 1, "v1"),
			[]*api.Instance{retiring(inst("b", "v1", run, ok), t0.Add(time.Second))}, t0.Add(time.Second),
			0, nil, []string{"b"}, api.RolloutComplete},
		{"rolling update adds parallelism new instances first", svc(3, 2, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("c", "v1", run, ok)}, t0, 2, nil, nil, api.RolloutProgressing},
		{"waits for new instances to be ready", svc(3, 1, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("c", "v1", run, ok), inst("n1", "v2", api.PhasePlaced, "")}, t0,
			0, nil, nil, api.RolloutProgressing},
		{"a new instance with a health check waits for its first pass", checked("v2"),
			[]*api.Instance{checkedInst("a", "v1", ok), checkedInst("b", "v1", ok), checkedInst("c", "v1", ok), checkedInst("n1", "v2", "")}, t0,
			0, nil, nil, api.RolloutProgressing},
		{"an old instance retires once a new one is ready", svc(3, 1, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("c", "v1", run, ok), inst("n1", "v2", run, ok)}, t0,
			0, map[string]time.Time{"c": g2}, nil, api.RolloutProgressing},
		{"and its replacement is made without waiting for it", svc(3, 1, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), retiring(inst("c", "v1", run, ok), g2), inst("n1", "v2", run, ok)}, t0,
			1, nil, nil, api.RolloutProgressing},
		{"old instances that do not serve go first, at once", svc(2, 1, "v2"),
			[]*api.Instance{inst("a", "v1", api.PhaseExited, ""), inst("b", "v1", run, ok), inst("n1", "v2", run, ok)}, t0,
			0, nil, []string{"a"}, api.RolloutProgressing},
		{"stops when a new instance is unhealthy", svc(3, 1, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("c", "v1", run, ok), inst("n1", "v2", run, api.HealthUnhealthy)}, t0,
			0, nil, nil, api.RolloutFailed},
		{"a stopped rollout scaled in keeps the failing instance", svc(1, 1, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("c", "v1", run, ok), inst("n1", "v2", run, api.HealthUnhealthy)}, t0,
			0, map[string]time.Time{"b": g2, "c": g2}, nil, api.RolloutFailed},
		{"scale in retires the old template first", svc(2, 1, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("n1", "v2", run, ok), inst("n2", "v2", run, ok)}, t0,
			0, map[string]time.Time{"a": g2}, nil, api.RolloutComplete},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Service(tc.svc, tc.ins, nil, tc.now)
			if p.Create != tc.create || !reflect.DeepEqual(p.Retire, tc.retire) || !reflect.DeepEqual(p.Delete, tc.del) || p.Status.Rollout != tc.rollout {
				t.Fatalf("got create %d retire %v delete %v rollout %q (%s), want %d %v %v %q",
					p.Create, p.Retire, p.Delete, p.Status.Rollout, p.Status.Message, tc.create, tc.retire, tc.del, tc.rollout)
			}
		})
	}
}

func TestServiceStatusCountsAfterThePlan(t *testing.T) {
	run, ok := api.PhaseRunning, api.HealthHealthy
	p := Service(svc(1, 1, "v1"), []*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("c", "v1", api.PhasePlaced, ""),
		retiring(inst("d", "v1", run, ok), t0.Add(time.Second))}, nil, t0)
	want := api.ServiceStatus{Replicas: 1, Ready: 1, Updated: 1, Retiring: 2, TemplateHash: svc(1, 1, "v1").Spec.Template.Hash(), Rollout: api.RolloutComplete}
	p.Status.Stable = nil
	if p.Status != want {
		t.Fatalf("status %+v, want %+v", p.Status, want)
	}
}

// A rolling update driven step by step, new instances becoming ready one
// at a time, never leaves fewer than Replicas endpoints and ends with
// every instance on the new template and the old ones gone after their
// grace period.
func TestRollingUpdateNeverShrinksTheEndpoints(t *testing.T) {
	for _, want := range []int{1, 2, 5} {
		for _, par := range []int{1, 2, 3} {
			t.Run(fmt.Sprintf("replicas %d parallelism %d", want, par), func(t *testing.T) {
				s := svc(want, par, "v1")
				var ins []*api.Instance
				for i := range want {
					ins = append(ins, inst(fmt.Sprintf("old-%d", i), "v1", api.PhaseRunning, api.HealthHealthy))
				}
				s.Spec.Template.Image = "v2"
				now, seq := t0, 0
				for step := 0; ; step++ {
					if step > 100 {
						t.Fatalf("no end after %d steps: %d instances", step, len(ins))
					}
					p := Service(s, ins, nil, now)
					if p.Status.Rollout == api.RolloutComplete && len(ins) == want {
						break
					}
					var next []*api.Instance
					for _, in := range ins {
						if slices.Contains(p.Delete, in.Name) {
							continue
						}
						if at, ok := p.Retire[in.Name]; ok {
							in = retiring(copyOf(in), at)
						}
						next = append(next, in)
					}
					for range p.Create {
						seq++
						next = append(next, inst(fmt.Sprintf("new-%d", seq), "v2", api.PhasePending, ""))
					}
					ins = next
					if n := len(Endpoints(s, ins)); n < want {
						t.Fatalf("step %d: %d endpoints, want at least %d", step, n, want)
					}
					// The "agent" starts one new instance; time passes.
					for _, in := range ins {
						if in.Status.Phase == api.PhasePending {
							in.Status.Phase, in.Status.Health = api.PhaseRunning, api.HealthHealthy
							break
						}
					}
					now = now.Add(time.Second)
				}
				for _, in := range ins {
					if in.Spec.Template.Image != "v2" || Retiring(in) {
						t.Fatalf("left %s (%s, stopAt %v)", in.Name, in.Spec.Template.Image, in.Spec.StopAt)
					}
				}
			})
		}
	}
}

func TestDrain(t *testing.T) {
	run, ok := api.PhaseRunning, api.HealthHealthy
	on := func(node string, in *api.Instance) *api.Instance { in.Spec.Node = node; return in }
	drain := map[string]bool{"d": true}
	g2 := t0.Add(api.DefaultStopGracePeriod)
	cases := []struct {
		name   string
		ins    []*api.Instance
		create int
		retire map[string]time.Time
		del    []string
	}{
		{"replaced at once", []*api.Instance{on("d", inst("a", "v1", run, ok)), on("d", inst("b", "v1", run, ok))}, 2, nil, nil},
		{"surplus on a draining node goes first", []*api.Instance{on("d", inst("a", "v1", run, ok)), on("d", inst("b", "v1", run, ok)), inst("c", "v1", run, ok)}, 1,
			map[string]time.Time{"b": g2}, nil},
		{"kept while its replacement starts", []*api.Instance{on("d", inst("a", "v1", run, ok)), inst("b", "v1", run, ok), inst("c", "v1", api.PhasePlaced, "")}, 0, nil, nil},
		{"retired once its replacement serves", []*api.Instance{on("d", inst("a", "v1", run, ok)), inst("b", "v1", run, ok), inst("c", "v1", run, ok)}, 0,
			map[string]time.Time{"a": g2}, nil},
		{"deleted at once when it does not serve", []*api.Instance{on("d", inst("a", "v1", api.PhaseExited, "")), inst("b", "v1", run, ok)}, 1, nil, []string{"a"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Service(svc(2, 1, "v1"), tc.ins, drain, t0)
			if p.Create != tc.create || !reflect.DeepEqual(p.Retire, tc.retire) || !reflect.DeepEqual(p.Delete, tc.del) {
				t.Fatalf("got create %d retire %v delete %v, want %d %v %v", p.Create, p.Retire, p.Delete, tc.create, tc.retire, tc.del)
			}
		})
	}
	// Driven step by step, a drain of every instance never leaves fewer
	// than Replicas endpoints, and ends with none on the drained node.
	ins := []*api.Instance{on("d", inst("a", "v1", run, ok)), on("d", inst("b", "v1", run, ok)), on("d", inst("c", "v1", run, ok))}
	now, seq := t0, 0
	for step := 0; len(ins) != 3 || slices.ContainsFunc(ins, func(in *api.Instance) bool { return in.Spec.Node == "d" }); step++ {
		if step > 50 {
			t.Fatalf("drain did not end: %d instances", len(ins))
		}
		p := Service(svc(3, 1, "v1"), ins, drain, now)
		var next []*api.Instance
		for _, in := range ins {
			if slices.Contains(p.Delete, in.Name) {
				continue
			}
			if at, ok := p.Retire[in.Name]; ok {
				in = retiring(copyOf(in), at)
			}
			next = append(next, in)
		}
		for range p.Create {
			seq++
			next = append(next, inst(fmt.Sprintf("new-%d", seq), "v1", api.PhasePending, ""))
		}
		ins = next
		if n := len(Endpoints(svc(3, 1, "v1"), ins)); n < 3 {
			t.Fatalf("step %d: %d endpoints, want at least 3", step, n)
		}
		for _, in := range ins {
			if in.Status.Phase == api.PhasePending {
				in.Status.Phase, in.Status.Health = api.PhaseRunning, api.HealthHealthy
				break
			}
		}
		now = now.Add(time.Second)
	}
}

func copyOf(in *api.Instance) *api.Instance {
	c := *in
	return &c
}

func TestEndpoints(t *testing.T) {
	run, ok := api.PhaseRunning, api.HealthHealthy
	s := svc(3, 1, "v1")
	ports := []api.Port{{Port: 8080}}
	checked := api.Template{Image: "v1", Health: &api.HealthCheck{Port: 8080}}
	ins := []*api.Instance{
		with(inst("b", "v1", run, ok), func(in *api.Instance) { in.Spec.Template.Ports = ports; in.Status.IP = netip.MustParseAddr("10.0.0.2") }),
		inst("a", "v1", run, ""),
		retiring(inst("retiring", "v1", run, ok), t0),
		inst("unhealthy", "v1", run, api.HealthUnhealthy),
		with(inst("starting", "v1", run, ""), func(in *api.Instance) { in.Spec.Template = checked }),
		with(inst("checked", "v1", run, ok), func(in *api.Instance) { in.Spec.Template = checked }),
		inst("placed", "v1", api.PhasePlaced, ""),
		with(inst("no-ip", "v1", run, ok), func(in *api.Instance) { in.Status.IP = netip.Addr{} }),
		with(inst("stopped", "v1", run, ok), func(in *api.Instance) { in.Spec.Desired = api.DesiredStopped }),
		with(inst("other-service", "v1", run, ok), func(in *api.Instance) { in.Spec.Service = "db" }),
		with(inst("other-tenant", "v1", run, ok), func(in *api.Instance) { in.Tenant = "u" }),
	}
	ip := netip.MustParseAddr("10.0.0.1")
	want := []api.Endpoint{
		{Instance: "a", Node: "n", IP: ip},
		{Instance: "b", Node: "n", IP: netip.MustParseAddr("10.0.0.2"), Ports: ports},
		{Instance: "checked", Node: "n", IP: ip},
	}
	if got := Endpoints(s, ins); !reflect.DeepEqual(got, want) {
		t.Fatalf("endpoints\n got %+v\nwant %+v", got, want)
	}
	if got := Endpoints(s, nil); got == nil || len(got) != 0 {
		t.Fatalf("no instances: got %#v, want an empty list", got)
	}
}

func TestHealth(t *testing.T) {
	exited := func(code, restarts int, policy string, ran time.Duration) *api.Instance {
		return &api.Instance{Spec: api.InstanceSpec{Node: "n", RestartGeneration: restarts, Template: api.Template{Restart: policy}},
			Status: api.InstanceStatus{Phase: api.PhaseExited, ExitCode: code, Restarts: restarts, StartedAt: t0.Add(-ran), FinishedAt: t0}}
	}
	cases := []struct {
		name string
		in   *api.Instance
		now  time.Time
		ok   bool
		want HealthAction
	}{
		{"never", exited(1, 0, api.RestartNever, time.Hour), t0.Add(time.Hour), false, HealthAction{}},
		{"on-failure, clean exit", exited(0, 0, api.RestartOnFailure, time.Hour), t0.Add(time.Hour), false, HealthAction{}},
		{"first restart waits the base back-off", exited(1, 0, api.RestartAlways, time.Hour), t0.Add(500 * time.Millisecond), true, HealthAction{At: t0.Add(time.Second)}},
		{"restart after back-off", exited(1, 0, api.RestartAlways, time.Hour), t0.Add(time.Second), true, HealthAction{Restart: true, At: t0.Add(time.Second)}},
		{"back-off doubles", exited(1, 3, "", time.Hour), t0.Add(7 * time.Second), true, HealthAction{At: t0.Add(8 * time.Second)}},
		{"back-off is capped", exited(1, 12, "", time.Hour), t0.Add(time.Minute), true, HealthAction{Restart: true, At: t0.Add(time.Minute)}},
		{"quick deaths are a crash loop", exited(1, 5, "", time.Second), t0.Add(time.Minute), true, HealthAction{Restart: true, At: t0.Add(32 * time.Second), CrashLoop: true}},
		{"retiring", func() *api.Instance { i := exited(1, 0, "", time.Hour); i.Spec.StopAt = t0; return i }(), t0.Add(time.Hour), false, HealthAction{}},
		{"restart already asked for", func() *api.Instance { i := exited(1, 2, "", time.Hour); i.Spec.RestartGeneration = 3; return i }(), t0.Add(time.Hour), false, HealthAction{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Health(tc.in, tc.now)
			if ok != tc.ok || got != tc.want {
				t.Fatalf("got %+v %v, want %+v %v", got, ok, tc.want, tc.ok)
			}
		})
	}
	unhealthy := &api.Instance{Spec: api.InstanceSpec{Node: "n"}, Status: api.InstanceStatus{Phase: api.PhaseRunning, Health: api.HealthUnhealthy}}
	if a, ok := Health(unhealthy, t0); !ok || a.At != t0.Add(time.Second) {
		t.Fatal(fmt.Sprint("unhealthy instance not scheduled for restart: ", a, ok))
	}
}

func TestRemovable(t *testing.T) {
	base := func(f func(*api.Instance)) *api.Instance {
		in := &api.Instance{Spec: api.InstanceSpec{AutoRemove: true, Node: "n1", Template: api.Template{Restart: api.RestartNever}},
			Status: api.InstanceStatus{Phase: api.PhaseExited}}
		f(in)
		return in
	}
	for _, tc := range []struct {
		name string
		in   *api.Instance
		want bool
	}{
		{"exited", base(func(*api.Instance) {}), true},
		{"failed to start", base(func(in *api.Instance) { in.Status.Phase = api.PhaseFailed }), true},
		{"running", base(func(in *api.Instance) { in.Status.Phase = api.PhaseRunning }), false},
		{"not auto-removed", base(func(in *api.Instance) { in.Spec.AutoRemove = false }), false},
		{"never placed", base(func(in *api.Instance) { in.Spec.Node = ""; in.Status.Phase = api.PhasePending }), false},
		{"restart requested", base(func(in *api.Instance) { in.Spec.RestartGeneration = 1 }), false},
		{"lost with its node", base(func(in *api.Instance) { in.Status.Phase = api.PhaseLost }), false},
	} {
		if got := Removable(tc.in); got != tc.want {
			t.Errorf("%s: Removable = %v, want %v", tc.name, got, tc.want)
		}
	}
}

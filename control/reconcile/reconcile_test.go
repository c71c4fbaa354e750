package reconcile

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

func svc(replicas, par int, image string) *api.Service {
	return &api.Service{Meta: api.Meta{Name: "web", Tenant: "t"}, Spec: api.ServiceSpec{Replicas: replicas, Parallelism: par, Template: api.Template{Image: image}}}
}

func inst(name, image, phase, health string) *api.Instance {
	t := api.Template{Image: image}
	return &api.Instance{Meta: api.Meta{Name: name}, Spec: api.InstanceSpec{Template: t, TemplateHash: t.Hash(), Node: "n"},
		Status: api.InstanceStatus{Phase: phase, Health: health}}
}

func TestService(t *testing.T) {
	run, ok := api.PhaseRunning, api.HealthHealthy
	cases := []struct {
		name    string
		svc     *api.Service
		ins     []*api.Instance
		create  int
		del     []string
		rollout string
	}{
		{"scale up from nothing", svc(3, 1, "v1"), nil, 3, nil, api.RolloutProgressing},
		{"steady", svc(2, 1, "v1"), []*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok)}, 0, nil, api.RolloutComplete},
		{"scale down removes not-ready first", svc(1, 1, "v1"), []*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", api.PhasePending, "")}, 0, []string{"b"}, api.RolloutProgressing},
		{"rolling update replaces parallelism at a time", svc(3, 2, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("c", "v1", run, ok)}, 2, []string{"c", "b"}, api.RolloutProgressing},
		{"waits for new instances to be ready", svc(3, 1, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("n1", "v2", api.PhasePlaced, "")}, 0, nil, api.RolloutProgressing},
		{"continues once ready", svc(3, 1, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("n1", "v2", run, ok)}, 1, []string{"b"}, api.RolloutProgressing},
		{"stops when a new instance is unhealthy", svc(3, 1, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("b", "v1", run, ok), inst("n1", "v2", run, api.HealthUnhealthy)}, 0, nil, api.RolloutFailed},
		{"scale down removes old template first", svc(2, 1, "v2"),
			[]*api.Instance{inst("a", "v1", run, ok), inst("n1", "v2", run, ok), inst("n2", "v2", run, ok)}, 0, []string{"a"}, api.RolloutProgressing},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Service(tc.svc, tc.ins)
			if p.Create != tc.create || !reflect.DeepEqual(p.Delete, tc.del) || p.Status.Rollout != tc.rollout {
				t.Fatalf("got create %d delete %v rollout %q (%s), want %d %v %q", p.Create, p.Delete, p.Status.Rollout, p.Status.Message, tc.create, tc.del, tc.rollout)
			}
		})
	}
}

func TestHealth(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
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

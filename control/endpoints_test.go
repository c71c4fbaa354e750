package control

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

// clock is a settable time for the leader's loop.
type clock struct {
	mu sync.Mutex
	// t is guarded by mu.
	t time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// handLoop is a leader loop the test runs one cycle at a time, on its own
// clock: what the controllers did is known when cycle returns.
type handLoop struct {
	t   *testing.T
	c   *cluster
	l   *Loop
	clk *clock
}

func newHandLoop(t *testing.T, c *cluster) *handLoop {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return &handLoop{t: t, c: c, clk: clk, l: NewLoop(LoopConfig{Store: c.st, Log: c.log, Now: clk.Now, Rand: NewRand(7), Batch: 50})}
}

// cycle reads the store afresh and runs every controller once.
func (h *handLoop) cycle() {
	h.t.Helper()
	if err := h.l.Load(h.c.ctx); err != nil {
		h.t.Fatal(err)
	}
	if err := h.l.Cycle(h.c.ctx); err != nil && !api.IsConflict(err) {
		h.t.Fatal(err)
	} else if err != nil {
		h.t.Log(err)
	}
}

func endpointNames(l api.List[api.Endpoint]) []string {
	var out []string
	for _, e := range l.Items {
		out = append(out, e.Instance)
	}
	return out
}

// follow collects every endpoint set a watch delivers until stop.
func follow(t *testing.T, c *api.Client, tenant, svc string, rev int64) (stop func() [][]string) {
	ctx, cancel := context.WithCancel(context.Background())
	w := c.WatchEndpoints(ctx, tenant, svc, rev)
	if err := w.Open(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var sets [][]string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := w.Next()
			if err != nil {
				if ctx.Err() == nil {
					t.Errorf("endpoints watch: %v", err)
				}
				return
			}
			var l api.List[api.Endpoint]
			if err := api.DecodeBytes(ev.Object, &l); err != nil {
				t.Errorf("endpoints event: %v", err)
				return
			}
			if l.Revision != ev.Revision {
				t.Errorf("event at revision %d carries a list at %d", ev.Revision, l.Revision)
			}
			mu.Lock()
			sets = append(sets, endpointNames(l))
			mu.Unlock()
		}
	}()
	stopped := false
	stop = func() [][]string {
		if !stopped {
			stopped = true
			cancel()
			w.Close()
			<-done
		}
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(sets)
	}
	t.Cleanup(func() { stop() })
	return stop
}

func graceful(name string, replicas int, grace time.Duration) *api.Service {
	s := service(name, replicas)
	g := api.Duration(grace)
	s.Spec.Template.StopGracePeriod = &g
	s.Spec.Template.Ports = []api.Port{{Port: 8080}}
	return s
}

func TestScaleInLeavesTheEndpointsBeforeTheGracePeriodEnds(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	h := newHandLoop(t, c)
	c.startNode(t, "n0", nil, nil)
	c.startNode(t, "n1", nil, nil)
	reader := c.token(t, "t1", "viewer", api.RoleReadOnly, "")
	s := graceful("web", 4, 30*time.Second)
	s.Tenant = "t1"
	if err := c.admin.Create(c.ctx, s); err != nil {
		t.Fatal(err)
	}
	var eps api.List[api.Endpoint]
	eventually(t, "4 endpoints", func() error {
		h.cycle()
		var err error
		if eps, err = reader.Endpoints(c.ctx, "t1", "web"); err != nil {
			return err
		}
		if len(eps.Items) != 4 {
			return fmt.Errorf("%d endpoints", len(eps.Items))
		}
		return nil
	})
	for _, e := range eps.Items {
		if !e.IP.IsValid() || e.Node == "" || len(e.Ports) != 1 || e.Ports[0].Port != 8080 {
			t.Fatalf("endpoint %+v: want an IP, a node and port 8080", e)
		}
	}
	stop := follow(t, reader, "t1", "web", eps.Revision)

	eventually(t, "scale in", func() error {
		cur := &api.Service{}
		if err := c.admin.Get(c.ctx, "t1", "web", cur); err != nil {
			return err
		}
		cur.Spec.Replicas = 1
		return c.admin.Update(c.ctx, cur)
	})
	retiredAt := h.clk.Now()
	h.cycle()

	// At once: one endpoint, and all four instances still there, three of
	// them retiring until the grace period ends.
	got, err := reader.Endpoints(c.ctx, "t1", "web")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Items) != 1 {
		t.Fatalf("after scale-in: endpoints %v, want 1", endpointNames(got))
	}
	retiring := func() []string {
		var out []string
		for _, in := range instancesOf(t, c.admin, "t1", "web") {
			if !in.Spec.StopAt.IsZero() {
				if !in.Spec.StopAt.Equal(retiredAt.Add(30 * time.Second)) {
					t.Fatalf("%s stops at %v, want %v", in.Name, in.Spec.StopAt, retiredAt.Add(30*time.Second))
				}
				out = append(out, in.Name)
			}
		}
		return out
	}
	if ins, r := instancesOf(t, c.admin, "t1", "web"), retiring(); len(ins) != 4 || len(r) != 3 {
		t.Fatalf("after scale-in: %d instances, %d retiring; want 4 and 3", len(ins), len(r))
	}
	for _, n := range retiring() {
		if slices.Contains(endpointNames(got), n) {
			t.Fatalf("retiring %s still an endpoint", n)
		}
	}
	st := &api.Service{}
	if err := c.admin.Get(c.ctx, "t1", "web", st); err != nil || st.Status.Retiring != 3 || st.Status.Replicas != 1 || st.Status.Ready != 1 {
		t.Fatalf("service status %+v (%v), want 1 replica, 1 ready, 3 retiring", st.Status, err)
	}

	// Just before the deadline nothing is deleted.
	h.clk.Add(30*time.Second - time.Millisecond)
	h.cycle()
	if n := len(instancesOf(t, c.admin, "t1", "web")); n != 4 {
		t.Fatalf("%d instances before the grace period ended, want 4", n)
	}
	// At the deadline the retired instances go, and the agents stop them.
	h.clk.Add(time.Millisecond)
	h.cycle()
	if ins := instancesOf(t, c.admin, "t1", "web"); len(ins) != 1 || ins[0].Name != got.Items[0].Instance {
		t.Fatalf("after the grace period: %d instances, want only the endpoint %s", len(ins), got.Items[0].Instance)
	}
	h.cycle()
	st = &api.Service{}
	if err := c.admin.Get(c.ctx, "t1", "web", st); err != nil || st.Status.Retiring != 0 {
		t.Fatalf("service status %+v (%v), want none retiring", st.Status, err)
	}

	// The watch saw the set shrink once, from four to the one that stays,
	// and never change as the retired instances were deleted.
	sets := stop()
	if len(sets) != 1 || !slices.Equal(sets[0], endpointNames(got)) {
		t.Fatalf("watched endpoint sets %v, want one change to %v", sets, endpointNames(got))
	}
}

// starting is a simulated container whose first health check is yet to run.
func starting(in *api.Instance) api.InstanceStatus {
	return api.InstanceStatus{Phase: api.PhaseRunning, StartedAt: time.Now(), IP: netip.MustParseAddr("10.9.0.1")}
}

// passOneCheck reports one running instance's first health check passed,
// as its agent would.
func passOneCheck(t *testing.T, c *cluster, tenant, svc string) {
	t.Helper()
	for _, in := range instancesOf(t, c.admin, tenant, svc) {
		if in.Status.Phase == api.PhaseRunning && in.Status.Health == api.HealthUnknown {
			st := in.Status
			st.Health = api.HealthHealthy
			if _, err := c.admin.ReportStatus(c.ctx, tenant, in.Name, st); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
}

// The simulated agents start instances whose health is not yet known; the
// test passes one health check at a time, so the controller must wait for
// each new instance before it retires an old one.
func TestRollingUpdateKeepsTheDesiredEndpoints(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	h := newHandLoop(t, c)
	c.startNode(t, "n0", nil, starting)
	c.startNode(t, "n1", nil, starting)
	passOne := func() { passOneCheck(t, c, "t1", "api") }
	s := graceful("api", 3, 5*time.Second)
	s.Tenant = "t1"
	s.Spec.Parallelism = 2
	s.Spec.Template.Health = &api.HealthCheck{Port: 8080}
	if err := c.admin.Create(c.ctx, s); err != nil {
		t.Fatal(err)
	}
	getSvc := func() *api.Service {
		got := &api.Service{}
		if err := c.admin.Get(c.ctx, "t1", "api", got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	eventually(t, "rolled out", func() error {
		h.cycle()
		passOne()
		if st := getSvc().Status; st.Rollout != api.RolloutComplete || st.Ready != 3 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	eps, err := c.admin.Endpoints(c.ctx, "t1", "api")
	if err != nil || len(eps.Items) != 3 {
		t.Fatalf("endpoints %v %v", endpointNames(eps), err)
	}
	before := endpointNames(eps)
	stop := follow(t, c.admin, "t1", "api", eps.Revision)

	eventually(t, "update", func() error {
		cur := getSvc()
		cur.Spec.Template.Env = map[string]string{"V": "2"}
		return c.admin.Update(c.ctx, cur)
	})
	v2 := getSvc().Spec.Template.Hash()
	eventually(t, "second rollout", func() error {
		h.cycle()
		h.clk.Add(time.Second)
		got, err := c.admin.Endpoints(c.ctx, "t1", "api")
		if err != nil {
			return err
		}
		if len(got.Items) < 3 {
			t.Fatalf("endpoints %v during the update, want at least 3", endpointNames(got))
		}
		passOne()
		ins := instancesOf(t, c.admin, "t1", "api")
		for _, in := range ins {
			if in.Spec.TemplateHash != v2 {
				return fmt.Errorf("%s still of the old template", in.Name)
			}
		}
		if st := getSvc().Status; st.Rollout != api.RolloutComplete || len(ins) != 3 || st.Retiring != 0 {
			return fmt.Errorf("%d instances, status %+v", len(ins), st)
		}
		return nil
	})
	sets := stop()
	if len(sets) == 0 {
		t.Fatal("the watch saw no change")
	}
	for _, set := range sets {
		if len(set) < 3 {
			t.Fatalf("watched endpoint sets %v: one has fewer than 3", sets)
		}
	}
	last := sets[len(sets)-1]
	for _, n := range last {
		if slices.Contains(before, n) {
			t.Fatalf("final endpoints %v still hold old instance %s", last, n)
		}
	}
}

// Draining a node replaces its instances elsewhere first: each leaves the
// endpoints only once its replacement serves, and stops after its grace
// period.
func TestDrainKeepsTheDesiredEndpoints(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	h := newHandLoop(t, c)
	for i := range 3 {
		c.startNode(t, fmt.Sprintf("n%d", i), nil, starting)
	}
	s := graceful("api", 3, 5*time.Second)
	s.Tenant = "t1"
	s.Spec.Template.Health = &api.HealthCheck{Port: 8080}
	if err := c.admin.Create(c.ctx, s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "3 endpoints", func() error {
		h.cycle()
		passOneCheck(t, c, "t1", "api")
		if eps, err := c.admin.Endpoints(c.ctx, "t1", "api"); err != nil || len(eps.Items) != 3 {
			return fmt.Errorf("endpoints %v %v", endpointNames(eps), err)
		}
		return nil
	})
	eps, err := c.admin.Endpoints(c.ctx, "t1", "api")
	if err != nil {
		t.Fatal(err)
	}
	victim := eps.Items[0].Node
	var moved []string
	for _, e := range eps.Items {
		if e.Node == victim {
			moved = append(moved, e.Instance)
		}
	}
	stop := follow(t, c.admin, "t1", "api", eps.Revision)
	if _, err := c.admin.Drain(c.ctx, victim); err != nil {
		t.Fatal(err)
	}
	eventually(t, "drained", func() error {
		h.cycle()
		h.clk.Add(time.Second)
		got, err := c.admin.Endpoints(c.ctx, "t1", "api")
		if err != nil {
			return err
		}
		if len(got.Items) < 3 {
			t.Fatalf("endpoints %v during the drain, want at least 3", endpointNames(got))
		}
		passOneCheck(t, c, "t1", "api")
		n := &api.Node{}
		if err := c.admin.Get(c.ctx, "", victim, n); err != nil {
			return err
		}
		ins := instancesOf(t, c.admin, "t1", "api")
		if n.Status.Phase != api.NodeDrained || len(ins) != 3 {
			return fmt.Errorf("%s %s, %d instances", victim, n.Status.Phase, len(ins))
		}
		for _, in := range ins {
			if in.Spec.Node == victim {
				return fmt.Errorf("%s still on %s", in.Name, victim)
			}
		}
		return nil
	})
	sets := stop()
	for _, set := range sets {
		if len(set) < 3 {
			t.Fatalf("watched endpoint sets %v: one has fewer than 3", sets)
		}
	}
	if len(sets) == 0 || slices.ContainsFunc(sets[len(sets)-1], func(n string) bool { return slices.Contains(moved, n) }) {
		t.Fatalf("watched endpoint sets %v, want the last without %v", sets, moved)
	}
}

func TestEndpointsAccessAndErrors(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	c.tenant(t, "t2")
	s := service("web", 0)
	s.Tenant = "t1"
	if err := c.admin.Create(c.ctx, s); err != nil {
		t.Fatal(err)
	}
	other := c.token(t, "t2", "ops", api.RoleTenantAdmin, "")
	node := c.token(t, api.SystemTenant, "node-n9", api.RoleNode, "n9")
	reader := c.token(t, "t1", "viewer", api.RoleReadOnly, "")
	if l, err := reader.Endpoints(c.ctx, "t1", "web"); err != nil || l.Items == nil || len(l.Items) != 0 || l.Revision == 0 {
		t.Fatalf("empty service: %+v %v, want an empty list at a revision", l, err)
	}
	for name, cl := range map[string]*api.Client{"other tenant": other, "node": node} {
		if _, err := cl.Endpoints(c.ctx, "t1", "web"); api.Code(err) != http.StatusForbidden {
			t.Errorf("%s: got %v, want 403", name, err)
		}
	}
	if _, err := c.admin.Endpoints(c.ctx, "t1", "nope"); !api.IsNotFound(err) {
		t.Errorf("unknown service: got %v, want 404", err)
	}
	w := reader.WatchEndpoints(c.ctx, "t1", "nope", 0)
	if _, err := w.Next(); !api.IsNotFound(err) {
		t.Errorf("watch of an unknown service: got %v, want 404", err)
	}

	// A watch from no revision begins with the current set.
	l, err := reader.Endpoints(c.ctx, "t1", "web")
	if err != nil {
		t.Fatal(err)
	}
	w = reader.WatchEndpoints(c.ctx, "t1", "web", 0)
	defer w.Close()
	ev, err := w.Next()
	var first api.List[api.Endpoint]
	if err == nil {
		err = api.DecodeBytes(ev.Object, &first)
	}
	if err != nil || ev.Type != api.Added || first.Items == nil || len(first.Items) != 0 || first.Revision < l.Revision {
		t.Fatalf("first event %+v %v, want the empty set at revision %d or later", ev, err, l.Revision)
	}

	// One from a compacted revision is gone: the client reads again.
	s2 := service("db", 0)
	s2.Tenant = "t1"
	if err := c.admin.Create(c.ctx, s2); err != nil {
		t.Fatal(err)
	}
	if _, err := etcdClient.Compact(c.ctx, s2.ResourceVersion); err != nil {
		t.Fatal(err)
	}
	w2 := reader.WatchEndpoints(c.ctx, "t1", "web", l.Revision-1)
	defer w2.Close()
	if _, err := w2.Next(); api.Code(err) != http.StatusGone {
		t.Fatalf("watch from compacted history: got %v, want 410", err)
	}
}

func TestStopGracePeriodIsValidated(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	cases := []struct {
		name, path, body, field string
	}{
		{"over ten minutes", "services", `{"name":"a","spec":{"replicas":1,"template":{"image":"x","stopGracePeriod":"11m"}}}`, "spec.template.stopGracePeriod"},
		{"negative", "services", `{"name":"a","spec":{"replicas":1,"template":{"image":"x","stopGracePeriod":"-1s"}}}`, "spec.template.stopGracePeriod"},
		// The strict decoder does not name the field of a custom type's
		// error; the message names the bad value.
		{"not a duration", "services", `{"name":"a","spec":{"replicas":1,"template":{"image":"x","stopGracePeriod":"soon"}}}`, ""},
		{"stopAt on a standalone instance", "instances", `{"name":"a","spec":{"template":{"image":"x"},"stopAt":"2026-01-01T00:00:00Z"}}`, "spec.stopAt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", c.url+"/v1/tenants/t1/"+tc.path, bytes.NewBufferString(tc.body))
			req.Header.Set("Authorization", "Bearer "+adminSecret)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			e := &api.Error{}
			_ = api.DecodeBytes(must(io.ReadAll(resp.Body)), e)
			if resp.StatusCode != http.StatusBadRequest || e.Field != tc.field || e.Message == "" {
				t.Fatalf("got %d %+v, want 400 field %q", resp.StatusCode, e, tc.field)
			}
		})
	}
	for _, g := range []string{"0s", "10m"} {
		s := &api.Service{}
		body := `{"name":"ok-` + g + `","spec":{"replicas":0,"template":{"image":"x","stopGracePeriod":"` + g + `"}}}`
		if err := api.DecodeBytes([]byte(body), s); err != nil {
			t.Fatal(err)
		}
		s.Tenant = "t1"
		if err := c.admin.Create(c.ctx, s); err != nil {
			t.Fatalf("grace period %s: %v", g, err)
		}
	}
}

package control

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func stat(sec int, cpuMillis, mem, rx, tx uint64) api.Stats {
	return api.Stats{Time: t0.Add(time.Duration(sec) * time.Second), CPUNanos: cpuMillis * 1e6, MemoryBytes: mem, RxBytes: rx, TxBytes: tx}
}

func TestRingKeepsTheNewestSamplesOldestFirst(t *testing.T) {
	r := newRing(3)
	if _, ok := r.newest(); ok {
		t.Fatal("an empty ring has a newest sample")
	}
	for i := range 5 {
		r.add(sample{stats: stat(i, 0, 0, 0, 0)})
		got := r.samples()
		want := min(i+1, 3)
		if len(got) != want {
			t.Fatalf("after %d adds: %d samples, want %d", i+1, len(got), want)
		}
		for j, s := range got {
			if sec := int(s.stats.Time.Sub(t0) / time.Second); sec != i+1-want+j {
				t.Fatalf("after %d adds: sample %d is from second %d", i+1, j, sec)
			}
		}
		if n, _ := r.newest(); !n.stats.Time.Equal(got[len(got)-1].stats.Time) {
			t.Fatalf("newest %v, last of samples %v", n.stats.Time, got[len(got)-1].stats.Time)
		}
		if cap(r.buf) > 3 {
			t.Fatalf("after %d adds: %d slots for a ring of 3", i+1, cap(r.buf))
		}
	}
}

// A ring holds slots for the samples it has, not for its whole window.
func TestRingGrowsAsSamplesArrive(t *testing.T) {
	r := newRing(366)
	for i := range 10 {
		r.add(sample{stats: stat(i, 0, 0, 0, 0)})
	}
	if c := cap(r.buf); c > 16 {
		t.Errorf("10 samples take %d slots", c)
	}
	for i := 10; i < 1000; i++ {
		r.add(sample{stats: stat(i, 0, 0, 0, 0)})
	}
	got := r.samples()
	if cap(r.buf) != 366 || len(got) != 366 || int(got[0].stats.Time.Sub(t0)/time.Second) != 1000-366 {
		t.Errorf("full ring: %d slots, %d samples, oldest from second %v", cap(r.buf), len(got), got[0].stats.Time.Sub(t0))
	}
}

func TestRatesFromCumulativeCounters(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []api.Stats
		want []MetricPoint
	}{
		{"one sample has no rate", []api.Stats{stat(0, 100, 1, 0, 0)}, nil},
		{"steady use", []api.Stats{stat(0, 0, 10, 0, 0), stat(10, 5000, 20, 1000, 500)},
			[]MetricPoint{{Time: t0.Add(10 * time.Second), CPU: 500, MemoryBytes: 20, RxBps: 100, TxBps: 50, Instances: 1}}},
		// The container started again: its counters began at zero, so what
		// they show is all it used since.
		{"counter reset", []api.Stats{stat(0, 9000, 10, 900, 900), stat(10, 2000, 5, 100, 0)},
			[]MetricPoint{{Time: t0.Add(10 * time.Second), CPU: 200, MemoryBytes: 5, RxBps: 10, TxBps: 0, Instances: 1}}},
		{"a repeated time is skipped", []api.Stats{stat(0, 0, 1, 0, 0), stat(0, 10, 1, 0, 0), stat(20, 2000, 3, 0, 0)},
			[]MetricPoint{{Time: t0.Add(20 * time.Second), CPU: 99.5, MemoryBytes: 3, Instances: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ss []sample
			for _, s := range tc.in {
				ss = append(ss, sample{stats: s})
			}
			got := rates(ss)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("rates = %+v\nwant    %+v", got, tc.want)
			}
		})
	}
}

func TestSumByStepAddsOnePointPerInstancePerStep(t *testing.T) {
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	a := []MetricPoint{{Time: at(1), CPU: 100, MemoryBytes: 10, Instances: 1}, {Time: at(11), CPU: 200, MemoryBytes: 20, Instances: 1},
		// Two samples of one instance in one step: the later one counts.
		{Time: at(19), CPU: 300, MemoryBytes: 30, Instances: 1}}
	b := []MetricPoint{{Time: at(4), CPU: 1, MemoryBytes: 1, RxBps: 5, Instances: 1}, {Time: at(25), CPU: 2, MemoryBytes: 2, Instances: 1}}
	got := sumByStep([][]MetricPoint{a, b}, 10*time.Second)
	want := []MetricPoint{
		{Time: at(0), CPU: 101, MemoryBytes: 11, RxBps: 5, Instances: 2},
		{Time: at(10), CPU: 300, MemoryBytes: 30, Instances: 1},
		{Time: at(20), CPU: 2, MemoryBytes: 2, Instances: 1},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("sumByStep = %+v\nwant        %+v", got, want)
	}
	if got := sumByStep(nil, time.Second); got == nil || len(got) != 0 {
		t.Fatalf("no series: %#v, want an empty (not null) list", got)
	}
}

func inst(tenant, name, service, node string) *api.Instance {
	return &api.Instance{Meta: api.Meta{Name: name, Tenant: tenant}, Spec: api.InstanceSpec{Service: service, Node: node}}
}

func TestHistoryAggregatesPerInstanceServiceAndNode(t *testing.T) {
	h := newHistory(time.Hour, 10*time.Second)
	web1, web2, db := inst("t1", "web-1", "web", "n1"), inst("t1", "web-2", "web", "n2"), inst("t1", "db", "", "n1")
	other := inst("t2", "web-1", "web", "n1")
	for i := range 4 {
		sec := i * 10
		h.add(web1, stat(sec, uint64(i)*1000, 100, 0, 0))   // 100m
		h.add(web2, stat(sec+1, uint64(i)*2000, 200, 0, 0)) // 200m
		h.add(db, stat(sec+2, uint64(i)*4000, 400, 0, 0))   // 400m
		h.add(other, stat(sec, uint64(i)*8000, 800, 0, 0))  // 800m, another tenant
	}
	// web-1 moves to n2: its container starts again there.
	web1.Spec.Node = "n2"
	h.add(web1, stat(40, 1000, 100, 0, 0))
	h.add(web1, stat(50, 2000, 100, 0, 0))
	// A sample older than the newest is ignored.
	h.add(web1, stat(45, 99999, 1, 0, 0))

	if got := h.instance("t1", "web-1", t0); len(got) != 5 || got[0].CPU != 100 || got[4].CPU != 100 {
		t.Fatalf("instance web-1: %+v", got)
	}
	if got := h.instance("t1", "nope", t0); got == nil || len(got) != 0 {
		t.Fatalf("unknown instance: %#v", got)
	}
	svc := h.service("t1", "web", t0, 10*time.Second)
	if len(svc) != 5 {
		t.Fatalf("service web: %d points: %+v", len(svc), svc)
	}
	for _, p := range svc[:3] {
		if p.CPU != 300 || p.MemoryBytes != 300 || p.Instances != 2 {
			t.Fatalf("service web point %+v, want both instances summed (300m, 300 bytes)", p)
		}
	}
	n1 := h.node("n1", t0, 10*time.Second)
	if len(n1) != 3 {
		t.Fatalf("node n1: %+v", n1)
	}
	for _, p := range n1 {
		if p.CPU != 1300 || p.Instances != 3 {
			t.Fatalf("node n1 point %+v, want web-1, db and t2's web-1 (1300m)", p)
		}
	}
	n2 := h.node("n2", t0, 10*time.Second)
	if last := n2[len(n2)-1]; last.Instances != 1 || last.CPU != 100 {
		t.Fatalf("node n2 after web-2's samples ended: %+v", last)
	}
	// since cuts the series.
	if got := h.instance("t1", "web-1", t0.Add(35*time.Second)); len(got) != 2 {
		t.Fatalf("instance since 35s: %+v", got)
	}
}

func TestHistoryKeepsAWindowAndForgetsWhatStoppedReporting(t *testing.T) {
	h := newHistory(time.Minute, 10*time.Second)
	a, b := inst("t", "a", "", "n"), inst("t", "b", "", "n")
	for i := range 30 {
		h.add(a, stat(i*10, uint64(i), 1, 0, 0))
	}
	h.add(b, stat(0, 0, 1, 0, 0))
	h.forget(t0.Add(290 * time.Second))
	h.mu.Lock()
	_, hasB := h.rings["t/b"]
	n := len(h.rings["t/a"].samples())
	h.mu.Unlock()
	if hasB {
		t.Error("b, silent for longer than the window, is still kept")
	}
	if n != h.size || n < 6 {
		t.Errorf("a keeps %d samples, want the ring's %d (a minute of 10 s samples and spares)", n, h.size)
	}
	// A new instance under an old name (another service) starts afresh.
	c := inst("t", "a", "other", "n")
	h.add(c, stat(1000, 0, 1, 0, 0))
	if got := h.instance("t", "a", t0); len(got) != 0 {
		t.Errorf("reused name carries %d old points", len(got))
	}
}

// fakeAgent serves the agent's stats operation for containers whose
// counters tests advance.
type fakeAgent struct {
	mu    sync.Mutex
	stats map[string]api.Stats
}

func (f *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/containers/"), "/stats")
	f.mu.Lock()
	s, known := f.stats[name]
	f.mu.Unlock()
	if !ok || !known {
		writeJSON(w, http.StatusNotFound, api.Errorf(http.StatusNotFound, "no container %q", name))
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func TestMetricsAreSampledFromAgentsAndServedToReaders(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	c.tenant(t, "t2")
	secret := func(tenant, name string, role api.Role) string {
		tok := &api.Token{Meta: api.Meta{Name: name, Tenant: tenant}, Role: role}
		if err := c.admin.Create(c.ctx, tok); err != nil {
			t.Fatal(err)
		}
		return tok.Secret
	}
	reader, stranger := secret("t1", "reader", api.RoleReadOnly), secret("t2", "admin", api.RoleTenantAdmin)

	agent := &fakeAgent{stats: map[string]api.Stats{}}
	as := httptest.NewServer(agent)
	defer as.Close()
	if _, err := c.admin.Register(c.ctx, "n1", api.Registration{Spec: api.NodeSpec{Capacity: api.Resources{CPU: 1000, Memory: 1 << 30}, AgentURL: as.URL}}); err != nil {
		t.Fatal(err)
	}
	svc := service("web", 0)
	svc.Tenant = "t1"
	if err := c.admin.Create(c.ctx, svc); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"web-a", "web-b", "idle"} {
		in := &api.Instance{Meta: api.Meta{Name: n, Tenant: "t1"}, Spec: api.InstanceSpec{Template: api.Template{Image: "busybox"}}}
		if err := c.admin.Create(c.ctx, in); err != nil {
			t.Fatal(err)
		}
		// As the scheduler and the agent would leave them.
		if _, err := c.st.Modify(c.ctx, api.KindInstance, "t1", n, func(o api.Object) error {
			in := o.(*api.Instance)
			in.Spec.Node = "n1"
			if n != "idle" {
				in.Spec.Service = "web"
				in.Status.Phase = api.PhaseRunning
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	now := t0
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := NewServer(Config{Store: c.st, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: clock, NodeTTL: 2 * time.Second})
	defer srv.Close()
	ms := newMetrics(srv, srv.instanceStats)
	mux := http.NewServeMux()
	ms.register(mux)
	hs := httptest.NewServer(mux)
	defer hs.Close()

	for i := range 4 {
		mu.Lock()
		now = t0.Add(time.Duration(i*10) * time.Second)
		mu.Unlock()
		agent.mu.Lock()
		// web-a uses 250m and web-b 500m; web-b's stats carry no time.
		agent.stats[api.ContainerName("t1", "web-a")] = api.Stats{Time: clock(), CPUNanos: uint64(i) * 2_500_000_000, MemoryBytes: 1 << 20, RxBytes: uint64(i) * 1000}
		agent.stats[api.ContainerName("t1", "web-b")] = api.Stats{CPUNanos: uint64(i) * 5_000_000_000, MemoryBytes: 2 << 20}
		agent.mu.Unlock()
		ms.sampleOnce(c.ctx)
	}

	get := func(cl string, path string) (int, MetricSeries, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, hs.URL+path, nil)
		if cl != "" {
			req.Header.Set("Authorization", "Bearer "+cl)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var s MetricSeries
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal(b, &s); err != nil {
				t.Fatalf("%s: %v: %s", path, err, b)
			}
		}
		return resp.StatusCode, s, string(b)
	}
	code, s, body := get(reader, "/v1/tenants/t1/metrics?instance=web-a")
	if code != http.StatusOK || s.Scope != "instance" || len(s.Points) != 3 {
		t.Fatalf("instance web-a: %d %s", code, body)
	}
	for _, p := range s.Points {
		if p.CPU != 250 || p.MemoryBytes != 1<<20 || p.RxBps != 100 {
			t.Fatalf("web-a point %+v, want 250m, 1 MiB, 100 B/s", p)
		}
	}
	code, s, body = get(reader, "/v1/tenants/t1/metrics?service=web&window=15s")
	if code != http.StatusOK || s.Scope != "service" || len(s.Points) != 2 {
		t.Fatalf("service web over 15s: %d %s", code, body)
	}
	for _, p := range s.Points {
		if p.CPU != 750 || p.MemoryBytes != 3<<20 || p.Instances != 2 {
			t.Fatalf("service point %+v, want web-a and web-b summed", p)
		}
	}
	code, s, body = get(adminSecret, "/v1/metrics?node=n1")
	if code != http.StatusOK || s.Scope != "node" || len(s.Points) != 3 || s.Points[0].CPU != 750 {
		t.Fatalf("node n1: %d %s", code, body)
	}
	if code, _, body = get(reader, "/v1/tenants/t1/metrics?instance=idle"); code != http.StatusOK || !strings.Contains(body, `"points":[]`) {
		t.Fatalf("an instance never sampled: %d %s", code, body)
	}

	for _, tc := range []struct {
		name, token, path string
		code              int
		says              string
	}{
		{"no token", "", "/v1/tenants/t1/metrics?instance=web-a", http.StatusUnauthorized, "missing bearer token"},
		{"wrong token", "t1.reader.nope", "/v1/tenants/t1/metrics?instance=web-a", http.StatusUnauthorized, "unknown token"},
		{"another tenant", stranger, "/v1/tenants/t1/metrics?instance=web-a", http.StatusForbidden, "may not read instances"},
		{"a tenant reads a node", reader, "/v1/metrics?node=n1", http.StatusForbidden, "may not read nodes"},
		{"neither instance nor service", reader, "/v1/tenants/t1/metrics", http.StatusBadRequest, "exactly one of"},
		{"both", reader, "/v1/tenants/t1/metrics?instance=a&service=b", http.StatusBadRequest, "exactly one of"},
		{"unknown instance", reader, "/v1/tenants/t1/metrics?instance=nope", http.StatusNotFound, "nope"},
		{"unknown service", reader, "/v1/tenants/t1/metrics?service=nope", http.StatusNotFound, "nope"},
		{"unknown node", adminSecret, "/v1/metrics?node=nope", http.StatusNotFound, "nope"},
		{"no node", adminSecret, "/v1/metrics", http.StatusBadRequest, "node"},
		{"window too long", reader, "/v1/tenants/t1/metrics?instance=web-a&window=2h", http.StatusBadRequest, "window"},
		{"bad window", reader, "/v1/tenants/t1/metrics?instance=web-a&window=soon", http.StatusBadRequest, "window"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, body := get(tc.token, tc.path)
			if code != tc.code || !strings.Contains(body, tc.says) {
				t.Fatalf("%s: %d %s, want %d saying %q", tc.path, code, body, tc.code, tc.says)
			}
		})
	}
}

// The server registers the metrics routes itself, beside the API.
func TestServerServesMetrics(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, c.url+"/v1/tenants/t1/metrics?service=none", nil)
	req.Header.Set("Authorization", "Bearer "+adminSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(b), "none") {
		t.Fatalf("metrics of a missing service: %d %s", resp.StatusCode, b)
	}
}

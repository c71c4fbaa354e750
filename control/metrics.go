package control

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
)

// The control plane keeps a short history of every running instance's
// resource use, sampled from the agents, so the console (or a script) can
// chart an instance, a service or a node over the last hour without a
// separate monitoring system. History lives in this server's memory: a
// restarted server starts a new hour.

// MetricPoint is one step of a metrics series: rates are averaged over the
// time since the previous sample, memory is the value at Time.
type MetricPoint struct {
	Time        time.Time `json:"time"`
	CPU         float64   `json:"cpu"` // millicores
	MemoryBytes uint64    `json:"memoryBytes"`
	RxBps       float64   `json:"rxBytesPerSecond"`
	TxBps       float64   `json:"txBytesPerSecond"`
	// Instances is how many instances the point sums (1 for an instance).
	Instances int `json:"instances"`
}

// MetricSeries is the body of GET /v1/tenants/T/metrics and /v1/metrics.
type MetricSeries struct {
	Scope  string        `json:"scope"` // instance, service or node
	Tenant string        `json:"tenant,omitempty"`
	Name   string        `json:"name"`
	Step   api.Duration  `json:"step"`
	Points []MetricPoint `json:"points"`
}

const (
	// metricsInterval is how often every running instance is sampled.
	metricsInterval = 10 * time.Second
	// metricsWindow is how much history is kept and served.
	metricsWindow = time.Hour
	// metricsParallel bounds the stats calls in flight at once.
	metricsParallel = 16
)

// sample is one stats reading and where the instance ran when it was taken.
type sample struct {
	stats api.Stats
	node  string
}

// ring holds the last size samples of one instance. It grows as samples
// arrive: the slots of a whole window cost ~38 KiB, which an instance
// sampled for a minute has no use for, and a host may hold thousands of
// them. Once full, next is where the oldest sample is.
type ring struct {
	service string
	size    int
	buf     []sample
	next    int
}

func newRing(size int) *ring { return &ring{size: size} }

func (r *ring) add(s sample) {
	if len(r.buf) < r.size {
		if len(r.buf) == cap(r.buf) {
			// Doubling, but never past size.
			nb := make([]sample, len(r.buf), min(r.size, max(4, 2*cap(r.buf))))
			copy(nb, r.buf)
			r.buf = nb
		}
		r.buf = append(r.buf, s)
		return
	}
	r.buf[r.next] = s
	r.next = (r.next + 1) % r.size
}

// samples returns the held samples, oldest first.
func (r *ring) samples() []sample {
	return append(slices.Clone(r.buf[r.next:]), r.buf[:r.next]...)
}

func (r *ring) newest() (sample, bool) {
	if len(r.buf) == 0 {
		return sample{}, false
	}
	return r.buf[(r.next+len(r.buf)-1)%len(r.buf)], true
}

// rates turns consecutive cumulative readings into points: one per sample
// after the first, its rates over the gap since the one before. A counter
// that went down means the container started again within the gap, so what
// it counted since is all the use there was.
func rates(ss []sample) []MetricPoint {
	var out []MetricPoint
	for i := 1; i < len(ss); i++ {
		a, b := ss[i-1].stats, ss[i].stats
		dt := b.Time.Sub(a.Time).Seconds()
		if dt <= 0 {
			continue
		}
		delta := func(x, y uint64) float64 {
			if y < x {
				return float64(y)
			}
			return float64(y - x)
		}
		out = append(out, MetricPoint{
			Time:        b.Time,
			CPU:         delta(a.CPUNanos, b.CPUNanos) / 1e9 / dt * 1000,
			MemoryBytes: b.MemoryBytes,
			RxBps:       delta(a.RxBytes, b.RxBytes) / dt,
			TxBps:       delta(a.TxBytes, b.TxBytes) / dt,
			Instances:   1,
		})
	}
	return out
}

// sumByStep adds several instances' points up: each series contributes its
// last point within each step-long bucket, and buckets are labelled by
// their start. Instances sampled a little apart thus land in one bucket.
func sumByStep(series [][]MetricPoint, step time.Duration) []MetricPoint {
	sums := map[time.Time]*MetricPoint{}
	for _, pts := range series {
		last := map[time.Time]MetricPoint{}
		for _, p := range pts {
			last[p.Time.Truncate(step)] = p
		}
		for t, p := range last {
			s := sums[t]
			if s == nil {
				s = &MetricPoint{Time: t}
				sums[t] = s
			}
			s.CPU += p.CPU
			s.MemoryBytes += p.MemoryBytes
			s.RxBps += p.RxBps
			s.TxBps += p.TxBps
			s.Instances += p.Instances
		}
	}
	out := make([]MetricPoint, 0, len(sums))
	for _, p := range sums {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b MetricPoint) int { return a.Time.Compare(b.Time) })
	return out
}

// history is every instance's ring, keyed "tenant/name".
type history struct {
	size   int
	window time.Duration

	mu sync.Mutex
	// rings is guarded by mu.
	rings map[string]*ring
}

func newHistory(window, interval time.Duration) *history {
	// A few spare slots keep a full window even when samples come early.
	return &history{size: int(window/interval) + 6, window: window, rings: map[string]*ring{}}
}

func instanceKey(tenant, name string) string { return tenant + "/" + name }

func (h *history) add(in *api.Instance, s api.Stats) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := instanceKey(in.Tenant, in.Name)
	r := h.rings[k]
	if r == nil || r.service != in.Spec.Service {
		// A new instance under a reused name starts a new history.
		r = newRing(h.size)
		r.service = in.Spec.Service
		h.rings[k] = r
	}
	if last, ok := r.newest(); ok && !s.Time.After(last.stats.Time) {
		return
	}
	r.add(sample{stats: s, node: in.Spec.Node})
}

// forget drops the histories of instances not sampled within the window.
func (h *history) forget(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, r := range h.rings {
		if last, ok := r.newest(); !ok || now.Sub(last.stats.Time) > h.window {
			delete(h.rings, k)
		}
	}
}

// series returns, for each instance that keep accepts, its points since
// since, computed from its samples that match keep.
func (h *history) series(since time.Time, keep func(tenant, name string, r *ring) bool, match func(sample) bool) [][]MetricPoint {
	h.mu.Lock()
	var all [][]sample
	for k, r := range h.rings {
		tenant, name, _ := strings.Cut(k, "/")
		if !keep(tenant, name, r) {
			continue
		}
		var ss []sample
		for _, s := range r.samples() {
			if match(s) {
				ss = append(ss, s)
			}
		}
		all = append(all, ss)
	}
	h.mu.Unlock()
	var out [][]MetricPoint
	for _, ss := range all {
		pts := rates(ss)
		i, _ := slices.BinarySearchFunc(pts, since, func(p MetricPoint, t time.Time) int { return p.Time.Compare(t) })
		if i < len(pts) {
			out = append(out, pts[i:])
		}
	}
	return out
}

func everySample(sample) bool { return true }

// instance is one instance's points.
func (h *history) instance(tenant, name string, since time.Time) []MetricPoint {
	s := h.series(since, func(t, n string, _ *ring) bool { return t == tenant && n == name }, everySample)
	if len(s) == 0 {
		return []MetricPoint{}
	}
	return s[0]
}

// service sums a service's instances.
func (h *history) service(tenant, service string, since time.Time, step time.Duration) []MetricPoint {
	return sumByStep(h.series(since, func(t, _ string, r *ring) bool { return t == tenant && r.service == service }, everySample), step)
}

// node sums what ran on a node while it ran there: an instance moved away
// counts for its old node until it left.
func (h *history) node(node string, since time.Time, step time.Duration) []MetricPoint {
	return sumByStep(h.series(since, func(string, string, *ring) bool { return true }, func(s sample) bool { return s.node == node }), step)
}

// statsFunc reads one instance's current stats from the agent at agentURL.
type statsFunc func(ctx context.Context, agentURL string, in *api.Instance) (api.Stats, error)

// metrics samples running instances into a history and serves it.
type metrics struct {
	s        *Server
	hist     *history
	stats    statsFunc
	interval time.Duration
}

func newMetrics(s *Server, stats statsFunc) *metrics {
	return &metrics{s: s, hist: newHistory(metricsWindow, metricsInterval), stats: stats, interval: metricsInterval}
}

// routeMetrics serves the history read-only and samples into it until the
// server closes.
func (s *Server) routeMetrics(m *http.ServeMux) {
	ms := newMetrics(s, s.instanceStats)
	ms.register(m)
	go ms.run(s.keep.base)
}

func (ms *metrics) register(m *http.ServeMux) {
	m.HandleFunc("GET /v1/tenants/{tenant}/metrics", ms.handleTenant)
	m.HandleFunc("GET /v1/metrics", ms.handleNode)
}

func (ms *metrics) run(ctx context.Context) {
	t := time.NewTicker(ms.interval)
	defer t.Stop()
	for {
		ms.sampleOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sampleOnce reads the stats of every running instance, a bounded number
// at a time. An instance whose agent does not answer misses one sample;
// its chart shows the gap.
func (ms *metrics) sampleOnce(ctx context.Context) {
	nodes, _, err := ms.s.st.List(ctx, api.KindNode, "", nil)
	if err == nil && slices.ContainsFunc(nodes, func(o api.Object) bool { return o.(*api.Node).Spec.AgentURL != "" }) {
		// A fleet of agents that serve no container operations (simulated
		// nodes) costs no instance listing.
		var items []api.Object
		if items, _, err = ms.s.st.List(ctx, api.KindInstance, "", nil); err == nil {
			ms.sample(ctx, nodes, items)
		}
	}
	if err != nil && ctx.Err() == nil {
		ms.s.cfg.Log.Warn("metrics: list nodes and instances", "err", err)
	}
	ms.hist.forget(ms.s.cfg.Now())
}

func (ms *metrics) sample(ctx context.Context, nodes, items []api.Object) {
	agents := map[string]string{}
	for _, o := range nodes {
		n := o.(*api.Node)
		agents[n.Name] = n.Spec.AgentURL
	}
	sem := make(chan struct{}, metricsParallel)
	var wg sync.WaitGroup
	for _, o := range items {
		in := o.(*api.Instance)
		agentURL := agents[in.Spec.Node]
		if in.Status.Phase != api.PhaseRunning || agentURL == "" {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			cctx, cancel := context.WithTimeout(ctx, ms.interval)
			defer cancel()
			st, err := ms.stats(cctx, agentURL, in)
			if err != nil {
				if ctx.Err() == nil {
					ms.s.cfg.Log.Debug("metrics: stats", "instance", instanceKey(in.Tenant, in.Name), "err", err)
				}
				return
			}
			if st.Time.IsZero() {
				st.Time = ms.s.cfg.Now()
			}
			ms.hist.add(in, st)
		}()
	}
	wg.Wait()
}

// window reads ?window= (a duration up to the kept hour; the hour by
// default) into the time the series starts.
func (ms *metrics) since(r *http.Request) (time.Time, error) {
	w := ms.hist.window
	if q := r.URL.Query().Get("window"); q != "" {
		d, err := time.ParseDuration(q)
		if err != nil || d <= 0 || d > ms.hist.window {
			return time.Time{}, &api.FieldError{Field: "window", Message: fmt.Sprintf("must be a duration up to %s", ms.hist.window)}
		}
		w = d
	}
	return ms.s.cfg.Now().Add(-w), nil
}

// handleTenant serves ?instance=NAME or ?service=NAME of a tenant, to
// whoever may read that tenant's instances.
func (ms *metrics) handleTenant(w http.ResponseWriter, r *http.Request) {
	p, err := ms.s.auth.authenticate(r.Context(), r)
	if err != nil {
		ms.s.fail(w, err)
		return
	}
	tenant := r.PathValue("tenant")
	if err := authorize(p, verbRead, api.KindInstance, tenant, ""); err != nil {
		ms.s.fail(w, err)
		return
	}
	q := r.URL.Query()
	inst, svc := q.Get("instance"), q.Get("service")
	if (inst == "") == (svc == "") {
		ms.s.fail(w, &api.FieldError{Field: "instance", Message: "give exactly one of ?instance=NAME and ?service=NAME"})
		return
	}
	since, err := ms.since(r)
	if err != nil {
		ms.s.fail(w, err)
		return
	}
	out := MetricSeries{Tenant: tenant, Step: api.Duration(ms.interval)}
	if inst != "" {
		if _, err := ms.s.st.Get(r.Context(), api.KindInstance, tenant, inst); err != nil {
			ms.s.fail(w, err)
			return
		}
		out.Scope, out.Name, out.Points = "instance", inst, ms.hist.instance(tenant, inst, since)
	} else {
		if _, err := ms.s.st.Get(r.Context(), api.KindService, tenant, svc); err != nil {
			ms.s.fail(w, err)
			return
		}
		out.Scope, out.Name, out.Points = "service", svc, ms.hist.service(tenant, svc, since, ms.interval)
	}
	writeJSON(w, http.StatusOK, out)
}

// handleNode serves ?node=NAME to whoever may read that node.
func (ms *metrics) handleNode(w http.ResponseWriter, r *http.Request) {
	p, err := ms.s.auth.authenticate(r.Context(), r)
	if err != nil {
		ms.s.fail(w, err)
		return
	}
	node := r.URL.Query().Get("node")
	if node == "" {
		ms.s.fail(w, &api.FieldError{Field: "node", Message: "required: /v1/metrics?node=NAME (per instance or service: /v1/tenants/TENANT/metrics)"})
		return
	}
	if err := authorize(p, verbRead, api.KindNode, "", node); err != nil {
		ms.s.fail(w, err)
		return
	}
	since, err := ms.since(r)
	if err != nil {
		ms.s.fail(w, err)
		return
	}
	if _, err := ms.s.st.Get(r.Context(), api.KindNode, "", node); err != nil {
		ms.s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, MetricSeries{Scope: "node", Name: node, Step: api.Duration(ms.interval), Points: ms.hist.node(node, since, ms.interval)})
}

// instanceStats reads an instance's stats from its node's agent: the call
// GET /v1/tenants/T/instances/N/stats proxies, made by the server itself.
func (s *Server) instanceStats(ctx context.Context, agentURL string, in *api.Instance) (api.Stats, error) {
	var st api.Stats
	target, tr, err := s.agentTransport(in.Spec.Node, agentURL)
	if err != nil {
		return st, err
	}
	u := *target
	u.Path = target.Path + "/containers/" + url.PathEscape(api.ContainerName(in.Tenant, in.Name)) + "/" + api.OpStats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return st, fmt.Errorf("stats of %s/%s: %w", in.Tenant, in.Name, err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return st, fmt.Errorf("stats of %s/%s: %w", in.Tenant, in.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("stats of %s/%s: %w", in.Tenant, in.Name, readAgentError(resp))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		return st, fmt.Errorf("stats of %s/%s: decode: %w", in.Tenant, in.Name, err)
	}
	return st, nil
}

func readAgentError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	e := &api.Error{}
	if json.Unmarshal(b, e) == nil && e.Message != "" {
		return e
	}
	return fmt.Errorf("agent answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
}

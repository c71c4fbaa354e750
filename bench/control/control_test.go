// Package control benchmarks Berth's control plane at fleet scale: the real
// API server and leader loop on embedded etcd, driven by simulated node
// agents (goroutines speaking the real API). Run:
//
//	go test ./bench/control -run '^$' -bench . -benchtime 1x -timeout 30m [-nodes 5000 -instances 100000 -fsync=false]
//
// It reports placements per second, the time to place a service of
// -instances across -nodes, watch fan-out latency, and node death to
// replacement, and compares the placement rate with Nomad's published C1M
// result (1,000,000 containers on 5,000 hosts in under 5 minutes).
package control

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	_ "net/http/pprof"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control"
	"github.com/berth-dev/berth/control/simnode"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	nodesFlag     = flag.Int("nodes", 5000, "simulated nodes")
	instancesFlag = flag.Int("instances", 100000, "instances in the service")
	watchersFlag  = flag.Int("watchers", 1000, "watchers for the fan-out measurement")
	fsyncFlag     = flag.Bool("fsync", true, "let etcd fsync its log (false: measure the control plane, not a shared disk)")
	pprofFlag     = flag.String("pprof", "", "serve net/http/pprof on this loopback address (127.0.0.1:6060) while the benchmark runs")
)

const admin = "system.bench.secret"

// nomadC1MRate is Nomad's C1M: 1,000,000 containers placed in under 300 s.
const nomadC1MRate = 1_000_000.0 / 300

func BenchmarkControlPlane(b *testing.B) {
	dir := b.TempDir()
	e, cli, err := control.StartEtcd(control.EtcdConfig{Dir: dir, Quiet: true, NoFsync: !*fsyncFlag})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var srv *httptest.Server
	var handler *control.Server
	// Watch streams end with ctx; the server closes only after they do.
	defer func() {
		cancel()
		if srv != nil {
			srv.CloseClientConnections()
			srv.Close()
			handler.Close()
		}
		cli.Close()
		e.Close()
	}()
	if *pprofFlag != "" {
		ps := &http.Server{Addr: *pprofFlag, Handler: http.DefaultServeMux}
		go func() { _ = ps.ListenAndServe() }()
		defer ps.Close()
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("BENCH_DEBUG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	st := control.NewStore(cli, "/bench")
	if err := control.Bootstrap(ctx, st, admin, time.Now()); err != nil {
		b.Fatal(err)
	}
	handler = control.NewServer(control.Config{Store: st, Log: log, Now: time.Now, Rand: rand.Reader, NodeTTL: 3 * time.Second})
	srv = httptest.NewUnstartedServer(handler)
	// Each simulated agent has a connection of its own, as a real one does:
	// its watch, heartbeats and reports are streams of one cleartext
	// HTTP/2 connection. (Agents sharing one client's pool made the pool
	// dial a connection for each request that found every connection at
	// its stream limit: at placement's peak, thousands of dials a second,
	// overflowing the listen queue, so that heartbeats waited seconds for
	// a retransmitted SYN and leases lapsed. Go's HTTP/2 server also looks
	// at every stream of a connection for each frame it writes, so many
	// agents to one connection cost more CPU choosing what to write than
	// writing it.)
	srv.Config.Protocols = &http.Protocols{}
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 100}
	srv.Start()
	ac := api.NewClient(srv.URL, admin, h2c(256))
	if err := ac.Create(ctx, &api.Tenant{Meta: api.Meta{Name: "bench"}}); err != nil {
		b.Fatal(err)
	}

	// The fleet: every node its own agent goroutine with its own token.
	nodeCtx := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	t0 := time.Now()
	var stats simnode.Stats
	secrets := make([]string, *nodesFlag)
	var tg sync.WaitGroup
	tokErrs := make(chan error, *nodesFlag)
	for w := 0; w < 32; w++ {
		tg.Add(1)
		go func() {
			defer tg.Done()
			for i := w; i < *nodesFlag; i += 32 {
				tok := &api.Token{Meta: api.Meta{Name: fmt.Sprintf("node-n%05d", i), Tenant: api.SystemTenant}, Role: api.RoleNode, Node: fmt.Sprintf("n%05d", i)}
				if err := ac.Create(ctx, tok); err != nil {
					tokErrs <- err
					return
				}
				secrets[i] = tok.Secret
			}
		}()
	}
	tg.Wait()
	close(tokErrs)
	if err := <-tokErrs; err != nil {
		b.Fatal(err)
	}
	progress("%d node tokens made in %v", *nodesFlag, time.Since(t0).Round(time.Millisecond))
	for i := 0; i < *nodesFlag; i++ {
		name := fmt.Sprintf("n%05d", i)
		tok := &api.Token{Secret: secrets[i]}
		nctx, ncancel := context.WithCancel(ctx)
		nodeCtx[name] = ncancel
		n := &simnode.Node{Name: name, Client: api.NewClient(srv.URL, tok.Secret, h2c(1)), Now: time.Now, Stats: &stats,
			Reg: api.Registration{Labels: map[string]string{"zone": fmt.Sprintf("z%d", i%3)},
				Spec: api.NodeSpec{Capacity: api.Resources{CPU: 64000, Memory: 256 << 30}}}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = n.Run(nctx)
		}()
		// A fleet joins over seconds, not all in one instant; a thundering
		// herd of registrations measures nothing but the herd.
		if i%100 == 99 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	last := time.Now()
	waitFor(b, "nodes alive", 5*time.Minute, func() bool {
		n := count(ctx, cli, st.AlivePrefix())
		if time.Since(last) > 10*time.Second {
			progress("%d of %d nodes alive after %v; heartbeats %d, failed %d, gone %d, registrations %d", n, *nodesFlag, time.Since(t0).Round(time.Second),
				stats.Heartbeats.Load(), stats.Failed.Load(), stats.Gone.Load(), stats.Registrations.Load())
			last = time.Now()
		}
		return n == int64(*nodesFlag)
	})
	progress("%d nodes registered and watching in %v", *nodesFlag, time.Since(t0).Round(time.Millisecond))

	go func() {
		_ = control.RunLeader(ctx, control.LoopConfig{Store: st, Log: log, Now: time.Now, Rand: control.NewRand(2), Batch: 1000, Candidates: 64, Identity: "bench"})
	}()

	// Placement: one service of -instances replicas.
	b.ResetTimer()
	start := time.Now()
	svc := &api.Service{Meta: api.Meta{Name: "c1m", Tenant: "bench"}, Spec: api.ServiceSpec{Replicas: *instancesFlag,
		Template: api.Template{Image: "busybox", Resources: api.Resources{CPU: 100, Memory: 64 << 20}}}}
	if err := ac.Create(ctx, svc); err != nil {
		b.Fatal(err)
	}
	// The scheduler writes a new instance already placed when it fits, so
	// "placed" covers "created".
	last = time.Now()
	waitFor(b, "all placed", 30*time.Minute, func() bool {
		n := count(ctx, cli, st.PlacedPrefix())
		if time.Since(last) > 10*time.Second {
			progress("%d of %d placed after %v; heartbeats failed %d, gone %d", n, *instancesFlag, time.Since(start).Round(time.Second), stats.Failed.Load(), stats.Gone.Load())
			last = time.Now()
		}
		return n == int64(*instancesFlag)
	})
	placeTime := time.Since(start)
	rate := float64(*instancesFlag) / placeTime.Seconds()
	b.StopTimer()
	b.ReportMetric(rate, "placements/s")
	b.ReportMetric(placeTime.Seconds(), "s-to-place-all")
	fmt.Printf("placement: %d instances on %d nodes fully placed in %v: %.0f placements/s; Nomad C1M %.0f/s; ratio %.2fx\n",
		*instancesFlag, *nodesFlag, placeTime.Round(time.Millisecond), rate, nomadC1MRate, rate/nomadC1MRate)

	// Measure the rest on a settled cluster: every agent has reported.
	waitFor(b, "all running", 30*time.Minute, func() bool {
		cur := &api.Service{}
		return ac.Get(ctx, "bench", "c1m", cur) == nil && cur.Status.Ready == *instancesFlag
	})
	fmt.Printf("running: every instance reported running by its agent %v after the service was created\n", time.Since(start).Round(time.Millisecond))

	// Watch fan-out: -watchers API watchers on the tenant's services see one change.
	fanout(b, ctx, ac, srv.URL)

	// Node death: stop one agent; its lease (3 s) expires; measure from the
	// expiry (its alive key deleted) to every instance placed elsewhere.
	victim := "n00000"
	onVictim := count(ctx, cli, st.NodePrefix(victim))
	wch := cli.Watch(ctx, st.AliveKey(victim))
	killed := time.Now()
	nodeCtx[victim]()
	var expired time.Time
	for resp := range wch {
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				expired = time.Now()
			}
		}
		if !expired.IsZero() {
			break
		}
	}
	waitFor(b, "replaced", 5*time.Minute, func() bool {
		return count(ctx, cli, st.NodePrefix(victim)) == 0 && count(ctx, cli, st.PlacedPrefix()) == int64(*instancesFlag)
	})
	repl := time.Since(expired)
	b.ReportMetric(repl.Seconds(), "s-expiry-to-replaced")
	fmt.Printf("node death: %d instances; lease expired %v after the agent stopped; replaced on other nodes %v after expiry (goal 2s)\n",
		onVictim, expired.Sub(killed).Round(time.Millisecond), repl.Round(time.Millisecond))
	fmt.Printf("agents: %d heartbeats, %d failed, %d leases found lapsed (each a false node death), %d registrations\n",
		stats.Heartbeats.Load(), stats.Failed.Load(), stats.Gone.Load(), stats.Registrations.Load())
	cancel()
	for _, c := range nodeCtx {
		c()
	}
	wg.Wait()
}

func fanout(b *testing.B, ctx context.Context, ac *api.Client, url string) {
	svc := &api.Service{Meta: api.Meta{Name: "fan", Tenant: "bench"}, Spec: api.ServiceSpec{Replicas: 0, Template: api.Template{Image: "busybox"}}}
	if err := ac.Create(ctx, svc); err != nil {
		b.Fatal(err)
	}
	n := *watchersFlag
	lat := make([]time.Duration, n)
	var ready, done sync.WaitGroup
	ready.Add(n)
	done.Add(n)
	var sent time.Time
	var mu sync.Mutex
	for i := 0; i < n; i++ {
		go func() {
			defer done.Done()
			w := ac.Watch(ctx, api.KindService, "bench", "", svc.ResourceVersion)
			defer w.Close()
			first := true
			for {
				if first {
					ready.Done()
					first = false
				}
				ev, err := w.Next()
				if err != nil {
					return
				}
				o := &api.Service{}
				_ = ev.Into(o)
				if o.Name == "fan" && o.Spec.Replicas == 0 && o.Spec.Template.Image == "busybox:2" {
					mu.Lock()
					lat[i] = time.Since(sent)
					mu.Unlock()
					return
				}
			}
		}()
	}
	ready.Wait()
	time.Sleep(2 * time.Second) // let every stream open
	// The service controller writes the status too: retry on conflict.
	for attempt := 0; ; attempt++ {
		cur := &api.Service{}
		if err := ac.Get(ctx, "bench", "fan", cur); err != nil {
			b.Fatal(err)
		}
		cur.Spec.Template.Image = "busybox:2"
		mu.Lock()
		sent = time.Now()
		mu.Unlock()
		err := ac.Update(ctx, cur)
		if err == nil {
			break
		}
		if !api.IsConflict(err) || attempt > 20 {
			b.Fatal(err)
		}
	}
	done.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p := func(q float64) time.Duration { return lat[int(q*float64(n-1))].Round(time.Microsecond) }
	b.ReportMetric(float64(p(0.99).Microseconds())/1000, "ms-fanout-p99")
	fmt.Printf("watch fan-out: %d API watchers; one update seen by all: p50 %v, p99 %v, max %v\n", n, p(0.5), p(0.99), lat[n-1].Round(time.Microsecond))
}

// h2c is an HTTP client speaking cleartext HTTP/2 over a pool of its own,
// keeping up to idle connections.
func h2c(idle int) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: idle, Protocols: &http.Protocols{}}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

// progress reports as the run goes (b.Logf would hold it to the end, and
// a run at fleet scale takes minutes).
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "  "+format+"\n", args...)
}

func count(ctx context.Context, cli *clientv3.Client, prefix string) int64 {
	r, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return -1
	}
	return r.Count
}

func waitFor(b *testing.B, what string, limit time.Duration, f func() bool) {
	b.Helper()
	deadline := time.Now().Add(limit)
	for !f() {
		if time.Now().After(deadline) {
			b.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(m.Run())
}

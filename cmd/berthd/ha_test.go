//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control"
	"github.com/berth-dev/berth/control/simnode"
	"github.com/berth-dev/berth/network/netnstest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// haServer is one `berthd server` on its own test host.
type haServer struct {
	name string // etcd member name
	ns   netnstest.NS
	addr string
	args []string
	log  string // stderr, appended over restarts

	mu sync.Mutex
	// cmd and exited belong to the current process; guarded by mu.
	cmd    *exec.Cmd
	exited chan struct{}

	api *api.Client
}

func (s *haServer) apiURL() string    { return "http://" + s.addr + ":7070" }
func (s *haServer) clientURL() string { return "http://" + s.addr + ":2379" }

// start runs the server (again, with the same data directory).
func (s *haServer) start(t *testing.T, bin string) {
	t.Helper()
	f, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := s.ns.Cmd(append([]string{bin}, s.args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start server %s: %v", s.name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
}

// kill SIGKILLs the server (and so its etcd member) and reaps it.
func (s *haServer) kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

func (s *haServer) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Pid
}

// running fails with the server's log if its process has ended.
func (s *haServer) running() error {
	s.mu.Lock()
	exited := s.exited
	s.mu.Unlock()
	select {
	case <-exited:
		b, _ := os.ReadFile(s.log)
		return fmt.Errorf("server %s exited:\n%s", s.name, tail(string(b), 3000))
	default:
		return nil
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// nsDialer dials from inside ns: the test process itself stays in the
// host's namespace.
func nsDialer(ns netnstest.NS) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// haCluster is three test hosts, each running one server and one etcd
// member, joined by a bridge in a hub namespace from which the test dials.
type haCluster struct {
	t       *testing.T
	bin     string
	hub     netnstest.NS
	servers []*haServer
	etcd    *clientv3.Client
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	ctx     context.Context
}

func newHACluster(t *testing.T) *haCluster {
	netnstest.RequireRoot(t)
	dir := os.Getenv("BERTH_BIN_DIR")
	if dir == "" {
		t.Skip("BERTH_BIN_DIR is not set: test.sh builds berthd there")
	}
	bin := filepath.Join(dir, "berthd")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no berthd in BERTH_BIN_DIR: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tag := netnstest.Unique()
	hub := netnstest.New(t, "ha"+tag+"hub")
	hub.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	hub.Run(t, "ip", "addr", "add", "10.215.0.1/24", "dev", "br0")
	hub.Run(t, "ip", "link", "set", "br0", "up")
	work := t.TempDir()
	token := "system.ha.secret-" + tag
	c := &haCluster{t: t, bin: bin, hub: hub, dial: nsDialer(hub), ctx: ctx}
	var initial []string
	for i := range 3 {
		s := &haServer{name: fmt.Sprintf("s%d", i), addr: fmt.Sprintf("10.215.0.%d", 10+i)}
		s.ns = netnstest.New(t, fmt.Sprintf("ha%sh%d", tag, i))
		port := fmt.Sprintf("p%d", i)
		netnstest.Link(t, s.ns, "eth0", s.addr+"/24", hub, port, "", 1500)
		hub.Run(t, "ip", "link", "set", port, "master", "br0")
		s.log = filepath.Join(work, s.name+".log")
		initial = append(initial, fmt.Sprintf("%s=http://%s:2380", s.name, s.addr))
		hc := &http.Client{Transport: &http.Transport{DialContext: c.dial, MaxIdleConnsPerHost: 8}}
		s.api = api.NewClient(s.apiURL(), token, hc)
		c.servers = append(c.servers, s)
	}
	for _, s := range c.servers {
		s.args = []string{"server", "--data-dir", filepath.Join(work, s.name), "--listen", s.addr + ":7070",
			"--admin-token", token, "--etcd-name", s.name, "--etcd-listen", s.clientURL(),
			"--etcd-peer-listen", "http://" + s.addr + ":2380", "--etcd-initial-cluster", strings.Join(initial, ",")}
	}
	// Processes end before their namespaces go (cleanups run last first).
	t.Cleanup(func() {
		for _, s := range c.servers {
			s.kill()
			if t.Failed() {
				b, _ := os.ReadFile(s.log)
				t.Logf("log of server %s:\n%s", s.name, tail(string(b), 4000))
			}
		}
	})
	// All three at once: a member is ready only once a quorum is up.
	for _, s := range c.servers {
		s.start(t, bin)
	}
	ec, err := clientv3.New(clientv3.Config{Endpoints: []string{c.servers[0].clientURL(), c.servers[1].clientURL(), c.servers[2].clientURL()},
		DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return c.dial(ctx, "tcp", addr)
		})}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ec.Close() })
	// The test's own goroutines stop first.
	t.Cleanup(cancel)
	c.etcd = ec
	for _, s := range c.servers {
		c.waitAPI(s, 45*time.Second)
	}
	c.settle()
	return c
}

// settle waits until the servers have made the pool's address blocks, the
// work a server does once its API answers: the kills below are to test a
// running control plane, not one starting up.
func (c *haCluster) settle() {
	c.t.Helper()
	last := -1
	poll(c.t, "address blocks made", 30*time.Second, nil, func() error {
		ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
		defer cancel()
		l, err := api.ListOf[*api.AddressBlock](ctx, c.servers[0].api, "", "")
		if err != nil {
			return err
		}
		n := len(l.Items)
		if n != last {
			last = n
			time.Sleep(500 * time.Millisecond)
			return fmt.Errorf("%d address blocks", n)
		}
		return nil
	})
	for _, s := range c.servers {
		if err := s.running(); err != nil {
			c.t.Fatal(err)
		}
	}
}

// waitAPI waits until s answers an authenticated read.
func (c *haCluster) waitAPI(s *haServer, within time.Duration) {
	c.t.Helper()
	poll(c.t, "API of "+s.name, within, s.running, func() error {
		ctx, cancel := context.WithTimeout(c.ctx, time.Second)
		defer cancel()
		return s.api.Get(ctx, "", api.DefaultTenant, &api.Tenant{})
	})
}

// schedulerLeader returns the index of the server whose leader loop holds
// the election: its identity ends in the server's pid.
func (c *haCluster) schedulerLeader() (int, error) {
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
	defer cancel()
	resp, err := c.etcd.Get(ctx, "/berth/leader/", append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)
	if err != nil {
		return -1, err
	}
	if len(resp.Kvs) == 0 {
		return -1, errors.New("no scheduler leader elected")
	}
	id := string(resp.Kvs[0].Value)
	pid, err := strconv.Atoi(id[strings.LastIndexByte(id, '-')+1:])
	if err != nil {
		return -1, fmt.Errorf("leader identity %q: %w", id, err)
	}
	for i, s := range c.servers {
		if s.running() == nil && s.pid() == pid {
			return i, nil
		}
	}
	return -1, fmt.Errorf("leader %q is no running server", id)
}

// raftLeader returns the index of the server whose etcd member leads raft,
// as the given survivor's member sees it.
func (c *haCluster) raftLeader(from int) (int, error) {
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
	defer cancel()
	st, err := c.etcd.Status(ctx, c.servers[from].clientURL())
	if err != nil {
		return -1, err
	}
	ml, err := c.etcd.MemberList(ctx)
	if err != nil {
		return -1, err
	}
	for _, m := range ml.Members {
		if m.ID == st.Leader {
			for i, s := range c.servers {
				if s.name == m.Name {
					return i, nil
				}
			}
		}
	}
	return -1, fmt.Errorf("member %x (seen by %s) leads no known server", st.Leader, c.servers[from].name)
}

// leaderChange polls the scheduler's election until a running server
// other than old leads it, and sends the time it saw that.
func (c *haCluster) leaderChange(old int) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		for c.ctx.Err() == nil {
			if i, err := c.schedulerLeader(); err == nil && i != old {
				ch <- time.Now()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return ch
}

// handedOver waits for a leaderChange and returns how long after the kill
// it came.
func (c *haCluster) handedOver(ch <-chan time.Time, killed time.Time) time.Duration {
	c.t.Helper()
	select {
	case at := <-ch:
		return at.Sub(killed)
	case <-time.After(30 * time.Second):
		c.t.Fatal("no new scheduler leader 30s after the kill")
		return 0
	}
}

// ack is one acknowledged create.
type ack struct {
	name        string
	started, at time.Time
	via         int
}

// writer keeps creating tenants through the given servers and records
// each create the API acknowledged. It starts a create every few
// milliseconds without waiting for the ones in flight, as many clients
// would: one create stuck in a dying member does not hide that the next
// ones succeed.
type writer struct {
	mu sync.Mutex
	// acks and failed are guarded by mu.
	acks   []ack
	failed int

	stop context.CancelFunc
	done chan struct{}
}

func (c *haCluster) startWriter(prefix string, via []int) *writer {
	ctx, cancel := context.WithCancel(c.ctx)
	w := &writer{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		inflight := make(chan struct{}, 512)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case <-ctx.Done():
				return
			case inflight <- struct{}{}:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-inflight }()
				s := via[i%len(via)]
				name := fmt.Sprintf("%s-%d", prefix, i)
				rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
				defer rcancel()
				started := time.Now()
				err := c.servers[s].api.Create(rctx, &api.Tenant{Meta: api.Meta{Name: name}})
				at := time.Now()
				w.mu.Lock()
				defer w.mu.Unlock()
				if err == nil {
					w.acks = append(w.acks, ack{name: name, started: started, at: at, via: s})
				} else if ctx.Err() == nil {
					w.failed++
				}
			}()
		}
	}()
	return w
}

// acked returns the acknowledged creates so far.
func (w *writer) acked() []ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]ack(nil), w.acks...)
}

// finish stops the writer and returns its acknowledged creates in the
// order of their acknowledgement, and how many failed.
func (w *writer) finish() ([]ack, int) {
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	slices.SortFunc(w.acks, func(a, b ack) int { return a.at.Compare(b.at) })
	return w.acks, w.failed
}

// ackedSince counts the creates that started after t and were acknowledged.
func ackedSince(acks []ack, t time.Time) (n int, first time.Duration) {
	for _, a := range acks {
		if !a.started.Before(t) {
			if d := a.at.Sub(t); n == 0 || d < first {
				first = d
			}
			n++
		}
	}
	return n, first
}

// longestGap is the longest time after t without an acknowledgement.
func longestGap(acks []ack, t time.Time) time.Duration {
	var gap time.Duration
	last := t
	for _, a := range acks {
		if a.at.Before(t) {
			continue
		}
		gap = max(gap, a.at.Sub(last))
		last = a.at
	}
	return gap
}

// killDuringWrites SIGKILLs server victim while the others take writes,
// and proves that both survivors keep answering and that no acknowledged
// write is lost. It returns the time of the kill and the creates
// acknowledged around it.
func (c *haCluster) killDuringWrites(victim int, prefix string) (time.Time, []ack) {
	t := c.t
	t.Helper()
	var survivors []int
	for i := range c.servers {
		if i != victim {
			survivors = append(survivors, i)
		}
	}
	w := c.startWriter(prefix, survivors)
	poll(t, "writes before the kill", 20*time.Second, nil, func() error {
		if n := len(w.acked()); n < 20 {
			return fmt.Errorf("%d acknowledged", n)
		}
		return nil
	})
	killed := time.Now()
	c.servers[victim].kill()
	// Writes through both survivors succeed again.
	poll(t, "writes after killing "+c.servers[victim].name, 30*time.Second, nil, func() error {
		per := map[int]int{}
		for _, a := range w.acked() {
			if a.started.After(killed) {
				per[a.via]++
			}
		}
		for _, s := range survivors {
			if per[s] < 10 {
				return fmt.Errorf("%d writes acknowledged through %s since the kill", per[s], c.servers[s].name)
			}
		}
		return nil
	})
	acks, failed := w.finish()
	n, first := ackedSince(acks, killed)
	t.Logf("killed server %s: first write started after the kill acknowledged %v after it; longest time without an acknowledgement %v; %d acknowledged since, %d acknowledged before, %d failed or timed out",
		c.servers[victim].name, first.Round(time.Millisecond), longestGap(acks, killed).Round(time.Millisecond), n, len(acks)-n, failed)
	for _, s := range survivors {
		c.waitAPI(c.servers[s], 10*time.Second)
		c.mustHoldAll(c.servers[s], acks)
	}
	return killed, acks
}

// mustHoldAll checks that every acknowledged tenant can be read through s.
func (c *haCluster) mustHoldAll(s *haServer, acks []ack) {
	c.t.Helper()
	var have map[string]bool
	poll(c.t, "list tenants through "+s.name, 10*time.Second, s.running, func() error {
		ctx, cancel := context.WithTimeout(c.ctx, 3*time.Second)
		defer cancel()
		l, err := api.ListOf[*api.Tenant](ctx, s.api, "", "")
		if err != nil {
			return err
		}
		have = map[string]bool{}
		for _, tn := range l.Items {
			have[tn.Name] = true
		}
		return nil
	})
	var lost []string
	for _, a := range acks {
		if !have[a.name] {
			lost = append(lost, a.name)
		}
	}
	if len(lost) > 0 {
		c.t.Fatalf("%d of %d acknowledged creates missing through %s: %v", len(lost), len(acks), s.name, lost)
	}
}

// runNode runs a simulated agent through server via, re-registering when
// its watch breaks (as a real agent reconnects), until the test ends.
func (c *haCluster) runNode(via *haServer, name string) {
	t := c.t
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	tok := &api.Token{Meta: api.Meta{Name: "node-" + name, Tenant: api.SystemTenant}, Role: api.RoleNode, Node: name}
	err := via.api.Create(ctx, tok)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	cl := via.api.WithToken(tok.Secret)
	nctx, stop := context.WithCancel(c.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var last string
		for nctx.Err() == nil {
			actx, acancel := context.WithCancel(nctx)
			n := &simnode.Node{Name: name, Client: cl, Now: time.Now,
				Reg: api.Registration{Spec: api.NodeSpec{Capacity: api.Resources{CPU: 4000, Memory: 8 << 30}}}}
			err := n.Run(actx)
			acancel()
			if err != nil && nctx.Err() == nil {
				if err.Error() != last {
					t.Logf("node %s reconnects: %v", name, err)
					last = err.Error()
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	}()
	t.Cleanup(func() {
		stop()
		<-done
	})
	poll(t, "node "+name+" ready", 15*time.Second, via.running, func() error {
		ctx, cancel := context.WithTimeout(c.ctx, time.Second)
		defer cancel()
		got := &api.Node{}
		if err := via.api.Get(ctx, "", name, got); err != nil {
			return err
		}
		if got.Status.Phase != api.NodeReady {
			return fmt.Errorf("phase %q", got.Status.Phase)
		}
		return nil
	})
}

// placedAndRunning reports whether the service has want instances, all
// placed on a node and running, as read through s.
func placedAndRunning(ctx context.Context, s *haServer, tenant, svc string, want int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	l, err := api.ListOf[*api.Instance](ctx, s.api, tenant, "service="+svc)
	if err != nil {
		return err
	}
	running := 0
	for _, in := range l.Items {
		if in.Spec.Node != "" && in.Status.Phase == api.PhaseRunning {
			running++
		}
	}
	if len(l.Items) != want || running != want {
		return fmt.Errorf("%d instances, %d placed and running, want %d", len(l.Items), running, want)
	}
	return nil
}

// Three servers over a three-member etcd, one per test host: the API
// answers on every server, killing the scheduler's leader (and its etcd
// member) loses no acknowledged write and hands the scheduler over, the
// killed server rejoins with its data, and killing the etcd raft leader's
// server leaves the control plane writing and scheduling.
func TestHAControlPlaneSurvivesTheLossOfAnyServer(t *testing.T) {
	c := newHACluster(t)
	s := c.servers

	// (1) One cluster: written through one server, read through the others.
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	if err := s[0].api.Create(ctx, &api.Tenant{Meta: api.Meta{Name: "shared"}}); err != nil {
		t.Fatalf("create through s0: %v", err)
	}
	cancel()
	for _, r := range s[1:] {
		ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
		err := r.api.Get(ctx, "", "shared", &api.Tenant{})
		cancel()
		if err != nil {
			t.Fatalf("read through %s what s0 wrote: %v", r.name, err)
		}
	}

	// (2) Kill the server that leads the scheduler.
	var leader int
	poll(t, "a scheduler leader", 15*time.Second, nil, func() (err error) {
		leader, err = c.schedulerLeader()
		return err
	})
	var raft int
	poll(t, "the raft leader", 10*time.Second, nil, func() (err error) {
		raft, err = c.raftLeader((leader + 1) % 3)
		return err
	})
	t.Logf("scheduler leader %s, etcd raft leader %s", s[leader].name, s[raft].name)
	survivor := s[(leader+1)%3]
	c.runNode(survivor, "n1")
	if err := survivor.api.Create(c.ctx, &api.Tenant{Meta: api.Meta{Name: "apps"}}); err != nil {
		t.Fatal(err)
	}
	changed := c.leaderChange(leader)
	killed, whileDown := c.killDuringWrites(leader, "w")

	// (3) The scheduler runs again under a new leader: a service created
	// after the kill is placed.
	svc := &api.Service{Meta: api.Meta{Name: "web", Tenant: "apps"}, Spec: api.ServiceSpec{Replicas: 3,
		Template: api.Template{Image: "busybox", Command: []string{"sleep", "1d"}, Resources: api.Resources{CPU: 100, Memory: 64 << 20}}}}
	poll(t, "create a service", 10*time.Second, survivor.running, func() error {
		ctx, cancel := context.WithTimeout(c.ctx, 3*time.Second)
		defer cancel()
		if err := survivor.api.Create(ctx, svc); err != nil && !api.IsConflict(err) {
			return err
		}
		return nil
	})
	poll(t, "instances placed after the hand-over", 30*time.Second, survivor.running, func() error {
		return placedAndRunning(c.ctx, survivor, "apps", "web", 3)
	})
	placed := time.Now()
	elected := c.handedOver(changed, killed)
	var next int
	poll(t, "the new scheduler leader", 10*time.Second, nil, func() (err error) {
		next, err = c.schedulerLeader()
		return err
	})
	t.Logf("scheduler handed over from %s to %s %v after the kill; service created after the kill placed and running %v after it",
		s[leader].name, s[next].name, elected.Round(time.Millisecond), placed.Sub(killed).Round(time.Millisecond))

	// (4) The killed server restarts on its data and serves what was
	// written while it was gone.
	s[leader].start(t, c.bin)
	c.waitAPI(s[leader], 30*time.Second)
	w := c.startWriter("x", []int{0, 1, 2})
	poll(t, "writes through the restarted server", 15*time.Second, s[leader].running, func() error {
		n := 0
		for _, a := range w.acked() {
			if a.via == leader {
				n++
			}
		}
		if n < 5 {
			return fmt.Errorf("%d acknowledged through %s", n, s[leader].name)
		}
		return nil
	})
	acks, _ := w.finish()
	c.mustHoldAll(s[leader], acks)
	if err := placedAndRunning(c.ctx, s[leader], "apps", "web", 3); err != nil {
		t.Fatalf("service through the restarted %s: %v", s[leader].name, err)
	}
	// Its own member is back in the cluster: it knows the raft leader and
	// serves a linearizable read of a key written while it was down.
	poll(t, "restarted member in the cluster", 10*time.Second, nil, func() error {
		ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
		defer cancel()
		st, err := c.etcd.Status(ctx, s[leader].clientURL())
		if err != nil {
			return err
		}
		if st.Leader == 0 || st.IsLearner {
			return fmt.Errorf("member %s: leader %x learner %v", s[leader].name, st.Leader, st.IsLearner)
		}
		return nil
	})
	one, err := clientv3.New(clientv3.Config{Endpoints: []string{s[leader].clientURL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return c.dial(ctx, "tcp", addr)
		})}})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	// Every create acknowledged while it was down is in its own copy.
	st := control.NewStore(one, "/berth")
	ctx, cancel = context.WithTimeout(c.ctx, 5*time.Second)
	resp, err := one.Get(ctx, st.KindPrefix(api.KindTenant, ""), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		t.Fatalf("read through the restarted member alone: %v", err)
	}
	held := map[string]bool{}
	for _, kv := range resp.Kvs {
		held[string(kv.Key)] = true
	}
	for _, a := range whileDown {
		if !held[st.Key(api.KindTenant, "", a.name)] {
			t.Fatalf("restarted member %s lacks tenant %s, acknowledged while it was down", s[leader].name, a.name)
		}
	}

	// (5) Kill the server whose etcd member leads raft: the other two
	// elect a new raft leader and keep writing and scheduling.
	poll(t, "a raft leader", 10*time.Second, nil, func() (err error) {
		raft, err = c.raftLeader(leader)
		return err
	})
	var sched int
	poll(t, "the scheduler leader", 10*time.Second, nil, func() (err error) {
		sched, err = c.schedulerLeader()
		return err
	})
	t.Logf("etcd raft leader %s, scheduler leader %s", s[raft].name, s[sched].name)
	var other *haServer
	for i, r := range s {
		if i != raft {
			other = r
		}
	}
	// A second node, served by a survivor: n1 may lose its server now.
	c.runNode(other, "n2")
	changed = c.leaderChange(sched)
	killed, _ = c.killDuringWrites(raft, "y")
	poll(t, "scale up after the raft leader's loss", 10*time.Second, other.running, func() error {
		ctx, cancel := context.WithTimeout(c.ctx, 3*time.Second)
		defer cancel()
		cur := &api.Service{}
		if err := other.api.Get(ctx, "apps", "web", cur); err != nil {
			return err
		}
		if cur.Spec.Replicas == 5 {
			return nil
		}
		cur.Spec.Replicas = 5
		return other.api.Update(ctx, cur)
	})
	poll(t, "instances placed after the raft leader's loss", 30*time.Second, other.running, func() error {
		return placedAndRunning(c.ctx, other, "apps", "web", 5)
	})
	placed = time.Now()
	if sched == raft {
		elected = c.handedOver(changed, killed)
		t.Logf("scheduler handed over %v after the kill", elected.Round(time.Millisecond))
	}
	t.Logf("after killing the raft leader %s: service scaled and placed %v after the kill", s[raft].name, placed.Sub(killed).Round(time.Millisecond))
}

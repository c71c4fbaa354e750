package control

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control/scheduler"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Two schedulers that both believe they lead, each with its own picture of
// the cluster, place the same pending instances at the same time: the
// allocation-key compare must keep every node within its capacity.
func TestRacingSchedulersNeverOverCommit(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("n%d", i)
		cl := c.token(t, api.SystemTenant, "node-"+name, api.RoleNode, name)
		// A node with room for exactly 10 instances of 100m.
		if _, err := cl.Register(c.ctx, name, api.Registration{Spec: api.NodeSpec{Capacity: api.Resources{CPU: 1000, Memory: 1 << 30}}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 40; i++ {
		in := &api.Instance{Meta: api.Meta{Name: fmt.Sprintf("i%02d", i), Tenant: "t1"},
			Spec: api.InstanceSpec{Template: api.Template{Image: "busybox", Resources: api.Resources{CPU: 100}}}}
		if err := c.admin.Create(c.ctx, in); err != nil {
			t.Fatal(err)
		}
	}
	loops := []*Loop{
		NewLoop(LoopConfig{Store: c.st, Log: c.log, Now: time.Now, Rand: NewRand(1), Batch: 3}),
		NewLoop(LoopConfig{Store: c.st, Log: c.log, Now: time.Now, Rand: NewRand(2), Batch: 3}),
	}
	conflicts := 0
	for round := 0; round < 20; round++ {
		var wg sync.WaitGroup
		errs := make([]error, len(loops))
		// Both load before either places: a loop that loaded after the
		// other's first placement, and then forgot its instances below,
		// would see the node's allocation as current and its room as free.
		for i, l := range loops {
			if err := l.Load(c.ctx); err != nil {
				t.Fatal(err)
			}
			if round == 0 {
				// In the first round each sees a different half of the
				// work, so only the nodes are contended, not the instances.
				for k := range l.s.instances {
					if (k < "t1/i20") == (i == 1) {
						delete(l.s.instances, k)
					}
				}
			}
		}
		for i, l := range loops {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = l.schedule(c.ctx)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil && !api.IsConflict(err) {
				t.Fatal(err)
			}
			if err != nil {
				conflicts++
			}
		}
	}
	l, err := api.ListOf[*api.Instance](c.ctx, c.admin, "t1", "")
	if err != nil {
		t.Fatal(err)
	}
	cpu := map[string]int64{}
	placed := 0
	for _, in := range l.Items {
		if in.Spec.Node != "" {
			placed++
			cpu[in.Spec.Node] += in.Spec.Template.Resources.CPU
		} else if in.Status.Reason != "no node fits: 3 nodes without 100m CPU free" {
			t.Errorf("pending %s: reason %q", in.Name, in.Status.Reason)
		}
	}
	for n, used := range cpu {
		if used > 1000 {
			t.Errorf("node %s over-committed: %dm of 1000m", n, used)
		}
	}
	if placed != 30 {
		t.Fatalf("%d placed, want 30 (three nodes of ten); per node %v", placed, cpu)
	}
	t.Logf("%d conflicting batches refused", conflicts)
}

func TestLeadershipFailsOver(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	c.startNode(t, "n0", nil, nil)
	run := func(id string) (stop func()) {
		ctx, cancel := context.WithCancel(c.ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = RunLeader(ctx, LoopConfig{Store: c.st, Log: c.log, Now: time.Now, Rand: NewRand(3), Batch: 50, Identity: id})
		}()
		return func() { cancel(); <-done }
	}
	stopA := run("a")
	t.Cleanup(stopA)
	sess, err := concurrency.NewSession(etcdClient)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, c.st.Root()+"leader")
	leader := func(want string) func() error {
		return func() error {
			r, err := el.Leader(c.ctx)
			if err != nil {
				return err
			}
			if got := string(r.Kvs[0].Value); got != want {
				return fmt.Errorf("leader %q, want %q", got, want)
			}
			return nil
		}
	}
	eventually(t, "a leads", leader("a"))
	stopB := run("b")
	t.Cleanup(stopB)

	s := service("one", 2)
	s.Tenant = "t1"
	if err := c.admin.Create(c.ctx, s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "placed by a", allRunning(t, c, "t1", "one", 2))
	if err := leader("a")(); err != nil {
		t.Fatalf("b took over while a still led: %v", err)
	}

	stopA()
	eventually(t, "b leads", leader("b"))
	s2 := service("two", 2)
	s2.Tenant = "t1"
	if err := c.admin.Create(c.ctx, s2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "placed by b", allRunning(t, c, "t1", "two", 2))
}

// The scheduler's view of a node counts only instances the mirror holds;
// this guards the table against instances on unknown nodes.
func TestTableIgnoresInstancesOnUnknownNodes(t *testing.T) {
	l := NewLoop(LoopConfig{})
	l.s = newState()
	l.s.nodes["a"] = &api.Node{Meta: api.Meta{Name: "a"}, Spec: api.NodeSpec{Capacity: api.Resources{CPU: 1000, Memory: 1 << 30}}}
	l.s.alive["a"] = true
	l.s.instances["t/x"] = &api.Instance{Meta: api.Meta{Name: "x", Tenant: "t"}, Spec: api.InstanceSpec{Node: "gone", Template: api.Template{Resources: api.Resources{CPU: 900}}}}
	l.s.instances["t/y"] = &api.Instance{Meta: api.Meta{Name: "y", Tenant: "t"}, Spec: api.InstanceSpec{Node: "a", Template: api.Template{Resources: api.Resources{CPU: 300}}}}
	tab := l.table()
	if len(tab.Nodes) != 1 || tab.Nodes[0].Allocated.CPU != 300 {
		t.Fatalf("table %+v", tab.Nodes[0])
	}
	if i, _ := scheduler.Place(tab, scheduler.Request{Resources: api.Resources{CPU: 700}}, 0, 0); i != 0 {
		t.Fatal("700m should fit next to 300m")
	}
}

// The mirror folds the loop's own writes in before the watch reports them;
// the watch's older news must not roll them back, and deletes must land.
func TestMirrorKeepsTheNewestVersion(t *testing.T) {
	st := NewStore(nil, "/m")
	s := newState()
	put := func(name, node string, rev int64) {
		t.Helper()
		in := &api.Instance{Meta: api.Meta{Name: name, Tenant: "t"}, Spec: api.InstanceSpec{Node: node}}
		if err := s.apply(st, false, []byte(st.Key(api.KindInstance, "t", name)), []byte(encode(in)), rev); err != nil {
			t.Fatal(err)
		}
	}
	put("a", "n1", 10)
	s.instances["t/a"] = &api.Instance{Meta: api.Meta{Name: "a", Tenant: "t", ResourceVersion: 12}, Spec: api.InstanceSpec{Node: "n2"}}
	put("a", "n1", 11)
	if got := s.instances["t/a"]; got.Spec.Node != "n2" || got.ResourceVersion != 12 {
		t.Fatalf("older event rolled back a newer write: %+v", got)
	}
	put("a", "n3", 13)
	if got := s.instances["t/a"]; got.Spec.Node != "n3" || got.ResourceVersion != 13 {
		t.Fatalf("newer event not applied: %+v", got)
	}
	if err := s.apply(st, true, []byte(st.Key(api.KindInstance, "t", "a")), nil, 14); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.instances["t/a"]; ok {
		t.Fatal("delete not applied")
	}
	if err := s.apply(st, false, []byte(st.AliveKey("n1")), []byte("1"), 15); err != nil || !s.alive["n1"] {
		t.Fatalf("alive key: %v", err)
	}
	if err := s.apply(st, true, []byte(st.AliveKey("n1")), nil, 16); err != nil || s.alive["n1"] {
		t.Fatalf("expired alive key: %v", err)
	}
	if err := s.apply(st, false, []byte(st.AllocKey("n1")), nil, 17); err != nil || s.alloc["n1"] != 17 {
		t.Fatalf("alloc key: %v %d", err, s.alloc["n1"])
	}
}

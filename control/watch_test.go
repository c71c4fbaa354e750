package control

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

func TestWatchResumesAfterADroppedConnection(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	l, err := api.ListOf[*api.Service](c.ctx, c.admin, "t1", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	w := c.admin.Watch(ctx, api.KindService, "t1", "app", l.Revision)
	defer w.Close()
	create := func(name string, labels map[string]string) {
		t.Helper()
		s := service(name, 0)
		s.Tenant, s.Labels = "t1", labels
		if err := c.admin.Create(c.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	next := func(wantType, wantName string) {
		t.Helper()
		ev, err := w.Next()
		if err != nil {
			t.Fatal(err)
		}
		s := &api.Service{}
		if err := ev.Into(s); err != nil {
			t.Fatal(err)
		}
		if ev.Type != wantType || s.Name != wantName || s.ResourceVersion != ev.Revision {
			t.Fatalf("got %s %s@%d (event at %d), want %s %s", ev.Type, s.Name, s.ResourceVersion, ev.Revision, wantType, wantName)
		}
	}
	create("a", map[string]string{"app": "a"})
	next(api.Added, "a")

	// Everything written while the stream is down arrives after it comes
	// back, once, in order; the selector still filters.
	c.srv.CloseClientConnections()
	create("b", map[string]string{"app": "b"})
	create("nolabel", map[string]string{"other": "x"})
	if err := c.admin.Delete(c.ctx, api.KindService, "t1", "a", 0); err != nil {
		t.Fatal(err)
	}
	next(api.Added, "b")
	next(api.Deleted, "a")
	c.srv.CloseClientConnections()
	create("c", map[string]string{"app": "c"})
	next(api.Added, "c")
}

func TestWatchFromCompactedHistoryIsGone(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	l, err := api.ListOf[*api.Service](c.ctx, c.admin, "t1", "")
	if err != nil {
		t.Fatal(err)
	}
	var s *api.Service
	for _, name := range []string{"a", "b"} {
		s = service(name, 0)
		s.Tenant = "t1"
		if err := c.admin.Create(c.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// History before b's creation is gone; the watch would start at a's.
	if _, err := etcdClient.Compact(c.ctx, s.ResourceVersion); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	w := c.admin.Watch(ctx, api.KindService, "t1", "", l.Revision)
	defer w.Close()
	if _, err := w.Next(); api.Code(err) != http.StatusGone {
		t.Fatalf("got %v, want 410", err)
	}
}

func TestNodeAgentContract(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	n1 := c.token(t, api.SystemTenant, "node-n1", api.RoleNode, "n1")
	n2 := c.token(t, api.SystemTenant, "node-n2", api.RoleNode, "n2")
	reg := api.Registration{Labels: map[string]string{"zone": "a"}, Spec: api.NodeSpec{Capacity: api.Resources{CPU: 2000, Memory: 4 << 30}}}
	lease, err := n1.Register(c.ctx, "n1", reg)
	if err != nil {
		t.Fatal(err)
	}
	if lease.TTL != 2 {
		t.Fatalf("lease %+v, want the 2 s TTL", lease)
	}
	if _, err := n2.Register(c.ctx, "n1", reg); api.Code(err) != http.StatusForbidden {
		t.Fatalf("registering as another node: got %v, want 403", err)
	}
	if _, err := n1.Heartbeat(c.ctx, "n1", lease); err != nil {
		t.Fatal(err)
	}
	// Registering again replaces the lease; the old one is refused, so a
	// node never keeps a stale lease alive while its real one lapses.
	lease2, err := n1.Register(c.ctx, "n1", reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n1.Heartbeat(c.ctx, "n1", lease); api.Code(err) != http.StatusGone {
		t.Fatalf("heartbeat on a replaced lease: got %v, want 410", err)
	}
	if _, err := n1.Heartbeat(c.ctx, "n1", lease2); err != nil {
		t.Fatal(err)
	}

	// A node sees only the instances placed on it, and reports only theirs.
	l := NewLoop(LoopConfig{Store: c.st, Log: c.log, Now: time.Now, Rand: NewRand(1), Batch: 10})
	in := &api.Instance{Meta: api.Meta{Name: "web", Tenant: "t1"}, Spec: api.InstanceSpec{Template: api.Template{Image: "busybox"}}}
	if err := c.admin.Create(c.ctx, in); err != nil {
		t.Fatal(err)
	}
	empty, err := n1.NodeInstances(c.ctx, "n1")
	if err != nil || len(empty.Items) != 0 {
		t.Fatalf("before placement: %v %d", err, len(empty.Items))
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	w := n1.WatchNode(ctx, "n1", empty.Revision)
	defer w.Close()
	if err := l.Load(c.ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Cycle(c.ctx); err != nil {
		t.Fatal(err)
	}
	ev, err := w.Next()
	if err != nil {
		t.Fatal(err)
	}
	got := &api.Instance{}
	if err := ev.Into(got); err != nil || ev.Type != api.Added || got.Name != "web" || got.Spec.Node != "n1" {
		t.Fatalf("watch: %v %s %+v", err, ev.Type, got.Spec)
	}
	if _, err := n2.NodeInstances(c.ctx, "n1"); api.Code(err) != http.StatusForbidden {
		t.Fatalf("listing another node's instances: got %v, want 403", err)
	}
	if _, err := n2.ReportStatus(c.ctx, "t1", "web", api.InstanceStatus{Phase: api.PhaseRunning}); api.Code(err) != http.StatusForbidden {
		t.Fatalf("reporting for another node's instance: got %v, want 403", err)
	}
	if _, err := n1.ReportStatus(c.ctx, "t1", "web", api.InstanceStatus{Phase: "dancing"}); !api.IsInvalid(err) {
		t.Fatalf("unknown phase: got %v, want 400", err)
	}
	st := api.InstanceStatus{Phase: api.PhaseRunning, Health: api.HealthHealthy, IP: mustPrefix("10.1.0.7/32").Addr(), Restarts: 0}
	rep, err := n1.ReportStatus(c.ctx, "t1", "web", st)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status.Phase != api.PhaseRunning || rep.Status.IP.String() != "10.1.0.7" || rep.Status.ObservedNode != "n1" {
		t.Fatalf("stored status %+v", rep.Status)
	}
	// A node token reads no tenant's objects.
	if err := n1.Get(c.ctx, "t1", "web", &api.Instance{}); api.Code(err) != http.StatusForbidden {
		t.Fatalf("node reading a tenant object: got %v, want 403", err)
	}
}

func TestTokensNeverShowTheirHash(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	c.token(t, "t1", "ops", api.RoleTenantAdmin, "")
	tok := &api.Token{}
	if err := c.admin.Get(c.ctx, "t1", "ops", tok); err != nil {
		t.Fatal(err)
	}
	l, err := api.ListOf[*api.Token](c.ctx, c.admin, "t1", "")
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("list: %v", err)
	}
	if tok.SecretHash != "" || tok.Secret != "" || l.Items[0].SecretHash != "" {
		t.Fatalf("token read back with secret material: %+v", tok)
	}
}

func TestEventsRecordNodeLoss(t *testing.T) {
	c := newCluster(t, true)
	c.tenant(t, "t1")
	stop := c.startNode(t, "n0", nil, nil)
	c.startNode(t, "n1", nil, nil)
	in := &api.Instance{Meta: api.Meta{Name: "solo", Tenant: "t1"}, Spec: api.InstanceSpec{Pin: "n0", Template: api.Template{Image: "busybox"}}}
	if err := c.admin.Create(c.ctx, in); err != nil {
		t.Fatal(err)
	}
	eventually(t, "running on n0", func() error {
		got := &api.Instance{}
		if err := c.admin.Get(c.ctx, "t1", "solo", got); err != nil {
			return err
		}
		if got.Spec.Node != "n0" || got.Status.Phase != api.PhaseRunning {
			return fmt.Errorf("on %q phase %q", got.Spec.Node, got.Status.Phase)
		}
		return nil
	})
	stop()
	eventually(t, "lost, replaced, recorded", func() error {
		got := &api.Instance{}
		if err := c.admin.Get(c.ctx, "t1", "solo", got); err != nil {
			return err
		}
		// Pinned to the dead node, it may run anywhere once that node is gone.
		if got.Spec.Node != "n1" || got.Status.Phase != api.PhaseRunning {
			return fmt.Errorf("on %q phase %q reason %q", got.Spec.Node, got.Status.Phase, got.Status.Reason)
		}
		evs, err := api.ListOf[*api.Event](c.ctx, c.admin, "t1", "")
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Reason == "NodeLost" && e.Object == "nodes/n0" && strings.Contains(e.Message, "1 instances rescheduled") {
				return nil
			}
		}
		return fmt.Errorf("no NodeLost event among %d", len(evs.Items))
	})
}

package control

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

func placedOn(ins []*api.Instance) map[string]int {
	m := map[string]int{}
	for _, in := range ins {
		m[in.Spec.Node]++
	}
	return m
}

func allRunning(t *testing.T, c *cluster, tenant, svc string, want int) func() error {
	return func() error {
		ins := instancesOf(t, c.admin, tenant, svc)
		running := 0
		for _, in := range ins {
			if in.Status.Phase == api.PhaseRunning {
				running++
			}
		}
		if len(ins) != want || running != want {
			return fmt.Errorf("%d instances, %d running, want %d", len(ins), running, want)
		}
		return nil
	}
}

func TestServiceIsSpreadAndReplacedWhenANodeDies(t *testing.T) {
	c := newCluster(t, true)
	c.tenant(t, "shop")
	stop := map[string]func(){}
	for i, zone := range []string{"a", "a", "b"} {
		name := fmt.Sprintf("n%d", i)
		stop[name] = c.startNode(t, name, map[string]string{"zone": zone}, nil)
	}
	s := service("web", 6)
	s.Tenant = "shop"
	if err := c.admin.Create(c.ctx, s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "6 running", allRunning(t, c, "shop", "web", 6))
	// Zone b has one node, zone a two: spreading by zone first puts half on n2.
	got := placedOn(instancesOf(t, c.admin, "shop", "web"))
	if got["n2"] != 3 || got["n0"]+got["n1"] != 3 {
		t.Fatalf("placement %v, want 3 in zone b and 3 in zone a", got)
	}

	stop["n2"]()
	eventually(t, "replaced off the dead node", func() error {
		ins := instancesOf(t, c.admin, "shop", "web")
		if err := allRunning(t, c, "shop", "web", 6)(); err != nil {
			return err
		}
		if n := placedOn(ins)["n2"]; n != 0 {
			return fmt.Errorf("%d still on n2", n)
		}
		return nil
	})
	n := &api.Node{}
	if err := c.admin.Get(c.ctx, "", "n2", n); err != nil || n.Status.Phase != api.NodeNotReady {
		t.Fatalf("dead node: %v phase %q", err, n.Status.Phase)
	}

	// Scale down through the API.
	eventually(t, "scale down", func() error {
		cur := &api.Service{}
		if err := c.admin.Get(c.ctx, "shop", "web", cur); err != nil {
			return err
		}
		cur.Spec.Replicas = 2
		return c.admin.Update(c.ctx, cur)
	})
	eventually(t, "2 running", allRunning(t, c, "shop", "web", 2))
}

func TestUnschedulableInstanceSaysWhy(t *testing.T) {
	c := newCluster(t, true)
	c.tenant(t, "t1")
	c.startNode(t, "n0", map[string]string{"zone": "a"}, nil)
	c.startNode(t, "n1", map[string]string{"zone": "b"}, nil)
	in := &api.Instance{Meta: api.Meta{Name: "big", Tenant: "t1"}, Spec: api.InstanceSpec{Template: api.Template{
		Image: "busybox", Resources: api.Resources{Memory: 16 << 30},
		Constraints: []api.Constraint{{Key: "zone", Op: api.OpEqual, Value: "a"}}}}}
	if err := c.admin.Create(c.ctx, in); err != nil {
		t.Fatal(err)
	}
	eventually(t, "reason recorded", func() error {
		got := &api.Instance{}
		if err := c.admin.Get(c.ctx, "t1", "big", got); err != nil {
			return err
		}
		want := "no node fits: 1 node excluded by constraint zone==a; 1 node without 16 GiB memory free"
		if got.Status.Phase != api.PhasePending || got.Status.Reason != want {
			return fmt.Errorf("phase %q reason %q, want %q", got.Status.Phase, got.Status.Reason, want)
		}
		return nil
	})
}

func TestDrainAndMove(t *testing.T) {
	c := newCluster(t, true)
	c.tenant(t, "t1")
	for i := 0; i < 3; i++ {
		c.startNode(t, fmt.Sprintf("n%d", i), nil, nil)
	}
	s := service("api", 3)
	s.Tenant = "t1"
	if err := c.admin.Create(c.ctx, s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "3 running", allRunning(t, c, "t1", "api", 3))
	ins := instancesOf(t, c.admin, "t1", "api")
	target := ins[0]
	dest := "n0"
	if target.Spec.Node == "n0" {
		dest = "n1"
	}
	if _, err := c.admin.Move(c.ctx, "t1", target.Name, dest); err != nil {
		t.Fatal(err)
	}
	eventually(t, "moved", func() error {
		got := &api.Instance{}
		if err := c.admin.Get(c.ctx, "t1", target.Name, got); err != nil {
			return err
		}
		if got.Spec.Node != dest || got.Status.Phase != api.PhaseRunning {
			return fmt.Errorf("on %q phase %q, want running on %s", got.Spec.Node, got.Status.Phase, dest)
		}
		return nil
	})

	if _, err := c.admin.Drain(c.ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "drained", func() error {
		n := &api.Node{}
		if err := c.admin.Get(c.ctx, "", "n2", n); err != nil {
			return err
		}
		if n.Status.Phase != api.NodeDrained || !n.Spec.Unschedulable {
			return fmt.Errorf("n2 phase %q unschedulable %v", n.Status.Phase, n.Spec.Unschedulable)
		}
		if on := placedOn(instancesOf(t, c.admin, "t1", "api"))["n2"]; on != 0 {
			return fmt.Errorf("%d instances still on n2", on)
		}
		return allRunning(t, c, "t1", "api", 3)()
	})
}

func TestRollingUpdateStopsOnUnhealthyAndRollsBack(t *testing.T) {
	c := newCluster(t, true)
	c.tenant(t, "t1")
	// Instances of the "bad" image run but fail their health check.
	behave := func(in *api.Instance) api.InstanceStatus {
		st := api.InstanceStatus{Phase: api.PhaseRunning, Health: api.HealthHealthy, StartedAt: time.Now()}
		if in.Spec.Template.Image == "bad" {
			st.Health = api.HealthUnhealthy
		}
		return st
	}
	for i := 0; i < 2; i++ {
		c.startNode(t, fmt.Sprintf("n%d", i), nil, behave)
	}
	s := service("web", 4)
	s.Tenant = "t1"
	s.Spec.Parallelism = 2
	if err := c.admin.Create(c.ctx, s); err != nil {
		t.Fatal(err)
	}
	getSvc := func() *api.Service {
		got := &api.Service{}
		if err := c.admin.Get(c.ctx, "t1", "web", got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	eventually(t, "rolled out", func() error {
		if st := getSvc().Status; st.Rollout != api.RolloutComplete || st.Ready != 4 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	good := getSvc().Spec.Template.Hash()

	// A good update replaces every instance.
	eventually(t, "update", func() error {
		cur := getSvc()
		cur.Spec.Template.Env = map[string]string{"V": "2"}
		return c.admin.Update(c.ctx, cur)
	})
	eventually(t, "second rollout", func() error {
		st := getSvc().Status
		if st.Rollout != api.RolloutComplete || st.Updated != 4 || st.Ready != 4 || st.TemplateHash == good {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	v2 := getSvc().Spec.Template.Hash()

	// A bad one stops after the first batch, keeping every old instance
	// (none retires before a new one is ready).
	eventually(t, "bad update", func() error {
		cur := getSvc()
		cur.Spec.Template.Image = "bad"
		return c.admin.Update(c.ctx, cur)
	})
	eventually(t, "rollout stopped", func() error {
		st := getSvc().Status
		if st.Rollout != api.RolloutFailed || !strings.Contains(st.Message, "health check failing") {
			return fmt.Errorf("status %+v", st)
		}
		old, bad := 0, 0
		for _, in := range instancesOf(t, c.admin, "t1", "web") {
			switch {
			case in.Spec.TemplateHash == v2 && in.Spec.StopAt.IsZero():
				old++
			case in.Spec.Template.Image == "bad":
				bad++
			}
		}
		if old != 4 || bad != 2 {
			return fmt.Errorf("%d old instances kept, %d new; want 4 and 2 (parallelism 2)", old, bad)
		}
		return nil
	})

	// Rollback restores the last stable template.
	eventually(t, "rollback", func() error {
		cur := getSvc()
		cur.Spec.Template = *cur.Status.Stable
		return c.admin.Update(c.ctx, cur)
	})
	eventually(t, "rolled back", func() error {
		st := getSvc().Status
		if st.Rollout != api.RolloutComplete || st.TemplateHash != v2 || st.Ready != 4 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

func TestCrashingInstanceIsRestartedThenReportedCrashLooping(t *testing.T) {
	c := newCluster(t, true)
	c.tenant(t, "t1")
	c.startNode(t, "n0", nil, func(in *api.Instance) api.InstanceStatus {
		now := time.Now()
		return api.InstanceStatus{Phase: api.PhaseExited, ExitCode: 1, StartedAt: now, FinishedAt: now.Add(-time.Hour)}
	})
	in := &api.Instance{Meta: api.Meta{Name: "crash", Tenant: "t1"}, Spec: api.InstanceSpec{Template: api.Template{Image: "busybox", Restart: api.RestartOnFailure}}}
	if err := c.admin.Create(c.ctx, in); err != nil {
		t.Fatal(err)
	}
	// FinishedAt an hour back puts every back-off in the past, so restarts
	// follow each other at once and the test needs no clock.
	eventually(t, "crash loop reported", func() error {
		got := &api.Instance{}
		if err := c.admin.Get(c.ctx, "t1", "crash", got); err != nil {
			return err
		}
		if got.Status.Restarts < 5 || !got.Status.CrashLoop {
			return fmt.Errorf("restarts %d crash loop %v", got.Status.Restarts, got.Status.CrashLoop)
		}
		return nil
	})
}

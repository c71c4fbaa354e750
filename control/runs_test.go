package control

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// With the leader in the server's process, a standalone instance is made
// placed: one write, answered with its node. What the create's own
// transaction refuses is still refused, and what cannot be placed now is
// made unplaced, for the scheduler to say why.
func TestRunsAreCreatedPlaced(t *testing.T) {
	c := newCluster(t, true)
	c.tenant(t, "shop")
	c.startNode(t, "n1", nil, nil)
	prep := &prepRecorder{node: map[string]string{}, stored: map[string][]bool{}}
	c.runs.SetPreparer(prep)
	run := func(name string, mod func(*api.Instance)) (*api.Instance, error) {
		in := &api.Instance{Meta: api.Meta{Name: name, Tenant: "shop"}, Spec: api.InstanceSpec{AutoRemove: true, Desired: api.DesiredRunning,
			Template: api.Template{Image: "busybox", Command: []string{"true"}, Restart: api.RestartNever, Resources: api.Resources{CPU: 100, Memory: 1 << 20}}}}
		if mod != nil {
			mod(in)
		}
		return in, c.admin.Create(c.ctx, in)
	}
	created := func(in *api.Instance) int64 {
		t.Helper()
		resp, err := etcdClient.Get(context.Background(), c.st.Key(api.KindInstance, in.Tenant, in.Name))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s in the store: %v %v", in.Name, resp, err)
		}
		return resp.Kvs[0].CreateRevision
	}

	// The loop takes a run when it is idle; at first it runs cycles (the
	// node's registration, its reports), and a run it does not take is
	// made by the server, placed a moment later.
	var in *api.Instance
	n := 0
	eventually(t, "a run created placed", func() error {
		n++
		var err error
		if in, err = run(fmt.Sprintf("r%d", n), nil); err != nil {
			return err
		}
		if in.Spec.Node != "n1" || in.Status.Phase != api.PhasePlaced {
			return fmt.Errorf("run created on %q, %s: want placed on n1", in.Spec.Node, in.Status.Phase)
		}
		return nil
	})
	// Placed in the write that made it (the node's reports may follow).
	if cr := created(in); in.ResourceVersion != cr {
		t.Fatalf("run made at %d, answered placed as of %d: want one write", cr, in.ResourceVersion)
	}
	// The node's index holds it: the agent's watch sees it.
	idx, err := etcdClient.Get(context.Background(), c.st.NodePrefix("n1")+in.Tenant+"/"+in.Name, clientv3.WithCountOnly())
	if err != nil || idx.Count != 1 {
		t.Fatalf("n1's index: %v %v, want %s", idx, err, in.Name)
	}

	// The node was asked to prepare it on the way, and told it was stored.
	if node, stored := prep.of(in.Name); node != "n1" || !slices.Equal(stored, []bool{true}) {
		t.Fatalf("%s prepared on %q, stored %v: want n1, [true]", in.Name, node, stored)
	}

	if _, err := run(in.Name, nil); !api.IsConflict(err) {
		t.Fatalf("a second run named %s: %v, want a conflict", in.Name, err)
	}
	if _, err := run("other", func(in *api.Instance) { in.Tenant = "nobody" }); !api.IsNotFound(err) {
		t.Fatalf("a run in a missing tenant: %v, want 404", err)
	}
	// Too big for any node: made unplaced, and the scheduler says why.
	big, err := run("big", func(in *api.Instance) { in.Spec.Template.Resources.Memory = 1 << 50 })
	if err != nil {
		t.Fatal(err)
	}
	if big.Spec.Node != "" {
		t.Fatalf("an instance no node fits was placed on %s", big.Spec.Node)
	}
	// What the loop failed to store was dropped; what it could not place
	// was never prepared.
	if _, stored := prep.of("other"); slices.Contains(stored, true) {
		t.Fatalf("a run in a missing tenant was stored as prepared: %v", stored)
	}
	if node, _ := prep.of("big"); node != "" {
		t.Fatalf("an instance no node fits was prepared on %s", node)
	}
	eventually(t, "big to be pending with a reason", func() error {
		got := &api.Instance{}
		if err := c.admin.Get(c.ctx, "shop", "big", got); err != nil {
			return err
		}
		if got.Status.Phase != api.PhasePending || got.Status.Reason == "" {
			return api.Errorf(http.StatusConflict, "phase %s, reason %q", got.Status.Phase, got.Status.Reason)
		}
		return nil
	})
	// Made stopped (berth create): not placed until started.
	stopped, err := run("stopped", func(in *api.Instance) { in.Spec.Desired = api.DesiredStopped })
	if err != nil {
		t.Fatal(err)
	}
	if stopped.Spec.Node != "" {
		t.Fatalf("a stopped instance was placed on %s at its create", stopped.Spec.Node)
	}
}

// prepRecorder is a Preparer that records what it is asked.
type prepRecorder struct {
	mu     sync.Mutex
	node   map[string]string // instance name → node it was prepared on
	stored map[string][]bool
}

func (p *prepRecorder) Prepare(in *api.Instance) func(bool) {
	p.mu.Lock()
	p.node[in.Name] = in.Spec.Node
	p.mu.Unlock()
	return func(ok bool) {
		p.mu.Lock()
		p.stored[in.Name] = append(p.stored[in.Name], ok)
		p.mu.Unlock()
	}
}

func (p *prepRecorder) of(name string) (node string, stored []bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.node[name], slices.Clone(p.stored[name])
}

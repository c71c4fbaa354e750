package control

import (
	"context"
	"net/http"
	"testing"

	"github.com/berth-dev/berth/api"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A group of reports is read in one transaction and written in one; a
// second report of the same instance waits a round, and one refused by
// its apply is refused after a linearizable read.
func TestReportsAreWrittenInGroups(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	for _, name := range []string{"a", "b", "c"} {
		in := &api.Instance{Meta: api.Meta{Name: name, Tenant: "t1"}, Spec: api.InstanceSpec{Node: "n1", Template: api.Template{Image: "busybox"}}}
		if err := c.st.Create(c.ctx, in); err != nil {
			t.Fatal(err)
		}
	}
	restarts := func(n int) func(*api.Instance) error {
		return func(in *api.Instance) error {
			in.Status = api.InstanceStatus{Phase: api.PhaseRunning, Restarts: n}
			return nil
		}
	}
	refuse := func(*api.Instance) error { return api.Errorf(http.StatusForbidden, "not yours") }
	ctx := context.Background()
	group := []*report{
		{ctx: ctx, tenant: "t1", name: "a", apply: restarts(1)},
		{ctx: ctx, tenant: "t1", name: "b", apply: refuse},
		{ctx: ctx, tenant: "t1", name: "c", apply: restarts(1)},
		{ctx: ctx, tenant: "t1", name: "a", apply: restarts(2)},
		{ctx: ctx, tenant: "t1", name: "gone", apply: restarts(1)},
	}
	for _, r := range group {
		r.done = make(chan reportResult, 1)
	}
	(&reportWriter{st: c.st, max: reportGroup}).flush(ctx, group)
	res := make([]reportResult, len(group))
	for i, r := range group {
		res[i] = <-r.done
	}
	if res[0].err != nil || res[2].err != nil || res[3].err != nil {
		t.Fatalf("results %+v", res)
	}
	if res[0].in.ResourceVersion != res[2].in.ResourceVersion || res[3].in.ResourceVersion <= res[0].in.ResourceVersion {
		t.Errorf("versions a %d, c %d, a again %d: want a and c in one write, a again after", res[0].in.ResourceVersion, res[2].in.ResourceVersion, res[3].in.ResourceVersion)
	}
	if api.Code(res[1].err) != http.StatusForbidden || api.Code(res[4].err) != http.StatusNotFound {
		t.Errorf("refused: %v; missing instance: %v", res[1].err, res[4].err)
	}
	got, err := c.st.Get(ctx, api.KindInstance, "t1", "a")
	if err != nil {
		t.Fatal(err)
	}
	if a := got.(*api.Instance); a.Status.Restarts != 2 || a.ResourceVersion != res[3].in.ResourceVersion {
		t.Errorf("stored a: restarts %d at %d", a.Status.Restarts, a.ResourceVersion)
	}
	// The node's index copy is written with it.
	idx, err := c.st.Client().Get(ctx, c.st.NodePrefix("n1")+"t1/a")
	if err != nil || len(idx.Kvs) != 1 || idx.Kvs[0].ModRevision != res[3].in.ResourceVersion {
		t.Errorf("index entry: %v %+v", err, idx)
	}
}

func TestANodesDeathEndsTheLeadersRest(t *testing.T) {
	st := NewStore(nil, "/p")
	ev := func(typ mvccpb.Event_EventType, key string) clientv3.WatchResponse {
		return clientv3.WatchResponse{Events: []*clientv3.Event{{Type: typ, Kv: &mvccpb.KeyValue{Key: []byte(key)}}}}
	}
	for _, c := range []struct {
		resp clientv3.WatchResponse
		want bool
	}{
		{ev(mvccpb.DELETE, st.AliveKey("n1")), true},
		{ev(mvccpb.PUT, st.AliveKey("n1")), false},
		{ev(mvccpb.DELETE, st.Key(api.KindInstance, "t", "a")), false},
		{ev(mvccpb.DELETE, st.AllocKey("n1")), false},
	} {
		if got := st.nodeLost(c.resp); got != c.want {
			t.Errorf("%s %s: node lost %v, want %v", c.resp.Events[0].Type, c.resp.Events[0].Kv.Key, got, c.want)
		}
	}
}

func TestANewRunEndsTheLeadersRest(t *testing.T) {
	st := NewStore(nil, "/p")
	s := newState()
	s.instances["t/run"] = &api.Instance{Meta: api.Meta{Name: "run", Tenant: "t"}}
	s.instances["t/placed"] = &api.Instance{Meta: api.Meta{Name: "placed", Tenant: "t"}, Spec: api.InstanceSpec{Node: "n1"}}
	s.instances["t/web-x"] = &api.Instance{Meta: api.Meta{Name: "web-x", Tenant: "t"}, Spec: api.InstanceSpec{Service: "web"}}
	ev := func(create bool, key string) clientv3.WatchResponse {
		kv := &mvccpb.KeyValue{Key: []byte(key), CreateRevision: 5, ModRevision: 5}
		if !create {
			kv.CreateRevision = 4
		}
		return clientv3.WatchResponse{Events: []*clientv3.Event{{Type: mvccpb.PUT, Kv: kv}}}
	}
	for _, c := range []struct {
		resp clientv3.WatchResponse
		want bool
	}{
		{ev(true, st.Key(api.KindInstance, "t", "run")), true},
		{ev(false, st.Key(api.KindInstance, "t", "run")), false},   // a change, not a new run
		{ev(true, st.Key(api.KindInstance, "t", "placed")), false}, // placed already
		{ev(true, st.Key(api.KindInstance, "t", "web-x")), false},  // a service's: the leader made it
		{ev(true, st.Key(api.KindService, "t", "run")), false},
	} {
		if got := s.newRun(st, c.resp); got != c.want {
			t.Errorf("%s: new run %v, want %v", c.resp.Events[0].Kv.Key, got, c.want)
		}
	}
}

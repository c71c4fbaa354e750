package control

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// feedFor is a started feed over a store that is never read: publish and
// subscribe need no etcd.
func feedFor(from int64) *watchFeed {
	f := newNodeFeed(NewStore(nil, "/p"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.started, f.from = true, from
	return f
}

// put is an index event: instance name placed on node at rev.
func put(t *testing.T, node, name string, rev int64) *clientv3.Event {
	t.Helper()
	in := &api.Instance{Meta: api.Meta{Name: name, Tenant: "t"}, Spec: api.InstanceSpec{Node: node}}
	v, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte("/p/idx/node/" + node + "/t/" + name),
		Value: v, CreateRevision: rev, ModRevision: rev}}
}

// names decodes what sub has to send.
func names(t *testing.T, f *watchFeed, sub *feedSub) ([]string, error) {
	t.Helper()
	lines, err := f.take(sub)
	var got []string
	for _, l := range lines {
		var ev api.WatchEvent
		if err := json.Unmarshal(l, &ev); err != nil {
			t.Fatal(err)
		}
		in := &api.Instance{}
		if err := ev.Into(in); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s@%d", in.Name, ev.Revision))
	}
	return got, err
}

func TestFeedDeliversEachNodeItsOwnChangesAfterItsRevision(t *testing.T) {
	f := feedFor(10)
	if _, ok := f.subscribe("n1", 9, nil); ok {
		t.Fatal("a watch from before the feed's start was taken; etcd must serve it")
	}
	// n1 listed at 12, but the feed has yet to hear of 11 and 12.
	sub, ok := f.subscribe("n1", 12, nil)
	if !ok {
		t.Fatal("a watch from after the feed's start was refused")
	}
	f.publish([]*clientv3.Event{put(t, "n1", "a", 11), put(t, "n2", "b", 12), put(t, "n1", "c", 12)})
	f.publish([]*clientv3.Event{put(t, "n1", "d", 13), put(t, "n10", "e", 13)})
	got, err := names(t, f, sub)
	if err != nil || fmt.Sprint(got) != "[d@13]" {
		t.Fatalf("got %v %v, want only n1's change after 12", got, err)
	}
	// A watch resuming from 10 replays n1's changes since, from memory.
	again, ok := f.subscribe("n1", 10, nil)
	if !ok {
		t.Fatal("resume refused")
	}
	if got, _ := names(t, f, again); fmt.Sprint(got) != "[a@11 c@12 d@13]" {
		t.Fatalf("replayed %v", got)
	}
	f.unsubscribe(sub)
	f.unsubscribe(again)
	if len(f.subs) != 0 {
		t.Fatalf("subscriptions left: %v", f.subs)
	}
}

func TestFeedForgetsOldHistoryAndSendsResumesBeforeItToEtcd(t *testing.T) {
	f := feedFor(0)
	f.keep = 4
	for rev := int64(1); rev <= 9; rev++ {
		f.publish([]*clientv3.Event{put(t, "n1", fmt.Sprint("i", rev), rev)})
	}
	// Nine events with room for twice four: trimmed to the last four once.
	if len(f.ring) != 4 || f.from != 5 {
		t.Fatalf("ring %d events from %d, want 4 from 5", len(f.ring), f.from)
	}
	if _, ok := f.subscribe("n1", 4, nil); ok {
		t.Fatal("resume from a forgotten revision was taken")
	}
	sub, ok := f.subscribe("n1", 5, nil)
	if !ok {
		t.Fatal("resume from the oldest kept revision refused")
	}
	if got, _ := names(t, f, sub); fmt.Sprint(got) != "[i6@6 i7@7 i8@8 i9@9]" {
		t.Fatalf("replayed %v", got)
	}
}

func TestFeedEndsAWatchThatFallsBehind(t *testing.T) {
	f := feedFor(0)
	f.lag = 2
	slow, _ := f.subscribe("n1", 0, nil)
	fast, _ := f.subscribe("n2", 0, nil)
	for rev := int64(1); rev <= 3; rev++ {
		f.publish([]*clientv3.Event{put(t, "n1", fmt.Sprint("i", rev), rev)})
	}
	f.publish([]*clientv3.Event{put(t, "n2", "x", 4)})
	got, err := names(t, f, slow)
	if api.Code(err) != http.StatusGone || len(got) != 2 {
		t.Fatalf("slow watcher: %v %v, want its 2 queued changes and 410", got, err)
	}
	if got, err := names(t, f, fast); err != nil || fmt.Sprint(got) != "[x@4]" {
		t.Fatalf("other watcher: %v %v", got, err)
	}
	// Stopping the feed ends the rest, and the next list starts it anew.
	f.stop(api.Errorf(http.StatusGone, "compacted"))
	if _, err := names(t, f, fast); api.Code(err) != http.StatusGone {
		t.Fatalf("after stop: %v", err)
	}
	if _, ok := f.subscribe("n2", 4, nil); ok {
		t.Fatal("a stopped feed took a watch")
	}
}

// An agent's watch resumes through the feed after its connection drops,
// and a watch from before the feed began is still served (by etcd).
func TestNodeWatchResumesThroughTheFeed(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	n1 := c.token(t, api.SystemTenant, "node-n1", api.RoleNode, "n1")
	place := func(name, node string) int64 {
		t.Helper()
		in := &api.Instance{Meta: api.Meta{Name: name, Tenant: "t1"}, Spec: api.InstanceSpec{Node: node, Template: api.Template{Image: "busybox"}}}
		if err := c.st.Create(c.ctx, in); err != nil {
			t.Fatal(err)
		}
		return in.ResourceVersion
	}
	before := place("early", "n1") - 1
	list, err := n1.NodeInstances(c.ctx, "n1")
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("list: %v %d", err, len(list.Items))
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	w := n1.WatchNode(ctx, "n1", list.Revision)
	defer w.Close()
	old := n1.WatchNode(ctx, "n1", before)
	defer old.Close()
	next := func(w *api.Watcher, want string) {
		t.Helper()
		ev, err := w.Next()
		if err != nil {
			t.Fatal(err)
		}
		in := &api.Instance{}
		if err := ev.Into(in); err != nil || in.Name != want {
			t.Fatalf("got %s %v, want %s", in.Name, err, want)
		}
	}
	next(old, "early")
	place("a", "n1")
	place("elsewhere", "n2")
	next(w, "a")
	if served := watchers(c.api.nodes, "n1"); served != 1 {
		t.Fatalf("%d n1 watches on the feed, want 1 (the other resumes from before it)", served)
	}
	c.srv.CloseClientConnections()
	place("b", "n1")
	place("c", "n1")
	next(w, "b")
	next(w, "c")
	next(old, "a")
	next(old, "b")
}

// A tenant's instance watch from the revision of its create is served
// from the feed: its tenant's changes only, filtered by its selector, and
// resumed from memory after its connection drops.
func TestInstanceWatchesAreServedFromTheFeed(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	c.tenant(t, "t2")
	create := func(tenant, name, app string) int64 {
		t.Helper()
		in := &api.Instance{Meta: api.Meta{Name: name, Tenant: tenant, Labels: map[string]string{"app": app}},
			Spec: api.InstanceSpec{Template: api.Template{Image: "busybox"}}}
		if err := c.admin.Create(c.ctx, in); err != nil {
			t.Fatal(err)
		}
		return in.ResourceVersion
	}
	// The feed starts with the server; wait until it follows.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c.api.instances.mu.Lock()
		started := c.api.instances.started
		c.api.instances.mu.Unlock()
		if started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the instance feed did not start")
		}
	}
	rev := create("t1", "first", "web")
	create("t2", "other", "web")
	create("t1", "db", "db")
	create("t1", "second", "web")
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	w := c.admin.Watch(ctx, api.KindInstance, "t1", "app=web", rev)
	defer w.Close()
	next := func(want string) {
		t.Helper()
		ev, err := w.Next()
		if err != nil {
			t.Fatal(err)
		}
		in := &api.Instance{}
		if err := ev.Into(in); err != nil || in.Name != want || in.Tenant != "t1" {
			t.Fatalf("got %s/%s %v, want t1/%s", in.Tenant, in.Name, err, want)
		}
	}
	next("second")
	if served := watchers(c.api.instances, "t1"); served != 1 {
		t.Fatalf("%d t1 watches on the feed, want 1", served)
	}
	c.srv.CloseClientConnections()
	create("t1", "third", "web")
	next("third")
}

// watchers is how many watches of group f serves.
func watchers(f *watchFeed, group string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs[group])
}

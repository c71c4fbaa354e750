package control

import (
	"context"
	"fmt"
	"strings"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// state is the leader's picture of the cluster: a mirror of the store fed by
// a watch, and updated in place by the loop's own writes (each write's
// revision becomes the object's version). Every write the loop makes is
// conditional on the versions held here, so a stale picture costs a retry,
// never a wrong write.
type state struct {
	nodes     map[string]*api.Node
	alive     map[string]bool
	services  map[string]*api.Service  // "tenant/name"
	instances map[string]*api.Instance // "tenant/name"
	// alloc[n] is the mod revision of node n's allocation key, which every
	// placement onto n compares and bumps: two schedulers racing for the
	// same node cannot both win.
	alloc map[string]int64
	// seen is the highest store revision the mirror has applied.
	seen int64
}

func newState() *state {
	return &state{nodes: map[string]*api.Node{}, alive: map[string]bool{}, services: map[string]*api.Service{},
		instances: map[string]*api.Instance{}, alloc: map[string]int64{}}
}

// mirror keeps a state in step with the store.
type mirror struct {
	st     *Store
	events chan clientv3.WatchResponse
	cancel context.CancelFunc
}

// watched are the prefixes the leader follows (the instance index is not
// among them: it repeats the instances).
func (s *Store) watched() []string {
	return []string{s.KindPrefix(api.KindNode, ""), s.KindPrefix(api.KindService, ""), s.KindPrefix(api.KindInstance, ""),
		s.AlivePrefix(), s.AllocPrefix()}
}

// load lists everything the leader follows at one revision and starts
// watches after it.
func (st *Store) load(ctx context.Context) (*state, *mirror, error) {
	s := newState()
	var rev int64
	for i, p := range st.watched() {
		opts := []clientv3.OpOption{clientv3.WithPrefix()}
		if i > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := st.c.Get(ctx, p, opts...)
		if err != nil {
			return nil, nil, fmt.Errorf("load %s: %w", p, err)
		}
		if i == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := s.apply(st, false, kv.Key, kv.Value, kv.ModRevision); err != nil {
				return nil, nil, err
			}
		}
	}
	s.seen = rev
	wctx, cancel := context.WithCancel(ctx)
	m := &mirror{st: st, events: make(chan clientv3.WatchResponse, 64), cancel: cancel}
	// The etcd client carries every watch of the same metadata over one
	// gRPC stream, and etcd buffers 128 responses a stream: sharing the
	// API's stream, which carries a watch per node agent, made the leader
	// a slow watcher whenever a placement reached many agents at once, and
	// it saw its own writes late. Its own metadata gives it its own stream.
	sctx := metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(wctx), "berth-watch", "leader")
	for _, p := range st.watched() {
		wch := st.c.Watch(sctx, p, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		go func() {
			for resp := range wch {
				select {
				case m.events <- resp:
				case <-wctx.Done():
					return
				}
			}
			// A watch that ends while the loop still wants it is an error
			// the loop must see, so it reloads.
			select {
			case m.events <- clientv3.WatchResponse{Canceled: true, CancelReason: "watch of " + p + " ended"}:
			case <-wctx.Done():
			}
		}()
	}
	return s, m, nil
}

// applyResponse folds one watch response into s.
func (s *state) applyResponse(st *Store, resp clientv3.WatchResponse) error {
	if resp.Canceled || resp.Err() != nil {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("store watch: %w", err)
		}
		return fmt.Errorf("store watch: %s", resp.CancelReason)
	}
	for _, ev := range resp.Events {
		if err := s.apply(st, ev.Type == clientv3.EventTypeDelete, ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision); err != nil {
			return err
		}
	}
	s.seen = max(s.seen, resp.Header.Revision)
	return nil
}

// nodeLost reports whether resp deletes a node's alive key: its lease
// lapsed, or it was removed.
func (st *Store) nodeLost(resp clientv3.WatchResponse) bool {
	for _, ev := range resp.Events {
		if ev.Type == clientv3.EventTypeDelete && strings.HasPrefix(string(ev.Kv.Key), st.AlivePrefix()) {
			return true
		}
	}
	return false
}

// newRun reports whether resp creates a standalone instance (berth run's)
// still to be placed: someone waits on its placement, where a service's
// replicas are made by the leader itself and placed in the same cycle.
func (s *state) newRun(st *Store, resp clientv3.WatchResponse) bool {
	for _, ev := range resp.Events {
		if !ev.IsCreate() {
			continue
		}
		rest, ok := strings.CutPrefix(string(ev.Kv.Key), st.KindPrefix(api.KindInstance, ""))
		if !ok {
			continue
		}
		if in, ok := s.instances[rest]; ok && in.Spec.Node == "" && in.Spec.Service == "" {
			return true
		}
	}
	return false
}

// apply folds one key's change into s. An event no newer than what s holds
// (the loop's own write got there first) is ignored: a key's version is
// its mod revision, so the echo of the loop's own write need not be
// decoded again.
func (s *state) apply(st *Store, del bool, key, value []byte, rev int64) error {
	k := string(key)
	if n, ok := strings.CutPrefix(k, st.AlivePrefix()); ok {
		if del {
			delete(s.alive, n)
		} else {
			s.alive[n] = true
		}
		return nil
	}
	if n, ok := strings.CutPrefix(k, st.AllocPrefix()); ok {
		if del {
			delete(s.alloc, n)
		} else if rev > s.alloc[n] {
			s.alloc[n] = rev
		}
		return nil
	}
	for _, kind := range []api.Kind{api.KindNode, api.KindService, api.KindInstance} {
		rest, ok := strings.CutPrefix(k, st.KindPrefix(kind, ""))
		if !ok {
			continue
		}
		var cur api.Object
		switch kind {
		case api.KindNode:
			if v, ok := s.nodes[rest]; ok {
				cur = v
			}
		case api.KindService:
			if v, ok := s.services[rest]; ok {
				cur = v
			}
		case api.KindInstance:
			if v, ok := s.instances[rest]; ok {
				cur = v
			}
		}
		if cur != nil && (cur.GetMeta().ResourceVersion > rev || !del && cur.GetMeta().ResourceVersion == rev) {
			return nil
		}
		if del {
			switch kind {
			case api.KindNode:
				delete(s.nodes, rest)
			case api.KindService:
				delete(s.services, rest)
			case api.KindInstance:
				delete(s.instances, rest)
			}
			return nil
		}
		o, err := Decode(kind, value, rev)
		if err != nil {
			return err
		}
		switch v := o.(type) {
		case *api.Node:
			s.nodes[rest] = v
		case *api.Service:
			s.services[rest] = v
		case *api.Instance:
			s.instances[rest] = v
		}
		return nil
	}
	return nil
}

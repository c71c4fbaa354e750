package control

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// fabricWait bounds a node's long poll of the fabric; clients ask again.
const fabricWait = 25 * time.Second

// fabricCache keeps the fabric (nodes' addresses, block holders, every
// instance's address, tenant and readiness) in memory from a watch, so
// that a node's poll costs a wait and a pointer read rather than three
// etcd ranges, and hears of a change as soon as this server does.
type fabricCache struct {
	st  *Store
	log *slog.Logger

	mu sync.Mutex
	// All guarded by mu.
	started bool
	cur     *api.Fabric   // published: never modified
	changed chan struct{} // closed when cur is replaced
	err     error         // why the last load failed, while cur is nil
}

func newFabricCache(st *Store, log *slog.Logger) *fabricCache {
	return &fabricCache{st: st, log: log, changed: make(chan struct{})}
}

// get returns the fabric once it is newer than since, or the current one
// when wait passes first; it starts following the store on first use.
func (c *fabricCache) get(ctx, base context.Context, drain <-chan struct{}, since int64, wait time.Duration) (*api.Fabric, error) {
	c.mu.Lock()
	if !c.started {
		c.started = true
		go c.follow(base)
	}
	c.mu.Unlock()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		c.mu.Lock()
		f, ch, err := c.cur, c.changed, c.err
		c.mu.Unlock()
		if f != nil && f.Revision > since {
			return f, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-drain:
			drain = nil
			timer.Reset(0)
		case <-timer.C:
			if f == nil {
				if err == nil {
					err = fmt.Errorf("the fabric is not loaded yet")
				}
				return nil, api.Errorf(http.StatusServiceUnavailable, "fabric: %v", err)
			}
			return f, nil
		case <-ch:
		}
	}
}

func (c *fabricCache) publish(f *api.Fabric, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f != nil {
		c.cur, c.err = f, nil
	} else {
		c.err = err
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// fabricState is what the fabric is built from.
type fabricState struct {
	nodes     map[string]*api.Node
	blocks    map[string]*api.AddressBlock
	instances map[string]*api.Instance // "tenant/name"
	rev       int64
}

func (s *fabricState) apply(k api.Kind, key string, o api.Object) {
	switch k {
	case api.KindNode:
		if o == nil {
			delete(s.nodes, key)
		} else {
			s.nodes[key] = o.(*api.Node)
		}
	case api.KindAddressBlock:
		// Only claimed blocks are routed: a pool is made of a thousand
		// blocks and more, most of them free, which every publication
		// would sort again.
		if b, ok := o.(*api.AddressBlock); ok && b.Node != "" {
			s.blocks[key] = b
		} else {
			delete(s.blocks, key)
		}
	case api.KindInstance:
		if o == nil {
			delete(s.instances, key)
		} else {
			s.instances[key] = o.(*api.Instance)
		}
	}
}

// fabric builds the published view, in a stable order.
func (s *fabricState) fabric() *api.Fabric {
	f := &api.Fabric{Revision: s.rev}
	for _, name := range slices.Sorted(maps.Keys(s.nodes)) {
		f.Nodes = append(f.Nodes, api.FabricNode{Name: name, Address: s.nodes[name].Spec.Address})
	}
	for _, name := range slices.Sorted(maps.Keys(s.blocks)) {
		b := s.blocks[name]
		f.Blocks = append(f.Blocks, api.FabricBlock{Prefix: b.Prefix, Node: b.Node})
	}
	for _, key := range slices.Sorted(maps.Keys(s.instances)) {
		f.Endpoints = append(f.Endpoints, fabricEndpoint(s.instances[key]))
	}
	return f
}

// fabricEndpoint is what the fabric says of an instance: its address and
// readiness once it runs where it is placed.
func fabricEndpoint(in *api.Instance) api.FabricEndpoint {
	e := api.FabricEndpoint{Node: in.Spec.Node, Tenant: in.Tenant, Instance: in.Name, Labels: in.Spec.Template.Labels,
		Stopped: in.Spec.Desired == api.DesiredStopped}
	if in.Spec.Node != "" && in.Status.ObservedNode == in.Spec.Node && in.Status.Phase == api.PhaseRunning {
		e.IP = in.Status.IP
		e.Ready = in.Status.Health != api.HealthUnhealthy && (in.Spec.Template.Health == nil || in.Status.Health == api.HealthHealthy)
	}
	return e
}

// follow loads the fabric and keeps it in step with the store until ctx
// ends, loading again after a lost watch.
func (c *fabricCache) follow(ctx context.Context) {
	for ctx.Err() == nil {
		err := c.followOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("fabric watch ended; loading again", "err", err)
		c.publish(nil, err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (c *fabricCache) followOnce(ctx context.Context) error {
	s := &fabricState{nodes: map[string]*api.Node{}, blocks: map[string]*api.AddressBlock{}, instances: map[string]*api.Instance{}}
	cli := c.st.Client()
	fabricKinds := []api.Kind{api.KindNode, api.KindAddressBlock, api.KindInstance}
	for i, k := range fabricKinds {
		opts := []clientv3.OpOption{clientv3.WithPrefix()}
		if i > 0 {
			opts = append(opts, clientv3.WithRev(s.rev))
		}
		resp, err := cli.Get(ctx, c.st.KindPrefix(k, ""), opts...)
		if err != nil {
			return fmt.Errorf("list %s: %w", k, err)
		}
		if i == 0 {
			s.rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			o, err := Decode(k, kv.Value, kv.ModRevision)
			if err != nil {
				return err
			}
			s.apply(k, fabricKey(c.st, k, string(kv.Key)), o)
		}
	}
	c.publish(s.fabric(), nil)
	// One watch over every kind keeps the events in revision order (three
	// would interleave); the other kinds' events are skipped unread.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := cli.Watch(wctx, c.st.Root()+api.Version+"/", clientv3.WithPrefix(), clientv3.WithRev(s.rev+1))
	apply := func(resp clientv3.WatchResponse) error {
		if err := resp.Err(); err != nil || resp.Canceled {
			return fmt.Errorf("watch: %v", err)
		}
		for _, ev := range resp.Events {
			for _, k := range fabricKinds {
				key, ok := strings.CutPrefix(string(ev.Kv.Key), c.st.KindPrefix(k, ""))
				if !ok {
					continue
				}
				if ev.Type == clientv3.EventTypeDelete {
					s.apply(k, key, nil)
					break
				}
				o, err := Decode(k, ev.Kv.Value, ev.Kv.ModRevision)
				if err != nil {
					return err
				}
				s.apply(k, key, o)
				break
			}
		}
		s.rev = max(s.rev, resp.Header.Revision)
		return nil
	}
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case resp, ok = <-wch:
		}
		if !ok {
			return fmt.Errorf("watch ended")
		}
		if err := apply(resp); err != nil {
			return err
		}
		// Coalesce what arrived meanwhile into one publication.
		for drained := false; !drained; {
			select {
			case resp, ok = <-wch:
				if !ok {
					return fmt.Errorf("watch ended")
				}
				if err := apply(resp); err != nil {
					return err
				}
			default:
				drained = true
			}
		}
		c.publish(s.fabric(), nil)
	}
}

// fabricKey is an object's key in fabricState: its name, or tenant/name.
func fabricKey(st *Store, k api.Kind, etcdKey string) string {
	return strings.TrimPrefix(etcdKey, st.KindPrefix(k, ""))
}

// handleFabric tells a node where the other nodes are, which address
// blocks they hold and where every instance runs: what it needs to route
// to them, police traffic from them and hand over instances that left it.
// With ?since=REV it waits (up to fabricWait) for a fabric newer than REV.
func (s *Server) handleFabric(w http.ResponseWriter, r *http.Request) {
	if _, _, err := s.nodeCaller(r); err != nil {
		s.fail(w, err)
		return
	}
	var since int64 = -1
	wait := time.Duration(0)
	if v := r.URL.Query().Get("since"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			s.fail(w, &api.FieldError{Field: "since", Message: fmt.Sprintf("%q is not a revision", v)})
			return
		}
		since, wait = n, fabricWait
	}
	f, err := s.fabric.get(r.Context(), s.base, s.draining, since, max(wait, 10*time.Second))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, f)
}

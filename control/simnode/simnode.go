// Package simnode is a simulated node agent: a real API client that
// registers, heartbeats, watches the instances placed on its node and
// reports the status a real agent would, without running containers. Tests
// and the benchmark use it to drive the control plane at fleet scale.
package simnode

import (
	"context"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/api"
)

// Behavior decides what the simulated container does; nil means it runs
// and is healthy.
type Behavior func(in *api.Instance) api.InstanceStatus

// Stats counts agent activity, for a benchmark to explain itself.
type Stats struct {
	Heartbeats, Failed, Gone, Registrations atomic.Int64
}

// Node is one simulated agent.
type Node struct {
	Name     string
	Client   *api.Client
	Reg      api.Registration
	Behavior Behavior
	Now      func() time.Time
	// OnEvent, if set, sees every instance event (for latency measurement).
	OnEvent func(ev api.WatchEvent, in *api.Instance)
	// Stats, if set, counts what the agent did; many nodes may share one.
	Stats *Stats

	mu sync.Mutex
	// running maps "tenant/name" to the restart generation last acted on;
	// guarded by mu.
	running map[string]int
}

// Run registers and serves until ctx ends (the node "dies": its lease then
// expires on its own).
func (n *Node) Run(ctx context.Context) error {
	n.running = map[string]int{}
	lease, err := n.register(ctx)
	if err != nil {
		return err
	}
	go n.heartbeat(ctx, lease)
	list, err := n.Client.NodeInstances(ctx, n.Name)
	if err != nil {
		return err
	}
	for _, in := range list.Items {
		n.handle(ctx, api.WatchEvent{Type: api.Added}, in)
	}
	w := n.Client.WatchNode(ctx, n.Name, list.Revision)
	defer w.Close()
	for {
		ev, err := w.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		in := &api.Instance{}
		if err := ev.Into(in); err != nil {
			return err
		}
		if n.OnEvent != nil {
			n.OnEvent(ev, in)
		}
		n.handle(ctx, ev, in)
	}
}

// register registers the node, trying again with back-off while the
// control plane is unreachable or overloaded (a real agent does not give
// up on a busy server); a refusal (4xx) is returned.
func (n *Node) register(ctx context.Context) (api.Lease, error) {
	wait := 100 * time.Millisecond
	for {
		lease, err := n.Client.Register(ctx, n.Name, n.Reg)
		if n.Stats != nil {
			n.Stats.Registrations.Add(1)
		}
		if err == nil || ctx.Err() != nil || api.Code(err) >= 400 && api.Code(err) < 500 {
			return lease, err
		}
		select {
		case <-ctx.Done():
			return api.Lease{}, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// heartbeat renews the lease at a third of its TTL, registering again when
// the control plane says the lease is gone (after a partition, say).
func (n *Node) heartbeat(ctx context.Context, lease api.Lease) {
	every := max(time.Duration(lease.TTL)*time.Second/3, 100*time.Millisecond)
	// Nodes that registered together should not beat together.
	sleep := time.Duration(n.Now().UnixNano()%int64(every)) / 2
	select {
	case <-ctx.Done():
		return
	case <-time.After(sleep):
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, err := n.Client.Heartbeat(ctx, n.Name, lease)
			if st := n.Stats; st != nil {
				st.Heartbeats.Add(1)
				if err != nil {
					st.Failed.Add(1)
				}
				if api.Code(err) == http.StatusGone {
					st.Gone.Add(1)
				}
			}
			if api.Code(err) == http.StatusGone {
				if l, err := n.register(ctx); err == nil {
					lease = l
				}
			}
		}
	}
}

func (n *Node) handle(ctx context.Context, ev api.WatchEvent, in *api.Instance) {
	key := in.Tenant + "/" + in.Name
	n.mu.Lock()
	gen, seen := n.running[key]
	if ev.Type == api.Deleted {
		delete(n.running, key)
		n.mu.Unlock()
		return
	}
	start := !seen || in.Spec.RestartGeneration > gen
	if start {
		n.running[key] = in.Spec.RestartGeneration
	}
	n.mu.Unlock()
	if !start || in.Spec.Desired == api.DesiredStopped {
		return
	}
	now := n.Now()
	st := api.InstanceStatus{Phase: api.PhaseRunning, Health: api.HealthHealthy, StartedAt: now, Restarts: in.Spec.RestartGeneration,
		IP: netip.AddrFrom4([4]byte{10, byte(len(n.Name)), byte(len(key)), 2})}
	if n.Behavior != nil {
		st = n.Behavior(in)
		st.Restarts = in.Spec.RestartGeneration
	}
	_, _ = n.Client.ReportStatus(ctx, in.Tenant, in.Name, st)
}

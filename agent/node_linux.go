package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	goruntime "runtime"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"golang.org/x/sys/unix"
)

// NodeConfig is what a node loop is made of.
type NodeConfig struct {
	// Name is the node's name in the control plane.
	Name string
	// Client speaks to the control plane as this node (a node or admin token).
	Client *api.Client
	Agent  *Agent
	// Reg is sent at registration; a zero capacity means the host's.
	Reg api.Registration
	// Network is what containers are attached to: "" or "none" for
	// loopback only, else a network of the agent's Networker.
	Network string
	// Poll is how often containers' states are compared with what was last
	// reported; zero means 250 ms.
	Poll time.Duration
	Log  *slog.Logger
}

// Node makes the instances the control plane places on one node real
// through an Agent, and reports their status.
type Node struct {
	cfg NodeConfig
	log *slog.Logger

	mu sync.Mutex
	// insts by "tenant/name"; guarded by mu.
	insts map[string]*nodeInstance
	kick  chan struct{}
	// handoff wakes the handoff loop when an instance leaves.
	handoff chan struct{}
	// prepared are containers made ahead of their placement (Prepare), by
	// "tenant/name"; guarded by mu.
	prepared map[string]*preparation
}

// nodeInstance is the node's record of one instance placed on it.
type nodeInstance struct {
	in *api.Instance
	// id is the agent container; empty when none could be made.
	id string
	// acted is the restart generation last acted on.
	acted int
	// failure is why the container could not be made or started.
	failure  string
	reported *api.InstanceStatus
	// leaving: the instance left this node (or is gone); its container
	// runs on until the handoff loop says otherwise, unreported.
	leaving bool
	// readySince is when the instance was first seen ready elsewhere.
	readySince time.Time
	// gone is set while the handoff removes the container, and closed
	// once it is removed: a new instance of the same name waits for it.
	gone chan struct{}
}

// NewNode returns a node loop; Run serves it.
func NewNode(cfg NodeConfig) (*Node, error) {
	if cfg.Name == "" || cfg.Client == nil || cfg.Agent == nil {
		return nil, errors.New("node: Name, Client and Agent are required")
	}
	if cfg.Poll == 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Reg.Spec.Capacity == (api.Resources{}) {
		cfg.Reg.Spec.Capacity = HostCapacity()
	}
	return &Node{cfg: cfg, log: cfg.Log.With("node", cfg.Name), insts: map[string]*nodeInstance{}, kick: make(chan struct{}, 1),
		handoff: make(chan struct{}, 1), prepared: map[string]*preparation{}}, nil
}

// HostCapacity is this machine's CPUs (millicores) and memory.
func HostCapacity() api.Resources {
	r := api.Resources{CPU: int64(goruntime.NumCPU()) * 1000}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		r.Memory = int64(si.Totalram) * int64(si.Unit)
	}
	return r
}

// Run registers the node and serves until ctx ends. Containers keep
// running after it returns; a new Node on the same Agent adopts them.
func (n *Node) Run(ctx context.Context) error {
	lease, err := n.cfg.Client.Register(ctx, n.cfg.Name, n.cfg.Reg)
	if err != nil {
		return fmt.Errorf("register node %s: %w", n.cfg.Name, err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(3)
	go func() { defer wg.Done(); n.heartbeat(ctx, lease) }()
	go func() { defer wg.Done(); n.report(ctx) }()
	go func() { defer wg.Done(); n.handoffLoop(ctx) }()
	for {
		err := n.serve(ctx)
		if ctx.Err() != nil {
			return nil
		}
		// A compacted history or a lost control plane: list afresh.
		n.log.Warn("instance watch ended; listing again", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// serve lists the node's instances, reconciles the agent's containers with
// them, then follows the changes.
func (n *Node) serve(ctx context.Context) error {
	list, err := n.cfg.Client.NodeInstances(ctx, n.cfg.Name)
	if err != nil {
		return err
	}
	n.resync(ctx, list.Items)
	w := n.cfg.Client.WatchNode(ctx, n.cfg.Name, list.Revision)
	defer w.Close()
	for {
		ev, err := w.Next()
		if err != nil {
			return err
		}
		in := &api.Instance{}
		if err := ev.Into(in); err != nil {
			return err
		}
		if ev.Type == api.Deleted || in.Spec.Node != n.cfg.Name {
			n.leave(in.Tenant + "/" + in.Name)
			continue
		}
		n.sync(ctx, in)
	}
}

// resync makes the containers match the full list: each instance gets its
// container (adopting one that already runs), and containers of instances
// no longer here are removed.
func (n *Node) resync(ctx context.Context, items []*api.Instance) {
	n.forgetPrepared()
	want := map[string]bool{}
	for _, in := range items {
		want[in.Tenant+"/"+in.Name] = true
	}
	// Adopt what the agent runs for this node; the newest container of an
	// instance wins should a crash have left two.
	found := map[string]Container{}
	for _, c := range n.cfg.Agent.List() {
		l := c.Spec.Labels
		if l[LabelNode] != n.cfg.Name || l[LabelInstance] == "" {
			continue
		}
		key := l[LabelTenant] + "/" + l[LabelInstance]
		old, dup := found[key]
		if dup && old.Created.After(c.Created) {
			old, c = c, old
		}
		if dup {
			n.removeContainer(ctx, old.ID)
		}
		found[key] = c
	}
	n.mu.Lock()
	for key, c := range found {
		if _, ok := n.insts[key]; !ok {
			n.insts[key] = &nodeInstance{id: c.ID, acted: -1}
		}
	}
	var gone []string
	for key := range n.insts {
		if !want[key] {
			gone = append(gone, key)
		}
	}
	n.mu.Unlock()
	// Instances no longer here are handed over, not dropped: after a
	// partition the list may say they moved, and their replacements may
	// not serve yet.
	for _, key := range gone {
		n.leave(key)
	}
	for _, in := range items {
		n.sync(ctx, in)
	}
}

// leave marks an instance that was deleted or moved away: its container
// is handed over by handoffLoop.
func (n *Node) leave(key string) {
	n.mu.Lock()
	ni, ok := n.insts[key]
	if ok && ni.id == "" {
		delete(n.insts, key)
	} else if ok && !ni.leaving {
		ni.leaving, ni.readySince, ni.reported = true, time.Time{}, nil
	}
	n.mu.Unlock()
	select {
	case n.handoff <- struct{}{}:
	default:
	}
}

// handoffPoll is how often the node asks about instances it is handing over.
const handoffPoll = 500 * time.Millisecond

// handoffLoop ends the containers of instances that left this node once
// DecideHandoff says so, asking the control plane where each instance is
// now. Cut off from the control plane, it keeps them all.
func (n *Node) handoffLoop(ctx context.Context) {
	t := time.NewTicker(handoffPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.handoff:
		}
		n.mu.Lock()
		leaving := 0
		for _, ni := range n.insts {
			if ni.leaving {
				leaving++
			}
		}
		n.mu.Unlock()
		if leaving == 0 {
			continue
		}
		fab, err := n.cfg.Client.Fabric(ctx, n.cfg.Name, 0)
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("hand over instances: read where they are", "err", err)
			}
			continue
		}
		where := make(map[string]*api.FabricEndpoint, len(fab.Endpoints))
		for i := range fab.Endpoints {
			e := &fab.Endpoints[i]
			where[e.Tenant+"/"+e.Instance] = e
		}
		n.handOver(ctx, where, time.Now())
	}
}

func (n *Node) handOver(ctx context.Context, where map[string]*api.FabricEndpoint, now time.Time) {
	type removal struct {
		key string
		ni  *nodeInstance
	}
	var remove []removal
	n.mu.Lock()
	for key, ni := range n.insts {
		if !ni.leaving || ni.gone != nil {
			continue
		}
		running := false
		if c, err := n.cfg.Agent.Inspect(ni.id); err == nil {
			running = c.State.Status == StatusRunning || c.State.Status == StatusRestarting
		}
		grace := api.DefaultStopGracePeriod
		if ni.in != nil {
			grace = ni.in.Spec.Template.GracePeriod()
		}
		e := where[key]
		switch DecideHandoff(e, n.cfg.Name, running, ni.readySince, now, grace) {
		case HandoffRemove:
			ni.gone = make(chan struct{})
			remove = append(remove, removal{key, ni})
		case HandoffWait:
			if ni.readySince.IsZero() {
				ni.readySince = now
				n.log.Info("instance serves elsewhere; stopping here after its grace period", "instance", key, "node", e.Node, "grace", grace)
			}
		case HandoffKeep, HandoffBack:
			ni.readySince = time.Time{}
		}
	}
	n.mu.Unlock()
	// A drain hands over many at once; each stop may wait out its timeout.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, r := range remove {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			n.log.Info("instance handed over", "instance", r.key)
			n.stopAndRemove(ctx, r.ni.id)
			n.mu.Lock()
			if n.insts[r.key] == r.ni {
				delete(n.insts, r.key)
			}
			n.mu.Unlock()
			close(r.ni.gone)
		}()
	}
	wg.Wait()
}

// stopAndRemove stops a container the way a user's stop does (SIGTERM,
// then SIGKILL), then removes it.
func (n *Node) stopAndRemove(ctx context.Context, id string) {
	if id == "" {
		return
	}
	if err := n.cfg.Agent.Stop(context.WithoutCancel(ctx), id, 10*time.Second); err != nil && !errors.Is(err, ErrNotFound) {
		n.log.Warn("stop container", "id", id, "err", err)
	}
	n.removeContainer(ctx, id)
}

func (n *Node) removeContainer(ctx context.Context, id string) {
	if err := n.cfg.Agent.Remove(context.WithoutCancel(ctx), id, true); err != nil && !errors.Is(err, ErrNotFound) {
		n.log.Error("remove container", "id", id, "err", err)
		return
	}
	n.log.Info("removed container", "id", id)
}

// sync brings in's container in line with in.
func (n *Node) sync(ctx context.Context, in *api.Instance) {
	key := in.Tenant + "/" + in.Name
	n.mu.Lock()
	ni := n.insts[key]
	for ni != nil && ni.leaving {
		if ni.gone != nil {
			// Its container is on its way out: the name is free after.
			gone := ni.gone
			n.mu.Unlock()
			<-gone
			n.mu.Lock()
			ni = n.insts[key]
			continue
		}
		if ni.in != nil && ni.in.Created.Equal(in.Created) {
			// The same instance came back (a move undone, a partition
			// healed before it was placed elsewhere): keep its container.
			break
		}
		// Deleted and made anew under the same name: the old container
		// goes first, at once (the watch waits on it).
		id := ni.id
		delete(n.insts, key)
		n.mu.Unlock()
		n.removeContainer(ctx, id)
		n.mu.Lock()
		ni = n.insts[key]
	}
	if ni == nil {
		ni = &nodeInstance{acted: -1}
		n.insts[key] = ni
	}
	ni.in = in
	ni.leaving, ni.readySince = false, time.Time{}
	// The control plane changed the status (a lost node's instances are
	// marked so, say): say again what is true.
	if r := ni.reported; r != nil && !SameStatus(in.Status, *r) {
		ni.reported = nil
	}
	if ni.acted < 0 {
		// Fresh start: what was last reported is what was acted on.
		ni.acted = 0
		if in.Status.ObservedNode == n.cfg.Name {
			ni.acted = in.Status.Restarts
			// Not said again if still true.
			st := in.Status
			ni.reported = &st
		}
	}
	id, acted := ni.id, ni.acted
	n.mu.Unlock()

	var have *Container
	if id != "" {
		if c, err := n.cfg.Agent.Inspect(id); err == nil {
			have = &c
		} else {
			id = ""
		}
	}
	act := DecideInstance(in, have, acted)
	if act != ActCreate && act != ActReplace {
		n.discardPrepared(key)
	}
	if act == ActNone {
		n.poke()
		return
	}
	n.log.Info("instance", "tenant", in.Tenant, "name", in.Name, "action", act.String(), "generation", in.Spec.RestartGeneration)
	// An action once begun is finished even when the node is stopping: a
	// container left half made or half removed helps no one.
	ctx = context.WithoutCancel(ctx)
	var err error
	switch act {
	case ActStop:
		err = n.cfg.Agent.Stop(ctx, id, 10*time.Second)
	case ActReplace:
		n.removeContainer(ctx, id)
		id = ""
		fallthrough
	case ActCreate:
		if pid, ok := n.takePrepared(ctx, in); ok {
			id, err = pid, n.cfg.Agent.Start(ctx, pid)
			break
		}
		var spec ContainerSpec
		if spec, err = InstanceSpec(in, n.cfg.Name, n.cfg.Network); err == nil {
			id, err = n.cfg.Agent.Run(ctx, spec)
		}
	case ActRestart:
		if err = n.cfg.Agent.Stop(ctx, id, 10*time.Second); err == nil {
			err = n.cfg.Agent.Start(ctx, id)
		}
	case ActStart:
		err = n.cfg.Agent.Start(ctx, id)
	}
	n.mu.Lock()
	ni.id = id
	ni.failure = ""
	if act != ActStop {
		ni.acted = max(ni.acted, in.Spec.RestartGeneration)
	}
	if err != nil {
		ni.failure = err.Error()
		n.log.Error("instance", "tenant", in.Tenant, "name", in.Name, "action", act.String(), "err", err)
	}
	n.mu.Unlock()
	n.poke()
}

func (n *Node) poke() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// report sends each instance's status when it differs from what was last
// sent: on every poll, and at once after the node acted. It is the only
// sender, so reports of one instance never overtake each other.
func (n *Node) report(ctx context.Context) {
	t := time.NewTicker(n.cfg.Poll)
	defer t.Stop()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.kick:
		case <-n.cfg.Agent.Changes():
		case <-settle.C:
		}
		type pending struct {
			ni *nodeInstance
			in *api.Instance
			st api.InstanceStatus
		}
		var todo []pending
		now := time.Now()
		var next time.Time // the earliest settling report
		n.mu.Lock()
		for _, ni := range n.insts {
			if ni.in == nil || ni.leaving {
				continue
			}
			var st api.InstanceStatus
			var handedOn bool // the exit went to a follower that removes the instance
			switch {
			case ni.failure != "":
				st = api.InstanceStatus{Phase: api.PhaseFailed, Reason: ni.failure, Restarts: ni.acted, FinishedAt: time.Now().UTC()}
				if r := ni.reported; r != nil && r.Phase == api.PhaseFailed && r.Reason == ni.failure {
					st.FinishedAt = r.FinishedAt
				}
			case ni.id == "":
				continue
			default:
				c, err := n.cfg.Agent.Inspect(ni.id)
				if err != nil {
					continue
				}
				st = InstanceStatus(c, ni.acted)
				handedOn = c.ExitFollowed && c.Spec.Ephemeral
			}
			if ni.reported != nil && SameStatus(*ni.reported, st) {
				continue
			}
			if at := SettleUntil(st, ni.reported, handedOn); at.After(now) {
				if next.IsZero() || at.Before(next) {
					next = at
				}
				continue
			}
			todo = append(todo, pending{ni, ni.in, st})
		}
		n.mu.Unlock()
		if !next.IsZero() {
			settle.Reset(next.Sub(now))
		}
		for _, p := range todo {
			_, err := n.cfg.Client.ReportStatus(ctx, p.in.Tenant, p.in.Name, p.st)
			switch code := api.Code(err); {
			case err == nil, code == http.StatusNotFound, code == http.StatusForbidden:
				// Gone or moved: the watch brings the news.
				n.mu.Lock()
				st := p.st
				p.ni.reported = &st
				n.mu.Unlock()
			case ctx.Err() == nil:
				n.log.Warn("report status", "tenant", p.in.Tenant, "name", p.in.Name, "err", err)
			}
		}
	}
}

// heartbeat renews the lease at a third of its TTL, registering again when
// the control plane says the lease is gone.
func (n *Node) heartbeat(ctx context.Context, lease api.Lease) {
	every := max(time.Duration(lease.TTL)*time.Second/3, 100*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l, err := n.cfg.Client.Heartbeat(ctx, n.cfg.Name, lease)
		if err == nil {
			lease = l
			continue
		}
		if api.Code(err) == http.StatusGone {
			if l, err := n.cfg.Client.Register(ctx, n.cfg.Name, n.cfg.Reg); err == nil {
				lease = l
				continue
			}
		}
		if ctx.Err() == nil {
			n.log.Warn("heartbeat", "err", err)
		}
	}
}

// NodeName is the default node name: the host name.
func NodeName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

package control

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control/reconcile"
	"github.com/berth-dev/berth/control/scheduler"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// LoopConfig configures the leader's loop.
type LoopConfig struct {
	Store *Store
	Log   *slog.Logger
	Now   func() time.Time
	Rand  io.Reader
	// Batch bounds the instances written per transaction; keep 4*Batch
	// under etcd's --max-txn-ops (128 by default on an external etcd, set
	// higher on the embedded one).
	Batch int
	// Candidates bounds the feasible nodes the scheduler scores per
	// placement (0: all).
	Candidates int
	// Identity names this server in the election.
	Identity string
	// Tick is how often the loop looks again without a change (back-offs
	// and crash loops are functions of time); 250 ms unless set.
	Tick time.Duration
	// NodeGrace is how long a new leader waits before it takes a node
	// whose lease is gone for lost (5 s unless set): while no control
	// plane ran (a restart of the only server), leases lapse though the
	// nodes live, and they need a moment to register again.
	NodeGrace time.Duration
	// Runs, shared with this process's server, lets the loop create
	// standalone instances placed (see Runs); nil for none.
	Runs *Runs
}

// RunLeader campaigns for leadership and, while leader, runs the scheduler
// and controllers. Every server campaigns; one leads at a time, and every
// write it makes is fenced on still holding the leadership. It returns when
// ctx ends.
func RunLeader(ctx context.Context, cfg LoopConfig) error {
	for ctx.Err() == nil {
		// A shorter session would hand leadership over faster still, but a
		// leader that loses it under load has to reload the whole cluster;
		// 3 s matches the node lease.
		// The session's lease rides the lease line: on the shared
		// connection, a fleet's placements and reports delayed its
		// renewals until it lapsed.
		_, lc, conn := cfg.Store.leases.lease()
		sess, err := concurrency.NewSession(lc, concurrency.WithTTL(3), concurrency.WithContext(ctx))
		if err != nil {
			cfg.Store.leases.failed(conn)
			cfg.Log.Warn("election session", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		el := concurrency.NewElection(sess, cfg.Store.Root()+"leader")
		if err := el.Campaign(ctx, cfg.Identity); err != nil {
			sess.Close()
			continue
		}
		cfg.Log.Info("leading the control plane", "id", cfg.Identity)
		lctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sess.Done():
			case <-lctx.Done():
			}
			cancel()
		}()
		fence := clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())
		err = NewLoop(cfg, fence).Run(lctx)
		cancel()
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		_ = el.Resign(rctx)
		rcancel()
		sess.Close()
		if err != nil && ctx.Err() == nil {
			cfg.Log.Warn("leader loop ended", "err", err)
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Loop runs the controllers and the scheduler over a mirror of the store.
type Loop struct {
	cfg   LoopConfig
	st    *Store
	fence []clientv3.Cmp
	s     *state
	start int // rotating scheduler start
	// fresh are instances the service controller made this cycle, not yet
	// written: the scheduler writes them.
	fresh []*api.Instance

	events *eventWriter
	// runs are the standalone instances a server in this process hands
	// over while the loop follows the store (see Runs).
	runs <-chan runRequest
	// began is when this loop started leading.
	began time.Time
}

// NewLoop returns a loop whose writes all carry the fence conditions (the
// leadership); with none, it acts unconditionally, as tests of racing
// schedulers want.
func NewLoop(cfg LoopConfig, fence ...clientv3.Cmp) *Loop {
	if cfg.Tick == 0 {
		cfg.Tick = 250 * time.Millisecond
	}
	if cfg.NodeGrace == 0 {
		cfg.NodeGrace = 5 * time.Second
	}
	return &Loop{cfg: cfg, st: cfg.Store, fence: fence, events: &eventWriter{st: cfg.Store, rand: cfg.Rand}}
}

// Run mirrors the store and runs a cycle after every burst of changes and
// every tick, until ctx ends. A lost watch reloads the mirror.
func (l *Loop) Run(ctx context.Context) error {
	l.began = l.cfg.Now()
	for ctx.Err() == nil {
		s, m, err := l.st.load(ctx)
		if err != nil {
			l.cfg.Log.Warn("load cluster state", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		l.s = s
		err = l.follow(ctx, m)
		m.cancel()
		if ctx.Err() == nil {
			l.cfg.Log.Warn("reloading cluster state", "err", err)
		}
	}
	return ctx.Err()
}

func (l *Loop) follow(ctx context.Context, m *mirror) error {
	tick := time.NewTicker(l.cfg.Tick)
	defer tick.Stop()
	runs, stop := l.cfg.Runs.serve()
	defer stop()
	l.runs = runs
	for {
		began := l.cfg.Now()
		if err := l.Cycle(ctx); err != nil && ctx.Err() == nil {
			if api.IsConflict(err) {
				l.cfg.Log.Debug("control cycle", "err", err)
			} else {
				l.cfg.Log.Warn("control cycle", "err", err)
			}
		}
		// A cycle over a fleet's instances takes a while, and while agents
		// report, a change is always waiting: back to back, cycles would
		// take a core from the API and etcd that serve those reports. A
		// rest as long as the cycle (at most a tick) caps the loop at about
		// half a core and adds at most one cycle's time to a reaction.
		if rest := min(l.cfg.Now().Sub(began), l.cfg.Tick); rest > time.Millisecond {
			changed, err := l.rest(ctx, m, rest)
			if err != nil {
				return err
			}
			if changed {
				continue
			}
		}
		if err := l.idle(ctx, m, tick.C); err != nil {
			return err
		}
	}
}

// idle waits for a change or a tick, creating the runs handed to it
// meanwhile (they need no cycle: each is placed as it is made).
func (l *Loop) idle(ctx context.Context, m *mirror, tick <-chan time.Time) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case req := <-l.runs:
			l.createPlaced(req)
			continue
		case resp := <-m.events:
			if err := l.s.applyResponse(l.st, resp); err != nil {
				return err
			}
			// Fold in whatever else already arrived, so a burst of changes
			// costs one cycle.
			for more := true; more; {
				select {
				case resp := <-m.events:
					if err := l.s.applyResponse(l.st, resp); err != nil {
						return err
					}
				default:
					more = false
				}
			}
		case <-tick:
		}
		return nil
	}
}

// rest waits d, folding in the changes that arrive meanwhile, and reports
// whether any did.
func (l *Loop) rest(ctx context.Context, m *mirror, d time.Duration) (bool, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	changed := false
	for {
		select {
		case <-ctx.Done():
			return changed, ctx.Err()
		case req := <-l.runs:
			l.createPlaced(req)
		case resp := <-m.events:
			if err := l.s.applyResponse(l.st, resp); err != nil {
				return changed, err
			}
			changed = true
			// A node's death ends the rest: its instances are to be
			// replaced now, not a cycle's time later. So does a run:
			// its caller waits on the placement.
			if l.st.nodeLost(resp) || l.s.newRun(l.st, resp) {
				return true, nil
			}
		case <-t.C:
			return changed, nil
		}
	}
}

// Load reads the cluster once (for tests and tools that drive cycles by
// hand); Run does this itself.
func (l *Loop) Load(ctx context.Context) error {
	s, m, err := l.st.load(ctx)
	if err != nil {
		return err
	}
	m.cancel()
	l.s = s
	return nil
}

// Cycle runs every controller and the scheduler once over the mirror.
func (l *Loop) Cycle(ctx context.Context) error {
	now := l.cfg.Now()
	defer func() {
		l.cfg.Log.Debug("control cycle", "took", l.cfg.Now().Sub(now), "instances", len(l.s.instances), "nodes", len(l.s.nodes))
	}()
	l.fresh = nil
	var errs []error
	for _, step := range []func(context.Context) error{l.nodes, func(ctx context.Context) error { return l.services(ctx, now) },
		func(ctx context.Context) error { return l.health(ctx, now) }, l.schedule} {
		if err := step(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return fmt.Errorf("%w (and %d more)", errs[0], len(errs)-1)
}

// txn is Store.Txn fenced on the leadership.
func (l *Loop) txn(ctx context.Context, what string, cmps []clientv3.Cmp, ops []clientv3.Op) (int64, error) {
	began := l.cfg.Now()
	rev, err := l.st.Txn(ctx, what, append(cmps, l.fence...), ops)
	l.cfg.Log.Debug("txn", "what", what, "ops", len(ops), "took", l.cfg.Now().Sub(began), "err", err)
	return rev, err
}

func (l *Loop) update(ctx context.Context, o, prev api.Object) error {
	rev, err := l.txn(ctx, fmt.Sprintf("update %s %s", o.Kind(), o.GetMeta().Name), []clientv3.Cmp{l.st.Unchanged(prev)}, l.st.PutOps(o, prev))
	if err != nil {
		return err
	}
	o.GetMeta().ResourceVersion = rev
	return nil
}

func copyInstance(in *api.Instance) *api.Instance {
	c := *in
	return &c
}

func key(m *api.Meta) string { return m.Tenant + "/" + m.Name }

// instanceWrite adds the conditions and operations that replace prev by
// next, or create next when prev is nil.
func (l *Loop) instanceWrite(cmps []clientv3.Cmp, ops []clientv3.Op, prev, next *api.Instance) ([]clientv3.Cmp, []clientv3.Op) {
	if prev == nil {
		return append(cmps, l.st.Unchanged(next)), append(ops, l.st.PutOps(next, nil)...)
	}
	return append(cmps, l.st.Unchanged(prev)), append(ops, l.st.PutOps(next, prev)...)
}

// writeInstances writes changed instances in batches; prev and next are
// parallel slices, a nil prev creating its next.
func (l *Loop) writeInstances(ctx context.Context, what string, prev, next []*api.Instance) error {
	b := max(l.cfg.Batch, 1)
	for i := 0; i < len(next); i += b {
		j := min(i+b, len(next))
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for k := i; k < j; k++ {
			cmps, ops = l.instanceWrite(cmps, ops, prev[k], next[k])
		}
		rev, err := l.txn(ctx, what, cmps, ops)
		if err != nil {
			return err
		}
		for k := i; k < j; k++ {
			next[k].ResourceVersion = rev
			l.s.instances[key(&next[k].Meta)] = next[k]
		}
	}
	return nil
}

// nodes keeps node phases in step with their leases and drains. The
// instances of a node whose lease expired (or that was deleted) are marked
// lost and returned to the scheduler; those of a draining node are moved.
func (l *Loop) nodes(ctx context.Context) error {
	s := l.s
	// Only the instances of lost and draining nodes are acted on, and
	// most cycles there are none: gathering every node's instances each
	// cycle cost more than the rest of the cycle at fleet scale.
	byNode := map[string][]*api.Instance{}
	for _, in := range s.instances {
		name := in.Spec.Node
		if name == "" {
			continue
		}
		if n, known := s.nodes[name]; known && s.alive[name] && !n.Spec.Drain {
			continue
		}
		byNode[name] = append(byNode[name], in)
	}
	var conflict error
	settling := l.cfg.Now().Sub(l.began) < l.cfg.NodeGrace
	for _, name := range slices.Sorted(maps.Keys(byNode)) {
		n, known := s.nodes[name]
		alive := known && s.alive[name]
		if known && !alive && settling {
			// Not lost yet: it may have lapsed while no leader ran.
			continue
		}
		if alive && !n.Spec.Drain {
			continue
		}
		// Retiring instances are not moved: on a draining node each stays
		// for its grace period (the service controller deletes it then);
		// on a lost one it is gone already. Nor are a draining node's
		// service instances: the service controller replaces each and
		// retires it once the replacement serves.
		var ins []*api.Instance
		var gone []api.Object
		for _, in := range byNode[name] {
			switch {
			case reconcile.Retiring(in) && !alive:
				gone = append(gone, in)
			case reconcile.Retiring(in), alive && in.Spec.Service != "":
				// Stays where it is.
			default:
				ins = append(ins, in)
			}
		}
		if err := l.deleteAll(ctx, "delete retiring instances of lost node "+name, gone); err != nil {
			return err
		}
		if len(ins) == 0 {
			continue
		}
		sort.Slice(ins, func(i, j int) bool { return key(&ins[i].Meta) < key(&ins[j].Meta) })
		phase, reason := api.PhaseLost, "node "+name+" lost; rescheduling"
		if alive {
			phase, reason = api.PhasePending, "node "+name+" draining; moving"
		}
		prev := make([]*api.Instance, 0, len(ins))
		next := make([]*api.Instance, 0, len(ins))
		tenants := map[string]int{}
		for _, in := range ins {
			c := copyInstance(in)
			c.Spec.Node = ""
			if c.Spec.Pin == name {
				c.Spec.Pin = ""
			}
			c.Status = api.InstanceStatus{Phase: phase, Reason: reason, Restarts: in.Status.Restarts, CrashLoop: in.Status.CrashLoop}
			c.Spec.RestartGeneration = in.Status.Restarts
			prev, next = append(prev, in), append(next, c)
			tenants[in.Tenant]++
		}
		if err := l.writeInstances(ctx, "reschedule instances of node "+name, prev, next); err != nil {
			// Another node's instances need not wait for this one's.
			if api.IsConflict(err) {
				conflict = err
				continue
			}
			return err
		}
		l.cfg.Log.Info("rescheduling instances", "node", name, "count", len(next), "alive", alive)
		if !alive {
			for _, t := range slices.Sorted(maps.Keys(tenants)) {
				l.record(ctx, t, "nodes/"+name, "Warning", "NodeLost", fmt.Sprintf("node %s lost its lease; %d instances rescheduled", name, tenants[t]))
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.nodes)) {
		n := s.nodes[name]
		phase := nodePhase(n, s.alive[name], len(byNode[name]) > 0)
		if phase == n.Status.Phase && (phase != api.NodeDrained || n.Spec.Unschedulable) {
			continue
		}
		c := *n
		c.Status.Phase = phase
		if phase == api.NodeDrained {
			c.Spec.Unschedulable = true
		}
		if err := l.update(ctx, &c, n); err != nil {
			return err
		}
		s.nodes[name] = &c
	}
	return conflict
}

// nodePhase is a node's phase given its lease and whether instances were
// on it when the cycle began (they are moved off in the same cycle, so
// "drained" follows in the next).
func nodePhase(n *api.Node, alive, busy bool) string {
	switch {
	case n.Spec.Drain && !busy:
		return api.NodeDrained
	case n.Spec.Drain:
		return api.NodeDraining
	case !alive:
		return api.NodeNotReady
	}
	return api.NodeReady
}

// services runs the service controller over every service, and removes
// instances whose service is gone. A surplus instance that serves is first
// retired (its StopAt set, which takes it out of the endpoints) and deleted
// only once StopAt has passed: clients stop sending to it before the agent
// signals it.
func (l *Loop) services(ctx context.Context, now time.Time) error {
	s := l.s
	// Keyed by tenant and name apart, not by their "tenant/name": joining
	// them for each of a fleet's instances each cycle was a string
	// allocated per instance per cycle.
	type svcKey struct{ tenant, name string }
	bySvc := map[svcKey][]*api.Instance{}
	for _, in := range s.instances {
		if in.Spec.Service != "" {
			k := svcKey{in.Tenant, in.Spec.Service}
			bySvc[k] = append(bySvc[k], in)
		}
	}
	owned := make(map[string][]*api.Instance, len(bySvc))
	var orphans []api.Object
	for k, ins := range bySvc {
		name := k.tenant + "/" + k.name
		if _, ok := s.services[name]; !ok {
			for _, in := range ins {
				orphans = append(orphans, in)
			}
			continue
		}
		owned[name] = ins
	}
	if err := l.deleteAll(ctx, "delete instances of deleted services", orphans); err != nil {
		return err
	}
	draining := map[string]bool{}
	for name, n := range s.nodes {
		if n.Spec.Drain && s.alive[name] {
			draining[name] = true
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.services)) {
		svc := s.services[k]
		plan := reconcile.Service(svc, owned[k], draining, now)
		var prev, next []*api.Instance
		for _, name := range slices.Sorted(maps.Keys(plan.Retire)) {
			in := s.instances[svc.Tenant+"/"+name]
			c := copyInstance(in)
			c.Spec.StopAt = plan.Retire[name].UTC()
			prev, next = append(prev, in), append(next, c)
		}
		if err := l.writeInstances(ctx, "retire instances of service "+k, prev, next); err != nil {
			return err
		}
		var dels []api.Object
		for _, name := range plan.Delete {
			dels = append(dels, s.instances[svc.Tenant+"/"+name])
		}
		if err := l.deleteAll(ctx, "scale down service "+k, dels); err != nil {
			return err
		}
		if len(next)+len(dels) > 0 {
			l.cfg.Log.Debug("service instances retired and deleted", "service", k, "retired", len(next), "deleted", len(dels))
		}
		// New instances are written by the scheduler, placed if they fit,
		// so each costs one write rather than a create and a placement.
		for range plan.Create {
			l.fresh = append(l.fresh, l.newInstance(svc))
		}
		if sameStatus(plan.Status, svc.Status) {
			continue
		}
		c := *svc
		c.Status = plan.Status
		if err := l.update(ctx, &c, svc); err != nil {
			return err
		}
		s.services[k] = &c
		if c.Status.Rollout == api.RolloutFailed && svc.Status.Rollout != api.RolloutFailed {
			l.record(ctx, svc.Tenant, "services/"+svc.Name, "Warning", "RolloutFailed", c.Status.Message)
		}
	}
	return nil
}

func sameStatus(a, b api.ServiceStatus) bool {
	as, bs := a.Stable, b.Stable
	a.Stable, b.Stable = nil, nil
	if a != b || (as == nil) != (bs == nil) {
		return false
	}
	return as == nil || as.Hash() == bs.Hash()
}

func (l *Loop) suffix() string { return randomSuffix(l.cfg.Rand) }

func (l *Loop) newInstance(svc *api.Service) *api.Instance {
	name := svc.Name
	if len(name) > 54 {
		name = strings.TrimRight(name[:54], "-")
	}
	labels := map[string]string{}
	for k, v := range svc.Spec.Template.Labels {
		labels[k] = v
	}
	labels["service"] = svc.Name
	in := &api.Instance{
		Meta: api.Meta{Name: name + "-" + l.suffix(), Tenant: svc.Tenant, Labels: labels, Created: l.cfg.Now().UTC()},
		Spec: api.InstanceSpec{Service: svc.Name, Template: svc.Spec.Template},
	}
	prepareInstance(in)
	return in
}

func (l *Loop) deleteAll(ctx context.Context, what string, objs []api.Object) error {
	b := max(l.cfg.Batch, 1)
	for i := 0; i < len(objs); i += b {
		j := min(i+b, len(objs))
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for _, o := range objs[i:j] {
			cmps = append(cmps, l.st.Unchanged(o))
			ops = append(ops, l.st.DeleteOps(o)...)
		}
		if _, err := l.txn(ctx, what, cmps, ops); err != nil {
			return err
		}
		for _, o := range objs[i:j] {
			delete(l.s.instances, key(o.GetMeta()))
		}
	}
	return nil
}

// health restarts exited or unhealthy instances per their policy, and
// marks and clears crash loops.
func (l *Loop) health(ctx context.Context, now time.Time) error {
	// Sorting only the few instances acted on, not the whole mirror: at a
	// hundred thousand instances a sort of every key each cycle was most
	// of the cycle.
	type acting struct {
		in  *api.Instance
		act reconcile.HealthAction
	}
	var acted []acting
	for _, in := range l.s.instances {
		act, ok := reconcile.Health(in, now)
		if !ok && in.Status.CrashLoop && in.Status.Phase == api.PhaseRunning && in.Status.Health != api.HealthUnhealthy &&
			now.Sub(in.Status.StartedAt) >= reconcile.QuickRunCeiling {
			// It has stayed up long enough: no longer crash-looping.
			act, ok = reconcile.HealthAction{CrashLoop: false}, true
		}
		if !ok || !act.Restart && act.CrashLoop == in.Status.CrashLoop {
			continue
		}
		acted = append(acted, acting{in, act})
	}
	sort.Slice(acted, func(i, j int) bool { return key(&acted[i].in.Meta) < key(&acted[j].in.Meta) })
	var prev, next []*api.Instance
	for _, a := range acted {
		in, act := a.in, a.act
		c := copyInstance(in)
		c.Status.CrashLoop = act.CrashLoop
		if act.Restart {
			c.Spec.RestartGeneration = in.Status.Restarts + 1
		}
		prev, next = append(prev, in), append(next, c)
	}
	if err := l.writeInstances(ctx, "restart instances", prev, next); err != nil {
		return err
	}
	var done []api.Object
	for _, in := range l.s.instances {
		if reconcile.Removable(in) {
			done = append(done, in)
		}
	}
	sort.Slice(done, func(i, j int) bool { return key(done[i].GetMeta()) < key(done[j].GetMeta()) })
	if err := l.deleteAll(ctx, "remove exited instances", done); err != nil {
		return err
	}
	for i, c := range next {
		if c.Status.CrashLoop && !prev[i].Status.CrashLoop {
			l.record(ctx, c.Tenant, "instances/"+c.Name, "Warning", "CrashLoop",
				fmt.Sprintf("instance %s restarted %d times, each run shorter than %v", c.Name, c.Status.Restarts, reconcile.QuickRunCeiling))
		}
	}
	return nil
}

// schedule places pending instances in batches (see place).
func (l *Loop) schedule(ctx context.Context) error {
	s := l.s
	var pending []*api.Instance
	for _, in := range s.instances {
		if in.Spec.Node == "" && toPlace(in) {
			pending = append(pending, in)
		}
	}
	fresh := make(map[*api.Instance]bool, len(l.fresh))
	for _, in := range l.fresh {
		fresh[in] = true
		pending = append(pending, in)
	}
	l.fresh = nil
	if len(pending) == 0 {
		return nil
	}
	sort.Slice(pending, func(i, j int) bool {
		if !pending[i].Created.Equal(pending[j].Created) {
			return pending[i].Created.Before(pending[j].Created)
		}
		return key(&pending[i].Meta) < key(&pending[j].Meta)
	})
	table := l.table()
	// Every placement is decided first, then written grouped by node: a
	// batch then lands on a few nodes' watches, many instances each, rather
	// than one instance on each of a thousand (a thousand watch responses
	// per transaction, more than etcd buffers for a stream), and compares
	// and bumps a few allocation keys rather than a thousand.
	var placed []placement
	var unplaced, unprev []*api.Instance
	for _, in := range pending {
		was := in
		if fresh[in] {
			was = nil
		}
		r := scheduler.RequestFor(in)
		i, why := scheduler.Place(table, r, l.start, l.cfg.Candidates)
		if i < 0 {
			if was == nil || in.Status.Reason != why || in.Status.Phase != api.PhasePending {
				c := copyInstance(in)
				c.Status.Phase, c.Status.Reason = api.PhasePending, why
				unprev, unplaced = append(unprev, was), append(unplaced, c)
			}
			continue
		}
		l.start = (i + 1) % len(table.Nodes)
		table.Assign(i, r)
		c := copyInstance(in)
		c.Spec.Node = table.Nodes[i].Name
		c.Status = api.InstanceStatus{Phase: api.PhasePlaced, Restarts: in.Status.Restarts, CrashLoop: in.Status.CrashLoop}
		placed = append(placed, placement{prev: was, next: c, node: i})
	}
	// Stable, so a node's instances keep their order of creation.
	sort.SliceStable(placed, func(i, j int) bool { return placed[i].node < placed[j].node })
	if err := l.placeAll(ctx, batches(placed, max(l.cfg.Batch, 1))); err != nil {
		return err
	}
	return l.writeInstances(ctx, "record unschedulable instances", unprev, unplaced)
}

// toPlace reports whether in, if not on a node, is to be put on one.
func toPlace(in *api.Instance) bool {
	return in.Spec.Desired != api.DesiredStopped && !reconcile.Retiring(in)
}

// placement is one decision of the scheduler: next replaces prev (nil for
// a fresh instance) on the node at index node of the table.
type placement struct {
	prev, next *api.Instance
	node       int
}

// batches cuts placements sorted by node into batches of at most size,
// each ending where a node's placements end unless one node has more than
// a batch holds: batches that share no node may be written at once.
func batches(placed []placement, size int) [][]placement {
	var out [][]placement
	for len(placed) > 0 {
		n := min(size, len(placed))
		if n < len(placed) && placed[n].node == placed[n-1].node {
			// Cut before the node that overflows, unless it fills the batch.
			first := n - 1
			for first > 0 && placed[first-1].node == placed[n].node {
				first--
			}
			if first > 0 {
				n = first
			}
		}
		out = append(out, placed[:n])
		placed = placed[n:]
	}
	return out
}

// placeInFlight bounds the placement transactions written at once: etcd
// applies them one after another, but decoding, proposing and logging the
// next overlaps applying the last.
const placeInFlight = 4

// placeAll writes batches of placements, a few at a time. A batch that
// places on a node a batch in flight places on waits for it: it compares
// the node's allocation key as that one leaves it.
func (l *Loop) placeAll(ctx context.Context, all [][]placement) error {
	type result struct {
		batch []placement
		rev   int64
		err   error
	}
	results := make(chan result, len(all))
	busy := map[string]int{} // node → batches in flight that place on it
	inFlight := 0
	var firstErr error
	land := func() {
		r := <-results
		inFlight--
		for _, p := range r.batch {
			busy[p.next.Spec.Node]--
		}
		if err := l.placed(r.batch, r.rev, r.err); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	for _, batch := range all {
		for inFlight > 0 && (inFlight >= placeInFlight || shares(batch, busy)) {
			land()
		}
		if firstErr != nil {
			break
		}
		// Conditions read the mirror, so they are built here, by the loop's
		// own goroutine; only the transaction runs apart.
		cmps, ops := l.placeOps(batch)
		for _, p := range batch {
			busy[p.next.Spec.Node]++
		}
		inFlight++
		go func() {
			rev, err := l.txn(ctx, "place instances", cmps, ops)
			results <- result{batch, rev, err}
		}()
	}
	for inFlight > 0 {
		land()
	}
	return firstErr
}

// shares reports whether batch places on a node in busy.
func shares(batch []placement, busy map[string]int) bool {
	for _, p := range batch {
		if busy[p.next.Spec.Node] > 0 {
			return true
		}
	}
	return false
}

// placeOps are the conditions and operations of one batch. The transaction
// compares and bumps the allocation key of every node it places on, so a
// node's free resources, as this loop computed them, are still true when
// the placements land: two schedulers racing never over-commit a node.
func (l *Loop) placeOps(batch []placement) ([]clientv3.Cmp, []clientv3.Op) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	touched := map[string]bool{}
	for _, p := range batch {
		cmps, ops = l.instanceWrite(cmps, ops, p.prev, p.next)
		touched[p.next.Spec.Node] = true
	}
	for _, n := range slices.Sorted(maps.Keys(touched)) {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(l.st.AllocKey(n)), "=", l.s.alloc[n]))
		ops = append(ops, clientv3.OpPut(l.st.AllocKey(n), ""))
	}
	return cmps, ops
}

// placed records a written batch in the mirror.
func (l *Loop) placed(batch []placement, rev int64, err error) error {
	if err != nil {
		return err
	}
	for _, p := range batch {
		p.next.ResourceVersion = rev
		l.s.instances[key(&p.next.Meta)] = p.next
		l.s.alloc[p.next.Spec.Node] = rev
	}
	return nil
}

// table builds the scheduler's node table from the mirror.
func (l *Loop) table() *scheduler.Table {
	s := l.s
	names := slices.Sorted(maps.Keys(s.nodes))
	nodes := make([]*scheduler.Node, len(names))
	index := make(map[string]int, len(names))
	for i, name := range names {
		n := s.nodes[name]
		nodes[i] = &scheduler.Node{Name: name, Labels: n.Labels, Ready: s.alive[name], Unschedulable: n.Spec.Unschedulable || n.Spec.Drain,
			Capacity: n.Spec.Capacity, HostPorts: map[string]bool{}, Services: map[string]int{}}
		index[name] = i
	}
	t := scheduler.NewTable(nodes)
	for _, in := range s.instances {
		if i, ok := index[in.Spec.Node]; ok {
			t.Assign(i, scheduler.RequestFor(in))
		}
	}
	return t
}

// record writes an Event for people to read; failing to is logged, never
// fatal to the cycle.
func (l *Loop) record(ctx context.Context, tenant, object, typ, reason, msg string) {
	op, err := l.events.op(ctx, l.cfg.Now(), tenant, object, typ, reason, msg)
	if err == nil {
		_, err = l.st.Client().Txn(ctx).Then(op).Commit()
	}
	if err != nil {
		l.cfg.Log.Warn("record event", "reason", reason, "err", err)
	}
}

// NewRand returns a seeded pseudo-random reader for names, for tests.
func NewRand(seed uint64) io.Reader { return rand.NewChaCha8(seedBytes(seed)) }

func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	for i := 0; i < 8; i++ {
		b[i] = byte(seed >> (8 * i))
	}
	return b
}

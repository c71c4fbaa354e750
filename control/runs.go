package control

import (
	"context"
	"sync"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control/scheduler"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Runs joins a server to the leader loop in the same process (berth up, or
// a server that leads): a standalone instance (berth run's) is handed to
// the loop, which creates it already placed, in one transaction. Made by
// the server and placed by the leader, a run cost two transactions and the
// leader's watch between them, ~2.5 ms of a `run --rm` that takes ~15.
//
// Only an idle loop takes a run: one in a cycle (a fleet's placements, its
// reports) would hold the create until the cycle ends, where the server's
// own create returns at once. A run the loop does not take, or cannot
// place (no node fits: the scheduler records why, as for any instance),
// is created unplaced by the server as before.
type Runs struct {
	mu   sync.Mutex
	reqs chan runRequest // the leading loop's, while one leads
	prep Preparer
}

// Preparer is a node in the same process as the loop (berth up's), which
// can make a run's container while the transaction that places the run on
// it is written, and start it once the placement is stored.
type Preparer interface {
	// Prepare begins making in's container if in is placed on this
	// node; stored says whether the transaction stored in (else what was
	// prepared goes).
	Prepare(in *api.Instance) (stored func(ok bool))
}

// SetPreparer gives the loop the node of its process to prepare runs on.
func (r *Runs) SetPreparer(p Preparer) {
	r.mu.Lock()
	r.prep = p
	r.mu.Unlock()
}

// NewRuns returns the join for one server and one loop in a process.
func NewRuns() *Runs { return &Runs{} }

type runRequest struct {
	ctx  context.Context
	in   *api.Instance
	prep Preparer           // may be nil
	done chan *api.Instance // the instance as stored, or nil
}

// create hands in to the loop, if one leads here and is idle, and returns
// the instance as created, placed; nil means the caller creates in
// itself.
func (r *Runs) create(ctx context.Context, in *api.Instance) *api.Instance {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	reqs, prep := r.reqs, r.prep
	r.mu.Unlock()
	if reqs == nil {
		return nil
	}
	req := runRequest{ctx: ctx, in: in, prep: prep, done: make(chan *api.Instance, 1)}
	select {
	case reqs <- req:
	default:
		return nil // busy in a cycle
	}
	// The loop always answers (done is buffered, for an answer nobody
	// waits for); its transaction runs under ctx.
	return <-req.done
}

// serve makes the loop the one runs are handed to, until stop.
func (r *Runs) serve() (reqs <-chan runRequest, stop func()) {
	if r == nil {
		return nil, func() {}
	}
	ch := make(chan runRequest)
	r.mu.Lock()
	r.reqs = ch
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		if r.reqs == ch {
			r.reqs = nil
		}
		r.mu.Unlock()
	}
}

// createPlaced creates req's instance on the node the scheduler picks, in
// one transaction that also holds the create's conditions (the tenant
// exists, the name is free) and the placement's (the node's allocation is
// as the mirror has it, this loop still leads). Any failure leaves the
// create to the server, whose own transaction then says what was wrong.
func (l *Loop) createPlaced(req runRequest) {
	in := req.in
	if _, taken := l.s.instances[key(&in.Meta)]; taken || !toPlace(in) || req.ctx.Err() != nil {
		req.done <- nil
		return
	}
	table := l.table()
	r := scheduler.RequestFor(in)
	i, _ := scheduler.Place(table, r, l.start, l.cfg.Candidates)
	if i < 0 {
		req.done <- nil
		return
	}
	c := copyInstance(in)
	c.ResourceVersion = 0
	c.Spec.Node = table.Nodes[i].Name
	c.Status = api.InstanceStatus{Phase: api.PhasePlaced}
	batch := []placement{{next: c, node: i}}
	cmps, ops := l.placeOps(batch)
	cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(l.st.Key(api.KindTenant, "", in.Tenant)), ">", 0))
	stored := func(bool) {}
	if req.prep != nil {
		stored = req.prep.Prepare(copyInstance(c))
	}
	rev, err := l.txn(req.ctx, "create and place instance "+in.Name, cmps, ops)
	stored(err == nil)
	if err != nil {
		// Taken meanwhile, the tenant gone, the node's allocation moved,
		// the leadership lost, or ctx ended: the server's create says
		// which, or the mirror's next change.
		req.done <- nil
		return
	}
	l.start = (i + 1) % len(table.Nodes)
	_ = l.placed(batch, rev, nil)
	req.done <- copyInstance(c)
}

package control

import (
	"context"
	"fmt"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// keeper renews node leases on the nodes' behalf while they keep sending
// heartbeats. A heartbeat only pushes a deadline forward; the renewals ride
// a few keep-alive streams to etcd, each renewing every lease it holds once
// per third of the lease's TTL, so a fleet's heartbeats cost a map update
// each. When a node falls silent past its deadline the keeper stops
// renewing, and etcd expires the lease a TTL after the last renewal.
//
// It speaks the keep-alive protocol itself rather than through clientv3's
// Lease: that one runs a goroutine and a ticker per lease, resends every
// unanswered renewal each half second (so a slow etcd gets more work the
// slower it is) and keeps renewing a lease that may have expired, whose
// renewal etcd holds, stalling the stream (see renewMargin). At thousands
// of nodes those together turned a busy second into every lease lapsing
// at once. Here each lease has at most one renewal in flight, and none
// once it may have expired.
type keeper struct {
	// base is the server's lifetime: the streams end with it.
	base   context.Context
	now    func() time.Time
	shards []*keepShard
}

// keeperShards is how many keep-alive streams a server spreads leases
// over: etcd serves one stream's renewals one after another, and at 5,000
// nodes eight streams fell seconds behind on a busy machine.
const keeperShards = 64

// keeperTick is how often each shard looks for leases due for renewal.
const keeperTick = 100 * time.Millisecond

func newKeeper(base context.Context, line *leaseLine, now func() time.Time) *keeper {
	k := &keeper{base: base, now: now}
	for range keeperShards {
		sh := &keepShard{now: now, line: line, kept: map[clientv3.LeaseID]*keptLease{}}
		k.shards = append(k.shards, sh)
		go sh.run(base)
	}
	return k
}

// keepShard renews its share of the leases over one stream.
type keepShard struct {
	now  func() time.Time
	line *leaseLine

	mu sync.Mutex
	// kept is guarded by mu.
	kept map[clientv3.LeaseID]*keptLease
}

// keptLease is one lease being renewed; its fields are guarded by the
// shard's mu.
type keptLease struct {
	until time.Time // last heartbeat's deadline: renew until then
	next  time.Time // next renewal due
	// alive is when etcd expires the lease at the earliest: a TTL after
	// the last answered renewal was sent.
	alive time.Time
	// sent is when the unanswered renewal went out; zero if none is.
	sent time.Time
	ttl  int64
}

// renewMargin is how long before a lease may have expired the keeper
// stops sending it renewals (a sixth of the TTL if that is shorter). etcd holds a renewal of an expired lease until
// the lease's revocation is applied, and serves a stream's renewals in
// order: one such renewal would stall every lease on its stream behind it,
// and under load that turned one lapse into hundreds. A lease given up
// here is proved again, on a stream of its own, at its node's next
// heartbeat.
const renewMargin = 500 * time.Millisecond

func (k *keeper) shard(id clientv3.LeaseID) *keepShard {
	return k.shards[uint64(id)%uint64(len(k.shards))]
}

// beat records a heartbeat for id, renewing it until now+window. An error
// wrapping rpctypes.ErrLeaseNotFound means the lease is gone and the node
// must register again.
func (k *keeper) beat(ctx context.Context, id clientv3.LeaseID, window time.Duration) error {
	return k.shard(id).beat(ctx, id, k.now().Add(window))
}

func (s *keepShard) beat(ctx context.Context, id clientv3.LeaseID, until time.Time) error {
	s.mu.Lock()
	if l, ok := s.kept[id]; ok {
		if until.After(l.until) {
			l.until = until
		}
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	// First heartbeat this server sees for the lease (or the first since
	// it was given up): renew it once now, on a stream of its own, which
	// also proves it still exists, then keep it.
	sent := s.now()
	ttl, err := s.renewOnce(ctx, id)
	if err != nil {
		return err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.kept[id]; ok {
		// A concurrent heartbeat proved it too.
		if until.After(l.until) {
			l.until = until
		}
		return nil
	}
	s.kept[id] = &keptLease{until: until, next: now.Add(renewEvery(ttl)), alive: sent.Add(time.Duration(ttl) * time.Second), ttl: ttl}
	return nil
}

// renewOnce renews id over a stream of its own and returns its TTL.
func (s *keepShard) renewOnce(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	remote, _, _ := s.line.lease()
	stream, err := remote.LeaseKeepAlive(sctx)
	if err != nil {
		return 0, fmt.Errorf("renew lease %x: %w", int64(id), err)
	}
	if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
		return 0, fmt.Errorf("renew lease %x: %w", int64(id), err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return 0, fmt.Errorf("renew lease %x: %w", int64(id), err)
	}
	_ = stream.CloseSend()
	if resp.TTL <= 0 {
		return 0, rpctypes.ErrLeaseNotFound
	}
	return resp.TTL, nil
}

// run keeps one stream open and renews over it until ctx ends.
func (s *keepShard) run(ctx context.Context) {
	for ctx.Err() == nil {
		remote, _, conn := s.line.lease()
		if err := s.serve(ctx, remote); err != nil && ctx.Err() == nil {
			s.line.failed(conn)
		}
		// Renewals in flight on the failed stream will not be answered.
		s.mu.Lock()
		for _, l := range s.kept {
			l.sent = time.Time{}
		}
		s.mu.Unlock()
		sleep(ctx, keeperTick)
	}
}

// serve opens a stream, sends the renewals due every tick and reads the
// answers, until the stream fails.
func (s *keepShard) serve(ctx context.Context, remote pb.LeaseClient) error {
	sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	stream, err := remote.LeaseKeepAlive(sctx)
	if err != nil {
		return fmt.Errorf("open lease keep-alive stream: %w", err)
	}
	recvErr := make(chan error, 1)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				recvErr <- err
				cancel()
				return
			}
			s.answered(clientv3.LeaseID(resp.ID), resp.TTL)
		}
	}()
	t := time.NewTicker(keeperTick)
	defer t.Stop()
	for {
		for _, id := range s.due() {
			if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
				cancel()
				return fmt.Errorf("send lease renewal: %w", <-recvErr)
			}
		}
		select {
		case <-sctx.Done():
			if err := ctx.Err(); err != nil {
				return err
			}
			return fmt.Errorf("lease keep-alive stream: %w", <-recvErr)
		case <-t.C:
		}
	}
}

// due returns the leases to renew now. It forgets those whose nodes fell
// silent (etcd expires them a TTL after their last renewal) and those that
// may have expired already, whose renewals would stall the stream.
func (s *keepShard) due() []clientv3.LeaseID {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []clientv3.LeaseID
	for id, l := range s.kept {
		switch {
		case now.After(l.until):
			delete(s.kept, id)
		case !l.sent.IsZero():
			// The answer is awaited: a stream answers in order, and a late
			// answer is no lost lease (etcd renewed it when it got there).
		case !now.Add(min(renewMargin, time.Duration(l.ttl)*time.Second/6)).Before(l.alive):
			delete(s.kept, id)
		case now.Before(l.next):
		default:
			ids = append(ids, id)
			l.sent = now
		}
	}
	return ids
}

// answered records etcd's answer to a renewal: the lease's TTL, or a TTL
// of zero or less when it no longer exists.
func (s *keepShard) answered(id clientv3.LeaseID, ttl int64) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.kept[id]
	if !ok || l.sent.IsZero() {
		return
	}
	if ttl <= 0 {
		delete(s.kept, id)
		return
	}
	l.alive = l.sent.Add(time.Duration(ttl) * time.Second)
	l.next = now.Add(renewEvery(ttl))
	l.ttl = ttl
	l.sent = time.Time{}
}

// renewEvery is how long after a renewal a lease of ttl seconds is renewed
// again: a third of it, as etcd's own client does, leaving two thirds for
// a slow answer.
func renewEvery(ttl int64) time.Duration {
	return time.Duration(ttl) * time.Second / 3
}

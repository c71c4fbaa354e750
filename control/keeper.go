package control

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// keeper renews node leases on the nodes' behalf while they keep sending
// heartbeats. A heartbeat only pushes a deadline forward; the renewals
// themselves ride the etcd client's one keep-alive stream, which batches
// every lease, so a fleet's heartbeats cost a map update each rather than a
// gRPC stream each. When a node falls silent past its deadline the keeper
// stops renewing, and etcd expires the lease a TTL after the last renewal.
type keeper struct {
	base context.Context
	now  func() time.Time
	// lessors each hold one keep-alive stream. etcd serves a stream's
	// renewals one after another, so one stream for a whole fleet falls
	// behind under load and every lease lapses at once; shards of it keep
	// renewals parallel and a slow stream's damage small.
	lessors []clientv3.Lease

	mu sync.Mutex
	// kept is guarded by mu.
	kept map[clientv3.LeaseID]*keptLease
}

type keptLease struct {
	cancel context.CancelFunc
	until  time.Time // guarded by keeper.mu
}

// keeperShards is how many keep-alive streams a server spreads leases over.
const keeperShards = 64

func newKeeper(base context.Context, cli *clientv3.Client, now func() time.Time) *keeper {
	k := &keeper{base: base, now: now, kept: map[clientv3.LeaseID]*keptLease{}}
	for range keeperShards {
		k.lessors = append(k.lessors, clientv3.NewLease(cli))
	}
	go func() {
		<-base.Done()
		for _, l := range k.lessors {
			l.Close()
		}
	}()
	return k
}

func (k *keeper) lessor(id clientv3.LeaseID) clientv3.Lease {
	return k.lessors[uint64(id)%uint64(len(k.lessors))]
}

// beat records a heartbeat for id, renewing it until now+window. An error
// wrapping rpctypes.ErrLeaseNotFound means the lease is gone and the node
// must register again.
func (k *keeper) beat(ctx context.Context, id clientv3.LeaseID, window time.Duration) error {
	until := k.now().Add(window)
	k.mu.Lock()
	if l, ok := k.kept[id]; ok {
		if until.After(l.until) {
			l.until = until
		}
		k.mu.Unlock()
		return nil
	}
	k.mu.Unlock()
	// First heartbeat this server sees for the lease: renew it once now,
	// which also proves it still exists, then keep it.
	if _, err := k.lessor(id).KeepAliveOnce(ctx, id); err != nil {
		return err
	}
	kctx, cancel := context.WithCancel(k.base)
	ch, err := k.lessor(id).KeepAlive(kctx, id)
	if err != nil {
		cancel()
		return err
	}
	l := &keptLease{cancel: cancel, until: until}
	k.mu.Lock()
	if prev, ok := k.kept[id]; ok {
		// A concurrent heartbeat won the race; keep its renewer.
		if until.After(prev.until) {
			prev.until = until
		}
		k.mu.Unlock()
		cancel()
		return nil
	}
	k.kept[id] = l
	k.mu.Unlock()
	go k.watch(id, l, ch)
	return nil
}

// watch drains the renewals of one lease and stops them at the deadline.
func (k *keeper) watch(id clientv3.LeaseID, l *keptLease, ch <-chan *clientv3.LeaseKeepAliveResponse) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case _, ok := <-ch:
			if ok {
				continue
			}
			// The channel closes when ctx ended, when etcd says the lease
			// is gone, or when the client merely stopped hearing back in
			// time (etcd slow under load). Only the last would be a false
			// death, so forget the lease: the next heartbeat renews it
			// directly and learns for certain whether it still exists.
			k.mu.Lock()
			if k.kept[id] == l {
				delete(k.kept, id)
			}
			k.mu.Unlock()
			l.cancel()
			return
		case <-t.C:
			k.mu.Lock()
			expired := k.now().After(l.until)
			if expired && k.kept[id] == l {
				delete(k.kept, id)
			}
			k.mu.Unlock()
			if expired {
				l.cancel()
				return
			}
		}
	}
}

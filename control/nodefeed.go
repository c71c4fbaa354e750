package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// nodeFeed serves the agents' instance watches (GET
// /v1/nodes/N/instances?watch=1) from one etcd watch over the placement
// index, fanned out here by node. An etcd watcher per agent cost etcd an
// interval-tree lookup per event over thousands of prefixes, and all of a
// server's watchers share one gRPC stream: when a burst of placements
// filled it, etcd parked the watchers and caught each up from its
// database, which at 5,000 nodes took an eighth of the machine. Each event
// is also encoded once here rather than once per watcher.
//
// The feed keeps its recent events, so that an agent resuming from a
// revision it holds is served from memory; one resuming from further back
// is served by etcd, as before.
type nodeFeed struct {
	st  *Store
	log *slog.Logger
	// keep is how many recent events the feed holds for resuming watches;
	// lag is how far a watcher may fall behind before it is told to list
	// again rather than hold the feed's memory.
	keep, lag int

	mu sync.Mutex
	// All guarded by mu.
	started bool
	// from is the revision after which ring holds every event.
	from int64
	ring []feedEvent // oldest first
	subs map[string]map[*feedSub]struct{}
}

// feedKeep is how many recent events the feed keeps (between it and twice
// that: an event's line is about a kilobyte); feedLag is how many a watcher
// may have unsent.
const (
	feedKeep = 1 << 14
	feedLag  = 1 << 14
)

// feedEvent is one change to a node's instances: the line a watcher sends.
type feedEvent struct {
	node string
	rev  int64
	line []byte
}

// feedSub is one watch of a node's instances.
type feedSub struct {
	node string
	// after is the revision the watcher has seen: it gets later events.
	after int64
	wake  chan struct{}

	// Guarded by the feed's mu.
	queue [][]byte
	err   error // ends the watch once the queue is sent
}

func newNodeFeed(st *Store, log *slog.Logger) *nodeFeed {
	return &nodeFeed{st: st, log: log, keep: feedKeep, lag: feedLag, subs: map[string]map[*feedSub]struct{}{}}
}

// start begins following the index, if the feed does not yet, from the
// store's current revision. Agents list before they watch: starting at a
// list means the watch that follows it is served here.
func (f *nodeFeed) start(ctx, base context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started {
		return nil
	}
	resp, err := f.st.c.Get(ctx, f.st.PlacedPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("start the node feed: %w", err)
	}
	f.started, f.from, f.ring = true, resp.Header.Revision, nil
	go f.follow(base, f.from)
	return nil
}

// follow watches the index from after rev until base ends, or until etcd
// has compacted what the feed has not seen, which ends every watch.
func (f *nodeFeed) follow(base context.Context, rev int64) {
	for base.Err() == nil {
		ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(base))
		wch := f.st.c.Watch(ctx, f.st.PlacedPrefix(), clientv3.WithPrefix(), clientv3.WithPrevKV(),
			clientv3.WithProgressNotify(), clientv3.WithRev(rev+1))
		for resp := range wch {
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					cancel()
					f.stop(api.Errorf(http.StatusGone, "watch: the node feed fell behind etcd's history: list again"))
					return
				}
				f.log.Warn("node feed watch", "err", err)
				break
			}
			if resp.IsProgressNotify() {
				rev = max(rev, resp.Header.Revision)
				f.bookmark(resp.Header.Revision)
				continue
			}
			if n := len(resp.Events); n > 0 {
				rev = resp.Events[n-1].Kv.ModRevision
				f.publish(resp.Events)
			}
		}
		cancel()
		sleep(base, 100*time.Millisecond)
	}
	f.stop(api.Errorf(http.StatusServiceUnavailable, "watch: the server is shutting down"))
}

// nodeOf is the node of an index key.
func (f *nodeFeed) nodeOf(key string) string {
	node, _, _ := strings.Cut(strings.TrimPrefix(key, f.st.PlacedPrefix()), "/")
	return node
}

func (f *nodeFeed) publish(evs []*clientv3.Event) {
	batch := make([]feedEvent, 0, len(evs))
	for _, ev := range evs {
		if line, ok := watchLine(api.KindInstance, ev, nil); ok {
			batch = append(batch, feedEvent{node: f.nodeOf(string(ev.Kv.Key)), rev: ev.Kv.ModRevision, line: line})
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range batch {
		for sub := range f.subs[e.node] {
			if e.rev > sub.after {
				f.queue(sub, e.line)
			}
		}
	}
	f.ring = append(f.ring, batch...)
	if len(f.ring) > 2*f.keep {
		drop := len(f.ring) - f.keep
		f.from = f.ring[drop-1].rev
		f.ring = append([]feedEvent(nil), f.ring[drop:]...)
	}
}

// queue hands a line to sub, or ends it once it has fallen too far
// behind; mu is held.
func (f *nodeFeed) queue(sub *feedSub, line []byte) {
	if len(sub.queue) >= f.lag {
		f.end(sub, api.Errorf(http.StatusGone, "watch: more than %d changes behind: list again", f.lag))
		return
	}
	sub.queue = append(sub.queue, line)
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

// end ends sub's watch with err once its queue is sent; mu is held.
func (f *nodeFeed) end(sub *feedSub, err error) {
	sub.err = err
	delete(f.subs[sub.node], sub)
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

func (f *nodeFeed) bookmark(rev int64) {
	line, _ := jsonLine(api.WatchEvent{Type: "BOOKMARK", Revision: rev})
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, subs := range f.subs {
		for sub := range subs {
			f.queue(sub, line)
		}
	}
}

// stop ends every watch with err and forgets the history; the next list
// starts the feed again.
func (f *nodeFeed) stop(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, subs := range f.subs {
		for sub := range subs {
			f.end(sub, err)
		}
	}
	f.started, f.ring = false, nil
}

// subscribe starts a watch of node's instances after rev; false when the
// feed does not hold every change since rev.
func (f *nodeFeed) subscribe(node string, rev int64) (*feedSub, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.started || rev < f.from {
		return nil, false
	}
	sub := &feedSub{node: node, after: rev, wake: make(chan struct{}, 1)}
	for i := sort.Search(len(f.ring), func(i int) bool { return f.ring[i].rev > rev }); i < len(f.ring); i++ {
		if f.ring[i].node == node {
			f.queue(sub, f.ring[i].line)
		}
	}
	if f.subs[node] == nil {
		f.subs[node] = map[*feedSub]struct{}{}
	}
	f.subs[node][sub] = struct{}{}
	return sub, true
}

func (f *nodeFeed) unsubscribe(sub *feedSub) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs[sub.node], sub)
	if len(f.subs[sub.node]) == 0 {
		delete(f.subs, sub.node)
	}
}

// take returns what sub has to send, and the error that ends it after.
func (f *nodeFeed) take(sub *feedSub) ([][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q := sub.queue
	sub.queue = nil
	return q, sub.err
}

// watchNode serves a node's instance watch from the feed, or from etcd
// when the feed does not reach back to the asked revision.
func (s *Server) watchNode(w http.ResponseWriter, r *http.Request, node string) {
	rev, err := watchRevision(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	if err := s.feed.start(r.Context(), s.base); err != nil {
		s.cfg.Log.Warn("node feed", "err", err)
	}
	sub, ok := s.feed.subscribe(node, rev)
	if !ok {
		s.watch(w, r, api.KindInstance, s.st.NodePrefix(node), nil)
		return
	}
	defer s.feed.unsubscribe(sub)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	for {
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.base.Done():
			return
		case <-sub.wake:
		}
		lines, err := s.feed.take(sub)
		for _, l := range lines {
			if _, werr := w.Write(l); werr != nil {
				return
			}
		}
		if err != nil {
			line, _ := jsonLine(api.WatchEvent{Type: "ERROR", Object: errorObject(err)})
			_, _ = w.Write(line)
			return
		}
	}
}

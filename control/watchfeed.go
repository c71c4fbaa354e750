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

// watchFeed serves watches of one prefix from one etcd watch, fanned out
// here by group: the agents' instance watches (GET
// /v1/nodes/N/instances?watch=1) from the placement index by node, and
// tenants' instance watches by tenant. An etcd watcher per agent cost etcd
// an interval-tree lookup per event over thousands of prefixes, and all of
// a server's watchers share one gRPC stream: when a burst of placements
// filled it, etcd parked the watchers and caught each up from its
// database, which at 5,000 nodes took an eighth of the machine. Each event
// is also encoded once here rather than once per watcher.
//
// The feed keeps its recent events, so that a watch resuming from a
// revision it holds is served from memory at once; one resuming from
// further back is served by etcd, as before. (etcd serves a watch from a
// past revision from its database, catching up every 100 ms: a client that
// created an instance and then watched from that revision waited up to
// that long to hear it was placed.)
type watchFeed struct {
	st  *Store
	log *slog.Logger
	// kind is the kind of the objects under prefix, which the feed
	// follows; group names the subscribers of a key's events.
	kind   api.Kind
	prefix string
	group  func(key string) string
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
// that; an instance's event, with the value before it, is a few
// kilobytes); feedLag is how many a watcher may have unsent.
const (
	feedKeep = 1 << 14
	feedLag  = 1 << 14
)

// feedEvent is one change: the group it goes to and, once a watcher wants
// it, the line a watcher sends and the object's labels, for selectors.
type feedEvent struct {
	kind   api.Kind
	group  string
	rev    int64
	ev     *clientv3.Event
	line   []byte
	labels map[string]string
	skip   bool // nothing to send
}

// feedSub is one watch of a group's changes, those sel matches.
type feedSub struct {
	group string
	sel   api.Selector
	// after is the revision the watcher has seen: it gets later events.
	after int64
	wake  chan struct{}

	// Guarded by the feed's mu.
	queue [][]byte
	err   error // ends the watch once the queue is sent
}

// newNodeFeed is the feed of the placement index, by node.
func newNodeFeed(st *Store, log *slog.Logger) *watchFeed {
	prefix := st.PlacedPrefix()
	return newFeed(st, log, api.KindInstance, prefix, func(key string) string {
		node, _, _ := strings.Cut(strings.TrimPrefix(key, prefix), "/")
		return node
	})
}

// newTenantFeed is the feed of a tenant-scoped kind's objects, by tenant.
func newTenantFeed(st *Store, log *slog.Logger, k api.Kind) *watchFeed {
	prefix := st.KindPrefix(k, "")
	return newFeed(st, log, k, prefix, func(key string) string {
		tenant, _, _ := strings.Cut(strings.TrimPrefix(key, prefix), "/")
		return tenant
	})
}

func newFeed(st *Store, log *slog.Logger, k api.Kind, prefix string, group func(string) string) *watchFeed {
	return &watchFeed{st: st, log: log, kind: k, prefix: prefix, group: group, keep: feedKeep, lag: feedLag,
		subs: map[string]map[*feedSub]struct{}{}}
}

// start begins following the prefix, if the feed does not yet, from the
// store's current revision. Agents list before they watch: starting at a
// list means the watch that follows it is served here.
func (f *watchFeed) start(ctx, base context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started {
		return nil
	}
	resp, err := f.st.c.Get(ctx, f.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("start the watch feed of %s: %w", f.prefix, err)
	}
	f.started, f.from, f.ring = true, resp.Header.Revision, nil
	go f.follow(base, f.from)
	return nil
}

// follow watches the prefix from after rev until base ends, or until etcd
// has compacted what the feed has not seen, which ends every watch.
func (f *watchFeed) follow(base context.Context, rev int64) {
	for base.Err() == nil {
		ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(base))
		wch := f.st.c.Watch(ctx, f.prefix, clientv3.WithPrefix(), clientv3.WithPrevKV(),
			clientv3.WithProgressNotify(), clientv3.WithRev(rev+1))
		for resp := range wch {
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					cancel()
					f.stop(api.Errorf(http.StatusGone, "watch: the server's feed fell behind etcd's history: list again"))
					return
				}
				f.log.Warn("watch feed", "prefix", f.prefix, "err", err)
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

// publish hands evs to their watchers and keeps them. An event is encoded
// only once a watcher wants it: the tenants' feed sees every instance
// change of a fleet, most of them watched by no one.
func (f *watchFeed) publish(evs []*clientv3.Event) {
	batch := make([]feedEvent, len(evs))
	f.mu.Lock()
	watched := make([]bool, len(evs))
	for i, ev := range evs {
		batch[i] = feedEvent{kind: f.kind, group: f.group(string(ev.Kv.Key)), rev: ev.Kv.ModRevision, ev: ev}
		watched[i] = len(f.subs[batch[i].group]) > 0
	}
	f.mu.Unlock()
	for i := range batch {
		if watched[i] {
			batch[i].encode()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range batch {
		e := &batch[i]
		for sub := range f.subs[e.group] {
			if e.rev > sub.after && e.encode() && sub.sel.Matches(e.labels) {
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

// encode makes e's line, once; false if there is nothing to send (a
// delete without the deleted value, or an undecodable one).
func (e *feedEvent) encode() bool {
	if e.line == nil && !e.skip {
		line, o, ok := watchObjectLine(e.kind, e.ev)
		if ok {
			e.line, e.labels = line, o.GetMeta().Labels
		}
		e.skip = !ok
	}
	return !e.skip
}

// queue hands a line to sub, or ends it once it has fallen too far
// behind; mu is held.
func (f *watchFeed) queue(sub *feedSub, line []byte) {
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
func (f *watchFeed) end(sub *feedSub, err error) {
	sub.err = err
	delete(f.subs[sub.group], sub)
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

func (f *watchFeed) bookmark(rev int64) {
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
func (f *watchFeed) stop(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, subs := range f.subs {
		for sub := range subs {
			f.end(sub, err)
		}
	}
	f.started, f.ring = false, nil
}

// subscribe starts a watch of group's changes after rev that sel
// matches; false when the feed does not hold every change since rev.
func (f *watchFeed) subscribe(group string, rev int64, sel api.Selector) (*feedSub, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.started || rev < f.from {
		return nil, false
	}
	sub := &feedSub{group: group, sel: sel, after: rev, wake: make(chan struct{}, 1)}
	for i := sort.Search(len(f.ring), func(i int) bool { return f.ring[i].rev > rev }); i < len(f.ring); i++ {
		if e := &f.ring[i]; e.group == group && e.encode() && sel.Matches(e.labels) {
			f.queue(sub, e.line)
		}
	}
	if f.subs[group] == nil {
		f.subs[group] = map[*feedSub]struct{}{}
	}
	f.subs[group][sub] = struct{}{}
	return sub, true
}

func (f *watchFeed) unsubscribe(sub *feedSub) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs[sub.group], sub)
	if len(f.subs[sub.group]) == 0 {
		delete(f.subs, sub.group)
	}
}

// take returns what sub has to send, and the error that ends it after.
func (f *watchFeed) take(sub *feedSub) ([][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q := sub.queue
	sub.queue = nil
	return q, sub.err
}

// serveFeed serves a watch of group's changes from f, or, when f does not
// reach back to the asked revision, of prefix from etcd.
func (s *Server) serveFeed(w http.ResponseWriter, r *http.Request, f *watchFeed, group string, sel api.Selector, k api.Kind, prefix string) {
	rev, err := watchRevision(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	if err := f.start(r.Context(), s.base); err != nil {
		s.cfg.Log.Warn("watch feed", "prefix", f.prefix, "err", err)
	}
	sub, ok := f.subscribe(group, rev, sel)
	if !ok {
		s.watch(w, r, k, prefix, sel)
		return
	}
	defer f.unsubscribe(sub)
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
		lines, err := f.take(sub)
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

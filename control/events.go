package control

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// eventTTL is how long events are kept: they hang off a lease, so etcd
// forgets them without a sweeper.
const eventTTL = time.Hour

// eventWriter makes the writes of Events for people to read, on a lease
// it keeps; the leader records what it does with one, the API server the
// end of a run it followed with another.
type eventWriter struct {
	st   *Store
	rand io.Reader

	mu    sync.Mutex
	lease clientv3.LeaseID
	end   time.Time
}

// op is the write of an Event, to commit alone or in a transaction.
func (w *eventWriter) op(ctx context.Context, now time.Time, tenant, object, typ, reason, msg string) (clientv3.Op, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lease == 0 || now.After(w.end) {
		g, err := w.st.Client().Grant(ctx, int64(eventTTL/time.Second))
		if err != nil {
			return clientv3.Op{}, fmt.Errorf("grant event lease: %w", err)
		}
		// Events written near the end of a lease's life would vanish early;
		// a new lease is taken after half of it.
		w.lease, w.end = g.ID, now.Add(eventTTL/2)
	}
	ev := &api.Event{Meta: api.Meta{Name: strings.ToLower(reason) + "-" + randomSuffix(w.rand), Tenant: tenant, Created: now.UTC()},
		Object: object, Type: typ, Reason: reason, Message: msg, Time: now.UTC()}
	if len(ev.Message) > 4096 {
		ev.Message = ev.Message[:4096]
	}
	return clientv3.OpPut(w.st.Key(api.KindEvent, tenant, ev.Name), encode(ev), clientv3.WithLease(w.lease)), nil
}

// randomSuffix is eight lower-case base32 characters from r (crypto/rand
// if nil), for the names the control plane makes.
func randomSuffix(r io.Reader) string {
	if r == nil {
		r = rand.Reader
	}
	b := make([]byte, 5)
	_, _ = io.ReadFull(r, b)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

package control

import (
	"context"
	"fmt"
	"net/http"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// reportWriter writes the agents' status reports to etcd in groups: the
// reports waiting when a writer comes free are read in one transaction
// and written in another, each instance's write conditional on the
// version read (a nested transaction each, so that one conflict fails
// only its own report). A fleet's burst of reports then costs etcd a few
// hundred transactions a second rather than a read and a write per report,
// and a lone report is written at once, alone.
type reportWriter struct {
	st *Store
	// max bounds the reports in one transaction (etcd's --max-txn-ops
	// bounds the operations of each level of a transaction).
	max   int
	queue chan *report
}

// report is one status report waiting to be written.
type report struct {
	ctx          context.Context
	tenant, name string
	// apply changes the stored instance; its error is the report's.
	apply func(*api.Instance) error
	done  chan reportResult
}

type reportResult struct {
	in  *api.Instance
	err error
}

// reportWriters is how many groups are written at once, and reportGroup
// how many reports a group holds at most (within an external etcd's
// default --max-txn-ops of 128). Reports beyond those wait their turn:
// when a fleet reports thousands at once, each written as it came had
// etcd, the scheduler and the garbage collector juggle thousands of
// half-done writes, and the heartbeats among them waited seconds for the
// processor.
const (
	reportWriters = 4
	reportGroup   = 64
)

// reportRetries bounds the rounds a report is read and written again after
// a conflict, as Store.Modify does.
const reportRetries = 20

func newReportWriter(ctx context.Context, st *Store, max int) *reportWriter {
	w := &reportWriter{st: st, max: max, queue: make(chan *report)}
	for range reportWriters {
		go w.run(ctx)
	}
	return w
}

// write applies f to the instance and stores it, as Store.Modify would.
func (w *reportWriter) write(ctx context.Context, tenant, name string, f func(*api.Instance) error) (*api.Instance, error) {
	r := &report{ctx: ctx, tenant: tenant, name: name, apply: f, done: make(chan reportResult, 1)}
	select {
	case w.queue <- r:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case res := <-r.done:
		return res.in, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (w *reportWriter) run(ctx context.Context) {
	for {
		var first *report
		select {
		case <-ctx.Done():
			return
		case first = <-w.queue:
		}
		group := []*report{first}
		for more := true; more && len(group) < w.max; {
			select {
			case r := <-w.queue:
				group = append(group, r)
			default:
				more = false
			}
		}
		w.flush(ctx, group)
	}
}

// flush writes a group: round after round, each report not yet done is
// read and written; the first round reads without waiting for etcd to
// apply its backlog (serializable), later ones linearizably, so that a
// stale first read costs a round, never a wrong verdict.
func (w *reportWriter) flush(ctx context.Context, group []*report) {
	for round := 0; len(group) > 0; round++ {
		var live []*report
		seen := map[string]bool{}
		var later []*report
		for _, r := range group {
			if err := r.ctx.Err(); err != nil {
				r.done <- reportResult{err: err}
				continue
			}
			// etcd refuses a transaction that writes a key twice: the
			// second report of an instance waits a round.
			k := r.tenant + "/" + r.name
			if seen[k] {
				later = append(later, r)
				continue
			}
			seen[k] = true
			live = append(live, r)
		}
		retry := w.round(ctx, live, round == 0, round >= reportRetries)
		group = append(retry, later...)
	}
}

// round reads and writes rs once, answering each report that is done and
// returning those to try again; last answers every report.
func (w *reportWriter) round(ctx context.Context, rs []*report, serializable, last bool) []*report {
	if len(rs) == 0 {
		return nil
	}
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	gets := make([]clientv3.Op, len(rs))
	for i, r := range rs {
		gets[i] = clientv3.OpGet(w.st.Key(api.KindInstance, r.tenant, r.name), opts...)
	}
	resp, err := w.st.c.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		err = fmt.Errorf("read %d instances' status: %w", len(rs), err)
		for _, r := range rs {
			r.done <- reportResult{err: err}
		}
		return nil
	}
	var retry, writing []*report
	var prevs, nexts []*api.Instance
	for i, r := range rs {
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			if serializable {
				retry = append(retry, r)
				continue
			}
			r.done <- reportResult{err: api.Errorf(http.StatusNotFound, "instance %q not found", r.name)}
			continue
		}
		o, err := Decode(api.KindInstance, kvs[0].Value, kvs[0].ModRevision)
		if err != nil {
			r.done <- reportResult{err: err}
			continue
		}
		prev := o.(*api.Instance)
		next := copyInstance(prev)
		if err := r.apply(next); err != nil {
			if serializable {
				retry = append(retry, r)
				continue
			}
			r.done <- reportResult{err: err}
			continue
		}
		writing, prevs, nexts = append(writing, r), append(prevs, prev), append(nexts, next)
	}
	if len(writing) == 0 {
		return retry
	}
	puts := make([]clientv3.Op, len(writing))
	for i := range writing {
		puts[i] = clientv3.OpTxn([]clientv3.Cmp{w.st.Unchanged(prevs[i])}, w.st.PutOps(nexts[i], prevs[i]), nil)
	}
	wresp, err := w.st.c.Txn(ctx).Then(puts...).Commit()
	if err != nil {
		err = fmt.Errorf("write %d instances' status: %w", len(writing), err)
		for _, r := range writing {
			r.done <- reportResult{err: err}
		}
		return retry
	}
	for i, r := range writing {
		if !wresp.Responses[i].GetResponseTxn().GetSucceeded() {
			if last {
				r.done <- reportResult{err: api.Errorf(http.StatusConflict, "instance %q changed while its status was written: report again", r.name)}
				continue
			}
			retry = append(retry, r)
			continue
		}
		nexts[i].ResourceVersion = wresp.Header.Revision
		r.done <- reportResult{in: nexts[i]}
	}
	return retry
}

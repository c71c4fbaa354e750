package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A create with ?follow=1 (berth run in the foreground) answers with the
// instance's run: the instance as created, its output as it comes, and
// how the run ended; an instance with autoRemove (--rm) is deleted before
// the end is sent, so that it is gone when the caller hears it. One request does
// what a client would otherwise do in four (watch, create, follow the
// logs, wait, delete), and the caller hears of nothing the store did not
// need to record: the agent is asked for the output and the exit as soon
// as the instance is placed, and it answers once the container has run,
// without waiting for the node's reports of it to be written.

// followRun streams in's run to w; in has just been created.
func (s *Server) followRun(w http.ResponseWriter, r *http.Request, in *api.Instance) {
	ctx := r.Context()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusCreated)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	send := func(ev api.FollowEvent) error {
		if err := enc.Encode(ev); err != nil {
			return err
		}
		return rc.Flush()
	}
	latest := in
	exit, err := func() (*api.ExitStatus, error) {
		if err := send(api.FollowEvent{Instance: in}); err != nil {
			return nil, err
		}
		return s.runOf(ctx, in, &latest, func(l *api.LogLine) error { return send(api.FollowEvent{Log: l}) })
	}()
	if ctx.Err() != nil {
		// The caller is gone before the end: the leader removes an
		// auto-removed instance once it has exited, as after a detach.
		return
	}
	if in.Spec.AutoRemove {
		bg := context.WithoutCancel(ctx)
		if derr := s.deleteInstance(bg, in, latest, exit); derr != nil && err == nil {
			err = fmt.Errorf("remove %s: %w", in.Name, derr)
		}
	}
	if err != nil {
		_ = send(api.FollowEvent{Error: api.AsError(err)})
		return
	}
	_ = send(api.FollowEvent{Exit: exit})
}

// runOf follows in until its container's run has ended: it waits for the
// placement, then streams the agent's follow of the container to emit.
// A node's report that the instance failed ends it too (the agent could
// not make the container, so it has nothing to follow). latest is left
// at the last version of in seen.
func (s *Server) runOf(ctx context.Context, in *api.Instance, latest **api.Instance, emit func(*api.LogLine) error) (*api.ExitStatus, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changes := s.followInstance(ctx, in)
	cur := in
	for cur.Spec.Node == "" {
		if cur.Status.Phase == api.PhaseFailed {
			return &api.ExitStatus{Code: 125, Error: cur.Status.Reason}, nil
		}
		select {
		case next, ok := <-changes:
			if !ok {
				return nil, gone(ctx, in)
			}
			cur, *latest = next, next
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// A stale read of the node is good enough for where its agent is.
	no, err := s.st.get(ctx, api.KindNode, "", cur.Spec.Node, clientv3.WithSerializable())
	if err != nil {
		return nil, fmt.Errorf("node %s of %s: %w", cur.Spec.Node, in.Name, err)
	}
	n := no.(*api.Node)
	if n.Spec.AgentURL == "" {
		return nil, api.Errorf(http.StatusNotImplemented, "node %s does not serve container operations (no agent URL registered)", n.Name)
	}
	// While the agent is asked, a report that the instance failed (or its
	// deletion) ends the wait for a container that will not come. An
	// auto-removed instance is deleted by the leader once its exit is
	// reported: its end is on its way from the agent then.
	var failure string
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case next, ok := <-changes:
				if !ok {
					if (*latest).Status.Phase == api.PhaseExited {
						t := time.NewTimer(5 * time.Second)
						defer t.Stop()
						select {
						case <-t.C:
						case <-ctx.Done():
							return
						}
					}
					failure = "deleted"
					cancel()
					return
				}
				*latest = next
				if next.Status.Phase == api.PhaseFailed {
					failure = next.Status.Reason
					cancel()
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	exit, err := s.followAgent(ctx, n.Name, n.Spec.AgentURL, in, emit)
	cancel()
	<-ended
	switch {
	case exit != nil:
		return exit, nil
	case failure == "deleted":
		return nil, api.Errorf(http.StatusGone, "instance %s was deleted", in.Name)
	case failure != "":
		return &api.ExitStatus{Code: 125, Error: failure}, nil
	}
	return nil, err
}

// gone is the error for an instance deleted while followed, or ctx's.
func gone(ctx context.Context, in *api.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return api.Errorf(http.StatusGone, "instance %s was deleted", in.Name)
}

// followAgent streams the agent's OpFollow of in's container, asking it to
// wait for the container to be made.
func (s *Server) followAgent(ctx context.Context, node, agentURL string, in *api.Instance, emit func(*api.LogLine) error) (*api.ExitStatus, error) {
	target, tr, err := s.agentTransport(node, agentURL)
	if err != nil {
		return nil, err
	}
	q := url.Values{"await": {"1"}, "created": {in.Created.UTC().Format(time.RFC3339Nano)}}
	u := target.JoinPath("containers", api.ContainerName(in.Tenant, in.Name), api.OpFollow)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, api.Errorf(http.StatusBadGateway, "node agent of %s: %v", in.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		if json.NewDecoder(resp.Body).Decode(&e) != nil || e.Code == 0 {
			e = api.Error{Code: http.StatusBadGateway, Message: "node agent answered " + resp.Status}
		}
		return nil, &e
	}
	return api.ReadFollow(resp.Body, "node agent of "+in.Name, func(ev api.FollowEvent) error {
		if ev.Log == nil {
			return nil
		}
		return emit(ev.Log)
	})
}

// followInstance sends in's later versions on the channel it returns, which
// is closed when the instance is deleted or ctx ends.
func (s *Server) followInstance(ctx context.Context, in *api.Instance) <-chan *api.Instance {
	out := make(chan *api.Instance, 16)
	f := s.instances
	if err := f.start(ctx, s.base); err != nil {
		s.cfg.Log.Warn("watch feed", "prefix", f.prefix, "err", err)
	}
	sub, ok := f.subscribe(in.Tenant, in.ResourceVersion, api.Selector{})
	go func() {
		defer close(out)
		if !ok {
			s.pollInstance(ctx, in, out)
			return
		}
		defer f.unsubscribe(sub)
		for {
			lines, err := f.take(sub)
			for _, line := range lines {
				var ev api.WatchEvent
				var next api.Instance
				if json.Unmarshal(line, &ev) != nil || ev.Type == "BOOKMARK" || ev.Into(&next) != nil || next.Name != in.Name {
					continue
				}
				if ev.Type == api.Deleted {
					return
				}
				select {
				case out <- &next:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				s.pollInstance(ctx, in, out)
				return
			}
			select {
			case <-sub.wake:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// pollInstance reads in every 50 ms, for when the feed cannot follow it.
func (s *Server) pollInstance(ctx context.Context, in *api.Instance, out chan<- *api.Instance) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		o, err := s.st.Get(ctx, api.KindInstance, in.Tenant, in.Name)
		if api.IsNotFound(err) {
			return
		}
		if err != nil {
			continue
		}
		select {
		case out <- o.(*api.Instance):
		case <-ctx.Done():
			return
		}
	}
}

// deleteInstance deletes the instance made as created, whatever its
// version; gone already is no error. A run it followed ends in the same
// transaction: unless the node's report of the exit is stored already, an
// Event records it (the instance's status would take a write of its own).
// That report is likely being written as the run ends: the first try is
// conditional on latest, the version seen, and on no more.
func (s *Server) deleteInstance(ctx context.Context, created, latest *api.Instance, exit *api.ExitStatus) error {
	end := func(cur *api.Instance) ([]clientv3.Op, error) {
		ops := s.st.DeleteOps(cur)
		if exit == nil || cur.Status.Phase == api.PhaseExited {
			return ops, nil
		}
		msg := fmt.Sprintf("exit code %d", exit.Code)
		switch {
		case exit.OOMKilled:
			msg += ", OOMKilled"
		case exit.Error != "":
			msg += ": " + exit.Error
		}
		ev, err := s.events.op(ctx, s.cfg.Now(), cur.Tenant, "instances/"+cur.Name, "Normal", "exited", msg)
		if err != nil {
			s.cfg.Log.Warn("record the end of a run", "instance", cur.Name, "err", err)
			return ops, nil
		}
		return append(ops, ev), nil
	}
	cur := latest
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			o, err := s.st.Get(ctx, api.KindInstance, created.Tenant, created.Name)
			if api.IsNotFound(err) {
				return nil
			}
			if err != nil {
				return err
			}
			if !o.GetMeta().Created.Equal(created.Created) {
				return nil // deleted, and another made under the name since
			}
			cur = o.(*api.Instance)
		}
		ops, err := end(cur)
		if err != nil {
			return err
		}
		_, err = s.st.Txn(ctx, "delete instance "+created.Name, []clientv3.Cmp{s.st.Unchanged(cur)}, ops)
		if err == nil || !api.IsConflict(err) || attempt >= 10 {
			return err
		}
	}
}

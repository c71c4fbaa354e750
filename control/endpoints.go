package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control/reconcile"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// handleEndpoints serves GET /v1/tenants/T/services/S/endpoints: the
// service's endpoints and the revision they were read at, or with ?watch=1
// a stream of the whole set each time it changes (after ?revision=, or
// beginning with the current set).
func (s *Server) handleEndpoints(w http.ResponseWriter, r *http.Request) {
	p, err := s.auth.authenticate(r.Context(), r)
	if err != nil {
		s.fail(w, err)
		return
	}
	tenant, name := r.PathValue("tenant"), r.PathValue("name")
	if err := authorize(p, verbRead, api.KindService, tenant, name); err != nil {
		s.fail(w, err)
		return
	}
	if r.URL.Query().Get("watch") != "" {
		s.watchEndpoints(w, r, tenant, name)
		return
	}
	svc, ins, rev, err := s.readEndpoints(r.Context(), tenant, name, 0)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.List[api.Endpoint]{Revision: rev, Items: reconcile.Endpoints(svc, ins)})
}

// readEndpoints reads a service and its instances at one revision (rev, or
// the current one when 0), and returns that revision.
func (s *Server) readEndpoints(ctx context.Context, tenant, name string, rev int64) (*api.Service, []*api.Instance, int64, error) {
	if api.ValidName(tenant) != nil || api.ValidName(name) != nil {
		return nil, nil, 0, api.Errorf(http.StatusNotFound, "service %q not found", name)
	}
	var opts []clientv3.OpOption
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := s.st.Client().Get(ctx, s.st.Key(api.KindService, tenant, name), opts...)
	if err != nil {
		return nil, nil, 0, readErr(fmt.Sprintf("read service %s/%s", tenant, name), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil, 0, api.Errorf(http.StatusNotFound, "service %q not found", name)
	}
	o, err := Decode(api.KindService, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
	if err != nil {
		return nil, nil, 0, err
	}
	if rev == 0 {
		rev = resp.Header.Revision
	}
	resp, err = s.st.Client().Get(ctx, s.st.KindPrefix(api.KindInstance, tenant), clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return nil, nil, 0, readErr(fmt.Sprintf("read instances of service %s/%s", tenant, name), err)
	}
	var ins []*api.Instance
	for _, kv := range resp.Kvs {
		o, err := Decode(api.KindInstance, kv.Value, kv.ModRevision)
		if err != nil {
			return nil, nil, 0, err
		}
		if in := o.(*api.Instance); in.Spec.Service == name {
			ins = append(ins, in)
		}
	}
	return o.(*api.Service), ins, rev, nil
}

func readErr(what string, err error) error {
	if errors.Is(err, rpctypes.ErrCompacted) {
		return api.Errorf(http.StatusGone, "%s: %v (read the endpoints again)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// watchEndpoints follows the tenant's instances and sends the service's
// endpoints whenever they change. Only the instances matter: a deleted
// service's instances are deleted after it, emptying its endpoints.
func (s *Server) watchEndpoints(w http.ResponseWriter, r *http.Request, tenant, name string) {
	q := r.URL.Query().Get("revision")
	rev, err := strconv.ParseInt(q, 10, 64)
	if err != nil && q != "" || rev < 0 {
		s.fail(w, &api.FieldError{Field: "revision", Message: "must be a non-negative integer"})
		return
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(r.Context()))
	defer cancel()
	resume := rev > 0
	svc, list, rev, err := s.readEndpoints(ctx, tenant, name, rev)
	if err != nil {
		s.fail(w, err)
		return
	}
	ins := map[string]*api.Instance{}
	for _, in := range list {
		ins[in.Name] = in
	}
	prefix := s.st.KindPrefix(api.KindInstance, tenant)
	wch := s.st.Client().Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	last := reconcile.Endpoints(svc, list)
	send := func(typ string, rev int64, eps []api.Endpoint) bool {
		b, _ := json.Marshal(api.List[api.Endpoint]{Revision: rev, Items: eps})
		if err := enc.Encode(api.WatchEvent{Type: typ, Revision: rev, Object: b}); err != nil {
			return false
		}
		if fl != nil {
			fl.Flush()
		}
		return true
	}
	if !resume && !send(api.Added, rev, last) {
		return
	}
	if resume && fl != nil {
		fl.Flush()
	}
	for resp := range wch {
		if err := resp.Err(); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, rpctypes.ErrCompacted) {
				code = http.StatusGone
			}
			b, _ := json.Marshal(api.Errorf(code, "watch endpoints: %v", err))
			_ = enc.Encode(api.WatchEvent{Type: "ERROR", Object: b})
			return
		}
		if resp.IsProgressNotify() {
			_ = enc.Encode(api.WatchEvent{Type: "BOOKMARK", Revision: resp.Header.Revision})
			if fl != nil {
				fl.Flush()
			}
			continue
		}
		var at int64
		for _, ev := range resp.Events {
			at = ev.Kv.ModRevision
			n := strings.TrimPrefix(string(ev.Kv.Key), prefix)
			if ev.Type == clientv3.EventTypeDelete {
				delete(ins, n)
				continue
			}
			o, err := Decode(api.KindInstance, ev.Kv.Value, ev.Kv.ModRevision)
			if err != nil {
				continue
			}
			if in := o.(*api.Instance); in.Spec.Service == name {
				ins[n] = in
			} else {
				delete(ins, n)
			}
		}
		all := make([]*api.Instance, 0, len(ins))
		for _, in := range ins {
			all = append(all, in)
		}
		eps := reconcile.Endpoints(svc, all)
		if slices.EqualFunc(eps, last, sameEndpoint) {
			continue
		}
		last = eps
		if !send(api.Modified, at, eps) {
			return
		}
	}
}

func sameEndpoint(a, b api.Endpoint) bool {
	return a.Instance == b.Instance && a.Node == b.Node && a.IP == b.IP && slices.Equal(a.Ports, b.Ports)
}

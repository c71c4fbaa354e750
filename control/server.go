package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/pki"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Config is what a Server needs; every dependency is passed in.
type Config struct {
	Store *Store
	Log   *slog.Logger
	Now   func() time.Time
	Rand  io.Reader
	// NodeTTL is the liveness lease of a node (3 s unless set).
	NodeTTL time.Duration
	// CA is the cluster's certificate authority: with it the server joins
	// agents (issuing their certificates), serves TLS and dials agents
	// over mTLS. Nil for a server with only local agents (berth up).
	CA *pki.CA
	// NodeCertTTL is the life of a node certificate (24 h unless set).
	NodeCertTTL time.Duration
	// Runs, shared with the leader loop in this process, lets the loop
	// create standalone instances placed (see Runs); nil for none.
	Runs *Runs
}

// Server serves the /v1 API.
type Server struct {
	cfg  Config
	st   *Store
	auth *authenticator
	mux  *http.ServeMux

	keep   *keeper
	cancel context.CancelFunc

	mu sync.Mutex
	// leases caches node name → lease ID; guarded by mu.
	leases map[string]clientv3.LeaseID
	// agents holds one transport per node agent URL; guarded by mu.
	agents map[string]*http.Transport
	// self makes the server's own certificates from cfg.CA.
	self *selfCerts
	// base lives as long as the server: what its background work runs in.
	base context.Context
	// fabric is the nodes' view of each other, followed once asked for.
	fabric *fabricCache
	// nodes serves the agents' instance watches; instances, tenants'.
	nodes, instances *watchFeed
	// reports writes the agents' status reports.
	reports *reportWriter
	// events writes the ends of the runs the server follows.
	events *eventWriter
	// draining is closed when the HTTP server starts shutting down: long
	// polls answer at once rather than hold the shutdown.
	draining  chan struct{}
	drainOnce sync.Once
}

// Drain makes long polls answer at once: call it when the HTTP server
// starts shutting down (http.Server.RegisterOnShutdown).
func (s *Server) Drain() { s.drainOnce.Do(func() { close(s.draining) }) }

// NewServer returns the API handler.
func NewServer(cfg Config) *Server {
	if cfg.NodeTTL == 0 {
		cfg.NodeTTL = 3 * time.Second
	}
	if cfg.NodeCertTTL == 0 {
		cfg.NodeCertTTL = defaultNodeCertTTL
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, st: cfg.Store, leases: map[string]clientv3.LeaseID{}, cancel: cancel,
		keep: newKeeper(ctx, cfg.Store.leases, cfg.Now),
		auth: newAuthenticator(cfg.Store, cfg.Now),
		self: &selfCerts{ca: cfg.CA, now: cfg.Now, rnd: cfg.Rand},
		base: ctx, fabric: newFabricCache(cfg.Store, cfg.Log),
		nodes: newNodeFeed(cfg.Store, cfg.Log), instances: newTenantFeed(cfg.Store, cfg.Log, api.KindInstance), reports: newReportWriter(ctx, cfg.Store, reportGroup), draining: make(chan struct{}),
		events: &eventWriter{st: cfg.Store, rand: cfg.Rand}}
	go s.auth.follow(ctx)
	// Followed from the start, so that a client's watch from the revision
	// of its create is served from memory.
	go func() {
		if err := s.instances.start(ctx, ctx); err != nil && ctx.Err() == nil {
			cfg.Log.Warn("instance watch feed", "err", err)
		}
	}()
	m := http.NewServeMux()
	m.HandleFunc("GET /v1/{kind}", s.handleList)
	m.HandleFunc("POST /v1/{kind}", s.handleCreate)
	m.HandleFunc("GET /v1/{kind}/{name}", s.handleGet)
	m.HandleFunc("PUT /v1/{kind}/{name}", s.handleUpdate)
	m.HandleFunc("DELETE /v1/{kind}/{name}", s.handleDelete)
	m.HandleFunc("GET /v1/tenants/{tenant}/{kind}", s.handleList)
	m.HandleFunc("POST /v1/tenants/{tenant}/{kind}", s.handleCreate)
	m.HandleFunc("GET /v1/tenants/{tenant}/{kind}/{name}", s.handleGet)
	m.HandleFunc("PUT /v1/tenants/{tenant}/{kind}/{name}", s.handleUpdate)
	m.HandleFunc("DELETE /v1/tenants/{tenant}/{kind}/{name}", s.handleDelete)
	m.HandleFunc("PUT /v1/tenants/{tenant}/instances/{name}/status", s.handleStatus)
	m.HandleFunc("POST /v1/tenants/{tenant}/instances/{name}/move", s.handleMove)
	m.HandleFunc("GET /v1/tenants/{tenant}/services/{name}/endpoints", s.handleEndpoints)
	m.HandleFunc("POST /v1/nodes/{name}/register", s.handleRegister)
	m.HandleFunc("POST /v1/nodes/{name}/heartbeat", s.handleHeartbeat)
	m.HandleFunc("POST /v1/nodes/{name}/drain", s.handleDrain)
	m.HandleFunc("GET /v1/nodes/{name}/instances", s.handleNodeInstances)
	m.HandleFunc("POST /v1/addressblocks/{name}/claim", s.handleClaim)
	m.HandleFunc("POST /v1/addressblocks/{name}/release", s.handleClaim)
	m.HandleFunc("GET /v1/ca", s.handleCA)
	m.HandleFunc("GET /v1/cluster", s.handleCluster)
	m.HandleFunc("POST /v1/jointokens", s.handleJoinToken)
	m.HandleFunc("POST /v1/join", s.handleJoin)
	m.HandleFunc("POST /v1/nodes/{name}/certificate", s.handleRenew)
	m.HandleFunc("GET /v1/nodes/{name}/fabric", s.handleFabric)
	s.routeMetrics(m)
	s.containerRoutes(m)
	s.mux = m
	return s
}

// Close stops renewing node leases and closes the store's lease line; the
// HTTP server around s should be shut down first.
func (s *Server) Close() {
	s.cancel()
	_ = s.st.leases.Close()
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	limit := int64(api.MaxBodyBytes)
	if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/"+api.OpArchive) {
		limit = maxArchiveBytes
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	s.mux.ServeHTTP(w, r)
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	e := api.AsError(err)
	if errors.Is(err, context.Canceled) {
		return
	}
	if e.Code >= 500 {
		s.cfg.Log.Error("request failed", "err", err)
	}
	writeJSON(w, e.Code, e)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// target parses kind, tenant and name from the path and authorizes verb.
func (s *Server) target(r *http.Request, verb string) (Principal, api.Kind, string, string, error) {
	p, err := s.auth.authenticate(r.Context(), r)
	if err != nil {
		return p, "", "", "", err
	}
	k := api.Kind(r.PathValue("kind"))
	tenant, name := r.PathValue("tenant"), r.PathValue("name")
	if !k.Valid() || k == api.KindTenant && tenant != "" {
		return p, "", "", "", api.Errorf(http.StatusNotFound, "no such collection %q", k)
	}
	if k.TenantScoped() && tenant == "" && name != "" {
		return p, "", "", "", api.Errorf(http.StatusNotFound, "%s live in a tenant: /v1/tenants/TENANT/%s/%s", k, k, name)
	}
	if !k.TenantScoped() && tenant != "" {
		return p, "", "", "", api.Errorf(http.StatusNotFound, "%s are not tenant-scoped: /v1/%s", k, k)
	}
	if err := authorize(p, verb, k, tenant, name); err != nil {
		return p, "", "", "", err
	}
	return p, k, tenant, name, nil
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	_, k, tenant, name, err := s.target(r, verbRead)
	if err != nil {
		s.fail(w, err)
		return
	}
	o, err := s.st.Get(r.Context(), k, tenant, name)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, redact(o))
}

// redact hides what the store keeps but no client may read back.
func redact(o api.Object) api.Object {
	if t, ok := o.(*api.Token); ok {
		t.SecretHash, t.Secret = "", ""
	}
	return o
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	_, k, tenant, _, err := s.target(r, verbRead)
	if err != nil {
		s.fail(w, err)
		return
	}
	sel, err := api.ParseSelector(r.URL.Query().Get("labels"))
	if err != nil {
		s.fail(w, err)
		return
	}
	if r.URL.Query().Get("watch") != "" {
		if k == api.KindInstance && tenant != "" {
			s.serveFeed(w, r, s.instances, tenant, sel, k, s.st.KindPrefix(k, tenant))
			return
		}
		s.watch(w, r, k, s.st.KindPrefix(k, tenant), sel)
		return
	}
	items, rev, err := s.st.List(r.Context(), k, tenant, sel)
	if err != nil {
		s.fail(w, err)
		return
	}
	for _, o := range items {
		redact(o)
	}
	writeJSON(w, http.StatusOK, api.List[api.Object]{Revision: rev, Items: items})
}

// watch streams changes under prefix after ?revision= as NDJSON, with
// periodic bookmarks so a resumed watch starts near the present.
func (s *Server) watch(w http.ResponseWriter, r *http.Request, k api.Kind, prefix string, sel api.Selector) {
	rev, err := watchRevision(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(r.Context()))
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithProgressNotify()}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev+1))
	}
	wch := s.st.Client().Watch(ctx, prefix, opts...)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	for resp := range wch {
		if err := resp.Err(); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, rpctypes.ErrCompacted) {
				code = http.StatusGone
			}
			line, _ := jsonLine(api.WatchEvent{Type: "ERROR", Object: errorObject(api.Errorf(code, "watch: %v", err))})
			_, _ = w.Write(line)
			return
		}
		if resp.IsProgressNotify() {
			line, _ := jsonLine(api.WatchEvent{Type: "BOOKMARK", Revision: resp.Header.Revision})
			_, _ = w.Write(line)
		}
		for _, ev := range resp.Events {
			line, ok := watchLine(k, ev, sel)
			if !ok {
				continue
			}
			if _, err := w.Write(line); err != nil {
				return
			}
		}
		if fl != nil {
			fl.Flush()
		}
	}
}

// watchRevision is the revision a watch request resumes after (0: now).
func watchRevision(r *http.Request) (int64, error) {
	q := r.URL.Query().Get("revision")
	rev, err := strconv.ParseInt(q, 10, 64)
	if err != nil && q != "" || rev < 0 {
		return 0, &api.FieldError{Field: "revision", Message: "must be a non-negative integer"}
	}
	return rev, nil
}

// watchLine is the NDJSON line that tells a watcher of ev, an event on
// objects of kind k; false when there is nothing to tell (sel does not
// match, or a delete without the deleted value).
func watchLine(k api.Kind, ev *clientv3.Event, sel api.Selector) ([]byte, bool) {
	line, o, ok := watchObjectLine(k, ev)
	if !ok || !sel.Matches(o.GetMeta().Labels) {
		return nil, false
	}
	return line, true
}

// watchObjectLine is watchLine for every object, and the object.
func watchObjectLine(k api.Kind, ev *clientv3.Event) ([]byte, api.Object, bool) {
	we := api.WatchEvent{Revision: ev.Kv.ModRevision}
	value := ev.Kv.Value
	switch {
	case ev.Type == clientv3.EventTypeDelete:
		we.Type = api.Deleted
		if ev.PrevKv == nil {
			return nil, nil, false
		}
		value = ev.PrevKv.Value
	case ev.IsCreate():
		we.Type = api.Added
	default:
		we.Type = api.Modified
	}
	o, err := Decode(k, value, ev.Kv.ModRevision)
	if err != nil {
		return nil, nil, false
	}
	we.Object, _ = json.Marshal(redact(o))
	line, err := jsonLine(we)
	return line, o, err == nil
}

// jsonLine is v as one line of JSON.
func jsonLine(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	return append(b, '\n'), err
}

// errorObject is err as a watch's ERROR event carries it.
func errorObject(err error) json.RawMessage {
	var e *api.Error
	if !errors.As(err, &e) {
		e = api.Errorf(http.StatusInternalServerError, "%v", err)
	}
	b, _ := json.Marshal(e)
	return b
}

func (s *Server) decodeObject(r *http.Request, k api.Kind, tenant string) (api.Object, error) {
	o := api.New(k)
	if err := api.Decode(r.Body, api.MaxBodyBytes, o); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, api.Errorf(http.StatusRequestEntityTooLarge, "body larger than %d bytes", api.MaxBodyBytes)
		}
		return nil, err
	}
	m := o.GetMeta()
	if k.TenantScoped() {
		if m.Tenant == "" {
			m.Tenant = tenant
		}
		if m.Tenant != tenant {
			return nil, &api.FieldError{Field: "tenant", Message: fmt.Sprintf("%q does not match the path's tenant %q", m.Tenant, tenant)}
		}
	}
	return o, nil
}

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request) {
	p, k, tenant, _, err := s.target(r, verbWrite)
	if err != nil {
		s.fail(w, err)
		return
	}
	if k.TenantScoped() && tenant == "" {
		s.fail(w, api.Errorf(http.StatusNotFound, "create %s under /v1/tenants/TENANT/%s", k, k))
		return
	}
	follow := r.URL.Query().Get("follow") == "1"
	if follow && k != api.KindInstance {
		s.fail(w, &api.FieldError{Field: "follow", Message: "only an instance's run can be followed"})
		return
	}
	o, err := s.decodeObject(r, k, tenant)
	if err == nil {
		err = mayRun(p, o)
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	m := o.GetMeta()
	m.Created = s.cfg.Now().UTC()
	var secret string
	switch v := o.(type) {
	case *api.Token:
		if p.Role != api.RoleAdmin && (v.Role == api.RoleAdmin || v.Role == api.RoleNode) {
			s.fail(w, api.Errorf(http.StatusForbidden, "only admins make %s tokens", v.Role))
			return
		}
		if err := api.Validate(v); err != nil {
			s.fail(w, err)
			return
		}
		if secret, err = NewSecret(s.cfg.Rand, v.Tenant, v.Name); err != nil {
			s.fail(w, err)
			return
		}
		v.Secret, v.SecretHash = "", hashSecret(secret)
	case *api.Service:
		v.Status = api.ServiceStatus{}
	case *api.Instance:
		if v.Spec.Node != "" {
			s.fail(w, &api.FieldError{Field: "spec.node", Message: "set by the scheduler; use spec.pin to choose a node"})
			return
		}
		if v.Spec.Service != "" {
			s.fail(w, &api.FieldError{Field: "spec.service", Message: "set by the service controller; create a service instead"})
			return
		}
		prepareInstance(v)
	case *api.Node:
		v.Status = api.NodeStatus{Phase: api.NodeNotReady}
	}
	if err := api.Validate(o); err != nil {
		s.fail(w, err)
		return
	}
	create := s.st.Create
	if k.TenantScoped() {
		create = s.st.CreateInTenant
	}
	if in, ok := o.(*api.Instance); ok {
		if placed := s.cfg.Runs.create(r.Context(), in); placed != nil {
			o = placed
			create = func(context.Context, api.Object) error { return nil }
		}
	}
	if err := create(r.Context(), o); err != nil {
		s.fail(w, err)
		return
	}
	if t, ok := o.(*api.Token); ok {
		t.Secret, t.SecretHash = secret, ""
	}
	if follow {
		s.followRun(w, r, o.(*api.Instance))
		return
	}
	writeJSON(w, http.StatusCreated, o)
}

func prepareInstance(v *api.Instance) {
	if v.Spec.Desired == "" {
		v.Spec.Desired = api.DesiredRunning
	}
	v.Spec.TemplateHash = v.Spec.Template.Hash()
	v.Spec.RestartGeneration = 0
	v.Status = api.InstanceStatus{Phase: api.PhasePending}
}

func (s *Server) handleUpdate(w http.ResponseWriter, r *http.Request) {
	p, k, tenant, name, err := s.target(r, verbWrite)
	if err != nil {
		s.fail(w, err)
		return
	}
	o, err := s.decodeObject(r, k, tenant)
	if err == nil {
		err = mayRun(p, o)
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	m := o.GetMeta()
	if m.Name != name {
		s.fail(w, &api.FieldError{Field: "name", Message: fmt.Sprintf("%q does not match the path's %q", m.Name, name)})
		return
	}
	if m.ResourceVersion == 0 {
		s.fail(w, &api.FieldError{Field: "resourceVersion", Message: "required on update (read the object first)"})
		return
	}
	if err := api.Validate(o); err != nil {
		s.fail(w, err)
		return
	}
	prev, err := s.st.Get(r.Context(), k, tenant, name)
	if err != nil {
		s.fail(w, err)
		return
	}
	if prev.GetMeta().ResourceVersion != m.ResourceVersion {
		s.fail(w, api.Errorf(http.StatusConflict, "%s %q is at version %d, not %d: read it again and retry", k, name, prev.GetMeta().ResourceVersion, m.ResourceVersion))
		return
	}
	m.Created = prev.GetMeta().Created
	// Status and control-plane-owned fields are kept as stored.
	switch v := o.(type) {
	case *api.Service:
		v.Status = prev.(*api.Service).Status
	case *api.Instance:
		pv := prev.(*api.Instance)
		v.Status = pv.Status
		// Raising the restart generation asks for one restart (berth
		// restart, or start of an exited container), whatever the number;
		// so does wanting a stopped instance running again.
		gen := pv.Spec.RestartGeneration
		if v.Spec.RestartGeneration > gen || pv.Spec.Desired == api.DesiredStopped && v.Spec.Desired != api.DesiredStopped {
			gen = max(gen, pv.Status.Restarts) + 1
		}
		v.Spec.Node, v.Spec.RestartGeneration, v.Spec.Service = pv.Spec.Node, gen, pv.Spec.Service
		// Retiring is the service controller's verdict: an update cannot
		// take an instance back.
		v.Spec.StopAt = pv.Spec.StopAt
		v.Spec.TemplateHash = v.Spec.Template.Hash()
	case *api.Node:
		v.Status = prev.(*api.Node).Status
	case *api.Token:
		pt := prev.(*api.Token)
		v.SecretHash, v.Secret, v.Role, v.Node = pt.SecretHash, "", pt.Role, pt.Node
		v.Expires, v.Certificate, v.PreviousCertificate = pt.Expires, pt.Certificate, pt.PreviousCertificate
	case *api.AddressBlock:
		v.Node = prev.(*api.AddressBlock).Node
	}
	if err := s.st.Update(r.Context(), o, prev); err != nil {
		s.fail(w, err)
		return
	}
	if t, ok := o.(*api.Token); ok {
		t.SecretHash = ""
	}
	writeJSON(w, http.StatusOK, o)
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	_, k, tenant, name, err := s.target(r, verbWrite)
	if err != nil {
		s.fail(w, err)
		return
	}
	var rv int64
	if q := r.URL.Query().Get("resourceVersion"); q != "" {
		if rv, err = strconv.ParseInt(q, 10, 64); err != nil {
			s.fail(w, &api.FieldError{Field: "resourceVersion", Message: "must be an integer"})
			return
		}
	}
	if k == api.KindTenant && name == api.SystemTenant {
		s.fail(w, api.Errorf(http.StatusForbidden, "the system tenant cannot be deleted"))
		return
	}
	// An unconditional delete retries when the object changes under it (an
	// agent reporting status, say): the caller asked for it gone whatever
	// its version.
	for attempt := 0; ; attempt++ {
		o, err := s.st.Get(r.Context(), k, tenant, name)
		if err != nil {
			s.fail(w, err)
			return
		}
		if rv != 0 && o.GetMeta().ResourceVersion != rv {
			s.fail(w, api.Errorf(http.StatusConflict, "%s %q is at version %d, not %d", k, name, o.GetMeta().ResourceVersion, rv))
			return
		}
		if k == api.KindTenant {
			// A tenant goes only when empty, so nothing is orphaned.
			for _, tk := range []api.Kind{api.KindService, api.KindInstance} {
				items, _, err := s.st.List(r.Context(), tk, name, nil)
				if err != nil {
					s.fail(w, err)
					return
				}
				if len(items) > 0 {
					s.fail(w, api.Errorf(http.StatusConflict, "tenant %q still has %d %s", name, len(items), tk))
					return
				}
			}
		}
		err = s.st.Delete(r.Context(), o)
		if err == nil {
			break
		}
		if rv != 0 || !api.IsConflict(err) || attempt >= 10 {
			s.fail(w, err)
			return
		}
	}
	switch k {
	case api.KindToken:
		s.auth.forget(func(p Principal) bool { return p.Token == tenant+"/"+name })
	case api.KindNode:
		// A removed node's credentials stop working with it.
		if err := s.revokeNode(r.Context(), name); err != nil {
			s.fail(w, err)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// revokeNode deletes the tokens that act as node and forgets them.
func (s *Server) revokeNode(ctx context.Context, node string) error {
	toks, _, err := s.st.List(ctx, api.KindToken, api.SystemTenant, nil)
	if err != nil {
		return fmt.Errorf("revoke node %s: %w", node, err)
	}
	for _, o := range toks {
		if t := o.(*api.Token); t.Role == api.RoleNode && t.Node == node {
			if err := s.st.Delete(ctx, t); err != nil && !api.IsNotFound(err) {
				return fmt.Errorf("revoke node %s: token %s: %w", node, t.Name, err)
			}
		}
	}
	s.auth.forget(func(p Principal) bool { return p.Role == api.RoleNode && p.Node == node })
	return nil
}

// nodeCaller authenticates a node endpoint: an admin, or the node's own token.
func (s *Server) nodeCaller(r *http.Request) (Principal, string, error) {
	p, err := s.auth.authenticate(r.Context(), r)
	if err != nil {
		return p, "", err
	}
	name := r.PathValue("name")
	if err := api.ValidName(name); err != nil {
		return p, "", &api.FieldError{Field: "name", Message: err.Error()}
	}
	if p.Role != api.RoleAdmin && !(p.Role == api.RoleNode && p.Node == name) {
		return p, "", api.Errorf(http.StatusForbidden, "token %s may not act as node %s", p.Token, name)
	}
	return p, name, nil
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	_, name, err := s.nodeCaller(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	var reg api.Registration
	if err := api.Decode(r.Body, api.MaxBodyBytes, &reg); err != nil {
		s.fail(w, err)
		return
	}
	ctx := r.Context()
	ttl := int64(s.cfg.NodeTTL / time.Second)
	lease, err := s.st.Client().Grant(ctx, max(ttl, 1))
	if err != nil {
		s.fail(w, fmt.Errorf("grant lease for node %s: %w", name, err))
		return
	}
	for attempt := 0; ; attempt++ {
		prev, err := s.st.Get(ctx, api.KindNode, "", name)
		if err != nil && !api.IsNotFound(err) {
			s.fail(w, err)
			return
		}
		n := &api.Node{Meta: api.Meta{Name: name, Labels: reg.Labels, Created: s.cfg.Now().UTC()}, Spec: reg.Spec}
		if prev != nil {
			pn := prev.(*api.Node)
			n.Created, n.ResourceVersion = pn.Created, pn.ResourceVersion
			n.Spec.Unschedulable, n.Spec.Drain = pn.Spec.Unschedulable, pn.Spec.Drain
		}
		n.Status = api.NodeStatus{Phase: api.NodeReady, Lease: int64(lease.ID), LeaseTTL: lease.TTL, LastHeartbeat: s.cfg.Now().UTC()}
		if n.Spec.Drain {
			n.Status.Phase = api.NodeDraining
		}
		if err := api.Validate(n); err != nil {
			s.fail(w, err)
			return
		}
		cmps := []clientv3.Cmp{s.st.Unchanged(n)}
		ops := append(s.st.PutOps(n, prev), clientv3.OpPut(s.st.AliveKey(name), strconv.FormatInt(int64(lease.ID), 10), clientv3.WithLease(lease.ID)))
		_, err = s.st.Txn(ctx, "register node "+name, cmps, ops)
		if err == nil {
			break
		}
		if !api.IsConflict(err) || attempt > 10 {
			s.fail(w, err)
			return
		}
	}
	s.mu.Lock()
	s.leases[name] = lease.ID
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, api.Lease{ID: int64(lease.ID), TTL: lease.TTL})
}

// handleHeartbeat renews the lease the node was given at registration. The
// node names its lease, so a node that re-registered through another server
// renews its new lease, never a stale one this server remembers.
func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	_, name, err := s.nodeCaller(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	var l api.Lease
	if err := api.Decode(r.Body, api.MaxBodyBytes, &l); err != nil {
		s.fail(w, err)
		return
	}
	id := clientv3.LeaseID(l.ID)
	s.mu.Lock()
	known := s.leases[name] == id
	s.mu.Unlock()
	if !known {
		o, err := s.st.Get(r.Context(), api.KindNode, "", name)
		if err != nil {
			s.fail(w, err)
			return
		}
		if clientv3.LeaseID(o.(*api.Node).Status.Lease) != id {
			s.fail(w, api.Errorf(http.StatusGone, "lease %x is not node %s's current lease: register again", l.ID, name))
			return
		}
		s.mu.Lock()
		s.leases[name] = id
		s.mu.Unlock()
	}
	// The node heartbeats every third of its TTL; renewing for half a TTL
	// past each heartbeat forgives one late beat, and a node that stops is
	// declared dead at most 1.5 TTL after its last one.
	ttl := max(int64(s.cfg.NodeTTL/time.Second), 1)
	if err := s.keep.beat(r.Context(), id, time.Duration(ttl)*time.Second/2); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.fail(w, api.Errorf(http.StatusGone, "lease of node %s expired: register again", name))
			return
		}
		s.fail(w, fmt.Errorf("renew lease of node %s: %w", name, err))
		return
	}
	writeJSON(w, http.StatusOK, api.Lease{ID: l.ID, TTL: ttl})
}

func (s *Server) handleNodeInstances(w http.ResponseWriter, r *http.Request) {
	_, name, err := s.nodeCaller(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	if r.URL.Query().Get("watch") != "" {
		s.serveFeed(w, r, s.nodes, name, nil, api.KindInstance, s.st.NodePrefix(name))
		return
	}
	// The feed follows from before the list, so the watch that follows
	// the list is served from it.
	if err := s.nodes.start(r.Context(), s.base); err != nil {
		s.cfg.Log.Warn("node feed", "err", err)
	}
	items, rev, err := s.st.ListPrefix(r.Context(), api.KindInstance, s.st.NodePrefix(name), nil)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.List[api.Object]{Revision: rev, Items: items})
}

func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request) {
	p, err := s.auth.authenticate(r.Context(), r)
	if err == nil && p.Role != api.RoleAdmin {
		err = api.Errorf(http.StatusForbidden, "only admins drain nodes")
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	o, err := s.st.Modify(r.Context(), api.KindNode, "", r.PathValue("name"), func(o api.Object) error {
		n := o.(*api.Node)
		n.Spec.Drain = true
		if n.Status.Phase == api.NodeReady {
			n.Status.Phase = api.NodeDraining
		}
		return nil
	})
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	p, err := s.auth.authenticate(r.Context(), r)
	if err != nil {
		s.fail(w, err)
		return
	}
	tenant, name := r.PathValue("tenant"), r.PathValue("name")
	if p.Role != api.RoleAdmin && p.Role != api.RoleNode {
		s.fail(w, api.Errorf(http.StatusForbidden, "only node agents report instance status"))
		return
	}
	var st api.InstanceStatus
	if err := api.Decode(r.Body, api.MaxBodyBytes, &st); err != nil {
		s.fail(w, err)
		return
	}
	if st.Restarts < 0 {
		s.fail(w, &api.FieldError{Field: "restarts", Message: "must not be negative"})
		return
	}
	switch st.Phase {
	case api.PhasePlaced, api.PhaseRunning, api.PhaseExited, api.PhaseFailed:
	default:
		s.fail(w, &api.FieldError{Field: "phase", Message: fmt.Sprintf("an agent reports placed, running, exited or failed, not %q", st.Phase)})
		return
	}
	o, err := s.reports.write(r.Context(), tenant, name, func(in *api.Instance) error {
		if p.Role == api.RoleNode && in.Spec.Node != p.Node {
			return api.Errorf(http.StatusForbidden, "instance %s/%s is not placed on node %s", tenant, name, p.Node)
		}
		// Crash-looping is the health manager's verdict, not the agent's.
		st.CrashLoop = in.Status.CrashLoop
		st.ObservedNode = in.Spec.Node
		in.Status = st
		return nil
	})
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func (s *Server) handleMove(w http.ResponseWriter, r *http.Request) {
	p, err := s.auth.authenticate(r.Context(), r)
	if err != nil {
		s.fail(w, err)
		return
	}
	tenant, name := r.PathValue("tenant"), r.PathValue("name")
	if err := authorize(p, verbWrite, api.KindInstance, tenant, name); err != nil {
		s.fail(w, err)
		return
	}
	var mv api.Move
	if err := api.Decode(r.Body, api.MaxBodyBytes, &mv); err != nil {
		s.fail(w, err)
		return
	}
	if err := api.ValidName(mv.Node); err != nil {
		s.fail(w, &api.FieldError{Field: "node", Message: err.Error()})
		return
	}
	if _, err := s.st.Get(r.Context(), api.KindNode, "", mv.Node); err != nil {
		s.fail(w, err)
		return
	}
	o, err := s.st.Modify(r.Context(), api.KindInstance, tenant, name, func(o api.Object) error {
		in := o.(*api.Instance)
		in.Spec.Pin, in.Spec.Node = mv.Node, ""
		in.Status.Phase, in.Status.Reason = api.PhasePending, "moving to node "+mv.Node
		return nil
	})
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

// handleClaim claims or releases an address block, transactionally: a block
// is held by at most one node.
func (s *Server) handleClaim(w http.ResponseWriter, r *http.Request) {
	p, err := s.auth.authenticate(r.Context(), r)
	if err != nil {
		s.fail(w, err)
		return
	}
	var c api.Claim
	if err := api.Decode(r.Body, api.MaxBodyBytes, &c); err != nil {
		s.fail(w, err)
		return
	}
	if err := api.ValidName(c.Node); err != nil {
		s.fail(w, &api.FieldError{Field: "node", Message: err.Error()})
		return
	}
	if p.Role != api.RoleAdmin && !(p.Role == api.RoleNode && p.Node == c.Node) {
		s.fail(w, api.Errorf(http.StatusForbidden, "token %s may not claim blocks for node %s", p.Token, c.Node))
		return
	}
	release := r.URL.Path[len(r.URL.Path)-len("release"):] == "release"
	name := r.PathValue("name")
	o, err := s.st.Modify(r.Context(), api.KindAddressBlock, "", name, func(o api.Object) error {
		b := o.(*api.AddressBlock)
		switch {
		case release && b.Node != c.Node:
			return api.Errorf(http.StatusConflict, "block %s is held by %q, not %s", name, b.Node, c.Node)
		case release:
			b.Node = ""
		case b.Node != "" && b.Node != c.Node:
			return api.Errorf(http.StatusConflict, "block %s is held by node %s", name, b.Node)
		default:
			b.Node = c.Node
		}
		return nil
	})
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

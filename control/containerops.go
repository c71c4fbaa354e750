package control

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
)

// maxArchiveBytes bounds a tar uploaded into a container (berth cp).
const maxArchiveBytes = 1 << 30

// WebsocketProtocol is the subprotocol of exec and attach streams. A
// browser, which cannot set an Authorization header on a websocket, offers
// it together with "bearer.TOKEN".
const WebsocketProtocol = "berth.v1"

const bearerProtocol = "bearer."

func (s *Server) containerRoutes(m *http.ServeMux) {
	for _, o := range []struct{ method, op, verb string }{
		{http.MethodGet, api.OpLogs, verbRead},
		{http.MethodGet, api.OpStats, verbRead},
		{http.MethodGet, api.OpTop, verbRead},
		{http.MethodGet, api.OpArchive, verbRead},
		{http.MethodPut, api.OpArchive, verbWrite},
		{http.MethodGet, api.OpExec, verbWrite},
		{http.MethodGet, api.OpAttach, verbWrite},
		{http.MethodPost, api.OpKill, verbWrite},
		{http.MethodGet, api.OpFollow, verbRead},
	} {
		m.HandleFunc(o.method+" /v1/tenants/{tenant}/instances/{name}/"+o.op, s.containerOp(o.op, o.verb))
	}
	m.HandleFunc("GET /v1/tenants/{tenant}/volumes/{volume}/archive", s.volumeOp(verbRead))
	m.HandleFunc("PUT /v1/tenants/{tenant}/volumes/{volume}/archive", s.volumeOp(verbWrite))
}

// mayRun refuses a template p's role may not run: host paths reach outside
// every tenant, so only admins mount them.
func mayRun(p Principal, o api.Object) error {
	var t api.Template
	switch v := o.(type) {
	case *api.Service:
		t = v.Spec.Template
	case *api.Instance:
		t = v.Spec.Template
	default:
		return nil
	}
	if p.Role != api.RoleAdmin && t.HasBindMount() {
		return api.Errorf(http.StatusForbidden, "token %s (%s) may not mount host paths (bind mounts need an admin token; use a volume)", p.Token, p.Role)
	}
	return nil
}

// containerOp authorizes an operation on an instance and hands it to the
// agent of the instance's node, streaming both ways (logs follow, exec and
// attach websockets, archives).
func (s *Server) containerOp(op, verb string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		p, err := s.auth.authenticate(ctx, r)
		if err != nil {
			s.fail(w, err)
			return
		}
		tenant, name := r.PathValue("tenant"), r.PathValue("name")
		if err := authorize(p, verb, api.KindInstance, tenant, name); err != nil {
			s.fail(w, err)
			return
		}
		node, agentURL, err := s.agentOf(ctx, tenant, name)
		if err != nil {
			s.fail(w, err)
			return
		}
		s.proxy(w, r, node, agentURL, "/containers/"+url.PathEscape(api.ContainerName(tenant, name))+"/"+op, tenant+"/"+name)
	}
}

// proxy hands r to node's agent at path, streaming both ways; what names
// the target in errors.
func (s *Server) proxy(w http.ResponseWriter, r *http.Request, node, agentURL, path, what string) {
	ctx := r.Context()
	target, tr, err := s.agentTransport(node, agentURL)
	if err != nil {
		s.fail(w, err)
		return
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.URL.Path, pr.Out.URL.RawPath = target.Path+path, ""
			pr.Out.URL.RawQuery = pr.In.URL.RawQuery
			// The agent trusts the server, not the caller: the caller's
			// credentials stop here, and the origin check was ours.
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Del("Origin")
			if protos := offeredProtocols(pr.In); len(protos) > 0 {
				pr.Out.Header.Del("Sec-WebSocket-Protocol")
				var keep []string
				for _, p := range protos {
					if !strings.HasPrefix(p, bearerProtocol) {
						keep = append(keep, p)
					}
				}
				if len(keep) > 0 {
					pr.Out.Header.Set("Sec-WebSocket-Protocol", strings.Join(keep, ", "))
				}
			}
		},
		Transport:     tr,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			// A browser that offered subprotocols fails a handshake
			// that selects none.
			if resp.StatusCode == http.StatusSwitchingProtocols && resp.Header.Get("Sec-WebSocket-Protocol") == "" {
				for _, p := range offeredProtocols(r) {
					if p == WebsocketProtocol {
						resp.Header.Set("Sec-WebSocket-Protocol", WebsocketProtocol)
					}
				}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			if ctx.Err() != nil {
				return
			}
			s.fail(w, api.Errorf(http.StatusBadGateway, "node agent of %s: %v", what, err))
		},
	}
	rp.ServeHTTP(w, r)
}

// volumeOp copies a tenant's named volume out of or into a node's agent
// (berth move --copy-volumes): reading needs read access to the tenant,
// writing tenant-admin.
func (s *Server) volumeOp(verb string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		p, err := s.auth.authenticate(ctx, r)
		if err != nil {
			s.fail(w, err)
			return
		}
		tenant, vol, node := r.PathValue("tenant"), r.PathValue("volume"), r.URL.Query().Get("node")
		if err := authorize(p, verb, api.KindInstance, tenant, ""); err != nil {
			s.fail(w, err)
			return
		}
		if err := api.ValidName(node); err != nil {
			s.fail(w, &api.FieldError{Field: "node", Message: err.Error()})
			return
		}
		if err := api.ValidName(vol); err != nil {
			s.fail(w, &api.FieldError{Field: "volume", Message: err.Error()})
			return
		}
		o, err := s.st.Get(ctx, api.KindNode, "", node)
		if err != nil {
			s.fail(w, err)
			return
		}
		n := o.(*api.Node)
		if n.Spec.AgentURL == "" {
			s.fail(w, api.Errorf(http.StatusNotImplemented, "node %s does not serve container operations (no agent URL registered)", n.Name))
			return
		}
		s.proxy(w, r, n.Name, n.Spec.AgentURL, "/volumes/"+url.PathEscape(api.VolumeName(tenant, vol))+"/archive", "volume "+tenant+"/"+vol+" on "+node)
	}
}

// agentOf finds the node running an instance's container and where its
// agent listens.
func (s *Server) agentOf(ctx context.Context, tenant, name string) (node, agentURL string, err error) {
	o, err := s.st.Get(ctx, api.KindInstance, tenant, name)
	if err != nil {
		return "", "", err
	}
	in := o.(*api.Instance)
	if in.Spec.Node == "" {
		return "", "", api.Errorf(http.StatusConflict, "instance %s is not on a node yet (%s)", name, in.Status.Phase)
	}
	no, err := s.st.Get(ctx, api.KindNode, "", in.Spec.Node)
	if err != nil {
		if api.IsNotFound(err) {
			return "", "", api.Errorf(http.StatusConflict, "instance %s: its node %s is gone", name, in.Spec.Node)
		}
		return "", "", err
	}
	n := no.(*api.Node)
	if n.Spec.AgentURL == "" {
		return "", "", api.Errorf(http.StatusNotImplemented, "node %s does not serve container operations (no agent URL registered)", n.Name)
	}
	return n.Name, n.Spec.AgentURL, nil
}

// agentTransport returns the base URL and transport for node's agent URL,
// sharing one transport per agent.
func (s *Server) agentTransport(node, agentURL string) (*url.URL, http.RoundTripper, error) {
	u, err := url.Parse(agentURL)
	if err != nil {
		return nil, nil, api.Errorf(http.StatusBadGateway, "agent URL %q: %v", agentURL, err)
	}
	key := node + " " + agentURL
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.agents == nil {
		s.agents = map[string]*http.Transport{}
	}
	tr := s.agents[key]
	switch u.Scheme {
	case "unix":
		if tr == nil {
			sock := u.Path
			tr = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			}}
		}
		s.agents[key] = tr
		return &url.URL{Scheme: "http", Host: "agent"}, tr, nil
	case "https":
		if tr == nil {
			tc, err := s.agentTLS(node)
			if err != nil {
				return nil, nil, err
			}
			tr = &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: false, IdleConnTimeout: 90 * time.Second}
		}
		s.agents[key] = tr
		return &url.URL{Scheme: u.Scheme, Host: u.Host, Path: strings.TrimSuffix(u.Path, "/")}, tr, nil
	case "http":
		if tr == nil {
			tr = &http.Transport{}
		}
		s.agents[key] = tr
		return &url.URL{Scheme: u.Scheme, Host: u.Host, Path: strings.TrimSuffix(u.Path, "/")}, tr, nil
	}
	return nil, nil, api.Errorf(http.StatusBadGateway, "agent URL %q: scheme must be unix, http or https", agentURL)
}

// offeredProtocols lists the websocket subprotocols a request offers.
func offeredProtocols(r *http.Request) []string {
	var out []string
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// websocketBearer finds a token offered as the subprotocol "bearer.TOKEN"
// on a websocket handshake.
func websocketBearer(r *http.Request) (string, bool) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return "", false
	}
	for _, p := range offeredProtocols(r) {
		if t, ok := strings.CutPrefix(p, bearerProtocol); ok && t != "" {
			return t, true
		}
	}
	return "", false
}

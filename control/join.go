package control

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// defaultNodeCertTTL is a node certificate's life unless configured; the
// agent renews it two thirds in.
const defaultNodeCertTTL = 24 * time.Hour

// controlCertTTL is the life of the certificates a server makes for
// itself (serving the API, and as the client of agents); they are renewed
// in memory long before.
const controlCertTTL = 7 * 24 * time.Hour

type storedCA struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// LoadCA returns the cluster's CA, making it on first start. It lives in
// etcd beside everything else, so that every server of the cluster signs
// with the same one; whoever can read etcd is already root of the cluster.
func LoadCA(ctx context.Context, st *Store, rnd interface{ Read([]byte) (int, error) }, now time.Time) (*pki.CA, error) {
	key := st.Root() + "pki/ca"
	certPEM, keyPEM, err := pki.NewCA(rnd, "berth", now)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(storedCA{Cert: string(certPEM), Key: string(keyPEM)})
	if err != nil {
		return nil, err
	}
	// Whoever creates it first wins; the others read the winner's.
	resp, err := st.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) != 1 {
			return nil, fmt.Errorf("cluster CA: %s vanished", key)
		}
		b = kvs[0].Value
	}
	var sc storedCA
	if err := json.Unmarshal(b, &sc); err != nil {
		return nil, fmt.Errorf("cluster CA at %s: %w", key, err)
	}
	return pki.ParseCA([]byte(sc.Cert), []byte(sc.Key))
}

// selfCerts keeps the certificates a server makes for itself from the CA
// and renews them before they run out.
type selfCerts struct {
	ca  *pki.CA
	now func() time.Time
	rnd interface{ Read([]byte) (int, error) }

	mu sync.Mutex
	// byKey caches certificates by the names they were made for; guarded
	// by mu.
	byKey map[string]*tls.Certificate
}

func (c *selfCerts) get(ips []netip.Addr, dns []string) (*tls.Certificate, error) {
	k := fmt.Sprint(ips, dns)
	c.mu.Lock()
	defer c.mu.Unlock()
	if kp := c.byKey[k]; kp != nil && c.now().Before(pki.RenewAt(kp.Leaf)) {
		return kp, nil
	}
	keyPEM, csr, err := pki.NewKey(c.rnd, "control")
	if err != nil {
		return nil, err
	}
	certPEM, err := c.ca.Sign(c.rnd, pki.Request{CSR: csr, Name: "control", Org: pki.OrgControl, IPs: ips, DNS: dns, TTL: controlCertTTL}, c.now())
	if err != nil {
		return nil, err
	}
	kp, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if c.byKey == nil {
		c.byKey = map[string]*tls.Certificate{}
	}
	c.byKey[k] = &kp
	return &kp, nil
}

// TLSConfig is the API's TLS for the given served addresses: a certificate
// from the cluster CA, and client certificates (nodes') verified against
// it when offered; bearer tokens work as over plain HTTP. It is nil when
// the server has no CA.
func (s *Server) TLSConfig(ips []netip.Addr, dns []string) *tls.Config {
	if s.cfg.CA == nil {
		return nil
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  s.cfg.CA.Pool(),
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.self.get(ips, dns)
		},
	}
}

// agentTLS is how the server dials a node's agent: it trusts only the
// cluster CA, shows its control-plane certificate, and accepts only the
// named node's certificate, so that a node cannot register another's
// address and receive its traffic.
func (s *Server) agentTLS(node string) (*tls.Config, error) {
	if s.cfg.CA == nil {
		return nil, api.Errorf(http.StatusBadGateway, "node %s has an https agent URL, and this server has no cluster CA to dial it with", node)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    s.cfg.CA.Pool(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.self.get(nil, nil)
		},
		// The agent's certificate names its addresses, but it is the node
		// name that matters: checked here rather than by host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("agent of node %s showed no certificate", node)
			}
			opts := x509.VerifyOptions{Roots: s.cfg.CA.Pool(), Intermediates: x509.NewCertPool(),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, CurrentTime: s.cfg.Now()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
				return fmt.Errorf("agent of node %s: %w", node, err)
			}
			id, ok := pki.IdentityOf(cs.PeerCertificates[0])
			if !ok || id.Org != pki.OrgNode || id.Name != node {
				return fmt.Errorf("agent at this address is %q, not node %s", cs.PeerCertificates[0].Subject.CommonName, node)
			}
			return nil
		},
	}, nil
}

// certTokenName is the token that records node's current certificate.
func certTokenName(node string) string {
	sum := sha256.Sum256([]byte(node))
	return "cert-" + hex.EncodeToString(sum[:8])
}

// authenticateCert turns a verified client certificate into a principal:
// a node's, if the certificate is the one the control plane last issued to
// it (a renewal or the node's removal revokes the old one).
func (a *authenticator) authenticateCert(ctx context.Context, c *x509.Certificate) (Principal, error) {
	id, ok := pki.IdentityOf(c)
	if !ok || id.Org != pki.OrgNode {
		return Principal{}, api.Errorf(http.StatusUnauthorized, "client certificate %q is not a node's", c.Subject.CommonName)
	}
	cacheKey := "cert:" + id.Fingerprint
	if p, ok := a.cached(cacheKey); ok {
		return p, nil
	}
	t, rev, err := a.token(ctx, api.SystemTenant, certTokenName(id.Name))
	if err != nil {
		if api.IsNotFound(err) {
			return Principal{}, api.Errorf(http.StatusUnauthorized, "node %s's certificate is revoked", id.Name)
		}
		return Principal{}, err
	}
	if t.Role != api.RoleNode || t.Node != id.Name || (t.Certificate != id.Fingerprint && t.PreviousCertificate != id.Fingerprint) {
		return Principal{}, api.Errorf(http.StatusUnauthorized, "node %s's certificate is revoked (replaced or removed)", id.Name)
	}
	p := Principal{Tenant: api.SystemTenant, Role: api.RoleNode, Node: id.Name, Token: api.SystemTenant + "/" + t.Name}
	a.remember(cacheKey, p, rev, time.Time{})
	return p, nil
}

func (s *Server) handleCA(w http.ResponseWriter, r *http.Request) {
	if s.cfg.CA == nil {
		s.fail(w, api.Errorf(http.StatusNotImplemented, "this server has no cluster CA (run berth server to join agents)"))
		return
	}
	writeJSON(w, http.StatusOK, api.JoinResponse{CA: string(s.cfg.CA.CertPEM)})
}

// handleJoinToken mints a join token: a token of role join in the system
// tenant that expires.
func (s *Server) handleJoinToken(w http.ResponseWriter, r *http.Request) {
	p, err := s.auth.authenticate(r.Context(), r)
	if err != nil {
		s.fail(w, err)
		return
	}
	if p.Role != api.RoleAdmin {
		s.fail(w, api.Errorf(http.StatusForbidden, "token %s (%s) may not mint join tokens", p.Token, p.Role))
		return
	}
	if s.cfg.CA == nil {
		s.fail(w, api.Errorf(http.StatusNotImplemented, "this server has no cluster CA (run berth server to join agents)"))
		return
	}
	var req api.JoinTokenRequest
	if err := api.Decode(r.Body, api.MaxBodyBytes, &req); err != nil {
		s.fail(w, err)
		return
	}
	ttl := time.Duration(req.TTL)
	if ttl == 0 {
		ttl = time.Hour
	}
	if ttl < 0 || ttl > api.MaxJoinTokenTTL {
		s.fail(w, &api.FieldError{Field: "ttl", Message: fmt.Sprintf("%v is not between 0 and %v", ttl, api.MaxJoinTokenTTL)})
		return
	}
	now := s.cfg.Now().UTC()
	var id [6]byte
	if _, err := s.cfg.Rand.Read(id[:]); err != nil {
		s.fail(w, fmt.Errorf("join token: %w", err))
		return
	}
	name := "join-" + hex.EncodeToString(id[:])
	secret, err := NewSecret(s.cfg.Rand, api.SystemTenant, name)
	if err != nil {
		s.fail(w, err)
		return
	}
	t := &api.Token{Meta: api.Meta{Name: name, Tenant: api.SystemTenant, Created: now}, Role: api.RoleJoin,
		SecretHash: hashSecret(secret), Expires: now.Add(ttl)}
	if err := api.Validate(t); err != nil {
		s.fail(w, err)
		return
	}
	if err := s.st.Create(r.Context(), t); err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, api.JoinTokenResponse{Token: api.FormatJoinToken(pki.Fingerprint(s.cfg.CA.Cert), secret), Expires: t.Expires})
}

// handleJoin signs a joining agent's certificate request: with a join
// token (or an admin's), for any node name not held by a live node.
func (s *Server) handleJoin(w http.ResponseWriter, r *http.Request) {
	p, err := s.auth.authenticate(r.Context(), r)
	if err != nil {
		s.fail(w, err)
		return
	}
	if p.Role != api.RoleJoin && p.Role != api.RoleAdmin {
		s.fail(w, api.Errorf(http.StatusForbidden, "token %s (%s) is not a join token", p.Token, p.Role))
		return
	}
	var req api.JoinRequest
	if err := api.Decode(r.Body, api.MaxBodyBytes, &req); err != nil {
		s.fail(w, err)
		return
	}
	if err := api.ValidName(req.Node); err != nil {
		s.fail(w, &api.FieldError{Field: "node", Message: err.Error()})
		return
	}
	// A join token must not take over a node that is up: that would let
	// anyone holding one impersonate it.
	if p.Role != api.RoleAdmin {
		resp, err := s.st.Client().Get(r.Context(), s.st.AliveKey(req.Node))
		if err != nil {
			s.fail(w, fmt.Errorf("join node %s: %w", req.Node, err))
			return
		}
		if len(resp.Kvs) > 0 {
			s.fail(w, api.Errorf(http.StatusConflict, "node %s is alive; remove it (berth node rm) or stop its agent before joining another under its name", req.Node))
			return
		}
	}
	s.issueNodeCert(w, r, req, false)
}

// handleRenew replaces a node's certificate, authenticated by the current
// one (or an admin).
func (s *Server) handleRenew(w http.ResponseWriter, r *http.Request) {
	_, name, err := s.nodeCaller(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	var req api.JoinRequest
	if err := api.Decode(r.Body, api.MaxBodyBytes, &req); err != nil {
		s.fail(w, err)
		return
	}
	if req.Node != name {
		s.fail(w, &api.FieldError{Field: "node", Message: fmt.Sprintf("%q is not the node of the path, %s", req.Node, name)})
		return
	}
	s.issueNodeCert(w, r, req, true)
}

// issueNodeCert signs req and records the certificate as the node's only
// valid one.
func (s *Server) issueNodeCert(w http.ResponseWriter, r *http.Request, req api.JoinRequest, renew bool) {
	if s.cfg.CA == nil {
		s.fail(w, api.Errorf(http.StatusNotImplemented, "this server has no cluster CA"))
		return
	}
	now := s.cfg.Now().UTC()
	certPEM, err := s.cfg.CA.Sign(s.cfg.Rand, pki.Request{CSR: []byte(req.CSR), Name: req.Node, Org: pki.OrgNode, IPs: req.Addresses, TTL: s.cfg.NodeCertTTL}, now)
	if err != nil {
		s.fail(w, &api.FieldError{Field: "csr", Message: err.Error()})
		return
	}
	cert, err := pki.ParseCert(certPEM)
	if err != nil {
		s.fail(w, err)
		return
	}
	name := certTokenName(req.Node)
	rec, err := s.st.Modify(r.Context(), api.KindToken, api.SystemTenant, name, func(o api.Object) error {
		t := o.(*api.Token)
		if t.Role != api.RoleNode || t.Node != req.Node {
			return api.Errorf(http.StatusConflict, "token %s is not node %s's certificate record", name, req.Node)
		}
		// A renewal keeps the certificate it was made with good; a join
		// (a new agent under this name) revokes every earlier one.
		t.PreviousCertificate = ""
		if renew {
			t.PreviousCertificate = t.Certificate
		}
		t.Certificate = pki.Fingerprint(cert)
		return nil
	})
	if api.IsNotFound(err) {
		t := &api.Token{Meta: api.Meta{Name: name, Tenant: api.SystemTenant, Created: now},
			Role: api.RoleNode, Node: req.Node, Certificate: pki.Fingerprint(cert)}
		rec, err = t, s.st.Create(r.Context(), t)
	}
	if err != nil {
		s.fail(w, fmt.Errorf("record node %s's certificate: %w", req.Node, err))
		return
	}
	// Which certificates are good changed: this server knows at once, not
	// when its token watch hears of it.
	s.auth.changed(api.SystemTenant+"/"+name, rec.GetMeta().ResourceVersion)
	s.cfg.Log.Info("issued node certificate", "node", req.Node, "expires", cert.NotAfter)
	writeJSON(w, http.StatusOK, api.JoinResponse{Certificate: string(certPEM), CA: string(s.cfg.CA.CertPEM)})
}

package control

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// joinCluster is an API server with a cluster CA behind TLS, and a clock
// the test moves.
type joinCluster struct {
	srv   *httptest.Server
	ca    *pki.CA
	admin *api.Client
	mu    sync.Mutex
	now   time.Time
}

func (c *joinCluster) clock() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *joinCluster) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newJoinCluster(t *testing.T) *joinCluster {
	t.Helper()
	prefix := fmt.Sprintf("/test-join-%s-%d-%d", t.Name(), os.Getpid(), prefixSeq.Add(1))
	st := NewStore(etcdClient, prefix)
	ctx := context.Background()
	c := &joinCluster{now: time.Now()}
	if err := Bootstrap(ctx, st, adminSecret, c.now); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(ctx, st, rand.Reader, c.now)
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadCA(ctx, st, rand.Reader, c.now)
	if err != nil || pki.Fingerprint(again.Cert) != pki.Fingerprint(ca.Cert) {
		t.Fatalf("a second server of the cluster loaded another CA (%v)", err)
	}
	c.ca = ca
	h := NewServer(Config{Store: st, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: c.clock, Rand: rand.Reader,
		CA: ca, NodeCertTTL: time.Hour})
	c.srv = httptest.NewUnstartedServer(h)
	// The server's own TLS set-up, not httptest's certificate.
	c.srv.Listener = tls.NewListener(c.srv.Listener, h.TLSConfig([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil))
	c.srv.Start()
	c.srv.URL = strings.Replace(c.srv.URL, "http://", "https://", 1)
	t.Cleanup(func() {
		c.srv.Close()
		h.Close()
		_, _ = etcdClient.Delete(context.Background(), prefix+"/", clientv3.WithPrefix())
	})
	c.admin = api.NewClient(c.srv.URL, adminSecret, c.client(nil))
	return c
}

// client trusts only the cluster CA and shows kp, if any.
func (c *joinCluster) client(kp *tls.Certificate) *http.Client {
	tc := &tls.Config{RootCAs: c.ca.Pool()}
	if kp != nil {
		tc.Certificates = []tls.Certificate{*kp}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
}

// join exchanges a new key's CSR with the given bearer token and returns a
// client acting with the certificate.
func (c *joinCluster) join(t *testing.T, secret, node string) (*api.Client, error) {
	t.Helper()
	key, csr, err := pki.NewKey(rand.Reader, node)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := api.NewClient(c.srv.URL, secret, c.client(nil)).Join(context.Background(), api.JoinRequest{Node: node, CSR: string(csr)})
	if err != nil {
		return nil, err
	}
	return c.certClient(t, resp, key), nil
}

func (c *joinCluster) certClient(t *testing.T, resp api.JoinResponse, key []byte) *api.Client {
	t.Helper()
	if !pki.SameCert([]byte(resp.CA), c.ca.CertPEM) {
		t.Fatal("join answered with another CA")
	}
	kp, err := pki.KeyPair([]byte(resp.Certificate), key)
	if err != nil {
		t.Fatal(err)
	}
	return api.NewClient(c.srv.URL, "", c.client(&kp))
}

func TestJoinIssuesRevocableNodeCertificates(t *testing.T) {
	c := newJoinCluster(t)
	ctx := context.Background()
	jt, err := c.admin.JoinToken(ctx, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	fp, secret, err := api.ParseJoinToken(jt.Token)
	if err != nil {
		t.Fatal(err)
	}
	if fp != pki.Fingerprint(c.ca.Cert) {
		t.Fatalf("join token pins %s, the CA is %s", fp, pki.Fingerprint(c.ca.Cert))
	}
	// A join token does nothing but join.
	jc := api.NewClient(c.srv.URL, secret, c.client(nil))
	if _, err := api.ListOf[*api.Node](ctx, jc, "", ""); api.Code(err) != http.StatusForbidden {
		t.Fatalf("join token listing nodes: %v, want 403", err)
	}
	if _, err := jc.NodeInstances(ctx, "n1"); api.Code(err) != http.StatusForbidden {
		t.Fatalf("join token acting as a node: %v, want 403", err)
	}

	n1, err := c.join(t, secret, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n1.NodeInstances(ctx, "n1"); err != nil {
		t.Fatalf("node n1 with its certificate: %v", err)
	}
	if _, err := n1.NodeInstances(ctx, "n2"); api.Code(err) != http.StatusForbidden {
		t.Fatalf("node n1 acting as n2: %v, want 403", err)
	}
	if _, err := api.ListOf[*api.Tenant](ctx, n1, "", ""); api.Code(err) != http.StatusForbidden {
		t.Fatalf("node n1 listing tenants: %v, want 403", err)
	}

	// A renewal keeps the previous certificate good; the next one drops it.
	renew := func(cl *api.Client) *api.Client {
		key, csr, err := pki.NewKey(rand.Reader, "n1")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cl.RenewCertificate(ctx, api.JoinRequest{Node: "n1", CSR: string(csr)})
		if err != nil {
			t.Fatalf("renew: %v", err)
		}
		return c.certClient(t, resp, key)
	}
	n1b := renew(n1)
	for name, cl := range map[string]*api.Client{"previous": n1, "renewed": n1b} {
		if _, err := cl.NodeInstances(ctx, "n1"); err != nil {
			t.Fatalf("%s certificate after a renewal: %v", name, err)
		}
	}
	n1c := renew(n1b)
	c.advance(cacheTTL + time.Second) // past the principal cache
	if _, err := n1.NodeInstances(ctx, "n1"); api.Code(err) != http.StatusUnauthorized {
		t.Fatalf("certificate two renewals old: %v, want 401", err)
	}
	if _, err := n1c.NodeInstances(ctx, "n1"); err != nil {
		t.Fatalf("current certificate: %v", err)
	}

	// Removing the node revokes its certificates at once.
	if _, err := n1c.Register(ctx, "n1", api.Registration{Spec: api.NodeSpec{Capacity: api.Resources{CPU: 1000, Memory: 1 << 30}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.admin.Delete(ctx, api.KindNode, "", "n1", 0); err != nil {
		t.Fatal(err)
	}
	for name, cl := range map[string]*api.Client{"current": n1c, "previous": n1b} {
		if _, err := cl.NodeInstances(ctx, "n1"); api.Code(err) != http.StatusUnauthorized {
			t.Fatalf("%s certificate of a removed node: %v, want 401", name, err)
		}
	}

	// The join token expires.
	c.advance(10 * time.Minute)
	if _, err := c.join(t, secret, "n2"); api.Code(err) != http.StatusUnauthorized {
		t.Fatalf("join with an expired token: %v, want 401", err)
	}
}

func TestJoinRefusesBadRequests(t *testing.T) {
	c := newJoinCluster(t)
	ctx := context.Background()
	jt, err := c.admin.JoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, secret, err := api.ParseJoinToken(jt.Token)
	if err != nil {
		t.Fatal(err)
	}
	jc := api.NewClient(c.srv.URL, secret, c.client(nil))
	if _, err := jc.Join(ctx, api.JoinRequest{Node: "n1", CSR: "not a csr"}); api.Code(err) != http.StatusBadRequest {
		t.Fatalf("join with a malformed CSR: %v, want 400", err)
	}
	_, csr, _ := pki.NewKey(rand.Reader, "x")
	if _, err := jc.Join(ctx, api.JoinRequest{Node: "Bad_Name", CSR: string(csr)}); api.Code(err) != http.StatusBadRequest {
		t.Fatalf("join with a bad node name: %v, want 400", err)
	}
	if _, err := c.admin.JoinToken(ctx, 30*24*time.Hour); api.Code(err) != http.StatusBadRequest {
		t.Fatalf("join token for 30 days: %v, want 400", err)
	}
	// A live node's name cannot be taken over with a join token.
	n1, err := c.join(t, secret, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n1.Register(ctx, "n1", api.Registration{Spec: api.NodeSpec{Capacity: api.Resources{CPU: 1000, Memory: 1 << 30}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.join(t, secret, "n1"); api.Code(err) != http.StatusConflict {
		t.Fatalf("join as a live node: %v, want 409", err)
	}
	if _, _, err := api.ParseJoinToken("bjt1-1234-secret"); err == nil {
		t.Fatal("a join token without a full fingerprint parsed")
	}
}

package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control/simnode"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// One embedded etcd serves the whole package; each test gets its own key
// prefix, so tests never see each other's objects.
var etcdClient *clientv3.Client

// etcdURL is where that etcd serves clients in other processes.
var etcdURL string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "berth-control-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	e, c, err := StartEtcd(EtcdConfig{Dir: dir, Fast: true, Quiet: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	etcdClient, etcdURL = c, e.Config().ListenClientUrls[0].String()
	code := m.Run()
	c.Close()
	e.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

const adminSecret = "system.root.test-secret"

type cluster struct {
	st    *Store
	api   *Server
	srv   *httptest.Server
	log   *slog.Logger
	url   string
	admin *api.Client
	ctx   context.Context
	runs  *Runs
}

var prefixSeq atomic.Int64

// newCluster starts an API server (and, if lead, the leader loop) on its own
// key prefix.
func newCluster(t *testing.T, lead bool) *cluster {
	t.Helper()
	prefix := fmt.Sprintf("/test-%s-%d-%d", strings.ReplaceAll(t.Name(), "/", "-"), os.Getpid(), prefixSeq.Add(1))
	st := NewStore(etcdClient, prefix)
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if err := Bootstrap(ctx, st, adminSecret, time.Now()); err != nil {
		t.Fatal(err)
	}
	// As in berth up, the leader and the API share a process.
	runs := NewRuns()
	handler := NewServer(Config{Store: st, Log: log, Now: time.Now, Rand: rand.Reader, NodeTTL: 2 * time.Second, Runs: runs})
	srv := httptest.NewServer(handler)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if lead {
			_ = RunLeader(ctx, LoopConfig{Store: st, Log: log, Now: time.Now, Rand: NewRand(2), Batch: 200, Identity: t.Name(), Runs: runs})
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.CloseClientConnections()
		srv.Close()
		handler.Close()
		_, _ = etcdClient.Delete(context.Background(), prefix+"/", clientv3.WithPrefix())
	})
	return &cluster{st: st, api: handler, srv: srv, log: log, url: srv.URL, admin: api.NewClient(srv.URL, adminSecret, nil), ctx: ctx, runs: runs}
}

func (c *cluster) tenant(t *testing.T, name string) {
	t.Helper()
	if err := c.admin.Create(c.ctx, &api.Tenant{Meta: api.Meta{Name: name}}); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) token(t *testing.T, tenant, name string, role api.Role, node string) *api.Client {
	t.Helper()
	tok := &api.Token{Meta: api.Meta{Name: name, Tenant: tenant}, Role: role, Node: node}
	if err := c.admin.Create(c.ctx, tok); err != nil {
		t.Fatal(err)
	}
	if tok.Secret == "" || tok.SecretHash != "" {
		t.Fatalf("token create returned secret %q hash %q", tok.Secret, tok.SecretHash)
	}
	return c.admin.WithToken(tok.Secret)
}

// startNode runs a simulated agent until the returned stop is called.
func (c *cluster) startNode(t *testing.T, name string, labels map[string]string, b simnode.Behavior) (stop func()) {
	t.Helper()
	cl := c.token(t, api.SystemTenant, "node-"+name, api.RoleNode, name)
	ctx, cancel := context.WithCancel(c.ctx)
	n := &simnode.Node{Name: name, Client: cl, Behavior: b, Now: time.Now,
		Reg: api.Registration{Labels: labels, Spec: api.NodeSpec{Capacity: api.Resources{CPU: 4000, Memory: 8 << 30}}}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := n.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("node %s: %v", name, err)
		}
	}()
	eventually(t, "node "+name+" registered", func() error {
		got := &api.Node{}
		if err := c.admin.Get(c.ctx, "", name, got); err != nil {
			return err
		}
		if got.Status.Phase != api.NodeReady {
			return fmt.Errorf("phase %q", got.Status.Phase)
		}
		return nil
	})
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// eventually polls f until it returns nil, failing with its last error.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	var err error
	for i := 0; i < 300; i++ {
		if err = f(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func service(name string, replicas int) *api.Service {
	return &api.Service{Meta: api.Meta{Name: name, Labels: map[string]string{"app": name}},
		Spec: api.ServiceSpec{Replicas: replicas, Template: api.Template{Image: "busybox", Command: []string{"sleep", "1d"},
			Resources: api.Resources{CPU: 100, Memory: 64 << 20}}}}
}

func instancesOf(t *testing.T, c *api.Client, tenant, svc string) []*api.Instance {
	t.Helper()
	l, err := api.ListOf[*api.Instance](context.Background(), c, tenant, "service="+svc)
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func TestTenantSeesOnlyItsOwnObjects(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "alpha")
	c.tenant(t, "beta")
	alpha := c.token(t, "alpha", "ops", api.RoleTenantAdmin, "")
	reader := c.token(t, "alpha", "viewer", api.RoleReadOnly, "")
	ctx := c.ctx
	svc := service("web", 1)
	svc.Tenant = "alpha"
	if err := alpha.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	betaSvc := service("web", 1)
	betaSvc.Tenant = "beta"
	if err := c.admin.Create(ctx, betaSvc); err != nil {
		t.Fatal(err)
	}

	forbidden := func(t *testing.T, err error) {
		t.Helper()
		if api.Code(err) != http.StatusForbidden {
			t.Fatalf("got %v, want 403", err)
		}
	}
	t.Run("other tenant, every verb", func(t *testing.T) {
		other := service("x", 1)
		other.Tenant = "beta"
		forbidden(t, alpha.Create(ctx, other))
		forbidden(t, alpha.Get(ctx, "beta", "web", &api.Service{}))
		_, err := api.ListOf[*api.Service](ctx, alpha, "beta", "")
		forbidden(t, err)
		up := *betaSvc
		forbidden(t, alpha.Update(ctx, &up))
		forbidden(t, alpha.Delete(ctx, api.KindService, "beta", "web", 0))
		w := alpha.Watch(ctx, api.KindService, "beta", "", 0)
		_, err = w.Next()
		forbidden(t, err)
		_, err = alpha.Move(ctx, "beta", "web", "n1")
		forbidden(t, err)
		_, err = api.ListOf[*api.Instance](ctx, alpha, "", "") // all tenants
		forbidden(t, err)
		forbidden(t, alpha.Get(ctx, "", "beta", &api.Tenant{}))
		_, err = api.ListOf[*api.Node](ctx, alpha, "", "")
		forbidden(t, err)
		_, err = alpha.ReportStatus(ctx, "alpha", "web", api.InstanceStatus{Phase: api.PhaseRunning})
		forbidden(t, err)
		forbidden(t, alpha.Create(ctx, &api.Token{Meta: api.Meta{Name: "evil", Tenant: "alpha"}, Role: api.RoleAdmin}))
	})
	t.Run("own tenant, every verb", func(t *testing.T) {
		got := &api.Service{}
		if err := alpha.Get(ctx, "alpha", "web", got); err != nil {
			t.Fatal(err)
		}
		l, err := api.ListOf[*api.Service](ctx, alpha, "alpha", "app=web")
		if err != nil || len(l.Items) != 1 {
			t.Fatalf("list: %v %d", err, len(l.Items))
		}
		w := alpha.Watch(ctx, api.KindService, "alpha", "", l.Revision)
		defer w.Close()
		got.Spec.Replicas = 2
		if err := alpha.Update(ctx, got); err != nil {
			t.Fatal(err)
		}
		ev, err := w.Next()
		if err != nil || ev.Type != api.Modified {
			t.Fatalf("watch: %v %+v", err, ev)
		}
		if err := alpha.Get(ctx, "", "alpha", &api.Tenant{}); err != nil {
			t.Fatal(err)
		}
		if err := alpha.Delete(ctx, api.KindService, "alpha", "web", 0); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("read-only", func(t *testing.T) {
		if _, err := api.ListOf[*api.Service](ctx, reader, "alpha", ""); err != nil {
			t.Fatal(err)
		}
		s := service("ro", 1)
		s.Tenant = "alpha"
		forbidden(t, reader.Create(ctx, s))
		forbidden(t, reader.Delete(ctx, api.KindService, "alpha", "ro", 0))
	})
	t.Run("no or bad token", func(t *testing.T) {
		for _, tok := range []string{"", "garbage", "alpha.ops.wrong-secret"} {
			_, err := api.ListOf[*api.Service](ctx, c.admin.WithToken(tok), "alpha", "")
			if api.Code(err) != http.StatusUnauthorized {
				t.Fatalf("token %q: got %v, want 401", tok, err)
			}
		}
	})
}

func TestBadInputIsRejectedAndNothingStored(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	cases := []struct {
		name, body, field string
		code              int
	}{
		{"unknown field", `{"name":"a","spec":{"replicas":1,"template":{"image":"x"}},"bogus":1}`, "bogus", 400},
		{"negative memory", `{"name":"a","spec":{"replicas":1,"template":{"image":"x","resources":{"memory":-1}}}}`, "spec.template.resources.memory", 400},
		{"negative replicas", `{"name":"a","spec":{"replicas":-3,"template":{"image":"x"}}}`, "spec.replicas", 400},
		{"impossible constraints", `{"name":"a","spec":{"replicas":1,"template":{"image":"x","constraints":[{"key":"zone","op":"==","value":"a"},{"key":"zone","op":"==","value":"b"}]}}}`, "spec.template.constraints[1]", 400},
		{"name not a DNS label", `{"name":"Web_1","spec":{"replicas":1,"template":{"image":"x"}}}`, "name", 400},
		{"malformed JSON", `{"name":"a",`, "", 400},
		{"wrong type", `{"name":"a","spec":{"replicas":"three","template":{"image":"x"}}}`, "spec.replicas", 400},
		{"oversized", `{"name":"a","labels":{"x":"` + strings.Repeat("a", api.MaxBodyBytes) + `"}}`, "", 413},
		{"tenant mismatch", `{"name":"a","tenant":"other","spec":{"replicas":1,"template":{"image":"x"}}}`, "tenant", 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", c.url+"/v1/tenants/t1/services", bytes.NewBufferString(tc.body))
			req.Header.Set("Authorization", "Bearer "+adminSecret)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			e := &api.Error{}
			_ = api.DecodeBytes(must(io.ReadAll(resp.Body)), e)
			if resp.StatusCode != tc.code || e.Field != tc.field || e.Message == "" {
				t.Fatalf("got %d %+v, want %d field %q", resp.StatusCode, e, tc.code, tc.field)
			}
		})
	}
	l, err := api.ListOf[*api.Service](c.ctx, c.admin, "t1", "")
	if err != nil || len(l.Items) != 0 {
		t.Fatalf("stored after bad input: %v %d", err, len(l.Items))
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestConcurrentWritersConflict(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "t1")
	s := service("web", 1)
	s.Tenant = "t1"
	if err := c.admin.Create(c.ctx, s); err != nil {
		t.Fatal(err)
	}
	a, b := *s, *s
	a.Spec.Replicas, b.Spec.Replicas = 2, 3
	if err := c.admin.Update(c.ctx, &a); err != nil {
		t.Fatal(err)
	}
	if err := c.admin.Update(c.ctx, &b); !api.IsConflict(err) {
		t.Fatalf("second writer with a stale version: got %v, want 409", err)
	}
	if err := c.admin.Create(c.ctx, s); !api.IsConflict(err) {
		t.Fatalf("create of an existing name: got %v, want 409", err)
	}
	if err := c.admin.Delete(c.ctx, api.KindService, "t1", "web", s.ResourceVersion); !api.IsConflict(err) {
		t.Fatalf("delete with a stale version: got %v, want 409", err)
	}
	if err := c.admin.Get(c.ctx, "t1", "nope", &api.Service{}); !api.IsNotFound(err) {
		t.Fatalf("get missing: got %v, want 404", err)
	}
}

func TestAddressBlockClaimIsExclusive(t *testing.T) {
	c := newCluster(t, false)
	n1 := c.token(t, api.SystemTenant, "node-n1", api.RoleNode, "n1")
	n2 := c.token(t, api.SystemTenant, "node-n2", api.RoleNode, "n2")
	b := &api.AddressBlock{Meta: api.Meta{Name: "b0"}}
	b.Prefix = mustPrefix("10.1.0.0/26")
	if err := c.admin.Create(c.ctx, b); err != nil {
		t.Fatal(err)
	}
	if got, err := n1.ClaimBlock(c.ctx, "b0", "n1"); err != nil || got.Node != "n1" {
		t.Fatalf("claim: %v %+v", err, got)
	}
	if _, err := n2.ClaimBlock(c.ctx, "b0", "n2"); !api.IsConflict(err) {
		t.Fatalf("second claim: got %v, want 409", err)
	}
	if _, err := n2.ClaimBlock(c.ctx, "b0", "n1"); api.Code(err) != http.StatusForbidden {
		t.Fatalf("claim for another node: got %v, want 403", err)
	}
	if _, err := n2.ReleaseBlock(c.ctx, "b0", "n2"); !api.IsConflict(err) {
		t.Fatalf("release by non-holder: got %v, want 409", err)
	}
	if got, err := n1.ReleaseBlock(c.ctx, "b0", "n1"); err != nil || got.Node != "" {
		t.Fatalf("release: %v %+v", err, got)
	}
	if got, err := n2.ClaimBlock(c.ctx, "b0", "n2"); err != nil || got.Node != "n2" {
		t.Fatalf("claim after release: %v %+v", err, got)
	}
	bad := &api.AddressBlock{Meta: api.Meta{Name: "b1"}, Prefix: mustPrefix("10.1.0.1/26")}
	if err := c.admin.Create(c.ctx, bad); !api.IsInvalid(err) {
		t.Fatalf("block with host bits: got %v, want 400", err)
	}
}

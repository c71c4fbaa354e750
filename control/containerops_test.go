package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control/simnode"
	"github.com/coder/websocket"
)

// agentRecorder stands in for a node agent's operations endpoint on a unix
// socket: what the server forwards is what this test checks (the real
// agent's side is tested in agent/ and end to end in cmd/berth).
type agentRecorder struct {
	got chan *http.Request
}

func (a *agentRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.got <- r.Clone(context.Background())
	switch {
	case strings.HasSuffix(r.URL.Path, "/logs"):
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		enc.Encode(api.LogLine{Stream: "stdout", Log: "one"})
		w.(http.Flusher).Flush()
		enc.Encode(api.LogLine{Stream: "stderr", Log: "two"})
	case strings.HasSuffix(r.URL.Path, "/exec"):
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		// Echo stdin to stdout until stdin closes, then exit 3.
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if typ == websocket.MessageText {
				zero := 3
				m, _ := json.Marshal(api.StreamControl{Exit: &zero})
				c.Write(r.Context(), websocket.MessageText, m)
				c.Close(websocket.StatusNormalClosure, "")
				return
			}
			b[0] = api.ChannelStdout
			c.Write(r.Context(), websocket.MessageBinary, b)
		}
	case strings.HasSuffix(r.URL.Path, "/archive") && r.Method == http.MethodPut:
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Got-Bytes", fmt.Sprint(len(b)))
	default:
		json.NewEncoder(w).Encode(api.Stats{Pids: 7})
	}
}

// nodeWithAgent runs a simulated node n1 whose agent's operations are
// served by h on a unix socket; behavior, if set, says what its instances
// do. Both stop when the test ends.
func (c *cluster) nodeWithAgent(t *testing.T, h http.Handler, behavior func(*api.Instance) api.InstanceStatus) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	nodeClient := c.token(t, api.SystemTenant, "node-n1", api.RoleNode, "n1")
	ctx, cancel := context.WithCancel(c.ctx)
	n := &simnode.Node{Name: "n1", Client: nodeClient, Now: time.Now, Behavior: behavior,
		Reg: api.Registration{Spec: api.NodeSpec{Capacity: api.Resources{CPU: 4000, Memory: 8 << 30}, AgentURL: "unix://" + sock}}}
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestContainerOperationsReachTheAgent(t *testing.T) {
	c := newCluster(t, true)
	c.tenant(t, "acme")
	c.tenant(t, "other")
	rec := &agentRecorder{got: make(chan *http.Request, 16)}
	c.nodeWithAgent(t, rec, nil)

	acme := c.token(t, "acme", "dev", api.RoleTenantAdmin, "")
	viewer := c.token(t, "acme", "viewer", api.RoleReadOnly, "")
	other := c.token(t, "other", "dev", api.RoleTenantAdmin, "")
	in := &api.Instance{Meta: api.Meta{Name: "web", Tenant: "acme"}, Spec: api.InstanceSpec{Template: api.Template{Image: "busybox"}}}
	if err := acme.Create(c.ctx, in); err != nil {
		t.Fatal(err)
	}
	eventually(t, "instance running", func() error {
		got := &api.Instance{}
		if err := acme.Get(c.ctx, "acme", "web", got); err != nil {
			return err
		}
		if got.Status.Phase != api.PhaseRunning {
			return fmt.Errorf("phase %q", got.Status.Phase)
		}
		return nil
	})

	// Logs stream through, in order, with the agent seeing the container's
	// name and the query, and none of the caller's credentials.
	var lines []string
	err := viewer.Logs(c.ctx, "acme", "web", api.LogQuery{Follow: true, Tail: 5}, func(l api.LogLine) error {
		lines = append(lines, l.Stream+":"+l.Log)
		return nil
	})
	if err != nil || strings.Join(lines, ",") != "stdout:one,stderr:two" {
		t.Fatalf("logs = %v, %v", lines, err)
	}
	r := <-rec.got
	if r.URL.Path != "/containers/acme_web/logs" || r.URL.Query().Get("tail") != "5" || r.URL.Query().Get("follow") != "1" {
		t.Errorf("agent got %s", r.URL)
	}
	if r.Header.Get("Authorization") != "" {
		t.Error("the caller's token reached the agent")
	}

	// A websocket exec goes both ways and ends with the exit code.
	s, err := acme.Exec(c.ctx, "acme", "web", api.ExecOptions{Cmd: []string{"cat"}, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	code, err := s.Run(c.ctx, api.StreamIO{Stdin: strings.NewReader("hello"), Stdout: &out})
	if err != nil || code != 3 || out.String() != "hello" {
		t.Errorf("exec: code %d, out %q, %v", code, out.String(), err)
	}
	if r := <-rec.got; r.URL.Path != "/containers/acme_web/exec" || r.URL.Query()["cmd"][0] != "cat" {
		t.Errorf("agent got %s", r.URL)
	}

	// A browser's handshake: the token as a subprotocol, berth.v1 chosen.
	browser := &api.Token{Meta: api.Meta{Name: "browser", Tenant: "acme"}, Role: api.RoleTenantAdmin}
	if err := c.admin.Create(c.ctx, browser); err != nil {
		t.Fatal(err)
	}
	tok := browser.Secret
	conn, resp, err := websocket.Dial(c.ctx, strings.Replace(c.url, "http", "ws", 1)+api.OpPath("acme", "web", api.OpExec)+"?cmd=sh",
		&websocket.DialOptions{Subprotocols: []string{WebsocketProtocol, "bearer." + tok}})
	if err != nil {
		t.Fatalf("browser-style exec: %v (%v)", err, resp)
	}
	if conn.Subprotocol() != WebsocketProtocol {
		t.Errorf("subprotocol %q", conn.Subprotocol())
	}
	conn.CloseNow()
	if r := <-rec.got; strings.Contains(r.Header.Get("Sec-WebSocket-Protocol"), "bearer") {
		t.Error("the token offered as a subprotocol reached the agent")
	}

	if st, err := viewer.Stats(c.ctx, "acme", "web"); err != nil || st.Pids != 7 {
		t.Errorf("stats = %+v, %v", st, err)
	}
	<-rec.got

	// Who may do what.
	if _, err := viewer.Exec(c.ctx, "acme", "web", api.ExecOptions{Cmd: []string{"sh"}}); api.Code(err) != http.StatusForbidden {
		t.Errorf("read-only exec: %v", err)
	}
	if err := viewer.Kill(c.ctx, "acme", "web", "TERM"); api.Code(err) != http.StatusForbidden {
		t.Errorf("read-only kill: %v", err)
	}
	if _, err := other.Stats(c.ctx, "acme", "web"); api.Code(err) != http.StatusForbidden {
		t.Errorf("another tenant's stats: %v", err)
	}
	if _, err := acme.Stats(c.ctx, "acme", "nope"); api.Code(err) != http.StatusNotFound {
		t.Errorf("unknown instance: %v", err)
	}
	select {
	case r := <-rec.got:
		t.Errorf("a refused request reached the agent: %s", r.URL)
	default:
	}

	// An upload larger than ordinary request bodies goes through whole.
	big := bytes.Repeat([]byte("x"), 3<<20)
	if err := acme.CopyTo(c.ctx, "acme", "web", "/tmp", bytes.NewReader(big)); err != nil {
		t.Errorf("copy in: %v", err)
	}
	<-rec.got
}

func TestBindMountsNeedAdmin(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "acme")
	acme := c.token(t, "acme", "dev", api.RoleTenantAdmin, "")
	bind := api.Template{Image: "busybox", Mounts: []api.Mount{{Type: api.MountBind, Source: "/etc", Target: "/host-etc"}}}
	in := &api.Instance{Meta: api.Meta{Name: "peek", Tenant: "acme"}, Spec: api.InstanceSpec{Template: bind}}
	if err := acme.Create(c.ctx, in); api.Code(err) != http.StatusForbidden {
		t.Errorf("tenant bind mount: %v", err)
	}
	svc := &api.Service{Meta: api.Meta{Name: "peek", Tenant: "acme"}, Spec: api.ServiceSpec{Replicas: 1, Template: bind}}
	if err := acme.Create(c.ctx, svc); api.Code(err) != http.StatusForbidden {
		t.Errorf("tenant service bind mount: %v", err)
	}
	vol := api.Template{Image: "busybox", Mounts: []api.Mount{{Type: api.MountVolume, Source: "data", Target: "/data"}}}
	in = &api.Instance{Meta: api.Meta{Name: "ok", Tenant: "acme"}, Spec: api.InstanceSpec{Template: vol}}
	if err := acme.Create(c.ctx, in); err != nil {
		t.Errorf("tenant volume: %v", err)
	}
	in = &api.Instance{Meta: api.Meta{Name: "admin-bind", Tenant: "acme"}, Spec: api.InstanceSpec{Template: bind}}
	if err := c.admin.Create(c.ctx, in); err != nil {
		t.Errorf("admin bind mount: %v", err)
	}
}

// An instance run with --rm is deleted once it has exited, after its exit
// code was visible to a watcher.
func TestAutoRemove(t *testing.T) {
	c := newCluster(t, true)
	c.tenant(t, "acme")
	stop := c.startNode(t, "n1", nil, func(in *api.Instance) api.InstanceStatus {
		now := time.Now()
		return api.InstanceStatus{Phase: api.PhaseExited, ExitCode: 4, StartedAt: now, FinishedAt: now}
	})
	defer stop()
	in := &api.Instance{Meta: api.Meta{Name: "once", Tenant: "acme"},
		Spec: api.InstanceSpec{AutoRemove: true, Template: api.Template{Image: "busybox", Restart: api.RestartAlways}}}
	if err := c.admin.Create(c.ctx, in); api.Code(err) != http.StatusBadRequest {
		t.Errorf("auto-remove with restart always: %v", err)
	}
	in.Spec.Template.Restart = api.RestartNever
	if err := c.admin.Create(c.ctx, in); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(c.ctx, 20*time.Second)
	defer cancel()
	w := c.admin.Watch(ctx, api.KindInstance, "acme", "", in.ResourceVersion)
	defer w.Close()
	exit := -1
	for {
		ev, err := w.Next()
		if err != nil {
			t.Fatal(err)
		}
		got := &api.Instance{}
		if err := ev.Into(got); err != nil {
			t.Fatal(err)
		}
		if ev.Type == api.Deleted {
			break
		}
		if got.Status.Phase == api.PhaseExited {
			exit = got.Status.ExitCode
		}
	}
	if exit != 4 {
		t.Errorf("exit code seen before removal: %d", exit)
	}
}

// Deleting a token, or the node a token acts as, takes the credential
// away at once, not when the authenticator's cache lets go of it.
func TestRevocationIsImmediate(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "acme")
	dev := c.token(t, "acme", "dev", api.RoleTenantAdmin, "")
	if _, err := api.ListOf[*api.Instance](c.ctx, dev, "acme", ""); err != nil {
		t.Fatal(err)
	}
	if err := c.admin.Delete(c.ctx, api.KindToken, "acme", "dev", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := api.ListOf[*api.Instance](c.ctx, dev, "acme", ""); api.Code(err) != http.StatusUnauthorized {
		t.Errorf("deleted token: %v", err)
	}

	node := c.token(t, api.SystemTenant, "node-n1", api.RoleNode, "n1")
	reg := api.Registration{Spec: api.NodeSpec{Capacity: api.Resources{CPU: 1000, Memory: 1 << 30}}}
	lease, err := node.Register(c.ctx, "n1", reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.Heartbeat(c.ctx, "n1", lease); err != nil {
		t.Fatal(err)
	}
	if err := c.admin.Delete(c.ctx, api.KindNode, "", "n1", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Heartbeat(c.ctx, "n1", lease); api.Code(err) != http.StatusUnauthorized {
		t.Errorf("heartbeat of a removed node: %v", err)
	}
	if _, err := node.Register(c.ctx, "n1", reg); api.Code(err) != http.StatusUnauthorized {
		t.Errorf("a removed node registering again: %v", err)
	}
}

// A token deleted through another server (here: straight in etcd) stops
// working here as soon as the token watch hears of it, not when a cache
// entry expires.
func TestATokenDeletedElsewhereStopsWorking(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "acme")
	dev := c.token(t, "acme", "dev", api.RoleTenantAdmin, "")
	if _, err := api.ListOf[*api.Instance](c.ctx, dev, "acme", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.st.Client().Delete(c.ctx, c.st.Key(api.KindToken, "acme", "dev")); err != nil {
		t.Fatal(err)
	}
	// Well inside cacheTTL: only the watch can have dropped the entry.
	for deadline := time.Now().Add(cacheTTL / 2); ; time.Sleep(10 * time.Millisecond) {
		_, err := api.ListOf[*api.Instance](c.ctx, dev, "acme", "")
		if api.Code(err) == http.StatusUnauthorized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token deleted in the store still works: %v", err)
		}
	}
}

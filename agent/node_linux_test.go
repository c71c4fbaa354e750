package agent

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control"
)

// controlPlane is an embedded etcd, the API server and the leader loop,
// all in this process, as `berth up` runs them.
type controlPlane struct {
	admin *api.Client
	url   string
}

const testAdminSecret = "system.root.node-test-secret"

func startControlPlane(t *testing.T, dir string) *controlPlane {
	t.Helper()
	e, cli, err := control.StartEtcd(control.EtcdConfig{Dir: filepath.Join(dir, "etcd"), Fast: true, Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); e.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	st := control.NewStore(cli, "/berth")
	ctx, cancel := context.WithCancel(context.Background())
	if err := control.Bootstrap(ctx, st, testAdminSecret, time.Now()); err != nil {
		cancel()
		t.Fatal(err)
	}
	handler := control.NewServer(control.Config{Store: st, Log: log, Now: time.Now, Rand: rand.Reader, NodeTTL: 3 * time.Second})
	srv := httptest.NewServer(handler)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = control.RunLeader(ctx, control.LoopConfig{Store: st, Log: log, Now: time.Now, Rand: rand.Reader, Batch: 100, Identity: t.Name()})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.CloseClientConnections()
		srv.Close()
		handler.Close()
	})
	return &controlPlane{admin: api.NewClient(srv.URL, testAdminSecret, nil), url: srv.URL}
}

// runNode serves a node loop on a until the returned stop is called.
func runNode(t *testing.T, cl *api.Client, name string, a *Agent) (stop func()) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	n, err := NewNode(NodeConfig{Name: name, Client: cl, Agent: a, Log: log, Poll: 100 * time.Millisecond,
		Reg: api.Registration{Spec: api.NodeSpec{Capacity: api.Resources{CPU: 4000, Memory: 4 << 30}}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node loop: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(25 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// running checks that the service has want instances, each reported
// running on the node, with the state the agent really has, and returns
// them with their containers, by instance name.
func running(ctx context.Context, cp *controlPlane, a *Agent, tenant string, want int) (map[string]*api.Instance, map[string]Container, error) {
	list, err := api.ListOf[*api.Instance](ctx, cp.admin, tenant, "")
	if err != nil {
		return nil, nil, err
	}
	if len(list.Items) != want {
		return nil, nil, fmt.Errorf("%d instances, want %d", len(list.Items), want)
	}
	ins, cs := map[string]*api.Instance{}, map[string]Container{}
	for _, in := range list.Items {
		c, err := a.Inspect(api.ContainerName(in.Tenant, in.Name))
		if err != nil {
			return nil, nil, err
		}
		if c.State.Status != StatusRunning || in.Status.Phase != api.PhaseRunning {
			return nil, nil, fmt.Errorf("instance %s: phase %q (%s), container %s", in.Name, in.Status.Phase, in.Status.Reason, c.State.Status)
		}
		if !in.Status.StartedAt.Equal(c.State.StartedAt) || in.Status.Restarts != in.Spec.RestartGeneration {
			return nil, nil, fmt.Errorf("instance %s: reported start %v restarts %d, container started %v, generation %d",
				in.Name, in.Status.StartedAt, in.Status.Restarts, c.State.StartedAt, in.Spec.RestartGeneration)
		}
		ins[in.Name], cs[in.Name] = in, c
	}
	if n := len(a.List()); n != want {
		return nil, nil, fmt.Errorf("agent has %d containers, want %d", n, want)
	}
	return ins, cs, nil
}

// A service placed on a real node runs as real containers: both replicas
// are reported running, a killed one is reported and started again, a
// restarted node loop adopts what runs without touching it, and scaling to
// zero removes the containers.
func TestNodeRunsAServiceThroughTheControlPlane(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	cp := startControlPlane(t, e.dir)
	newAgent := func() *Agent {
		a, err := New(ctx, Config{Root: filepath.Join(e.dir, "agent"), Images: e.images, Runtime: e.rt, InitPath: e.init})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := newAgent()
	t.Cleanup(func() {
		// After the node loop has stopped (cleanups run last first).
		for _, c := range a.List() {
			if err := a.Remove(context.Background(), c.ID, true); err != nil {
				t.Errorf("remove %s: %v", c.ID, err)
			}
		}
		a.Close()
		removeCgroupParent(a.cgroups)
	})
	node := fmt.Sprintf("node-%d", os.Getpid())
	tok := &api.Token{Meta: api.Meta{Name: node, Tenant: api.SystemTenant}, Role: api.RoleNode, Node: node}
	if err := cp.admin.Create(ctx, tok); err != nil {
		t.Fatal(err)
	}
	nodeClient := cp.admin.WithToken(tok.Secret)
	stop := runNode(t, nodeClient, node, a)

	if err := cp.admin.Create(ctx, &api.Tenant{Meta: api.Meta{Name: "shop"}}); err != nil {
		t.Fatal(err)
	}
	svc := &api.Service{Meta: api.Meta{Name: "web", Tenant: "shop"}, Spec: api.ServiceSpec{Replicas: 2, Template: api.Template{
		Image: "busybox", Command: []string{"sleep", "1000"}, Env: map[string]string{"COLOR": "blue"},
		Resources: api.Resources{CPU: 100, Memory: 64 << 20}, Restart: api.RestartAlways}}}
	if err := cp.admin.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	var cs map[string]Container
	eventually(t, "2 instances running", func() (err error) {
		_, cs, err = running(ctx, cp, a, "shop", 2)
		return err
	})
	names := make([]string, 0, len(cs))
	for name, c := range cs {
		names = append(names, name)
		if c.Spec.Tenant != "shop" || c.Spec.Memory != 64<<20 || c.Spec.CPUs != 0.1 || c.Spec.Labels[LabelNode] != node {
			t.Errorf("container of %s: spec %+v", name, c.Spec)
		}
		if !slices.Equal(c.Spec.Env, []string{"COLOR=blue"}) || !slices.Equal(c.Spec.Cmd, []string{"sleep", "1000"}) {
			t.Errorf("container of %s: env %q cmd %q", name, c.Spec.Env, c.Spec.Cmd)
		}
	}
	sort.Strings(names)

	// Kill the workload from outside: the exit is reported, the health
	// manager asks for a restart, and the node starts the container again.
	victim := names[0]
	before, err := api.ListOf[*api.Instance](ctx, cp.admin, "shop", "")
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	w := cp.admin.Watch(wctx, api.KindInstance, "shop", "", before.Revision)
	defer w.Close()
	if err := syscall.Kill(cs[victim].State.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, "killed instance running again", func() (err error) {
		ins, cs2, err := running(ctx, cp, a, "shop", 2)
		if err != nil {
			return err
		}
		if ins[victim].Status.Restarts < 1 || cs2[victim].State.Pid == cs[victim].State.Pid {
			return fmt.Errorf("restarts %d, pid %d", ins[victim].Status.Restarts, cs2[victim].State.Pid)
		}
		if ins[names[1]].Status.Restarts != 0 || cs2[names[1]].State.Pid != cs[names[1]].State.Pid {
			return fmt.Errorf("the other instance was touched")
		}
		cs = cs2
		return nil
	})

	// The exit was reported before the restart was asked for.
	for {
		ev, err := w.Next()
		if err != nil {
			t.Fatalf("no exit of %s reported: %v", victim, err)
		}
		in := &api.Instance{}
		if err := ev.Into(in); err != nil {
			t.Fatal(err)
		}
		if in.Name != victim {
			continue
		}
		if in.Spec.RestartGeneration > 0 {
			t.Fatalf("restart asked before an exit was reported: %+v", in.Status)
		}
		if in.Status.Phase == api.PhaseExited {
			if in.Status.ExitCode != 137 || in.Status.FinishedAt.IsZero() {
				t.Errorf("exit reported as %+v, want code 137 (SIGKILL)", in.Status)
			}
			break
		}
	}

	// Stop the node loop and the agent, then start both again: the same
	// containers are adopted, nothing restarted.
	var ins map[string]*api.Instance
	stop()
	a.Close()
	a = newAgent()
	runNode(t, nodeClient, node, a)
	eventually(t, "instances adopted after restart", func() (err error) {
		var cs2 map[string]Container
		ins, cs2, err = running(ctx, cp, a, "shop", 2)
		if err != nil {
			return err
		}
		for _, name := range names {
			if cs2[name].ID != cs[name].ID || cs2[name].State.Pid != cs[name].State.Pid {
				return fmt.Errorf("instance %s: container %s pid %d, was %s pid %d", name, cs2[name].ID, cs2[name].State.Pid, cs[name].ID, cs[name].State.Pid)
			}
		}
		return nil
	})
	// In the steady state nothing is restarted and nothing is reported
	// again (a report is a write).
	time.Sleep(time.Second)
	ins2, cs2, err := running(ctx, cp, a, "shop", 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if cs2[name].State.Pid != cs[name].State.Pid {
			t.Fatalf("instance %s restarted after adoption", name)
		}
		if ins2[name].ResourceVersion != ins[name].ResourceVersion {
			t.Errorf("instance %s written again in the steady state: %+v", name, ins2[name].Status)
		}
	}

	// Scale to zero: the containers go.
	if err := cp.admin.Get(ctx, "shop", "web", svc); err != nil {
		t.Fatal(err)
	}
	svc.Spec.Replicas = 0
	if err := cp.admin.Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	eventually(t, "containers removed", func() error {
		if n := len(a.List()); n != 0 {
			return fmt.Errorf("%d containers left", n)
		}
		list, err := api.ListOf[*api.Instance](ctx, cp.admin, "shop", "")
		if err != nil {
			return err
		}
		if len(list.Items) != 0 {
			return fmt.Errorf("%d instances left", len(list.Items))
		}
		return nil
	})
	// The agent learns of an exit from the init's pidfd, which may be just
	// before the runtime reaps it: a zombie for a moment.
	for _, name := range names {
		pid := cs[name].State.Pid
		eventually(t, "instance "+name+" gone", func() error {
			if err := syscall.Kill(pid, 0); err == nil {
				return fmt.Errorf("process %d still alive", pid)
			}
			return nil
		})
	}

	// Deleted and at once made anew under the same name (docker rm -f;
	// docker run --name): the old container goes first, the new runs.
	solo := func(cmd ...string) *api.Instance {
		return &api.Instance{Meta: api.Meta{Name: "solo", Tenant: "shop"}, Spec: api.InstanceSpec{Template: api.Template{
			Image: "busybox", Command: cmd, Resources: api.Resources{CPU: 100, Memory: 64 << 20}}}}
	}
	if err := cp.admin.Create(ctx, solo("sleep", "1000")); err != nil {
		t.Fatal(err)
	}
	var first Container
	eventually(t, "solo running", func() error {
		_, cs, err := running(ctx, cp, a, "shop", 1)
		first = cs["solo"]
		return err
	})
	if err := cp.admin.Delete(ctx, api.KindInstance, "shop", "solo", 0); err != nil {
		t.Fatal(err)
	}
	// The same template: only the instance is new.
	if err := cp.admin.Create(ctx, solo("sleep", "1000")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new solo running in a new container", func() error {
		_, cs, err := running(ctx, cp, a, "shop", 1)
		if err != nil {
			return err
		}
		if c := cs["solo"]; c.ID == first.ID {
			return fmt.Errorf("the new instance runs in the deleted one's container %s", c.ID)
		}
		return nil
	})
}

package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/internal/fleettest"
)

// A fleet of three hosts joined over mTLS: a service spread across them,
// reachable across hosts by container IP; a host cut off from the fabric
// has its instances replaced within seconds and, once back, stops the old
// copies only after the replacements serve; a drain keeps the service's
// capacity; a removed node's certificate stops working at once; agents'
// certificates rotate.
func TestFleet(t *testing.T) {
	f := fleettest.New(t, fleettest.Config{Nodes: 3, CertTTL: 30 * time.Second})
	ctx := ctxE2E(t)

	// Every node joined with a certificate and serves container
	// operations over mTLS at its fabric address.
	first := map[string][]byte{}
	for name, n := range f.Nodes() {
		if !strings.HasPrefix(n.Spec.AgentURL, "https://"+fleettest.FabricNet) || !n.Spec.Address.IsValid() {
			t.Fatalf("node %s registered agent URL %q, address %v", name, n.Spec.AgentURL, n.Spec.Address)
		}
		b, err := os.ReadFile(filepath.Join(f.Host(name).Data, "pki", "node.pem"))
		if err != nil {
			t.Fatal(err)
		}
		first[name] = b
	}

	health := &api.HealthCheck{HTTPPath: "/", Port: 8080, Interval: api.Duration(300 * time.Millisecond), Retries: 1}
	svc := &api.Service{Meta: api.Meta{Name: "web", Tenant: api.DefaultTenant}, Spec: api.ServiceSpec{Replicas: 3,
		Template: api.Template{Image: "web", Health: health, Resources: api.Resources{CPU: 100, Memory: 64 << 20}}}}
	if err := f.Admin.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	var web map[string]*api.Instance
	poll(t, "3 web instances serving", 90*time.Second, func() (err error) {
		web, err = f.Serving("web", 3)
		return err
	})
	byNode := map[string]*api.Instance{}
	for _, in := range web {
		byNode[in.Spec.Node] = in
	}
	if len(byNode) != 3 {
		t.Fatalf("instances not spread over the 3 nodes: %v", byNode)
	}

	// Across hosts, container to container by IP: a client on n1 reaches
	// the instances on n2 and n3 (berth exec goes through the control
	// plane to n1's agent over mTLS).
	if out, err := f.CLI("run", "-d", "--name", "client", "--node", "n1", "busybox", "sleep", "1000000"); err != nil {
		t.Fatalf("run client: %v: %s", err, out)
	}
	for _, node := range []string{"n2", "n3"} {
		to := byNode[node]
		var out string
		poll(t, "a container on n1 to reach "+node+"'s web instance by IP", 30*time.Second, func() (err error) {
			out, err = f.CLI("exec", "client", "wget", "-q", "-O", "-", "http://"+netip.AddrPortFrom(to.Status.IP, 8080).String()+"/")
			if err == nil && strings.TrimSpace(out) == "" {
				err = fmt.Errorf("empty answer")
			}
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		cs, _ := f.Host(node).Containers()
		if want := cs[to.Name].ID[:12]; strings.TrimSpace(out) != want {
			t.Fatalf("%s's instance answered %q across hosts, want its host name %s", node, out, want)
		}
	}

	// Restarting an agent (an upgrade, a crash) stops nothing: it comes
	// back on its certificate, without the join token, and adopts its
	// containers.
	n1 := f.Host("n1")
	before, err := n1.Containers()
	if err != nil {
		t.Fatal(err)
	}
	f.KillAgent(n1)
	f.StartAgent(n1, false)
	f.WaitNodes(3)
	fleettest.Poll(t, "n1's agent to report its instances again", 30*time.Second, func() error {
		_, err := f.Serving("web", 3)
		return err
	})
	after, err := n1.Containers()
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range before {
		if a := after[name]; a.ID != c.ID || a.State.Pid != c.State.Pid || a.State.Status != agent.StatusRunning {
			t.Fatalf("after n1's agent restarted, %s is %s pid %d (%s), was %s pid %d", name, a.ID, a.State.Pid, a.State.Status, c.ID, c.State.Pid)
		}
	}

	// Cut n3 off the fabric: its instance is replaced elsewhere, running
	// and answering, within seconds.
	lost := byNode["n3"]
	n3 := f.Host("n3")
	f.Hub.Run(t, "ip", "link", "set", n3.Port, "down")
	cut := time.Now()
	poll(t, "n3's instance replaced on another node", 60*time.Second, func() (err error) {
		_, err = f.Serving("web", 3, "n3")
		return err
	})
	t.Logf("host cut off -> replacement running and answering by its IP: %v (lease 3 s)", time.Since(cut).Round(10*time.Millisecond))
	// While cut off, n3 keeps its copy running: a partition is no reason
	// to stop serving.
	if cs, _ := n3.Containers(); cs[lost.Name].State.Status != agent.StatusRunning {
		t.Fatalf("n3 stopped %s while cut off: %+v", lost.Name, cs[lost.Name].State)
	}

	// n3 comes back: it rejoins and stops its old copy, the replacement
	// serving already, after the grace period.
	f.Hub.Run(t, "ip", "link", "set", n3.Port, "up")
	poll(t, "n3 to stop its replaced copy of "+lost.Name, 60*time.Second, func() error {
		cs, err := n3.Containers()
		if err != nil {
			return err
		}
		if c, ok := cs[lost.Name]; ok {
			return fmt.Errorf("still has %s (%s)", c.ID[:12], c.State.Status)
		}
		return nil
	})
	f.WaitNodes(3)
	if _, err := f.Serving("web", 3); err != nil {
		t.Fatalf("after n3's return: %v", err)
	}

	// Drain the node with the most instances: its instances' replacements
	// start elsewhere and serve before the old ones stop, so at every
	// moment at least 3 instances answer by their IPs.
	drained := "n1"
	counts := map[string]int{}
	for _, in := range f.Instances("web") {
		counts[in.Spec.Node]++
	}
	for n, c := range counts {
		if c > counts[drained] {
			drained = n
		}
	}
	dh := f.Host(drained)
	if out, err := f.CLI("node", "drain", drained); err != nil {
		t.Fatalf("node drain: %v: %s", err, out)
	}
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for {
		answering := 0
		var seen []string
		for _, in := range f.Instances("web") {
			st := in.Status
			if st.Phase != api.PhaseRunning || !st.IP.IsValid() || st.ObservedNode != in.Spec.Node {
				continue
			}
			if _, err := f.Host(in.Spec.Node).Answer(st.IP); err == nil {
				answering++
				seen = append(seen, in.Name+"@"+in.Spec.Node)
			}
		}
		if answering < 3 {
			t.Fatalf("during the drain of %s only %d instances answer: %v", drained, answering, seen)
		}
		cs, err := dh.Containers()
		if err != nil {
			t.Fatal(err)
		}
		if n := f.Nodes()[drained]; n.Status.Phase == api.NodeDrained && len(cs) == 0 {
			if _, err := f.Serving("web", 3, drained); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not drained after 60 s: %d containers left", drained, len(cs))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("drain of %s (%d instances), never fewer than 3 answering: %v", drained, counts[drained], time.Since(start).Round(10*time.Millisecond))

	// berth move: the instance keeps its name on the new node; the old
	// node stops its copy once the new one runs.
	client := &api.Instance{}
	if err := f.Admin.Get(ctx, api.DefaultTenant, "client", client); err != nil {
		t.Fatal(err)
	}
	target := ""
	for _, h := range f.Hosts {
		if h.Name != drained && h.Name != client.Spec.Node {
			target = h.Name
		}
	}
	from := f.Host(client.Spec.Node)
	if out, err := f.CLI("move", "client", "--to", target); err != nil {
		t.Fatalf("move: %v: %s", err, out)
	}
	fleettest.Poll(t, "client to run on "+target+" and leave "+from.Name, 60*time.Second, func() error {
		if err := f.Admin.Get(ctx, api.DefaultTenant, "client", client); err != nil {
			return err
		}
		if client.Spec.Node != target || client.Status.ObservedNode != target || client.Status.Phase != api.PhaseRunning {
			return fmt.Errorf("on %q (observed %q): %s", client.Spec.Node, client.Status.ObservedNode, client.Status.Phase)
		}
		if cs, _ := from.Containers(); cs["client"].ID != "" {
			return fmt.Errorf("%s still runs its copy", from.Name)
		}
		return nil
	})

	// A stateful container moves with its named volume copied.
	src := client.Spec.Node
	if out, err := f.CLI("run", "-d", "--name", "keeper", "--node", src, "-v", "state:/data", "busybox",
		"sh", "-c", "echo kept > /data/f; mkdir -p /data/d; echo deep > /data/d/g; sleep 1000000"); err != nil {
		t.Fatalf("run keeper: %v: %s", err, out)
	}
	fleettest.Poll(t, "keeper to write its volume", 30*time.Second, func() error {
		out, err := f.CLI("exec", "keeper", "cat", "/data/d/g")
		if err != nil || strings.TrimSpace(out) != "deep" {
			return fmt.Errorf("%v: %q", err, out)
		}
		return nil
	})
	dst := ""
	for _, h := range f.Hosts {
		if h.Name != drained && h.Name != src {
			dst = h.Name
		}
	}
	if out, err := f.CLI("move", "keeper", "--to", dst, "--copy-volumes"); err != nil {
		t.Fatalf("move --copy-volumes: %v: %s", err, out)
	}
	keeper := &api.Instance{}
	if err := f.Admin.Get(ctx, api.DefaultTenant, "keeper", keeper); err != nil {
		t.Fatal(err)
	}
	if keeper.Status.ObservedNode != dst || keeper.Status.Phase != api.PhaseRunning {
		t.Fatalf("keeper after the move: on %q, %s", keeper.Status.ObservedNode, keeper.Status.Phase)
	}
	if out, err := f.CLI("exec", "keeper", "cat", "/data/f", "/data/d/g"); err != nil || strings.Join(strings.Fields(out), " ") != "kept deep" {
		t.Fatalf("keeper's volume on %s: %v: %q", dst, err, out)
	}

	// Certificates rotate (30 s life, renewed 20 s in) and the nodes stay
	// ready on the new ones.
	poll(t, "every node's certificate renewed", 60*time.Second, func() error {
		for name, b := range first {
			now, err := os.ReadFile(filepath.Join(f.Host(name).Data, "pki", "node.pem"))
			if err != nil {
				return err
			}
			if bytes.Equal(now, b) {
				return fmt.Errorf("node %s still has its first certificate", name)
			}
		}
		return nil
	})
	f.WaitNodes(3)

	// Restarting the control plane stops no container and moves none,
	// even when it is down longer than the nodes' leases: the agents
	// carry on through it and register again with the new one.
	beforeRestart := map[string]string{}
	for _, h := range f.Hosts {
		cs, err := h.Containers()
		if err != nil {
			t.Fatal(err)
		}
		for name, c := range cs {
			beforeRestart[name] = c.ID
		}
	}
	f.RestartServer(4 * time.Second)
	f.WaitNodes(3)
	fleettest.Poll(t, "the service serving through the restarted control plane", 60*time.Second, func() error {
		_, err := f.Serving("web", 3, drained)
		return err
	})
	for _, h := range f.Hosts {
		cs, err := h.Containers()
		if err != nil {
			t.Fatal(err)
		}
		for name, c := range cs {
			if id, ok := beforeRestart[name]; ok && (id != c.ID || c.State.Status != agent.StatusRunning) {
				t.Fatalf("%s on %s after the control plane restarted: %s %s, was %s", name, h.Name, c.ID, c.State.Status, id)
			}
			delete(beforeRestart, name)
		}
	}
	if len(beforeRestart) > 0 {
		t.Fatalf("gone after the control plane restarted: %v", beforeRestart)
	}

	// Removing a node revokes its certificate at once.
	victim := f.Host(drained)
	nc, err := f.NodeClient(victim)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.NodeInstances(ctx, victim.Name); err != nil {
		t.Fatalf("node %s's own certificate: %v", victim.Name, err)
	}
	if out, err := f.CLI("node", "rm", victim.Name); err != nil {
		t.Fatalf("node rm: %v: %s", err, out)
	}
	if _, err := nc.NodeInstances(ctx, victim.Name); api.Code(err) != http.StatusUnauthorized {
		t.Fatalf("node %s's certificate after node rm: %v, want 401", victim.Name, err)
	}
}

// Three servers over a three-member etcd and two nodes whose agents know
// all three: killing the server whose scheduler leads, and which the
// agents use, stops no container; the agents move to another server, the
// nodes stay ready, and the scheduler, handed over, places again.
func TestFleetHA(t *testing.T) {
	f := fleettest.New(t, fleettest.Config{Nodes: 2, Servers: 3})
	ctx := ctxE2E(t)
	health := &api.HealthCheck{HTTPPath: "/", Port: 8080, Interval: api.Duration(300 * time.Millisecond), Retries: 1}
	svc := &api.Service{Meta: api.Meta{Name: "web", Tenant: api.DefaultTenant}, Spec: api.ServiceSpec{Replicas: 2,
		Template: api.Template{Image: "web", Health: health}}}
	if err := f.Admin.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	fleettest.Poll(t, "2 web instances serving", 90*time.Second, func() error { _, err := f.Serving("web", 2); return err })
	before := map[string]string{}
	for _, h := range f.Hosts {
		cs, err := h.Containers()
		if err != nil {
			t.Fatal(err)
		}
		for name, c := range cs {
			before[h.Name+"/"+name] = c.ID
		}
	}

	// Kill the server whose scheduler leads (and, through it, an etcd
	// member), talking to another meanwhile.
	var lead int
	fleettest.Poll(t, "a scheduler leader", 30*time.Second, func() error {
		cl, err := f.Admin.Cluster(ctx)
		if err != nil {
			return err
		}
		if len(cl.Etcd) != 3 {
			return fmt.Errorf("etcd members %v", cl.Etcd)
		}
		for i := range 3 {
			if strings.HasSuffix(cl.Leader, fmt.Sprintf("-%d", f.ServerPid(i))) {
				lead = i
				return nil
			}
		}
		return fmt.Errorf("leader %q is none of the servers", cl.Leader)
	})
	// The agents restart preferring the leader's server, so that its
	// death takes their server from them too.
	f.PreferServer(lead)
	for _, h := range f.Hosts {
		f.KillAgent(h)
		f.StartAgent(h, false)
	}
	f.WaitNodes(2)
	fleettest.Poll(t, "2 web instances serving after the agents restarted", 30*time.Second, func() error { _, err := f.Serving("web", 2); return err })
	f.UseServer((lead + 1) % 3)
	f.KillServer(lead)
	killed := time.Now()
	if err := f.Admin.Get(ctx, api.DefaultTenant, "web", svc); err != nil {
		t.Fatal(err)
	}
	svc.Spec.Replicas = 3
	fleettest.Poll(t, "the service scaled through the surviving servers", 30*time.Second, func() error {
		if err := f.Admin.Update(ctx, svc); err != nil {
			if api.IsConflict(err) {
				f.Admin.Get(ctx, api.DefaultTenant, "web", svc)
				svc.Spec.Replicas = 3
			}
			return err
		}
		return nil
	})
	fleettest.Poll(t, "3 web instances serving after the leading server died", 60*time.Second, func() error { _, err := f.Serving("web", 3); return err })
	t.Logf("leading server killed -> scheduler handed over, a new instance placed, running and answering: %v", time.Since(killed).Round(10*time.Millisecond))
	cl, err := f.Admin.Cluster(ctx)
	if err != nil || strings.HasSuffix(cl.Leader, fmt.Sprintf("-%d", f.ServerPid(lead))) {
		t.Fatalf("leader after the kill: %+v %v", cl, err)
	}
	if out, err := f.CLI("cluster"); err != nil || !strings.Contains(out, "leader: "+cl.Leader) {
		t.Fatalf("berth cluster: %v: %s", err, out)
	}
	for _, no := range f.Nodes() {
		if no.Status.Phase != api.NodeReady {
			t.Fatalf("node %s is %s after a server died", no.Name, no.Status.Phase)
		}
	}
	for _, h := range f.Hosts {
		cs, err := h.Containers()
		if err != nil {
			t.Fatal(err)
		}
		for name, c := range cs {
			if id, ok := before[h.Name+"/"+name]; ok && (id != c.ID || c.State.Status != agent.StatusRunning) {
				t.Fatalf("%s on %s after the leading server died: %s %s, was %s", name, h.Name, c.ID, c.State.Status, id)
			}
			delete(before, h.Name+"/"+name)
		}
	}
	if len(before) > 0 {
		t.Fatalf("containers gone after the leading server died: %v", before)
	}
}

package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/berth-dev/berth/network"
	"github.com/berth-dev/berth/network/ipam"
	"github.com/berth-dev/berth/network/netnstest"
	"github.com/berth-dev/berth/network/policy"
)

// netEnv is one node whose "host" is a network namespace the test made,
// with an uplink to an outside client's namespace; the root namespace's
// networking is never touched.
type netEnv struct {
	*env
	tag     string
	host    netnstest.NS
	outside netnstest.NS
	store   *ipam.FileStore
	ipam    ipam.Config
	nw      *Network
}

const (
	hostUplinkAddr = "10.201.0.1"
	outsideAddr    = "10.201.0.2"
)

func newNetEnv(t *testing.T) *netEnv {
	t.Helper()
	e := &netEnv{env: newEnv(t)}
	netnstest.RequireRoot(t)
	e.tag = netnstest.Unique()
	e.host = netnstest.New(t, "ba"+e.tag+"-host")
	e.outside = netnstest.New(t, "ba"+e.tag+"-out")
	netnstest.Link(t, e.host, "up0", hostUplinkAddr+"/24", e.outside, "eth0", outsideAddr+"/24", 1500)
	var err error
	if e.store, err = ipam.NewFileStore(filepath.Join(e.dir, "ipam.json")); err != nil {
		t.Fatal(err)
	}
	e.ipam = ipam.Config{Pools: []ipam.Pool{
		{Prefix: netip.MustParsePrefix("10.77.0.0/16"), BlockBits: 26},
		{Prefix: netip.MustParsePrefix("fd00:77::/48"), BlockBits: 122},
	}}
	e.nw = e.network(t)
	return e
}

// network opens the node's network on the env's host namespace.
func (e *netEnv) network(t *testing.T) *Network {
	t.Helper()
	nw, err := NewNetwork(network.Config{Node: "node1", HostNetNS: e.host.Path, Uplink: "up0", IPAM: e.ipam, Store: e.store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nw.Close() })
	return nw
}

// agent opens an agent on the env's root with nw; its containers are
// removed when the test ends.
func (e *netEnv) agentWith(t *testing.T, nw *Network) *Agent {
	t.Helper()
	return openAgent(t, Config{Root: filepath.Join(e.dir, "agent"), Images: e.images, Runtime: e.rt, InitPath: e.init, Networker: nw})
}

// webCmd serves /cgi-bin/ip, which answers the client's address as the
// container sees it, on port 8080 of bind (all addresses when empty; "eth0"
// for the container's own address only).
func webCmd(bind string) []string {
	listen := "8080"
	if bind == "eth0" {
		listen = `$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1):8080`
	}
	return []string{"sh", "-c", `mkdir -p /www/cgi-bin && echo ok > /www/index.html && ` +
		`printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n' > /www/cgi-bin/ip && ` +
		`chmod +x /www/cgi-bin/ip && exec httpd -f -p ` + listen + ` -h /www`}
}

// ipv4 is the container's IPv4 address from Inspect.
func ipv4(t *testing.T, a *Agent, id string) netip.Addr {
	t.Helper()
	c, err := a.Inspect(id)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range c.State.Addresses {
		if p.Addr().Is4() {
			return p.Addr()
		}
	}
	t.Fatalf("container %s has no IPv4 address: %v", id, c.State.Addresses)
	return netip.Addr{}
}

// get fetches url over connections made by dial; it returns the body.
func get(dial func(ctx context.Context, network, addr string) (net.Conn, error), url string) (string, error) {
	cl := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	resp, err := cl.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", &httpError{resp.Status}
	}
	return plainAddr(string(b)), err
}

type httpError struct{ status string }

func (e *httpError) Error() string { return "HTTP " + e.status }

// fetchIn asks for path on port 8080 of ip from inside container id (with
// nc: the static busybox's wget crashes on name service lookups); it
// reports the body and whether the server answered 200.
func fetchIn(t *testing.T, a *Agent, id string, ip netip.Addr, path string) (string, bool) {
	t.Helper()
	req := "printf 'GET " + path + " HTTP/1.0\\r\\n\\r\\n' | nc -w 2 " + ip.String() + " 8080"
	out, code := execOut(t, a, id, ExecSpec{Args: []string{"sh", "-c", req}})
	head, body, _ := strings.Cut(strings.ReplaceAll(out, "\r\n", "\n"), "\n\n")
	return plainAddr(body), code == 0 && strings.HasPrefix(head, "HTTP/1.") && strings.Contains(head, " 200 ")
}

// plainAddr turns the address busybox httpd reports, such as
// [::ffff:10.0.0.1], into its plain form.
func plainAddr(s string) string {
	s = strings.Trim(strings.TrimSpace(s), "[]")
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String()
	}
	return s
}

func ipURL(ip netip.Addr, path string) string {
	return "http://" + netip.AddrPortFrom(ip, 8080).String() + path
}

// hostLinks lists the host namespace's container interfaces.
func (e *netEnv) hostLinks(t *testing.T) []string {
	t.Helper()
	var out []string
	err := e.host.Do(func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, policy.IfPrefix) {
				out = append(out, l.Attrs().Name)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hostRoutes counts the host's routes to containers.
func (e *netEnv) hostRoutes(t *testing.T) int {
	t.Helper()
	h, err := netns.GetFromPath(e.host.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	rs, err := nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: network.ProtoContainer}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	return len(rs)
}

// heldBy lists the containers holding addresses in the IPAM state.
func (e *netEnv) heldBy(t *testing.T) map[string]int {
	t.Helper()
	s, err := e.store.Load()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, o := range s.Addrs {
		out[o.Container]++
	}
	return out
}

// Containers of one tenant reach each other by their own addresses (the
// server sees the client's address: no NAT); another tenant's do not,
// unless a label rule lets them; the host reaches every container.
func TestTenantsReachEachOtherByIPAndNotAcross(t *testing.T) {
	e := newNetEnv(t)
	a := e.agentWith(t, e.nw)
	a1 := run(t, a, ContainerSpec{Network: "berth", Tenant: "acme", Labels: map[string]string{"app": "web"}, Cmd: webCmd("")})
	a2 := run(t, a, ContainerSpec{Network: "berth", Tenant: "acme", Cmd: webCmd("")})
	b1 := run(t, a, ContainerSpec{Network: "berth", Tenant: "globex", Labels: map[string]string{"app": "client"}, Cmd: webCmd("")})
	ip1, ip2, ipB := ipv4(t, a, a1), ipv4(t, a, a2), ipv4(t, a, b1)
	for _, ip := range []netip.Addr{ip1, ip2, ipB} {
		if !netip.MustParsePrefix("10.77.0.0/16").Contains(ip) {
			t.Fatalf("address %s outside the pool", ip)
		}
		waitFor(t, "the host to reach "+ip.String(), func() bool {
			_, err := get(e.nw.DialContext, ipURL(ip, "/"))
			return err == nil
		})
	}
	c, _ := a.Inspect(a1)
	if len(c.State.Addresses) != 2 || !c.State.Addresses[1].Addr().Is6() {
		t.Fatalf("inspect shows addresses %v, want an IPv4 and an IPv6 one", c.State.Addresses)
	}

	if got, ok := fetchIn(t, a, a2, ip1, "/cgi-bin/ip"); !ok || got != ip2.String() {
		t.Fatalf("acme container reaching acme container: ok=%v, server saw %q, want %s", ok, got, ip2)
	}
	if got, ok := fetchIn(t, a, a1, ip2, "/cgi-bin/ip"); !ok || got != ip1.String() {
		t.Fatalf("acme container reaching acme container: ok=%v, server saw %q, want %s", ok, got, ip1)
	}
	// IPv6 too: the server sees the client's own IPv6 address.
	ip6 := c.State.Addresses[1].Addr()
	if got, ok := fetchIn(t, a, a2, ip6, "/cgi-bin/ip"); !ok || !strings.HasPrefix(got, "fd00:77:") {
		t.Fatalf("acme container reaching acme container over IPv6: ok=%v, server saw %q", ok, got)
	}
	if _, ok := fetchIn(t, a, b1, ip1, "/"); ok {
		t.Fatal("globex container reached an acme container")
	}
	if _, ok := fetchIn(t, a, a1, ipB, "/"); ok {
		t.Fatal("acme container reached a globex container")
	}
	if got, err := get(e.nw.DialContext, ipURL(ip1, "/cgi-bin/ip")); err != nil || got != hostUplinkAddr {
		t.Fatalf("host reaching a container: %q, %v", got, err)
	}

	// A label rule lets globex's clients into acme's web servers, and only
	// those: a2 is not labelled app=web.
	rule := policy.Rule{Name: "globex-clients-to-acme-web", Direction: policy.Ingress,
		Target: policy.Selector{Tenant: "acme", Labels: map[string]string{"app": "web"}},
		Peers:  []policy.Peer{{Selector: &policy.Selector{Tenant: "globex", Labels: map[string]string{"app": "client"}}}},
		Ports:  []policy.Port{{Proto: "tcp", Port: 8080}}}
	if err := e.nw.SetRules([]policy.Rule{rule}); err != nil {
		t.Fatal(err)
	}
	if got, ok := fetchIn(t, a, b1, ip1, "/cgi-bin/ip"); !ok || got != ipB.String() {
		t.Fatalf("globex client to acme web under the rule: ok=%v, saw %q", ok, got)
	}
	if _, ok := fetchIn(t, a, b1, ip2, "/"); ok {
		t.Fatal("the rule let globex reach an acme container it does not select")
	}
	// A container started after the rule is covered at once.
	a3 := run(t, a, ContainerSpec{Network: "berth", Tenant: "acme", Labels: map[string]string{"app": "web"}, Cmd: webCmd("")})
	ip3 := ipv4(t, a, a3)
	waitFor(t, "the new web container", func() bool {
		_, err := get(e.nw.DialContext, ipURL(ip3, "/"))
		return err == nil
	})
	if _, ok := fetchIn(t, a, b1, ip3, "/"); !ok {
		t.Fatal("globex client cannot reach a web container started after the rule")
	}
	if _, ok := fetchIn(t, a, a2, ip3, "/"); !ok {
		t.Fatal("a new acme container is not reachable by its tenant")
	}
	// A rule that does not compile is refused; the old one stays.
	bad := rule
	bad.Target.Tenant = ""
	if err := e.nw.SetRules([]policy.Rule{bad}); err == nil || !strings.Contains(err.Error(), "no tenant") {
		t.Fatalf("rule without a tenant: %v", err)
	}
	if _, ok := fetchIn(t, a, b1, ip1, "/"); !ok {
		t.Fatal("a refused rule set replaced the one in force")
	}
}

// A published port takes a client outside the cluster to the container,
// which sees the client's own address; a second container cannot take the
// same host port.
func TestPublishedPortKeepsTheClientAddress(t *testing.T) {
	e := newNetEnv(t)
	a := e.agentWith(t, e.nw)
	web := run(t, a, ContainerSpec{Network: "berth", Tenant: "acme", Cmd: webCmd(""),
		Ports: []PortMapping{{HostPort: 8081, ContainerPort: 8080}}})
	outDial := func(_ context.Context, n, addr string) (net.Conn, error) {
		return e.outside.Dial(n, addr, 2*time.Second)
	}
	url := "http://" + hostUplinkAddr + ":8081/cgi-bin/ip"
	var got string
	waitFor(t, "the published port", func() bool {
		var err error
		got, err = get(outDial, url)
		return err == nil
	})
	if got != outsideAddr {
		t.Fatalf("through the published port the container saw %q, want the client's %s", got, outsideAddr)
	}
	// Not published: the container's own port is closed to the outside
	// even with a route to it.
	e.outside.Run(t, "ip", "route", "add", "10.77.0.0/16", "via", hostUplinkAddr)
	if _, err := get(outDial, ipURL(ipv4(t, a, web), "/")); err == nil {
		t.Fatal("outside client reached an unpublished container port")
	}

	links := e.hostLinks(t)
	_, err := a.Run(ctxT(t), ContainerSpec{Image: "busybox", Network: "berth", Tenant: "acme", Cmd: []string{"sleep", "100"},
		Ports: []PortMapping{{HostPort: 8081, ContainerPort: 80, Proto: "tcp"}}})
	if err == nil || !strings.Contains(err.Error(), "host port 8081/tcp: already published by container "+web) {
		t.Fatalf("second container on host port 8081: %v", err)
	}
	if l := e.hostLinks(t); len(l) != len(links) {
		t.Fatalf("a refused attach left interfaces: %v, before %v", l, links)
	}
	if got, err := get(outDial, url); err != nil || got != outsideAddr {
		t.Fatalf("first container after the refused one: %q, %v", got, err)
	}
}

// Stop and remove leave no interface, route, address or policy entry.
func TestStopAndRemoveLeaveNoNetwork(t *testing.T) {
	e := newNetEnv(t)
	a := e.agentWith(t, e.nw)
	keep := run(t, a, ContainerSpec{Network: "berth", Tenant: "acme", Cmd: []string{"sleep", "1000"}})
	id := run(t, a, ContainerSpec{Network: "berth", Tenant: "acme", Cmd: []string{"sleep", "1000"},
		Ports: []PortMapping{{HostPort: 9000, ContainerPort: 80}}})
	ip := ipv4(t, a, id)
	if l := e.hostLinks(t); len(l) != 2 || e.hostRoutes(t) != 4 {
		t.Fatalf("two containers attached: links %v, %d routes", l, e.hostRoutes(t))
	}
	if out := e.host.Run(t, "nft", "list", "table", "inet", policy.TableName); !strings.Contains(out, ip.String()) {
		t.Fatalf("policy lacks the new container's address %s:\n%s", ip, out)
	}

	if err := a.Stop(ctxT(t), id, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		if l := e.hostLinks(t); len(l) != 1 || l[0] != network.HostIfName(keep) || e.hostRoutes(t) != 2 {
			t.Fatalf("%s: links %v, %d container routes", when, l, e.hostRoutes(t))
		}
		if h := e.heldBy(t); len(h) != 1 || h[keep] != 2 {
			t.Fatalf("%s: addresses held by %v", when, h)
		}
		out := e.host.Run(t, "nft", "list", "table", "inet", policy.TableName)
		if strings.Contains(out, ip.String()+" ") || strings.Contains(out, ip.String()+"\n") || strings.Contains(out, "9000") {
			t.Fatalf("%s: policy still has %s or its port:\n%s", when, ip, out)
		}
	}
	check("after stop")
	if c, _ := a.Inspect(id); len(c.State.Addresses) != 0 {
		t.Fatalf("a stopped container still shows addresses %v", c.State.Addresses)
	}
	// Started again, it is attached again; removed, it leaves nothing.
	if err := a.Start(ctxT(t), id); err != nil {
		t.Fatal(err)
	}
	if l := e.hostLinks(t); len(l) != 2 {
		t.Fatalf("restarted: links %v", l)
	}
	ip = ipv4(t, a, id)
	if err := a.Remove(ctxT(t), id, true); err != nil {
		t.Fatal(err)
	}
	check("after remove")
}

// Health checks by HTTP and TCP connect to the container's own address
// from the host: a server that listens only there is healthy.
func TestHealthChecksUseTheContainerAddress(t *testing.T) {
	e := newNetEnv(t)
	a := e.agentWith(t, e.nw)
	fast := func(h HealthCheck) *HealthCheck {
		h.Interval, h.Timeout, h.Retries = 100*time.Millisecond, 5*time.Second, 2
		return &h
	}
	for _, tc := range []struct {
		name string
		hc   *HealthCheck
		want string
	}{
		{"http", fast(HealthCheck{HTTPPath: "/", Port: 8080}), "healthy"},
		{"http 404", fast(HealthCheck{HTTPPath: "/missing", Port: 8080}), "unhealthy"},
		{"tcp", fast(HealthCheck{Port: 8080}), "healthy"},
		{"tcp closed", fast(HealthCheck{Port: 8081}), "unhealthy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := run(t, a, ContainerSpec{Network: "berth", Tenant: "acme", Cmd: webCmd("eth0"), Health: tc.hc})
			waitFor(t, tc.want, func() bool {
				c, _ := a.Inspect(id)
				return c.State.Health != nil && c.State.Health.Status == tc.want
			})
			if err := a.Remove(ctxT(t), id, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A new agent on the same root keeps the running containers reachable,
// and sweeps what is left of containers that vanished, or whose metadata
// broke, while no agent ran.
func TestAgentRestartSweepsVanishedContainers(t *testing.T) {
	e := newNetEnv(t)
	ctx := ctxT(t)
	root := filepath.Join(e.dir, "agent")
	a1, err := New(ctx, Config{Root: root, Images: e.images, Runtime: e.rt, InitPath: e.init, Networker: e.nw})
	if err != nil {
		t.Fatal(err)
	}
	// Should the test fail before a2 takes over, an agent without network
	// removes the containers (their network goes with the namespaces).
	handedOver := false
	t.Cleanup(func() {
		if handedOver {
			return
		}
		a1.Close()
		a, err := New(context.Background(), Config{Root: root, Images: e.images, Runtime: e.rt, InitPath: e.init})
		if err != nil {
			t.Errorf("clean up: %v", err)
			return
		}
		for _, c := range a.List() {
			_ = a.Remove(context.Background(), c.ID, true)
		}
		a.Close()
		removeCgroupParent(a.cgroups)
	})
	spec := ContainerSpec{Image: "busybox", Network: "berth", Tenant: "acme", Cmd: webCmd("")}
	var ids []string
	for i := range 3 {
		if i == 0 {
			spec.Ports = []PortMapping{{HostPort: 8082, ContainerPort: 8080}}
		} else {
			spec.Ports = nil
		}
		id, err := a1.Run(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	keep, vanished, broken := ids[0], ids[1], ids[2]
	keepIP := ipv4(t, a1, keep)
	a1.Close()
	e.nw.Close()

	// While no agent runs, one container vanishes altogether, and another's
	// metadata is lost.
	if err := e.rt.Delete(ctx, vanished, true); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "containers", vanished)
	if err := unmountAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := e.images.RemoveSnapshot(vanished); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "containers", broken, "meta.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}

	handedOver = true
	a2 := e.agentWith(t, e.network(t))
	waitFor(t, "the gone containers' interfaces to go", func() bool {
		l := e.hostLinks(t)
		return len(l) == 1 && l[0] == network.HostIfName(keep)
	})
	if h := e.heldBy(t); len(h) != 1 || h[keep] != 2 {
		t.Fatalf("after restart addresses are held by %v, want only %s", h, keep)
	}
	if n := e.hostRoutes(t); n != 2 {
		t.Fatalf("after restart %d container routes, want keep's 2", n)
	}
	if cs := a2.List(); len(cs) != 1 || cs[0].ID != keep {
		t.Fatalf("after restart the agent has %d containers", len(cs))
	}
	// The adopted container is still in the policy: the host and a new
	// container of its tenant reach it, and its health address is known.
	if got, err := get(a2.cfg.Networker.DialContext, ipURL(keepIP, "/")); err != nil || got != "ok" {
		t.Fatalf("host to the adopted container: %q, %v", got, err)
	}
	// Its published port too, now that the new agent re-applied the policy.
	outDial := func(_ context.Context, n, addr string) (net.Conn, error) {
		return e.outside.Dial(n, addr, 2*time.Second)
	}
	if got, err := get(outDial, "http://"+hostUplinkAddr+":8082/cgi-bin/ip"); err != nil || got != outsideAddr {
		t.Fatalf("published port of the adopted container: %q, %v", got, err)
	}
	fresh := run(t, a2, ContainerSpec{Network: "berth", Tenant: "acme", Cmd: []string{"sleep", "1000"}})
	if _, ok := fetchIn(t, a2, fresh, keepIP, "/"); !ok {
		t.Fatal("a new container cannot reach the adopted one of its tenant")
	}
	if ip := ipv4(t, a2, fresh); ip == keepIP {
		t.Fatalf("new container got the adopted one's address %s", ip)
	}
}

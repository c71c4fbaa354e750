package network

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/network/ipam"
	"github.com/berth-dev/berth/network/netnstest"
	"github.com/berth-dev/berth/network/policy"
)

// cluster is two hosts (and an outside client) on one L2 fabric, each with
// a Manager, sharing one IPAM store as nodes of a cluster would.
type cluster struct {
	t        *testing.T
	tag      string
	fabric   netnstest.NS
	hosts    map[string]netnstest.NS
	nodeAddr map[string]netip.Addr
	nodeV6   map[string]netip.Addr
	mgr      map[string]*Manager
	store    *ipam.FileStore
	ipam     ipam.Config
	ext      netnstest.NS
	ext2     netnstest.NS
	eps      []policy.Endpoint
}

const fabricMTU = 1400

func newCluster(t *testing.T) *cluster {
	t.Helper()
	netnstest.RequireRoot(t)
	tag := netnstest.Unique()
	c := &cluster{t: t, tag: tag, hosts: map[string]netnstest.NS{}, nodeAddr: map[string]netip.Addr{},
		nodeV6: map[string]netip.Addr{}, mgr: map[string]*Manager{}}
	c.fabric = netnstest.New(t, "bt"+tag+"-fab")
	c.fabric.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	c.fabric.Run(t, "ip", "link", "set", "br0", "up")
	plug := func(name, addr, addr6 string) netnstest.NS {
		ns := netnstest.New(t, "bt"+tag+"-"+name)
		// A host's uplink has long finished duplicate address detection;
		// until it has, the kernel sends no neighbour solicitations on it.
		ns.Run(t, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
		netnstest.Link(t, ns, "fab0", addr+"/24", c.fabric, "p-"+name, "", fabricMTU)
		ns.Run(t, "ip", "addr", "add", addr6+"/64", "dev", "fab0", "nodad")
		c.fabric.Run(t, "ip", "link", "set", "p-"+name, "master", "br0")
		return ns
	}
	var err error
	c.store, err = ipam.NewFileStore(filepath.Join(t.TempDir(), "ipam.json"))
	if err != nil {
		t.Fatal(err)
	}
	c.ipam = ipam.Config{Pools: []ipam.Pool{
		{Prefix: netip.MustParsePrefix("10.88.0.0/16"), BlockBits: 26},
		{Prefix: netip.MustParsePrefix("fd00:88::/48"), BlockBits: 122},
	}}
	for name, addr := range map[string][2]string{"A": {"10.99.0.1", "fd99::1"}, "B": {"10.99.0.2", "fd99::2"}} {
		c.hosts[name] = plug(name, addr[0], addr[1])
		c.nodeAddr[name] = netip.MustParseAddr(addr[0])
		c.nodeV6[name] = netip.MustParseAddr(addr[1])
		m, err := New(Config{Node: name, HostNetNS: c.hosts[name].Path, Uplink: "fab0", IPAM: c.ipam, Store: c.store})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		c.mgr[name] = m
	}
	c.ext = plug("x", "10.99.0.9", "fd99::9")
	c.ext2 = plug("y", "10.99.0.10", "fd99::10")
	return c
}

// container creates a namespace and attaches it on host. It returns the
// namespace and the container's IPv4 address; v6 gives the IPv6 one.
func (c *cluster) container(host, id, tenant string, labels map[string]string) (netnstest.NS, netip.Addr) {
	c.t.Helper()
	ns := netnstest.New(c.t, "bt"+c.tag+"-"+id)
	att, err := c.mgr[host].Attach(Container{ID: c.tag + id, NetNS: ns.Path, Tenant: tenant, Labels: labels})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { c.mgr[host].Detach(c.tag + id) })
	if len(att.Addrs) != 2 || !att.Addrs[0].Is4() || !att.Addrs[1].Is6() {
		c.t.Fatalf("attach %s: addresses %v, want one IPv4 and one IPv6", id, att.Addrs)
	}
	c.eps = append(c.eps, policy.Endpoint{ID: id, Tenant: tenant, Addrs: att.Addrs, Labels: labels})
	return ns, att.Addrs[0]
}

// v6 returns the IPv6 address of the container holding v4.
func (c *cluster) v6(v4 netip.Addr) netip.Addr {
	c.t.Helper()
	for _, e := range c.eps {
		if e.Addrs[0] == v4 {
			return e.Addrs[1]
		}
	}
	c.t.Fatalf("no endpoint has %s", v4)
	return netip.Addr{}
}

// sync installs block routes and policy on every host, as the agent does
// when the store changes.
func (c *cluster) sync(rules []policy.Rule, ports map[string][]policy.PortMap) {
	c.t.Helper()
	s, err := c.store.Load()
	if err != nil {
		c.t.Fatal(err)
	}
	nodes := map[string][]netip.Addr{}
	for n := range c.hosts {
		nodes[n] = []netip.Addr{c.nodeAddr[n], c.nodeV6[n]}
	}
	table, err := BlockTable(s.Blocks, nodes)
	if err != nil {
		c.t.Fatal(err)
	}
	// The outside clients stand for a fabric router that learnt the blocks.
	for _, ext := range []netnstest.NS{c.ext, c.ext2} {
		for b, via := range table {
			ext.Run(c.t, "ip", "route", "replace", b.String(), "via", via.String())
		}
	}
	for name, m := range c.mgr {
		if err := m.SyncRoutes(table); err != nil {
			c.t.Fatal(err)
		}
		if err := m.ApplyPolicy(c.eps, rules, ports[name]); err != nil {
			c.t.Fatal(err)
		}
	}
}

func ping(ns netnstest.NS, to netip.Addr, extra ...string) error {
	out, err := ns.Try(append([]string{"ping", "-c", "1", "-W", "1"}, append(extra, to.String())...)...)
	if err != nil {
		return errors.New(strings.TrimSpace(out))
	}
	return nil
}

func TestCrossHostRoutedUnencapsulatedAndIsolated(t *testing.T) {
	c := newCluster(t)
	web, webIP := c.container("A", "web", "acme", map[string]string{"app": "web"})
	db, dbIP := c.container("B", "db", "acme", map[string]string{"app": "db"})
	_, evilIP := c.container("B", "evil", "globex", nil)
	evilA, evilAIP := c.container("A", "evila", "globex", nil)
	c.sync(nil, nil)

	// A capture on host B's fabric port while web pings db: the packets on
	// the wire carry the containers' own addresses, not an outer header.
	cap := c.hosts["B"].Cmd("tcpdump", "-i", "fab0", "-nn", "-l", "-c", "1", "icmp")
	stdout, _ := cap.StdoutPipe()
	stderr, _ := cap.StderrPipe()
	if err := cap.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	t.Cleanup(func() { cap.Process.Kill(); cap.Wait() })
	ready := bufio.NewReader(stderr)
	for {
		line, err := ready.ReadString('\n')
		if err != nil {
			t.Fatalf("tcpdump did not start: %v", err)
		}
		if strings.Contains(line, "listening") {
			break
		}
	}
	if err := ping(web, dbIP); err != nil {
		t.Fatalf("web (A) -> db (B), same tenant: %v", err)
	}
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- line
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(5 * time.Second):
		t.Fatal("tcpdump on the fabric captured nothing")
	}
	if want := "IP " + webIP.String() + " > " + dbIP.String() + ": ICMP echo request"; !strings.Contains(line, want) {
		t.Fatalf("capture on the fabric = %q, want plain %q", line, want)
	}

	if err := ping(db, webIP); err != nil {
		t.Fatalf("db (B) -> web (A): %v", err)
	}
	if err := ping(web, evilIP); err == nil {
		t.Fatal("acme container reached a globex container on another host")
	}
	if err := ping(web, evilAIP); err == nil {
		t.Fatal("acme container reached a globex container on the same host")
	}
	if err := ping(evilA, evilIP); err != nil {
		t.Fatalf("globex across hosts: %v", err)
	}
	// The same over IPv6.
	if err := ping(web, c.v6(dbIP)); err != nil {
		t.Fatalf("web (A) -> db (B) over IPv6: %v", err)
	}
	if err := ping(web, c.v6(evilIP)); err == nil {
		t.Fatal("acme container reached a globex container over IPv6")
	}
	if err := ping(evilA, c.v6(evilIP)); err != nil {
		t.Fatalf("globex across hosts over IPv6: %v", err)
	}
	// The host reaches its own containers whatever their tenant.
	if _, err := c.hosts["A"].Try("ping", "-c", "1", "-W", "1", evilAIP.String()); err != nil {
		t.Fatalf("host A -> its container: %v", err)
	}
	if _, err := c.hosts["A"].Try("ping", "-c", "1", "-W", "1", webIP.String()); err != nil {
		t.Fatalf("host A -> its container: %v", err)
	}
}

// A container cannot borrow another tenant's address to pass policy: the
// datagram is sent from globex's container with acme's web address.
func TestSpoofedSourceIsDropped(t *testing.T) {
	c := newCluster(t)
	web, webIP := c.container("A", "web", "acme", nil)
	evil, _ := c.container("A", "evil", "globex", nil)
	db, dbIP := c.container("B", "db", "acme", nil)
	c.sync(nil, nil)
	for _, fam := range []struct {
		name     string
		from, to netip.Addr
		prefix   int
	}{{"ipv4", webIP, dbIP, 32}, {"ipv6", c.v6(webIP), c.v6(dbIP), 128}} {
		t.Run(fam.name, func(t *testing.T) {
			var pc net.PacketConn
			if err := db.Do(func() (err error) { pc, err = net.ListenPacket("udp", ":9999"); return err }); err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			to := netip.AddrPortFrom(fam.to, 9999)
			send := func(ns netnstest.NS) {
				t.Helper()
				err := ns.Do(func() error {
					conn, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.from, 0)), net.UDPAddrFromAddrPort(to))
					if err != nil {
						return err
					}
					defer conn.Close()
					_, err = conn.Write([]byte("hello"))
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			recv := func() error {
				buf := make([]byte, 16)
				pc.SetReadDeadline(time.Now().Add(time.Second))
				_, _, err := pc.ReadFrom(buf)
				return err
			}
			// The real owner gets through: the check below can fail.
			send(web)
			if err := recv(); err != nil {
				t.Fatalf("datagram from the address's owner: %v", err)
			}
			evil.Run(t, "ip", "addr", "add", netip.PrefixFrom(fam.from, fam.prefix).String(), "dev", "eth0", "nodad")
			send(evil)
			if err := recv(); err == nil {
				t.Fatal("a datagram with a borrowed source address passed")
			}
		})
	}
}

func TestLabelRules(t *testing.T) {
	c := newCluster(t)
	web, _ := c.container("A", "web", "acme", map[string]string{"app": "web"})
	other, _ := c.container("A", "other", "acme", map[string]string{"app": "batch"})
	db, dbIP := c.container("B", "db", "globex", map[string]string{"app": "db"})
	rules := []policy.Rule{{
		Name: "acme-web-to-globex-db", Direction: policy.Ingress,
		Target: policy.Selector{Tenant: "globex", Labels: map[string]string{"app": "db"}},
		Peers:  []policy.Peer{{Selector: &policy.Selector{Tenant: "acme", Labels: map[string]string{"app": "web"}}}},
		Ports:  []policy.Port{{Proto: "tcp", Port: 5432}},
	}}
	c.sync(rules, nil)
	netnstest.Serve(db.Listen(t, "tcp", ":5432"))
	netnstest.Serve(db.Listen(t, "tcp", ":5433"))

	if _, err := netnstest.Ask(web, dbIP.String()+":5432"); err != nil {
		t.Fatalf("allowed by label rule: %v", err)
	}
	if _, err := netnstest.Ask(web, dbIP.String()+":5433"); err == nil {
		t.Fatal("port outside the rule was reachable")
	}
	if _, err := netnstest.Ask(other, dbIP.String()+":5432"); err == nil {
		t.Fatal("container without the label was let through")
	}

	// An egress rule limits the selected containers: web may now reach
	// only its tenant and the fabric's 10.99.0.0/24 on tcp/22.
	rules = append(rules, policy.Rule{Name: "web-egress", Direction: policy.Egress,
		Target: policy.Selector{Tenant: "acme", Labels: map[string]string{"app": "web"}},
		Peers:  []policy.Peer{{CIDR: netip.MustParsePrefix("10.99.0.0/24")}},
		Ports:  []policy.Port{{Proto: "tcp", Port: 22}}})
	c.sync(rules, nil)
	if _, err := netnstest.Ask(web, dbIP.String()+":5432"); err == nil {
		t.Fatal("egress limit did not apply")
	}
	netnstest.Serve(c.ext.Listen(t, "tcp", ":22"))
	netnstest.Serve(c.ext.Listen(t, "tcp", ":23"))
	if _, err := netnstest.Ask(web, "10.99.0.9:22"); err != nil {
		t.Fatalf("egress allowed by CIDR rule: %v", err)
	}
	if _, err := netnstest.Ask(web, "10.99.0.9:23"); err == nil {
		t.Fatal("egress to a port outside the rule passed")
	}
	if _, err := netnstest.Ask(other, "10.99.0.9:23"); err != nil {
		t.Fatalf("container without egress rules is limited: %v", err)
	}
}

func TestPublishedPortKeepsSourceAndHostFirewall(t *testing.T) {
	c := newCluster(t)
	web, webIP := c.container("B", "web", "acme", nil)
	c.sync(nil, map[string][]policy.PortMap{"B": {
		{Proto: "tcp", HostPort: 8080, ContainerAddr: webIP, ContainerPort: 80},
		{Proto: "tcp", HostPort: 8080, ContainerAddr: c.v6(webIP), ContainerPort: 80},
	}})
	netnstest.Serve(web.Listen(t, "tcp", ":80"))

	for addr, client := range map[string]string{"10.99.0.2:8080": "10.99.0.9:", "[fd99::2]:8080": "[fd99::9]:"} {
		got, err := netnstest.Ask(c.ext, addr)
		if err != nil {
			t.Fatalf("published port %s: %v", addr, err)
		}
		if !strings.HasPrefix(got, client) {
			t.Fatalf("through %s the container saw client %q, want the real %s", addr, got, client)
		}
	}
	// The host's own firewall, in its own table, still decides.
	c.hosts["B"].Run(t, "nft", "add table inet hostfw; add chain inet hostfw fw_forward { type filter hook forward priority 0; policy accept; }; "+
		"add rule inet hostfw fw_forward ip saddr 10.99.0.10 tcp dport 80 drop")
	if _, err := netnstest.Ask(c.ext2, "10.99.0.2:8080"); err == nil {
		t.Fatal("host firewall rule was bypassed by the published port")
	}
	if _, err := netnstest.Ask(c.ext, "10.99.0.2:8080"); err != nil {
		t.Fatalf("client the firewall allows: %v", err)
	}
	// Not published: not reachable from outside even by the container's
	// IP, though the outside has a route to it.
	for _, addr := range []string{webIP.String() + ":80", "[" + c.v6(webIP).String() + "]:80"} {
		if _, err := netnstest.Ask(c.ext, addr); err == nil {
			t.Fatalf("outside client reached %s, which is not published", addr)
		}
	}
}

func TestMTUFollowsUplink(t *testing.T) {
	c := newCluster(t)
	a, _ := c.container("A", "a", "acme", nil)
	_, bIP := c.container("B", "b", "acme", nil)
	c.sync(nil, nil)
	var mtu int
	a.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err == nil {
			mtu = l.Attrs().MTU
		}
		return err
	})
	if mtu != fabricMTU {
		t.Fatalf("container MTU %d, want the uplink's %d", mtu, fabricMTU)
	}
	// A full-size packet with DF set crosses hosts.
	if err := ping(a, bIP, "-M", "do", "-s", "1372"); err != nil {
		t.Fatalf("full-MTU ping: %v", err)
	}
}

func TestAttachConfiguresHostEnd(t *testing.T) {
	c := newCluster(t)
	c.container("A", "a", "acme", nil)
	hostIf := HostIfName(c.tag + "a")
	out := c.hosts["A"].Run(t, "sh", "-c", "cd /proc/sys/net && cat ipv4/conf/"+hostIf+"/proxy_arp ipv4/conf/"+hostIf+
		"/rp_filter ipv4/conf/"+hostIf+"/accept_redirects ipv4/neigh/"+hostIf+"/proxy_delay ipv6/conf/"+hostIf+"/addr_gen_mode")
	if got := strings.Fields(out); strings.Join(got, " ") != "1 1 0 0 1" {
		t.Fatalf("proxy_arp rp_filter accept_redirects proxy_delay addr_gen_mode = %v, want 1 1 0 0 1", got)
	}
	addrs := c.hosts["A"].Run(t, "ip", "-o", "addr", "show", "dev", hostIf)
	if !strings.Contains(addrs, "inet6 fe80::1/64") || strings.Count(addrs, "inet") != 1 {
		t.Fatalf("host end addresses: %s", addrs)
	}
	// The host end answers ARP for the gateway by proxy, should the
	// container lose its static entry. Proxy ARP answers for addresses the
	// host routes elsewhere: here by its default route, as on most hosts.
	a := netnstest.NS{Name: "bt" + c.tag + "-a"}
	c.hosts["A"].Run(t, "ip", "route", "add", "default", "via", "10.99.0.254")
	a.Run(t, "ip", "neigh", "del", "169.254.1.1", "dev", "eth0")
	if err := ping(a, c.nodeAddr["A"]); err != nil {
		t.Fatalf("ping the host without the static gateway entry: %v", err)
	}
	if out := a.Run(t, "ip", "neigh", "show", "169.254.1.1"); !strings.Contains(out, "lladdr") {
		t.Fatalf("gateway not resolved by proxy ARP: %q", out)
	}
}

func hostLinks(t *testing.T, m *Manager) []string {
	t.Helper()
	links, err := m.nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, policy.IfPrefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func containerRoutes(t *testing.T, m *Manager) int {
	t.Helper()
	rs, err := m.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: ProtoContainer}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	return len(rs)
}

func TestDetachAndSweepLeaveNothing(t *testing.T) {
	c := newCluster(t)
	m := c.mgr["A"]
	keep, _ := c.container("A", "keep", "acme", nil)
	ns := netnstest.New(t, "bt"+c.tag+"-gone")
	if _, err := m.Attach(Container{ID: c.tag + "gone", NetNS: ns.Path, Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	// Detach is complete.
	if err := m.Detach(c.tag + "gone"); err != nil {
		t.Fatal(err)
	}
	if l := hostLinks(t, m); len(l) != 1 || containerRoutes(t, m) != 2 {
		t.Fatalf("after detach: links %v, %d container routes", l, containerRoutes(t, m))
	}
	if err := m.Detach(c.tag + "gone"); err != nil {
		t.Fatalf("second detach: %v", err)
	}

	// A crash: the agent attached crash1 and died; a half-made interface
	// without an owner is also left. A new Manager sweeps on start.
	ns2 := netnstest.New(t, "bt"+c.tag+"-crash1")
	if _, err := m.Attach(Container{ID: c.tag + "crash1", NetNS: ns2.Path, Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	c.hosts["A"].Run(t, "ip", "link", "add", "bvhalfmade", "type", "veth", "peer", "name", "bvhalfpeer")
	m.Close()
	m2, err := New(Config{Node: "A", HostNetNS: c.hosts["A"].Path, Uplink: "fab0", IPAM: c.ipam, Store: c.store})
	if err != nil {
		t.Fatal(err)
	}
	c.mgr["A"] = m2
	gone, err := m2.Sweep(map[string]bool{c.tag + "keep": true})
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 1 || gone[0] != c.tag+"crash1" {
		t.Fatalf("swept %v", gone)
	}
	if l := hostLinks(t, m2); len(l) != 1 || l[0] != HostIfName(c.tag+"keep") || containerRoutes(t, m2) != 2 {
		t.Fatalf("after sweep: links %v, %d routes", l, containerRoutes(t, m2))
	}
	s, _ := c.store.Load()
	for _, o := range s.Addrs {
		if o.Container != c.tag+"keep" {
			t.Fatalf("after sweep IPAM holds %v", s.Addrs)
		}
	}
	if len(s.Addrs) != 2 {
		t.Fatalf("after sweep IPAM holds %v, want keep's IPv4 and IPv6 address", s.Addrs)
	}
	if _, err := keep.Try("ip", "link", "show", "eth0"); err != nil {
		t.Fatal("sweep touched a live container")
	}
}

func TestBadInputLeavesNothing(t *testing.T) {
	c := newCluster(t)
	m := c.mgr["A"]
	check := func(t *testing.T) {
		t.Helper()
		s, _ := c.store.Load()
		if l := hostLinks(t, m); len(l) != 0 || len(s.Addrs) != 0 || containerRoutes(t, m) != 0 {
			t.Fatalf("left behind: links %v, addrs %v", l, s.Addrs)
		}
	}
	t.Run("missing netns", func(t *testing.T) {
		_, err := m.Attach(Container{ID: "x", NetNS: "/run/netns/bt-does-not-exist", Tenant: "acme"})
		if err == nil || !strings.Contains(err.Error(), "bt-does-not-exist") {
			t.Fatalf("err = %v", err)
		}
		check(t)
	})
	t.Run("interface name collision in container", func(t *testing.T) {
		ns := netnstest.New(t, "bt"+c.tag+"-busy")
		ns.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
		_, err := m.Attach(Container{ID: c.tag + "busy", NetNS: ns.Path, Tenant: "acme"})
		if err == nil || !strings.Contains(err.Error(), "eth0 already exists") {
			t.Fatalf("err = %v", err)
		}
		check(t)
	})
	t.Run("host interface collision", func(t *testing.T) {
		ns := netnstest.New(t, "bt"+c.tag+"-dup")
		c.hosts["A"].Run(t, "ip", "link", "add", HostIfName(c.tag+"dup"), "type", "veth", "peer", "name", "dup0")
		_, err := m.Attach(Container{ID: c.tag + "dup", NetNS: ns.Path, Tenant: "acme"})
		if err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("err = %v", err)
		}
		c.hosts["A"].Run(t, "ip", "link", "del", HostIfName(c.tag+"dup"))
		check(t)
	})
	t.Run("failure midway releases the address", func(t *testing.T) {
		// A route the container already has makes plumbing fail after the
		// address was claimed and the veth made: both must be undone.
		ns := netnstest.New(t, "bt"+c.tag+"-mid")
		ns.Run(t, "ip", "link", "add", "x0", "type", "veth", "peer", "name", "x1")
		ns.Run(t, "ip", "link", "set", "x0", "up")
		ns.Run(t, "ip", "link", "set", "x1", "up")
		ns.Run(t, "ip", "route", "add", "169.254.1.1/32", "dev", "x0")
		_, err := m.Attach(Container{ID: c.tag + "mid", NetNS: ns.Path, Tenant: "acme"})
		if err == nil || !strings.Contains(err.Error(), "gateway route") {
			t.Fatalf("err = %v", err)
		}
		if out := ns.Run(t, "ip", "-o", "link"); strings.Contains(out, "eth0") {
			t.Fatalf("eth0 left in the container: %s", out)
		}
		check(t)
	})
	t.Run("no tenant", func(t *testing.T) {
		ns := netnstest.New(t, "bt"+c.tag+"-nt")
		if _, err := m.Attach(Container{ID: "nt", NetNS: ns.Path}); err == nil || !strings.Contains(err.Error(), "no tenant") {
			t.Fatalf("err = %v", err)
		}
		check(t)
	})
	t.Run("same container attached twice at once", func(t *testing.T) {
		ns := netnstest.New(t, "bt"+c.tag+"-twice")
		id := c.tag + "twice"
		errs := make(chan error, 2)
		for range 2 {
			go func() {
				_, err := m.Attach(Container{ID: id, NetNS: ns.Path, Tenant: "acme"})
				errs <- err
			}()
		}
		var failed int
		for range 2 {
			if err := <-errs; err != nil {
				failed++
				if !strings.Contains(err.Error(), "in progress") && !strings.Contains(err.Error(), "already exists") {
					t.Errorf("second attach: %v", err)
				}
			}
		}
		// Exactly one won, and the loser undid nothing of the winner's.
		if failed != 1 {
			t.Fatalf("%d of 2 concurrent attaches failed, want 1", failed)
		}
		if l := hostLinks(t, m); len(l) != 1 || containerRoutes(t, m) != 2 {
			t.Fatalf("after the race: links %v, %d routes", l, containerRoutes(t, m))
		}
		if s, _ := c.store.Load(); !ipam.Lookup(s, id).V4.IsValid() {
			t.Fatal("the loser released the winner's address")
		}
		if err := m.Detach(id); err != nil {
			t.Fatal(err)
		}
		check(t)
	})
	t.Run("bad plans", func(t *testing.T) {
		for wants, pools := range map[string][]ipam.Pool{
			"overlaps":             {{Prefix: netip.MustParsePrefix("10.0.0.0/16"), BlockBits: 26}, {Prefix: netip.MustParsePrefix("10.0.1.0/24"), BlockBits: 26}},
			"larger than the pool": {{Prefix: netip.MustParsePrefix("10.0.0.0/24"), BlockBits: 20}},
		} {
			_, err := New(Config{Node: "A", HostNetNS: c.hosts["A"].Path, IPAM: ipam.Config{Pools: pools}, Store: c.store})
			if err == nil || !strings.Contains(err.Error(), wants) {
				t.Fatalf("New(%v) = %v, want %q", pools, err, wants)
			}
		}
		if _, err := New(Config{Node: "A", HostNetNS: "/run/netns/bt-missing-host", IPAM: c.ipam, Store: c.store}); err == nil || !strings.Contains(err.Error(), "bt-missing-host") {
			t.Fatalf("New with a missing host netns: %v", err)
		}
		if _, err := New(Config{Node: "A", HostNetNS: c.hosts["A"].Path, Uplink: "nosuch0", IPAM: c.ipam, Store: c.store}); err == nil || !strings.Contains(err.Error(), "nosuch0") {
			t.Fatalf("New with a missing uplink: %v", err)
		}
	})
}

func TestSyncRoutesFollowsBlockTable(t *testing.T) {
	c := newCluster(t)
	m := c.mgr["A"]
	p := netip.MustParsePrefix
	list := func() string {
		rs, err := m.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: ProtoBlock}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rs {
			s := r.Dst.String()
			if r.Type == unix.RTN_BLACKHOLE {
				s += " blackhole"
			} else {
				s += " via " + r.Gw.String()
			}
			out = append(out, s)
		}
		return strings.Join(out, "; ")
	}
	table := map[netip.Prefix]netip.Addr{
		p("10.88.0.0/26"):   c.nodeAddr["A"],
		p("10.88.0.64/26"):  c.nodeAddr["B"],
		p("10.88.0.128/26"): c.nodeAddr["B"],
	}
	if err := m.SyncRoutes(table); err != nil {
		t.Fatal(err)
	}
	if got, want := list(), "10.88.0.0/26 blackhole; 10.88.0.64/26 via 10.99.0.2; 10.88.0.128/26 via 10.99.0.2"; got != want {
		t.Fatalf("routes %q, want %q", got, want)
	}
	delete(table, p("10.88.0.128/26"))
	table[p("10.88.0.64/26")] = netip.MustParseAddr("10.99.0.9")
	if err := m.SyncRoutes(table); err != nil {
		t.Fatal(err)
	}
	if got, want := list(), "10.88.0.0/26 blackhole; 10.88.0.64/26 via 10.99.0.9"; got != want {
		t.Fatalf("routes %q, want %q", got, want)
	}
	// A bad table is refused whole: the routes stay as they were.
	for _, tc := range []struct {
		table map[netip.Prefix]netip.Addr
		wants string
	}{
		{map[netip.Prefix]netip.Addr{p("10.88.0.192/26"): c.nodeAddr["B"], p("192.168.0.0/26"): c.nodeAddr["B"]}, "outside every pool"},
		{map[netip.Prefix]netip.Addr{p("10.88.0.192/26"): c.nodeAddr["B"], p("10.88.1.0/24"): c.nodeAddr["B"]}, "not a /26 block"},
		{map[netip.Prefix]netip.Addr{p("10.88.0.192/26"): c.nodeAddr["B"], p("fd00:88::/122"): c.nodeAddr["B"]}, "not of the block's family"},
	} {
		err := m.SyncRoutes(tc.table)
		if err == nil || !strings.Contains(err.Error(), tc.wants) {
			t.Errorf("SyncRoutes(%v) = %v, want %q", tc.table, err, tc.wants)
		}
		if got, want := list(), "10.88.0.0/26 blackhole; 10.88.0.64/26 via 10.99.0.9"; got != want {
			t.Fatalf("after a refused table: routes %q, want %q", got, want)
		}
	}
	// IPv6 blocks route the same way, via the node's IPv6 address.
	table[p("fd00:88::40/122")] = c.nodeV6["B"]
	table[p("fd00:88::/122")] = c.nodeV6["A"]
	if err := m.SyncRoutes(table); err != nil {
		t.Fatal(err)
	}
	if got, want := list(), "10.88.0.0/26 blackhole; 10.88.0.64/26 via 10.99.0.9; fd00:88::/122 blackhole; fd00:88::40/122 via fd99::2"; got != want {
		t.Fatalf("routes %q, want %q", got, want)
	}
	if err := m.SyncRoutes(nil); err != nil || list() != "" {
		t.Fatalf("empty table left %q (%v)", list(), err)
	}
}

// Package network benchmarks Berth's routed veth networking against the
// alternatives, in one run on one machine:
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/network/
//
// Throughput is one iperf3 TCP stream (and four across hosts), latency the
// mean ping round trip and the mean TCP request/response time; ratios are
// against a bare veth pair, the floor. Every path is measured in several
// interleaved rounds and reported by its median, since the machine is
// shared.
package network

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/network"
	"github.com/berth-dev/berth/network/ipam"
	"github.com/berth-dev/berth/network/netnstest"
	"github.com/berth-dev/berth/network/policy"
)

const (
	iperfSeconds = "2"
	rounds       = 5
)

// iperf runs an iperf3 server in srv on bind and a client in cli that
// connects to addr (bind, or a published port leading there), and returns
// Gbit/s.
func iperf(b *testing.B, srv, cli netnstest.NS, bind, addr string, streams int) float64 {
	b.Helper()
	s := srv.Cmd("iperf3", "-s", "-B", bind)
	if err := s.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { s.Process.Kill(); s.Wait() }()
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	// The server takes a moment to listen; until then the client fails
	// (iperf3 -J reports that in the JSON, not always in its exit code).
	var out string
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		out, _ = cli.Try("iperf3", "-c", addr, "-t", iperfSeconds, "-P", strconv.Itoa(streams), "-J")
		r.Error = ""
		if err := json.Unmarshal([]byte(out), &r); err == nil && r.Error == "" && r.End.SumReceived.BitsPerSecond > 0 {
			return r.End.SumReceived.BitsPerSecond / 1e9
		}
	}
	b.Fatalf("iperf3 to %s: %s", addr, out)
	return 0
}

var rttRe = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/`)

// rtt is the mean ping round trip in microseconds.
func rtt(b *testing.B, from netnstest.NS, to string) float64 {
	b.Helper()
	out := from.Run(b, "ping", "-q", "-c", "300", "-i", "0.002", to)
	m := rttRe.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("ping output: %s", out)
	}
	ms, _ := strconv.ParseFloat(m[1], 64)
	return ms * 1000
}

// echo serves 1-byte echoes on bind:port in srv until the benchmark ends.
func echo(b *testing.B, srv netnstest.NS, bind string, port int) {
	b.Helper()
	l := srv.Listen(b, "tcp", fmt.Sprintf("%s:%d", bind, port))
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// tcpRR is the mean time of a 1-byte request and its 1-byte answer over
// one TCP connection from cli, in microseconds.
func tcpRR(b *testing.B, cli netnstest.NS, target string) float64 {
	b.Helper()
	c, err := cli.Dial("tcp", target, 2*time.Second)
	if err != nil {
		b.Fatalf("rr dial %s: %v", target, err)
	}
	defer c.Close()
	const n = 5000
	buf := []byte{1}
	start := time.Now()
	for range n {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
	return float64(time.Since(start).Nanoseconds()) / 1e3 / n
}

// path is one way from a client to a server, measured in rounds.
type path struct {
	name     string
	srv, cli netnstest.NS
	bind     string // the server's own address
	addr     string // what the client dials: bind, or a published host address
	streams  int
	rrPort   int  // 0: no request/response measurement
	ping     bool // whether ping takes this path (not through a port map)
	gbps     []float64
	rtt, rr  []float64
}

func (p *path) measure(b *testing.B) {
	p.gbps = append(p.gbps, iperf(b, p.srv, p.cli, p.bind, p.addr, p.streams))
	if p.ping {
		p.rtt = append(p.rtt, rtt(b, p.cli, p.addr))
	}
	if p.rrPort != 0 {
		p.rr = append(p.rr, tcpRR(b, p.cli, fmt.Sprintf("%s:%d", p.addr, p.rrPort)))
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func manager(b *testing.B, host netnstest.NS, node, uplink string, store ipam.Store) *network.Manager {
	b.Helper()
	m, err := network.New(network.Config{Node: node, HostNetNS: host.Path, Uplink: uplink, Store: store,
		IPAM: ipam.Config{Pools: []ipam.Pool{{Prefix: netip.MustParsePrefix("10.88.0.0/16"), BlockBits: 26}}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

func store(b *testing.B) ipam.Store {
	s, err := ipam.NewFileStore(filepath.Join(b.TempDir(), "ipam.json"))
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func attach(b *testing.B, m *network.Manager, ns netnstest.NS, id, tenant string) netip.Addr {
	b.Helper()
	a, err := m.Attach(network.Container{ID: id, NetNS: ns.Path, Tenant: tenant})
	if err != nil {
		b.Fatal(err)
	}
	return a.Addrs[0]
}

// tenantPolicy is a realistic policy: two tenants plus a label rule, so
// that the measured path passes real lookups on its first packet.
func tenantPolicy(b *testing.B, m *network.Manager, eps []policy.Endpoint, ports []policy.PortMap) {
	b.Helper()
	eps = append(eps, policy.Endpoint{ID: "other", Tenant: "globex", Addrs: []netip.Addr{netip.MustParseAddr("10.88.200.1")}})
	rules := []policy.Rule{{Name: "r", Target: policy.Selector{Tenant: "acme"},
		Peers: []policy.Peer{{Selector: &policy.Selector{Tenant: "globex"}}}, Ports: []policy.Port{{Proto: "tcp", Port: 443}}}}
	if err := m.ApplyPolicy(eps, rules, ports); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkDataPath(b *testing.B) {
	netnstest.RequireRoot(b, "iperf3", "ping")
	tag := netnstest.Unique()
	ns := func(n string) netnstest.NS { return netnstest.New(b, "bb"+tag+"-"+n) }
	var paths []*path

	// Floor: a bare veth pair.
	v1, v2 := ns("v1"), ns("v2")
	netnstest.Link(b, v1, "eth0", "10.0.0.1/24", v2, "eth0", "10.0.0.2/24", 1500)
	paths = append(paths, &path{name: "bare veth", srv: v1, cli: v2, bind: "10.0.0.1", streams: 1, rrPort: 7001, ping: true})

	// Berth: two containers on one host, /32 routes, proxy ARP, tenant
	// policy enforced.
	h1 := ns("h1")
	m1 := manager(b, h1, "h1", "", store(b))
	c1, c2 := ns("c1"), ns("c2")
	a1, a2 := attach(b, m1, c1, "c1", "acme"), attach(b, m1, c2, "c2", "acme")
	tenantPolicy(b, m1, []policy.Endpoint{{ID: "c1", Tenant: "acme", Addrs: []netip.Addr{a1}}, {ID: "c2", Tenant: "acme", Addrs: []netip.Addr{a2}}}, nil)
	paths = append(paths, &path{name: "berth routed veth + policy", srv: c1, cli: c2, bind: a1.String(), streams: 1, rrPort: 7001, ping: true})

	// The same without any policy table.
	h2 := ns("h2")
	m2 := manager(b, h2, "h2", "", store(b))
	c3, c4 := ns("c3"), ns("c4")
	a3, _ := attach(b, m2, c3, "c3", "acme"), attach(b, m2, c4, "c4", "acme")
	paths = append(paths, &path{name: "berth routed veth, no policy", srv: c3, cli: c4, bind: a3.String(), streams: 1, rrPort: 7001, ping: true})

	// Docker's default: a Linux bridge.
	bh, b1, b2 := ns("bh"), ns("b1"), ns("b2")
	bh.Run(b, "ip", "link", "add", "br0", "type", "bridge")
	bh.Run(b, "ip", "addr", "add", "10.1.0.254/24", "dev", "br0")
	bh.Run(b, "ip", "link", "set", "br0", "up")
	netnstest.Link(b, bh, "p1", "", b1, "eth0", "10.1.0.1/24", 1500)
	netnstest.Link(b, bh, "p2", "", b2, "eth0", "10.1.0.2/24", 1500)
	bh.Run(b, "ip", "link", "set", "p1", "master", "br0")
	bh.Run(b, "ip", "link", "set", "p2", "master", "br0")
	paths = append(paths, &path{name: "linux bridge", srv: b1, cli: b2, bind: "10.1.0.1", streams: 1, rrPort: 7001, ping: true})

	// A published port: a client outside reaches a container through the
	// host's DNAT, with tenant policy in place.
	h3, c5, ext := ns("h3"), ns("c5"), ns("ext")
	netnstest.Link(b, h3, "up0", "10.98.0.1/24", ext, "eth0", "10.98.0.2/24", 1500)
	m3 := manager(b, h3, "h3", "up0", store(b))
	a5 := attach(b, m3, c5, "c5", "acme")
	tenantPolicy(b, m3, []policy.Endpoint{{ID: "c5", Tenant: "acme", Addrs: []netip.Addr{a5}}}, []policy.PortMap{
		{Proto: "tcp", HostPort: 5201, ContainerAddr: a5, ContainerPort: 5201},
		{Proto: "tcp", HostPort: 7001, ContainerAddr: a5, ContainerPort: 7001}})
	paths = append(paths, &path{name: "published port (DNAT) + policy", srv: c5, cli: ext, bind: a5.String(), addr: "10.98.0.1", streams: 1, rrPort: 7001})

	// Across two hosts: Berth's routes against a VXLAN overlay over the
	// same fabric.
	f, hA, hB := ns("f"), ns("hA"), ns("hB")
	f.Run(b, "ip", "link", "add", "br0", "type", "bridge")
	f.Run(b, "ip", "link", "set", "br0", "up")
	netnstest.Link(b, hA, "fab0", "10.99.0.1/24", f, "pA", "", 1500)
	netnstest.Link(b, hB, "fab0", "10.99.0.2/24", f, "pB", "", 1500)
	f.Run(b, "ip", "link", "set", "pA", "master", "br0")
	f.Run(b, "ip", "link", "set", "pB", "master", "br0")
	st := store(b)
	mA, mB := manager(b, hA, "A", "fab0", st), manager(b, hB, "B", "fab0", st)
	x1, x2 := ns("x1"), ns("x2")
	xa1, xa2 := attach(b, mA, x1, "x1", "acme"), attach(b, mB, x2, "x2", "acme")
	s, err := st.Load()
	if err != nil {
		b.Fatal(err)
	}
	table, err := network.BlockTable(s.Blocks, map[string][]netip.Addr{
		"A": {netip.MustParseAddr("10.99.0.1")}, "B": {netip.MustParseAddr("10.99.0.2")}})
	if err != nil {
		b.Fatal(err)
	}
	eps := []policy.Endpoint{{ID: "x1", Tenant: "acme", Addrs: []netip.Addr{xa1}}, {ID: "x2", Tenant: "acme", Addrs: []netip.Addr{xa2}}}
	for _, mm := range []*network.Manager{mA, mB} {
		if err := mm.SyncRoutes(table); err != nil {
			b.Fatal(err)
		}
		tenantPolicy(b, mm, eps, nil)
	}
	paths = append(paths,
		&path{name: "2 hosts: berth routed + policy", srv: x1, cli: x2, bind: xa1.String(), streams: 1, rrPort: 7001, ping: true},
		&path{name: "2 hosts: berth routed + policy", srv: x1, cli: x2, bind: xa1.String(), streams: 4})

	for i, hn := range []netnstest.NS{hA, hB} {
		local, remote := fmt.Sprintf("10.99.0.%d", i+1), fmt.Sprintf("10.99.0.%d", 2-i)
		hn.Run(b, "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "local", local, "remote", remote, "dstport", "4789", "dev", "fab0")
		hn.Run(b, "ip", "link", "add", "vbr", "type", "bridge")
		hn.Run(b, "ip", "link", "set", "vx0", "master", "vbr")
		hn.Run(b, "ip", "link", "set", "vx0", "up")
		hn.Run(b, "ip", "link", "set", "vbr", "up")
	}
	o1, o2 := ns("o1"), ns("o2")
	netnstest.Link(b, hA, "ov1", "", o1, "eth0", "10.3.0.1/24", 1450)
	netnstest.Link(b, hB, "ov2", "", o2, "eth0", "10.3.0.2/24", 1450)
	hA.Run(b, "ip", "link", "set", "ov1", "master", "vbr")
	hB.Run(b, "ip", "link", "set", "ov2", "master", "vbr")
	paths = append(paths,
		&path{name: "2 hosts: vxlan overlay", srv: o1, cli: o2, bind: "10.3.0.1", streams: 1, rrPort: 7001, ping: true},
		&path{name: "2 hosts: vxlan overlay", srv: o1, cli: o2, bind: "10.3.0.1", streams: 4})

	for _, p := range paths {
		if p.addr == "" {
			p.addr = p.bind
		}
		if p.rrPort != 0 {
			echo(b, p.srv, p.bind, p.rrPort)
		}
	}
	// Rounds interleave the paths, so that a busy moment of the machine
	// does not fall on one path only; each figure is the median.
	for range rounds {
		for _, p := range paths {
			p.measure(b)
		}
	}

	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("load average at the end: %s", load)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "median of %d rounds\tstreams\tGbit/s\t× bare\tping µs\tΔ bare\tTCP RR µs\tΔ bare\n", rounds)
	floor := paths[0]
	for _, p := range paths {
		ping, rr := "-\t-", "-\t-"
		if len(p.rtt) > 0 {
			ping = fmt.Sprintf("%.1f\t%+.1f", median(p.rtt), median(p.rtt)-median(floor.rtt))
		}
		if len(p.rr) > 0 {
			rr = fmt.Sprintf("%.1f\t%+.1f", median(p.rr), median(p.rr)-median(floor.rr))
		}
		fmt.Fprintf(w, "%s\t%d\t%.2f\t%.2f\t%s\t%s\n", p.name, p.streams, median(p.gbps), median(p.gbps)/median(floor.gbps), ping, rr)
	}
	w.Flush()
	b.ReportMetric(median(paths[1].gbps)/median(floor.gbps), "berth/bare")
}

// BenchmarkAttach attaches 1,000 containers to one host and compares the
// per-container time with the same set-up done by `ip` commands.
func BenchmarkAttach(b *testing.B) {
	netnstest.RequireRoot(b)
	const n = 1000
	tag := netnstest.Unique()
	h := netnstest.New(b, "bb"+tag+"-h")
	m := manager(b, h, "h", "", store(b))
	nss := make([]netnstest.NS, n)
	for i := range nss {
		nss[i] = netnstest.New(b, fmt.Sprintf("bb%s-%d", tag, i))
	}
	var total, last100 time.Duration
	cpu0 := cpuTime(b)
	for i, ns := range nss {
		start := time.Now()
		attach(b, m, ns, fmt.Sprint("c", i), "acme")
		d := time.Since(start)
		total += d
		if i >= n-100 {
			last100 += d
		}
	}
	// CPU time (user and system, in this process and the kernel on its
	// behalf) is what an attach costs whatever else the machine runs.
	attachCPU := (cpuTime(b) - cpu0) / n
	eps := make([]policy.Endpoint, 0, n)
	for i := range n {
		eps = append(eps, policy.Endpoint{ID: fmt.Sprint("c", i), Tenant: []string{"acme", "globex"}[i%2],
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 88, byte(i >> 8), byte(i)})}})
	}
	start := time.Now()
	if err := m.ApplyPolicy(eps, nil, nil); err != nil {
		b.Fatal(err)
	}
	policyTime := time.Since(start)
	start = time.Now()
	for i := range 100 {
		if err := m.Detach(fmt.Sprint("c", i)); err != nil {
			b.Fatal(err)
		}
	}
	detach := time.Since(start) / 100

	// The same set-up with ip commands, for 20 more containers on the
	// loaded host.
	const k = 20
	var ipTotal time.Duration
	for i := range k {
		c := netnstest.New(b, fmt.Sprintf("bb%s-ip%d", tag, i))
		hif, addr := fmt.Sprintf("ipv%d", i), fmt.Sprintf("10.77.0.%d", i+1)
		cmds := [][]string{
			{"ip", "-n", h.Name, "link", "add", hif, "type", "veth", "peer", "name", "eth0", "netns", c.Name},
			{"ip", "netns", "exec", h.Name, "sysctl", "-qw", "net.ipv4.conf." + hif + ".proxy_arp=1"},
			{"ip", "-n", h.Name, "link", "set", hif, "up"},
			{"ip", "-n", c.Name, "addr", "add", addr + "/32", "dev", "eth0"},
			{"ip", "-n", c.Name, "link", "set", "eth0", "up"},
			{"ip", "-n", c.Name, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"},
			{"ip", "-n", c.Name, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"},
			{"ip", "-n", h.Name, "route", "add", addr + "/32", "dev", hif},
		}
		start := time.Now()
		for _, cmd := range cmds {
			if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
				b.Fatalf("%s: %v: %s", strings.Join(cmd, " "), err, out)
			}
		}
		ipTotal += time.Since(start)
	}
	start = time.Now()
	for i := range k {
		if out, err := exec.Command("ip", "-n", h.Name, "link", "del", fmt.Sprintf("ipv%d", i)).CombinedOutput(); err != nil {
			b.Fatalf("ip link del: %v: %s", err, out)
		}
	}
	ipDetach := time.Since(start) / k
	per := total / n
	fmt.Printf("attach, berth (netlink, file IPAM): %v per container over %d; last 100: %v; CPU %v per container\n", per, n, last100/100, attachCPU)
	fmt.Printf("attach, ip commands:                %v per container (%.0f× berth)\n", ipTotal/k, float64(ipTotal/k)/float64(per))
	fmt.Printf("detach, berth:                      %v per container\n", detach)
	fmt.Printf("detach, ip link del:                %v per container\n", ipDetach)
	fmt.Printf("policy apply, %d endpoints:       %v\n", n, policyTime)
	b.ReportMetric(float64(per.Microseconds()), "µs/attach")
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

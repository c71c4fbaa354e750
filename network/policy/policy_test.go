package policy

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func eps() []Endpoint {
	a := netip.MustParseAddr
	return []Endpoint{
		{ID: "web1", Tenant: "acme", Addrs: []netip.Addr{a("10.88.0.1"), a("fd00:88::1")}, Labels: map[string]string{"app": "web"}},
		{ID: "web2", Tenant: "acme", Addrs: []netip.Addr{a("10.88.0.2"), a("fd00:88::2")}, Labels: map[string]string{"app": "web"}},
		{ID: "db", Tenant: "acme", Addrs: []netip.Addr{a("10.88.0.3")}, Labels: map[string]string{"app": "db"}},
		{ID: "api", Tenant: "globex", Addrs: []netip.Addr{a("10.88.0.64"), a("fd00:88::40")}, Labels: map[string]string{"app": "api"}},
	}
}

func TestCompileGolden(t *testing.T) {
	rules := []Rule{
		{Name: "globex-to-acme-web", Direction: Ingress,
			Target: Selector{Tenant: "acme", Labels: map[string]string{"app": "web"}},
			Peers:  []Peer{{Selector: &Selector{Tenant: "globex"}}, {CIDR: netip.MustParsePrefix("192.168.0.0/24")}, {CIDR: netip.MustParsePrefix("2001:db8::/32")}},
			Ports:  []Port{{Proto: "tcp", Port: 443}, {Proto: "udp"}}},
		{Name: "db-egress", Direction: Egress,
			Target: Selector{Tenant: "acme", Labels: map[string]string{"app": "db"}},
			Peers:  []Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}},
			Ports:  []Port{{Proto: "tcp", Port: 53}}},
		{Name: "selects-nothing", Target: Selector{Tenant: "nobody"}, Peers: []Peer{{Selector: &Selector{Tenant: "acme"}}}},
	}
	ports := []PortMap{
		{Proto: "tcp", HostPort: 8080, ContainerAddr: netip.MustParseAddr("fd00:88::1"), ContainerPort: 80},
		{Proto: "tcp", HostPort: 8080, ContainerAddr: netip.MustParseAddr("10.88.0.1"), ContainerPort: 80},
	}
	rs, err := Compile(eps(), rules, ports)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "ruleset.golden")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(golden, []byte(rs.String()), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if rs.String() != string(want) {
		t.Errorf("ruleset:\n%s\nwant:\n%s", rs, want)
	}
}

func TestRuleCountDoesNotGrowWithEndpoints(t *testing.T) {
	rule := Rule{Name: "r", Target: Selector{Tenant: "t"}, Peers: []Peer{{Selector: &Selector{Tenant: "u"}}}}
	count := func(n int) (int, int) {
		var e []Endpoint
		for i := range n {
			tenant := "t"
			if i%2 == 1 {
				tenant = "u"
			}
			e = append(e, Endpoint{ID: "x", Tenant: tenant, Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})}})
		}
		rs, err := Compile(e, []Rule{rule}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return len(rs.Ingress) + len(rs.Egress), len(rs.Tenant)
	}
	r10, e10 := count(10)
	r1000, e1000 := count(1000)
	if r10 != r1000 || e10 != 10 || e1000 != 1000 {
		t.Fatalf("rules %d vs %d, elements %d vs %d", r10, r1000, e10, e1000)
	}
}

func TestRangesMerge(t *testing.T) {
	p := netip.MustParsePrefix
	got := fmtRanges(ranges([]netip.Prefix{p("10.0.0.5/32"), p("10.0.0.0/30"), p("10.0.0.4/32"), p("10.0.1.0/24"), p("10.0.1.7/32"), p("255.255.255.255/32")}))
	if want := "{ 10.0.0.0-10.0.0.5, 10.0.1.0-10.0.1.255, 255.255.255.255 }"; got != want {
		t.Fatalf("got %s want %s", got, want)
	}
	got = fmtRanges(ranges([]netip.Prefix{p("fd00::1/128"), p("fd00::/127"), p("ffff::/16"), p("ffff:ffff::/32")}))
	if want := "{ fd00::-fd00::1, ffff::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff }"; got != want {
		t.Fatalf("got %s want %s", got, want)
	}
}

func TestCompileRejectsBadInput(t *testing.T) {
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name  string
		eps   []Endpoint
		rules []Rule
		ports []PortMap
		wants string
	}{
		{"endpoint without tenant", []Endpoint{{ID: "x", Addrs: []netip.Addr{a("10.0.0.1")}}}, nil, nil, "no tenant"},
		{"address in two tenants", []Endpoint{{ID: "x", Tenant: "a", Addrs: []netip.Addr{a("10.0.0.1")}}, {ID: "y", Tenant: "b", Addrs: []netip.Addr{a("10.0.0.1")}}}, nil, nil, "two tenants"},
		{"port without protocol", nil, []Rule{{Name: "r", Target: Selector{Tenant: "a"}, Peers: []Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}}, Ports: []Port{{Port: 80}}}}, nil, "needs a protocol"},
		{"bad protocol", nil, []Rule{{Name: "r", Target: Selector{Tenant: "a"}, Peers: []Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}}, Ports: []Port{{Proto: "sctp"}}}}, nil, "not tcp or udp"},
		{"empty peer", nil, []Rule{{Name: "r", Target: Selector{Tenant: "a"}, Peers: []Peer{{}}}}, nil, "neither selector nor CIDR"},
		{"host port twice", nil, nil, []PortMap{{Proto: "tcp", HostPort: 1, ContainerAddr: a("10.0.0.1"), ContainerPort: 1}, {Proto: "tcp", HostPort: 1, ContainerAddr: a("10.0.0.2"), ContainerPort: 1}}, "published twice"},
		{"endpoint without address", []Endpoint{{ID: "x", Tenant: "a"}}, nil, nil, "no address"},
		{"mapped address", []Endpoint{{ID: "x", Tenant: "a", Addrs: []netip.Addr{a("::ffff:10.0.0.1")}}}, nil, nil, "not a plain"},
		{"rule without peers", nil, []Rule{{Name: "r", Target: Selector{Tenant: "a"}}}, nil, "no peers"},
		{"unknown direction", nil, []Rule{{Name: "r", Direction: 7, Target: Selector{Tenant: "a"}, Peers: []Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}}}}, nil, "unknown direction"},
		{"publish without address", nil, nil, []PortMap{{Proto: "tcp", HostPort: 1, ContainerPort: 1}}, "not a plain"},
		{"publish port 0", nil, nil, []PortMap{{Proto: "tcp", HostPort: 0, ContainerAddr: a("10.0.0.1"), ContainerPort: 1}}, "port 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(tc.eps, tc.rules, tc.ports)
			if err == nil || !strings.Contains(err.Error(), tc.wants) {
				t.Fatalf("err = %v, want %q", err, tc.wants)
			}
		})
	}
}

func TestShapeFits(t *testing.T) {
	a := netip.MustParseAddr
	rules := []Rule{{Name: "in", Target: Selector{Tenant: "acme", Labels: map[string]string{"app": "db"}},
		Peers: []Peer{{Selector: &Selector{Tenant: "globex"}}}, Ports: []Port{{Proto: "tcp", Port: 5432}}}}
	compile := func(eps []Endpoint, rules []Rule, ports []PortMap) Ruleset {
		rs, err := Compile(eps, rules, ports)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	base := ShapeOf(compile(eps(), rules, nil))
	if base.Tenants != 2 {
		t.Fatalf("shape %+v, want 2 tenants", base)
	}
	more := append(eps(), Endpoint{ID: "web3", Tenant: "acme", Addrs: []netip.Addr{a("10.88.0.9")}, Labels: map[string]string{"app": "db"}})
	newTenant := append(eps(), Endpoint{ID: "x", Tenant: "initech", Addrs: []netip.Addr{a("10.88.0.10")}})
	acmeOnly := eps()[:3]
	otherPort := []Rule{rules[0]}
	otherPort[0].Ports = []Port{{Proto: "tcp", Port: 5433}}
	published := []PortMap{{Proto: "tcp", HostPort: 8080, ContainerAddr: a("10.88.0.1"), ContainerPort: 80}}
	for _, c := range []struct {
		name string
		rs   Ruleset
		want bool
	}{
		{"itself", compile(eps(), rules, nil), true},
		{"a container more of a tenant there, in a rule's ranges", compile(more, rules, nil), true},
		// A rule whose peers are all gone compiles to nothing.
		{"a tenant fewer, the rule's only peers", compile(acmeOnly, rules, nil), false},
		{"a new tenant", compile(newTenant, rules, nil), false},
		{"another port", compile(eps(), otherPort, nil), false},
		{"a published port", compile(eps(), rules, published), false},
	} {
		if got := base.Fits(c.rs); got != c.want {
			t.Errorf("%s: fits %v, want %v", c.name, got, c.want)
		}
	}
	// Without rules, fewer tenants (down to none) fit: their chains stay.
	bare := ShapeOf(compile(eps(), nil, nil))
	for _, e := range [][]Endpoint{acmeOnly, nil} {
		if !bare.Fits(compile(e, nil, nil)) {
			t.Errorf("%d endpoints do not fit a table for %d tenants", len(e), bare.Tenants)
		}
	}
}

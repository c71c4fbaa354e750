package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/berth-dev/berth/network/netnstest"
)

// nsHandle opens ns for nftables, closed when the test ends.
func nsHandle(t *testing.T, ns netnstest.NS) netns.NsHandle {
	t.Helper()
	h, err := netns.GetFromPath(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// kernelCounts applies rs in ns and reads back, from the kernel, how many
// rules the table holds and how many elements its tenant maps hold.
func kernelCounts(t *testing.T, ns netnstest.NS, rs Ruleset) (rules, elems int) {
	t.Helper()
	h := nsHandle(t, ns)
	if err := Apply(int(h), rs); err != nil {
		t.Fatal(err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		rs, err := c.GetRules(table, ch)
		if err != nil {
			t.Fatal(err)
		}
		rules += len(rs)
	}
	for _, name := range []string{"tenant4", "tenant6"} {
		set, err := c.GetSetByName(table, name)
		if err != nil {
			t.Fatal(err)
		}
		es, err := c.GetSetElements(set)
		if err != nil {
			t.Fatal(err)
		}
		elems += len(es)
	}
	return rules, elems
}

// The kernel's rule count stays put as containers come; only set elements
// grow.
func TestAppliedRuleCountDoesNotGrowWithEndpoints(t *testing.T) {
	netnstest.RequireRoot(t, "nft")
	ns := netnstest.New(t, "bp"+netnstest.Unique())
	rules := []Rule{
		{Name: "in", Target: Selector{Tenant: "t0", Labels: map[string]string{"app": "db"}}, Peers: []Peer{{Selector: &Selector{Tenant: "t1"}}},
			Ports: []Port{{Proto: "tcp", Port: 5432}}},
		{Name: "out", Direction: Egress, Target: Selector{Tenant: "t1"}, Peers: []Peer{{CIDR: netip.MustParsePrefix("192.0.2.0/24")}}},
	}
	ports := []PortMap{{Proto: "tcp", HostPort: 8080, ContainerAddr: netip.MustParseAddr("10.88.0.0"), ContainerPort: 80}}
	compile := func(n int) Ruleset {
		var eps []Endpoint
		for i := range n {
			eps = append(eps, Endpoint{ID: fmt.Sprint("c", i), Tenant: fmt.Sprint("t", i%2),
				Labels: map[string]string{"app": []string{"db", "web"}[i/2%2]},
				Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 88, byte(i >> 8), byte(i)}),
					netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x88, 14: byte(i >> 8), 15: byte(i)})}})
		}
		rs, err := Compile(eps, rules, ports)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	r10, e10 := kernelCounts(t, ns, compile(10))
	r1000, e1000 := kernelCounts(t, ns, compile(1000))
	if r10 != r1000 {
		t.Fatalf("rules: %d with 10 containers, %d with 1000", r10, r1000)
	}
	if e10 != 20 || e1000 != 2000 {
		t.Fatalf("tenant map elements: %d and %d, want 20 and 2000", e10, e1000)
	}
	// Replacing is whole: one table, no leftovers from the first apply.
	out := ns.Run(t, "nft", "list", "tables")
	if strings.Count(out, "table inet "+TableName) != 1 {
		t.Fatalf("tables after two applies:\n%s", out)
	}
	// The host's own tools read what Berth installed: an operator's
	// "nft list ruleset" must work on a Berth host.
	out = ns.Run(t, "nft", "list", "ruleset")
	for _, want := range []string{"ip saddr vmap @tenant4", "ip6 saddr vmap @tenant6", "ip daddr @members4_1 accept",
		`iifname "bv*"`, "ct status dnat accept", "fib saddr . iif oif 0 drop", "dnat ip to 10.88.0.0:80", `comment "in"`} {
		if !strings.Contains(out, want) {
			t.Errorf("nft list ruleset lacks %q", want)
		}
	}
	h := nsHandle(t, ns)
	if err := Remove(int(h)); err != nil {
		t.Fatal(err)
	}
	if out := ns.Run(t, "nft", "list", "tables"); strings.Contains(out, TableName) {
		t.Fatalf("table left after Remove:\n%s", out)
	}
}

// A change that fits the table in place refills its sets (its chains keep
// their handles) and leaves what a whole apply would; one tenant fewer
// still fits (its chain stays, empty); a tenant more replaces the table.
func TestUpdateRefillsSetsInPlace(t *testing.T) {
	netnstest.RequireRoot(t, "nft")
	ns := netnstest.New(t, "bp"+netnstest.Unique())
	h := nsHandle(t, ns)
	rules := []Rule{{Name: "in", Target: Selector{Tenant: "t0"}, Peers: []Peer{{Selector: &Selector{Tenant: "t1"}}}, Ports: []Port{{Proto: "tcp", Port: 80}}}}
	compile := func(first, n, tenants int) Ruleset {
		var eps []Endpoint
		for i := first; i < first+n; i++ {
			eps = append(eps, Endpoint{ID: fmt.Sprint("c", i), Tenant: fmt.Sprint("t", i%tenants),
				Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 88, byte(i >> 8), byte(i)}), netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x88, 14: byte(i >> 8), 15: byte(i)})}})
		}
		rs, err := Compile(eps, rules, nil)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	handle := func() string {
		for _, l := range strings.Split(ns.Run(t, "nft", "-a", "list", "table", "inet", TableName), "\n") {
			if strings.Contains(l, "chain forward") {
				return l
			}
		}
		t.Fatal("no forward chain")
		return ""
	}
	update := func(installed Shape, rs Ruleset) Shape {
		t.Helper()
		s, err := Update(int(h), &installed, rs)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	whole := func(rs Ruleset) string {
		t.Helper()
		if err := Apply(int(h), rs); err != nil {
			t.Fatal(err)
		}
		return ns.Run(t, "nft", "list", "ruleset")
	}

	a, b := compile(0, 10, 2), compile(5, 300, 2)
	if err := Apply(int(h), a); err != nil {
		t.Fatal(err)
	}
	before := handle()
	if s := update(ShapeOf(a), b); s.Tenants != 2 {
		t.Fatalf("shape after a refill: %+v", s)
	}
	refilled := ns.Run(t, "nft", "list", "ruleset")
	if after := handle(); after != before {
		t.Fatalf("the table was replaced: %q, then %q", before, after)
	}
	if w := whole(b); w != refilled {
		t.Fatalf("refilled:\n%s\nwhole apply:\n%s", refilled, w)
	}

	// A third tenant does not fit: the table is replaced, and right.
	c := compile(0, 12, 3)
	before = handle()
	three := update(ShapeOf(b), c)
	if handle() == before || three.Tenants != 3 {
		t.Fatalf("a new tenant refilled the old table (shape %+v)", three)
	}
	got := ns.Run(t, "nft", "list", "ruleset")
	if w := whole(c); w != got {
		t.Fatalf("updated:\n%s\nwhole apply:\n%s", got, w)
	}

	// Back to two tenants: the third's chain stays, its set emptied.
	before = handle()
	if s := update(three, b); s.Tenants != 3 || handle() != before {
		t.Fatalf("one tenant fewer replaced the table (shape %+v)", s)
	}
	got = ns.Run(t, "nft", "list", "ruleset")
	_, set, _ := strings.Cut(got, "set members4_3 {")
	set, _, _ = strings.Cut(set, "}")
	if !strings.Contains(got, "chain same4_3") || strings.Contains(set, "elements") {
		t.Fatalf("after a tenant left, the third tenant's chain and an empty set should stay:\n%s", got)
	}
	if strings.Count(got, "10.88.1.") != strings.Count(whole(b), "10.88.1.") {
		t.Fatal("a refill after a tenant left holds other addresses than a whole apply")
	}
}

// Updates from a shape that knows its sets' contents change only what
// differs, element by element, and leave what a whole apply would:
// endpoints added, removed, and an address moved to another tenant.
func TestUpdateChangesOnlyWhatDiffers(t *testing.T) {
	netnstest.RequireRoot(t, "nft")
	ns := netnstest.New(t, "bp"+netnstest.Unique())
	h := nsHandle(t, ns)
	rules := []Rule{{Name: "in", Target: Selector{Tenant: "t0"}, Peers: []Peer{{Selector: &Selector{Tenant: "t1"}}}, Ports: []Port{{Proto: "tcp", Port: 80}}}}
	compile := func(tenantOf map[int]int) Ruleset {
		var eps []Endpoint
		for i, tn := range tenantOf {
			eps = append(eps, Endpoint{ID: fmt.Sprint("c", i), Tenant: fmt.Sprint("t", tn),
				Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 88, 0, byte(i)}), netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x88, 15: byte(i)})}})
		}
		rs, err := Compile(eps, rules, nil)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	var shape *Shape
	step := func(what string, rs Ruleset) {
		t.Helper()
		s, err := Update(int(h), shape, rs)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		shape = &s
		got := ns.Run(t, "nft", "list", "ruleset")
		if err := Apply(int(h), rs); err != nil {
			t.Fatal(err)
		}
		if want := ns.Run(t, "nft", "list", "ruleset"); got != want {
			t.Fatalf("%s: updated\n%s\nwhole apply:\n%s", what, got, want)
		}
	}
	m := map[int]int{1: 0, 2: 1, 3: 0}
	step("first", compile(m))
	if shape.sets == nil {
		t.Fatal("the shape of an apply does not know its sets")
	}
	m[4] = 1
	step("one more", compile(m))
	delete(m, 1)
	step("one fewer", compile(m))
	m[3] = 1
	step("moved to another tenant", compile(m))
	step("unchanged", compile(m))
}

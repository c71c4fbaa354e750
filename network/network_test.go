package network

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestHostIfNameFitsAndIsStable(t *testing.T) {
	a, b := HostIfName("c1"), HostIfName(strings.Repeat("x", 200))
	if len(a) > 15 || len(b) > 15 || !strings.HasPrefix(a, "bv") || a != HostIfName("c1") || a == HostIfName("c2") {
		t.Fatalf("names %q %q", a, b)
	}
}

func TestPlanRoutes(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	table := map[netip.Prefix]netip.Addr{
		p("10.88.0.0/26"):  a("10.99.0.1"), // local: blackhole
		p("10.88.0.64/26"): a("10.99.0.2"),
		p("10.88.1.0/26"):  a("10.99.0.3"),
	}
	local := map[netip.Addr]bool{a("10.99.0.1"): true}
	have := []Route{
		{Dst: p("10.88.0.64/26"), Via: a("10.99.0.2")}, // kept
		{Dst: p("10.88.1.0/26"), Via: a("10.99.0.9")},  // moved node: replaced
		{Dst: p("10.88.2.0/26"), Via: a("10.99.0.4")},  // block gone
		{Dst: p("10.88.0.64/26"), Via: a("10.99.0.2")}, // duplicate
	}
	add, del := PlanRoutes(table, local, have)
	if got := fmt.Sprint(add); got != "[{10.88.0.0/26 invalid IP} {10.88.1.0/26 10.99.0.3}]" {
		t.Errorf("add = %s", got)
	}
	if got := fmt.Sprint(del); got != "[{10.88.0.64/26 10.99.0.2} {10.88.1.0/26 10.99.0.9} {10.88.2.0/26 10.99.0.4}]" {
		t.Errorf("del = %s", got)
	}
}

func TestBlockTable(t *testing.T) {
	p, a := netip.MustParsePrefix, netip.MustParseAddr
	nodes := map[string][]netip.Addr{"A": {a("10.99.0.1"), a("fd99::1")}, "B": {a("10.99.0.2")}}
	table, err := BlockTable(map[netip.Prefix]string{p("10.88.0.0/26"): "A", p("fd00:88::/122"): "A", p("10.88.0.64/26"): "B"}, nodes)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(table); got != "map[10.88.0.0/26:10.99.0.1 10.88.0.64/26:10.99.0.2 fd00:88::/122:fd99::1]" {
		t.Fatalf("table = %s", got)
	}
	for _, bad := range []map[netip.Prefix]string{{p("fd00:88::40/122"): "B"}, {p("10.88.1.0/26"): "C"}} {
		if _, err := BlockTable(bad, nodes); err == nil || !strings.Contains(err.Error(), "no address of the block's family") {
			t.Errorf("BlockTable(%v) err = %v", bad, err)
		}
	}
}

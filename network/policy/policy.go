// Package policy compiles tenant isolation, label rules and published ports
// into an nftables rule set whose rule count depends on the number of
// rules, ports and tenants, never on the number of containers: containers
// appear only as elements of sets and maps keyed by address. Established
// flows are accepted by the first rule, so policy costs nothing after a
// connection's first packet.
//
// Same-tenant traffic is one verdict-map lookup: the source address maps
// to a jump into its tenant's chain, which accepts destinations in the
// tenant's address set. (A single "destination . tenant of source" set
// would need a map result inside a concatenation, which the kernel runs
// but nft cannot print: an operator's "nft list ruleset" would abort.)
package policy

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// TableName is the nftables table (family inet) that holds Berth's policy.
const TableName = "berth"

// IfPrefix starts the name of every host-side container interface; the
// forward chain sends only their traffic through policy.
const IfPrefix = "bv"

// Endpoint is one container as policy sees it. Endpoints of every node are
// given, so that a host can judge traffic from remote containers.
type Endpoint struct {
	ID     string
	Tenant string
	Addrs  []netip.Addr // IPv4 and, where the pool has one, IPv6
	Labels map[string]string
}

// Selector matches endpoints of one tenant carrying all of Labels; empty
// Labels match every endpoint of the tenant.
type Selector struct {
	Tenant string
	Labels map[string]string
}

func (s Selector) matches(e Endpoint) bool {
	if e.Tenant != s.Tenant {
		return false
	}
	for k, v := range s.Labels {
		if e.Labels[k] != v {
			return false
		}
	}
	return true
}

// Peer is the other side of a rule: endpoints chosen by a selector, or an
// address range outside (or inside) the cluster.
type Peer struct {
	Selector *Selector
	CIDR     netip.Prefix
}

// Port is a protocol and port; Port 0 means every port of the protocol.
type Port struct {
	Proto string // "tcp" or "udp"
	Port  uint16
}

// Direction of a rule relative to the selected endpoints.
type Direction int

const (
	Ingress Direction = iota
	Egress
)

// Rule allows traffic between the endpoints Target selects and Peers, on
// Ports (all traffic when empty).
type Rule struct {
	Name      string
	Direction Direction
	Target    Selector
	Peers     []Peer
	Ports     []Port
}

// PortMap publishes a container port on the host. ContainerAddr's family
// decides which traffic it catches: publish a dual-stack container twice.
type PortMap struct {
	Proto         string // "tcp" or "udp"
	HostPort      uint16
	ContainerAddr netip.Addr
	ContainerPort uint16
}

// Range is an inclusive address range of one family, the unit of an
// interval set.
type Range struct{ From, To netip.Addr }

// Match is one compiled allow rule of one family: traffic from an address
// in Src to one in Dst, optionally restricted to a protocol and port.
type Match struct {
	Comment string
	V6      bool
	Dst     []Range
	Src     []Range
	Proto   uint8 // 0: any
	Port    uint16
}

// Ruleset is the compiled policy: data for the kernel, built by a pure
// function and diffable in tests.
type Ruleset struct {
	// Tenant numbers every endpoint address with its tenant's number.
	Tenant map[netip.Addr]uint32
	// Ingress allow rules beyond same-tenant traffic.
	Ingress []Match
	// EgressLimited holds the addresses of endpoints that an egress rule
	// selects: their egress is limited to their tenant and the Egress rules.
	EgressLimited4, EgressLimited6 []Range
	Egress                         []Match
	Publish                        []PortMap
}

// Compile turns endpoints, rules and published ports into a Ruleset.
func Compile(eps []Endpoint, rules []Rule, ports []PortMap) (Ruleset, error) {
	rs := Ruleset{Tenant: map[netip.Addr]uint32{}}
	tenants := map[string]uint32{}
	var names []string
	for _, e := range eps {
		if e.Tenant == "" {
			return Ruleset{}, fmt.Errorf("policy: endpoint %s has no tenant", e.ID)
		}
		if len(e.Addrs) == 0 {
			return Ruleset{}, fmt.Errorf("policy: endpoint %s has no address", e.ID)
		}
		for _, a := range e.Addrs {
			if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
				return Ruleset{}, fmt.Errorf("policy: endpoint %s: address %v is not a plain IPv4 or IPv6 address", e.ID, a)
			}
		}
		if _, ok := tenants[e.Tenant]; !ok {
			tenants[e.Tenant] = 0
			names = append(names, e.Tenant)
		}
	}
	// Numbers follow sorted names, so the same input compiles the same way
	// on every node and in every run.
	slices.Sort(names)
	for i, n := range names {
		tenants[n] = uint32(i + 1)
	}
	for _, e := range eps {
		for _, a := range e.Addrs {
			if t, dup := rs.Tenant[a]; dup && t != tenants[e.Tenant] {
				return Ruleset{}, fmt.Errorf("policy: address %s belongs to two tenants", a)
			}
			rs.Tenant[a] = tenants[e.Tenant]
		}
	}
	var limited []netip.Prefix
	for _, r := range rules {
		if r.Target.Tenant == "" {
			return Ruleset{}, fmt.Errorf("policy: rule %q: target has no tenant", r.Name)
		}
		if r.Direction != Ingress && r.Direction != Egress {
			return Ruleset{}, fmt.Errorf("policy: rule %q: unknown direction %d", r.Name, r.Direction)
		}
		dst := selectAddrs(eps, r.Target)
		var src []netip.Prefix
		if len(r.Peers) == 0 {
			return Ruleset{}, fmt.Errorf("policy: rule %q: no peers", r.Name)
		}
		for i, p := range r.Peers {
			switch {
			case p.Selector != nil && p.CIDR.IsValid():
				return Ruleset{}, fmt.Errorf("policy: rule %q peer %d: both selector and CIDR", r.Name, i)
			case p.Selector != nil:
				if p.Selector.Tenant == "" {
					return Ruleset{}, fmt.Errorf("policy: rule %q peer %d: selector has no tenant", r.Name, i)
				}
				src = append(src, selectAddrs(eps, *p.Selector)...)
			case p.CIDR.IsValid():
				if p.CIDR.Addr().Is4In6() || p.CIDR.Addr().Zone() != "" {
					return Ruleset{}, fmt.Errorf("policy: rule %q peer %d: %s is not a plain IPv4 or IPv6 prefix", r.Name, i, p.CIDR)
				}
				src = append(src, p.CIDR.Masked())
			default:
				return Ruleset{}, fmt.Errorf("policy: rule %q peer %d: neither selector nor CIDR", r.Name, i)
			}
		}
		if r.Direction == Egress {
			limited = append(limited, dst...)
		}
		ports := r.Ports
		if len(ports) == 0 {
			ports = []Port{{}}
		}
		for _, p := range ports {
			proto, err := protoNum(p.Proto, p.Port != 0)
			if err != nil {
				return Ruleset{}, fmt.Errorf("policy: rule %q: %w", r.Name, err)
			}
			for _, v6 := range []bool{false, true} {
				d, s := ofFamily(dst, v6), ofFamily(src, v6)
				// A rule that selects nothing (in a family) compiles to
				// nothing rather than to an empty set, which would be a rule
				// that never matches.
				if len(d) == 0 || len(s) == 0 {
					continue
				}
				m := Match{Comment: r.Name, V6: v6, Dst: ranges(d), Src: ranges(s), Proto: proto, Port: p.Port}
				if r.Direction == Egress {
					// Egress: the selected endpoints are the source.
					m.Dst, m.Src = m.Src, m.Dst
					rs.Egress = append(rs.Egress, m)
				} else {
					rs.Ingress = append(rs.Ingress, m)
				}
			}
		}
	}
	rs.EgressLimited4 = ranges(ofFamily(limited, false))
	rs.EgressLimited6 = ranges(ofFamily(limited, true))
	seen := map[string]bool{}
	for _, p := range ports {
		if p.Proto != "tcp" && p.Proto != "udp" {
			return Ruleset{}, fmt.Errorf("policy: publish %d: protocol %q is not tcp or udp", p.HostPort, p.Proto)
		}
		if p.HostPort == 0 || p.ContainerPort == 0 {
			return Ruleset{}, fmt.Errorf("policy: publish %s %d->%d: port 0", p.Proto, p.HostPort, p.ContainerPort)
		}
		if !p.ContainerAddr.IsValid() || p.ContainerAddr.Is4In6() || p.ContainerAddr.Zone() != "" {
			return Ruleset{}, fmt.Errorf("policy: publish %s %d: container address %v is not a plain IPv4 or IPv6 address", p.Proto, p.HostPort, p.ContainerAddr)
		}
		k := fmt.Sprint(p.Proto, p.HostPort, p.ContainerAddr.Is6())
		if seen[k] {
			return Ruleset{}, fmt.Errorf("policy: host port %s/%d published twice", p.Proto, p.HostPort)
		}
		seen[k] = true
		rs.Publish = append(rs.Publish, p)
	}
	slices.SortFunc(rs.Publish, func(a, b PortMap) int {
		return cmp.Or(strings.Compare(a.Proto, b.Proto), cmp.Compare(a.HostPort, b.HostPort),
			a.ContainerAddr.Compare(b.ContainerAddr))
	})
	return rs, nil
}

func protoNum(p string, needProto bool) (uint8, error) {
	switch p {
	case "tcp":
		return 6, nil
	case "udp":
		return 17, nil
	case "":
		if needProto {
			return 0, errors.New("a port needs a protocol (tcp or udp)")
		}
		return 0, nil
	}
	return 0, fmt.Errorf("protocol %q is not tcp or udp", p)
}

func selectAddrs(eps []Endpoint, s Selector) []netip.Prefix {
	var out []netip.Prefix
	for _, e := range eps {
		if s.matches(e) {
			for _, a := range e.Addrs {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
			}
		}
	}
	return out
}

func ofFamily(ps []netip.Prefix, v6 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() == v6 {
			out = append(out, p)
		}
	}
	return out
}

// ranges sorts prefixes of one family and merges overlapping or adjacent
// ones, as an nftables interval set requires.
func ranges(ps []netip.Prefix) []Range {
	var rs []Range
	for _, p := range ps {
		rs = append(rs, Range{p.Masked().Addr(), lastAddr(p)})
	}
	slices.SortFunc(rs, func(a, b Range) int { return a.From.Compare(b.From) })
	var out []Range
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			// An invalid next means last already ends at the family's
			// highest address, so r lies inside it.
			if next := last.To.Next(); !next.IsValid() || r.From.Compare(next) <= 0 {
				if r.To.Compare(last.To) > 0 {
					last.To = r.To
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// String renders the rule set in nft's syntax: the golden form tests
// compare and operators read.
func (rs Ruleset) String() string {
	var b strings.Builder
	addrs := slices.SortedFunc(maps.Keys(rs.Tenant), netip.Addr.Compare)
	b.WriteString("table inet " + TableName + "\n")
	for _, f := range []struct {
		ip, suffix, typ string
		v6              bool
	}{{"ip", "4", "ipv4_addr", false}, {"ip6", "6", "ipv6_addr", true}} {
		byTenant := map[uint32][]netip.Addr{}
		fmt.Fprintf(&b, "map tenant%s { %s : verdict\n", f.suffix, f.typ)
		for _, a := range addrs {
			if a.Is6() == f.v6 {
				fmt.Fprintf(&b, "\t%s : jump same%s_%d\n", a, f.suffix, rs.Tenant[a])
				byTenant[rs.Tenant[a]] = append(byTenant[rs.Tenant[a]], a)
			}
		}
		b.WriteString("}\n")
		for _, num := range slices.Sorted(maps.Keys(byTenant)) {
			var ss []string
			for _, a := range byTenant[num] {
				ss = append(ss, a.String())
			}
			fmt.Fprintf(&b, "set members%s_%d { %s }\n", f.suffix, num, strings.Join(ss, ", "))
			fmt.Fprintf(&b, "chain same%s_%d { %s daddr @members%s_%d accept }\n", f.suffix, num, f.ip, f.suffix, num)
		}
		limited := rs.EgressLimited4
		if f.v6 {
			limited = rs.EgressLimited6
		}
		fmt.Fprintf(&b, "set egress_limited%s %s\n", f.suffix, fmtRanges(limited))
		fmt.Fprintf(&b, "chain egress%s {\n\t%s saddr != @egress_limited%s return\n\t%s saddr vmap @tenant%s\n",
			f.suffix, f.ip, f.suffix, f.ip, f.suffix)
		for _, m := range rs.Egress {
			if m.V6 == f.v6 {
				fmt.Fprintf(&b, "\t%s return\n", m)
			}
		}
		b.WriteString("\tdrop\n}\n")
		fmt.Fprintf(&b, "chain ingress%s {\n\tct status dnat accept\n\t%s saddr vmap @tenant%s\n",
			f.suffix, f.ip, f.suffix)
		for _, m := range rs.Ingress {
			if m.V6 == f.v6 {
				fmt.Fprintf(&b, "\t%s accept\n", m)
			}
		}
		b.WriteString("\tdrop\n}\n")
	}
	fmt.Fprintf(&b, "chain forward { type filter hook forward priority filter; meta nfproto ipv6 iifname %q fib saddr . iif oif missing drop; ct state established,related accept; ", IfPrefix+"*")
	for _, dir := range []string{"iifname %q meta nfproto %s jump egress%s; ", "oifname %q meta nfproto %s jump ingress%s; "} {
		for _, f := range [][2]string{{"ipv4", "4"}, {"ipv6", "6"}} {
			fmt.Fprintf(&b, dir, IfPrefix+"*", f[0], f[1])
		}
	}
	b.WriteString("}\n")
	for _, p := range rs.Publish {
		ip, to := "ip", p.ContainerAddr.String()
		if p.ContainerAddr.Is6() {
			ip, to = "ip6", "["+to+"]"
		}
		fmt.Fprintf(&b, "chain publish: meta nfproto %s fib daddr type local %s dport %d dnat %s to %s:%d\n", ip, p.Proto, p.HostPort, ip, to, p.ContainerPort)
	}
	return b.String()
}

func (m Match) String() string {
	ip := "ip"
	if m.V6 {
		ip = "ip6"
	}
	s := fmt.Sprintf("%s saddr %s %s daddr %s", ip, fmtRanges(m.Src), ip, fmtRanges(m.Dst))
	switch {
	case m.Proto != 0 && m.Port != 0:
		s += fmt.Sprintf(" meta l4proto %d th dport %d", m.Proto, m.Port)
	case m.Proto != 0:
		s += fmt.Sprintf(" meta l4proto %d", m.Proto)
	}
	return s + fmt.Sprintf(" comment %q", m.Comment)
}

func fmtRanges(rs []Range) string {
	var parts []string
	for _, r := range rs {
		if r.From == r.To {
			parts = append(parts, r.From.String())
		} else {
			parts = append(parts, r.From.String()+"-"+r.To.String())
		}
	}
	return "{ " + strings.Join(parts, ", ") + " }"
}

// Shape is what of a Ruleset its table's chains and rules show; the rest
// is set elements. A table of one shape can take another Ruleset by
// having its sets refilled when the Ruleset Fits it (see Update).
type Shape struct {
	// Tenants is how many tenants have a chain and a member set each
	// (numbered 1 to Tenants, in both families).
	Tenants         int
	Ingress, Egress []Match // without their ranges
	Publish         []PortMap
	// sets are the installed sets' contents by name, when known (Update
	// and apply record them): Update then changes only what differs.
	sets map[string]setContent
}

// setContent is what a set holds: each element's key and, for a verdict
// map, the chain it jumps to; an interval set's elements as a whole.
type setContent struct {
	interval string
	els      map[string]string
}

// ShapeOf is the shape of the table that installs rs.
func ShapeOf(rs Ruleset) Shape {
	s := Shape{Tenants: tenantCount(rs), Publish: slices.Clone(rs.Publish)}
	for _, m := range rs.Ingress {
		s.Ingress = append(s.Ingress, Match{Comment: m.Comment, V6: m.V6, Proto: m.Proto, Port: m.Port})
	}
	for _, m := range rs.Egress {
		s.Egress = append(s.Egress, Match{Comment: m.Comment, V6: m.V6, Proto: m.Proto, Port: m.Port})
	}
	return s
}

// Fits reports whether a table of shape s can install rs by refilling its
// sets: the same rules and published ports, and no more tenants than it has
// chains for (a tenant chain left over is harmless: no address jumps to it,
// and its member set is emptied).
func (s Shape) Fits(rs Ruleset) bool {
	o := ShapeOf(rs)
	return o.Tenants <= s.Tenants && slices.Equal(o.Publish, s.Publish) &&
		slices.EqualFunc(o.Ingress, s.Ingress, sameMatchShape) && slices.EqualFunc(o.Egress, s.Egress, sameMatchShape)
}

// tenantCount is how many tenants rs numbers: Compile numbers them from 1
// without gaps, and every tenant has an address.
func tenantCount(rs Ruleset) int {
	n := 0
	for _, num := range rs.Tenant {
		n = max(n, int(num))
	}
	return n
}

// sameMatchShape compares two matches but for their address ranges, which
// are set elements.
func sameMatchShape(a, b Match) bool {
	return a.Comment == b.Comment && a.V6 == b.V6 && a.Proto == b.Proto && a.Port == b.Port
}

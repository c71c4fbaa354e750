// Package network gives every container a routable address, Calico style:
// a veth whose host end carries a /32 route and answers ARP for the
// container's gateway, no bridge, no NAT between containers, no
// encapsulation. Hosts route each other's address blocks directly.
//
// The decisions (IPAM in network/ipam, policy in network/policy, the route
// plan and interface names here) are pure; the Manager applies them to the
// kernel through netlink and nftables.
package network

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/berth-dev/berth/network/policy"
)

// GatewayV4 is the link-local next hop every container routes through. The
// host end of the veth answers for it, so the container needs to know
// nothing of the host's addresses.
func GatewayV4() netip.Addr { return netip.AddrFrom4([4]byte{169, 254, 1, 1}) }

// GatewayV6 is the IPv6 counterpart of GatewayV4, fe80::1.
func GatewayV6() netip.Addr { return netip.AddrFrom16([16]byte{0: 0xfe, 1: 0x80, 15: 1}) }

// Route protocol numbers mark the routes Berth owns, so that sweeps and
// syncs touch nothing else in the table.
const (
	ProtoContainer = 200 // the /32 route to a local container
	ProtoBlock     = 201 // a route to a block: via its node, or blackhole when local
)

// aliasPrefix starts the IFLA_IFALIAS of a host-side interface; the rest is
// the container ID, which is how a sweep finds the owner after a crash.
const aliasPrefix = "berth:"

// Container is what attaching needs to know about a container.
type Container struct {
	ID     string
	NetNS  string // path of its network namespace, e.g. /proc/PID/ns/net
	Tenant string
	Labels map[string]string
}

// Attachment is the result of attaching a container.
type Attachment struct {
	ID     string
	Addrs  []netip.Addr
	HostIf string // host end of the veth
	MTU    int
}

// Endpoint is the container as policy sees it, for ApplyPolicy.
func (a Attachment) Endpoint(c Container) policy.Endpoint {
	return policy.Endpoint{ID: c.ID, Tenant: c.Tenant, Addrs: a.Addrs, Labels: c.Labels}
}

// HostIfName derives the host-side interface name from a container ID: a
// fixed prefix (which the policy's forward chain matches) and a hash,
// within the kernel's 15-byte limit.
func HostIfName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return policy.IfPrefix + hex.EncodeToString(sum[:])[:11]
}

func validID(id string) error {
	if id == "" {
		return fmt.Errorf("container ID is empty")
	}
	if !utf8.ValidString(id) || strings.ContainsFunc(id, unicode.IsControl) || len(id) > 200 {
		return fmt.Errorf("container ID %q is not printable UTF-8 of at most 200 bytes", id)
	}
	return nil
}

// Route is a block route as the route plan sees it: Via invalid means a
// blackhole (a local block: unallocated addresses go nowhere).
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// PlanRoutes compares the routes wanted for the block table (block → node
// address; blocks of a node address in local become blackholes) with the
// block routes present, and returns what to add and what to delete.
func PlanRoutes(table map[netip.Prefix]netip.Addr, local map[netip.Addr]bool, have []Route) (add, del []Route) {
	want := map[netip.Prefix]Route{}
	for b, via := range table {
		r := Route{Dst: b.Masked(), Via: via}
		if local[via] {
			r.Via = netip.Addr{}
		}
		want[r.Dst] = r
	}
	seen := map[netip.Prefix]bool{}
	for _, h := range have {
		if w, ok := want[h.Dst]; ok && w == h && !seen[h.Dst] {
			seen[h.Dst] = true
			continue
		}
		del = append(del, h)
	}
	for d, w := range want {
		if !seen[d] {
			add = append(add, w)
		}
	}
	less := func(a, b Route) int { return a.Dst.Addr().Compare(b.Dst.Addr()) }
	slices.SortFunc(add, less)
	slices.SortFunc(del, less)
	return add, del
}

// BlockTable turns the IPAM's block owners (block → node name) into the
// table SyncRoutes takes (block → node address), choosing for each block
// the node's address of the block's family. A block whose node is unknown
// or has no address of that family is an error: routing it anywhere would
// be a guess.
func BlockTable(blocks map[netip.Prefix]string, nodes map[string][]netip.Addr) (map[netip.Prefix]netip.Addr, error) {
	table := make(map[netip.Prefix]netip.Addr, len(blocks))
	for _, b := range slices.SortedFunc(maps.Keys(blocks), comparePrefix) {
		node := blocks[b]
		i := slices.IndexFunc(nodes[node], func(a netip.Addr) bool { return a.Is6() == b.Addr().Is6() })
		if i < 0 {
			return nil, fmt.Errorf("block %s: node %q has no address of the block's family (known: %v)", b, node, nodes[node])
		}
		table[b] = nodes[node][i]
	}
	return table, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

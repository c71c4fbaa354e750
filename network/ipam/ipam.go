// Package ipam hands out container addresses from per-node blocks of cluster
// pools, Calico style. Allocation is a pure function over State; where the
// state lives is the Store's business.
package ipam

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// DefaultConfig is a private /16 split into /26 blocks.
func DefaultConfig() Config {
	return Config{Pools: []Pool{{Prefix: netip.MustParsePrefix("10.88.0.0/16"), BlockBits: 26}}}
}

// Pool is one cluster address range, carved into blocks of BlockBits.
type Pool struct {
	Prefix    netip.Prefix `json:"prefix"`
	BlockBits int          `json:"blockBits"`
}

// Config is the cluster's address plan.
type Config struct {
	Pools []Pool `json:"pools"`
}

// ErrExhausted is returned when no pool of the family has a free address
// or block left.
var ErrExhausted = errors.New("address pools exhausted")

// Validate reports the first thing wrong with the plan: a pool that is not
// a masked prefix, a block larger than (or not inside) its pool, or pools
// that overlap.
func (c Config) Validate() error {
	if len(c.Pools) == 0 {
		return errors.New("ipam: no pools configured")
	}
	for i, p := range c.Pools {
		if !p.Prefix.IsValid() {
			return fmt.Errorf("ipam: pool %d: invalid prefix", i)
		}
		if p.Prefix.Masked() != p.Prefix {
			return fmt.Errorf("ipam: pool %s: host bits set (want %s)", p.Prefix, p.Prefix.Masked())
		}
		if p.BlockBits < p.Prefix.Bits() {
			return fmt.Errorf("ipam: pool %s: block size /%d is larger than the pool", p.Prefix, p.BlockBits)
		}
		if p.BlockBits > p.Prefix.Addr().BitLen() {
			return fmt.Errorf("ipam: pool %s: block size /%d is longer than the address", p.Prefix, p.BlockBits)
		}
		for _, q := range c.Pools[:i] {
			if p.Prefix.Overlaps(q.Prefix) {
				return fmt.Errorf("ipam: pool %s overlaps pool %s", p.Prefix, q.Prefix)
			}
		}
	}
	return nil
}

// poolOf returns the pool containing a.
func (c Config) poolOf(a netip.Addr) (Pool, bool) {
	for _, p := range c.Pools {
		if p.Prefix.Contains(a) {
			return p, true
		}
	}
	return Pool{}, false
}

// Owner says who holds an address.
type Owner struct {
	Node      string `json:"node"`
	Container string `json:"container"`
}

// State is the cluster's allocation table. It is treated as a value: the
// functions below never modify the State they are given.
type State struct {
	// Blocks maps each claimed block to the node that owns it.
	Blocks map[netip.Prefix]string `json:"blocks"`
	// Addrs maps each handed-out address to its holder.
	Addrs map[netip.Addr]Owner `json:"addrs"`
}

func (s State) clone() State {
	n := State{Blocks: maps.Clone(s.Blocks), Addrs: maps.Clone(s.Addrs)}
	if n.Blocks == nil {
		n.Blocks = map[netip.Prefix]string{}
	}
	if n.Addrs == nil {
		n.Addrs = map[netip.Addr]Owner{}
	}
	return n
}

// Assignment is what one container holds: an IPv4 address, and an IPv6 one
// when the plan has an IPv6 pool.
type Assignment struct {
	V4 netip.Addr `json:"v4"`
	V6 netip.Addr `json:"v6,omitzero"`
}

// Addrs lists the valid addresses of the assignment.
func (a Assignment) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, x := range []netip.Addr{a.V4, a.V6} {
		if x.IsValid() {
			out = append(out, x)
		}
	}
	return out
}

// Lookup returns the addresses held by container, if any.
func Lookup(s State, container string) Assignment {
	var a Assignment
	for addr, o := range s.Addrs {
		if o.Container != container {
			continue
		}
		if addr.Is4() {
			a.V4 = addr
		} else {
			a.V6 = addr
		}
	}
	return a
}

// Assign gives container on node one address per family present in the
// plan, from node's blocks, claiming a new block when those are full. It is
// idempotent: a container that already holds addresses gets them again.
func Assign(c Config, s State, node, container string) (Assignment, State, error) {
	if err := c.Validate(); err != nil {
		return Assignment{}, s, err
	}
	if err := checkName("node", node); err != nil {
		return Assignment{}, s, err
	}
	if err := checkName("container", container); err != nil {
		return Assignment{}, s, err
	}
	if a := Lookup(s, container); a.V4.IsValid() {
		return a, s, nil
	}
	n := s.clone()
	var a Assignment
	for _, v6 := range []bool{false, true} {
		if !hasFamily(c, v6) {
			continue
		}
		addr, err := allocate(c, n, node, v6)
		if err != nil {
			return Assignment{}, s, fmt.Errorf("ipam: assign %s on %s: %w", container, node, err)
		}
		n.Addrs[addr] = Owner{Node: node, Container: container}
		if v6 {
			a.V6 = addr
		} else {
			a.V4 = addr
		}
	}
	if !a.V4.IsValid() {
		return Assignment{}, s, errors.New("ipam: assign: the plan has no IPv4 pool")
	}
	return a, n, nil
}

func hasFamily(c Config, v6 bool) bool {
	return slices.ContainsFunc(c.Pools, func(p Pool) bool { return p.Prefix.Addr().Is6() == v6 })
}

// allocate finds the lowest free address in node's blocks of one family,
// claiming the lowest free block of the first pool with room when they are
// full. n is modified (it is the caller's private copy).
func allocate(c Config, n State, node string, v6 bool) (netip.Addr, error) {
	var mine []netip.Prefix
	for b, owner := range n.Blocks {
		if owner == node && b.Addr().Is6() == v6 {
			if _, ok := c.poolOf(b.Addr()); ok {
				mine = append(mine, b)
			}
		}
	}
	slices.SortFunc(mine, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	for _, b := range mine {
		if a, ok := freeIn(n, b); ok {
			return a, nil
		}
	}
	for _, p := range c.Pools {
		if p.Prefix.Addr().Is6() != v6 {
			continue
		}
		b, ok := freeBlock(n, p)
		if !ok {
			continue
		}
		n.Blocks[b] = node
		a, _ := freeIn(n, b)
		return a, nil
	}
	fam := "IPv4"
	if v6 {
		fam = "IPv6"
	}
	return netip.Addr{}, fmt.Errorf("%s: %w (no free address in this node's %d blocks and no free block)", fam, ErrExhausted, len(mine))
}

// freeIn returns the lowest unallocated address of block b. Every address
// of a block is usable: containers get /32 routes, so there is no network
// or broadcast address to avoid.
func freeIn(s State, b netip.Prefix) (netip.Addr, bool) {
	for a := b.Addr(); a.IsValid() && b.Contains(a); a = a.Next() {
		if _, used := s.Addrs[a]; !used {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// freeBlock returns the lowest block of p not claimed by any node. Blocks
// are walked by stepping the block's last address, so a huge IPv6 pool is
// scanned only as far as the claimed blocks reach.
func freeBlock(s State, p Pool) (netip.Prefix, bool) {
	for a := p.Prefix.Addr(); a.IsValid() && p.Prefix.Contains(a); {
		b := netip.PrefixFrom(a, p.BlockBits)
		if _, taken := s.Blocks[b]; !taken {
			return b, true
		}
		a = lastAddr(b).Next()
	}
	return netip.Prefix{}, false
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Release frees every address held by container. Blocks stay with their
// node (as in Calico) so that the node's routes stay stable; ReleaseEmpty
// gives them back.
func Release(s State, container string) State {
	n := s.clone()
	for a, o := range n.Addrs {
		if o.Container == container {
			delete(n.Addrs, a)
		}
	}
	return n
}

// ReleaseAddr frees one address, failing if it is outside every pool or
// not allocated.
func ReleaseAddr(c Config, s State, a netip.Addr) (State, error) {
	if _, ok := c.poolOf(a); !ok {
		return s, fmt.Errorf("ipam: release %s: address is outside every pool", a)
	}
	if _, ok := s.Addrs[a]; !ok {
		return s, fmt.Errorf("ipam: release %s: not allocated", a)
	}
	n := s.clone()
	delete(n.Addrs, a)
	return n, nil
}

// Sweep frees the addresses that node's containers hold when the container
// is not in live: what a crash left behind. It returns the freed holders.
func Sweep(s State, node string, live map[string]bool) (State, []string) {
	n := s.clone()
	gone := map[string]bool{}
	for a, o := range n.Addrs {
		if o.Node == node && !live[o.Container] {
			delete(n.Addrs, a)
			gone[o.Container] = true
		}
	}
	ids := slices.Sorted(maps.Keys(gone))
	return n, ids
}

// ReleaseEmpty returns node's blocks that hold no address to the pool.
func ReleaseEmpty(s State, node string) State {
	n := s.clone()
	used := map[netip.Prefix]bool{}
	for a := range n.Addrs {
		for b := range n.Blocks {
			if b.Contains(a) {
				used[b] = true
			}
		}
	}
	for b, owner := range n.Blocks {
		if owner == node && !used[b] {
			delete(n.Blocks, b)
		}
	}
	return n
}

// BlocksOf lists node's blocks, sorted; BlockTable gives every block's owner.
func BlocksOf(s State, node string) []netip.Prefix {
	var out []netip.Prefix
	for b, owner := range s.Blocks {
		if owner == node {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// CheckAddr reports whether a is inside a pool of the plan.
func (c Config) CheckAddr(a netip.Addr) error {
	if _, ok := c.poolOf(a); !ok {
		var ps []string
		for _, p := range c.Pools {
			ps = append(ps, p.Prefix.String())
		}
		return fmt.Errorf("ipam: address %s is outside every pool (%s)", a, strings.Join(ps, ", "))
	}
	return nil
}

// HasIPv6 reports whether the plan hands out IPv6 addresses.
func (c Config) HasIPv6() bool { return hasFamily(c, true) }

// CheckBlock reports whether b is a block of one of the plan's pools.
func (c Config) CheckBlock(b netip.Prefix) error {
	p, ok := c.poolOf(b.Addr())
	if !ok {
		return fmt.Errorf("ipam: block %s is outside every pool", b)
	}
	if b.Bits() != p.BlockBits || b.Masked() != b {
		return fmt.Errorf("ipam: %s is not a /%d block of pool %s", b, p.BlockBits, p.Prefix)
	}
	return nil
}

func checkName(what, name string) error {
	if name == "" {
		return fmt.Errorf("ipam: assign: empty %s name", what)
	}
	if !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl) {
		return fmt.Errorf("ipam: assign: %s name %q is not printable UTF-8", what, name)
	}
	return nil
}

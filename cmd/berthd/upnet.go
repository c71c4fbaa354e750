package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/network"
	"github.com/berth-dev/berth/network/ipam"
)

// The network `berth up` attaches containers to unless told otherwise, and
// the pool its addresses come from: a private /16 away from the ranges
// Docker (172.17/16), Podman (10.88/16), Kubernetes (10.96/12, 10.244/16)
// and home routers (192.168/16) take by default.
const (
	defaultUpNetwork = "berth"
	defaultUpPool    = "10.213.0.0/16"
)

// Block sizes: Calico's /26 for IPv4 (64 addresses), /122 for IPv6.
const (
	blockBitsV4 = 26
	blockBitsV6 = 122
	// maxListedBlocks bounds the block objects made up front for a pool;
	// a larger pool's blocks (any IPv6 pool worth having) are made in the
	// control plane when first claimed.
	maxListedBlocks = 4096
)

// upNetwork is what `berth up --network --pool` asked for.
type upNetwork struct {
	name string // "none": loopback only
	plan ipam.Config
}

func (n upNetwork) enabled() bool { return n.name != "none" }

// parseUpNetwork checks --network and --pool. With network none the pools
// are ignored.
func parseUpNetwork(name string, pools []string) (upNetwork, error) {
	if name == "none" {
		return upNetwork{name: name}, nil
	}
	if err := checkNetworkName(name); err != nil {
		return upNetwork{}, err
	}
	if len(pools) == 0 {
		return upNetwork{}, fmt.Errorf("--pool: network %s needs an address pool (a CIDR such as %s)", name, defaultUpPool)
	}
	n := upNetwork{name: name}
	v4 := false
	for _, s := range pools {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return upNetwork{}, fmt.Errorf("--pool %q: not a CIDR such as %s", s, defaultUpPool)
		}
		if p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return upNetwork{}, fmt.Errorf("--pool %s: write an IPv4 pool as IPv4, without a zone", p)
		}
		if p != p.Masked() {
			return upNetwork{}, fmt.Errorf("--pool %s: host bits set; did you mean %s?", p, p.Masked())
		}
		bits := blockBitsV4
		if p.Addr().Is6() {
			bits = blockBitsV6
		} else {
			v4 = true
		}
		if p.Bits() > bits {
			return upNetwork{}, fmt.Errorf("--pool %s: smaller than one /%d address block", p, bits)
		}
		if !p.Addr().IsPrivate() {
			return upNetwork{}, fmt.Errorf("--pool %s: not a private range (10/8, 172.16/12, 192.168/16, fc00::/7): containers' addresses would shadow public ones", p)
		}
		n.plan.Pools = append(n.plan.Pools, ipam.Pool{Prefix: p, BlockBits: bits})
	}
	if !v4 {
		return upNetwork{}, fmt.Errorf("--pool: no IPv4 pool among %s: every container gets an IPv4 address (and an IPv6 one too when an IPv6 pool is given)", strings.Join(pools, ", "))
	}
	if err := n.plan.Validate(); err != nil {
		return upNetwork{}, fmt.Errorf("--pool: %w", err)
	}
	return n, nil
}

// checkNetworkName accepts what the agent accepts as a network name.
func checkNetworkName(name string) error {
	ok := name != "" && len(name) <= 64
	for i, r := range name {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("_.-", r)) {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("--network %q: want none or a name of letters, digits, '_', '.' and '-' (at most 64, starting with a letter or digit)", name)
	}
	return nil
}

// blockName is the control plane's name for a block: its address and
// length as a DNS label ("10-213-0-64-26"; IPv6 written out in full).
func blockName(b netip.Prefix) string {
	a := b.Addr().String()
	if b.Addr().Is6() {
		a = b.Addr().StringExpanded()
	}
	return strings.NewReplacer(".", "-", ":", "-").Replace(a) + "-" + fmt.Sprint(b.Bits())
}

// poolBlocks lists the blocks of p in address order; ok is false (and the
// list empty) when there are more than limit.
func poolBlocks(p ipam.Pool, limit int) (blocks []netip.Prefix, ok bool) {
	if p.BlockBits-p.Prefix.Bits() >= 31 || 1<<(p.BlockBits-p.Prefix.Bits()) > limit {
		return nil, false
	}
	for a := p.Prefix.Addr(); a.IsValid() && p.Prefix.Contains(a); {
		b := netip.PrefixFrom(a, p.BlockBits)
		blocks = append(blocks, b)
		a = lastOf(b).Next()
	}
	return blocks, true
}

func lastOf(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// withForeign is the state IPAM decides on: the node's own state plus the
// blocks other nodes hold, so that it never picks one of those. s is not
// modified.
func withForeign(s ipam.State, foreign map[netip.Prefix]string) ipam.State {
	if len(foreign) == 0 {
		return s
	}
	v := ipam.State{Blocks: maps.Clone(s.Blocks), Addrs: s.Addrs}
	if v.Blocks == nil {
		v.Blocks = map[netip.Prefix]string{}
	}
	for b, node := range foreign {
		if _, ok := v.Blocks[b]; !ok {
			v.Blocks[b] = node
		}
	}
	return v
}

// withoutForeign undoes withForeign on IPAM's result, so that the node's
// store keeps only what it owns. s is not modified.
func withoutForeign(s ipam.State, foreign map[netip.Prefix]string) ipam.State {
	if len(foreign) == 0 {
		return s
	}
	v := ipam.State{Blocks: maps.Clone(s.Blocks), Addrs: s.Addrs}
	for b, node := range foreign {
		if v.Blocks[b] == node {
			delete(v.Blocks, b)
		}
	}
	return v
}

// newBlocks are the blocks node holds in next but not in prev: what IPAM
// just took and the control plane must grant.
func newBlocks(prev, next ipam.State, node string) []netip.Prefix {
	var out []netip.Prefix
	for b, owner := range next.Blocks {
		if owner == node && prev.Blocks[b] != node {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// blockPlan is how a node's stored blocks are brought in line with the
// control plane's at start.
type blockPlan struct {
	// next is the node's state with the blocks the control plane says it
	// holds added, and those another node holds (and it does not use)
	// dropped.
	next ipam.State
	// claim are blocks the node holds locally that the control plane has
	// as free or does not know: claimed again before use.
	claim []netip.Prefix
	// foreign are the blocks other nodes hold.
	foreign map[netip.Prefix]string
}

// planBlocks compares the node's stored state with the control plane's
// block holders (block → node, free blocks absent). A block the node has
// addresses in but another node holds is an error: two hosts would route
// the same containers' addresses.
func planBlocks(local ipam.State, held map[netip.Prefix]string, node string) (blockPlan, error) {
	p := blockPlan{next: ipam.State{Blocks: maps.Clone(local.Blocks), Addrs: local.Addrs}, foreign: map[netip.Prefix]string{}}
	if p.next.Blocks == nil {
		p.next.Blocks = map[netip.Prefix]string{}
	}
	for b, holder := range held {
		switch {
		case holder == node:
			p.next.Blocks[b] = node
		case holder != "":
			p.foreign[b] = holder
		}
	}
	for _, b := range slices.SortedFunc(maps.Keys(local.Blocks), func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) }) {
		if local.Blocks[b] != node {
			continue
		}
		switch holder := held[b]; {
		case holder == node:
		case holder == "":
			p.claim = append(p.claim, b)
		default:
			for a, o := range local.Addrs {
				if b.Contains(a) && o.Node == node {
					return blockPlan{}, fmt.Errorf("block %s: node %s holds it in the control plane, but container %s here has its address %s", b, holder, o.Container, a)
				}
			}
			delete(p.next.Blocks, b)
		}
	}
	return p, nil
}

// blockRoutes is the route table for this node's blocks: a blackhole for
// each (through PlanRoutes, which turns blocks routed via a local address
// into blackholes), so that an address of the block no container holds
// goes nowhere rather than out of the default route. Loopback stands for
// the node's own address: on one machine it is the only node.
func blockRoutes(s ipam.State, node string) map[netip.Prefix]netip.Addr {
	t := map[netip.Prefix]netip.Addr{}
	for _, b := range ipam.BlocksOf(s, node) {
		t[b] = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		if b.Addr().Is6() {
			t[b] = netip.IPv6Loopback()
		}
	}
	return t
}

// blockStore is the node's IPAM store for `berth up`: addresses live in a
// file on the node, and every block IPAM takes is claimed from the control
// plane first, so two nodes never hand out the same block.
type blockStore struct {
	local *ipam.FileStore
	// cli claims as the node; admin makes the block objects of pools too
	// large to list up front.
	cli, admin *api.Client
	node       string
	plan       ipam.Config
	// claimed is told after a new block is claimed, to route it.
	claimed func()

	mu sync.Mutex
	// foreign holds the blocks other nodes hold, as last seen; guarded by mu.
	foreign map[netip.Prefix]string
}

func (s *blockStore) foreignBlocks() map[netip.Prefix]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.foreign)
}

// Load implements ipam.Store.
func (s *blockStore) Load() (ipam.State, error) {
	st, err := s.local.Load()
	if err != nil {
		return st, err
	}
	return withForeign(st, s.foreignBlocks()), nil
}

// Update implements ipam.Store.
func (s *blockStore) Update(fn func(ipam.State) (ipam.State, error)) error {
	// taken aborts an update whose new block another node got first; the
	// update is tried again without it. Each lost race marks one more block
	// foreign, so this ends.
	taken := errors.New("block taken by another node")
	for range 64 {
		claimed := false
		err := s.local.Update(func(st ipam.State) (ipam.State, error) {
			foreign := s.foreignBlocks()
			n, err := fn(withForeign(st, foreign))
			if err != nil {
				return st, err
			}
			n = withoutForeign(n, foreign)
			for _, b := range newBlocks(st, n, s.node) {
				holder, err := s.claim(b)
				if err != nil {
					return st, err
				}
				if holder != s.node {
					s.mu.Lock()
					if s.foreign == nil {
						s.foreign = map[netip.Prefix]string{}
					}
					s.foreign[b] = holder
					s.mu.Unlock()
					return st, taken
				}
				claimed = true
			}
			return n, nil
		})
		if errors.Is(err, taken) {
			continue
		}
		if err == nil && claimed && s.claimed != nil {
			s.claimed()
		}
		return err
	}
	return fmt.Errorf("ipam: other nodes claimed every free block first")
}

// claim asks the control plane for block b and returns who holds it
// afterwards.
func (s *blockStore) claim(b netip.Prefix) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := blockName(b)
	got, err := s.cli.ClaimBlock(ctx, name, s.node)
	if api.IsNotFound(err) && s.admin != nil {
		err = s.admin.Create(ctx, &api.AddressBlock{Meta: api.Meta{Name: name}, Prefix: b})
		if err == nil || api.IsConflict(err) {
			got, err = s.cli.ClaimBlock(ctx, name, s.node)
		}
	}
	if api.IsConflict(err) {
		held := &api.AddressBlock{}
		if gerr := s.cli.Get(ctx, "", name, held); gerr != nil {
			return "", fmt.Errorf("claim block %s: %w (then reading it: %v)", b, err, gerr)
		}
		if held.Node == "" {
			return "", fmt.Errorf("claim block %s: %w", b, err)
		}
		return held.Node, nil
	}
	if err != nil {
		return "", fmt.Errorf("claim block %s: %w", b, err)
	}
	if got.Prefix != b {
		return "", fmt.Errorf("claim block %s: the control plane's %s is %s", b, name, got.Prefix)
	}
	return got.Node, nil
}

// start reconciles the node's stored blocks with the control plane's: see
// planBlocks.
func (s *blockStore) start(ctx context.Context) error {
	// A server that dies while it answers cuts the list short; the client
	// moves on to another server on the next request.
	var list api.List[*api.AddressBlock]
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if list, err = api.ListOf[*api.AddressBlock](ctx, s.cli, "", ""); err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("list address blocks: %w", err)
	}
	held := map[netip.Prefix]string{}
	for _, b := range list.Items {
		if s.plan.CheckBlock(b.Prefix) == nil && b.Node != "" {
			held[b.Prefix] = b.Node
		}
	}
	return s.local.Update(func(st ipam.State) (ipam.State, error) {
		p, err := planBlocks(st, held, s.node)
		if err != nil {
			return st, err
		}
		for _, b := range p.claim {
			holder, err := s.claim(b)
			if err != nil {
				return st, err
			}
			if holder != s.node {
				if _, err := planBlocks(st, map[netip.Prefix]string{b: holder}, s.node); err != nil {
					return st, err
				}
				delete(p.next.Blocks, b)
				p.foreign[b] = holder
			}
		}
		s.mu.Lock()
		s.foreign = p.foreign
		s.mu.Unlock()
		return p.next, nil
	})
}

// ensureBlocks makes the pools' block objects that the control plane does
// not have yet, several at a time.
func ensureBlocks(ctx context.Context, admin *api.Client, plan ipam.Config) error {
	list, err := api.ListOf[*api.AddressBlock](ctx, admin, "", "")
	if err != nil {
		return fmt.Errorf("list address blocks: %w", err)
	}
	have := map[string]netip.Prefix{}
	for _, b := range list.Items {
		have[b.Name] = b.Prefix
	}
	var missing []netip.Prefix
	for _, p := range plan.Pools {
		blocks, ok := poolBlocks(p, maxListedBlocks)
		if !ok {
			continue
		}
		for _, b := range blocks {
			got, ok := have[blockName(b)]
			switch {
			case !ok:
				missing = append(missing, b)
			case got != b:
				return fmt.Errorf("address block %s is %s in the control plane, not %s", blockName(b), got, b)
			}
		}
	}
	work := make(chan netip.Prefix)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var first error
			for b := range work {
				err := admin.Create(ctx, &api.AddressBlock{Meta: api.Meta{Name: blockName(b)}, Prefix: b})
				if err != nil && !api.IsConflict(err) && first == nil {
					first = fmt.Errorf("create address block %s: %w", b, err)
				}
			}
			errs <- first
		}()
	}
	for _, b := range missing {
		work <- b
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// upNetworker is the node's network for `berth up`.
type upNetworker struct {
	*agent.Network
	store *blockStore
	// routes turns the node's own block routes into the whole table.
	routes func(own map[netip.Prefix]netip.Addr) map[netip.Prefix]netip.Addr
	// syncMu serialises route syncs: the route loop's and the fabric's.
	syncMu sync.Mutex
	kick   chan struct{}
	done   chan struct{}
	loop   sync.WaitGroup
	log    *slog.Logger
}

// openUpNetwork makes the pool's blocks in the control plane, reconciles
// the node's blocks with it, routes them, and opens the agent's Network
// over the node's IPAM store under dataDir/network. Close stops the route
// sync; containers stay attached.
func openUpNetwork(ctx context.Context, log *slog.Logger, dataDir, node string, n upNetwork, admin, nodeClient *api.Client) (*upNetworker, error) {
	if err := ensureBlocks(ctx, admin, n.plan); err != nil {
		return nil, err
	}
	return openNetwork(ctx, log, dataDir, node, n, admin, nodeClient, nil)
}

// openNetwork opens the node's network over blocks the control plane
// already has (admin, if not nil, makes those of pools too large to list);
// routes, if not nil, adds the other nodes' blocks to the route table.
func openNetwork(ctx context.Context, log *slog.Logger, dataDir, node string, n upNetwork, admin, nodeClient *api.Client,
	routes func(own map[netip.Prefix]netip.Addr) map[netip.Prefix]netip.Addr) (*upNetworker, error) {
	dir := filepath.Join(dataDir, "network")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("network dir: %w", err)
	}
	fs, err := ipam.NewFileStore(filepath.Join(dir, "ipam"))
	if err != nil {
		return nil, err
	}
	un := &upNetworker{kick: make(chan struct{}, 1), done: make(chan struct{}), log: log, routes: routes}
	un.store = &blockStore{local: fs, cli: nodeClient, admin: admin, node: node, plan: n.plan,
		claimed: func() {
			select {
			case un.kick <- struct{}{}:
			default:
			}
		}}
	if err := un.store.start(ctx); err != nil {
		return nil, fmt.Errorf("network %s: %w", n.name, err)
	}
	un.Network, err = agent.NewNetwork(network.Config{Node: node, IPAM: n.plan, Store: un.store, Log: log})
	if err != nil {
		return nil, fmt.Errorf("network %s: %w", n.name, err)
	}
	if err := un.syncRoutes(); err != nil {
		un.Network.Close()
		return nil, fmt.Errorf("network %s: %w", n.name, err)
	}
	un.loop.Add(1)
	go un.routeLoop()
	return un, nil
}

func (u *upNetworker) syncRoutes() error {
	u.syncMu.Lock()
	defer u.syncMu.Unlock()
	st, err := u.store.local.Load()
	if err != nil {
		return err
	}
	t := blockRoutes(st, u.store.node)
	if u.routes != nil {
		t = u.routes(t)
	}
	return u.Manager().SyncRoutes(t)
}

// routeLoop routes each block as it is claimed, until Close.
func (u *upNetworker) routeLoop() {
	defer u.loop.Done()
	for {
		select {
		case <-u.done:
			return
		case <-u.kick:
		}
		if err := u.syncRoutes(); err != nil {
			u.log.Error("route address blocks", "err", err)
		}
	}
}

// Close stops the route loop and releases the network's handles.
func (u *upNetworker) Close() error {
	close(u.done)
	u.loop.Wait()
	return u.Network.Close()
}

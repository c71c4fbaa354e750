package network

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/network/ipam"
	"github.com/berth-dev/berth/network/policy"
)

// Config configures a node's Manager.
type Config struct {
	Node string // this node's name in the IPAM state
	// HostNetNS is the path of the namespace the host side lives in; empty
	// for the caller's own (the agent's). Tests name a namespace per "host".
	HostNetNS string
	// Uplink is the host interface whose MTU containers follow; empty for
	// 1500.
	Uplink string
	IPAM   ipam.Config
	Store  ipam.Store
	Log    *slog.Logger
}

// Manager attaches containers on one node. Its methods are safe for
// concurrent use.
type Manager struct {
	cfg  Config
	ns   netns.NsHandle // host namespace
	nl   *netlink.Handle
	rt   *rtnl
	log  *slog.Logger
	mu   sync.Mutex // serialises policy applies
	nsFd int        // fd for nftables; -1 for the caller's namespace
	// applied is the shape of the policy table this manager installed; nil
	// when unknown (none yet, or an apply failed). Guarded by mu.
	applied *policy.Shape

	busyMu sync.Mutex
	busy   map[string]bool // container IDs being attached or detached; guarded by busyMu
}

// claim marks id busy for the duration of one attach or detach: two calls
// for one container at once would each undo the other's work.
func (m *Manager) claim(id string) (release func(), err error) {
	m.busyMu.Lock()
	defer m.busyMu.Unlock()
	if m.busy[id] {
		return nil, fmt.Errorf("container %s: another attach or detach is in progress", id)
	}
	m.busy[id] = true
	return func() {
		m.busyMu.Lock()
		delete(m.busy, id)
		m.busyMu.Unlock()
	}, nil
}

// New opens the host namespace and enables forwarding there.
func New(cfg Config) (*Manager, error) {
	if cfg.Node == "" {
		return nil, errors.New("network: node name is empty")
	}
	if cfg.Store == nil {
		return nil, errors.New("network: no IPAM store")
	}
	if err := cfg.IPAM.Validate(); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	m := &Manager{cfg: cfg, log: cfg.Log, nsFd: -1, busy: map[string]bool{}}
	if m.log == nil {
		m.log = slog.Default()
	}
	var err error
	if cfg.HostNetNS != "" {
		m.ns, err = netns.GetFromPath(cfg.HostNetNS)
		if err != nil {
			return nil, fmt.Errorf("network: open host netns %s: %w", cfg.HostNetNS, err)
		}
		m.nsFd = int(m.ns)
	} else {
		m.ns, err = netns.Get()
		if err != nil {
			return nil, fmt.Errorf("network: open own netns: %w", err)
		}
	}
	m.nl, err = netlink.NewHandleAt(m.ns)
	if err != nil {
		m.ns.Close()
		return nil, fmt.Errorf("network: netlink in host netns: %w", err)
	}
	m.rt, err = newRtnl(m.ns)
	if err != nil {
		m.nl.Close()
		m.ns.Close()
		return nil, fmt.Errorf("network: %w", err)
	}
	if _, err := m.mtu(); err != nil {
		m.Close()
		return nil, fmt.Errorf("network: %w", err)
	}
	fwd := map[string]string{"ipv4/ip_forward": "1"}
	if cfg.IPAM.HasIPv6() {
		fwd["ipv6/conf/all/forwarding"] = "1"
	}
	if err := m.sysctls(fwd); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Close releases the Manager's handles; it changes nothing in the kernel.
func (m *Manager) Close() error {
	m.rt.close()
	m.nl.Close()
	return m.ns.Close()
}

// mtu is the uplink's MTU, read at every attach so containers follow a
// change of the uplink.
func (m *Manager) mtu() (int, error) {
	if m.cfg.Uplink == "" {
		return 1500, nil
	}
	l, err := m.nl.LinkByName(m.cfg.Uplink)
	if err != nil {
		return 0, fmt.Errorf("uplink %s: %w", m.cfg.Uplink, err)
	}
	return l.Attrs().MTU, nil
}

// Attach gives the container in c.NetNS an address from this node's blocks
// (and an IPv6 one when the plan has an IPv6 pool) and connects it: eth0 in
// the container with the addresses and default routes via GatewayV4 and
// GatewayV6, the host end with a /32 (/128) route, proxy ARP and fe80::1.
// On failure nothing is left: no interface, no route, no address held.
//
// Policy fails closed for a new container: until an ApplyPolicy includes
// its endpoint, no other container's traffic reaches it and its own reaches
// no container. The caller applies policy after attaching.
func (m *Manager) Attach(c Container) (Attachment, error) {
	if err := validID(c.ID); err != nil {
		return Attachment{}, fmt.Errorf("attach: %w", err)
	}
	if c.Tenant == "" {
		return Attachment{}, fmt.Errorf("attach %s: no tenant", c.ID)
	}
	done, err := m.claim(c.ID)
	if err != nil {
		return Attachment{}, fmt.Errorf("attach: %w", err)
	}
	defer done()
	cns, err := netns.GetFromPath(c.NetNS)
	if err != nil {
		return Attachment{}, fmt.Errorf("attach %s: open netns %q: %w", c.ID, c.NetNS, err)
	}
	defer cns.Close()
	hostIf := HostIfName(c.ID)
	if l, err := m.nl.LinkByName(hostIf); err == nil {
		return Attachment{}, fmt.Errorf("attach %s: interface %s already exists (alias %q)", c.ID, hostIf, l.Attrs().Alias)
	}
	cnl, err := netlink.NewHandleAt(cns)
	if err != nil {
		return Attachment{}, fmt.Errorf("attach %s: netlink in container netns: %w", c.ID, err)
	}
	defer cnl.Close()
	if _, err := cnl.LinkByName("eth0"); err == nil {
		return Attachment{}, fmt.Errorf("attach %s: interface eth0 already exists in netns %s", c.ID, c.NetNS)
	}
	mtu, err := m.mtu()
	if err != nil {
		return Attachment{}, fmt.Errorf("attach %s: %w", c.ID, err)
	}

	var as ipam.Assignment
	err = m.cfg.Store.Update(func(s ipam.State) (ipam.State, error) {
		a, n, err := ipam.Assign(m.cfg.IPAM, s, m.cfg.Node, c.ID)
		as = a
		return n, err
	})
	if err != nil {
		return Attachment{}, fmt.Errorf("attach %s: %w", c.ID, err)
	}
	if created, err := m.plumb(c, cnl, cns, hostIf, mtu, as); err != nil {
		// Deleting the host end takes the peer, its addresses and routes.
		// Only a veth this call made: a name taken meanwhile is another's.
		if l, lerr := m.nl.LinkByName(hostIf); created && lerr == nil {
			if derr := m.nl.LinkDel(l); derr != nil {
				m.log.Warn("delete veth after failed attach", "container", c.ID, "err", derr)
			}
		}
		if rerr := m.release(c.ID); rerr != nil {
			m.log.Warn("release address after failed attach", "container", c.ID, "err", rerr)
		}
		return Attachment{}, fmt.Errorf("attach %s: %w", c.ID, err)
	}
	return Attachment{ID: c.ID, Addrs: as.Addrs(), HostIf: hostIf, MTU: mtu}, nil
}

// plumb makes the veth and configures both ends; created reports whether
// the veth was made, so that a failure can be undone.
func (m *Manager) plumb(c Container, cnl *netlink.Handle, cns netns.NsHandle, hostIf string, mtu int, as ipam.Assignment) (created bool, err error) {
	err = m.plumbVeth(c, cnl, cns, hostIf, mtu, as, &created)
	return created, err
}

func (m *Manager) plumbVeth(c Container, cnl *netlink.Handle, cns netns.NsHandle, hostIf string, mtu int, as ipam.Assignment, created *bool) error {
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostIf, MTU: mtu},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(cns),
		PeerMTU:       uint32(mtu),
	}
	if err := m.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", hostIf, err)
	}
	*created = true
	host, err := m.nl.LinkByName(hostIf)
	if err != nil {
		return fmt.Errorf("find %s: %w", hostIf, err)
	}
	// The kernel ignores an alias given at creation. Until it is set the
	// interface has no owner, and a sweep would take it: right for a crash
	// here, since the attach never finished.
	if err := m.nl.LinkSetAlias(host, aliasPrefix+c.ID); err != nil {
		return fmt.Errorf("label %s: %w", hostIf, err)
	}
	if err := m.rt.hostEndConf(host.Attrs().Index); err != nil {
		return fmt.Errorf("configure %s: %w", hostIf, err)
	}
	if as.V6.IsValid() {
		// Every host end carries the same link-local gateway; it is unique
		// on its own link, which is all a link-local address needs.
		if err := m.nl.AddrAdd(host, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(GatewayV6(), 64)), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("add %s to %s: %w", GatewayV6(), hostIf, err)
		}
	}
	if err := m.nl.LinkSetUp(host); err != nil {
		return fmt.Errorf("up %s: %w", hostIf, err)
	}
	eth0, err := cnl.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in container: %w", err)
	}
	if lo, err := cnl.LinkByName("lo"); err == nil {
		if err := cnl.LinkSetUp(lo); err != nil {
			return fmt.Errorf("up lo in container: %w", err)
		}
	}
	for _, ip := range as.Addrs() {
		// No duplicate address detection: IPAM guarantees uniqueness, and
		// DAD would hold the address tentative for a second.
		if err := cnl.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(ip, ip.BitLen())), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("add %s to eth0: %w", ip, err)
		}
	}
	if err := cnl.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("up eth0: %w", err)
	}
	for _, ip := range as.Addrs() {
		gw, family, unspec := GatewayV4(), unix.AF_INET, netip.IPv4Unspecified()
		if ip.Is6() {
			gw, family, unspec = GatewayV6(), unix.AF_INET6, netip.IPv6Unspecified()
		}
		// A permanent neighbour entry for the gateway saves the first
		// ARP/NDP round trip of every container and does not depend on the
		// host answering by proxy.
		if err := cnl.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: family,
			State: netlink.NUD_PERMANENT, IP: net.IP(gw.AsSlice()), HardwareAddr: host.Attrs().HardwareAddr}); err != nil {
			return fmt.Errorf("gateway neighbour %s: %w", gw, err)
		}
		if ip.Is4() {
			if err := cnl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Scope: netlink.SCOPE_LINK,
				Dst: ipNet(netip.PrefixFrom(gw, 32))}); err != nil {
				return fmt.Errorf("gateway route: %w", err)
			}
		}
		if err := cnl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(gw.AsSlice()),
			Dst: ipNet(netip.PrefixFrom(unspec, 0))}); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
		if err := m.nl.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Scope: netlink.SCOPE_LINK,
			Dst: ipNet(netip.PrefixFrom(ip, ip.BitLen())), Protocol: ProtoContainer}); err != nil {
			return fmt.Errorf("host route to %s: %w", ip, err)
		}
	}
	return nil
}

// Detach removes the container's interface (and with it its routes) and
// frees its addresses. Detaching an unknown container is not an error, so
// that a retried detach succeeds.
func (m *Manager) Detach(id string) error {
	if err := validID(id); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	done, err := m.claim(id)
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	defer done()
	hostIf := HostIfName(id)
	l, err := m.nl.LinkByName(hostIf)
	if err == nil {
		// The container's network namespace takes the veth with it as it
		// goes, with its other devices in one batch; a delete of our own
		// would hold the kernel's locks through grace periods of its
		// own. Wait a moment for that before deleting it here (the
		// namespace may outlive the container, held open elsewhere).
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if l, err = m.nl.LinkByName(hostIf); err != nil {
				break
			}
		}
	}
	switch {
	case err == nil:
		if err := m.nl.LinkDel(l); err != nil {
			return fmt.Errorf("detach %s: delete %s: %w", id, hostIf, err)
		}
	case !errors.As(err, new(netlink.LinkNotFoundError)):
		return fmt.Errorf("detach %s: find %s: %w", id, hostIf, err)
	}
	if err := m.release(id); err != nil {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	return nil
}

func (m *Manager) release(id string) error {
	return m.cfg.Store.Update(func(s ipam.State) (ipam.State, error) { return ipam.Release(s, id), nil })
}

// Sweep removes what a crash left behind: host interfaces of containers not
// in live (and any Berth-named interface without an owner), and the
// addresses this node's dead containers hold. It returns the IDs removed,
// sorted. It is meant for start-up, before any attach: an attach in flight
// has an interface not yet labelled with its owner, which Sweep would take.
func (m *Manager) Sweep(live map[string]bool) ([]string, error) {
	links, err := m.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("sweep: list links: %w", err)
	}
	var errs []error
	gone := map[string]bool{}
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Name, policy.IfPrefix) || l.Type() != "veth" {
			continue
		}
		id, ok := strings.CutPrefix(a.Alias, aliasPrefix)
		if ok && live[id] && HostIfName(id) == a.Name {
			continue
		}
		if ok {
			gone[id] = true
		}
		// ENODEV: the peer of a link deleted earlier in this loop.
		if err := m.nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete %s: %w", a.Name, err))
		}
	}
	err = m.cfg.Store.Update(func(s ipam.State) (ipam.State, error) {
		n, ids := ipam.Sweep(s, m.cfg.Node, live)
		for _, id := range ids {
			gone[id] = true
		}
		return n, nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	ids := slices.Sorted(maps.Keys(gone))
	if len(errs) > 0 {
		return ids, fmt.Errorf("sweep: %w", errors.Join(errs...))
	}
	return ids, nil
}

// SyncRoutes makes the host's block routes match table (block → node
// address): via the node for remote blocks, blackhole for this host's own,
// and removes block routes no longer in the table. A table with a block
// outside every pool, or a block whose node address is of the other
// family, is refused before anything changes.
func (m *Manager) SyncRoutes(table map[netip.Prefix]netip.Addr) error {
	for b, via := range table {
		if err := m.cfg.IPAM.CheckBlock(b); err != nil {
			return fmt.Errorf("sync routes: %w", err)
		}
		if !via.IsValid() || via.Is6() != b.Addr().Is6() {
			return fmt.Errorf("sync routes: block %s: node address %v is not of the block's family", b, via)
		}
	}
	local := map[netip.Addr]bool{}
	var have []Route
	byDst := map[Route]netlink.Route{}
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		addrs, err := m.nl.AddrList(nil, family)
		if err != nil {
			return fmt.Errorf("sync routes: list addresses: %w", err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				local[ip.Unmap()] = true
			}
		}
		existing, err := m.nl.RouteListFiltered(family, &netlink.Route{Protocol: ProtoBlock}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return fmt.Errorf("sync routes: list: %w", err)
		}
		for _, r := range existing {
			if r.Dst == nil {
				continue
			}
			p, ok := prefixOf(r.Dst)
			if !ok {
				continue
			}
			hr := Route{Dst: p}
			if gw, ok := netip.AddrFromSlice(r.Gw); ok && r.Type != unix.RTN_BLACKHOLE {
				hr.Via = gw.Unmap()
			}
			have = append(have, hr)
			byDst[hr] = r
		}
	}
	add, del := PlanRoutes(table, local, have)
	var errs []error
	for _, r := range del {
		nr := byDst[r]
		if err := m.nl.RouteDel(&nr); err != nil {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
		}
	}
	for _, r := range add {
		nr := &netlink.Route{Dst: ipNet(r.Dst), Protocol: ProtoBlock}
		if r.Via.IsValid() {
			nr.Gw = net.IP(r.Via.AsSlice())
		} else {
			nr.Type = unix.RTN_BLACKHOLE
		}
		if err := m.nl.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %v: %w", r.Dst, r.Via, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("sync routes: %w", errors.Join(errs...))
	}
	return nil
}

// ApplyPolicy compiles endpoints (of every node), rules and this host's
// published ports and installs the result atomically. It is level
// triggered: each call gives the whole desired policy, and the caller
// applies it once at start, before which containers are not isolated.
func (m *Manager) ApplyPolicy(eps []policy.Endpoint, rules []policy.Rule, ports []policy.PortMap) error {
	rs, err := policy.Compile(eps, rules, ports)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	shape, err := policy.Update(m.nsFd, m.applied, rs)
	if err != nil {
		m.applied = nil
		return err
	}
	m.applied = &shape
	return nil
}

// RemovePolicy deletes the policy table.
func (m *Manager) RemovePolicy() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.applied = nil
	return policy.Remove(m.nsFd)
}

// sysctls writes /proc/sys/net values in the host namespace. /proc/sys/net
// shows the namespace of the thread that opens it, so the writes happen on
// a thread switched into the host namespace and locked there.
func (m *Manager) sysctls(kv map[string]string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("sysctl: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(m.ns); err != nil {
			errc <- fmt.Errorf("sysctl: enter host netns: %w", err)
			return
		}
		var errs []error
		for k, v := range kv {
			p := filepath.Join("/proc/sys/net", k)
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("sysctl %s=%s: %w", p, v, err))
			}
		}
		// A thread that cannot return to its namespace stays locked and
		// dies with the goroutine instead of serving other goroutines.
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- errors.Join(errs...)
	}()
	return <-errc
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

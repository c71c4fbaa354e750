package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"
	"slices"
	"strconv"
	"sync"

	"github.com/berth-dev/berth/network"
	"github.com/berth-dev/berth/network/policy"
	"golang.org/x/sys/unix"
)

// Network is the agent's Networker over the network package: it attaches
// containers through a network.Manager and keeps the policy in the kernel
// in step with the containers it has attached, so that a new container is
// reachable by its tenant as soon as Attach returns.
type Network struct {
	m      *network.Manager
	hostNS string // the host namespace's path; empty for the agent's own

	// mu serialises attaches, detaches and policy applies (a sweep must not
	// run while an attach is half done), and guards the fields below.
	mu sync.Mutex
	// local holds this node's attached containers, with their addresses.
	local  map[string]NetEndpoint
	remote []policy.Endpoint
	rules  []policy.Rule
	// resumed: the agent has said which containers live; until then the
	// policy is left alone, since applying it without the adopted
	// containers would cut them off.
	resumed bool
	// undone holds containers whose detach failed: gone from policy, but
	// their interface or addresses may remain, so the next detach (the
	// container's removal) tries again.
	undone map[string]bool
}

// NewNetwork opens the node's network (see network.New).
func NewNetwork(cfg network.Config) (*Network, error) {
	m, err := network.New(cfg)
	if err != nil {
		return nil, err
	}
	return &Network{m: m, hostNS: cfg.HostNetNS, local: map[string]NetEndpoint{}}, nil
}

// Manager is the underlying network manager, for what the agent does not
// drive itself (block routes from the cluster's block table).
func (n *Network) Manager() *network.Manager { return n.m }

// Close releases the manager's handles. Containers stay attached and the
// policy stays in force; a new Network resumes them.
func (n *Network) Close() error { return n.m.Close() }

// Attach implements Networker.
func (n *Network) Attach(netnsPath string, c NetEndpoint) ([]netip.Prefix, error) {
	c.Tenant = cmp.Or(c.Tenant, DefaultTenant)
	if err := checkPorts(c.Ports); err != nil {
		return nil, fmt.Errorf("attach %s: %w", c.ID, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := portConflict(n.local, c); err != nil {
		return nil, fmt.Errorf("attach %s: %w", c.ID, err)
	}
	att, err := n.m.Attach(network.Container{ID: c.ID, NetNS: netnsPath, Tenant: c.Tenant, Labels: c.Labels})
	if err != nil {
		return nil, err
	}
	c.Addrs = nil
	for _, a := range att.Addrs {
		c.Addrs = append(c.Addrs, netip.PrefixFrom(a, a.BitLen()))
	}
	n.local[c.ID] = c
	if err := n.applyLocked(); err != nil {
		delete(n.local, c.ID)
		if derr := n.m.Detach(c.ID); derr != nil {
			err = errors.Join(err, derr)
		}
		return nil, fmt.Errorf("attach %s: %w", c.ID, err)
	}
	return slices.Clone(c.Addrs), nil
}

// Detach implements Networker.
func (n *Network) Detach(id string) error {
	n.mu.Lock()
	_, known := n.local[id]
	// After Resume the set is complete: what it lacks has nothing to undo,
	// unless an earlier detach of it failed.
	if !known && n.resumed && !n.undone[id] {
		n.mu.Unlock()
		return nil
	}
	var perr error
	if known {
		// Gone from policy first, whatever the kernel says after: the
		// container has ended, and its address must not keep a tenant's
		// access.
		delete(n.local, id)
		perr = n.applyLocked()
	}
	n.mu.Unlock()
	// Deleting a veth takes the kernel tens of milliseconds (it waits for
	// RCU grace periods): other containers' attaches and detaches need not
	// wait on it. The address is released only once the device is gone,
	// so it is never handed out while a route to this container holds it.
	err := n.m.Detach(id)
	n.mu.Lock()
	if err != nil {
		if n.undone == nil {
			n.undone = map[string]bool{}
		}
		n.undone[id] = true
	} else {
		delete(n.undone, id)
	}
	n.mu.Unlock()
	return errors.Join(err, perr)
}

// Resume implements Networker: the live containers join those attached
// since the Network was made, the network of every other container is
// swept away, and the policy is applied.
func (n *Network) Resume(live []NetEndpoint) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range live {
		if _, ok := n.local[c.ID]; ok {
			continue
		}
		c.Tenant = cmp.Or(c.Tenant, DefaultTenant)
		n.local[c.ID] = c
	}
	ids := map[string]bool{}
	for id := range n.local {
		ids[id] = true
	}
	var errs []error
	if _, err := n.m.Sweep(ids); err != nil {
		errs = append(errs, err)
	}
	n.resumed = true
	if err := n.applyLocked(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// SetRules replaces the label rules (from the control plane). Rules that do
// not compile are refused and the old ones stay.
func (n *Network) SetRules(rules []policy.Rule) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	eps, ports := policyInput(n.local, n.remote)
	if _, err := policy.Compile(eps, rules, ports); err != nil {
		return err
	}
	old := n.rules
	n.rules = slices.Clone(rules)
	if err := n.applyLocked(); err != nil {
		n.rules = old
		return err
	}
	return nil
}

// SetRemoteEndpoints replaces the other nodes' containers, so that policy
// judges traffic from them by tenant and labels.
func (n *Network) SetRemoteEndpoints(eps []policy.Endpoint) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := n.remote
	n.remote = slices.Clone(eps)
	if err := n.applyLocked(); err != nil {
		n.remote = old
		return err
	}
	return nil
}

// Endpoints are this node's attached containers as policy sees them,
// sorted by ID: what the control plane gives the other nodes.
func (n *Network) Endpoints() []policy.Endpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	eps, _ := policyInput(n.local, nil)
	return eps
}

// applyLocked installs the policy for the current state; n.mu is held.
func (n *Network) applyLocked() error {
	if !n.resumed {
		return nil
	}
	eps, ports := policyInput(n.local, n.remote)
	if err := n.m.ApplyPolicy(eps, n.rules, ports); err != nil {
		return fmt.Errorf("apply policy: %w", err)
	}
	return nil
}

// DialContext implements Networker: it connects from the host namespace,
// which reaches every local container by policy. The socket is made on a
// thread switched into that namespace; once made, it works from any thread.
func (n *Network) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if n.hostNS == "" {
		return d.DialContext(ctx, network, addr)
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		c, err := dialFromNetns(ctx, n.hostNS, network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// dialFromNetns dials on the calling (locked) thread from the namespace at
// path. The thread returns to its namespace afterwards, and stays locked
// (so Go discards it) when it cannot.
func dialFromNetns(ctx context.Context, path, network, addr string) (net.Conn, error) {
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, err
	}
	defer self.Close()
	target, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("host netns: %w", err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("join host netns %s: %w", path, err)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
		goruntime.UnlockOSThread()
	}
	return c, err
}

// attachedContainers lists the running containers with a network, for
// Networker.Resume; it takes each container's lock in turn.
func (a *Agent) attachedContainers() []NetEndpoint {
	a.mu.Lock()
	cs := slices.Collect(maps.Values(a.containers))
	a.mu.Unlock()
	var out []NetEndpoint
	for _, c := range cs {
		c.mu.Lock()
		m := c.meta
		if c.exited != nil && m.Spec.Network != "" && m.Spec.Network != "none" && len(m.State.Addresses) > 0 {
			out = append(out, NetEndpoint{ID: m.ID, Tenant: m.Spec.Tenant, Labels: m.Spec.Labels,
				Ports: m.Spec.Ports, Addrs: slices.Clone(m.State.Addresses)})
		}
		c.mu.Unlock()
	}
	return out
}

// probeTarget is where a health check connects: the container's own
// address from the host's side when it has one (so a check proves what
// its peers see), else its loopback from inside its namespace.
type probeTarget struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	host string
}

func (t probeTarget) addr(port int) string { return net.JoinHostPort(t.host, strconv.Itoa(port)) }

// probeTargetLocked picks c's probe target; c.mu is held.
func (a *Agent) probeTargetLocked(c *container) probeTarget {
	if addrs := c.meta.State.Addresses; len(addrs) > 0 && a.cfg.Networker != nil {
		return probeTarget{dial: a.cfg.Networker.DialContext, host: addrs[0].Addr().String()}
	}
	pid := c.meta.State.Pid
	return probeTarget{host: "127.0.0.1", dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialInNetns(ctx, pid, network, addr)
	}}
}

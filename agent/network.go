package agent

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-dev/berth/network/policy"
)

// PortMapping publishes a container port on the host's addresses, as
// docker run -p hostPort:containerPort[/proto] does. Traffic from outside
// the cluster reaches the container with its source address intact.
type PortMapping struct {
	HostPort      uint16 `json:"hostPort"`
	ContainerPort uint16 `json:"containerPort"`
	// Proto is "tcp" (also when empty) or "udp".
	Proto string `json:"proto,omitempty"`
}

func (p PortMapping) proto() string { return cmp.Or(p.Proto, "tcp") }

func (p PortMapping) String() string {
	return fmt.Sprintf("%d:%d/%s", p.HostPort, p.ContainerPort, p.proto())
}

// ParsePortMapping reads -p's form hostPort:containerPort[/tcp|/udp].
// Binding to one host address and picking a random host port are not
// offered: a published port is an entry point on every host address.
func ParsePortMapping(s string) (PortMapping, error) {
	spec, proto, hasProto := strings.Cut(s, "/")
	if hasProto && proto != "tcp" && proto != "udp" {
		return PortMapping{}, fmt.Errorf("publish %q: protocol %q: want tcp or udp", s, proto)
	}
	parts := strings.Split(spec, ":")
	if len(parts) != 2 {
		return PortMapping{}, fmt.Errorf("publish %q: want hostPort:containerPort[/tcp|/udp]", s)
	}
	var ports [2]uint16
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 10, 16)
		if err != nil || v == 0 {
			return PortMapping{}, fmt.Errorf("publish %q: port %q: want a number from 1 to 65535", s, p)
		}
		ports[i] = uint16(v)
	}
	m := PortMapping{HostPort: ports[0], ContainerPort: ports[1], Proto: proto}
	return m, nil
}

// validatePorts checks a spec's published ports: they need a network, and
// checkPorts must pass.
func validatePorts(ps []PortMapping, network string) error {
	if len(ps) > 0 && (network == "" || network == "none") {
		return fmt.Errorf("ports: publishing %s needs a network, not %q", ps[0], cmp.Or(network, "none"))
	}
	return checkPorts(ps)
}

// checkPorts wants a known protocol, ports other than 0, and each host
// port once.
func checkPorts(ps []PortMapping) error {
	seen := map[string]bool{}
	for i, p := range ps {
		if p.proto() != "tcp" && p.proto() != "udp" {
			return fmt.Errorf("ports[%d]: protocol %q: want tcp or udp", i, p.Proto)
		}
		if p.HostPort == 0 || p.ContainerPort == 0 {
			return fmt.Errorf("ports[%d] %s: port 0", i, p)
		}
		k := fmt.Sprint(p.HostPort, "/", p.proto())
		if seen[k] {
			return fmt.Errorf("ports[%d]: host port %s published twice", i, k)
		}
		seen[k] = true
	}
	return nil
}

// NetEndpoint is a container as the Networker sees it.
type NetEndpoint struct {
	ID     string
	Tenant string
	Labels map[string]string
	Ports  []PortMapping
	// Addrs are the addresses it holds; set for containers given to
	// Resume, ignored by Attach.
	Addrs []netip.Prefix
}

// DefaultTenant is the tenant of containers whose spec names none
// (containers run on the agent directly rather than through the API).
const DefaultTenant = "default"

// portConflict reports the container in local (other than c) that already
// publishes one of c's host ports.
func portConflict(local map[string]NetEndpoint, c NetEndpoint) error {
	for _, id := range slices.Sorted(maps.Keys(local)) {
		if id == c.ID {
			continue
		}
		for _, p := range local[id].Ports {
			for _, q := range c.Ports {
				if p.HostPort == q.HostPort && p.proto() == q.proto() {
					return fmt.Errorf("host port %d/%s: already published by container %s", q.HostPort, q.proto(), id)
				}
			}
		}
	}
	return nil
}

// policyInput is what ApplyPolicy takes for this node's containers and the
// other nodes' endpoints: every endpoint, sorted by ID, and one port map
// per published port and container address (a dual-stack container is
// published on both families). A remote endpoint with a local container's
// ID is stale (the container moved here) and is left out.
func policyInput(local map[string]NetEndpoint, remote []policy.Endpoint) ([]policy.Endpoint, []policy.PortMap) {
	var eps []policy.Endpoint
	var ports []policy.PortMap
	for _, id := range slices.Sorted(maps.Keys(local)) {
		c := local[id]
		e := policy.Endpoint{ID: id, Tenant: cmp.Or(c.Tenant, DefaultTenant), Labels: c.Labels}
		for _, a := range c.Addrs {
			e.Addrs = append(e.Addrs, a.Addr())
		}
		eps = append(eps, e)
		for _, p := range c.Ports {
			for _, a := range e.Addrs {
				ports = append(ports, policy.PortMap{Proto: p.proto(), HostPort: p.HostPort, ContainerAddr: a, ContainerPort: p.ContainerPort})
			}
		}
	}
	for _, e := range remote {
		if _, ok := local[e.ID]; !ok {
			eps = append(eps, e)
		}
	}
	slices.SortStableFunc(eps, func(a, b policy.Endpoint) int { return strings.Compare(a.ID, b.ID) })
	return eps, ports
}

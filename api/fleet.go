package api

import (
	"context"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
)

// Fabric is what a node needs to route to and police the other nodes'
// containers: where each node is, which blocks it holds, and every
// container's address and tenant.
type Fabric struct {
	Revision  int64            `json:"revision"`
	Nodes     []FabricNode     `json:"nodes"`
	Blocks    []FabricBlock    `json:"blocks"`
	Endpoints []FabricEndpoint `json:"endpoints"`
}

// FabricNode is a node's address on the fabric.
type FabricNode struct {
	Name    string     `json:"name"`
	Address netip.Addr `json:"address,omitzero"`
}

// FabricBlock is an address block and the node holding it.
type FabricBlock struct {
	Prefix netip.Prefix `json:"prefix"`
	Node   string       `json:"node"`
}

// FabricEndpoint is one instance: where it runs, its address (once it
// runs) and whether it serves. A node handing an instance over to another
// reads here when the new one is ready.
type FabricEndpoint struct {
	Node     string            `json:"node,omitempty"`
	Tenant   string            `json:"tenant"`
	Instance string            `json:"instance"`
	IP       netip.Addr        `json:"ip,omitzero"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Ready: running on Node, healthy or without a health check.
	Ready bool `json:"ready,omitempty"`
	// Stopped: wanted stopped.
	Stopped bool `json:"stopped,omitempty"`
}

// Fabric reads the fabric as node sees it. With since > 0 the server
// answers once it knows a fabric newer than that revision (or after about
// half a minute with the one it has): a long poll.
func (c *Client) Fabric(ctx context.Context, node string, since int64) (Fabric, error) {
	var out Fabric
	var q url.Values
	if since > 0 {
		q = url.Values{"since": {strconv.FormatInt(since, 10)}}
	}
	err := c.do(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(node)+"/fabric", q, nil, &out)
	return out, err
}

// Cluster is the control plane's own state: who leads it, and the etcd
// members it stores in.
type Cluster struct {
	// Leader is the identity (host-pid) of the server running the
	// scheduler and controllers; empty while none is elected.
	Leader string       `json:"leader,omitempty"`
	Etcd   []EtcdMember `json:"etcd"`
}

// EtcdMember is one member of the etcd cluster.
type EtcdMember struct {
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
}

// Cluster reads the control plane's state (admin only).
func (c *Client) Cluster(ctx context.Context) (Cluster, error) {
	var out Cluster
	err := c.do(ctx, http.MethodGet, "/v1/cluster", nil, nil, &out)
	return out, err
}

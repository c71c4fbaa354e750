package api

import (
	"context"
	"net/http"
	"net/netip"
	"net/url"
	"time"
)

// Stop grace periods: how long a retiring instance keeps serving after it
// left its service's endpoints, so that clients stop sending to it first.
const (
	DefaultStopGracePeriod = 2 * time.Second
	MaxStopGracePeriod     = 10 * time.Minute
)

// GracePeriod is the template's stop grace period, DefaultStopGracePeriod
// when unset.
func (t Template) GracePeriod() time.Duration {
	if t.StopGracePeriod == nil {
		return DefaultStopGracePeriod
	}
	return time.Duration(*t.StopGracePeriod)
}

// Endpoint is one instance a service's traffic may go to: running, healthy
// (or without a health check), not retiring, and with an address.
type Endpoint struct {
	Instance string     `json:"instance"`
	Node     string     `json:"node,omitempty"`
	IP       netip.Addr `json:"ip"`
	Ports    []Port     `json:"ports,omitempty"`
}

// OpEndpoints is the path segment of a service's endpoints.
const OpEndpoints = "endpoints"

// EndpointsPath is the path of a service's endpoints.
func EndpointsPath(tenant, service string) string {
	return ObjectPath(KindService, tenant, service) + "/" + OpEndpoints
}

// Endpoints reads a service's endpoints and the store revision they were
// read at (to watch from).
func (c *Client) Endpoints(ctx context.Context, tenant, service string) (List[Endpoint], error) {
	var out List[Endpoint]
	err := c.do(ctx, http.MethodGet, EndpointsPath(tenant, service), nil, nil, &out)
	return out, err
}

// WatchEndpoints streams a service's endpoints after revision rev (from
// Endpoints): each event's object is the whole new List[Endpoint], sent
// whenever the set changes. With rev 0 the stream begins with the current
// set. It resumes after a dropped connection like any Watcher.
func (c *Client) WatchEndpoints(ctx context.Context, tenant, service string, rev int64) *Watcher {
	return &Watcher{c: c, path: EndpointsPath(tenant, service), q: url.Values{}, ctx: ctx, rev: rev}
}

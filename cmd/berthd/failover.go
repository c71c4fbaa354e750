package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// parseServers reads --join: one or more https URLs of the control plane's
// servers, comma-separated, all with the same path.
func parseServers(join string) ([]*url.URL, error) {
	var out []*url.URL
	for _, s := range strings.Split(join, ",") {
		s = strings.TrimSuffix(strings.TrimSpace(s), "/")
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" {
			return nil, fmt.Errorf("--join %q: want https://SERVER:PORT[,https://SERVER2:PORT...]", s)
		}
		if len(out) > 0 && u.Path != out[0].Path {
			return nil, fmt.Errorf("--join: %s has path %q, %s has %q: give every server the same way", u, u.Path, out[0], out[0].Path)
		}
		out = append(out, u)
	}
	return out, nil
}

// failover sends each request to one of the control plane's servers: the
// one that answered last, moving on to the next when it cannot be reached
// (killed, or cut off), so that an agent survives the loss of any server
// of a highly available control plane. Only a request that never got an
// answer is sent again; the node's requests (register, heartbeat, status,
// claims, renewal) are all safe to repeat.
type failover struct {
	next  http.RoundTripper
	hosts []string

	mu  sync.Mutex
	cur int // guarded by mu
}

func (f *failover) RoundTrip(r *http.Request) (*http.Response, error) {
	f.mu.Lock()
	start := f.cur
	f.mu.Unlock()
	var last error
	for i := range f.hosts {
		k := (start + i) % len(f.hosts)
		req := r.Clone(r.Context())
		if i > 0 && r.Body != nil && r.Body != http.NoBody {
			if r.GetBody == nil {
				break
			}
			b, err := r.GetBody()
			if err != nil {
				return nil, err
			}
			req.Body = b
		}
		req.URL.Host, req.Host = f.hosts[k], ""
		resp, err := f.next.RoundTrip(req)
		if err == nil {
			if k != start {
				f.mu.Lock()
				f.cur = k
				f.mu.Unlock()
			}
			return resp, nil
		}
		last = err
		if r.Context().Err() != nil {
			break
		}
	}
	return nil, last
}

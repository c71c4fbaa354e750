package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client speaks the /v1 API. It is safe for concurrent use.
type Client struct {
	base  string
	token string
	hc    *http.Client
	// err, if set, is why base cannot be reached (a malformed unix URL);
	// every request returns it.
	err error
}

// unixBase is the URL of requests sent over a unix socket: the transport
// dials the socket whatever the host.
const unixBase = "http://berth"

// NewClient returns a client for the server at base authenticating with
// token. base is an http(s) URL ("http://127.0.0.1:7070") or a unix socket
// ("unix:///run/berth.sock", an absolute path). hc may be nil for a default
// client (which must have no overall timeout, or watches would be cut).
//
// For a unix socket, a given hc's *http.Transport (or, if it has none, a
// default one) is cloned to dial the socket. A malformed unix URL, or an hc
// whose Transport is not an *http.Transport, is not reported here: every
// request of the client fails with the reason.
func NewClient(base, token string, hc *http.Client) *Client {
	if strings.HasPrefix(base, "unix:") {
		return newUnixClient(base, token, hc)
	}
	if hc == nil {
		hc = &http.Client{Transport: defaultTransport()}
	}
	return &Client{base: base, token: token, hc: hc}
}

func defaultTransport() *http.Transport {
	return &http.Transport{
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
}

// newUnixClient is NewClient for a unix:///path base.
func newUnixClient(base, token string, hc *http.Client) *Client {
	c := &Client{base: unixBase, token: token, hc: hc}
	if c.hc == nil {
		c.hc = &http.Client{}
	}
	sock, err := UnixSocketPath(base)
	if err != nil {
		c.err = err
		return c
	}
	var tr *http.Transport
	switch t := c.hc.Transport.(type) {
	case nil:
		tr = defaultTransport()
	case *http.Transport:
		tr = t.Clone()
	default:
		c.err = fmt.Errorf("unix socket %s: the HTTP client's transport is a %T, not an *http.Transport that can dial it", sock, t)
		return c
	}
	// The host of the URL is a placeholder: no proxy, always the socket.
	tr.Proxy = nil
	tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	hcCopy := *c.hc
	hcCopy.Transport = tr
	c.hc = &hcCopy
	return c
}

// UnixSocketPath is the socket's path of a "unix:///abs/path.sock" URL.
func UnixSocketPath(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("unix socket URL: %w", err)
	}
	switch {
	case u.Scheme != "unix":
		return "", fmt.Errorf("unix socket URL %q: scheme is not unix", raw)
	case u.Host != "" || u.Opaque != "":
		return "", fmt.Errorf("unix socket URL %q: the path must be absolute, as in unix:///run/berth.sock", raw)
	case u.Path == "":
		return "", fmt.Errorf("unix socket URL %q: no path, as in unix:///run/berth.sock", raw)
	case u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("unix socket URL %q: has a query or fragment, only a path is allowed", raw)
	}
	return u.Path, nil
}

// WithToken returns a client sharing c's connections but acting as token.
func (c *Client) WithToken(token string) *Client {
	return &Client{base: c.base, token: token, hc: c.hc, err: c.err}
}

// requestURL is the URL of path with query q.
func (c *Client) requestURL(path string, q url.Values) (string, error) {
	if c.err != nil {
		return "", c.err
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u, nil
}

// ObjectPath is the path of one object, or of its collection when name is "".
func ObjectPath(k Kind, tenant, name string) string {
	p := "/" + Version
	if k.TenantScoped() {
		p += "/tenants/" + url.PathEscape(tenant)
	}
	p += "/" + string(k)
	if name != "" {
		p += "/" + url.PathEscape(name)
	}
	return p
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	u, err := c.requestURL(path, q)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{}
	if json.Unmarshal(b, e) != nil || e.Code == 0 {
		return &Error{Code: resp.StatusCode, Reason: reasonFor(resp.StatusCode), Message: string(bytes.TrimSpace(b))}
	}
	return e
}

// Create stores o and fills it with the server's copy (resource version,
// creation time, a token's one-time secret).
func (c *Client) Create(ctx context.Context, o Object) error {
	m := o.GetMeta()
	return c.do(ctx, http.MethodPost, ObjectPath(o.Kind(), m.Tenant, ""), nil, o, o)
}

// Get reads the object named by out's kind and the given tenant and name into out.
func (c *Client) Get(ctx context.Context, tenant, name string, out Object) error {
	return c.do(ctx, http.MethodGet, ObjectPath(out.Kind(), tenant, name), nil, nil, out)
}

// Update writes o if its ResourceVersion is still current (409 otherwise) and
// fills o with the stored copy. Status fields are the control plane's and
// are not changed by Update.
func (c *Client) Update(ctx context.Context, o Object) error {
	m := o.GetMeta()
	return c.do(ctx, http.MethodPut, ObjectPath(o.Kind(), m.Tenant, m.Name), nil, o, o)
}

// Delete removes an object; a non-zero version makes it conditional.
func (c *Client) Delete(ctx context.Context, k Kind, tenant, name string, version int64) error {
	q := url.Values{}
	if version != 0 {
		q.Set("resourceVersion", strconv.FormatInt(version, 10))
	}
	return c.do(ctx, http.MethodDelete, ObjectPath(k, tenant, name), q, nil, nil)
}

// ListOf reads a collection of T (ListOf[*Service]); selector is a
// label selector ("app=web,tier!=db"), "" for all. It returns the revision to
// watch from.
func ListOf[T Object](ctx context.Context, c *Client, tenant, selector string) (List[T], error) {
	var zero T
	var out List[T]
	k := kindOf(zero)
	q := url.Values{}
	if selector != "" {
		q.Set("labels", selector)
	}
	err := c.do(ctx, http.MethodGet, ObjectPath(k, tenant, ""), q, nil, &out)
	return out, err
}

func kindOf(o Object) Kind {
	// The zero value of a pointer type still answers Kind: the methods do not
	// touch the receiver.
	return o.Kind()
}

// Register joins (or rejoins) the cluster as node name and returns the
// liveness lease the node must renew with Heartbeat.
func (c *Client) Register(ctx context.Context, name string, r Registration) (Lease, error) {
	var l Lease
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/register", nil, r, &l)
	return l, err
}

// Heartbeat renews the lease Register returned. A 410 means the lease
// expired or was replaced: register again.
func (c *Client) Heartbeat(ctx context.Context, name string, lease Lease) (Lease, error) {
	var l Lease
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/heartbeat", nil, lease, &l)
	return l, err
}

// NodeInstances lists the instances placed on a node, across tenants.
func (c *Client) NodeInstances(ctx context.Context, node string) (List[*Instance], error) {
	var out List[*Instance]
	err := c.do(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(node)+"/instances", nil, nil, &out)
	return out, err
}

// ReportStatus records an instance's observed state (agents and admins).
func (c *Client) ReportStatus(ctx context.Context, tenant, name string, s InstanceStatus) (*Instance, error) {
	out := &Instance{}
	err := c.do(ctx, http.MethodPut, ObjectPath(KindInstance, tenant, name)+"/status", nil, s, out)
	return out, err
}

// Drain moves a node's instances elsewhere and then marks it unschedulable.
func (c *Client) Drain(ctx context.Context, node string) (*Node, error) {
	out := &Node{}
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(node)+"/drain", nil, nil, out)
	return out, err
}

// Move reschedules one instance onto a named node.
func (c *Client) Move(ctx context.Context, tenant, name, node string) (*Instance, error) {
	out := &Instance{}
	err := c.do(ctx, http.MethodPost, ObjectPath(KindInstance, tenant, name)+"/move", nil, Move{Node: node}, out)
	return out, err
}

// ClaimBlock claims an address block for node; 409 if another node holds it.
func (c *Client) ClaimBlock(ctx context.Context, block, node string) (*AddressBlock, error) {
	out := &AddressBlock{}
	err := c.do(ctx, http.MethodPost, ObjectPath(KindAddressBlock, "", block)+"/claim", nil, Claim{Node: node}, out)
	return out, err
}

// ReleaseBlock frees a block node holds; 409 if node does not hold it.
func (c *Client) ReleaseBlock(ctx context.Context, block, node string) (*AddressBlock, error) {
	out := &AddressBlock{}
	err := c.do(ctx, http.MethodPost, ObjectPath(KindAddressBlock, "", block)+"/release", nil, Claim{Node: node}, out)
	return out, err
}

// Watcher is a stream of changes. It reconnects after a dropped connection,
// resuming from the last revision it delivered, so no change is lost or
// repeated; a 410 (history compacted) ends it and the caller lists again.
type Watcher struct {
	c    *Client
	path string
	q    url.Values
	ctx  context.Context
	rev  int64
	body io.ReadCloser
	sc   *bufio.Scanner
}

// Watch streams changes to a collection after revision rev (from a List).
func (c *Client) Watch(ctx context.Context, k Kind, tenant, selector string, rev int64) *Watcher {
	q := url.Values{}
	if selector != "" {
		q.Set("labels", selector)
	}
	return &Watcher{c: c, path: ObjectPath(k, tenant, ""), q: q, ctx: ctx, rev: rev}
}

// WatchNode streams changes to the instances placed on node after rev.
func (c *Client) WatchNode(ctx context.Context, node string, rev int64) *Watcher {
	return &Watcher{c: c, path: "/v1/nodes/" + url.PathEscape(node) + "/instances", q: url.Values{}, ctx: ctx, rev: rev}
}

// Revision is the revision of the last event delivered.
func (w *Watcher) Revision() int64 { return w.rev }

func (w *Watcher) open() error {
	q := url.Values{}
	for k, v := range w.q {
		q[k] = v
	}
	q.Set("watch", "1")
	q.Set("revision", strconv.FormatInt(w.rev, 10))
	u, err := w.c.requestURL(w.path, q)
	if err != nil {
		return fmt.Errorf("watch %s: %w", w.path, err)
	}
	req, err := http.NewRequestWithContext(w.ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if w.c.token != "" {
		req.Header.Set("Authorization", "Bearer "+w.c.token)
	}
	resp, err := w.c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("watch %s: %w", w.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return readError(resp)
	}
	w.body = resp.Body
	w.sc = bufio.NewScanner(resp.Body)
	w.sc.Buffer(make([]byte, 64<<10), 16<<20)
	return nil
}

// Open starts the stream now rather than at the first Next: a watch
// opened before a write sees that write without replaying history.
func (w *Watcher) Open() error {
	if w.sc != nil {
		return nil
	}
	return w.open()
}

// Next blocks for the next change. Bookmarks (progress notices with no
// object) advance the revision and are not returned.
func (w *Watcher) Next() (WatchEvent, error) {
	for attempt := 0; ; {
		if w.sc == nil {
			if err := w.open(); err != nil {
				if w.ctx.Err() != nil || Code(err) != 0 || w.c.err != nil {
					return WatchEvent{}, err
				}
				attempt++
				if attempt > 5 {
					return WatchEvent{}, err
				}
				select {
				case <-w.ctx.Done():
					return WatchEvent{}, w.ctx.Err()
				case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
				}
				continue
			}
		}
		if w.sc.Scan() {
			var ev WatchEvent
			if err := json.Unmarshal(w.sc.Bytes(), &ev); err != nil {
				return WatchEvent{}, fmt.Errorf("watch %s: decode event: %w", w.path, err)
			}
			if ev.Revision > w.rev {
				w.rev = ev.Revision
			}
			if ev.Type == "BOOKMARK" {
				continue
			}
			if ev.Type == "ERROR" {
				e := &Error{}
				_ = json.Unmarshal(ev.Object, e)
				return WatchEvent{}, e
			}
			return ev, nil
		}
		w.body.Close()
		w.sc = nil
		if w.ctx.Err() != nil {
			return WatchEvent{}, w.ctx.Err()
		}
	}
}

// Close ends the stream.
func (w *Watcher) Close() {
	if w.body != nil {
		w.body.Close()
	}
}

// Into decodes ev's object.
func (ev WatchEvent) Into(o Object) error {
	return json.Unmarshal(ev.Object, o)
}

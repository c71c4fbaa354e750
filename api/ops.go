package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/coder/websocket"
)

// OpPath is the path of a container operation on an instance.
func OpPath(tenant, name, op string) string {
	return ObjectPath(KindInstance, tenant, name) + "/" + op
}

// stream sends a request whose response body the caller reads.
func (c *Client) stream(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Response, error) {
	u, err := c.requestURL(path, q)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp, nil
}

// Run creates in and follows its run: fn gets its container's output as
// it comes, and Run returns how the run ended. in is filled with the
// instance as created once the server has made it. An instance with
// AutoRemove is deleted before Run returns (and, should this client go
// away first, by the control plane once it has exited). A run the server
// could not follow to its end (the instance deleted meanwhile, say) is an
// error.
func (c *Client) Run(ctx context.Context, in *Instance, fn func(LogLine) error) (*ExitStatus, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	q := url.Values{"follow": {"1"}}
	resp, err := c.stream(ctx, http.MethodPost, ObjectPath(KindInstance, in.Tenant, ""), q, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	exit, err := ReadFollow(resp.Body, "run "+in.Name, func(ev FollowEvent) error {
		if ev.Instance != nil {
			*in = *ev.Instance
			return nil
		}
		return fn(*ev.Log)
	})
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return exit, err
}

// ReadFollow reads a follow stream (FollowEvent lines) from r until its
// end, passing fn each line of output (and a create's instance), and
// returns the exit it ends with, or the error; what names the stream in
// errors.
func ReadFollow(r io.Reader, what string, fn func(FollowEvent) error) (*ExitStatus, error) {
	sc := bufio.NewScanner(r)
	// Most streams are a few short lines; the buffer grows for long ones.
	sc.Buffer(make([]byte, 4<<10), 16<<20)
	for sc.Scan() {
		var ev FollowEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("%s: bad line: %w", what, err)
		}
		switch {
		case ev.Exit != nil:
			return ev.Exit, nil
		case ev.Error != nil:
			return nil, ev.Error
		case ev.Log != nil || ev.Instance != nil:
			if err := fn(ev); err != nil {
				return nil, err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return nil, fmt.Errorf("%s: the stream ended before the run did", what)
}

// Logs calls fn with each log line of an instance's container, following
// new lines until the container ends or ctx does when q.Follow is set.
func (c *Client) Logs(ctx context.Context, tenant, name string, q LogQuery, fn func(LogLine) error) error {
	resp, err := c.stream(ctx, http.MethodGet, OpPath(tenant, name, OpLogs), q.Values(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var l LogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("logs of %s: bad line: %w", name, err)
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("logs of %s: %w", name, err)
	}
	return nil
}

// Stats reads an instance's container resource use.
func (c *Client) Stats(ctx context.Context, tenant, name string) (Stats, error) {
	var s Stats
	err := c.do(ctx, http.MethodGet, OpPath(tenant, name, OpStats), nil, nil, &s)
	return s, err
}

// Top lists an instance's container processes.
func (c *Client) Top(ctx context.Context, tenant, name string) (Top, error) {
	var t Top
	err := c.do(ctx, http.MethodGet, OpPath(tenant, name, OpTop), nil, nil, &t)
	return t, err
}

// Kill sends signal (a name such as TERM or KILL, or a number) to an
// instance's container.
func (c *Client) Kill(ctx context.Context, tenant, name, signal string) error {
	return c.do(ctx, http.MethodPost, OpPath(tenant, name, OpKill), url.Values{"signal": {signal}}, nil, nil)
}

// CopyFrom returns a tar of path in an instance's container.
func (c *Client) CopyFrom(ctx context.Context, tenant, name, path string) (io.ReadCloser, error) {
	resp, err := c.stream(ctx, http.MethodGet, OpPath(tenant, name, OpArchive), url.Values{"path": {path}}, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// CopyTo extracts a tar into directory path of an instance's container.
func (c *Client) CopyTo(ctx context.Context, tenant, name, path string, tar io.Reader) error {
	resp, err := c.stream(ctx, http.MethodPut, OpPath(tenant, name, OpArchive), url.Values{"path": {path}}, tar)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// VolumeName is a node's name for a tenant's named volume: tenants'
// volumes of the same name are different volumes. Neither a tenant nor a
// volume name has a '_'.
func VolumeName(tenant, volume string) string { return tenant + "_" + volume }

// VolumePath is the path of a tenant's named volume's contents on a node.
func VolumePath(tenant, volume string) string {
	return "/" + Version + "/tenants/" + url.PathEscape(tenant) + "/volumes/" + url.PathEscape(volume) + "/" + OpArchive
}

// CopyVolumeFrom returns a tar of a tenant's named volume on node.
func (c *Client) CopyVolumeFrom(ctx context.Context, tenant, volume, node string) (io.ReadCloser, error) {
	resp, err := c.stream(ctx, http.MethodGet, VolumePath(tenant, volume), url.Values{"node": {node}}, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// CopyVolumeTo extracts a tar into a tenant's named volume on node, made
// if needed.
func (c *Client) CopyVolumeTo(ctx context.Context, tenant, volume, node string, tar io.Reader) error {
	resp, err := c.stream(ctx, http.MethodPut, VolumePath(tenant, volume), url.Values{"node": {node}}, tar)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// Exec starts a process in an instance's running container.
func (c *Client) Exec(ctx context.Context, tenant, name string, o ExecOptions) (*Stream, error) {
	return c.dial(ctx, OpPath(tenant, name, OpExec), o.Values())
}

// Attach connects to an instance's container's own terminal or stdin
// (Template.TTY or Template.Stdin).
func (c *Client) Attach(ctx context.Context, tenant, name string) (*Stream, error) {
	return c.dial(ctx, OpPath(tenant, name, OpAttach), nil)
}

func (c *Client) dial(ctx context.Context, path string, q url.Values) (*Stream, error) {
	u, err := c.requestURL(path, q)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	h := http.Header{}
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.hc, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 {
			if resp.Body != nil {
				defer resp.Body.Close()
			}
			return nil, readError(resp)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// Output arrives in frames of any size a process writes at once.
	conn.SetReadLimit(16 << 20)
	return &Stream{conn: conn}, nil
}

// Stream is an exec or attach session.
type Stream struct {
	conn *websocket.Conn
}

// StreamIO is what a session is connected to. Stdin nil sends no input;
// Resize, if set, delivers terminal sizes (the first one right away).
type StreamIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Resize         <-chan TermSize
}

// ErrDetached is returned by Run when the session ended without an exit
// code: the client detached, or the server closed an attach.
var ErrDetached = errors.New("detached")

// Run pumps the session until the process ends, and returns its exit code.
func (s *Stream) Run(ctx context.Context, sio StreamIO) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer s.conn.CloseNow()
	if sio.Resize != nil {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case sz, ok := <-sio.Resize:
					if !ok {
						return
					}
					if s.control(ctx, StreamControl{Resize: &sz}) != nil {
						return
					}
				}
			}
		}()
	}
	if sio.Stdin != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := sio.Stdin.Read(buf[1:])
				if n > 0 {
					buf[0] = ChannelStdin
					if s.conn.Write(ctx, websocket.MessageBinary, buf[:1+n]) != nil {
						return
					}
				}
				if err != nil {
					if errors.Is(err, ErrDetached) {
						// The reader saw the detach keys.
						s.conn.Close(websocket.StatusNormalClosure, "detached")
						return
					}
					_ = s.control(ctx, StreamControl{CloseStdin: true})
					return
				}
			}
		}()
	}
	for {
		typ, b, err := s.conn.Read(ctx)
		if err != nil {
			var ce websocket.CloseError
			if errors.As(err, &ce) && ce.Code == websocket.StatusNormalClosure {
				return -1, ErrDetached
			}
			return -1, fmt.Errorf("stream: %w", err)
		}
		if typ == websocket.MessageText {
			var m StreamControl
			if err := json.Unmarshal(b, &m); err != nil {
				return -1, fmt.Errorf("stream: bad control message: %w", err)
			}
			switch {
			case m.Error != "":
				return -1, errors.New(m.Error)
			case m.Exit != nil:
				return *m.Exit, nil
			}
			continue
		}
		if len(b) == 0 {
			continue
		}
		w := sio.Stdout
		if b[0] == ChannelStderr && sio.Stderr != nil {
			w = sio.Stderr
		}
		if w != nil {
			if _, err := w.Write(b[1:]); err != nil {
				return -1, err
			}
		}
	}
}

func (s *Stream) control(ctx context.Context, m StreamControl) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return s.conn.Write(ctx, websocket.MessageText, b)
}

// Close ends the session.
func (s *Stream) Close() error { return s.conn.Close(websocket.StatusNormalClosure, "") }

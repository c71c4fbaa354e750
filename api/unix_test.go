package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// serveUnix serves h on a unix socket in a temporary directory until the
// test ends, and returns the socket's unix:// URL.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + sock
}

// unixTestAPI answers a Get of tenant t1, a watch of tenants and an exec,
// the three ways the client reaches a server, for token "secret" only.
func unixTestAPI(t *testing.T) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tenants/t1", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(&Tenant{Meta: Meta{Name: "t1", ResourceVersion: 7}, Description: "over a socket"})
	})
	mux.HandleFunc("GET /v1/tenants", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("watch") != "1" || r.URL.Query().Get("revision") != "7" {
			http.Error(w, "want a watch from revision 7", http.StatusBadRequest)
			return
		}
		obj, _ := json.Marshal(&Tenant{Meta: Meta{Name: "t2", ResourceVersion: 8}})
		json.NewEncoder(w).Encode(WatchEvent{Type: "ADDED", Revision: 8, Object: obj})
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("GET /v1/tenants/t1/instances/web/exec", func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer conn.CloseNow()
		ctx := r.Context()
		_ = conn.Write(ctx, websocket.MessageBinary, append([]byte{ChannelStdout}, "hi\n"...))
		code := 0
		b, _ := json.Marshal(StreamControl{Exit: &code})
		_ = conn.Write(ctx, websocket.MessageText, b)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer secret" {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// A unix:// base reaches the server over its socket for plain requests,
// watches and websocket sessions, with the default client or the caller's.
func TestClientOverUnixSocket(t *testing.T) {
	base := serveUnix(t, unixTestAPI(t))
	callerTransport := &http.Transport{MaxIdleConnsPerHost: 2}
	clients := []struct {
		name string
		hc   *http.Client
	}{
		{"default client", nil},
		{"caller's transport", &http.Client{Transport: callerTransport, Timeout: time.Minute}},
		{"caller's client without transport", &http.Client{}},
	}
	for _, tc := range clients {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := NewClient(base, "secret", tc.hc)

			var tn Tenant
			if err := c.Get(ctx, "", "t1", &tn); err != nil {
				t.Fatal(err)
			}
			if tn.Name != "t1" || tn.Description != "over a socket" {
				t.Errorf("Get: %+v", tn)
			}
			if err := c.WithToken("wrong").Get(ctx, "", "t1", &tn); Code(err) != http.StatusUnauthorized {
				t.Errorf("Get with the wrong token: %v, want 401", err)
			}

			w := c.Watch(ctx, KindTenant, "", "", 7)
			defer w.Close()
			ev, err := w.Next()
			if err != nil {
				t.Fatal(err)
			}
			var added Tenant
			if err := ev.Into(&added); err != nil || ev.Type != "ADDED" || added.Name != "t2" || w.Revision() != 8 {
				t.Errorf("watch event %+v (%v), revision %d", added, err, w.Revision())
			}

			s, err := c.Exec(ctx, "t1", "web", ExecOptions{Cmd: []string{"echo", "hi"}})
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			code, err := s.Run(ctx, StreamIO{Stdout: &out})
			if err != nil || code != 0 || out.String() != "hi\n" {
				t.Errorf("exec: exit %d, %v, stdout %q", code, err, out.String())
			}
		})
	}
	if callerTransport.DialContext != nil {
		t.Error("the caller's transport was changed, not cloned")
	}
}

// A unix:// base NewClient cannot use makes every request fail with the
// reason, and a watch gives up at once rather than retrying.
func TestClientMalformedUnixURL(t *testing.T) {
	cases := []struct {
		name, base string
		hc         *http.Client
		want       string
	}{
		{"no path", "unix://", nil, "no path"},
		{"relative path", "unix:api.sock", nil, "must be absolute"},
		{"host instead of path", "unix://run/berth.sock", nil, "must be absolute"},
		{"query", "unix:///run/berth.sock?x=1", nil, "query"},
		{"transport that cannot dial", "unix:///run/berth.sock", &http.Client{Transport: roundTripFunc(nil)}, "not an *http.Transport"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := NewClient(tc.base, "secret", tc.hc)
			if err := c.Get(ctx, "", "t1", &Tenant{}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Get: %v, want an error with %q", err, tc.want)
			}
			start := time.Now()
			w := c.Watch(ctx, KindTenant, "", "", 0)
			if _, err := w.Next(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("watch: %v, want an error with %q", err, tc.want)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("watch took %v to give up", d)
			}
			if _, err := c.Exec(ctx, "t1", "web", ExecOptions{Cmd: []string{"true"}}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("exec: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) {
	if f == nil {
		return nil, errors.New("no round trip")
	}
	return f(r)
}

package agent

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	goruntime "runtime"
	"sync"
	"time"

	"github.com/berth-dev/berth/runtime"
	"golang.org/x/sys/unix"
)

// HealthState is what the health checks found; Inspect reports it.
type HealthState struct {
	Status        string        `json:"status"` // starting, healthy, unhealthy
	FailingStreak int           `json:"failingStreak"`
	Log           []HealthProbe `json:"log,omitempty"` // the last five probes
}

// HealthProbe is one check's result.
type HealthProbe struct {
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	ExitCode int       `json:"exitCode"` // 0 healthy, 1 unhealthy
	Output   string    `json:"output,omitempty"`
}

// NextHealth is the health after one probe: failures in the start period
// do not count, Retries failures in a row make it unhealthy, one success
// makes it healthy.
func NextHealth(h HealthState, hc HealthCheck, p HealthProbe, inStartPeriod bool) HealthState {
	h.Log = append(h.Log, p)
	if len(h.Log) > 5 {
		h.Log = h.Log[len(h.Log)-5:]
	}
	if p.ExitCode == 0 {
		h.Status, h.FailingStreak = "healthy", 0
		return h
	}
	if inStartPeriod && h.Status == "starting" {
		return h
	}
	h.FailingStreak++
	if h.FailingStreak >= hc.withDefaults().Retries {
		h.Status = "unhealthy"
	}
	return h
}

// startHealthLocked starts the health check loop of a container that has
// one; c.mu is held.
func (a *Agent) startHealthLocked(c *container) {
	hc := c.meta.Spec.Health
	if hc == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stopHealth = cancel
	c.meta.State.Health = &HealthState{Status: "starting"}
	target, started := a.probeTargetLocked(c), c.meta.State.StartedAt
	h := hc.withDefaults()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(h.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			p := a.probe(ctx, c, h, target)
			if ctx.Err() != nil {
				return
			}
			c.mu.Lock()
			if c.meta.State.Health != nil {
				prev := c.meta.State.Health.Status
				next := NextHealth(*c.meta.State.Health, h, p, time.Since(started) < h.StartPeriod)
				c.meta.State.Health = &next
				if next.Status != prev {
					_ = a.save(c)
					a.notify()
				}
			}
			c.mu.Unlock()
		}
	}()
}

// probe runs one check with its timeout.
func (a *Agent) probe(ctx context.Context, c *container, h HealthCheck, target probeTarget) HealthProbe {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	p := HealthProbe{Start: time.Now().UTC()}
	var err error
	switch {
	case len(h.Cmd) > 0:
		var out bytes.Buffer
		w := &limitedWriter{w: &out, n: 4096}
		var code int
		code, err = a.Exec(ctx, c.meta.ID, ExecSpec{Args: h.Cmd}, runtime.IO{Stdout: w, Stderr: w})
		p.Output = out.String()
		if err == nil && code != 0 {
			err = fmt.Errorf("exit code %d", code)
		}
	case h.HTTPPath != "":
		err = httpProbe(ctx, target, h.Port, h.HTTPPath)
	default:
		var conn net.Conn
		conn, err = target.dial(ctx, "tcp", target.addr(h.Port))
		if err == nil {
			conn.Close()
		}
	}
	p.End = time.Now().UTC()
	if err != nil {
		p.ExitCode = 1
		if p.Output == "" {
			p.Output = err.Error()
		}
	}
	return p
}

func httpProbe(ctx context.Context, target probeTarget, port int, path string) error {
	tr := &http.Transport{DialContext: target.dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target.addr(port)+path, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// dialInNetns connects from inside the network namespace of pid. The
// socket is made on a thread that joined that namespace; the thread is
// never unlocked, so Go discards it rather than reuse it elsewhere. The
// connection, once made, works from any thread.
func dialInNetns(ctx context.Context, pid int, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("join network namespace of %d: %w", pid, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// limitedWriter keeps the first n bytes written to it, from any number of
// goroutines (an exec's stdout and stderr copiers).
type limitedWriter struct {
	mu sync.Mutex
	w  interface{ Write([]byte) (int, error) }
	// n is what may still be written; guarded by mu.
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	if len(p) > l.n {
		p = p[:l.n]
	}
	l.n -= len(p)
	if len(p) > 0 {
		if _, err := l.w.Write(p); err != nil {
			return 0, err
		}
	}
	return n, nil
}

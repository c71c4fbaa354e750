//go:build linux

// Package netnstest builds miniature networks for tests and benchmarks:
// named network namespaces standing for hosts and containers, joined by
// veth links. Everything it creates is removed by the test's cleanup.
package netnstest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// NS is a named network namespace under /run/netns.
type NS struct {
	Name string
	Path string
}

// RequireRoot skips the test unless it runs as root with the tools the
// tests drive (ip, and whatever extra names the caller lists).
func RequireRoot(tb testing.TB, tools ...string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to create network namespaces")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Skipf("needs %s: %v", tool, err)
		}
	}
}

// Unique returns a short random tag for names that must not collide with
// another run's.
func Unique() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// New creates a namespace named prefix-tag with lo up, deleted at cleanup.
func New(tb testing.TB, name string) NS {
	tb.Helper()
	ns := NS{Name: name, Path: "/run/netns/" + name}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	tb.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ns.Run(tb, "ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command inside the namespace and fails the test on error.
func (n NS) Run(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := n.Try(args...)
	if err != nil {
		tb.Fatalf("in %s: %s: %v: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs a command inside the namespace and returns its combined output.
func (n NS) Try(args ...string) (string, error) {
	var b bytes.Buffer
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

// Cmd returns an unstarted command inside the namespace.
func (n NS) Cmd(args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn opens
// stay in the namespace afterwards.
func (n NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(n.Path)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener inside the namespace, closed at cleanup.
func (n NS) Listen(tb testing.TB, network, addr string) net.Listener {
	tb.Helper()
	var l net.Listener
	err := n.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listen %s in %s: %v", addr, n.Name, err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// Dial connects from inside the namespace.
func (n NS) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// Link joins two namespaces with a veth pair, giving each end an address
// (CIDR form) and the MTU, and brings both up.
func Link(tb testing.TB, a NS, aIf, aAddr string, b NS, bIf, bAddr string, mtu int) {
	tb.Helper()
	tmp := "lt" + Unique()
	if out, err := exec.Command("ip", "link", "add", tmp, "netns", a.Name, "mtu", fmt.Sprint(mtu),
		"type", "veth", "peer", "name", bIf, "netns", b.Name, "mtu", fmt.Sprint(mtu)).CombinedOutput(); err != nil {
		tb.Fatalf("veth %s-%s: %v: %s", a.Name, b.Name, err, out)
	}
	a.Run(tb, "ip", "link", "set", tmp, "name", aIf)
	for _, e := range []struct {
		ns       NS
		ifc, adr string
	}{{a, aIf, aAddr}, {b, bIf, bAddr}} {
		if e.adr != "" {
			e.ns.Run(tb, "ip", "addr", "add", e.adr, "dev", e.ifc)
		}
		e.ns.Run(tb, "ip", "link", "set", e.ifc, "up")
	}
}

// Serve accepts connections on l and writes each client's address as seen
// by the server, then closes: enough to prove reachability and source
// address preservation.
func Serve(l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			c.Close()
		}
	}()
}

// Ask dials addr from ns and returns what a Serve server answered.
func Ask(ns NS, addr string) (string, error) {
	c, err := ns.Dial("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	var b bytes.Buffer
	_, err = b.ReadFrom(c)
	return strings.TrimSpace(b.String()), err
}

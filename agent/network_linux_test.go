package agent

import (
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// vethNetworker is the smallest real Networker: a veth pair per container
// with a /30 between host and container, so a test can reach the
// container the way the network package will let everyone.
type vethNetworker struct {
	t      *testing.T
	subnet byte
	mu     sync.Mutex
	// attached maps container IDs to host-side link names; guarded by mu.
	attached map[string]string
	n        byte
}

func (v *vethNetworker) Attach(netnsPath, id, tenant string, labels map[string]string) ([]netip.Prefix, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.n++
	host := fmt.Sprintf("bt%x%02x", v.subnet, v.n)
	base := netip.AddrFrom4([4]byte{100, 127, v.subnet, v.n * 4})
	hostAddr := base.Next()
	ctrAddr := hostAddr.Next()
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: host + "c"}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, err
	}
	v.attached[id] = host
	peer, err := netlink.LinkByName(host + "c")
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		return nil, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	if peer, err = h.LinkByName(host + "c"); err != nil {
		return nil, err
	}
	ctrPrefix := netip.PrefixFrom(ctrAddr, 30)
	if err := h.AddrAdd(peer, &netlink.Addr{IPNet: &net.IPNet{IP: ctrAddr.AsSlice(), Mask: net.CIDRMask(30, 32)}}); err != nil {
		return nil, err
	}
	if err := h.LinkSetUp(peer); err != nil {
		return nil, err
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return nil, err
	}
	if err := netlink.AddrAdd(hl, &netlink.Addr{IPNet: &net.IPNet{IP: hostAddr.AsSlice(), Mask: net.CIDRMask(30, 32)}}); err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return nil, err
	}
	return []netip.Prefix{ctrPrefix}, nil
}

func (v *vethNetworker) Detach(id string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	host, ok := v.attached[id]
	if !ok {
		return nil
	}
	delete(v.attached, id)
	l, err := netlink.LinkByName(host)
	if err != nil {
		return nil // gone with the container's namespace
	}
	return netlink.LinkDel(l)
}

// A container on a network gets its addresses from the Networker before
// its workload starts, is reachable there, and is detached when it ends.
func TestNetworkerAttachesBeforeStartAndDetachesAtExit(t *testing.T) {
	e := newEnv(t)
	var b [1]byte
	_, _ = rand.Read(b[:])
	nw := &vethNetworker{t: t, subnet: b[0], attached: map[string]string{}}
	t.Cleanup(func() {
		for id := range nw.attached {
			_ = nw.Detach(id)
		}
	})
	a, err := New(ctxT(t), Config{Root: e.dir + "/agent", Images: e.images, Runtime: e.rt, InitPath: e.init, Networker: nw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range a.List() {
			_ = a.Remove(ctxT(t), c.ID, true)
		}
		a.Close()
		removeCgroupParent(a.cgroups)
	})
	id := run(t, a, ContainerSpec{Network: "test", Cmd: []string{"sh", "-c", "mkdir /www && echo hello > /www/index.html && httpd -f -p 8080 -h /www"}})
	c, _ := a.Inspect(id)
	if len(c.State.Addresses) != 1 {
		t.Fatalf("addresses: %v", c.State.Addresses)
	}
	url := "http://" + netip.AddrPortFrom(c.State.Addresses[0].Addr(), 8080).String() + "/"
	var body string
	waitFor(t, "the web server", func() bool {
		cl := http.Client{Timeout: time.Second}
		resp, err := cl.Get(url)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		bb, _ := io.ReadAll(resp.Body)
		body = string(bb)
		return resp.StatusCode == 200
	})
	if body != "hello\n" {
		t.Fatalf("GET %s: %q", url, body)
	}
	if err := a.Stop(ctxT(t), id, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	nw.mu.Lock()
	n := len(nw.attached)
	nw.mu.Unlock()
	if n != 0 {
		t.Fatalf("still attached after exit: %v", nw.attached)
	}
}

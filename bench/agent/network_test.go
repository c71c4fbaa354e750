package agent_bench

// BenchmarkRunTrueNetwork is `busybox true` from nothing to removed with a
// routed network attached, against the same with network none, and with
// idle containers already on the network (every attach and detach
// re-applies the node's policy, which lists them all):
//
//	sudo go test -run '^$' -bench RunTrueNetwork -benchtime 20x ./bench/agent
//	sudo BERTH_BENCH_NET_IDLE=500 go test -run '^$' -bench RunTrueNetwork -benchtime 20x ./bench/agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/internal/busybox"
	"github.com/berth-dev/berth/network"
	"github.com/berth-dev/berth/network/ipam"
	"github.com/berth-dev/berth/network/netnstest"
	"github.com/berth-dev/berth/network/policy"
)

// netIdleCount is how many idle containers the last sub-benchmark starts
// first: $BERTH_BENCH_NET_IDLE, else 100.
func netIdleCount() int {
	if n, err := strconv.Atoi(os.Getenv("BERTH_BENCH_NET_IDLE")); err == nil && n > 0 {
		return n
	}
	return 100
}

// newNetNode is newNode with a network whose host is a namespace the
// benchmark made.
func newNetNode(b *testing.B) *node {
	b.Helper()
	netnstest.RequireRoot(b)
	if err := busybox.Available(); err != nil {
		b.Skip(err)
	}
	dir, initPath, images, rt := nodeParts(b)
	host := netnstest.New(b, "bb"+netnstest.Unique()+"-host")
	store, err := ipam.NewFileStore(filepath.Join(dir, "ipam.json"))
	if err != nil {
		b.Fatal(err)
	}
	nw, err := agent.NewNetwork(network.Config{Node: "bench", HostNetNS: host.Path, Store: store,
		IPAM: ipam.Config{Pools: []ipam.Pool{{Prefix: netip.MustParsePrefix("10.66.0.0/16"), BlockBits: 26}}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nw.Close() })
	cgParent := fmt.Sprintf("/berth/benchnet-%d", os.Getpid())
	a, err := agent.New(context.Background(), agent.Config{Root: filepath.Join(dir, "agent"), StateRoot: filepath.Join(filepath.Dir(rt.Root), "agent"), Images: images, Runtime: rt,
		InitPath: initPath, CgroupParent: cgParent, Networker: nw})
	if err != nil {
		b.Fatal(err)
	}
	n := &node{dir: dir, agent: a, rt: rt}
	b.Cleanup(func() {
		for _, c := range a.List() {
			_ = a.Remove(context.Background(), c.ID, true)
		}
		a.Close()
		hs, _ := filepath.Glob("/sys/fs/cgroup/*")
		for _, h := range append(hs, "/sys/fs/cgroup") {
			_ = os.Remove(filepath.Join(h, cgParent))
		}
	})
	return n
}

func BenchmarkRunTrueNetwork(b *testing.B) {
	n := newNetNode(b)
	ctx := context.Background()
	runTrue := func(b *testing.B, network string) time.Duration {
		start := time.Now()
		for range b.N {
			id, err := n.agent.Run(ctx, agent.ContainerSpec{Image: "busybox", Network: network, Tenant: "bench", Cmd: []string{"true"}})
			if err != nil {
				b.Fatal(err)
			}
			if code, err := n.agent.Wait(ctx, id); err != nil || code != 0 {
				b.Fatalf("exit %d %v", code, err)
			}
			if err := n.agent.Remove(ctx, id, false); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / time.Duration(b.N)
	}
	var none, routed, noneBusy, busy time.Duration
	b.Run("none", func(b *testing.B) { none = runTrue(b, "none") })
	b.Run("routed", func(b *testing.B) { routed = runTrue(b, "berth") })
	idle := netIdleCount()
	for i := range idle {
		if _, err := n.agent.Run(ctx, agent.ContainerSpec{Image: "busybox", Network: "berth", Tenant: fmt.Sprint("t", i%10), Cmd: []string{"sleep", "100000"}}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run(fmt.Sprintf("none-with-%d-idle", idle), func(b *testing.B) { noneBusy = runTrue(b, "none") })
	b.Run(fmt.Sprintf("routed-with-%d-idle", idle), func(b *testing.B) { busy = runTrue(b, "berth") })
	fmt.Printf("run --rm true: routed %v against none %v: %.2fx (+%v)\n", routed, none, float64(routed)/float64(none), routed-none)
	fmt.Printf("with %d idle containers on the network: routed %v against none %v: %.2fx (+%v)\n",
		idle, busy, noneBusy, float64(busy)/float64(noneBusy), busy-noneBusy)
}

// BenchmarkAttachDetach is one container's network set up and torn down:
// the network.Manager alone, against the agent's Network, which also
// re-applies the node's policy after each, with 0 and 1,000 other
// endpoints in it:
//
//	sudo go test -run '^$' -bench AttachDetach -benchtime 200x ./bench/agent
func BenchmarkAttachDetach(b *testing.B) {
	netnstest.RequireRoot(b)
	tag := netnstest.Unique()
	host := netnstest.New(b, "bb"+tag+"-host")
	ctr := netnstest.New(b, "bb"+tag+"-ctr")
	store, err := ipam.NewFileStore(filepath.Join(b.TempDir(), "ipam.json"))
	if err != nil {
		b.Fatal(err)
	}
	nw, err := agent.NewNetwork(network.Config{Node: "bench", HostNetNS: host.Path, Store: store,
		IPAM: ipam.Config{Pools: []ipam.Pool{{Prefix: netip.MustParsePrefix("10.66.0.0/16"), BlockBits: 26}}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nw.Close() })
	if err := nw.Resume(nil); err != nil {
		b.Fatal(err)
	}
	per := map[string]time.Duration{}
	timed := func(name string, fn func(id string) error) {
		b.Run(name, func(b *testing.B) {
			start := time.Now()
			for i := range b.N {
				if err := fn(fmt.Sprint("c", i)); err != nil {
					b.Fatal(err)
				}
			}
			per[name] = time.Since(start) / time.Duration(b.N)
		})
	}
	timed("manager", func(id string) error {
		if _, err := nw.Manager().Attach(network.Container{ID: id, NetNS: ctr.Path, Tenant: "t"}); err != nil {
			return err
		}
		return nw.Manager().Detach(id)
	})
	adapter := func(id string) error {
		if _, err := nw.Attach(ctr.Path, agent.NetEndpoint{ID: id, Tenant: "t", Ports: []agent.PortMapping{{HostPort: 80, ContainerPort: 80}}}); err != nil {
			return err
		}
		return nw.Detach(id)
	}
	timed("network", adapter)
	var remote []policy.Endpoint
	for i := range 1000 {
		remote = append(remote, policy.Endpoint{ID: fmt.Sprint("r", i), Tenant: fmt.Sprint("t", i%20),
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 67, byte(i >> 8), byte(i)})}})
	}
	if err := nw.SetRemoteEndpoints(remote); err != nil {
		b.Fatal(err)
	}
	timed("network-1000-endpoints", adapter)
	m := per["manager"]
	fmt.Printf("attach+detach: manager %v; with policy re-applied: %v (%.2fx), with 1000 endpoints %v (%.2fx)\n",
		m, per["network"], float64(per["network"])/float64(m), per["network-1000-endpoints"], float64(per["network-1000-endpoints"])/float64(m))
}

package main

import (
	"context"
	"crypto/rand"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control"
	"github.com/berth-dev/berth/network/ipam"
)

func TestParseUpNetwork(t *testing.T) {
	for _, tc := range []struct {
		name, network string
		pools         []string
		want          []ipam.Pool
		wantErr       string
	}{
		{name: "default", network: defaultUpNetwork, pools: []string{defaultUpPool},
			want: []ipam.Pool{{Prefix: netip.MustParsePrefix("10.213.0.0/16"), BlockBits: 26}}},
		{name: "dual stack", network: "net1", pools: []string{"10.1.0.0/20", "fd00:1::/64"},
			want: []ipam.Pool{{Prefix: netip.MustParsePrefix("10.1.0.0/20"), BlockBits: 26}, {Prefix: netip.MustParsePrefix("fd00:1::/64"), BlockBits: 122}}},
		{name: "none ignores pools", network: "none", pools: []string{"garbage"}},
		{name: "not a CIDR", network: "n", pools: []string{"10.1.0.0"}, wantErr: `--pool "10.1.0.0": not a CIDR`},
		{name: "host bits", network: "n", pools: []string{"10.1.2.3/16"}, wantErr: "did you mean 10.1.0.0/16?"},
		{name: "smaller than a block", network: "n", pools: []string{"10.1.0.0/27"}, wantErr: "smaller than one /26 address block"},
		{name: "public", network: "n", pools: []string{"8.8.0.0/16"}, wantErr: "not a private range"},
		{name: "IPv6 only", network: "n", pools: []string{"fd00::/64"}, wantErr: "no IPv4 pool"},
		{name: "overlap", network: "n", pools: []string{"10.1.0.0/16", "10.1.128.0/17"}, wantErr: "overlaps"},
		{name: "no pool", network: "n", wantErr: "needs an address pool"},
		{name: "bad name", network: "-x", pools: []string{defaultUpPool}, wantErr: `--network "-x"`},
		{name: "empty name", network: "", pools: []string{defaultUpPool}, wantErr: `--network ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := parseUpNetwork(tc.network, tc.pools)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n.name != tc.network || !slices.Equal(n.plan.Pools, tc.want) {
				t.Fatalf("got %+v, want %s with pools %v", n, tc.network, tc.want)
			}
			if n.enabled() != (tc.network != "none") {
				t.Fatalf("enabled %v", n.enabled())
			}
		})
	}
}

func TestBlockNameIsAValidObjectName(t *testing.T) {
	for in, want := range map[string]string{
		"10.213.0.64/26":     "10-213-0-64-26",
		"fd00:1::1:0/122":    "fd00-0001-0000-0000-0000-0000-0001-0000-122",
		"192.168.255.192/26": "192-168-255-192-26",
	} {
		got := blockName(netip.MustParsePrefix(in))
		if got != want {
			t.Errorf("blockName(%s) = %s, want %s", in, got, want)
		}
		if err := api.ValidName(got); err != nil {
			t.Errorf("blockName(%s) = %s: %v", in, got, err)
		}
	}
}

func TestPoolBlocks(t *testing.T) {
	got, ok := poolBlocks(ipam.Pool{Prefix: netip.MustParsePrefix("10.1.0.0/24"), BlockBits: 26}, 4)
	want := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/26"), netip.MustParsePrefix("10.1.0.64/26"),
		netip.MustParsePrefix("10.1.0.128/26"), netip.MustParsePrefix("10.1.0.192/26")}
	if !ok || !slices.Equal(got, want) {
		t.Fatalf("got %v %v, want %v", got, ok, want)
	}
	if got, ok := poolBlocks(ipam.Pool{Prefix: netip.MustParsePrefix("10.1.0.0/24"), BlockBits: 26}, 3); ok || got != nil {
		t.Fatalf("over the limit: got %v %v", got, ok)
	}
	if _, ok := poolBlocks(ipam.Pool{Prefix: netip.MustParsePrefix("fd00::/48"), BlockBits: 122}, maxListedBlocks); ok {
		t.Fatal("an IPv6 /48 of /122 blocks listed")
	}
}

func TestPlanBlocks(t *testing.T) {
	p := netip.MustParsePrefix
	b0, b1, b2, b3 := p("10.1.0.0/26"), p("10.1.0.64/26"), p("10.1.0.128/26"), p("10.1.0.192/26")
	local := ipam.State{
		Blocks: map[netip.Prefix]string{b0: "n1", b1: "n1", b2: "n1"},
		Addrs:  map[netip.Addr]ipam.Owner{netip.MustParseAddr("10.1.0.1"): {Node: "n1", Container: "c1"}},
	}
	// b0: the control plane agrees; b1: it has it free (claim again);
	// b2: another node took it, and nothing here uses it (drop); b3: held
	// here only in the control plane (adopt).
	plan, err := planBlocks(local, map[netip.Prefix]string{b0: "n1", b2: "n2", b3: "n1"}, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[netip.Prefix]string{b0: "n1", b1: "n1", b3: "n1"}; !mapsEqual(plan.next.Blocks, want) {
		t.Errorf("next blocks %v, want %v", plan.next.Blocks, want)
	}
	if !slices.Equal(plan.claim, []netip.Prefix{b1}) {
		t.Errorf("claim %v, want [%s]", plan.claim, b1)
	}
	if want := map[netip.Prefix]string{b2: "n2"}; !mapsEqual(plan.foreign, want) {
		t.Errorf("foreign %v, want %v", plan.foreign, want)
	}
	if len(local.Blocks) != 3 {
		t.Errorf("planBlocks modified its input: %v", local.Blocks)
	}
	// A block in use here that another node holds is refused.
	if _, err := planBlocks(local, map[netip.Prefix]string{b0: "n2"}, "n1"); err == nil || !strings.Contains(err.Error(), "container c1") {
		t.Errorf("conflict: %v", err)
	}
}

// IPAM decides over the node's blocks plus the foreign ones, and the
// foreign ones never reach the node's store.
func TestForeignBlocksSteerIPAMAndStayOut(t *testing.T) {
	plan := ipam.Config{Pools: []ipam.Pool{{Prefix: netip.MustParsePrefix("10.1.0.0/24"), BlockBits: 26}}}
	foreign := map[netip.Prefix]string{netip.MustParsePrefix("10.1.0.0/26"): "n2"}
	s := ipam.State{}
	a, n, err := ipam.Assign(plan, withForeign(s, foreign), "n1", "c1")
	if err != nil {
		t.Fatal(err)
	}
	if a.V4 != netip.MustParseAddr("10.1.0.64") {
		t.Fatalf("assigned %s, want the first address of the first block no other node holds", a.V4)
	}
	n = withoutForeign(n, foreign)
	if want := map[netip.Prefix]string{netip.MustParsePrefix("10.1.0.64/26"): "n1"}; !mapsEqual(n.Blocks, want) {
		t.Fatalf("stored blocks %v, want %v", n.Blocks, want)
	}
	if got := newBlocks(s, n, "n1"); !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("10.1.0.64/26")}) {
		t.Fatalf("new blocks %v", got)
	}
	if got := blockRoutes(n, "n1"); len(got) != 1 || got[netip.MustParsePrefix("10.1.0.64/26")] != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("routes %v", got)
	}
}

func mapsEqual[K, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// controlPlane is a real control plane (embedded etcd, the API server) for
// tests that need no root.
func controlPlane(t *testing.T) *api.Client {
	t.Helper()
	e, cli, err := control.StartEtcd(control.EtcdConfig{Dir: filepath.Join(t.TempDir(), "etcd"), Fast: true, Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); e.Close() })
	st := control.NewStore(cli, "/berth")
	secret, err := control.NewSecret(rand.Reader, api.SystemTenant, "admin")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := control.Bootstrap(ctx, st, secret, time.Now().UTC()); err != nil {
		t.Fatal(err)
	}
	srv := control.NewServer(control.Config{Store: st, Now: time.Now, Rand: rand.Reader, NodeTTL: 3 * time.Second})
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { hs.Close(); srv.Close() })
	return api.NewClient(hs.URL, secret, nil)
}

func nodeStore(t *testing.T, admin *api.Client, node string, plan ipam.Config, dir string) *blockStore {
	t.Helper()
	ctx := context.Background()
	tok := &api.Token{Meta: api.Meta{Name: "node-" + node + "-" + strings.ToLower(rand.Text()), Tenant: api.SystemTenant}, Role: api.RoleNode, Node: node}
	if err := admin.Create(ctx, tok); err != nil {
		t.Fatal(err)
	}
	fs, err := ipam.NewFileStore(filepath.Join(dir, "ipam"))
	if err != nil {
		t.Fatal(err)
	}
	s := &blockStore{local: fs, cli: admin.WithToken(tok.Secret), admin: admin, node: node, plan: plan}
	if err := s.start(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

func assign(t *testing.T, s *blockStore, plan ipam.Config, id string) netip.Addr {
	t.Helper()
	var a ipam.Assignment
	err := s.Update(func(st ipam.State) (ipam.State, error) {
		as, n, err := ipam.Assign(plan, st, s.node, id)
		a = as
		return n, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return a.V4
}

func holders(t *testing.T, admin *api.Client) map[string]string {
	t.Helper()
	l, err := api.ListOf[*api.AddressBlock](context.Background(), admin, "", "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, b := range l.Items {
		out[b.Name] = b.Node
	}
	return out
}

// Two nodes take blocks through one real control plane: the one that
// loses the race for a block moves to the next, and a node that starts
// again keeps its block.
func TestBlockStoreClaimsBlocksThroughTheControlPlane(t *testing.T) {
	admin := controlPlane(t)
	ctx := context.Background()
	plan := ipam.Config{Pools: []ipam.Pool{{Prefix: netip.MustParsePrefix("10.7.0.0/24"), BlockBits: 26}}}
	if err := ensureBlocks(ctx, admin, plan); err != nil {
		t.Fatal(err)
	}
	// Twice: the second finds them all.
	if err := ensureBlocks(ctx, admin, plan); err != nil {
		t.Fatal(err)
	}
	if got := holders(t, admin); len(got) != 4 || got["10-7-0-0-26"] != "" {
		t.Fatalf("blocks %v, want 4 free", got)
	}
	dir1, dir2 := t.TempDir(), t.TempDir()
	// Both start before either holds a block, so n2 learns of n1's claim
	// only when its own is refused.
	n1 := nodeStore(t, admin, "n1", plan, dir1)
	n2 := nodeStore(t, admin, "n2", plan, dir2)
	if got := assign(t, n1, plan, "c1"); got != netip.MustParseAddr("10.7.0.0") {
		t.Fatalf("n1's first address %s", got)
	}
	if got := assign(t, n2, plan, "c2"); got != netip.MustParseAddr("10.7.0.64") {
		t.Fatalf("n2's first address %s, want the first of the second block", got)
	}
	if got := holders(t, admin); got["10-7-0-0-26"] != "n1" || got["10-7-0-64-26"] != "n2" {
		t.Fatalf("holders %v", got)
	}
	st, err := n2.local.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := ipam.BlocksOf(st, "n1"); len(got) != 0 {
		t.Fatalf("n2's store keeps n1's blocks %v", got)
	}

	// n1 again, as after a restart: same block, next address.
	n1 = nodeStore(t, admin, "n1", plan, dir1)
	if got := assign(t, n1, plan, "c3"); got != netip.MustParseAddr("10.7.0.1") {
		t.Fatalf("n1 after a restart: %s", got)
	}
	// n1 lost its state but not its blocks: the control plane's record
	// brings the block back.
	n1 = nodeStore(t, admin, "n1", plan, t.TempDir())
	if got := assign(t, n1, plan, "c4"); got != netip.MustParseAddr("10.7.0.0") {
		t.Fatalf("n1 with a fresh store: %s", got)
	}
}

// A pool too large to list gets its block objects made on first claim.
func TestBlockStoreMakesUnlistedBlocksOnClaim(t *testing.T) {
	admin := controlPlane(t)
	plan := ipam.Config{Pools: []ipam.Pool{{Prefix: netip.MustParsePrefix("10.16.0.0/12"), BlockBits: 26}}}
	if err := ensureBlocks(context.Background(), admin, plan); err != nil {
		t.Fatal(err)
	}
	if got := holders(t, admin); len(got) != 0 {
		t.Fatalf("%d blocks listed for a pool of 16384", len(got))
	}
	n1 := nodeStore(t, admin, "n1", plan, t.TempDir())
	if got := assign(t, n1, plan, "c1"); got != netip.MustParseAddr("10.16.0.0") {
		t.Fatalf("first address %s", got)
	}
	if got := holders(t, admin); len(got) != 1 || got["10-16-0-0-26"] != "n1" {
		t.Fatalf("holders %v", got)
	}
}

package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func cfg(t *testing.T, pools ...string) Config {
	t.Helper()
	var c Config
	for _, p := range pools {
		pfx, bits, _ := strings.Cut(p, ",")
		var b int
		fmt.Sscan(bits, &b)
		c.Pools = append(c.Pools, Pool{Prefix: netip.MustParsePrefix(pfx), BlockBits: b})
	}
	return c
}

func TestValidateRejectsBadPlans(t *testing.T) {
	for _, tc := range []struct {
		name  string
		c     Config
		wants string
	}{
		{"no pools", Config{}, "no pools"},
		{"overlapping pools", cfg(t, "10.0.0.0/16,26", "10.0.128.0/20,26"), "overlaps"},
		{"block larger than pool", cfg(t, "10.0.0.0/24,20"), "larger than the pool"},
		{"host bits", cfg(t, "10.0.0.1/24,26"), "host bits"},
		{"block longer than address", cfg(t, "10.0.0.0/24,33"), "longer than the address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.wants) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.wants)
			}
		})
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
}

func TestAssignFillsBlockThenClaimsAnother(t *testing.T) {
	c := cfg(t, "10.1.0.0/24,30")
	s := State{}
	var got []netip.Addr
	for i := range 5 {
		a, n, err := Assign(c, s, "nodeA", fmt.Sprint("c", i))
		if err != nil {
			t.Fatal(err)
		}
		s = n
		got = append(got, a.V4)
	}
	want := "[10.1.0.0 10.1.0.1 10.1.0.2 10.1.0.3 10.1.0.4]"
	if fmt.Sprint(got) != want {
		t.Fatalf("got %v, want %v", got, want)
	}
	if b := fmt.Sprint(BlocksOf(s, "nodeA")); b != "[10.1.0.0/30 10.1.0.4/30]" {
		t.Fatalf("blocks %s", b)
	}
	// Another node gets its own block, never one of nodeA's.
	a, s, err := Assign(c, s, "nodeB", "b0")
	if err != nil {
		t.Fatal(err)
	}
	if a.V4 != netip.MustParseAddr("10.1.0.8") {
		t.Fatalf("nodeB got %v", a.V4)
	}
}

func TestAssignIsIdempotentAndPure(t *testing.T) {
	c := cfg(t, "10.1.0.0/24,26")
	a1, s1, err := Assign(c, State{}, "n", "c")
	if err != nil {
		t.Fatal(err)
	}
	a2, s2, err := Assign(c, s1, "n", "c")
	if err != nil || a1 != a2 || len(s2.Addrs) != 1 {
		t.Fatalf("second assign: %v %v %v", a2, s2, err)
	}
	_, _, _ = Assign(c, s1, "n", "other")
	if len(s1.Addrs) != 1 {
		t.Fatal("Assign modified its input state")
	}
}

func TestExhaustionReleaseAndReuse(t *testing.T) {
	c := cfg(t, "10.2.0.0/30,31")
	s := State{}
	for i := range 4 {
		var err error
		_, s, err = Assign(c, s, "n", fmt.Sprint("c", i))
		if err != nil {
			t.Fatal(err)
		}
	}
	_, s2, err := Assign(c, s, "n", "c4")
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "c4") {
		t.Fatalf("want ErrExhausted naming the container, got %v", err)
	}
	if len(s2.Addrs) != 4 {
		t.Fatal("failed assign changed state")
	}
	s = Release(s, "c2")
	a, s, err := Assign(c, s, "n", "c4")
	if err != nil || a.V4 != netip.MustParseAddr("10.2.0.2") {
		t.Fatalf("reuse: %v %v", a, err)
	}
	if _, err := ReleaseAddr(c, s, netip.MustParseAddr("192.168.1.1")); err == nil || !strings.Contains(err.Error(), "outside every pool") {
		t.Fatalf("release outside pools: %v", err)
	}
	if err := c.CheckAddr(netip.MustParseAddr("10.3.0.0")); err == nil {
		t.Fatal("CheckAddr accepted an address outside the pools")
	}
}

func TestMultiplePoolsAndIPv6(t *testing.T) {
	c := cfg(t, "10.2.0.0/31,31", "10.3.0.0/24,28", "fd00:b::/64,124")
	s := State{}
	var got []string
	for i := range 3 {
		a, n, err := Assign(c, s, "n", fmt.Sprint("c", i))
		if err != nil {
			t.Fatal(err)
		}
		s = n
		got = append(got, a.V4.String()+"/"+a.V6.String())
	}
	want := "[10.2.0.0/fd00:b:: 10.2.0.1/fd00:b::1 10.3.0.0/fd00:b::2]"
	if fmt.Sprint(got) != want {
		t.Fatalf("got %v want %v", got, want)
	}
}

func TestSweepAndReleaseEmpty(t *testing.T) {
	c := cfg(t, "10.4.0.0/24,28")
	s := State{}
	for _, id := range []string{"a", "b", "c"} {
		_, s, _ = Assign(c, s, "n1", id)
	}
	_, s, _ = Assign(c, s, "n2", "x")
	s, gone := Sweep(s, "n1", map[string]bool{"b": true})
	if fmt.Sprint(gone) != "[a c]" || len(s.Addrs) != 2 {
		t.Fatalf("swept %v, left %v", gone, s.Addrs)
	}
	s = Release(s, "b")
	s = ReleaseEmpty(s, "n1")
	if len(BlocksOf(s, "n1")) != 0 || len(BlocksOf(s, "n2")) != 1 {
		t.Fatalf("blocks after ReleaseEmpty: %v", s.Blocks)
	}
}

func TestFileStoreNeverHandsOutTwice(t *testing.T) {
	dir := t.TempDir()
	c := cfg(t, "10.5.0.0/24,28")
	var wg sync.WaitGroup
	got := make([]netip.Addr, 40)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A store per goroutine, as separate processes would have.
			st, err := NewFileStore(filepath.Join(dir, "ipam.json"))
			if err != nil {
				t.Error(err)
				return
			}
			err = st.Update(func(s State) (State, error) {
				a, n, err := Assign(c, s, "n", fmt.Sprint("c", i))
				got[i] = a.V4
				return n, err
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for _, a := range got {
		if seen[a] {
			t.Fatalf("address %v handed out twice", a)
		}
		seen[a] = true
	}
	// Restart: a new store reads the same state.
	st, _ := NewFileStore(filepath.Join(dir, "ipam.json"))
	s, err := st.Load()
	if err != nil || len(s.Addrs) != 40 {
		t.Fatalf("reload: %d addrs, %v", len(s.Addrs), err)
	}
	if _, err := NewFileStore(filepath.Join(dir, "missing", "x.json")); err == nil {
		t.Fatal("store in a missing directory accepted")
	}
}

func TestFileStoreRoundTripsAndSeesOtherWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	a, _ := NewFileStore(path)
	b, _ := NewFileStore(path)
	c := cfg(t, "10.6.0.0/24,28", "fd00:6::/120,124")
	odd := []string{`quote"d`, `back\\slash`, "ünïcødé", "tab-free ☃"}
	for _, id := range odd {
		err := a.Update(func(s State) (State, error) {
			_, n, err := Assign(c, s, "node \"1\"", id)
			return n, err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// b has a stale view of nothing; a's writes must show.
	got, err := b.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range odd {
		if a := Lookup(got, id); !a.V4.IsValid() || !a.V6.IsValid() {
			t.Fatalf("container %q lost in the round trip: %v", id, got.Addrs)
		}
	}
	if len(got.Blocks) != 2 {
		t.Fatalf("blocks %v", got.Blocks)
	}
	// And a, with its cache, sees b's.
	if err := b.Update(func(s State) (State, error) { return Release(s, odd[0]), nil }); err != nil {
		t.Fatal(err)
	}
	got, _ = a.Load()
	if l := Lookup(got, odd[0]); l.V4.IsValid() {
		t.Fatal("a served its cached state after b replaced the file")
	}
	// A failing update changes nothing.
	boom := errors.New("boom")
	if err := a.Update(func(s State) (State, error) { return Release(s, odd[1]), boom }); !errors.Is(err, boom) {
		t.Fatalf("update error = %v", err)
	}
	if got, _ := b.Load(); !Lookup(got, odd[1]).V4.IsValid() {
		t.Fatal("a failed update was stored")
	}
	if _, _, err := Assign(c, State{}, "n", "bad\x01name"); err == nil || !strings.Contains(err.Error(), "not printable") {
		t.Fatalf("control character in a name: %v", err)
	}
}

// A write torn by a crash leaves the slot's checksum wrong: the store falls
// back to the state before it. With no valid slot at all it says so rather
// than starting empty, which would hand out addresses again.
func TestFileStoreSurvivesATornWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	st, _ := NewFileStore(path)
	c := cfg(t, "10.7.0.0/24,28")
	for _, id := range []string{"a", "b"} {
		if err := st.Update(func(s State) (State, error) { _, n, err := Assign(c, s, "n", id); return n, err }); err != nil {
			t.Fatal(err)
		}
	}
	// "b" went to slot 1 (the second write); tear it.
	b, err := os.ReadFile(path + ".1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".1", b[:len(b)-5], 0o600); err != nil {
		t.Fatal(err)
	}
	fresh, _ := NewFileStore(path)
	s, err := fresh.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !Lookup(s, "a").V4.IsValid() || Lookup(s, "b").V4.IsValid() {
		t.Fatalf("after a torn write: %v, want the state holding only a", s.Addrs)
	}
	// The next update overwrites the torn slot and wins.
	if err := fresh.Update(func(s State) (State, error) { _, n, err := Assign(c, s, "n", "c"); return n, err }); err != nil {
		t.Fatal(err)
	}
	if s, _ := st.Load(); !Lookup(s, "c").V4.IsValid() || len(s.Addrs) != 2 {
		t.Fatalf("after recovery: %v", s.Addrs)
	}
	for _, slot := range []string{".0", ".1"} {
		if err := os.WriteFile(path+slot, []byte("berth-ipam 1 9 3 0\nxyz"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := fresh.Load(); err == nil || !strings.Contains(err.Error(), "valid state") {
		t.Fatalf("both slots corrupt: %v", err)
	}
}

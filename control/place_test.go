package control

import (
	"fmt"
	"slices"
	"testing"

	"github.com/berth-dev/berth/api"
)

func TestBatchesEndAtNodesAndStayBounded(t *testing.T) {
	mk := func(nodes ...int) []placement {
		var out []placement
		for i, n := range nodes {
			out = append(out, placement{next: &api.Instance{Meta: api.Meta{Name: fmt.Sprint(i)}, Spec: api.InstanceSpec{Node: fmt.Sprint("n", n)}}, node: n})
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		nodes []int
		size  int
		want  [][]int // node indexes per batch
	}{
		{"empty", nil, 3, nil},
		{"one node per batch boundary", []int{0, 0, 1, 1, 2, 2}, 4, [][]int{{0, 0, 1, 1}, {2, 2}}},
		{"cut before the node that overflows", []int{0, 1, 1, 2, 2}, 4, [][]int{{0, 1, 1}, {2, 2}}},
		{"a node larger than a batch is split", []int{0, 0, 0, 0, 0, 1}, 2, [][]int{{0, 0}, {0, 0}, {0, 1}}},
		{"small node then large", []int{0, 1, 1, 1, 1}, 3, [][]int{{0}, {1, 1, 1}, {1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mk(tc.nodes...)
			var got [][]int
			var all []placement
			for _, b := range batches(in, tc.size) {
				if len(b) > tc.size {
					t.Errorf("batch of %d, more than %d", len(b), tc.size)
				}
				var ns []int
				for _, p := range b {
					ns = append(ns, p.node)
				}
				got = append(got, ns)
				all = append(all, b...)
			}
			if !slices.EqualFunc(all, in, func(a, b placement) bool { return a.next == b.next }) {
				t.Errorf("batches do not add up to the placements in order")
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("batches %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMirrorSkipsTheEchoOfItsOwnWrite(t *testing.T) {
	st := NewStore(nil, "/m")
	s := newState()
	own := &api.Instance{Meta: api.Meta{Name: "a", Tenant: "t", ResourceVersion: 7}, Spec: api.InstanceSpec{Node: "n1"}}
	s.instances["t/a"] = own
	// The echo carries the same revision: it is the same version, so it is
	// not decoded (a value that would not decode proves it).
	if err := s.apply(st, false, []byte(st.Key(api.KindInstance, "t", "a")), []byte("not json"), 7); err != nil {
		t.Fatalf("echo decoded: %v", err)
	}
	if s.instances["t/a"] != own {
		t.Fatal("echo replaced the loop's own object")
	}
	// A delete at the same revision cannot happen, but a later one applies.
	if err := s.apply(st, true, []byte(st.Key(api.KindInstance, "t", "a")), nil, 8); err != nil || s.instances["t/a"] != nil {
		t.Fatalf("delete after own write: %v", err)
	}
}

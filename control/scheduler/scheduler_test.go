package scheduler

import (
	"testing"

	"github.com/berth-dev/berth/api"
)

func node(name string, labels map[string]string, cpu, memGiB int64) *Node {
	return &Node{Name: name, Labels: labels, Ready: true, Capacity: api.Resources{CPU: cpu, Memory: memGiB << 30}}
}

func TestPlace(t *testing.T) {
	small := api.Resources{CPU: 500, Memory: 1 << 30}
	cases := []struct {
		name   string
		nodes  []*Node
		prep   func(*Table)
		req    Request
		want   string
		reason string
	}{
		{name: "no nodes", req: Request{Resources: small}, want: "", reason: "no nodes registered"},
		{
			name:  "packs onto the fuller node when no service to spread",
			nodes: []*Node{node("a", nil, 4000, 8), node("b", nil, 4000, 8)},
			prep:  func(t *Table) { t.Assign(1, Request{Resources: small}) },
			req:   Request{Resources: small}, want: "b",
		},
		{
			name:  "spreads a service across nodes",
			nodes: []*Node{node("a", nil, 4000, 8), node("b", nil, 4000, 8)},
			prep:  func(t *Table) { t.Assign(1, Request{Service: "s/web", Resources: small}) },
			req:   Request{Service: "s/web", Resources: small}, want: "a",
		},
		{
			name: "spreads across zones before nodes",
			nodes: []*Node{node("a1", map[string]string{"zone": "a"}, 4000, 8), node("a2", map[string]string{"zone": "a"}, 4000, 8),
				node("b1", map[string]string{"zone": "b"}, 4000, 8)},
			prep: func(t *Table) { t.Assign(0, Request{Service: "s/web", Resources: small}) },
			req:  Request{Service: "s/web", Resources: small}, want: "b1",
		},
		{
			name:  "required and excluded labels",
			nodes: []*Node{node("a", map[string]string{"disk": "ssd", "zone": "x"}, 4000, 8), node("b", map[string]string{"disk": "ssd", "zone": "y"}, 4000, 8)},
			req: Request{Resources: small, Constraints: []api.Constraint{{Key: "disk", Op: api.OpEqual, Value: "ssd"},
				{Key: "zone", Op: api.OpNotEqual, Value: "x"}}},
			want: "b",
		},
		{
			name:  "host port conflict",
			nodes: []*Node{node("a", nil, 4000, 8), node("b", nil, 4000, 8)},
			prep:  func(t *Table) { t.Assign(0, Request{HostPorts: []string{"80/tcp"}}) },
			req:   Request{HostPorts: []string{"80/tcp"}}, want: "b",
		},
		{
			name:  "pinned",
			nodes: []*Node{node("a", nil, 4000, 8), node("b", nil, 4000, 8)},
			req:   Request{Resources: small, Pin: "a"}, want: "a",
		},
		{
			name:  "never over-commits memory or CPU",
			nodes: []*Node{node("a", nil, 1000, 1)},
			prep:  func(t *Table) { t.Assign(0, Request{Resources: api.Resources{CPU: 600, Memory: 512 << 20}}) },
			req:   Request{Resources: api.Resources{CPU: 600}}, reason: "no node fits: 1 node without 600m CPU free",
		},
		{
			name: "reason counts each cause",
			nodes: []*Node{node("a", map[string]string{"zone": "b"}, 4000, 2), node("b", map[string]string{"zone": "b"}, 4000, 2),
				node("c", map[string]string{"zone": "a"}, 4000, 2), {Name: "d", Labels: map[string]string{"zone": "a"}}},
			req:    Request{Resources: api.Resources{Memory: 4 << 30}, Constraints: []api.Constraint{{Key: "zone", Op: api.OpNotEqual, Value: "b"}}},
			reason: "no node fits: 2 nodes excluded by constraint zone!=b; 1 node not ready; 1 node without 4 GiB memory free",
		},
		{
			name:  "skips not ready and unschedulable",
			nodes: []*Node{{Name: "a", Capacity: api.Resources{CPU: 1000, Memory: 1 << 30}}, {Name: "b", Ready: true, Unschedulable: true, Capacity: api.Resources{CPU: 1000, Memory: 1 << 30}}, node("c", nil, 1000, 1)},
			req:   Request{}, want: "c",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewTable(tc.nodes)
			if tc.prep != nil {
				tc.prep(tab)
			}
			i, why := Place(tab, tc.req, 0, 0)
			got := ""
			if i >= 0 {
				got = tab.Nodes[i].Name
			}
			if got != tc.want || why != tc.reason {
				t.Fatalf("got %q %q, want %q %q", got, why, tc.want, tc.reason)
			}
		})
	}
}

func TestPlaceFillsEvenlyWithBoundedCandidates(t *testing.T) {
	var nodes []*Node
	for i := 0; i < 50; i++ {
		nodes = append(nodes, node(string(rune('a'+i%26))+string(rune('a'+i/26)), nil, 2000, 4))
	}
	tab := NewTable(nodes)
	r := Request{Service: "s/web", Resources: api.Resources{CPU: 100, Memory: 100 << 20}}
	start := 0
	for k := 0; k < 1000; k++ {
		i, why := Place(tab, r, start, 8)
		if i < 0 {
			t.Fatalf("placement %d: %s", k, why)
		}
		tab.Assign(i, r)
		start = i + 1
	}
	for _, n := range tab.Nodes {
		if n.Services["s/web"] != 20 || n.Allocated.CPU > n.Capacity.CPU {
			t.Fatalf("node %s has %d (cpu %d), want 20 each", n.Name, n.Services["s/web"], n.Allocated.CPU)
		}
	}
	if i, _ := Place(tab, r, 0, 8); i >= 0 {
		t.Fatalf("placed beyond capacity on %s", tab.Nodes[i].Name)
	}
}

// Package scheduler decides where an instance runs. Place is a pure function
// of the request and the node table; the control loop around it does the I/O.
package scheduler

import (
	"fmt"
	"sort"
	"strings"

	"github.com/berth-dev/berth/api"
)

// Node is the scheduler's view of one node.
type Node struct {
	Name          string
	Labels        map[string]string
	Ready         bool
	Unschedulable bool
	Capacity      api.Resources
	Allocated     api.Resources
	// HostPorts in use ("8080/tcp").
	HostPorts map[string]bool
	// Services counts instances per service key ("tenant/service") here.
	Services map[string]int
}

// Request is one instance to place.
type Request struct {
	Service     string // "tenant/service"; "" for standalone instances
	Resources   api.Resources
	HostPorts   []string
	Constraints []api.Constraint
	Pin         string
}

// Table is the node table with per-zone service counts, kept up to date as
// placements are made so a batch spreads.
type Table struct {
	Nodes []*Node
	// zones[service][zone] counts instances of a service per zone label.
	zones map[string]map[string]int
}

// ZoneLabel is the node label spread across when present.
const ZoneLabel = "zone"

// NewTable indexes nodes.
func NewTable(nodes []*Node) *Table {
	t := &Table{Nodes: nodes, zones: map[string]map[string]int{}}
	for _, n := range nodes {
		if z, ok := n.Labels[ZoneLabel]; ok {
			for s, c := range n.Services {
				if t.zones[s] == nil {
					t.zones[s] = map[string]int{}
				}
				t.zones[s][z] += c
			}
		}
	}
	return t
}

// Assign records a placement in the table.
func (t *Table) Assign(i int, r Request) {
	n := t.Nodes[i]
	n.Allocated = n.Allocated.Add(r.Resources)
	if n.HostPorts == nil {
		n.HostPorts = map[string]bool{}
	}
	for _, p := range r.HostPorts {
		n.HostPorts[p] = true
	}
	if r.Service != "" {
		if n.Services == nil {
			n.Services = map[string]int{}
		}
		n.Services[r.Service]++
		if z, ok := n.Labels[ZoneLabel]; ok {
			if t.zones[r.Service] == nil {
				t.zones[r.Service] = map[string]int{}
			}
			t.zones[r.Service][z]++
		}
	}
}

// Place returns the index of the best node for r, or -1 and a reason a
// person can read. It considers nodes from start (wrapping) and stops after
// limit feasible candidates (0: all), the way Nomad bounds its search on big
// clusters; with a rotating start the spread stays even.
//
// Among feasible nodes it prefers, in order: the zone with fewest instances
// of the service, the node with fewest instances of the service, and then
// the fullest node (packing).
func Place(t *Table, r Request, start, limit int) (int, string) {
	n := len(t.Nodes)
	best := -1
	var bestScore [3]float64
	excluded := map[string]int{}
	feasible := 0
	for k := 0; k < n; k++ {
		i := (start + k) % n
		node := t.Nodes[i]
		if why := fit(node, r); why != "" {
			excluded[why]++
			continue
		}
		feasible++
		score := [3]float64{0, float64(node.Services[r.Service]), -fullness(node)}
		if z, ok := node.Labels[ZoneLabel]; ok && r.Service != "" {
			score[0] = float64(t.zones[r.Service][z])
		}
		if best < 0 || less(score, bestScore) {
			best, bestScore = i, score
		}
		if limit > 0 && feasible >= limit {
			break
		}
	}
	if best >= 0 {
		return best, ""
	}
	return -1, reason(n, r, excluded)
}

func less(a, b [3]float64) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

func fullness(n *Node) float64 {
	var f float64
	if n.Capacity.CPU > 0 {
		f += float64(n.Allocated.CPU) / float64(n.Capacity.CPU)
	}
	if n.Capacity.Memory > 0 {
		f += float64(n.Allocated.Memory) / float64(n.Capacity.Memory)
	}
	return f
}

// fit says why node cannot take r, "" if it can. The strings are grouping
// keys for the reason message.
func fit(n *Node, r Request) string {
	if r.Pin != "" && n.Name != r.Pin {
		return "pinned elsewhere"
	}
	if !n.Ready {
		return "not ready"
	}
	if n.Unschedulable {
		return "unschedulable"
	}
	for _, c := range r.Constraints {
		if !c.Matches(n.Labels) {
			return "excluded by constraint " + c.String()
		}
	}
	free := n.Capacity.Sub(n.Allocated)
	if r.Resources.Memory > free.Memory {
		return "without " + bytes(r.Resources.Memory) + " memory free"
	}
	if r.Resources.CPU > free.CPU {
		return fmt.Sprintf("without %dm CPU free", r.Resources.CPU)
	}
	for _, p := range r.HostPorts {
		if n.HostPorts[p] {
			return "with host port " + p + " taken"
		}
	}
	return ""
}

func reason(total int, r Request, excluded map[string]int) string {
	if total == 0 {
		return "no nodes registered"
	}
	keys := make([]string, 0, len(excluded))
	for k := range excluded {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if excluded[keys[i]] != excluded[keys[j]] {
			return excluded[keys[i]] > excluded[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		noun := "nodes"
		if excluded[k] == 1 {
			noun = "node"
		}
		parts[i] = fmt.Sprintf("%d %s %s", excluded[k], noun, k)
	}
	return "no node fits: " + strings.Join(parts, "; ")
}

func bytes(b int64) string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", b>>30)
	case b >= 1<<20:
		return fmt.Sprintf("%d MiB", b>>20)
	}
	return fmt.Sprintf("%d B", b)
}

// RequestFor builds the request of an instance.
func RequestFor(in *api.Instance) Request {
	r := Request{Resources: in.Spec.Template.Resources, Constraints: in.Spec.Template.Constraints, Pin: in.Spec.Pin}
	if in.Spec.Service != "" {
		r.Service = in.Tenant + "/" + in.Spec.Service
	}
	for _, p := range in.Spec.Template.Ports {
		if p.HostPort != 0 {
			r.HostPorts = append(r.HostPorts, api.HostPortKey(p))
		}
	}
	return r
}

package cgroups

import (
	"bufio"
	"fmt"
	"github.com/berth-dev/berth/internal/mountinfo"
	"io"
	"strings"
)

// v1Controllers are the controller names a v1 cgroup mount's super options
// may carry; other options (rw, clone_children, xattr, ...) are not names.
func isV1Controller(opt string) bool {
	switch opt {
	case "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
		"hugetlb", "net_cls", "net_prio", "perf_event", "rdma", "misc", "debug":
		return true
	}
	return strings.HasPrefix(opt, "name=")
}

// ParseMountinfo finds the cgroup hierarchies in a /proc/<pid>/mountinfo.
// The first mount of each hierarchy wins (later ones are bind mounts).
func ParseMountinfo(r io.Reader) (Hierarchy, error) {
	h := Hierarchy{V1: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20) // mount points can be long; start small
	for sc.Scan() {
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			return Hierarchy{}, fmt.Errorf("mountinfo line %q has no separator", line)
		}
		pf := strings.Fields(pre)
		qf := strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			return Hierarchy{}, fmt.Errorf("mountinfo line %q is short", line)
		}
		mnt := mountinfo.Unescape(pf[4])
		switch qf[0] {
		case "cgroup2":
			if h.Unified == "" {
				h.Unified = mnt
			}
		case "cgroup":
			for _, opt := range strings.Split(qf[2], ",") {
				if isV1Controller(opt) {
					if _, dup := h.V1[opt]; !dup {
						h.V1[opt] = mnt
					}
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Hierarchy{}, fmt.Errorf("read mountinfo: %w", err)
	}
	if len(h.V1) == 0 {
		h.V1 = nil
		if h.Unified == "" {
			return Hierarchy{}, fmt.Errorf("no cgroup filesystem is mounted")
		}
	}
	return h, nil
}

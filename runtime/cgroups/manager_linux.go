package cgroups

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// New returns the Manager for the cgroup at cgroupsPath. It validates r but
// touches nothing: Create makes the cgroup; the other methods work on one
// made earlier, possibly by another process (r may then be nil).
func New(cgroupsPath string, r *specs.LinuxResources, opts Options) (Manager, error) {
	p, err := ParsePath(cgroupsPath)
	if err != nil {
		return nil, err
	}
	if err := Validate(r); err != nil {
		return nil, err
	}
	var h Hierarchy
	if opts.Hierarchy != nil {
		h = *opts.Hierarchy
	} else if h, err = Detect(); err != nil {
		return nil, err
	}
	if h.V2() {
		return &v2Manager{root: h.Unified, path: p, dir: h.Unified + p, res: r}, nil
	}
	return &v1Manager{mounts: h.V1, path: p, res: r}, nil
}

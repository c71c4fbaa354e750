package runtime

import (
	"fmt"

	"github.com/berth-dev/berth/runtime/cgroups"
	_ "github.com/berth-dev/berth/runtime/nsenter" // joins user and mount namespaces for the init
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// cgroupHandle is the runtime's view of one container's cgroup.
type cgroupHandle struct {
	hier *cgroups.Hierarchy
	path string
	m    cgroups.Manager
}

func cgroupPathFor(id string, spec *specs.Spec) string {
	if spec.Linux.CgroupsPath != "" {
		return spec.Linux.CgroupsPath
	}
	return "/berth-runtime/" + id
}

// newCgroup validates the spec's resources and prepares (not yet creates)
// the container's cgroup.
func (r *Native) newCgroup(id string, spec *specs.Spec) (*cgroupHandle, error) {
	p := cgroupPathFor(id, spec)
	h, err := r.hierarchy()
	if err != nil {
		return nil, err
	}
	m, err := cgroups.New(p, withDeviceRules(spec), cgroups.Options{Hierarchy: &h})
	if err != nil {
		return nil, err
	}
	return &cgroupHandle{path: p, m: m, hier: &h}, nil
}

// openCgroup is the cgroup of an existing container. spec may be nil for
// verbs that only read or remove it.
func (r *Native) openCgroup(rec *record, spec *specs.Spec) (*cgroupHandle, error) {
	var res *specs.LinuxResources
	if spec != nil {
		res = withDeviceRules(spec)
	}
	m, err := cgroups.New(rec.CgroupPath, res, cgroups.Options{Hierarchy: rec.Cgroups})
	if err != nil {
		return nil, fmt.Errorf("cgroup of %s: %w", rec.ID, err)
	}
	return &cgroupHandle{path: rec.CgroupPath, m: m}, nil
}

func (c *cgroupHandle) create() error {
	if err := c.m.Create(); err != nil {
		return fmt.Errorf("create cgroup %s: %w", c.path, err)
	}
	return nil
}

func (c *cgroupHandle) add(pid int) error {
	if err := c.m.Add(pid); err != nil {
		return fmt.Errorf("join cgroup %s: %w", c.path, err)
	}
	return nil
}

func (c *cgroupHandle) destroy() error { return c.m.Destroy() }
func (c *cgroupHandle) freeze() error  { return c.m.Freeze() }
func (c *cgroupHandle) thaw() error    { return c.m.Thaw() }
func (c *cgroupHandle) pids() ([]int, error) {
	return c.m.Pids()
}

func (c *cgroupHandle) frozen() (bool, error) {
	st, err := c.m.State()
	if err != nil {
		return false, err
	}
	return st == cgroups.Frozen, nil
}

// withDeviceRules returns the spec's resources with device cgroup rules
// allowing what every container needs (the default devices, ptys, and
// mknod, which creating /dev requires) and the devices the spec creates.
func withDeviceRules(spec *specs.Spec) *specs.LinuxResources {
	var r specs.LinuxResources
	if spec.Linux.Resources != nil {
		r = *spec.Linux.Resources
	}
	r.Devices = append([]specs.LinuxDeviceCgroup(nil), r.Devices...)
	i64 := func(v int64) *int64 { return &v }
	allow := func(typ string, major, minor *int64, access string) {
		r.Devices = append(r.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: typ, Major: major, Minor: minor, Access: access})
	}
	allow("c", nil, nil, "m")
	allow("b", nil, nil, "m")
	for _, d := range defaultDevices() {
		allow(d.Type, i64(d.Major), i64(d.Minor), "rwm")
	}
	allow("c", i64(136), nil, "rwm")  // /dev/pts/*
	allow("c", i64(5), i64(2), "rwm") // /dev/ptmx
	for _, d := range spec.Linux.Devices {
		typ := d.Type
		if typ == "u" {
			typ = "c"
		}
		if typ == "p" {
			continue
		}
		allow(typ, i64(d.Major), i64(d.Minor), "rwm")
	}
	return &r
}

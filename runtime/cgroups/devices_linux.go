package cgroups

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// attachDeviceFilter loads the device program for rules and attaches it to
// the cgroup directory dir with BPF_PROG_ATTACH, which (unlike a bpf_link)
// stays in force after this process exits. When replace is set, programs
// attached before are detached afterwards; until then both apply, and the
// kernel allows a device only if every program does, so the window is
// never more permissive than either policy.
func attachDeviceFilter(dir string, rules []specs.LinuxDeviceCgroup, replace bool) error {
	insns, err := deviceProgram(rules)
	if err != nil {
		return err
	}
	prog, err := loadDeviceProgram(insns)
	if err != nil {
		return &FieldError{Field: fDevices, Msg: "eBPF device filter", Err: err}
	}
	defer unix.Close(prog)
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	defer unix.Close(fd)

	var old []uint32
	if replace {
		if old, err = deviceProgramIDs(fd); err != nil {
			return fmt.Errorf("query device filters of %s: %w", dir, err)
		}
	}
	if err := attachDeviceProgram(fd, prog); err != nil {
		return &FieldError{Field: fDevices, Msg: "attach eBPF device filter to " + dir, Err: err}
	}
	for _, id := range old {
		p, err := programFDByID(id)
		if err != nil {
			return fmt.Errorf("open old device filter %d: %w", id, err)
		}
		err = detachDeviceProgram(fd, p)
		unix.Close(p)
		if err != nil {
			return fmt.Errorf("detach old device filter %d from %s: %w", id, dir, err)
		}
	}
	return nil
}

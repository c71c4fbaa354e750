// Package cgroups creates, updates, inspects and removes one container's
// control group on cgroup v1 (including hybrid hosts) and cgroup v2.
//
// What to write is a pure function of the OCI resources (v1Writes,
// v2Writes, deviceProgram), tested without a kernel; the managers in
// *_linux.go only make directories, write those values in one write(2)
// each and read files back. Every error about a value names its spec field
// (FieldError), e.g. "linux.resources.memory.swap: 100 is below
// memory.limit 268435456 (swap is memory plus swap)".
//
// Paths: linux.cgroupsPath is taken relative to each hierarchy's mount
// point, whether or not it starts with "/" (the spec leaves relative paths
// runtime-defined; using the mount point keeps them independent of the
// caller's own cgroup). The systemd form "slice:prefix:name" is rejected
// with "systemd cgroup driver is not supported".
//
// v1: the container's directory is made in cpu, cpuacct, memory, pids,
// freezer, devices and blkio (those mounted). cpuset, hugetlb, net_cls,
// net_prio and rdma are made only when the resources use them: a new v1
// cpuset must be seeded with cpus and mems before a process may join,
// which costs reads and writes at every level, so a container without a
// cpuset pays nothing. If a later Set adds cpus/mems (or hugepage limits,
// ...), that directory is made then and the container's processes are
// moved into it, repeating until none is left behind. Hybrid hosts'
// unified hierarchy is not joined. linux.resources.unified is an error on
// v1, as the spec requires.
//
// v2: the controllers the resources need (plus memory and pids, for
// Stats, when offered) are enabled in subtree_control from the root down
// to the parent. A value needing a controller the host does not offer, or
// a v1-only knob (swappiness, kernelTCP, disableOOMKiller, realtime,
// blkio leaf weights, net_cls/net_prio), is an error naming the field.
// cpu.shares becomes cpu.weight by crun's mapping (SharesToWeight), the
// spec's memory+swap becomes memory.swap.max = swap - limit, and unified
// entries are written last, replacing a spec-derived write of the same
// file.
//
// Devices: v1 writes the rules to devices.deny/devices.allow in order. v2
// compiles them into a BPF_PROG_TYPE_CGROUP_DEVICE program attached with
// BPF_PROG_ATTACH (so it outlives the runtime); the last rule deciding a
// request wins and a request no rule decides is allowed, which is what v1
// does for a leading deny-all followed by allows. With no rules at all,
// no program is attached. Set attaches the new program before detaching
// the old, so the policy is never looser than either during the swap.
//
// Zero means "unset" for memory limits, CPU shares/quota/period and blkio
// weights (Docker-derived configs write 0), and 0 or -1 means no limit for
// pids, as runc reads them. Set takes the complete desired resources, not
// a delta, and refuses a memory limit below the current usage.
package cgroups

import (
	"fmt"
	"math"
	"path"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Manager controls one container's cgroup.
type Manager interface {
	// Create makes the cgroup and writes the limits given to New; no process
	// is placed in it yet. A failed Create removes every directory it made.
	Create() error
	// Add moves a process into the cgroup (every hierarchy on v1).
	Add(pid int) error
	// Set updates the limits in place. r is the complete desired resource
	// set, not a delta.
	Set(r *specs.LinuxResources) error
	// Freeze stops every process in the cgroup and waits until they are.
	Freeze() error
	// Thaw resumes a frozen cgroup.
	Thaw() error
	// State reports the freezer state.
	State() (FreezerState, error)
	// Pids lists the processes in the cgroup and its descendants.
	Pids() ([]int, error)
	// Stats reads usage counters and limits.
	Stats() (*Stats, error)
	// OOMKills is Stats().Memory.OOMKills, read alone: it is what an exit
	// needs to know, and a whole Stats reads a dozen files.
	OOMKills() (uint64, error)
	// Destroy removes the cgroup (and its descendants) from every
	// hierarchy, retrying briefly while the kernel still holds exited
	// processes. Parents made by this Manager's Create are removed too
	// when they are empty.
	Destroy() error
	// Path is the cgroup path relative to the hierarchy root, e.g. "/berth/abc".
	Path() string
	// Dirs are the cgroup's directories, one per hierarchy it is in.
	Dirs() []string
}

// FreezerState is the freezer state of a cgroup.
type FreezerState string

// Freezer states, named as cgroup v1's freezer.state names them.
const (
	Thawed   FreezerState = "THAWED"
	Freezing FreezerState = "FREEZING"
	Frozen   FreezerState = "FROZEN"
)

// Unlimited is reported for a limit that is not set.
const Unlimited = math.MaxUint64

// Hierarchy says where the cgroup filesystems are mounted.
type Hierarchy struct {
	// Unified is the cgroup2 mount point. On a v2 host it is the only
	// hierarchy used; on a hybrid v1 host it is recorded but not used.
	Unified string
	// V1 maps each v1 controller ("memory", "cpu", ..., "name=systemd") to
	// the mount point of its hierarchy. Co-mounted controllers share one.
	// Empty on a v2 host.
	V1 map[string]string
}

// V2 reports whether the host uses the unified (cgroup v2) hierarchy only.
func (h Hierarchy) V2() bool { return len(h.V1) == 0 && h.Unified != "" }

// Options tune New.
type Options struct {
	// Hierarchy overrides detection from /proc/self/mountinfo. Tests use it
	// to run the v2 manager on a hybrid host's /sys/fs/cgroup/unified.
	Hierarchy *Hierarchy
}

// FieldError is a problem with one OCI spec field.
type FieldError struct {
	Field string // e.g. "linux.resources.memory.swap"
	Msg   string
	Err   error // underlying cause, if any
}

func (e *FieldError) Error() string {
	if e.Err != nil {
		return e.Field + ": " + e.Msg + ": " + e.Err.Error()
	}
	return e.Field + ": " + e.Msg
}

func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// errSystemdMsg is the error for a systemd-style cgroups path.
const errSystemdMsg = "systemd cgroup driver is not supported (cgroupsPath %q has the slice:prefix:name form); use a cgroupfs path such as /berth/<id>"

// ParsePath validates linux.cgroupsPath and returns it cleaned and absolute
// (relative to the hierarchy root).
func ParsePath(p string) (string, error) {
	const field = "linux.cgroupsPath"
	if p == "" {
		return "", fieldErr(field, "is empty")
	}
	if parts := strings.Split(p, ":"); len(parts) == 3 && !strings.Contains(parts[0], "/") {
		return "", fieldErr(field, errSystemdMsg, p)
	}
	if strings.ContainsRune(p, 0) {
		return "", fieldErr(field, "%q contains a NUL byte", p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return "", fieldErr(field, "%q contains \"..\"", p)
		}
	}
	c := path.Clean("/" + p)
	if c == "/" {
		return "", fieldErr(field, "%q names the root cgroup", p)
	}
	return c, nil
}

// Stats are a cgroup's usage counters. Fields a kernel does not provide are zero.
type Stats struct {
	CPU    CPUStats
	Memory MemoryStats
	Pids   PidsStats
	IO     []DeviceIO
}

// CPUStats is CPU time used and throttling.
type CPUStats struct {
	UsageNanos       uint64
	UserNanos        uint64
	SystemNanos      uint64
	Periods          uint64
	ThrottledPeriods uint64
	ThrottledNanos   uint64
}

// MemoryStats is memory use and limits, in bytes; limits are Unlimited when unset.
type MemoryStats struct {
	Usage     uint64
	MaxUsage  uint64
	Limit     uint64
	SwapUsage uint64
	SwapLimit uint64 // v1: memory+swap; v2: swap only
	Cache     uint64
	RSS       uint64
	Failcnt   uint64 // v1 failcnt; v2 the "max" event count
	OOMKills  uint64
}

// PidsStats is the task count and its limit.
type PidsStats struct {
	Current uint64
	Limit   uint64
}

// DeviceIO is the block I/O done by the cgroup on one device.
type DeviceIO struct {
	Major, Minor uint32
	ReadBytes    uint64
	WriteBytes   uint64
	ReadIOs      uint64
	WriteIOs     uint64
}

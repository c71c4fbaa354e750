package cgroups

import (
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Write is one value written to one file of the container's cgroup.
type Write struct {
	// Controller owns File: the v1 hierarchy ("memory", "cpu", ...) or the
	// v2 controller that must be enabled for File to exist ("" for core
	// cgroup v2 files).
	Controller string
	File       string
	Value      string
	// Field is the spec field the value comes from, for error messages.
	Field string
	// Alt, when set, is written with AltValue if File does not exist
	// (kernels name some knobs differently, e.g. blkio.bfq.weight).
	Alt      string
	AltValue string
	// Optional writes are skipped when the file does not exist: the value
	// asks for what the kernel gives anyway (e.g. unlimited swap on a
	// kernel without swap accounting).
	Optional bool
}

func (w Write) String() string {
	s := w.File + "=" + strconv.Quote(w.Value)
	if w.Alt != "" {
		s += " (or " + w.Alt + "=" + strconv.Quote(w.AltValue) + ")"
	}
	if w.Optional {
		s += " optional"
	}
	return s
}

// Spec field names used in errors.
const (
	fMemLimit       = "linux.resources.memory.limit"
	fMemReservation = "linux.resources.memory.reservation"
	fMemSwap        = "linux.resources.memory.swap"
	fMemKernelTCP   = "linux.resources.memory.kernelTCP"
	fMemSwappiness  = "linux.resources.memory.swappiness"
	fMemOOM         = "linux.resources.memory.disableOOMKiller"
	fMemHierarchy   = "linux.resources.memory.useHierarchy"
	fCPUShares      = "linux.resources.cpu.shares"
	fCPUQuota       = "linux.resources.cpu.quota"
	fCPUPeriod      = "linux.resources.cpu.period"
	fCPUBurst       = "linux.resources.cpu.burst"
	fCPURtRuntime   = "linux.resources.cpu.realtimeRuntime"
	fCPURtPeriod    = "linux.resources.cpu.realtimePeriod"
	fCPUCpus        = "linux.resources.cpu.cpus"
	fCPUMems        = "linux.resources.cpu.mems"
	fCPUIdle        = "linux.resources.cpu.idle"
	fPidsLimit      = "linux.resources.pids.limit"
	fBlkWeight      = "linux.resources.blockIO.weight"
	fBlkLeafWeight  = "linux.resources.blockIO.leafWeight"
	fBlkWeightDev   = "linux.resources.blockIO.weightDevice"
	fBlkReadBps     = "linux.resources.blockIO.throttleReadBpsDevice"
	fBlkWriteBps    = "linux.resources.blockIO.throttleWriteBpsDevice"
	fBlkReadIOPS    = "linux.resources.blockIO.throttleReadIOPSDevice"
	fBlkWriteIOPS   = "linux.resources.blockIO.throttleWriteIOPSDevice"
	fHugepage       = "linux.resources.hugepageLimits"
	fNetClassID     = "linux.resources.network.classID"
	fNetPriorities  = "linux.resources.network.priorities"
	fRdma           = "linux.resources.rdma"
	fUnified        = "linux.resources.unified"
	fDevices        = "linux.resources.devices"
)

// Kernel bounds (kernel/sched, block/blk-cgroup).
const (
	minShares    = 2
	maxShares    = 262144
	minPeriod    = 1000    // 1ms
	maxPeriod    = 1000000 // 1s
	minQuota     = 1000
	minBlkWeight = 10
	maxBlkWeight = 1000
	maxMajor     = 1<<12 - 1
	maxMinor     = 1<<20 - 1
)

// set reports whether an optional int64 limit is present. Zero counts as
// absent: Docker-derived configs write 0 for "not set", as runc accepts.
func set(p *int64) bool { return p != nil && *p != 0 }

// Validate checks resources for values no kernel accepts and for fields that
// contradict each other. It does not know the host: CPUs that do not exist
// and limits below current usage are checked when the cgroup is written.
func Validate(r *specs.LinuxResources) error {
	if r == nil {
		return nil
	}
	if m := r.Memory; m != nil {
		for _, f := range []struct {
			name string
			v    *int64
		}{{fMemLimit, m.Limit}, {fMemReservation, m.Reservation}, {fMemSwap, m.Swap}, {fMemKernelTCP, m.KernelTCP}} {
			if f.v != nil && *f.v < -1 {
				return fieldErr(f.name, "%d is negative (use -1 for no limit)", *f.v)
			}
		}
		if set(m.Swap) && *m.Swap != -1 {
			switch {
			case !set(m.Limit):
				return fieldErr(fMemSwap, "%d is set without memory.limit (swap is memory plus swap)", *m.Swap)
			case *m.Limit == -1:
				return fieldErr(fMemSwap, "%d is limited but memory.limit is unlimited (-1)", *m.Swap)
			case *m.Swap < *m.Limit:
				return fieldErr(fMemSwap, "%d is below memory.limit %d (swap is memory plus swap)", *m.Swap, *m.Limit)
			}
		}
		if set(m.Reservation) && *m.Reservation != -1 && set(m.Limit) && *m.Limit != -1 && *m.Reservation > *m.Limit {
			return fieldErr(fMemReservation, "%d is above memory.limit %d", *m.Reservation, *m.Limit)
		}
		if m.Swappiness != nil && *m.Swappiness > 100 {
			return fieldErr(fMemSwappiness, "%d is above 100", *m.Swappiness)
		}
	}
	if c := r.CPU; c != nil {
		if c.Shares != nil && *c.Shares != 0 && (*c.Shares < minShares || *c.Shares > maxShares) {
			return fieldErr(fCPUShares, "%d is outside [%d, %d]", *c.Shares, minShares, maxShares)
		}
		if c.Period != nil && *c.Period != 0 && (*c.Period < minPeriod || *c.Period > maxPeriod) {
			return fieldErr(fCPUPeriod, "%d is outside [%d, %d] microseconds", *c.Period, minPeriod, maxPeriod)
		}
		if c.Quota != nil && *c.Quota != 0 && *c.Quota != -1 {
			if *c.Quota < minQuota {
				return fieldErr(fCPUQuota, "%d is below the kernel's minimum %d microseconds (use -1 for no limit)", *c.Quota, minQuota)
			}
		}
		if c.Burst != nil && *c.Burst != 0 {
			if !set(c.Quota) || *c.Quota == -1 {
				return fieldErr(fCPUBurst, "%d is set without a cpu.quota", *c.Burst)
			}
			if *c.Burst > uint64(*c.Quota) {
				return fieldErr(fCPUBurst, "%d is above cpu.quota %d", *c.Burst, *c.Quota)
			}
		}
		if c.RealtimeRuntime != nil && *c.RealtimeRuntime < -1 {
			return fieldErr(fCPURtRuntime, "%d is negative (use -1 for no limit)", *c.RealtimeRuntime)
		}
		if c.RealtimeRuntime != nil && *c.RealtimeRuntime > 0 && c.RealtimePeriod != nil && *c.RealtimePeriod != 0 &&
			uint64(*c.RealtimeRuntime) > *c.RealtimePeriod {
			return fieldErr(fCPURtRuntime, "%d is above cpu.realtimePeriod %d", *c.RealtimeRuntime, *c.RealtimePeriod)
		}
		if c.Idle != nil && *c.Idle != 0 && *c.Idle != 1 {
			return fieldErr(fCPUIdle, "%d is neither 0 nor 1", *c.Idle)
		}
		if c.Cpus != "" {
			if _, err := ParseList(c.Cpus); err != nil {
				return &FieldError{Field: fCPUCpus, Msg: strconv.Quote(c.Cpus), Err: err}
			}
		}
		if c.Mems != "" {
			if _, err := ParseList(c.Mems); err != nil {
				return &FieldError{Field: fCPUMems, Msg: strconv.Quote(c.Mems), Err: err}
			}
		}
	}
	if p := r.Pids; p != nil && p.Limit != nil && *p.Limit < -1 {
		return fieldErr(fPidsLimit, "%d is negative (use -1 for no limit)", *p.Limit)
	}
	if b := r.BlockIO; b != nil {
		if err := checkBlkWeight(fBlkWeight, b.Weight); err != nil {
			return err
		}
		if err := checkBlkWeight(fBlkLeafWeight, b.LeafWeight); err != nil {
			return err
		}
		for i, d := range b.WeightDevice {
			f := fmt.Sprintf("%s[%d]", fBlkWeightDev, i)
			if err := checkDevNum(f, d.Major, d.Minor); err != nil {
				return err
			}
			if err := checkBlkWeight(f+".weight", d.Weight); err != nil {
				return err
			}
			if err := checkBlkWeight(f+".leafWeight", d.LeafWeight); err != nil {
				return err
			}
		}
		for _, list := range []struct {
			name string
			devs []specs.LinuxThrottleDevice
		}{{fBlkReadBps, b.ThrottleReadBpsDevice}, {fBlkWriteBps, b.ThrottleWriteBpsDevice}, {fBlkReadIOPS, b.ThrottleReadIOPSDevice}, {fBlkWriteIOPS, b.ThrottleWriteIOPSDevice}} {
			for i, d := range list.devs {
				if err := checkDevNum(fmt.Sprintf("%s[%d]", list.name, i), d.Major, d.Minor); err != nil {
					return err
				}
			}
		}
	}
	for i, h := range r.HugepageLimits {
		if !hugepageSize(h.Pagesize) {
			return fieldErr(fmt.Sprintf("%s[%d].pageSize", fHugepage, i), "%q is not a size like 2MB or 1GB", h.Pagesize)
		}
	}
	for i, d := range r.Devices {
		if _, err := parseDeviceRule(d); err != nil {
			return &FieldError{Field: fmt.Sprintf("%s[%d]", fDevices, i), Msg: "invalid rule", Err: err}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(r.Unified)) {
		if err := checkUnifiedKey(k); err != nil {
			return &FieldError{Field: fUnified + "." + k, Msg: "invalid key", Err: err}
		}
		if k == "cpu.weight" {
			w, err := strconv.ParseUint(strings.TrimSpace(r.Unified[k]), 10, 64)
			if err != nil || w < 1 || w > 10000 {
				return fieldErr(fUnified+"."+k, "%q is not a weight in [1, 10000]", r.Unified[k])
			}
		}
	}
	return nil
}

func checkBlkWeight(field string, w *uint16) error {
	if w != nil && *w != 0 && (*w < minBlkWeight || *w > maxBlkWeight) {
		return fieldErr(field, "%d is outside [%d, %d]", *w, minBlkWeight, maxBlkWeight)
	}
	return nil
}

func checkDevNum(field string, major, minor int64) error {
	if major < 0 || major > maxMajor {
		return fieldErr(field+".major", "%d is outside [0, %d]", major, maxMajor)
	}
	if minor < 0 || minor > maxMinor {
		return fieldErr(field+".minor", "%d is outside [0, %d]", minor, maxMinor)
	}
	return nil
}

func hugepageSize(s string) bool {
	return regexp.MustCompile(`^[1-9][0-9]*[KMG]B$`).MatchString(s)
}

// checkUnifiedKey refuses keys that are not a plain interface file name or
// that would let the spec steer the cgroup's membership or freezer, which
// the runtime owns.
func checkUnifiedKey(k string) error {
	if k == "" || strings.ContainsAny(k, "/\x00") || k == "." || k == ".." || !strings.Contains(k, ".") {
		return fmt.Errorf("%q is not a cgroup interface file name", k)
	}
	switch k {
	case "cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "cgroup.freeze", "cgroup.kill", "cgroup.type":
		return fmt.Errorf("%q is managed by the runtime", k)
	}
	return nil
}

// ParseList parses a cpuset list such as "0-3,8,10-11" into its members.
func ParseList(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		if part == "" {
			return nil, fmt.Errorf("empty element in list %q", s)
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("%q is not a number or range", part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("%q is not a valid range", part)
			}
		}
		if b-a > 1<<16 {
			return nil, fmt.Errorf("range %q is too large", part)
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	return out, nil
}

// CheckSubset reports the first member of want (a cpuset list) missing from
// have, as an error naming field.
func CheckSubset(field, want, have string) error {
	w, err := ParseList(want)
	if err != nil {
		return &FieldError{Field: field, Msg: strconv.Quote(want), Err: err}
	}
	h := map[int]bool{}
	if strings.TrimSpace(have) != "" {
		hs, err := ParseList(have)
		if err != nil {
			return fmt.Errorf("parse available set %q: %w", have, err)
		}
		for _, x := range hs {
			h[x] = true
		}
	}
	for _, x := range w {
		if !h[x] {
			return fieldErr(field, "%q names %d, which is not available (host has %q)", want, x, strings.TrimSpace(have))
		}
	}
	return nil
}

// CheckMemoryUpdate rejects a new memory limit below the usage now.
func CheckMemoryUpdate(r *specs.LinuxResources, usage uint64) error {
	if r == nil || r.Memory == nil || !set(r.Memory.Limit) || *r.Memory.Limit == -1 {
		return nil
	}
	if uint64(*r.Memory.Limit) < usage {
		return fieldErr(fMemLimit, "%d is below the cgroup's current usage %d", *r.Memory.Limit, usage)
	}
	return nil
}

func itoa(v int64) string          { return strconv.FormatInt(v, 10) }
func utoa(v uint64) string         { return strconv.FormatUint(v, 10) }
func devnum(maj, min int64) string { return itoa(maj) + ":" + itoa(min) }

// limitV2 renders a v1-style limit (-1 unlimited) for a v2 file.
func limitV2(v int64) string {
	if v == -1 {
		return "max"
	}
	return itoa(v)
}

// v1Writes lists the cgroup v1 writes for r, in the order they must happen.
// memswNow is the current memory+swap limit (-1 when unlimited, as in a new
// cgroup): v1 requires memory.limit <= memsw.limit at every step, so when
// the new memory limit exceeds the current memsw limit, memsw goes first.
func v1Writes(r *specs.LinuxResources, memswNow int64) ([]Write, error) {
	if err := Validate(r); err != nil {
		return nil, err
	}
	if r == nil {
		return nil, nil
	}
	if len(r.Unified) > 0 {
		return nil, fieldErr(fUnified, "is set but this host uses cgroup v1")
	}
	var ws []Write
	add := func(ctrl, file, value, field string) *Write {
		ws = append(ws, Write{Controller: ctrl, File: file, Value: value, Field: field})
		return &ws[len(ws)-1]
	}

	if m := r.Memory; m != nil {
		limit := func() { add("memory", "memory.limit_in_bytes", itoa(*m.Limit), fMemLimit) }
		swap := func() {
			w := add("memory", "memory.memsw.limit_in_bytes", itoa(*m.Swap), fMemSwap)
			w.Optional = *m.Swap == -1
		}
		inf := func(v int64) int64 {
			if v == -1 {
				return math.MaxInt64
			}
			return v
		}
		switch {
		case set(m.Limit) && set(m.Swap) && inf(*m.Limit) > inf(memswNow):
			swap()
			limit()
		case set(m.Limit) && set(m.Swap):
			limit()
			swap()
		case set(m.Limit):
			limit()
		case set(m.Swap):
			swap()
		}
		if set(m.Reservation) {
			add("memory", "memory.soft_limit_in_bytes", itoa(*m.Reservation), fMemReservation)
		}
		// m.Kernel is deprecated and kernels since 6.x refuse it: ignored.
		if set(m.KernelTCP) {
			add("memory", "memory.kmem.tcp.limit_in_bytes", itoa(*m.KernelTCP), fMemKernelTCP)
		}
		if m.Swappiness != nil {
			add("memory", "memory.swappiness", utoa(*m.Swappiness), fMemSwappiness)
		}
		if m.DisableOOMKiller != nil {
			add("memory", "memory.oom_control", boolStr(*m.DisableOOMKiller), fMemOOM)
		}
		if m.UseHierarchy != nil {
			add("memory", "memory.use_hierarchy", boolStr(*m.UseHierarchy), fMemHierarchy)
		}
	}

	if c := r.CPU; c != nil {
		if c.Shares != nil && *c.Shares != 0 {
			add("cpu", "cpu.shares", utoa(*c.Shares), fCPUShares)
		}
		if c.Period != nil && *c.Period != 0 {
			add("cpu", "cpu.cfs_period_us", utoa(*c.Period), fCPUPeriod)
		}
		if set(c.Quota) {
			add("cpu", "cpu.cfs_quota_us", itoa(*c.Quota), fCPUQuota)
		}
		if c.Burst != nil && *c.Burst != 0 {
			add("cpu", "cpu.cfs_burst_us", utoa(*c.Burst), fCPUBurst)
		}
		if c.RealtimePeriod != nil && *c.RealtimePeriod != 0 {
			add("cpu", "cpu.rt_period_us", utoa(*c.RealtimePeriod), fCPURtPeriod)
		}
		if set(c.RealtimeRuntime) {
			add("cpu", "cpu.rt_runtime_us", itoa(*c.RealtimeRuntime), fCPURtRuntime)
		}
		if c.Idle != nil {
			add("cpu", "cpu.idle", itoa(*c.Idle), fCPUIdle)
		}
		if c.Cpus != "" {
			add("cpuset", "cpuset.cpus", c.Cpus, fCPUCpus)
		}
		if c.Mems != "" {
			add("cpuset", "cpuset.mems", c.Mems, fCPUMems)
		}
	}

	if p := r.Pids; p != nil && p.Limit != nil {
		add("pids", "pids.max", pidsMax(*p.Limit), fPidsLimit)
	}

	if b := r.BlockIO; b != nil {
		if b.Weight != nil && *b.Weight != 0 {
			w := add("blkio", "blkio.weight", utoa(uint64(*b.Weight)), fBlkWeight)
			w.Alt, w.AltValue = "blkio.bfq.weight", w.Value
		}
		if b.LeafWeight != nil && *b.LeafWeight != 0 {
			add("blkio", "blkio.leaf_weight", utoa(uint64(*b.LeafWeight)), fBlkLeafWeight)
		}
		for i, d := range b.WeightDevice {
			f := fmt.Sprintf("%s[%d]", fBlkWeightDev, i)
			if d.Weight != nil && *d.Weight != 0 {
				v := devnum(d.Major, d.Minor) + " " + utoa(uint64(*d.Weight))
				w := add("blkio", "blkio.weight_device", v, f+".weight")
				w.Alt, w.AltValue = "blkio.bfq.weight_device", v
			}
			if d.LeafWeight != nil && *d.LeafWeight != 0 {
				add("blkio", "blkio.leaf_weight_device", devnum(d.Major, d.Minor)+" "+utoa(uint64(*d.LeafWeight)), f+".leafWeight")
			}
		}
		for _, t := range []struct {
			file, field string
			devs        []specs.LinuxThrottleDevice
		}{
			{"blkio.throttle.read_bps_device", fBlkReadBps, b.ThrottleReadBpsDevice},
			{"blkio.throttle.write_bps_device", fBlkWriteBps, b.ThrottleWriteBpsDevice},
			{"blkio.throttle.read_iops_device", fBlkReadIOPS, b.ThrottleReadIOPSDevice},
			{"blkio.throttle.write_iops_device", fBlkWriteIOPS, b.ThrottleWriteIOPSDevice},
		} {
			for i, d := range t.devs {
				add("blkio", t.file, devnum(d.Major, d.Minor)+" "+utoa(d.Rate), fmt.Sprintf("%s[%d]", t.field, i))
			}
		}
	}

	for i, h := range r.HugepageLimits {
		f := fmt.Sprintf("%s[%d]", fHugepage, i)
		add("hugetlb", "hugetlb."+h.Pagesize+".limit_in_bytes", utoa(h.Limit), f)
		add("hugetlb", "hugetlb."+h.Pagesize+".rsvd.limit_in_bytes", utoa(h.Limit), f).Optional = true
	}

	if n := r.Network; n != nil {
		if n.ClassID != nil {
			add("net_cls", "net_cls.classid", utoa(uint64(*n.ClassID)), fNetClassID)
		}
		for i, p := range n.Priorities {
			add("net_prio", "net_prio.ifpriomap", p.Name+" "+utoa(uint64(p.Priority)), fmt.Sprintf("%s[%d]", fNetPriorities, i))
		}
	}

	for _, dev := range slices.Sorted(maps.Keys(r.Rdma)) {
		add("rdma", "rdma.max", rdmaLine(dev, r.Rdma[dev]), fRdma+"."+dev)
	}

	for i, d := range r.Devices {
		rule, _ := parseDeviceRule(d) // validated above
		file := "devices.deny"
		if rule.allow {
			file = "devices.allow"
		}
		add("devices", file, rule.v1String(), fmt.Sprintf("%s[%d]", fDevices, i))
	}
	return ws, nil
}

// v2Writes lists the cgroup v2 writes for r. Devices are not among them:
// v2 filters devices with an eBPF program (deviceProgram).
func v2Writes(r *specs.LinuxResources) ([]Write, error) {
	if err := Validate(r); err != nil {
		return nil, err
	}
	if r == nil {
		return nil, nil
	}
	var ws []Write
	add := func(ctrl, file, value, field string) *Write {
		ws = append(ws, Write{Controller: ctrl, File: file, Value: value, Field: field})
		return &ws[len(ws)-1]
	}
	unsupported := func(field string) error {
		return fieldErr(field, "has no cgroup v2 equivalent; remove it or use linux.resources.unified")
	}

	if m := r.Memory; m != nil {
		if set(m.Limit) {
			add("memory", "memory.max", limitV2(*m.Limit), fMemLimit)
		}
		if set(m.Swap) {
			// The spec's swap is memory+swap; v2's swap.max is swap alone.
			v := "max"
			if *m.Swap != -1 {
				v = itoa(*m.Swap - *m.Limit)
			}
			add("memory", "memory.swap.max", v, fMemSwap).Optional = v == "max"
		}
		if set(m.Reservation) {
			add("memory", "memory.low", limitV2(*m.Reservation), fMemReservation)
		}
		if set(m.KernelTCP) {
			return nil, unsupported(fMemKernelTCP)
		}
		if m.Swappiness != nil {
			return nil, unsupported(fMemSwappiness)
		}
		if m.DisableOOMKiller != nil && *m.DisableOOMKiller {
			return nil, unsupported(fMemOOM)
		}
		if m.UseHierarchy != nil && !*m.UseHierarchy {
			return nil, fieldErr(fMemHierarchy, "false is impossible on cgroup v2 (accounting is always hierarchical)")
		}
	}

	if c := r.CPU; c != nil {
		if c.Shares != nil && *c.Shares != 0 {
			add("cpu", "cpu.weight", utoa(SharesToWeight(*c.Shares)), fCPUShares)
		}
		quotaSet, periodSet := set(c.Quota), c.Period != nil && *c.Period != 0
		if quotaSet || periodSet {
			v := "max"
			if quotaSet && *c.Quota != -1 {
				v = itoa(*c.Quota)
			}
			if periodSet {
				v += " " + utoa(*c.Period)
			}
			field := fCPUQuota
			if !quotaSet {
				field = fCPUPeriod
			}
			add("cpu", "cpu.max", v, field)
		}
		if c.Burst != nil && *c.Burst != 0 {
			add("cpu", "cpu.max.burst", utoa(*c.Burst), fCPUBurst)
		}
		if set(c.RealtimeRuntime) {
			return nil, unsupported(fCPURtRuntime)
		}
		if c.RealtimePeriod != nil && *c.RealtimePeriod != 0 {
			return nil, unsupported(fCPURtPeriod)
		}
		if c.Idle != nil {
			add("cpu", "cpu.idle", itoa(*c.Idle), fCPUIdle)
		}
		if c.Cpus != "" {
			add("cpuset", "cpuset.cpus", c.Cpus, fCPUCpus)
		}
		if c.Mems != "" {
			add("cpuset", "cpuset.mems", c.Mems, fCPUMems)
		}
	}

	if p := r.Pids; p != nil && p.Limit != nil {
		add("pids", "pids.max", pidsMax(*p.Limit), fPidsLimit)
	}

	if b := r.BlockIO; b != nil {
		if b.Weight != nil && *b.Weight != 0 {
			w := add("io", "io.weight", "default "+utoa(BlkioToIOWeight(*b.Weight)), fBlkWeight)
			w.Alt, w.AltValue = "io.bfq.weight", "default "+utoa(uint64(*b.Weight))
		}
		if b.LeafWeight != nil && *b.LeafWeight != 0 {
			return nil, unsupported(fBlkLeafWeight)
		}
		for i, d := range b.WeightDevice {
			f := fmt.Sprintf("%s[%d]", fBlkWeightDev, i)
			if d.Weight != nil && *d.Weight != 0 {
				w := add("io", "io.weight", devnum(d.Major, d.Minor)+" "+utoa(BlkioToIOWeight(*d.Weight)), f+".weight")
				w.Alt, w.AltValue = "io.bfq.weight", devnum(d.Major, d.Minor)+" "+utoa(uint64(*d.Weight))
			}
			if d.LeafWeight != nil && *d.LeafWeight != 0 {
				return nil, unsupported(f + ".leafWeight")
			}
		}
		// io.max takes every limit of a device on one line.
		type limits struct {
			keys  []string
			field string
		}
		var order []string
		byDev := map[string]*limits{}
		for _, t := range []struct {
			key, field string
			devs       []specs.LinuxThrottleDevice
		}{
			{"rbps", fBlkReadBps, b.ThrottleReadBpsDevice},
			{"wbps", fBlkWriteBps, b.ThrottleWriteBpsDevice},
			{"riops", fBlkReadIOPS, b.ThrottleReadIOPSDevice},
			{"wiops", fBlkWriteIOPS, b.ThrottleWriteIOPSDevice},
		} {
			for i, d := range t.devs {
				dev := devnum(d.Major, d.Minor)
				l := byDev[dev]
				if l == nil {
					l = &limits{field: fmt.Sprintf("%s[%d]", t.field, i)}
					byDev[dev] = l
					order = append(order, dev)
				}
				rate := utoa(d.Rate)
				if d.Rate == 0 {
					rate = "max"
				}
				l.keys = append(l.keys, t.key+"="+rate)
			}
		}
		for _, dev := range order {
			add("io", "io.max", dev+" "+strings.Join(byDev[dev].keys, " "), byDev[dev].field)
		}
	}

	for i, h := range r.HugepageLimits {
		f := fmt.Sprintf("%s[%d]", fHugepage, i)
		add("hugetlb", "hugetlb."+h.Pagesize+".max", utoa(h.Limit), f)
		add("hugetlb", "hugetlb."+h.Pagesize+".rsvd.max", utoa(h.Limit), f).Optional = true
	}

	if n := r.Network; n != nil {
		if n.ClassID != nil {
			return nil, unsupported(fNetClassID)
		}
		if len(n.Priorities) > 0 {
			return nil, unsupported(fNetPriorities)
		}
	}

	for _, dev := range slices.Sorted(maps.Keys(r.Rdma)) {
		add("rdma", "rdma.max", rdmaLine(dev, r.Rdma[dev]), fRdma+"."+dev)
	}

	// unified entries are written last and replace a spec-derived write of
	// the same file, so each file is written once.
	if len(r.Unified) > 0 {
		kept := ws[:0]
		for _, w := range ws {
			if _, ok := r.Unified[w.File]; !ok {
				kept = append(kept, w)
			}
		}
		ws = kept
		for _, k := range slices.Sorted(maps.Keys(r.Unified)) {
			ctrl, _, _ := strings.Cut(k, ".")
			if ctrl == "cgroup" {
				ctrl = ""
			}
			add(ctrl, k, r.Unified[k], fUnified+"."+k)
		}
	}
	return ws, nil
}

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// pidsMax renders a pids limit; 0 and -1 mean no limit, as in runc.
func pidsMax(v int64) string {
	if v <= 0 {
		return "max"
	}
	return itoa(v)
}

func rdmaLine(dev string, l specs.LinuxRdma) string {
	v := func(p *uint32) string {
		if p == nil {
			return "max"
		}
		return utoa(uint64(*p))
	}
	return dev + " hca_handle=" + v(l.HcaHandles) + " hca_object=" + v(l.HcaObjects)
}

// SharesToWeight converts cgroup v1 cpu.shares [2, 262144] to cgroup v2
// cpu.weight [1, 10000] with the quadratic-in-log2 mapping crun uses, which
// keeps the defaults aligned (1024 -> 100) where the older linear formula
// gave 39: weight = ceil(10^((l^2 + 125l)/612 - 7/34)), l = log2(shares).
// 7/34 is written as 126/612 so that powers of two map exactly.
func SharesToWeight(shares uint64) uint64 {
	if shares == 0 {
		return 0
	}
	if shares <= minShares {
		return 1
	}
	if shares >= maxShares {
		return 10000
	}
	l := math.Log2(float64(shares))
	w := math.Ceil(math.Pow(10, (l*l+125*l-126)/612))
	return uint64(min(max(w, 1), 10000))
}

// BlkioToIOWeight converts a v1 blkio weight [10, 1000] to v2 io.weight
// [1, 10000] linearly, as runc and crun do.
func BlkioToIOWeight(w uint16) uint64 {
	if w == 0 {
		return 0
	}
	return 1 + (uint64(w)-minBlkWeight)*9999/(maxBlkWeight-minBlkWeight)
}

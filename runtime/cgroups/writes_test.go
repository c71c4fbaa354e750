package cgroups

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }
func u16(v uint16) *uint16 { return &v }
func u32(v uint32) *uint32 { return &v }
func boolp(v bool) *bool   { return &v }
func render(ws []Write) []string {
	out := make([]string, 0, len(ws))
	for _, w := range ws {
		out = append(out, w.Controller+": "+w.String()+" <- "+w.Field)
	}
	return out
}

// full sets every resource both versions can express.
func full() *specs.LinuxResources {
	return &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: i64(256 << 20), Reservation: i64(128 << 20), Swap: i64(512 << 20)},
		CPU: &specs.LinuxCPU{Shares: u64(1024), Quota: i64(50000), Period: u64(100000), Burst: u64(10000),
			Cpus: "0-1", Mems: "0", Idle: i64(0)},
		Pids: &specs.LinuxPids{Limit: i64(64)},
		BlockIO: &specs.LinuxBlockIO{
			Weight:                 u16(500),
			WeightDevice:           []specs.LinuxWeightDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 0}, Weight: u16(100)}},
			ThrottleReadBpsDevice:  []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 0}, Rate: 1 << 20}},
			ThrottleWriteBpsDevice: []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 0}, Rate: 2 << 20}},
			ThrottleReadIOPSDevice: []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 16}, Rate: 300}},
			ThrottleWriteIOPSDevice: []specs.LinuxThrottleDevice{
				{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 0}, Rate: 400},
			},
		},
		HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 4 << 20}},
		Rdma:           map[string]specs.LinuxRdma{"mlx5_0": {HcaHandles: u32(3)}},
		Devices: []specs.LinuxDeviceCgroup{
			{Allow: false, Access: "rwm"},
			{Allow: true, Type: "c", Major: i64(1), Minor: i64(3), Access: "rwm"},
			{Allow: true, Type: "c", Major: i64(136), Access: "rw"},
		},
	}
}

func TestV1WritesGolden(t *testing.T) {
	r := full()
	r.Memory.Swappiness = u64(10)
	r.Memory.DisableOOMKiller = boolp(true)
	r.Memory.KernelTCP = i64(16 << 20)
	r.CPU.RealtimePeriod = u64(1000000)
	r.CPU.RealtimeRuntime = i64(95000)
	r.Network = &specs.LinuxNetwork{ClassID: u32(0x100001), Priorities: []specs.LinuxInterfacePriority{{Name: "eth0", Priority: 5}}}
	ws, err := v1Writes(r, -1)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`memory: memory.limit_in_bytes="268435456" <- linux.resources.memory.limit`,
		`memory: memory.memsw.limit_in_bytes="536870912" <- linux.resources.memory.swap`,
		`memory: memory.soft_limit_in_bytes="134217728" <- linux.resources.memory.reservation`,
		`memory: memory.kmem.tcp.limit_in_bytes="16777216" <- linux.resources.memory.kernelTCP`,
		`memory: memory.swappiness="10" <- linux.resources.memory.swappiness`,
		`memory: memory.oom_control="1" <- linux.resources.memory.disableOOMKiller`,
		`cpu: cpu.shares="1024" <- linux.resources.cpu.shares`,
		`cpu: cpu.cfs_period_us="100000" <- linux.resources.cpu.period`,
		`cpu: cpu.cfs_quota_us="50000" <- linux.resources.cpu.quota`,
		`cpu: cpu.cfs_burst_us="10000" <- linux.resources.cpu.burst`,
		`cpu: cpu.rt_period_us="1000000" <- linux.resources.cpu.realtimePeriod`,
		`cpu: cpu.rt_runtime_us="95000" <- linux.resources.cpu.realtimeRuntime`,
		`cpu: cpu.idle="0" <- linux.resources.cpu.idle`,
		`cpuset: cpuset.cpus="0-1" <- linux.resources.cpu.cpus`,
		`cpuset: cpuset.mems="0" <- linux.resources.cpu.mems`,
		`pids: pids.max="64" <- linux.resources.pids.limit`,
		`blkio: blkio.weight="500" (or blkio.bfq.weight="500") <- linux.resources.blockIO.weight`,
		`blkio: blkio.weight_device="8:0 100" (or blkio.bfq.weight_device="8:0 100") <- linux.resources.blockIO.weightDevice[0].weight`,
		`blkio: blkio.throttle.read_bps_device="8:0 1048576" <- linux.resources.blockIO.throttleReadBpsDevice[0]`,
		`blkio: blkio.throttle.write_bps_device="8:0 2097152" <- linux.resources.blockIO.throttleWriteBpsDevice[0]`,
		`blkio: blkio.throttle.read_iops_device="8:16 300" <- linux.resources.blockIO.throttleReadIOPSDevice[0]`,
		`blkio: blkio.throttle.write_iops_device="8:0 400" <- linux.resources.blockIO.throttleWriteIOPSDevice[0]`,
		`hugetlb: hugetlb.2MB.limit_in_bytes="4194304" <- linux.resources.hugepageLimits[0]`,
		`hugetlb: hugetlb.2MB.rsvd.limit_in_bytes="4194304" optional <- linux.resources.hugepageLimits[0]`,
		`net_cls: net_cls.classid="1048577" <- linux.resources.network.classID`,
		`net_prio: net_prio.ifpriomap="eth0 5" <- linux.resources.network.priorities[0]`,
		`rdma: rdma.max="mlx5_0 hca_handle=3 hca_object=max" <- linux.resources.rdma.mlx5_0`,
		`devices: devices.deny="a *:* rwm" <- linux.resources.devices[0]`,
		`devices: devices.allow="c 1:3 rwm" <- linux.resources.devices[1]`,
		`devices: devices.allow="c 136:* rw" <- linux.resources.devices[2]`,
	}
	if diff := cmp.Diff(want, render(ws)); diff != "" {
		t.Errorf("v1 writes (-want +got):\n%s", diff)
	}
}

func TestV2WritesGolden(t *testing.T) {
	r := full()
	r.Unified = map[string]string{"memory.high": "200000000", "pids.max": "32", "cgroup.max.depth": "3"}
	ws, err := v2Writes(r)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`memory: memory.max="268435456" <- linux.resources.memory.limit`,
		`memory: memory.swap.max="268435456" <- linux.resources.memory.swap`,
		`memory: memory.low="134217728" <- linux.resources.memory.reservation`,
		`cpu: cpu.weight="100" <- linux.resources.cpu.shares`,
		`cpu: cpu.max="50000 100000" <- linux.resources.cpu.quota`,
		`cpu: cpu.max.burst="10000" <- linux.resources.cpu.burst`,
		`cpu: cpu.idle="0" <- linux.resources.cpu.idle`,
		`cpuset: cpuset.cpus="0-1" <- linux.resources.cpu.cpus`,
		`cpuset: cpuset.mems="0" <- linux.resources.cpu.mems`,
		// pids.max comes from unified instead, written once.
		`io: io.weight="default 4950" (or io.bfq.weight="default 500") <- linux.resources.blockIO.weight`,
		`io: io.weight="8:0 910" (or io.bfq.weight="8:0 100") <- linux.resources.blockIO.weightDevice[0].weight`,
		`io: io.max="8:0 rbps=1048576 wbps=2097152 wiops=400" <- linux.resources.blockIO.throttleReadBpsDevice[0]`,
		`io: io.max="8:16 riops=300" <- linux.resources.blockIO.throttleReadIOPSDevice[0]`,
		`hugetlb: hugetlb.2MB.max="4194304" <- linux.resources.hugepageLimits[0]`,
		`hugetlb: hugetlb.2MB.rsvd.max="4194304" optional <- linux.resources.hugepageLimits[0]`,
		`rdma: rdma.max="mlx5_0 hca_handle=3 hca_object=max" <- linux.resources.rdma.mlx5_0`,
		`: cgroup.max.depth="3" <- linux.resources.unified.cgroup.max.depth`,
		`memory: memory.high="200000000" <- linux.resources.unified.memory.high`,
		`pids: pids.max="32" <- linux.resources.unified.pids.max`,
	}
	if diff := cmp.Diff(want, render(ws)); diff != "" {
		t.Errorf("v2 writes (-want +got):\n%s", diff)
	}
}

func TestWritesSmallCases(t *testing.T) {
	tests := []struct {
		name   string
		r      *specs.LinuxResources
		memsw  int64 // v1 current memsw limit
		v1, v2 []string
	}{
		{
			name: "nil resources write nothing",
		},
		{
			name: "unlimited memory and swap",
			r:    &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1), Swap: i64(-1)}},
			v1: []string{
				`memory: memory.limit_in_bytes="-1" <- linux.resources.memory.limit`,
				`memory: memory.memsw.limit_in_bytes="-1" optional <- linux.resources.memory.swap`,
			},
			v2: []string{
				`memory: memory.max="max" <- linux.resources.memory.limit`,
				`memory: memory.swap.max="max" optional <- linux.resources.memory.swap`,
			},
		},
		{
			name:  "raising memory above the current memsw limit writes memsw first",
			r:     &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(300 << 20), Swap: i64(600 << 20)}},
			memsw: 200 << 20,
			v1: []string{
				`memory: memory.memsw.limit_in_bytes="629145600" <- linux.resources.memory.swap`,
				`memory: memory.limit_in_bytes="314572800" <- linux.resources.memory.limit`,
			},
			v2: []string{
				`memory: memory.max="314572800" <- linux.resources.memory.limit`,
				`memory: memory.swap.max="314572800" <- linux.resources.memory.swap`,
			},
		},
		{
			name: "zero means unset, as Docker writes it",
			r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(0), Swap: i64(0)},
				CPU: &specs.LinuxCPU{Shares: u64(0), Quota: i64(0), Period: u64(0)}},
		},
		{
			name: "quota alone keeps the kernel's period",
			r:    &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(20000)}},
			v1:   []string{`cpu: cpu.cfs_quota_us="20000" <- linux.resources.cpu.quota`},
			v2:   []string{`cpu: cpu.max="20000" <- linux.resources.cpu.quota`},
		},
		{
			name: "period alone",
			r:    &specs.LinuxResources{CPU: &specs.LinuxCPU{Period: u64(50000)}},
			v1:   []string{`cpu: cpu.cfs_period_us="50000" <- linux.resources.cpu.period`},
			v2:   []string{`cpu: cpu.max="max 50000" <- linux.resources.cpu.period`},
		},
		{
			name: "unlimited quota",
			r:    &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(-1), Period: u64(100000)}},
			v1: []string{
				`cpu: cpu.cfs_period_us="100000" <- linux.resources.cpu.period`,
				`cpu: cpu.cfs_quota_us="-1" <- linux.resources.cpu.quota`,
			},
			v2: []string{`cpu: cpu.max="max 100000" <- linux.resources.cpu.quota`},
		},
		{
			name: "pids 0 and -1 mean no limit",
			r:    &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(0)}},
			v1:   []string{`pids: pids.max="max" <- linux.resources.pids.limit`},
			v2:   []string{`pids: pids.max="max" <- linux.resources.pids.limit`},
		},
		{
			name: "device rule defaults: any type, any number, all access",
			r:    &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: true}, {Type: "b", Major: i64(8), Minor: i64(-1), Access: "m"}}},
			v1: []string{
				`devices: devices.allow="a *:* rwm" <- linux.resources.devices[0]`,
				`devices: devices.deny="b 8:* m" <- linux.resources.devices[1]`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			memsw := tt.memsw
			if memsw == 0 {
				memsw = -1
			}
			ws, err := v1Writes(tt.r, memsw)
			if err != nil {
				t.Fatalf("v1: %v", err)
			}
			if diff := cmp.Diff(tt.v1, render(ws), cmpEmpty()); diff != "" {
				t.Errorf("v1 writes (-want +got):\n%s", diff)
			}
			ws, err = v2Writes(tt.r)
			if err != nil {
				t.Fatalf("v2: %v", err)
			}
			if diff := cmp.Diff(tt.v2, render(ws), cmpEmpty()); diff != "" {
				t.Errorf("v2 writes (-want +got):\n%s", diff)
			}
		})
	}
}

// cmpEmpty treats a nil and an empty slice alike.
func cmpEmpty() cmp.Option {
	return cmp.FilterValues(func(a, b []string) bool { return len(a) == 0 && len(b) == 0 }, cmp.Ignore())
}

func TestValidationNamesTheField(t *testing.T) {
	tests := []struct {
		name string
		r    *specs.LinuxResources
		want string // exact error
	}{
		{"swap below limit",
			&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(268435456), Swap: i64(100)}},
			"linux.resources.memory.swap: 100 is below memory.limit 268435456 (swap is memory plus swap)"},
		{"swap without limit",
			&specs.LinuxResources{Memory: &specs.LinuxMemory{Swap: i64(100)}},
			"linux.resources.memory.swap: 100 is set without memory.limit (swap is memory plus swap)"},
		{"swap limited but memory unlimited",
			&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1), Swap: i64(100)}},
			"linux.resources.memory.swap: 100 is limited but memory.limit is unlimited (-1)"},
		{"negative memory",
			&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-5)}},
			"linux.resources.memory.limit: -5 is negative (use -1 for no limit)"},
		{"reservation above limit",
			&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(100 << 20), Reservation: i64(200 << 20)}},
			"linux.resources.memory.reservation: 209715200 is above memory.limit 104857600"},
		{"swappiness above 100",
			&specs.LinuxResources{Memory: &specs.LinuxMemory{Swappiness: u64(101)}},
			"linux.resources.memory.swappiness: 101 is above 100"},
		{"shares out of range",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: u64(1)}},
			"linux.resources.cpu.shares: 1 is outside [2, 262144]"},
		{"period too short",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000), Period: u64(10)}},
			"linux.resources.cpu.period: 10 is outside [1000, 1000000] microseconds"},
		{"period too long",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Period: u64(2000000)}},
			"linux.resources.cpu.period: 2000000 is outside [1000, 1000000] microseconds"},
		{"quota below minimum",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(10)}},
			"linux.resources.cpu.quota: 10 is below the kernel's minimum 1000 microseconds (use -1 for no limit)"},
		{"negative quota",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(-7)}},
			"linux.resources.cpu.quota: -7 is below the kernel's minimum 1000 microseconds (use -1 for no limit)"},
		{"burst above quota",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(10000), Burst: u64(20000)}},
			"linux.resources.cpu.burst: 20000 is above cpu.quota 10000"},
		{"burst without quota",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Burst: u64(20000)}},
			"linux.resources.cpu.burst: 20000 is set without a cpu.quota"},
		{"realtime runtime above period",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{RealtimeRuntime: i64(2000), RealtimePeriod: u64(1000)}},
			"linux.resources.cpu.realtimeRuntime: 2000 is above cpu.realtimePeriod 1000"},
		{"idle not boolean",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Idle: i64(2)}},
			"linux.resources.cpu.idle: 2 is neither 0 nor 1"},
		{"cpus syntax",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "3-1"}},
			`linux.resources.cpu.cpus: "3-1": "3-1" is not a valid range`},
		{"mems syntax",
			&specs.LinuxResources{CPU: &specs.LinuxCPU{Mems: "0,,1"}},
			`linux.resources.cpu.mems: "0,,1": empty element in list "0,,1"`},
		{"pids negative",
			&specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(-2)}},
			"linux.resources.pids.limit: -2 is negative (use -1 for no limit)"},
		{"blkio weight",
			&specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{Weight: u16(5)}},
			"linux.resources.blockIO.weight: 5 is outside [10, 1000]"},
		{"blkio device weight",
			&specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{WeightDevice: []specs.LinuxWeightDevice{{Weight: u16(2000)}}}},
			"linux.resources.blockIO.weightDevice[0].weight: 2000 is outside [10, 1000]"},
		{"throttle device number",
			&specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{ThrottleReadBpsDevice: []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: -1}}}}},
			"linux.resources.blockIO.throttleReadBpsDevice[0].major: -1 is outside [0, 4095]"},
		{"hugepage size",
			&specs.LinuxResources{HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2M"}}},
			`linux.resources.hugepageLimits[0].pageSize: "2M" is not a size like 2MB or 1GB`},
		{"device type",
			&specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Type: "x"}}},
			`linux.resources.devices[0]: invalid rule: type "x" is not a, b or c`},
		{"device access",
			&specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Access: "rx"}}},
			`linux.resources.devices[0]: invalid rule: access "rx" has 'x'; only r, w and m are allowed`},
		{"unified path escape",
			&specs.LinuxResources{Unified: map[string]string{"../memory.max": "1"}},
			`linux.resources.unified.../memory.max: invalid key: "../memory.max" is not a cgroup interface file name`},
		{"unified membership",
			&specs.LinuxResources{Unified: map[string]string{"cgroup.procs": "1"}},
			`linux.resources.unified.cgroup.procs: invalid key: "cgroup.procs" is managed by the runtime`},
		{"unified cpu weight out of range",
			&specs.LinuxResources{Unified: map[string]string{"cpu.weight": "20000"}},
			`linux.resources.unified.cpu.weight: "20000" is not a weight in [1, 10000]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, v := range []struct {
				name string
				f    func() error
			}{
				{"v1", func() error { _, err := v1Writes(tt.r, -1); return err }},
				{"v2", func() error { _, err := v2Writes(tt.r); return err }},
			} {
				err := v.f()
				if err == nil || err.Error() != tt.want {
					t.Errorf("%s: error %v, want %q", v.name, err, tt.want)
				}
				var fe *FieldError
				if !errors.As(err, &fe) || !strings.HasPrefix(tt.want, fe.Field+":") {
					t.Errorf("%s: error %v is not a FieldError naming the field", v.name, err)
				}
			}
		})
	}
}

func TestVersionSpecificErrors(t *testing.T) {
	v2only := &specs.LinuxResources{Unified: map[string]string{"memory.high": "1"}}
	if _, err := v1Writes(v2only, -1); err == nil || err.Error() != "linux.resources.unified: is set but this host uses cgroup v1" {
		t.Errorf("v1 with unified: %v", err)
	}
	for field, r := range map[string]*specs.LinuxResources{
		fMemSwappiness: {Memory: &specs.LinuxMemory{Swappiness: u64(60)}},
		fMemKernelTCP:  {Memory: &specs.LinuxMemory{KernelTCP: i64(1 << 20)}},
		fMemOOM:        {Memory: &specs.LinuxMemory{DisableOOMKiller: boolp(true)}},
		fCPURtRuntime:  {CPU: &specs.LinuxCPU{RealtimeRuntime: i64(1000)}},
		fBlkLeafWeight: {BlockIO: &specs.LinuxBlockIO{LeafWeight: u16(100)}},
		fNetClassID:    {Network: &specs.LinuxNetwork{ClassID: u32(1)}},
	} {
		_, err := v2Writes(r)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("v2 %s: error %v, want a FieldError for it", field, err)
		}
		if _, err := v1Writes(r, -1); err != nil {
			t.Errorf("v1 %s: %v", field, err)
		}
	}
}

func TestSharesToWeight(t *testing.T) {
	for _, tt := range []struct{ shares, weight uint64 }{
		{0, 0}, {2, 1}, {1, 1}, {3, 2}, {100, 17}, {512, 59}, {1024, 100}, {2048, 174}, {4096, 303}, {262144, 10000}, {300000, 10000},
	} {
		if got := SharesToWeight(tt.shares); got != tt.weight {
			t.Errorf("SharesToWeight(%d) = %d, want %d", tt.shares, got, tt.weight)
		}
	}
	prev := uint64(0)
	for s := uint64(2); s <= 262144; s += 97 {
		w := SharesToWeight(s)
		if w < prev || w < 1 || w > 10000 {
			t.Fatalf("SharesToWeight(%d) = %d after %d: not monotonic within [1, 10000]", s, w, prev)
		}
		prev = w
	}
}

func TestBlkioToIOWeight(t *testing.T) {
	for _, tt := range []struct {
		in   uint16
		want uint64
	}{{10, 1}, {500, 4950}, {1000, 10000}, {100, 910}} {
		if got := BlkioToIOWeight(tt.in); got != tt.want {
			t.Errorf("BlkioToIOWeight(%d) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestParseList(t *testing.T) {
	got, err := ParseList("0-2,5,7-8")
	if err != nil || !cmp.Equal(got, []int{0, 1, 2, 5, 7, 8}) {
		t.Errorf("ParseList = %v, %v", got, err)
	}
	for _, bad := range []string{"", "a", "1-", "-1", "3-2", "1,,2"} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("ParseList(%q) succeeded", bad)
		}
	}
}

func TestCheckSubset(t *testing.T) {
	if err := CheckSubset(fCPUCpus, "0-1", "0-3\n"); err != nil {
		t.Errorf("0-1 of 0-3: %v", err)
	}
	err := CheckSubset(fCPUCpus, "0,7", "0-1\n")
	if err == nil || err.Error() != `linux.resources.cpu.cpus: "0,7" names 7, which is not available (host has "0-1")` {
		t.Errorf("0,7 of 0-1: %v", err)
	}
}

func TestCheckMemoryUpdate(t *testing.T) {
	r := &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 20)}}
	err := CheckMemoryUpdate(r, 5<<20)
	if err == nil || err.Error() != "linux.resources.memory.limit: 1048576 is below the cgroup's current usage 5242880" {
		t.Errorf("below usage: %v", err)
	}
	if err := CheckMemoryUpdate(r, 1<<19); err != nil {
		t.Errorf("above usage: %v", err)
	}
	if err := CheckMemoryUpdate(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1)}}, 5<<20); err != nil {
		t.Errorf("unlimited: %v", err)
	}
}

func TestParsePath(t *testing.T) {
	for _, tt := range []struct{ in, want, err string }{
		{"/berth/abc", "/berth/abc", ""},
		{"berth/abc/", "/berth/abc", ""},
		{"//a//b", "/a/b", ""},
		{"", "", "linux.cgroupsPath: is empty"},
		{"/", "", `linux.cgroupsPath: "/" names the root cgroup`},
		{"/a/../../etc", "", `linux.cgroupsPath: "/a/../../etc" contains ".."`},
		{"system.slice:berth:abc", "", `linux.cgroupsPath: systemd cgroup driver is not supported (cgroupsPath "system.slice:berth:abc" has the slice:prefix:name form); use a cgroupfs path such as /berth/<id>`},
	} {
		got, err := ParsePath(tt.in)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("ParsePath(%q) error %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

package cgroups

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Hierarchy
		err  string
	}{
		{
			name: "hybrid host with separate cpu and cpuacct",
			in: `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`,
			want: Hierarchy{Unified: "/sys/fs/cgroup/unified", V1: map[string]string{
				"cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct", "cpuset": "/sys/fs/cgroup/cpuset",
				"memory": "/sys/fs/cgroup/memory", "name=systemd": "/sys/fs/cgroup/systemd",
			}},
		},
		{
			name: "co-mounted controllers share a mount; a later bind mount is ignored",
			in: `25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
26 24 0:23 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid shared:10 - cgroup cgroup rw,net_cls,net_prio
90 80 0:22 / /mnt/elsewhere rw - cgroup cgroup rw,cpu,cpuacct
`,
			want: Hierarchy{V1: map[string]string{
				"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
				"net_cls": "/sys/fs/cgroup/net_cls,net_prio", "net_prio": "/sys/fs/cgroup/net_cls,net_prio",
			}},
		},
		{
			name: "unified host",
			in:   "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
			want: Hierarchy{Unified: "/sys/fs/cgroup"},
		},
		{
			name: "escaped mount point",
			in:   `35 24 0:30 / /mnt/my\040cgroup rw - cgroup2 cgroup2 rw` + "\n",
			want: Hierarchy{Unified: "/mnt/my cgroup"},
		},
		{
			name: "no cgroup at all",
			in:   "22 1 0:21 / /proc rw - proc proc rw\n",
			err:  "no cgroup filesystem is mounted",
		},
		{
			name: "garbage",
			in:   "nonsense\n",
			err:  `mountinfo line "nonsense" has no separator`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMountinfo(strings.NewReader(tt.in))
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("hierarchy (-want +got):\n%s", diff)
			}
			if got.V2() != (len(tt.want.V1) == 0) {
				t.Errorf("V2() = %v", got.V2())
			}
		})
	}
}

func TestParseUint(t *testing.T) {
	for in, want := range map[string]uint64{
		"123\n": 123, "max\n": Unlimited, "9223372036854771712\n": Unlimited, "-1": Unlimited, "0": 0,
	} {
		got, err := parseUint(in)
		if err != nil || got != want {
			t.Errorf("parseUint(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := parseUint("x"); err == nil {
		t.Error("parseUint(x) succeeded")
	}
}

func TestParseBlkioV1(t *testing.T) {
	bytes := "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Discard 0\n8:0 Total 12288\n8:16 Read 1\nTotal 12289\n"
	ios := "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n"
	want := []DeviceIO{
		{Major: 8, Minor: 0, ReadBytes: 4096, WriteBytes: 8192, ReadIOs: 1, WriteIOs: 2},
		{Major: 8, Minor: 16, ReadBytes: 1},
	}
	if diff := cmp.Diff(want, parseBlkioV1(bytes, ios)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestParseIOStatV2(t *testing.T) {
	in := "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=5 wbytes=0 rios=1 wios=0\n"
	want := []DeviceIO{
		{Major: 8, Minor: 0, ReadBytes: 4096, WriteBytes: 8192, ReadIOs: 1, WriteIOs: 2},
		{Major: 253, Minor: 1, ReadBytes: 5, ReadIOs: 1},
	}
	if diff := cmp.Diff(want, parseIOStatV2(in)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestParseKV(t *testing.T) {
	got := parseKV("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nbad line here\n")
	want := map[string]uint64{"usage_usec": 1500, "user_usec": 1000, "system_usec": 500}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

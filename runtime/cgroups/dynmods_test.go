package cgroups

import (
	"slices"
	"strings"
	"testing"
)

func TestDynModsFlags(t *testing.T) {
	for _, c := range []struct {
		opts string
		want []string
	}{
		{"rw", []string{"favordynmods"}},
		{"rw,nsdelegate,memory_recursiveprot", []string{"nsdelegate", "memory_recursiveprot", "favordynmods"}},
		{"ro,nsdelegate", []string{"nsdelegate", "favordynmods"}},
		{"rw,nsdelegate,favordynmods", nil},
		{"", []string{"favordynmods"}},
	} {
		if got := dynModsFlags(c.opts); !slices.Equal(got, c.want) {
			t.Errorf("dynModsFlags(%q) = %q, want %q", c.opts, got, c.want)
		}
	}
}

func TestUnifiedMount(t *testing.T) {
	const info = `25 30 0:21 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
26 25 0:22 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,memory
27 25 0:23 / /sys/fs/cgroup/uni\040fied rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
`
	mnt, opts, ok, err := unifiedMount(strings.NewReader(info))
	if err != nil || !ok || mnt != "/sys/fs/cgroup/uni fied" || opts != "rw,nsdelegate" {
		t.Fatalf("unifiedMount = %q %q %v %v", mnt, opts, ok, err)
	}
	if _, _, ok, err := unifiedMount(strings.NewReader(info[:strings.Index(info, "27 ")])); ok || err != nil {
		t.Fatalf("v1 only: ok %v err %v, want no mount and no error", ok, err)
	}
	if _, _, _, err := unifiedMount(strings.NewReader("1 2 3\n")); err == nil {
		t.Fatal("a line without a separator: no error")
	}
}

package cgroups

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/berth-dev/berth/internal/mountinfo"
)

// Moving a process into a cgroup takes the kernel's cgroup threadgroup
// lock for writing. In its default mode that lock is cheap for readers
// (every fork and exit) and costs writers an RCU grace period: on this
// project's test machines about 3 ms for each container start, a sixth of
// all of it. The unified hierarchy's favordynmods option keeps the lock in
// its slow-reader mode instead, for every hierarchy (the lock is global),
// so that a move costs microseconds and forks and exits an atomic
// operation more. A host that starts containers for single requests wants
// that trade; FavorDynMods makes it.

// unifiedMount returns the mount point and super options of the first
// cgroup2 mount in a mountinfo, ok false if there is none.
func unifiedMount(r io.Reader) (mnt, superOpts string, ok bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		pre, post, found := strings.Cut(sc.Text(), " - ")
		if !found {
			return "", "", false, fmt.Errorf("mountinfo line %q has no separator", sc.Text())
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			return "", "", false, fmt.Errorf("mountinfo line %q is short", sc.Text())
		}
		if qf[0] == "cgroup2" {
			return mountinfo.Unescape(pf[4]), qf[2], true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", "", false, fmt.Errorf("read mountinfo: %w", err)
	}
	return "", "", false, nil
}

// dynModsFlags returns the flags that reconfigure a cgroup2 superblock
// having superOpts (as mountinfo shows them) to favor dynamic changes, or
// nil when it does already. A reconfiguration replaces all of the
// superblock's flags, so those it has are given again; rw and ro belong to
// the superblock's mount state, not to cgroup2, and are left out.
func dynModsFlags(superOpts string) []string {
	var flags []string
	for _, o := range strings.Split(superOpts, ",") {
		switch o {
		case "favordynmods":
			return nil
		case "", "rw", "ro":
			continue
		}
		flags = append(flags, o)
	}
	return append(slices.Clip(flags), "favordynmods")
}

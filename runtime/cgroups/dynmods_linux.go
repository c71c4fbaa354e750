package cgroups

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// FavorDynMods reconfigures the host's unified cgroup hierarchy with
// favordynmods (see dynmods.go), keeping its other options. It reports
// whether it changed anything: not on a host without a cgroup2 mount, nor
// on one that has it set already. Kernels before 6.0 refuse the option.
func FavorDynMods() (changed bool, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	mnt, opts, ok, err := unifiedMount(f)
	f.Close()
	if err != nil || !ok {
		return false, err
	}
	flags := dynModsFlags(opts)
	if flags == nil {
		return false, nil
	}
	if err := reconfigureUnified(mnt, flags); err != nil {
		return false, fmt.Errorf("favordynmods on %s: %w", mnt, err)
	}
	return true, nil
}

// reconfigureUnified gives the cgroup2 superblock mounted at mnt exactly
// the flags given.
func reconfigureUnified(mnt string, flags []string) error {
	// fspick reconfigures the superblock alone; a remount through mount(2)
	// would also reset this mount's own flags (nosuid, noexec, ...).
	fd, err := unix.Fspick(unix.AT_FDCWD, mnt, unix.FSPICK_CLOEXEC|unix.FSPICK_NO_AUTOMOUNT)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for _, fl := range flags {
		if err := unix.FsconfigSetFlag(fd, fl); err != nil {
			return fmt.Errorf("option %s: %w", fl, err)
		}
	}
	if err := unix.FsconfigReconfigure(fd); err != nil {
		return fmt.Errorf("reconfigure: %w", err)
	}
	return nil
}

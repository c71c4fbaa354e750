package statedir

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OnTmpfs reports whether dir is on a filesystem that forgets at boot.
func OnTmpfs(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC, nil
}

// EnsureTmpfs makes dir (mode 0711) and, when it is not on a tmpfs,
// mounts one there: on a host whose /run is a disk (some VM images), the
// state directories under Base would pay a disk's metadata writes at
// every container start. Nodes starting at once take turns (an flock on
// dir), so that no tmpfs hides another's state. It reports whether it
// mounted one.
func EnsureTmpfs(dir string) (bool, error) {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return false, fmt.Errorf("state dir: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return false, fmt.Errorf("state dir: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return false, fmt.Errorf("state dir: lock %s: %w", dir, err)
	}
	defer unix.Flock(int(f.Fd()), unix.LOCK_UN)
	if ok, err := OnTmpfs(dir); err != nil || ok {
		return false, err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0711"); err != nil {
		return false, fmt.Errorf("state dir: mount a tmpfs on %s: %w", dir, err)
	}
	return true, nil
}

package runtime

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// initPath returns the executable to re-run as a container's init. It is a
// copy of the running executable under <root>/.exe, bind-mounted read-only
// onto itself: while our code runs inside a container (before the init's
// execve, during exec) a container process could reach the binary through
// /proc/<pid>/exe and, were it the host's file, overwrite it (CVE-2019-5736).
// Through a read-only mount every such write fails with EROFS. The copy is
// made once per binary version, so a start costs one stat.
func (r *Native) initPath() (string, error) {
	if r.InitPath != "" {
		return r.InitPath, nil
	}
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		return "", fmt.Errorf("open own executable: %w", err)
	}
	defer self.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(self.Fd()), &st); err != nil {
		return "", fmt.Errorf("stat own executable: %w", err)
	}
	dir := filepath.Join(r.Root, ".exe")
	name := fmt.Sprintf("%x-%x-%x-%d.%d", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
	target := filepath.Join(dir, name)
	if isReadOnlyMount(target) {
		return target, nil
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return "", fmt.Errorf("executable copy dir: %w", err)
	}
	// Serialise concurrent first starts on a lock file.
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", fmt.Errorf("executable copy lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", fmt.Errorf("executable copy lock: %w", err)
	}
	if isReadOnlyMount(target) {
		return target, nil
	}
	tmp := target + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o555)
	if err != nil {
		return "", fmt.Errorf("copy own executable: %w", err)
	}
	if _, err := io.Copy(out, self); err != nil {
		out.Close()
		os.Remove(tmp)
		return "", fmt.Errorf("copy own executable: %w", err)
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("copy own executable: %w", err)
	}
	if err := os.Rename(tmp, target); err != nil {
		return "", fmt.Errorf("copy own executable: %w", err)
	}
	if err := unix.Mount(target, target, "", unix.MS_BIND, ""); err != nil {
		return "", fmt.Errorf("bind executable copy: %w", err)
	}
	if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		_ = unix.Unmount(target, unix.MNT_DETACH)
		return "", fmt.Errorf("make executable copy read-only: %w", err)
	}
	r.removeOldExecutables(dir, name)
	return target, nil
}

// staleCopyAge is how long a copy made by another build is kept: long
// enough that two versions in use at once during an upgrade do not remove
// each other's copy on every start.
const staleCopyAge = 10 * time.Minute

// removeOldExecutables drops the copies of earlier builds, so that a host
// which upgrades often does not gather one read-only mount per build. A
// container running from a removed copy is unaffected: its init has
// either exec'd the workload already or keeps its mapping.
func (r *Native) removeOldExecutables(dir, keep string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.Name() == keep || e.Name() == ".lock" {
			continue
		}
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < staleCopyAge {
			continue
		}
		p := filepath.Join(dir, e.Name())
		_ = unix.Unmount(p, unix.MNT_DETACH)
		if err := os.Remove(p); err != nil {
			r.Log.Warn("remove old executable copy", "path", p, "err", err)
		}
	}
}

// isReadOnlyMount reports whether path exists on a read-only mount.
func isReadOnlyMount(path string) bool {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return false
	}
	return sfs.Flags&unix.ST_RDONLY != 0
}

// ReleaseExecutables unmounts and removes the executable copies under the
// root, for tests and uninstall; running containers are unaffected.
func (r *Native) ReleaseExecutables() error {
	dir := filepath.Join(r.Root, ".exe")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		_ = unix.Unmount(p, unix.MNT_DETACH)
	}
	return os.RemoveAll(dir)
}

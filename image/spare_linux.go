package image

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/berth-dev/berth/internal/rewrite"
	"golang.org/x/sys/unix"
)

// A removed snapshot's directories are kept, emptied, for the next one:
// on a large ext4 making a directory costs a few hundred microseconds of
// CPU, renaming one a twentieth of that, and every container start made
// three (the agent's spare directories say more). Spares live in
// snapshots/.spare; a rename claims one, so processes sharing the store
// never hand out the same.

// maxSpareSnapshots is how many emptied snapshots are kept.
const maxSpareSnapshots = 8

func (s *Store) spareRoot() string { return filepath.Join(s.dir, "snapshots", ".spare") }

// claimSpare renames a spare snapshot to dir; false if there is none.
func (s *Store) claimSpare(dir string) bool {
	ents, _ := os.ReadDir(s.spareRoot())
	for _, e := range ents {
		if os.Rename(filepath.Join(s.spareRoot(), e.Name()), dir) == nil {
			return true
		}
	}
	return false
}

// spareOrRemove empties the snapshot at dir (unmounted) and keeps it as a
// spare named name, or removes it when there are enough spares or it
// cannot be emptied.
func (s *Store) spareOrRemove(dir, name string) error {
	ents, _ := os.ReadDir(s.spareRoot())
	if len(ents) < maxSpareSnapshots && emptySnapshot(dir) == nil {
		if err := os.MkdirAll(s.spareRoot(), 0o700); err == nil && os.Rename(dir, filepath.Join(s.spareRoot(), name)) == nil {
			return nil
		}
	}
	return os.RemoveAll(dir)
}

// emptySnapshot leaves dir as prepareSnapshot makes it: empty upper and
// work directories owned by root, mode 0755, with no extended attributes
// (overlayfs keeps its own there, a container may have set others on its
// root), and meta.json, emptied; anything else goes.
func emptySnapshot(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		switch {
		case e.Name() == "meta.json" && e.Type().IsRegular():
			errs = append(errs, rewrite.Empty(p))
		case (e.Name() == "upper" || e.Name() == "work") && e.IsDir():
			errs = append(errs, emptyDir(p), os.Chown(p, 0, 0), os.Chmod(p, 0o755), dropXattrs(p))
		default:
			errs = append(errs, os.RemoveAll(p))
		}
	}
	return errors.Join(errs...)
}

// emptyDir removes what is in dir.
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}

// dropXattrs removes every extended attribute of p.
func dropXattrs(p string) error {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ERANGE) {
		if n, err = unix.Llistxattr(p, nil); err == nil {
			buf = make([]byte, n)
			n, err = unix.Llistxattr(p, buf)
		}
	}
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		return err
	}
	var errs []error
	for _, name := range splitNul(buf[:n]) {
		if err := unix.Lremovexattr(p, name); err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func splitNul(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}

// Package rewrite writes small files that are written again and again
// (a container's records, its spec) without making ext4 write them out at
// once.
//
// ext4 takes a file that is truncated to nothing and then written for a
// file being replaced (its auto_da_alloc heuristic), and when the file is
// next closed it allocates its blocks and starts writing it back, as if
// fsync had been half called: on this machine ~130 µs of CPU and a disk
// write for each save of a container's metadata, three a run. A file
// written over from its start and then cut to its new length is never
// empty, so it is written back with the rest of the page cache.
package rewrite

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// File writes b to the file at path, creating it with perm if it is
// missing. An existing file is written over from its start and cut to
// len(b). It is not atomic: a reader may see the old bytes, the new ones
// or a mix, and a crash may leave the mix. Callers that need the whole of
// one version write a temporary file this way and rename it.
func File(path string, b []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, perm)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(b, 0)
	if err == nil && len(b) == 0 {
		err = f.Truncate(0)
	} else if err == nil {
		err = cut(f, int64(len(b)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// cut shortens f to n bytes if it is longer.
func cut(f *os.File, n int64) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if st.Size <= n {
		return nil
	}
	return f.Truncate(n)
}

// Empty cuts the file at path to nothing, and leaves it so that the next
// writer's close does not start its write-back: truncating it through a
// file that is then closed spends ext4's flag on a file with nothing to
// write.
func Empty(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// writeFile writes value to a cgroup file in one write(2), as cgroupfs
// wants. It bypasses os.File: these files are opened, written once and
// closed on the container start path, where the runtime poller's extra
// syscalls are pure cost.
func writeFile(path, value string) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	for err == unix.EINTR {
		fd, err = unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	for {
		_, err = unix.Write(fd, []byte(value))
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return &os.PathError{Op: "write", Path: path, Err: err}
	}
	return nil
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

// applyWrite writes w into dir, falling back to w.Alt and skipping an
// Optional write the kernel has no file for.
func applyWrite(dir string, w Write) error {
	p := dir + "/" + w.File
	err := writeFile(p, w.Value)
	if errors.Is(err, unix.ENOENT) && w.Alt != "" {
		p = dir + "/" + w.Alt
		if err = writeFile(p, w.AltValue); errors.Is(err, unix.ENOENT) && !w.Optional {
			return &FieldError{Field: w.Field, Msg: fmt.Sprintf("this kernel has neither %s nor %s in %s", w.File, w.Alt, dir)}
		}
	}
	if errors.Is(err, unix.ENOENT) {
		if w.Optional {
			return nil
		}
		return &FieldError{Field: w.Field, Msg: fmt.Sprintf("this kernel has no %s in %s", w.File, dir)}
	}
	if err != nil {
		return &FieldError{Field: w.Field, Msg: fmt.Sprintf("write %q", w.Value), Err: err}
	}
	return nil
}

// mkdirAll makes root+rel and any missing parents below root, returning
// the directories it made, parents first. It tries the leaf first: the
// parent (e.g. /berth) usually exists, making that a single mkdir.
func mkdirAll(root, rel string) ([]string, error) {
	leaf := root + rel
	err := unix.Mkdir(leaf, 0o755)
	switch {
	case err == nil:
		return []string{leaf}, nil
	case err == unix.EEXIST:
		return nil, nil
	case err != unix.ENOENT:
		return nil, &os.PathError{Op: "mkdir", Path: leaf, Err: err}
	}
	var made []string
	cur := root
	for _, el := range strings.Split(strings.TrimPrefix(rel, "/"), "/") {
		cur += "/" + el
		err := unix.Mkdir(cur, 0o755)
		if err == unix.ENOENT && len(made) == 0 {
			// A concurrent Destroy removed a parent we saw; once more.
			err = unix.Mkdir(cur, 0o755)
		}
		switch {
		case err == nil:
			made = append(made, cur)
		case err == unix.EEXIST:
		default:
			return made, &os.PathError{Op: "mkdir", Path: cur, Err: err}
		}
	}
	return made, nil
}

// removeTree removes a cgroup directory and its descendant cgroups,
// retrying EBUSY briefly: a process that has just exited can hold the
// cgroup until the kernel finishes releasing it. (v1 also answers EBUSY,
// not ENOTEMPTY, while child cgroups exist.)
func removeTree(dir string) error {
	deadline := time.Now().Add(2 * time.Second)
	delay := 100 * time.Microsecond
	for {
		err := unix.Rmdir(dir)
		switch {
		case err == nil || err == unix.ENOENT:
			return nil
		case err == unix.EBUSY || err == unix.ENOTEMPTY:
			found, rerr := removeChildren(dir)
			if rerr != nil {
				return rerr
			}
			if found {
				continue
			}
			if time.Now().Before(deadline) {
				time.Sleep(delay)
				delay = min(delay*2, 50*time.Millisecond)
				continue
			}
		}
		return &os.PathError{Op: "rmdir", Path: dir, Err: err}
	}
}

// removeChildren removes the cgroups below dir, reporting whether there were any.
func removeChildren(dir string) (bool, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("list %s: %w", dir, err)
	}
	found := false
	for _, e := range ents {
		if e.IsDir() {
			found = true
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil {
				return found, err
			}
		}
	}
	return found, nil
}

// removeMade removes directories a Create made, deepest first, keeping
// those that are not empty (another container's parent) or already gone.
func removeMade(made []string) {
	for i := len(made) - 1; i >= 0; i-- {
		_ = unix.Rmdir(made[i])
	}
}

// readPidsTree lists cgroup.procs of dir and of every cgroup below it.
func readPidsTree(dir string) ([]int, error) {
	s, err := readFile(dir + "/cgroup.procs")
	if err != nil {
		return nil, err
	}
	pids, err := parsePids(s)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		sub, err := readPidsTree(filepath.Join(dir, e.Name()))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		pids = append(pids, sub...)
	}
	return pids, nil
}

// movePids moves every process listed in from/cgroup.procs to
// to/cgroup.procs, repeating until none is left behind, so that children
// forked during the move follow.
func movePids(from, to string) error {
	for round := 0; round < 100; round++ {
		s, err := readFile(from + "/cgroup.procs")
		if err != nil {
			return err
		}
		want, err := parsePids(s)
		if err != nil {
			return err
		}
		s, err = readFile(to + "/cgroup.procs")
		if err != nil {
			return err
		}
		have, err := parsePids(s)
		if err != nil {
			return err
		}
		in := map[int]bool{}
		for _, p := range have {
			in[p] = true
		}
		moved := false
		for _, p := range want {
			if in[p] {
				continue
			}
			if err := writeFile(to+"/cgroup.procs", fmt.Sprint(p)); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("move pid %d: %w", p, err)
			}
			moved = true
		}
		if !moved {
			return nil
		}
	}
	return fmt.Errorf("move processes from %s to %s: processes keep appearing", from, to)
}

// waitFor polls cond with growing sleeps until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() (bool, error)) (bool, error) {
	deadline := time.Now().Add(timeout)
	delay := 100 * time.Microsecond
	for {
		ok, err := cond()
		if err != nil || ok {
			return ok, err
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		time.Sleep(delay)
		delay = min(delay*2, 10*time.Millisecond)
	}
}

// Detect finds the cgroup hierarchies of this host: a cgroup2 filesystem
// at /sys/fs/cgroup means v2 (one statfs); otherwise /proc/self/mountinfo
// says where the v1 controllers are.
func Detect() (Hierarchy, error) {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return Hierarchy{Unified: "/sys/fs/cgroup"}, nil
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return Hierarchy{}, fmt.Errorf("detect cgroup mounts: %w", err)
	}
	defer f.Close()
	h, err := ParseMountinfo(f)
	if err != nil {
		return Hierarchy{}, fmt.Errorf("detect cgroup mounts: %w", err)
	}
	return h, nil
}

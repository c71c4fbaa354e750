package agent

import (
	"bufio"
	"errors"
	"fmt"
	"github.com/berth-dev/berth/internal/mountinfo"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// usernsFile returns a user namespace with ids mapped as a container of
// range r sees them, for idmapped mounts. berth-init -U (exe) makes it and
// waits; its ids are mapped from here, the namespace opened, the process
// killed. Without berth-init, a child of the agent is made in a new user
// namespace and stopped by ptrace at its execve, which is slower: the
// kernel cannot vfork into a new user namespace, so the agent's page
// tables are copied.
func usernsFile(r IDRange, exe string) (*os.File, error) {
	if exe == "" {
		return usernsFileByPtrace(r)
	}
	cmd := exec.Command(exe, "-U")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("make user namespace: %w", err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	var b [1]byte
	if _, err := io.ReadFull(out, b[:]); err != nil {
		return nil, fmt.Errorf("make user namespace: %s -U: %w", exe, err)
	}
	pid := cmd.Process.Pid
	m := fmt.Sprintf("0 %d %d\n", r.Base, r.Size)
	for _, f := range []string{"uid_map", "gid_map"} {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/%s", pid, f), []byte(m), 0); err != nil {
			return nil, fmt.Errorf("map ids of user namespace: %w", err)
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", pid))
	if err != nil {
		return nil, fmt.Errorf("open user namespace: %w", err)
	}
	return f, nil
}

// usernsCache keeps the user namespaces made for idmapped mounts, by id
// range. Ranges are reused as containers come and go (IDPool gives the
// lowest free one), and making a namespace costs a process, most of a
// millisecond of every container's start.
type usernsCache struct {
	exe   string
	mu    sync.Mutex
	m     map[IDRange]*os.File
	order []IDRange // oldest first
}

// usernsCacheSize bounds the namespaces kept: each holds a file
// descriptor and a little kernel memory.
const usernsCacheSize = 256

func newUsernsCache(exe string) *usernsCache {
	return &usernsCache{exe: exe, m: map[IDRange]*os.File{}}
}

// get returns a user namespace mapped as a container of range r sees
// ids; the caller closes it.
func (u *usernsCache) get(r IDRange) (*os.File, error) {
	u.mu.Lock()
	f, ok := u.m[r]
	if ok {
		d, err := dupFile(f)
		u.mu.Unlock()
		return d, err
	}
	u.mu.Unlock()
	f, err := usernsFile(r, u.exe)
	if err != nil {
		return nil, err
	}
	d, err := dupFile(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.m[r]; ok {
		f.Close() // made twice at once: one is enough
		return d, nil
	}
	u.m[r] = f
	u.order = append(u.order, r)
	if len(u.order) > usernsCacheSize {
		old := u.order[0]
		u.order = u.order[1:]
		u.m[old].Close()
		delete(u.m, old)
	}
	return d, nil
}

// close lets go of every namespace kept.
func (u *usernsCache) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for r, f := range u.m {
		f.Close()
		delete(u.m, r)
	}
	u.order = nil
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

func usernsFileByPtrace(r IDRange) (*os.File, error) {
	m := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(r.Base), Size: int(r.Size)}}
	cmd := exec.Command("/proc/self/exe")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER,
		UidMappings: m,
		GidMappings: m,
		Ptrace:      true,
		Pdeathsig:   unix.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("make user namespace for %d+%d: %w", r.Base, r.Size, err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	if err != nil {
		return nil, fmt.Errorf("open user namespace: %w", err)
	}
	return f, nil
}

// idmapMount mounts a clone of src's mount tree at dst with its ids shifted
// through userns: what src stores as uid 0 the container sees as its root
// (host uid r.Base), without a copy or chown of any file.
func idmapMount(src, dst string, userns *os.File) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("clone mount %s: %w", src, err)
	}
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns.Fd())}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("idmap mount of %s: %w", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move idmapped mount to %s: %w", dst, err)
	}
	return nil
}

// isMountPoint reports whether p is the root of a mount; false if p is
// missing.
func isMountPoint(p string) bool {
	ok, _ := mountinfo.IsMountPoint(p)
	return ok
}

// mountsUnder lists the mount points at or below dir, deepest first, so
// they can be unmounted in that order.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	// Lines grow the buffer as they need: one of 64 KiB, made twice per
	// container removal, was an eighth of what the agent allocated for a
	// short run.
	sc.Buffer(make([]byte, 4<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := mountinfo.Unescape(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// unmountAll detaches every mount at or below dir, so that removing dir
// can never reach through a mount into a volume or an image layer.
func unmountAll(dir string) error {
	for range 8 {
		ms, err := mountsUnder(dir)
		if err != nil {
			return fmt.Errorf("list mounts under %s: %w", dir, err)
		}
		if len(ms) == 0 {
			return nil
		}
		for _, m := range ms {
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("unmount %s: %w", m, err)
			}
		}
	}
	return fmt.Errorf("mounts under %s keep coming back", dir)
}

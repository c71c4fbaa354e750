package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// setupRootfs builds the container's filesystem view in its new mount
// namespace and moves into it. Every mount target is resolved inside the
// rootfs with openat2(RESOLVE_IN_ROOT) and mounted through its fd, so no
// symlink in an image can point a mount outside the container.
func setupRootfs(cfg *initConfig, conn syncConn) error {
	spec := cfg.Spec
	prop := unix.MS_SLAVE | unix.MS_REC
	if spec.Linux.RootfsPropagation != "" {
		prop = propagationFlag(spec.Linux.RootfsPropagation)
	}
	// Detach our view from the host's first, so nothing we do propagates
	// back. The rootfs' own propagation is set after pivot.
	if err := unix.Mount("", "/", "", uintptr(unix.MS_SLAVE|unix.MS_REC), ""); err != nil {
		return fmt.Errorf("make / a slave mount: %w", err)
	}
	if prop&unix.MS_PRIVATE != 0 {
		if err := unix.Mount("", "/", "", uintptr(prop), ""); err != nil {
			return fmt.Errorf("linux.rootfsPropagation: %w", err)
		}
	}
	rootfs := cfg.Rootfs
	if err := unix.Mount(rootfs, rootfs, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fieldErr("root.path", "bind %s onto itself: %v", rootfs, err)
	}
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fieldErr("root.path", "open %s: %v", rootfs, err)
	}
	defer unix.Close(root)
	userns := hasNS(mustNS(spec), specs.UserNamespace)
	netns := mustNS(spec)[specs.NetworkNamespace] == ""
	devIsTmpfs := false
	for i, m := range spec.Mounts {
		if err := mountOne(root, m, userns, hasNS(mustNS(spec), specs.NetworkNamespace) && netns, cfg.NewCgroupNS); err != nil {
			return fieldErr(fmt.Sprintf("mounts[%d]", i), "%s on %s: %v", m.Type, m.Destination, err)
		}
		if path.Clean(m.Destination) == "/dev" && m.Type != "bind" && !hasOption(m.Options, "bind") && !hasOption(m.Options, "rbind") {
			devIsTmpfs = true
		}
	}
	if devIsTmpfs {
		if err := setupDev(root, spec, userns); err != nil {
			return err
		}
	}
	if spec.Hooks != nil && (len(spec.Hooks.Prestart) > 0 || len(spec.Hooks.CreateRuntime) > 0) {
		if err := conn.send(syncMsg{Type: msgPreHooks}, -1); err != nil {
			return err
		}
		m, _, err := conn.recv()
		if err != nil {
			return err
		}
		if m.Type != msgPreHooksDone {
			return fmt.Errorf("unexpected %q while waiting for createRuntime hooks", m.Type)
		}
	}
	if spec.Hooks != nil && len(spec.Hooks.CreateContainer) > 0 {
		st := State{OCIVersion: specs.Version, ID: cfg.ID, Status: Creating, Pid: os.Getpid(), Bundle: cfg.Bundle, Annotations: spec.Annotations}
		if err := runHooks(context.Background(), spec.Hooks.CreateContainer, st); err != nil {
			return fmt.Errorf("createContainer hook: %w", err)
		}
	}
	if cfg.NoPivot {
		err = moveRoot(rootfs)
	} else {
		err = pivotRoot(rootfs)
	}
	if err != nil {
		return err
	}
	if spec.Linux.RootfsPropagation != "" && prop&unix.MS_PRIVATE == 0 {
		if err := unix.Mount("", "/", "", uintptr(prop), ""); err != nil {
			return fieldErr("linux.rootfsPropagation", "%v", err)
		}
	}
	return nil
}

// finishRootfs freezes the root: read-only and masked paths, then the
// read-only root. It runs after sysctls are written, which go through the
// /proc/sys that it makes read-only.
func finishRootfs(spec *specs.Spec) error {
	for i, p := range spec.Linux.ReadonlyPaths {
		if err := readonlyPath(p); err != nil {
			return fieldErr(fmt.Sprintf("linux.readonlyPaths[%d]", i), "%s: %v", p, err)
		}
	}
	for i, p := range spec.Linux.MaskedPaths {
		if err := maskPath(p); err != nil {
			return fieldErr(fmt.Sprintf("linux.maskedPaths[%d]", i), "%s: %v", p, err)
		}
	}
	if spec.Root.Readonly {
		if err := remountReadonly("/"); err != nil {
			return fieldErr("root.readonly", "%v", err)
		}
	}
	return nil
}

func mustNS(spec *specs.Spec) map[specs.LinuxNamespaceType]string {
	ns, _ := validateNamespaces(spec.Linux.Namespaces)
	return ns
}

func propagationFlag(p string) int {
	switch p {
	case "shared":
		return unix.MS_SHARED
	case "rshared":
		return unix.MS_SHARED | unix.MS_REC
	case "slave":
		return unix.MS_SLAVE
	case "rslave":
		return unix.MS_SLAVE | unix.MS_REC
	case "private":
		return unix.MS_PRIVATE
	case "rprivate":
		return unix.MS_PRIVATE | unix.MS_REC
	case "unbindable":
		return unix.MS_UNBINDABLE
	case "runbindable":
		return unix.MS_UNBINDABLE | unix.MS_REC
	}
	return 0
}

// mountOptions splits fstab-style options into flags to set, propagation
// changes to apply afterwards, and the data string for the filesystem.
type mountOptions struct {
	flags       int
	clear       int
	propagation []int
	data        []string
	recursiveRO bool
}

func parseMountOptions(opts []string) mountOptions {
	var mo mountOptions
	for _, o := range opts {
		switch o {
		case "ro", "rdonly":
			mo.flags |= unix.MS_RDONLY
		case "rw":
			mo.clear |= unix.MS_RDONLY
		case "nosuid":
			mo.flags |= unix.MS_NOSUID
		case "suid":
			mo.clear |= unix.MS_NOSUID
		case "nodev":
			mo.flags |= unix.MS_NODEV
		case "dev":
			mo.clear |= unix.MS_NODEV
		case "noexec":
			mo.flags |= unix.MS_NOEXEC
		case "exec":
			mo.clear |= unix.MS_NOEXEC
		case "sync":
			mo.flags |= unix.MS_SYNCHRONOUS
		case "async":
			mo.clear |= unix.MS_SYNCHRONOUS
		case "dirsync":
			mo.flags |= unix.MS_DIRSYNC
		case "remount":
			mo.flags |= unix.MS_REMOUNT
		case "mand":
			mo.flags |= unix.MS_MANDLOCK
		case "nomand":
			mo.clear |= unix.MS_MANDLOCK
		case "atime":
			mo.clear |= unix.MS_NOATIME
		case "noatime":
			mo.flags |= unix.MS_NOATIME
		case "diratime":
			mo.clear |= unix.MS_NODIRATIME
		case "nodiratime":
			mo.flags |= unix.MS_NODIRATIME
		case "relatime":
			mo.flags |= unix.MS_RELATIME
		case "norelatime":
			mo.clear |= unix.MS_RELATIME
		case "strictatime":
			mo.flags |= unix.MS_STRICTATIME
		case "nostrictatime":
			mo.clear |= unix.MS_STRICTATIME
		case "bind":
			mo.flags |= unix.MS_BIND
		case "rbind":
			mo.flags |= unix.MS_BIND | unix.MS_REC
		case "rro":
			mo.recursiveRO = true
		case "shared", "rshared", "slave", "rslave", "private", "rprivate", "unbindable", "runbindable":
			mo.propagation = append(mo.propagation, propagationFlag(o))
		case "defaults", "":
		default:
			mo.data = append(mo.data, o)
		}
	}
	return mo
}

func mountOne(root int, m specs.Mount, userns, ownNetNS, cgroupNS bool) error {
	mo := parseMountOptions(m.Options)
	isBind := m.Type == "bind" || mo.flags&unix.MS_BIND != 0
	if isBind {
		mo.flags |= unix.MS_BIND
	}
	if m.Type == "cgroup" || m.Type == "cgroup2" {
		return mountCgroup(root, m, mo, cgroupNS)
	}
	wantFile := false
	if isBind {
		fi, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("bind source: %w", err)
		}
		wantFile = !fi.IsDir()
	}
	target, err := openTarget(root, m.Destination, wantFile)
	if err != nil {
		return err
	}
	defer unix.Close(target)
	proc := "/proc/self/fd/" + strconv.Itoa(target)
	data := strings.Join(mo.data, ",")
	if isBind {
		if err := unix.Mount(m.Source, proc, "", uintptr(mo.flags&(unix.MS_BIND|unix.MS_REC)), ""); err != nil {
			return err
		}
		// A bind mount ignores flags on the first call: remount to apply,
		// through a fresh fd (the old one still names what lies beneath).
		if rest := mo.flags &^ (unix.MS_BIND | unix.MS_REC | unix.MS_REMOUNT); rest != 0 || mo.recursiveRO {
			if err := onMounted(root, m.Destination, func(p string) error { return remountBind(p, rest) }); err != nil {
				return err
			}
		}
	} else {
		err := unix.Mount(m.Source, proc, m.Type, uintptr(mo.flags&^unix.MS_REMOUNT), data)
		if err != nil && m.Type == "sysfs" && errors.Is(err, unix.EPERM) && !ownNetNS {
			// sysfs can only be mounted by the owner of the network
			// namespace: share the host's, read-only.
			if err = unix.Mount("/sys", proc, "", unix.MS_BIND|unix.MS_REC, ""); err == nil {
				err = onMounted(root, m.Destination, func(p string) error {
					return remountBind(p, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC)
				})
			}
		}
		if err != nil && m.Type == "mqueue" && errors.Is(err, unix.EPERM) {
			if err = unix.Mount("/dev/mqueue", proc, "", unix.MS_BIND, ""); err == nil {
				err = onMounted(root, m.Destination, func(p string) error { return remountBind(p, mo.flags) })
			}
		}
		if err != nil {
			return err
		}
	}
	for _, p := range mo.propagation {
		err := onMounted(root, m.Destination, func(path string) error { return unix.Mount("", path, "", uintptr(p), "") })
		if err != nil {
			return fmt.Errorf("propagation: %w", err)
		}
	}
	return nil
}

// onMounted calls fn with a /proc/self/fd path naming the mount now on top
// of dest, resolved again inside the root.
func onMounted(root int, dest string, fn func(string) error) error {
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	fd, err := unix.Openat2(root, path.Clean("/"+dest), how)
	if err != nil {
		return fmt.Errorf("reopen %s: %w", dest, err)
	}
	defer unix.Close(fd)
	return fn("/proc/self/fd/" + strconv.Itoa(fd))
}

// remountBind applies flags to a bind mount, keeping the flags the kernel
// locks (nosuid, nodev, noexec, ...) when the mount came from a more
// privileged namespace.
func remountBind(target string, flags int) error {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err == nil {
		for _, f := range [][2]int{{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME}} {
			if int(st.Flags)&f[0] != 0 {
				flags |= f[1]
			}
		}
	}
	return unix.Mount("", target, "", uintptr(unix.MS_BIND|unix.MS_REMOUNT|flags), "")
}

// openTarget resolves dest inside the root (symlinks included, never
// leaving it), creating missing directories (and the final file, for a
// file bind mount), and returns an O_PATH fd of the target.
func openTarget(root int, dest string, file bool) (int, error) {
	return openTargetDepth(root, dest, file, 0)
}

func readlinkAt(dirfd int, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func openTargetDepth(root int, dest string, file bool, depth int) (int, error) {
	clean := path.Clean("/" + dest)
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	if fd, err := unix.Openat2(root, clean, how); err == nil {
		return fd, nil
	}
	// Walk from the root creating what is missing; each step resolves in
	// the root, so a symlink met on the way stays inside.
	parts := strings.Split(strings.TrimPrefix(clean, "/"), "/")
	cur := "/"
	for i, p := range parts {
		next := path.Join(cur, p)
		fd, err := unix.Openat2(root, next, how)
		if err == nil {
			unix.Close(fd)
			cur = next
			continue
		}
		if !errors.Is(err, unix.ENOENT) {
			return -1, fmt.Errorf("resolve %s: %w", next, err)
		}
		dirHow := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
		dfd, err := unix.Openat2(root, cur, dirHow)
		if err != nil {
			return -1, fmt.Errorf("resolve %s: %w", cur, err)
		}
		last := i == len(parts)-1
		if target, lerr := readlinkAt(dfd, p); lerr == nil {
			// A dangling symlink: create what it points at, inside the
			// root, and go on from there.
			unix.Close(dfd)
			if depth >= 40 {
				return -1, fmt.Errorf("resolve %s: %w", next, unix.ELOOP)
			}
			if !path.IsAbs(target) {
				target = path.Join(cur, target)
			}
			rest := path.Join(append([]string{target}, parts[i+1:]...)...)
			return openTargetDepth(root, rest, file, depth+1)
		}
		if last && file {
			var f int
			f, err = unix.Openat(dfd, p, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
			if err == nil {
				unix.Close(f)
			}
		} else {
			err = unix.Mkdirat(dfd, p, 0o755)
		}
		unix.Close(dfd)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("create %s: %w", next, err)
		}
		cur = next
	}
	fd, err := unix.Openat2(root, clean, how)
	if err != nil {
		return -1, fmt.Errorf("resolve %s: %w", clean, err)
	}
	return fd, nil
}

// mountCgroup gives the container a cgroup filesystem. On a v2 host it is
// one cgroup2 mount. On v1 it is a tmpfs holding one mount per hierarchy
// the host has (plus the unified one on hybrid hosts): with a cgroup
// namespace a fresh cgroup mount shows the container's own cgroup as root;
// without one the container's cgroup is bind-mounted from the host.
func mountCgroup(root int, m specs.Mount, mo mountOptions, cgroupNS bool) error {
	target, err := openTarget(root, m.Destination, false)
	if err != nil {
		return err
	}
	defer unix.Close(target)
	proc := "/proc/self/fd/" + strconv.Itoa(target)
	flags := uintptr(mo.flags &^ (unix.MS_BIND | unix.MS_REC | unix.MS_REMOUNT))
	hier, err := hostCgroupMounts()
	if err != nil {
		return err
	}
	if len(hier) == 1 && hier[0].fstype == "cgroup2" {
		return unix.Mount("cgroup2", proc, "cgroup2", flags, "")
	}
	if err := unix.Mount("tmpfs", proc, "tmpfs", uintptr(unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC), "mode=755"); err != nil {
		return fmt.Errorf("tmpfs: %w", err)
	}
	for _, h := range hier {
		name := filepath.Base(h.mountpoint)
		sub, err := openTarget(root, path.Join(m.Destination, name), false)
		if err != nil {
			return err
		}
		subProc := "/proc/self/fd/" + strconv.Itoa(sub)
		if cgroupNS {
			err = unix.Mount("cgroup", subProc, h.fstype, flags, h.options)
		} else {
			src := path.Join(h.mountpoint, h.ownPath)
			if err = unix.Mount(src, subProc, "", unix.MS_BIND|unix.MS_REC, ""); err == nil {
				err = onMounted(root, path.Join(m.Destination, name), func(p string) error { return remountBind(p, int(flags)) })
			}
		}
		unix.Close(sub)
		if err != nil {
			return fmt.Errorf("cgroup hierarchy %s: %w", name, err)
		}
	}
	if flags&unix.MS_RDONLY != 0 {
		return onMounted(root, m.Destination, func(p string) error { return remountBind(p, int(flags)) })
	}
	return nil
}

type cgroupMount struct {
	mountpoint string
	fstype     string
	options    string // controllers, for a v1 mount
	ownPath    string // this process's cgroup in that hierarchy
}

// hostCgroupMounts lists the cgroup hierarchies mounted under
// /sys/fs/cgroup, with this process's place in each.
func hostCgroupMounts() ([]cgroupMount, error) {
	own, err := ownCgroups()
	if err != nil {
		return nil, err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []cgroupMount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, v := range fields {
			if v == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || len(fields) < sep+4 {
			continue
		}
		fstype, mp := fields[sep+1], fields[4]
		if (fstype != "cgroup" && fstype != "cgroup2") || !strings.HasPrefix(mp, "/sys/fs/cgroup") {
			continue
		}
		cm := cgroupMount{mountpoint: mp, fstype: fstype}
		if fstype == "cgroup" {
			var ctrls []string
			for _, o := range strings.Split(fields[sep+3], ",") {
				if o != "rw" && o != "ro" && o != "relatime" && o != "nosuid" && o != "nodev" && o != "noexec" {
					ctrls = append(ctrls, o)
				}
			}
			cm.options = strings.Join(ctrls, ",")
			for _, c := range ctrls {
				if p, ok := own[c]; ok {
					cm.ownPath = p
				}
			}
		} else {
			cm.ownPath = own[""]
		}
		out = append(out, cm)
	}
	return out, sc.Err()
}

// ownCgroups maps each controller (and "" for v2) to this process's cgroup.
func ownCgroups() (map[string]string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			out[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, nil
}

// defaultDevices are the devices every container gets, as Docker and runc
// provide them.
func defaultDevices() []specs.LinuxDevice {
	mode := func(m os.FileMode) *os.FileMode { return &m }
	zero := uint32(0)
	return []specs.LinuxDevice{
		{Path: "/dev/null", Type: "c", Major: 1, Minor: 3, FileMode: mode(0o666), UID: &zero, GID: &zero},
		{Path: "/dev/zero", Type: "c", Major: 1, Minor: 5, FileMode: mode(0o666), UID: &zero, GID: &zero},
		{Path: "/dev/full", Type: "c", Major: 1, Minor: 7, FileMode: mode(0o666), UID: &zero, GID: &zero},
		{Path: "/dev/random", Type: "c", Major: 1, Minor: 8, FileMode: mode(0o666), UID: &zero, GID: &zero},
		{Path: "/dev/urandom", Type: "c", Major: 1, Minor: 9, FileMode: mode(0o666), UID: &zero, GID: &zero},
		{Path: "/dev/tty", Type: "c", Major: 5, Minor: 0, FileMode: mode(0o666), UID: &zero, GID: &zero},
	}
}

// setupDev fills a fresh /dev: the default and configured devices (made
// with mknod, or bind-mounted from the host inside a user namespace where
// mknod is not allowed) and the usual symlinks.
func setupDev(root int, spec *specs.Spec, userns bool) error {
	old := unix.Umask(0)
	defer unix.Umask(old)
	devs := defaultDevices()
	seen := map[string]bool{}
	for _, d := range spec.Linux.Devices {
		seen[path.Clean(d.Path)] = true
	}
	all := make([]specs.LinuxDevice, 0, len(devs)+len(spec.Linux.Devices))
	for _, d := range devs {
		if !seen[d.Path] {
			all = append(all, d)
		}
	}
	all = append(all, spec.Linux.Devices...)
	for i, d := range all {
		if err := makeDevice(root, d, userns); err != nil {
			return fieldErr(fmt.Sprintf("linux.devices[%d]", i), "%s: %v", d.Path, err)
		}
	}
	links := [][2]string{
		{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"},
		{"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"},
	}
	if _, err := os.Stat("/proc/kcore"); err == nil {
		links = append(links, [2]string{"/proc/kcore", "/dev/core"})
	}
	if hasDevpts(spec) {
		links = append(links, [2]string{"pts/ptmx", "/dev/ptmx"})
	}
	dev, err := openTarget(root, "/dev", false)
	if err != nil {
		return err
	}
	defer unix.Close(dev)
	devDir, err := unix.Openat(dev, ".", unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		// O_PATH fds cannot be used as dirfd for symlinkat on old kernels;
		// reopen through /proc.
		devDir, err = unix.Open("/proc/self/fd/"+strconv.Itoa(dev), unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev: %w", err)
		}
	}
	defer unix.Close(devDir)
	for _, l := range links {
		if err := unix.Symlinkat(l[0], devDir, path.Base(l[1])); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("symlink %s: %w", l[1], err)
		}
	}
	return nil
}

func hasDevpts(spec *specs.Spec) bool {
	for _, m := range spec.Mounts {
		if m.Type == "devpts" && path.Clean(m.Destination) == "/dev/pts" {
			return true
		}
	}
	return false
}

func makeDevice(root int, d specs.LinuxDevice, userns bool) error {
	dir, err := openTarget(root, path.Dir(d.Path), false)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	dirfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(dir), unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	name := path.Base(d.Path)
	mode := uint32(0o666)
	if d.FileMode != nil {
		mode = uint32(*d.FileMode & 0o7777)
	}
	var typ uint32
	switch d.Type {
	case "c", "u":
		typ = unix.S_IFCHR
	case "b":
		typ = unix.S_IFBLK
	case "p":
		typ = unix.S_IFIFO
	}
	if !userns {
		_ = unix.Unlinkat(dirfd, name, 0)
		if err := unix.Mknodat(dirfd, name, typ|mode, int(unix.Mkdev(uint32(d.Major), uint32(d.Minor)))); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
		uid, gid := 0, 0
		if d.UID != nil {
			uid = int(*d.UID)
		}
		if d.GID != nil {
			gid = int(*d.GID)
		}
		if err := unix.Fchownat(dirfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
		return nil
	}
	// In a user namespace mknod is refused: bind the host's node instead.
	f, err := unix.Openat(dirfd, name, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create bind target: %w", err)
	}
	if err == nil {
		unix.Close(f)
	}
	tgt, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(tgt)
	return unix.Mount(d.Path, "/proc/self/fd/"+strconv.Itoa(tgt), "", unix.MS_BIND, "")
}

// pivotRoot makes rootfs the root and lazily detaches the old one, without
// needing a directory for the old root inside the container.
func pivotRoot(rootfs string) error {
	oldroot, err := unix.Open("/", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(oldroot)
	newroot, err := unix.Open(rootfs, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(newroot)
	if err := unix.Fchdir(newroot); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root %s: %w (use --no-pivot for a rootfs on ramfs)", rootfs, err)
	}
	if err := unix.Fchdir(oldroot); err != nil {
		return err
	}
	// Keep the unmount from propagating to the host.
	if err := unix.Mount("", ".", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make old root a slave: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach old root: %w", err)
	}
	return unix.Chdir("/")
}

// moveRoot is the no-pivot path: move the rootfs over / and chroot into it.
func moveRoot(rootfs string) error {
	if err := unix.Chdir(rootfs); err != nil {
		return err
	}
	if err := unix.Mount(rootfs, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move rootfs over /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

func readonlyPath(p string) error {
	if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	return remountBind(p, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC)
}

// maskPath hides p: an empty read-only tmpfs over a directory, /dev/null
// over anything else.
func maskPath(p string) error {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY, "size=0")
	}
	return unix.Mount("/dev/null", p, "", unix.MS_BIND, "")
}

func remountReadonly(p string) error {
	return remountBind(p, unix.MS_RDONLY)
}

// setupConsole opens a pty in the container's devpts, hands the master to
// the parent and makes the slave the process's controlling terminal.
func setupConsole(conn syncConn, size *specs.Box) error {
	master, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/ptmx: %w", err)
	}
	defer unix.Close(master)
	if err := unix.IoctlSetPointerInt(master, unix.TIOCSPTLCK, 0); err != nil {
		return fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetUint32(master, unix.TIOCGPTN)
	if err != nil {
		return fmt.Errorf("pty number: %w", err)
	}
	slave, err := unix.Open("/dev/pts/"+strconv.Itoa(int(n)), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open pty slave: %w", err)
	}
	if size != nil {
		_ = unix.IoctlSetWinsize(master, unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(size.Height), Col: uint16(size.Width)})
	}
	if err := conn.send(syncMsg{Type: msgConsole}, master); err != nil {
		return err
	}
	for fd := 0; fd <= 2; fd++ {
		if err := unix.Dup3(slave, fd, 0); err != nil {
			return fmt.Errorf("pty as stdio: %w", err)
		}
	}
	unix.Close(slave)
	if _, err := unix.Setsid(); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("setsid: %w", err)
	}
	if err := unix.IoctlSetInt(0, unix.TIOCSCTTY, 0); err != nil {
		return fmt.Errorf("set controlling terminal: %w", err)
	}
	return nil
}

package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// IsInit reports whether this process was started by the runtime as a
// container init or exec helper; the executable's main must then call
// InitMain before doing anything else.
func IsInit() bool { return os.Getenv(envInit) != "" }

// InitMain runs inside the new container (or, for exec, inside a running
// one): it finishes the container's set-up and execs the user's process. It
// never returns. All of it runs on one locked OS thread, because namespaces,
// credentials, capabilities and the seccomp filter set here are per-thread
// and the exec must happen from that same thread.
func InitMain() {
	goruntime.LockOSThread()
	conn := syncConn{fd: childSyncFD}
	err := initProcess(os.Getenv(envInit), conn)
	msg := err.Error()
	if sendErr := conn.send(syncMsg{Type: msgError, Error: msg}, -1); sendErr != nil {
		// The parent is gone (after start): stderr is all that is left.
		fmt.Fprintln(os.Stderr, "berth-runtime init:", msg)
	}
	os.Exit(127)
}

func initProcess(role string, conn syncConn) error {
	os.Unsetenv(envInit)
	defer os.Unsetenv(envPreserveFrom)
	cfgFile := os.NewFile(childConfigFD, "config")
	b, err := io.ReadAll(cfgFile)
	cfgFile.Close()
	if err != nil {
		return fmt.Errorf("read init config: %w", err)
	}
	var cfg initConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("decode init config: %w", err)
	}
	if len(cfg.ExecJSON) > 0 {
		cfg.Exec = new(specs.Process)
		if err := json.Unmarshal(cfg.ExecJSON, cfg.Exec); err != nil {
			return fmt.Errorf("decode init config: exec: %w", err)
		}
	}
	if len(cfg.SpecJSON) > 0 {
		cfg.Spec = new(specs.Spec)
		if err := json.Unmarshal(cfg.SpecJSON, cfg.Spec); err != nil {
			return fmt.Errorf("decode init config: spec: %w", err)
		}
	}
	m, _, err := conn.recv()
	if err != nil {
		return fmt.Errorf("wait for cgroup placement: %w", err)
	}
	if m.Type != msgCgroupReady {
		return fmt.Errorf("unexpected %q before cgroup placement", m.Type)
	}
	if cfg.NewCgroupNS {
		if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
			return fmt.Errorf("unshare cgroup namespace: %w", err)
		}
	}
	if role == "exec" {
		return execJoin(&cfg, conn)
	}
	return initContainer(&cfg, conn)
}

func initContainer(cfg *initConfig, conn syncConn) error {
	spec := cfg.Spec
	ns, _ := validateNamespaces(spec.Linux.Namespaces)
	if p, ok := ns[specs.NetworkNamespace]; ok && p == "" {
		// A new network namespace gets its loopback up, as runc gives it.
		if err := loopbackUp(); err != nil {
			return err
		}
	}
	if p, ok := ns[specs.UTSNamespace]; ok && p == "" {
		if spec.Hostname != "" {
			if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
				return fmt.Errorf("hostname: %w", err)
			}
		}
		if spec.Domainname != "" {
			if err := unix.Setdomainname([]byte(spec.Domainname)); err != nil {
				return fmt.Errorf("domainname: %w", err)
			}
		}
	}
	if _, err := unix.Setsid(); err != nil {
		return fmt.Errorf("setsid: %w", err)
	}
	if err := setupRootfs(cfg, conn); err != nil {
		return err
	}
	for k, v := range spec.Linux.Sysctl {
		p := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
		if err := os.WriteFile(p, []byte(v), 0); err != nil {
			return fieldErr("linux.sysctl."+k, "%v", err)
		}
	}
	if spec.Process.OOMScoreAdj != nil {
		if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(*spec.Process.OOMScoreAdj)), 0); err != nil {
			return fieldErr("process.oomScoreAdj", "%v", err)
		}
	}
	if err := finishRootfs(spec); err != nil {
		return err
	}
	// Fail at create, not silently after start, when there is nothing to
	// run (unless a startContainer hook may still provide it).
	if spec.Hooks == nil || len(spec.Hooks.StartContainer) == 0 {
		if _, err := lookPath(spec.Process.Args[0], spec.Process.Env); err != nil {
			return err
		}
	}
	if cfg.Console {
		if err := setupConsole(conn, spec.Process.ConsoleSize); err != nil {
			return err
		}
	}
	seccompProg, err := sendReady(cfg, conn)
	if err != nil {
		return err
	}
	// Block until `start` opens the fifo for reading. The fd is an O_PATH
	// handle opened by the parent; reopening it through /proc works after
	// pivot_root, where the fifo's path is out of reach.
	fifo, err := unix.Open("/proc/self/fd/"+strconv.Itoa(childFifoFD), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open exec fifo: %w", err)
	}
	if _, err := unix.Write(fifo, []byte{0}); err != nil {
		return fmt.Errorf("signal start: %w", err)
	}
	unix.Close(fifo)
	unix.Close(childFifoFD)
	if spec.Hooks != nil && len(spec.Hooks.StartContainer) > 0 {
		st := State{OCIVersion: specs.Version, ID: cfg.ID, Status: Created, Pid: os.Getpid(), Bundle: cfg.Bundle, Annotations: spec.Annotations}
		if err := runHooks(context.Background(), spec.Hooks.StartContainer, st); err != nil {
			return fmt.Errorf("startContainer hook: %w", err)
		}
	}
	if spec.Linux.Personality != nil {
		persona := 0x0000
		if spec.Linux.Personality.Domain == specs.PerLinux32 {
			persona = 0x0008
		}
		if _, _, e := unix.RawSyscall(unix.SYS_PERSONALITY, uintptr(persona), 0, 0); e != 0 {
			return fieldErr("linux.personality", "%v", e)
		}
	}
	// The parent has gone: close the sync socket so it cannot leak.
	unix.Close(childSyncFD)
	return finalize(spec.Process, seccompProg, cfg.PreserveFDs, nil)
}

// sendReady tells the parent set-up is done, first handing it the seccomp
// listener if the profile has one. It returns the filter still to load
// (nil if it is loaded already).
func sendReady(cfg *initConfig, conn syncConn) ([]byte, error) {
	prog := cfg.Seccomp
	if loaded, err := loadSeccompWithListener(prog, conn); err != nil {
		return nil, err
	} else if loaded {
		prog = nil
	}
	return prog, conn.send(syncMsg{Type: msgReady}, -1)
}

// execJoin runs a new process in a running container. The namespaces were
// joined before Go started (user, mount: in the C constructor) or by the
// parent's forking thread (the rest); the parent has put us in the cgroup.
func execJoin(cfg *initConfig, conn syncConn) error {
	p := cfg.Exec
	if p == nil {
		return errors.New("exec: no process given")
	}
	if p.Terminal {
		if err := setupConsole(conn, p.ConsoleSize); err != nil {
			return err
		}
	}
	if _, err := unix.Setsid(); err != nil && !p.Terminal {
		return fmt.Errorf("setsid: %w", err)
	}
	seccompProg, err := sendReady(cfg, conn)
	if err != nil {
		return err
	}
	return finalize(p, seccompProg, cfg.PreserveFDs, &conn)
}

// finalize turns this thread into the user's process: fds, limits, user,
// capabilities, no_new_privs, seccomp, cwd, then execve. conn, if set,
// stays open (close-on-exec) to report a failure to the waiting parent.
func finalize(p *specs.Process, seccompProg []byte, preserve int, conn *syncConn) error {
	argv0, err := lookPath(p.Args[0], p.Env)
	if err != nil {
		return err
	}
	for _, rl := range p.Rlimits {
		res, _ := rlimitResource(rl.Type)
		lim := unix.Rlimit{Cur: rl.Soft, Max: rl.Hard}
		if err := unix.Setrlimit(res, &lim); err != nil {
			return fieldErr("process.rlimits", "%s: %v", rl.Type, err)
		}
	}
	if p.User.Umask != nil {
		unix.Umask(int(*p.User.Umask))
	} else {
		unix.Umask(0o022)
	}
	if err := arrangeFDs(preserve, conn); err != nil {
		return err
	}
	// chdir only after every inherited fd is gone, so a cwd such as
	// /proc/self/fd/N can never land on a host directory (CVE-2024-21626),
	// and check where it landed.
	if err := unix.Chdir(p.Cwd); err != nil {
		return fieldErr("process.cwd", "%s: %v", p.Cwd, err)
	}
	if wd, err := unix.Getwd(); err != nil || !strings.HasPrefix(wd, "/") {
		return fieldErr("process.cwd", "%s resolves outside the container", p.Cwd)
	}
	var prog *seccompLoader
	if len(seccompProg) > 0 {
		prog, err = newSeccompLoader(seccompProg)
		if err != nil {
			return err
		}
	}
	// Without no_new_privs a filter can only be loaded with CAP_SYS_ADMIN,
	// so it goes in before the capabilities are dropped.
	if prog != nil && !p.NoNewPrivileges {
		if err := prog.load(); err != nil {
			return err
		}
	}
	if err := setCredentials(p); err != nil {
		return err
	}
	if p.NoNewPrivileges {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
		if prog != nil {
			if err := prog.load(); err != nil {
				return err
			}
		}
	}
	if err := unix.Exec(argv0, p.Args, p.Env); err != nil {
		return fmt.Errorf("exec %s: %w", p.Args[0], err)
	}
	return nil
}

// arrangeFDs moves preserved fds to 3.. and lets every other fd above
// stderr close at execve (conn too, which is how the parent learns that
// execve succeeded).
func arrangeFDs(preserve int, conn *syncConn) error {
	if conn != nil {
		nfd, err := unix.FcntlInt(uintptr(conn.fd), unix.F_DUPFD_CLOEXEC, 1<<16-64)
		if err != nil {
			// Fall back to any free number, still close-on-exec.
			nfd, err = unix.FcntlInt(uintptr(conn.fd), unix.F_DUPFD_CLOEXEC, 3)
			if err != nil {
				return fmt.Errorf("keep sync fd: %w", err)
			}
		}
		unix.Close(conn.fd)
		conn.fd = nfd
	}
	if preserve > 0 {
		first, err := firstPreservedFD()
		if err != nil {
			return err
		}
		for i := 0; i < preserve; i++ {
			if err := unix.Dup3(first+i, 3+i, 0); err != nil && first+i != 3+i {
				return fmt.Errorf("preserve fd %d: %w", 3+i, err)
			}
		}
	}
	// Everything else is marked close-on-exec rather than closed: the Go
	// runtime's own fds (epoll, its wake-up pipe) are among them and other
	// threads may still use them until execve, where the kernel closes the
	// lot at once. A cwd that points at one of them meanwhile is caught by
	// the getwd check in finalize.
	cloexecFrom(3 + preserve)
	return nil
}

// cloexecFrom sets close-on-exec on every fd from lo up.
func cloexecFrom(lo int) {
	if err := unix.CloseRange(uint(lo), ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return
	}
	// Kernels before 5.11 lack CLOSE_RANGE_CLOEXEC.
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= lo {
			_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
		}
	}
}

// firstPreservedFD is where the parent's spawn put the preserved fds,
// after the runtime's own.
func firstPreservedFD() (int, error) {
	first, err := strconv.Atoi(os.Getenv(envPreserveFrom))
	if err != nil {
		return 0, errors.New("preserved fds: the runtime did not say where they start")
	}
	return first, nil
}

// setCredentials drops the bounding set, switches user and group, and sets
// the remaining capability sets. Raw syscalls on purpose: Go's
// syscall.Setuid changes every thread, and only this one will exec.
func setCredentials(p *specs.Process) error {
	caps := p.Capabilities
	if caps == nil {
		caps = &specs.LinuxCapabilities{}
	}
	bounding := capSet(caps.Bounding)
	last := lastCap()
	for c := 0; c <= last; c++ {
		if !bounding[c] {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("drop capability %d from bounding set: %w", c, err)
			}
		}
	}
	if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("keepcaps: %w", err)
	}
	gids := make([]int, 0, len(p.User.AdditionalGids))
	for _, g := range p.User.AdditionalGids {
		gids = append(gids, int(g))
	}
	// EPERM with no groups: a user namespace with setgroups denied.
	if err := unix.Setgroups(gids); err != nil && !(errors.Is(err, unix.EPERM) && len(gids) == 0) {
		return fieldErr("process.user.additionalGids", "setgroups: %v", err)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(p.User.GID), uintptr(p.User.GID), uintptr(p.User.GID)); e != 0 {
		return fieldErr("process.user.gid", "setresgid %d: %v", p.User.GID, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(p.User.UID), uintptr(p.User.UID), uintptr(p.User.UID)); e != 0 {
		return fieldErr("process.user.uid", "setresuid %d: %v", p.User.UID, e)
	}
	if err := capsetThread(capSet(caps.Effective), capSet(caps.Permitted), capSet(caps.Inheritable)); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	for _, n := range caps.Ambient {
		c, _ := capabilityByName(n)
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c), 0, 0); err != nil {
			return fieldErr("process.capabilities.ambient", "raise %s: %v (it must also be permitted and inheritable)", n, err)
		}
	}
	return nil
}

func capSet(names []string) map[int]bool {
	m := make(map[int]bool, len(names))
	for _, n := range names {
		if c, ok := capabilityByName(n); ok {
			m[int(c)] = true
		}
	}
	return m
}

func lastCap() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 40
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 40
	}
	return n
}

func capsetThread(eff, perm, inh map[int]bool) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	for c := range eff {
		data[c/32].Effective |= 1 << (uint(c) % 32)
	}
	for c := range perm {
		data[c/32].Permitted |= 1 << (uint(c) % 32)
	}
	for c := range inh {
		data[c/32].Inheritable |= 1 << (uint(c) % 32)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// lookPath resolves the program like execvp would, against the process's
// own PATH, inside the container's root.
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		if err := executable(file); err != nil {
			return "", fieldErr("process.args[0]", "%s: %v", file, err)
		}
		return file, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			path = e[5:]
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fieldErr("process.args[0]", "%q not found in PATH %s", file, path)
}

func executable(p string) error {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return errors.New("is a directory")
	}
	if st.Mode&0o111 == 0 {
		return errors.New("permission denied (not executable)")
	}
	return nil
}

// loopbackUp sets IFF_UP on lo in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/berth-dev/berth/runtime/cgroups"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

const (
	execFifo = "exec.fifo"
	// Environment of the re-executed child; the values are fd numbers or
	// "kind:fd" lists, read before anything else runs (see nsenter).
	envInit  = "_BERTH_INIT"  // "init" or "exec"
	envSetns = "_BERTH_SETNS" // "user:5,mnt:6": joined by the C constructor
	// envPreserveFrom is the first fd of the caller's preserved fds.
	envPreserveFrom = "_BERTH_PRESERVE_FROM"
)

// Child fd layout: 0-2 stdio, 3 sync socket, 4 config pipe, 5 exec fifo
// (O_PATH, init only), then namespace fds for the constructor, then
// preserved fds are moved into place by the child itself.
const (
	childSyncFD   = 3
	childConfigFD = 4
	childFifoFD   = 5
)

// Native is Berth's own OCI runtime.
type Native struct {
	// Root holds one directory per container (runc's --root).
	Root string
	// InitPath is the executable re-run as the container's init and exec
	// helper; empty means a read-only copy of the running executable, which
	// must be a binary that calls InitMain (berth-runtime does).
	InitPath string
	// PlanInitPath, if set, is a small static executable that runs the
	// fast init's plan when started with -P (berth-init carries
	// runtime/fastinit): it starts in a fraction of the time the runtime's
	// own executable takes. Inits that need Go still run InitPath.
	PlanInitPath string
	// GoInit makes every container's init the Go one. By default a spec
	// that needs nothing else gets the C init of package fastinit, which
	// runs a plan computed here (see fastInitPlan) without starting Go.
	GoInit bool
	Log    *slog.Logger

	// exits holds the exit codes of inits this process reaped (container
	// ID → int), for ExitCode.
	exits sync.Map
	// hier is the host's cgroup hierarchy, detected once: the mount table
	// it is read from grows with every container.
	hierOnce sync.Once
	hier     cgroups.Hierarchy
	hierErr  error
	// progs keeps the compiled seccomp programs this process loaded, by
	// their cache file (see compileSeccomp): read from disk and checked at
	// every start, the default profile's was 30 KB of garbage a container.
	progsMu sync.Mutex
	progs   map[string][]byte
}

// hierarchy returns the host's cgroup hierarchy.
func (r *Native) hierarchy() (cgroups.Hierarchy, error) {
	r.hierOnce.Do(func() { r.hier, r.hierErr = cgroups.Detect() })
	return r.hier, r.hierErr
}

// NewNative returns a runtime keeping its state under root.
func NewNative(root string, log *slog.Logger) (*Native, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, fmt.Errorf("runtime root %s: %w", root, err)
	}
	// The init, re-executed in a user namespace, must be able to reach the
	// executable copy below root.
	if err := os.Chmod(root, 0o711); err != nil {
		return nil, fmt.Errorf("runtime root %s: %w", root, err)
	}
	return &Native{Root: root, Log: log}, nil
}

// initConfig is everything the container init needs, sent over a pipe so an
// init in a user namespace never needs to read the runtime's state dir.
type initConfig struct {
	ID     string `json:"id"`
	Bundle string `json:"bundle"`
	Rootfs string `json:"rootfs"`
	// SpecJSON is config.json as the bundle holds it: passing the bytes on
	// saves encoding the large spec type again (its reflection alone is a
	// measurable share of a container start). Spec is decoded from it.
	SpecJSON    json.RawMessage `json:"spec,omitempty"`
	Spec        *specs.Spec     `json:"-"`
	NoPivot     bool            `json:"noPivot,omitempty"`
	Console     bool            `json:"console,omitempty"` // send the pty master to the parent
	PreserveFDs int             `json:"preserveFDs,omitempty"`
	Seccomp     []byte          `json:"seccomp,omitempty"`
	// NewCgroupNS asks the child to unshare its cgroup namespace once the
	// parent has placed it in its cgroup, so the namespace is rooted there.
	NewCgroupNS bool `json:"newCgroupNS,omitempty"`
	// StartNow leaves out the wait for Start (CreateOpts.Start); only the
	// fast init's plan has it.
	StartNow bool `json:"-"`
	// Unshare are the namespaces the fast init makes itself, with a user
	// namespace among them, rather than being cloned into them: Go cannot
	// vfork into a new user namespace, and a full fork copies the
	// parent's page tables, milliseconds for an agent of tens of
	// megabytes (and growing with it). The init unshares the user
	// namespace, has the parent map it, becomes RootUID/RootGID there,
	// unshares the rest and forks into its new pid namespace.
	Unshare          uintptr `json:"-"`
	RootUID, RootGID uint32  `json:"-"`
	// ExecJSON is set for a process joining an existing container, as
	// JSON for the same reason as SpecJSON; Exec is decoded from it.
	ExecJSON json.RawMessage `json:"exec,omitempty"`
	Exec     *specs.Process  `json:"-"`
}

// loadBundle reads and validates bundle/config.json, and returns it both
// decoded and as read; w, if it is the bundle's, is taken for the file.
func loadBundle(bundle string, w *Written) (*specs.Spec, []byte, string, error) {
	abs, err := filepath.Abs(bundle)
	if err != nil {
		return nil, nil, "", fmt.Errorf("bundle %s: %w", bundle, err)
	}
	var spec *specs.Spec
	var b []byte
	if w != nil && w.Spec != nil && sameDir(w.Bundle, abs) {
		spec, b = w.Spec, w.JSON
	} else {
		b, err = os.ReadFile(filepath.Join(abs, "config.json"))
		if err != nil {
			return nil, nil, "", fmt.Errorf("read bundle config: %w", err)
		}
		spec = &specs.Spec{}
		if err := json.Unmarshal(b, spec); err != nil {
			return nil, nil, "", fmt.Errorf("%s: %s", filepath.Join(abs, "config.json"), describeJSONError(b, err))
		}
	}
	if err := Validate(spec); err != nil {
		return nil, nil, "", err
	}
	rootfs := spec.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(abs, rootfs)
	}
	fi, err := os.Stat(rootfs)
	if err != nil {
		return nil, nil, "", fieldErr("root.path", "%s: %v", rootfs, errors.Unwrap(err))
	}
	if !fi.IsDir() {
		return nil, nil, "", fieldErr("root.path", "%s is not a directory", rootfs)
	}
	return spec, b, abs, nil
}

func sameDir(p, abs string) bool {
	a, err := filepath.Abs(p)
	return err == nil && a == abs
}

// describeJSONError turns a decoding error into "line L, column C: ...".
func describeJSONError(data []byte, err error) string {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
		if te.Field != "" {
			return fmt.Sprintf("%s: %s has the wrong type (want %s)", lineCol(data, off), te.Field, te.Type)
		}
	}
	if off < 0 {
		return err.Error()
	}
	return lineCol(data, off) + ": " + err.Error()
}

func lineCol(data []byte, off int64) string {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := off - int64(bytes.LastIndexByte(data[:off], '\n'))
	return fmt.Sprintf("line %d, column %d", line, col)
}

// Create sets up the container and leaves its init waiting for Start, or
// running with opts.Start.
func (r *Native) Create(ctx context.Context, id, bundle string, opts CreateOpts) error {
	c, err := r.create(ctx, id, bundle, opts)
	if err != nil {
		return err
	}
	if opts.Pid != nil {
		*opts.Pid = c.rec.Pid
	}
	// Reap the init when it exits if this process outlives it (in-process
	// callers); the CLI exits first and the init is re-parented.
	r.exits.Delete(id)
	wait := c.waitInit // not c: the goroutine lives as long as the container
	go func() { r.exits.Store(id, wait()) }()
	if opts.Start && !c.started {
		if err := r.Start(ctx, id); err != nil {
			_ = r.Delete(context.WithoutCancel(ctx), id, true)
			return err
		}
	}
	return nil
}

// awaitExit returns once the child pid has exited (it stays a zombie for
// Wait to reap). It waits in Go's poller on a pidfd: Wait alone blocks an OS
// thread in waitid for as long as the container runs, and a host holding a
// thousand containers would hold a thousand threads for them.
func awaitExit(pid int) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return // Wait will block instead
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	// A pidfd is readable once its process has exited.
	_ = rc.Read(func(fd uintptr) bool {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		return err != nil || info.Signo != 0
	})
}

// ExitCode returns the exit code of a container's first process (128+N for
// signal N) once it has exited, if this Native created it in this process
// and reaped it. A container created by another process (the CLI) is
// reaped by whoever inherited it; ok is false then.
func (r *Native) ExitCode(id string) (code int, ok bool) {
	v, ok := r.exits.Load(id)
	if !ok {
		return 0, false
	}
	return v.(int), true
}

type created struct {
	cmd *exec.Cmd
	// init is the container's init when the fast init forked it into its
	// pid namespace (a child of this process all the same, by
	// CLONE_PARENT); nil when it is cmd's process. cmdDone then has
	// cmd.Wait's result: the stdio copying Wait finishes lasts as long as
	// the init.
	init    *os.Process
	cmdDone chan error
	rec     *record
	spec    *specs.Spec
	// started: the init did not wait for Start (CreateOpts.Start).
	started bool
}

// waitInit waits for the container's init to exit, reaps it and returns
// its exit code (128+N for signal N).
func (c *created) waitInit() int {
	if c.init == nil {
		awaitExit(c.cmd.Process.Pid)
		err := c.cmd.Wait()
		return exitCodeOf(c.cmd.ProcessState, err)
	}
	awaitExit(c.init.Pid)
	ps, err := c.init.Wait()
	<-c.cmdDone
	return exitCodeOf(ps, err)
}

func (r *Native) create(ctx context.Context, id, bundle string, opts CreateOpts) (_ *created, err error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	// The host's cgroup hierarchy and the init's executable do not depend
	// on the spec: find them while the spec is decoded, which on a
	// process's first decode costs milliseconds.
	var exe string
	var exeErr error
	exeDone := make(chan struct{})
	go func() {
		defer close(exeDone)
		_, _ = r.hierarchy()
		exe, exeErr = r.initPath()
	}()
	// Never return while it may still be making the executable's copy.
	defer func() { <-exeDone }()
	spec, specJSON, bundle, err := loadBundle(bundle, opts.Written)
	if err != nil {
		return nil, err
	}
	rootfs := spec.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(bundle, rootfs)
	}
	if spec.Process.Terminal && opts.ConsoleSocket == "" && opts.Console == nil {
		return nil, errors.New("process.terminal is true but no --console-socket was given")
	}
	if !spec.Process.Terminal && opts.ConsoleSocket != "" {
		return nil, errors.New("--console-socket was given but process.terminal is false")
	}
	ns, _ := validateNamespaces(spec.Linux.Namespaces)
	cg, err := r.newCgroup(id, spec)
	if err != nil {
		return nil, err
	}
	<-exeDone
	if exeErr != nil {
		return nil, exeErr
	}
	var rawProfile []byte
	switch {
	case spec.Linux.Seccomp == nil:
	case opts.Written != nil && opts.Written.Spec == spec:
		rawProfile = opts.Written.Seccomp
	default:
		rawProfile = rawSeccomp(specJSON)
	}
	seccompProg, err := r.compileSeccomp(spec.Linux.Seccomp, rawProfile, exe)
	if err != nil {
		return nil, err
	}

	dir := r.dir(id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("container %s already exists", id)
		}
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	// The cgroup is made while the rest is prepared and the child is
	// cloned and exec'd (the parent's thread waits on the vfork), not
	// before: the directory above is what says the id is free.
	cgMade := make(chan error, 1)
	go func() { cgMade <- cg.create() }()
	var cmd *exec.Cmd
	var rec *record
	defer func() {
		if err == nil {
			return
		}
		if cgMade != nil {
			<-cgMade
		}
		if cmd != nil && cmd.Process != nil {
			_ = cmd.Process.Kill()
			if rec != nil && rec.Pid != cmd.Process.Pid {
				// The init the fast init forked is this process's child.
				_ = unix.Kill(rec.Pid, unix.SIGKILL)
				var ws unix.WaitStatus
				_, _ = unix.Wait4(rec.Pid, &ws, 0, nil)
			}
			_ = cmd.Wait()
		}
		if derr := cg.destroy(); derr != nil {
			r.Log.Warn("remove cgroup after failed create", "id", id, "err", derr)
		}
		_ = os.RemoveAll(dir)
	}()

	if err := writeFileAtomic(filepath.Join(dir, "config.json"), specJSON, 0o600); err != nil {
		return nil, fmt.Errorf("save config: %w", err)
	}
	cfg := initConfig{
		ID: id, Bundle: bundle, Rootfs: rootfs, SpecJSON: specJSON, NoPivot: opts.NoPivot,
		Console: spec.Process.Terminal, PreserveFDs: opts.PreserveFDs, Seccomp: seccompProg, StartNow: opts.Start,
	}
	cloneFlags, parentJoins, childJoins, err := namespacePlan(ns)
	if err != nil {
		return nil, err
	}
	if p, ok := ns[specs.CgroupNamespace]; ok && p == "" {
		cfg.NewCgroupNS = true
	}
	if cloneFlags&unix.CLONE_NEWUSER != 0 {
		// The child keeps its host uid (root) until it switches: it becomes
		// the namespace's root, i.e. the mapped host uid, before anything
		// runs.
		uid, gid, ok := nsRoot(spec)
		if !ok {
			return nil, fieldErr("linux.uidMappings", "neither container uid 0 nor process.user (%d:%d) is mapped", spec.Process.User.UID, spec.Process.User.GID)
		}
		cfg.Unshare, cfg.RootUID, cfg.RootGID = cloneFlags, uid, gid
	}

	role, config, err := r.chooseInit(&cfg, spec, len(childJoins))
	if err != nil {
		return nil, err
	}
	selfUnshare := role == roleFastInit && cfg.Unshare != 0
	// The fast init leaves out the wait for Start, and needs no exec fifo;
	// the Go init waits, and Create starts it.
	startNow := role == roleFastInit && cfg.StartNow
	var fifo *os.File
	if !startNow {
		fifoPath := filepath.Join(dir, execFifo)
		if err := unix.Mkfifo(fifoPath, 0o622); err != nil {
			return nil, fmt.Errorf("make exec fifo: %w", err)
		}
		// Mkfifo honours the umask; the init may run as another user.
		if err := os.Chmod(fifoPath, 0o622); err != nil {
			return nil, err
		}
		fifoFD, err := unix.Open(fifoPath, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open exec fifo: %w", err)
		}
		fifo = os.NewFile(uintptr(fifoFD), "exec-fifo")
		defer fifo.Close()
	}
	args := []string{"berth-runtime", "init"}
	if role == roleFastInit && r.PlanInitPath != "" {
		exe, args = r.PlanInitPath, []string{filepath.Base(r.PlanInitPath), "-P"}
	}
	cmd, parentSync, err := r.spawn(exe, args, role, config, opts.IO, opts.PreserveFDs, fifo, childJoins)
	if err != nil {
		return nil, err
	}
	defer parentSync.Close()
	if !selfUnshare {
		cmd.SysProcAttr.Cloneflags = cloneFlags
		if cloneFlags&unix.CLONE_NEWUSER != 0 {
			cmd.SysProcAttr.UidMappings = idMaps(spec.Linux.UIDMappings)
			cmd.SysProcAttr.GidMappings = idMaps(spec.Linux.GIDMappings)
			cmd.SysProcAttr.GidMappingsEnableSetgroups = true
			cmd.SysProcAttr.Credential = &syscall.Credential{Uid: cfg.RootUID, Gid: cfg.RootGID, NoSetGroups: true}
		}
	}
	err = startJoined(cmd, parentJoins)
	closeChildEnds(cmd)
	cgErr := <-cgMade
	cgMade = nil
	if err != nil {
		cmd = nil
		return nil, fmt.Errorf("start container init: %w", err)
	}
	if cgErr != nil {
		return nil, cgErr
	}
	pid := cmd.Process.Pid
	if err := cg.add(pid); err != nil {
		return nil, err
	}
	rec = &record{
		ID: id, Bundle: bundle, Rootfs: rootfs, Pid: pid, PidStart: processStart(pid),
		Created: time.Now().UTC(), Owner: "root", CgroupPath: cg.path, Cgroups: cg.hier,
		Hooks:       laterHooks(spec),
		Annotations: spec.Annotations,
		SharedPidNS: ns[specs.PIDNamespace] != "" || !hasNS(ns, specs.PIDNamespace),
	}
	if err := r.converse(ctx, parentSync, rec, spec, opts); err != nil {
		return nil, err
	}
	c := &created{cmd: cmd, rec: rec, spec: spec, started: startNow}
	if rec.Pid != pid {
		if c.init, err = os.FindProcess(rec.Pid); err != nil {
			return nil, fmt.Errorf("container init %d: %w", rec.Pid, err)
		}
		c.cmdDone = make(chan error, 1)
		go func() { c.cmdDone <- cmd.Wait() }()
	} else if selfUnshare {
		return nil, errors.New("container init did not say its pid")
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(dir, "state.json"), b, 0o600); err != nil {
		return nil, fmt.Errorf("save state: %w", err)
	}
	if fast := fastRecord(rec, cg.m.Dirs()); fast != nil {
		if err := writeFileAtomic(filepath.Join(dir, fastRecordFile), fast, 0o600); err != nil {
			return nil, fmt.Errorf("save state: %w", err)
		}
	}
	if opts.PidFile != "" {
		if err := writeFileAtomic(opts.PidFile, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return nil, fmt.Errorf("write pid file: %w", err)
		}
	}
	return c, nil
}

func hasNS(ns map[specs.LinuxNamespaceType]string, t specs.LinuxNamespaceType) bool {
	_, ok := ns[t]
	return ok
}

// converse drives the child through set-up: cgroup placement, the hooks
// that must run in the runtime's namespaces, the console, until ready.
func (r *Native) converse(ctx context.Context, sock *os.File, rec *record, spec *specs.Spec, opts CreateOpts) error {
	conn := syncConn{fd: int(sock.Fd())}
	if err := conn.send(syncMsg{Type: msgCgroupReady}, -1); err != nil {
		// An init that failed at once said why before it went.
		if why := conn.lastWords(); why != nil {
			return why
		}
		return err
	}
	for {
		m, fd, err := conn.recv()
		if errors.Is(err, errPeerGone) {
			return fmt.Errorf("container init exited during set-up")
		}
		if err != nil {
			return fmt.Errorf("container init: %w", err)
		}
		switch m.Type {
		case msgError:
			return errors.New(m.Error)
		case msgPreHooks:
			st := r.stateOf(rec)
			st.Status = Creating
			if spec.Hooks != nil {
				for _, hs := range [][]specs.Hook{spec.Hooks.Prestart, spec.Hooks.CreateRuntime} {
					if err := runHooks(ctx, hs, st); err != nil {
						return fmt.Errorf("createRuntime hook: %w", err)
					}
				}
			}
			if err := conn.send(syncMsg{Type: msgPreHooksDone}, -1); err != nil {
				return err
			}
		case msgConsole:
			if fd < 0 {
				return errors.New("container init sent a console message without a pty")
			}
			master := os.NewFile(uintptr(fd), "pty-master")
			if err := handOverConsole(master, opts.ConsoleSocket, opts.Console); err != nil {
				return err
			}
		case msgSeccompFd:
			st := r.stateOf(rec)
			st.Status = Creating
			if err := sendSeccompListener(spec.Linux.Seccomp, st, fd); err != nil {
				return err
			}
			if err := conn.send(syncMsg{Type: msgSeccompFdDone}, -1); err != nil {
				return err
			}
		case msgIDMap:
			if err := writeIDMaps(rec.Pid, spec); err != nil {
				return err
			}
			if err := conn.send(syncMsg{Type: msgIDMapDone}, -1); err != nil {
				return err
			}
		case msgPid:
			// The fast init forked the container's init into its pid
			// namespace; the process started here has exited.
			if m.Pid <= 0 {
				return fmt.Errorf("container init sent pid %d", m.Pid)
			}
			rec.Pid, rec.PidStart = m.Pid, processStart(m.Pid)
		case msgReady:
			return nil
		default:
			return fmt.Errorf("container init sent unknown message %q", m.Type)
		}
	}
}

// handOverConsole gives the pty master to the console socket (runc's
// protocol: one SCM_RIGHTS message) or to an in-process callback.
func handOverConsole(master *os.File, socketPath string, fn func(*os.File)) error {
	if fn != nil {
		fn(master)
		return nil
	}
	defer master.Close()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("console socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: socketPath}); err != nil {
		return fmt.Errorf("connect console socket %s: %w", socketPath, err)
	}
	if err := unix.Sendmsg(fd, []byte(master.Name()), unix.UnixRights(int(master.Fd())), nil, 0); err != nil {
		return fmt.Errorf("send pty to console socket: %w", err)
	}
	return nil
}

// spawn prepares the re-executed child with its sync socket and config pipe.
// The config is written by a goroutine so a large spec never blocks on the
// pipe's capacity.
//
// The config is the initConfig as JSON, or for roleFastInit the plan.
func (r *Native) spawn(exe string, args []string, role string, config []byte, stdio IO, preserve int, fifo *os.File, childJoins []nsJoin) (*exec.Cmd, *os.File, error) {
	parentSync, childSync, err := newSyncPair()
	if err != nil {
		return nil, nil, err
	}
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		parentSync.Close()
		childSync.Close()
		return nil, nil, err
	}
	go func() {
		_, _ = cfgW.Write(config)
		cfgW.Close()
	}()
	cmd := &exec.Cmd{
		Path:        exe,
		Args:        args,
		Env:         []string{envInit + "=" + role, "GOGC=off", "GOMAXPROCS=1"},
		SysProcAttr: &syscall.SysProcAttr{},
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	if fifo == nil {
		// Keep the fd layout fixed: fd 5 is /dev/null for exec.
		devnull, err := os.Open(os.DevNull)
		if err != nil {
			return nil, nil, err
		}
		fifo = devnull
	}
	cmd.ExtraFiles = []*os.File{childSync, cfgR, fifo}
	var setns []string
	for _, j := range childJoins {
		setns = append(setns, fmt.Sprintf("%s:%d", j.kind, 3+len(cmd.ExtraFiles)))
		cmd.ExtraFiles = append(cmd.ExtraFiles, j.file)
	}
	if len(setns) > 0 {
		cmd.Env = append(cmd.Env, envSetns+"="+strings.Join(setns, ","))
	}
	// Preserved fds follow; the child moves them to 3.. before exec.
	if preserve > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", envPreserveFrom, 3+len(cmd.ExtraFiles)))
	}
	for i := 0; i < preserve; i++ {
		cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(3+i), "preserved"))
	}
	return cmd, parentSync, nil
}

// closeChildEnds closes the parent's copies of the fds only the child uses,
// once the child has its own.
func closeChildEnds(cmd *exec.Cmd) {
	for i, f := range cmd.ExtraFiles {
		if i == childSyncFD-3 || i == childConfigFD-3 {
			f.Close()
		}
	}
}

// nsJoin is a namespace to join by path.
type nsJoin struct {
	kind string // user, mnt, net, ...
	flag int
	file *os.File
}

// nsKind gives a namespace type's /proc/<pid>/ns name and clone flag.
func nsKind(t specs.LinuxNamespaceType) (string, int) {
	switch t {
	case specs.PIDNamespace:
		return "pid", unix.CLONE_NEWPID
	case specs.NetworkNamespace:
		return "net", unix.CLONE_NEWNET
	case specs.MountNamespace:
		return "mnt", unix.CLONE_NEWNS
	case specs.IPCNamespace:
		return "ipc", unix.CLONE_NEWIPC
	case specs.UTSNamespace:
		return "uts", unix.CLONE_NEWUTS
	case specs.UserNamespace:
		return "user", unix.CLONE_NEWUSER
	case specs.CgroupNamespace:
		return "cgroup", unix.CLONE_NEWCGROUP
	}
	return "", 0
}

// namespacePlan decides how each namespace comes about: new ones by clone
// flags (the cgroup namespace excepted: the child unshares it once it is in
// its cgroup), joined ones by setns, either on the parent's forking thread
// (per-thread namespaces) or in the child's C constructor (user and mount,
// which a multithreaded process cannot join).
func namespacePlan(ns map[specs.LinuxNamespaceType]string) (clone uintptr, parent, child []nsJoin, err error) {
	if p, ok := ns[specs.UserNamespace]; ok && p != "" {
		for t, path := range ns {
			if path == "" && t != specs.CgroupNamespace {
				return 0, nil, nil, fieldErr("linux.namespaces", "joining a user namespace by path while creating a new %s namespace is not supported: join or create all of them", t)
			}
		}
	}
	for t, path := range ns {
		kind, flag := nsKind(t)
		if path == "" {
			if t != specs.CgroupNamespace {
				clone |= uintptr(flag)
			}
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			closeJoins(parent)
			closeJoins(child)
			return 0, nil, nil, fieldErr("linux.namespaces", "%s namespace %s: %v", t, path, errors.Unwrap(err))
		}
		var st unix.Statfs_t
		if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || st.Type != unix.NSFS_MAGIC {
			f.Close()
			closeJoins(parent)
			closeJoins(child)
			return 0, nil, nil, fieldErr("linux.namespaces", "%s is not a namespace file", path)
		}
		j := nsJoin{kind: kind, flag: flag, file: f}
		if t == specs.UserNamespace || t == specs.MountNamespace {
			child = append(child, j)
		} else {
			parent = append(parent, j)
		}
	}
	// The constructor joins in list order: user first, so it holds the
	// capabilities the mount namespace's owner requires.
	sort.Slice(child, func(i, k int) bool { return child[i].kind == "user" })
	return clone, parent, child, nil
}

func closeJoins(js []nsJoin) {
	for _, j := range js {
		j.file.Close()
	}
}

// startJoined starts cmd from a thread that has joined the given namespaces,
// so the child is born in them. The thread is never unlocked: Go retires it
// when the goroutine ends, and no other goroutine ever runs in those
// namespaces.
func startJoined(cmd *exec.Cmd, joins []nsJoin) error {
	defer closeJoins(joins)
	if len(joins) == 0 {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		for _, j := range joins {
			if err := unix.Setns(int(j.file.Fd()), j.flag); err != nil {
				errc <- fmt.Errorf("join %s namespace: %w", j.kind, err)
				return
			}
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// writeIDMaps maps the user namespace of pid (made by the fast init) as
// the spec says; setgroups stays allowed, as for a cloned namespace.
func writeIDMaps(pid int, spec *specs.Spec) error {
	for _, f := range []struct {
		file string
		m    []specs.LinuxIDMapping
	}{{"uid_map", spec.Linux.UIDMappings}, {"gid_map", spec.Linux.GIDMappings}} {
		var b []byte
		for _, m := range f.m {
			b = fmt.Appendf(b, "%d %d %d\n", m.ContainerID, m.HostID, m.Size)
		}
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/%s", pid, f.file), b, 0); err != nil {
			return fmt.Errorf("map the container's user namespace: %w", err)
		}
	}
	return nil
}

func idMaps(m []specs.LinuxIDMapping) []syscall.SysProcIDMap {
	out := make([]syscall.SysProcIDMap, len(m))
	for i, v := range m {
		out[i] = syscall.SysProcIDMap{ContainerID: int(v.ContainerID), HostID: int(v.HostID), Size: int(v.Size)}
	}
	return out
}

// Start lets a created container's init run the user's process.
func (r *Native) Start(ctx context.Context, id string) error {
	rec, err := r.loadRecord(id)
	if err != nil {
		return err
	}
	if st := r.status(rec); st != Created {
		return fmt.Errorf("cannot start container %s: it is %s, not created", id, st)
	}
	fifoPath := filepath.Join(r.dir(id), execFifo)
	fd, err := unix.Open(fifoPath, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open exec fifo: %w", err)
	}
	defer unix.Close(fd)
	// The init has the write end open (blocked in open until now) and writes
	// one byte; poll so an init that died meanwhile is noticed.
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 20)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wait for container init: %w", err)
		}
		if n > 0 {
			var b [1]byte
			if k, _ := unix.Read(fd, b[:]); k == 1 {
				break
			}
			if pfd[0].Revents&unix.POLLHUP != 0 {
				return fmt.Errorf("container %s: init exited before start", id)
			}
		}
		if processStart(rec.Pid) != rec.PidStart {
			return fmt.Errorf("container %s: init exited before start", id)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if err := os.Remove(fifoPath); err != nil {
		return fmt.Errorf("remove exec fifo: %w", err)
	}
	if rec.Hooks != nil && len(rec.Hooks.Poststart) > 0 {
		if err := runHooks(ctx, rec.Hooks.Poststart, r.stateOf(rec)); err != nil {
			// The spec: a failing poststart hook is logged, the container runs on.
			r.Log.Warn("poststart hook failed", "id", id, "err", err)
		}
	}
	return nil
}

// Run creates and starts a container and waits for its process to exit,
// returning its exit code (128+signal when killed). The container is
// deleted afterwards unless keep is set.
func (r *Native) Run(ctx context.Context, id, bundle string, opts CreateOpts, keep bool) (int, error) {
	c, err := r.create(ctx, id, bundle, opts)
	if err != nil {
		return -1, err
	}
	if err := r.Start(ctx, id); err != nil {
		_ = r.Delete(context.Background(), id, true)
		c.waitInit()
		return -1, err
	}
	code := c.waitInit()
	if !keep {
		if err := r.Delete(context.Background(), id, true); err != nil {
			return code, err
		}
	}
	return code, nil
}

func exitCodeOf(ps *os.ProcessState, err error) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// State reports a container's OCI state.
func (r *Native) State(ctx context.Context, id string) (State, error) {
	rec, err := r.loadRecord(id)
	if err != nil {
		return State{}, err
	}
	return r.stateOf(rec), nil
}

// Kill sends sig to the container's init, or with all to every process in
// its cgroup.
func (r *Native) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	rec, err := r.loadRecord(id)
	if err != nil {
		return err
	}
	st := r.status(rec)
	if st == Stopped {
		return fmt.Errorf("cannot kill container %s: it is not running", id)
	}
	if all || rec.SharedPidNS {
		return r.killAll(rec, sig)
	}
	return signalInit(rec, unix.Signal(sig))
}

// killAll signals every process in the cgroup, frozen first so none can
// fork away from the signal.
func (r *Native) killAll(rec *record, sig syscall.Signal) error {
	cg, err := r.openCgroup(rec, nil)
	if err != nil {
		return err
	}
	frozeHere := false
	if st, _ := cg.frozen(); !st {
		if err := cg.freeze(); err == nil {
			frozeHere = true
		}
	}
	pids, err := cg.pids()
	if err != nil {
		return err
	}
	for _, p := range pids {
		_ = unix.Kill(p, sig)
	}
	if frozeHere || sig == unix.SIGKILL {
		_ = cg.thaw()
	}
	return nil
}

// Delete removes a stopped container (or, with force, kills it first): its
// processes, cgroup and state, then runs the poststop hooks.
func (r *Native) Delete(ctx context.Context, id string, force bool) error {
	rec, err := r.loadRecord(id)
	if err != nil {
		if errors.Is(err, ErrNotExist) && force {
			return nil
		}
		return err
	}
	st := r.status(rec)
	switch st {
	case Stopped:
	case Created:
		// A created container never ran user code: deleting it is safe.
		if err := r.killAndWait(rec); err != nil {
			return err
		}
	default:
		if !force {
			return fmt.Errorf("cannot delete container %s: it is %s (stop it, or use --force)", id, st)
		}
		if err := r.killAndWait(rec); err != nil {
			return err
		}
	}
	if rec.SharedPidNS {
		_ = r.killAll(rec, unix.SIGKILL)
	}
	cg, err := r.openCgroup(rec, nil)
	if err == nil {
		if err := cg.destroy(); err != nil {
			return fmt.Errorf("delete %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(r.dir(id)); err != nil {
		return fmt.Errorf("delete %s: remove state: %w", id, err)
	}
	r.exits.Delete(id)
	if rec.Hooks != nil && len(rec.Hooks.Poststop) > 0 {
		s := r.stateOf(rec)
		s.Status = Stopped
		s.Pid = 0
		if err := runHooks(ctx, rec.Hooks.Poststop, s); err != nil {
			r.Log.Warn("poststop hook failed", "id", id, "err", err)
		}
	}
	return nil
}

// killAndWait SIGKILLs the init (which takes its whole pid namespace with
// it) and waits until the kernel has it gone.
func (r *Native) killAndWait(rec *record) error {
	if r.status(rec) == Paused {
		if cg, err := r.openCgroup(rec, nil); err == nil {
			_ = cg.thaw()
		}
	}
	if err := signalInit(rec, unix.SIGKILL); err != nil && r.status(rec) != Stopped {
		return err
	}
	if rec.SharedPidNS {
		_ = r.killAll(rec, unix.SIGKILL)
	}
	for i := 0; i < 1000; i++ {
		if processStart(rec.Pid) != rec.PidStart {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("container %s: init %d did not exit after SIGKILL", rec.ID, rec.Pid)
}

// Pause freezes every process of the container.
func (r *Native) Pause(ctx context.Context, id string) error {
	rec, err := r.loadRecord(id)
	if err != nil {
		return err
	}
	if st := r.status(rec); st != Running && st != Created {
		return fmt.Errorf("cannot pause container %s: it is %s", id, st)
	}
	cg, err := r.openCgroup(rec, nil)
	if err != nil {
		return err
	}
	return cg.freeze()
}

// Resume thaws a paused container.
func (r *Native) Resume(ctx context.Context, id string) error {
	rec, err := r.loadRecord(id)
	if err != nil {
		return err
	}
	if st := r.status(rec); st != Paused {
		return fmt.Errorf("cannot resume container %s: it is %s, not paused", id, st)
	}
	cg, err := r.openCgroup(rec, nil)
	if err != nil {
		return err
	}
	return cg.thaw()
}

// List returns the state of every container under the root.
func (r *Native) List(ctx context.Context) ([]State, error) {
	entries, err := os.ReadDir(r.Root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", r.Root, err)
	}
	var out []State
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		rec, err := r.loadRecord(e.Name())
		if err != nil {
			continue // mid-create or mid-delete
		}
		out = append(out, r.stateOf(rec))
	}
	return out, nil
}

// Pids lists the host pids of the container's processes.
func (r *Native) Pids(ctx context.Context, id string) ([]int, error) {
	rec, err := r.loadRecord(id)
	if err != nil {
		return nil, err
	}
	cg, err := r.openCgroup(rec, nil)
	if err != nil {
		return nil, err
	}
	return cg.pids()
}

func (r *Native) frozen(rec *record) (bool, error) {
	cg, err := r.openCgroup(rec, nil)
	if err != nil {
		return false, err
	}
	return cg.frozen()
}

// laterHooks are the hooks that run after create (poststart, poststop),
// kept in the record so start and delete need not decode the whole spec.
func laterHooks(spec *specs.Spec) *specs.Hooks {
	if spec.Hooks == nil || len(spec.Hooks.Poststart)+len(spec.Hooks.Poststop) == 0 {
		return nil
	}
	return &specs.Hooks{Poststart: spec.Hooks.Poststart, Poststop: spec.Hooks.Poststop}
}

// nsRoot picks the ids the init takes inside a new user namespace: root if
// the mappings cover it, else the process's own user.
func nsRoot(spec *specs.Spec) (uid, gid uint32, ok bool) {
	mapped := func(m []specs.LinuxIDMapping, id uint32) bool {
		for _, v := range m {
			if id >= v.ContainerID && id-v.ContainerID < v.Size {
				return true
			}
		}
		return false
	}
	if mapped(spec.Linux.UIDMappings, 0) && mapped(spec.Linux.GIDMappings, 0) {
		return 0, 0, true
	}
	u := spec.Process.User
	if mapped(spec.Linux.UIDMappings, u.UID) && mapped(spec.Linux.GIDMappings, u.GID) {
		return u.UID, u.GID, true
	}
	return 0, 0, false
}

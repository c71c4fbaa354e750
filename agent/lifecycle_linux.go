package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/runtime"
	"golang.org/x/sys/unix"
)

// Run creates a container from spec and starts it, returning its ID.
func (a *Agent) Run(ctx context.Context, spec ContainerSpec) (string, error) {
	id, err := a.Create(ctx, spec)
	if err != nil {
		return "", err
	}
	if err := a.Start(ctx, id); err != nil {
		return id, err
	}
	return id, nil
}

// Create makes a container (snapshot, bundle, log directory) without
// starting it. On error nothing of it is left.
func (a *Agent) Create(ctx context.Context, spec ContainerSpec) (_ string, err error) {
	if err := spec.Validate(); err != nil {
		return "", err
	}
	if spec.Network != "" && spec.Network != "none" && a.cfg.Networker == nil {
		return "", fmt.Errorf("network %q: this agent has no network attached; use none", spec.Network)
	}
	if a.cfg.InitPath == "" && !spec.NoInit {
		return "", errors.New("agent has no berth-init (Config.InitPath); run with NoInit or configure it")
	}
	img, err := a.cfg.Images.Ensure(ctx, spec.Image, image.PullOptions{})
	if err != nil {
		return "", fmt.Errorf("image %s: %w", spec.Image, err)
	}
	id := newID()
	c := &container{meta: Container{ID: id, Spec: spec, ImageDigest: img.Digest.String(), Created: time.Now().UTC(),
		State: State{Status: StatusCreated}}}

	// Under the agent lock: the name and the id range must be unique.
	a.mu.Lock()
	var used []IDRange
	for _, o := range a.containers {
		if spec.Name != "" && o.meta.Spec.Name == spec.Name {
			a.mu.Unlock()
			return "", fmt.Errorf("name %q: already in use by container %s", spec.Name, o.meta.ID)
		}
		used = append(used, o.meta.IDs)
	}
	ids, err := a.cfg.IDs.Allocate(used)
	if err != nil {
		a.mu.Unlock()
		return "", err
	}
	c.meta.IDs = ids
	// The directory is the container's existence on disk: made first and
	// removed last, so a crash in between leaves something reconcile finds.
	if err := a.makeDirLocked(id); err != nil {
		a.mu.Unlock()
		return "", fmt.Errorf("create container: %w", err)
	}
	c.removed = true // not visible until complete
	a.containers[id] = c
	a.mu.Unlock()
	defer func() {
		if err != nil {
			a.destroy(id)
			a.mu.Lock()
			delete(a.containers, id)
			a.mu.Unlock()
		}
	}()

	parts, err := a.cfg.Images.PrepareSnapshot(ctx, img, id)
	if err != nil {
		return "", err
	}
	if err := a.mountRootfs(id, ids, spec.Ephemeral, &parts); err != nil {
		return "", err
	}
	rootfs := a.rootfs(id)
	icfg := img.Config.Config
	if spec.Entrypoint != nil {
		icfg.Entrypoint = spec.Entrypoint
		if spec.Cmd == nil {
			icfg.Cmd = nil
		}
	}
	if spec.User != "" {
		icfg.User = spec.User
	}
	if spec.Workdir != "" {
		icfg.WorkingDir = spec.Workdir
	}
	proc, err := image.ContainerProcess(rootfs, icfg, spec.Cmd)
	if err != nil {
		return "", err
	}
	c.meta.User = proc.User
	// The bundle (config.json) is on disk; its rootfs, in the state
	// directory, may not be (then mountRootfs has not made the bundle).
	if err := os.MkdirAll(a.bundle(id), 0o711); err != nil {
		return "", err
	}
	logDir := a.logDir(id)
	if err := os.Mkdir(logDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	// berth-init writes here as the container's root: the directory, and
	// the files a spare directory (spare_linux.go) brings.
	for _, p := range []string{logDir, filepath.Join(logDir, logFile), filepath.Join(logDir, "exit.tmp")} {
		if err := os.Chown(p, int(ids.Base), int(ids.Base)); err != nil && (p == logDir || !errors.Is(err, fs.ErrNotExist)) {
			return "", err
		}
	}
	mounts, err := a.prepareMounts(id, spec.Mounts, ids)
	if err != nil {
		return "", err
	}
	ociSpec, err := Generate(BundleInput{
		ID: id, Spec: spec, Process: proc, Rootfs: rootfs, IDs: ids, InitPath: a.cfg.InitPath,
		LogDir: logDir, CgroupsPath: a.cgroupOf(id), Mounts: mounts, AgentRoot: a.cfg.Root,
	})
	if err != nil {
		return "", err
	}
	written, err := runtime.SaveSpec(a.bundle(id), ociSpec)
	if err != nil {
		return "", fmt.Errorf("write bundle: %w", err)
	}
	c.mu.Lock()
	c.written = written
	err = a.save(c)
	c.removed = false
	c.mu.Unlock()
	if err != nil {
		return "", err
	}
	return id, nil
}

// Start starts a created or exited container.
func (a *Agent) Start(ctx context.Context, ref string) error {
	c, err := a.get(ref)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settleLocked()
	if c.exited != nil {
		return fmt.Errorf("container %s: already running", c.meta.ID)
	}
	if c.restartTimer != nil {
		c.restartTimer.Stop()
		c.restartTimer = nil
	}
	c.meta.State.StoppedByUser = false
	return a.startLocked(ctx, c)
}

// startLocked runs the container's bundle once; c.mu is held.
func (a *Agent) startLocked(ctx context.Context, c *container) (err error) {
	id := c.meta.ID
	defer func() {
		if err != nil {
			c.meta.State.Status = StatusExited
			c.meta.State.Error = err.Error()
			c.meta.State.ExitCode = 125
			_ = a.save(c)
		}
		a.mu.Lock()
		close(a.tried)
		a.tried = make(chan struct{})
		a.mu.Unlock()
	}()
	c.meta.ExitFollowed = false
	if err := a.mountRootfs(id, c.meta.IDs, c.meta.Spec.Ephemeral, nil); err != nil {
		return err
	}
	if _, err := a.prepareMounts(id, c.meta.Spec.Mounts, c.meta.IDs); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(a.logDir(id), "exit"))
	// A previous run's runtime state (after an agent crash) goes first.
	_ = a.cfg.Runtime.Delete(ctx, id, true)
	// Without an init the workload writes here itself; with one, this
	// catches what the runtime's init stage and berth-init have to say
	// before the workload runs (the workload gets berth-init's pipes).
	name := "init.log"
	if c.meta.Spec.NoInit {
		name = "raw.log"
	}
	f, err := os.OpenFile(filepath.Join(a.logDir(id), name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	defer f.Close()
	var pid int
	// With a network to attach the init waits for it; without, it goes on
	// at once.
	attach := c.meta.Spec.Network != "" && c.meta.Spec.Network != "none"
	opts := runtime.CreateOpts{IO: runtime.IO{Stdout: f, Stderr: f}, Written: c.written, Pid: &pid, Start: !attach}
	c.written = nil
	if err := a.cfg.Runtime.Create(ctx, id, a.bundle(id), opts); err != nil {
		return fmt.Errorf("create container %s: %w", id, err)
	}
	mntns := holdMounts(pid)
	if attach {
		addrs, err := a.cfg.Networker.Attach(fmt.Sprintf("/proc/%d/ns/net", pid), NetEndpoint{ID: id, Tenant: c.meta.Spec.Tenant,
			Labels: c.meta.Spec.Labels, Ports: c.meta.Spec.Ports})
		if err != nil {
			_ = a.cfg.Runtime.Delete(ctx, id, true)
			closeFile(mntns)
			return fmt.Errorf("attach network %s: %w", c.meta.Spec.Network, err)
		}
		c.meta.State.Addresses = addrs
		if err := a.cfg.Runtime.Start(ctx, id); err != nil {
			_ = a.cfg.Runtime.Delete(ctx, id, true)
			closeFile(mntns)
			if derr := a.cfg.Networker.Detach(id); derr != nil {
				a.log.Warn("detach network", "id", id, "err", derr)
			}
			c.meta.State.Addresses = nil
			return fmt.Errorf("start container %s: %w", id, err)
		}
	}
	s := &c.meta.State
	s.Status, s.Pid, s.StartedAt, s.Error, s.OOMKilled = StatusRunning, pid, time.Now().UTC(), "", false
	s.FinishedAt = time.Time{}
	c.killed = false
	c.mntns = mntns
	if err := a.save(c); err != nil {
		return err
	}
	return a.watchLocked(c, pid)
}

// holdMounts opens pid's mount namespace, so that the exit of the last
// process in it does not unmount its tree: that takes the kernel an RCU
// grace period and the teardown of a dozen filesystems (proc, sysfs, the
// cgroup hierarchies, ...) before the exit is signalled, some 0.4 ms of a
// `run --rm true`. The agent lets go once the exit is recorded
// (dropMounts), off the path of whoever waits for it. Nil if pid is gone.
func holdMounts(pid int) *os.File {
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return nil
	}
	return f
}

// dropMounts lets go of the held mount namespace of c's last run, which
// unmounts it if nothing else is in it. c.mu is held.
func (c *container) dropMounts() {
	closeFile(c.mntns)
	c.mntns = nil
}

func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// watchLocked arranges for onExit to run when the container's init ends.
// It waits on a pidfd in the Go netpoller: no thread, no process per
// container. c.mu is held.
func (a *Agent) watchLocked(c *container, pid int) error {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	exited := make(chan struct{})
	c.exited = exited
	if errors.Is(err, unix.ESRCH) {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.onExit(c, exited, -1) }()
		return nil
	}
	if err != nil {
		c.dropMounts()
		return fmt.Errorf("watch container %s: %w", c.meta.ID, err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	c.watch = f
	a.startHealthLocked(c)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		rc, err := f.SyscallConn()
		if err == nil {
			err = rc.Read(func(fd uintptr) bool {
				p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				n, _ := unix.Poll(p, 0)
				return n > 0
			})
		}
		if err != nil {
			return // the agent is closing; a new one adopts the container
		}
		code := -1
		_ = rc.Control(func(fd uintptr) { code = exitStatus(int(fd)) })
		a.onExit(c, exited, code)
	}()
	return nil
}

// onExit records how the current run of c ended, releases its runtime
// state and applies the restart policy. The exit is reported before the
// release: deleting a cgroup and a network device takes milliseconds (a
// veth's removal tens), which a caller waiting on the exit need not wait.
func (a *Agent) onExit(c *container, exited chan struct{}, observed int) {
	c.mu.Lock()
	if c.exited != exited {
		c.mu.Unlock()
		return
	}
	attached := a.recordExitLocked(c, observed)
	c.meta.ExitFollowed = c.followers > 0
	close(exited)
	c.exited = nil
	if c.watch != nil {
		c.watch.Close()
		c.watch = nil
	}
	settled := make(chan struct{})
	c.settled = settled
	mntns := c.mntns
	c.mntns = nil
	c.mu.Unlock()
	a.notify()

	// Off the waiter's path now (see holdMounts).
	closeFile(mntns)
	a.releaseRun(c.meta.ID, attached)

	c.mu.Lock()
	c.settled = nil
	close(settled)
	a.maybeRestartLocked(c)
	c.mu.Unlock()
	a.notify()
}

// settleLocked returns once the release of c's last run is done (see
// onExit), letting go of c.mu meanwhile: nothing may start or remove the
// container before it. c.mu is held.
func (c *container) settleLocked() {
	for c.settled != nil {
		s := c.settled
		c.mu.Unlock()
		<-s
		c.mu.Lock()
	}
}

// exitLocked records an exit found at the agent's start and releases the
// run at once. c.mu is held.
func (a *Agent) exitLocked(c *container) {
	a.releaseRun(c.meta.ID, a.recordExitLocked(c, -1))
}

// releaseRun deletes a finished run's runtime state and cgroup and, when
// it was attached, its network.
func (a *Agent) releaseRun(id string, attached bool) {
	if err := a.cfg.Runtime.Delete(context.Background(), id, true); err != nil {
		a.log.Warn("delete runtime state", "id", id, "err", err)
	}
	if attached {
		if err := a.cfg.Networker.Detach(id); err != nil {
			a.log.Warn("detach network", "id", id, "err", err)
		}
	}
}

// recordExitLocked reads the exit code berth-init left and whether the
// kernel OOM-killed anything, and saves the container as exited. It
// reports whether the run had a network to detach (releaseRun does that,
// and deletes the runtime's state and cgroup).
func (a *Agent) recordExitLocked(c *container, observed int) (attached bool) {
	id := c.meta.ID
	s := &c.meta.State
	if c.stopHealth != nil {
		c.stopHealth()
		c.stopHealth = nil
	}
	code := -1
	if b, err := os.ReadFile(filepath.Join(a.logDir(id), "exit")); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			code = v
		}
	}
	if code < 0 && c.meta.Spec.NoInit {
		// No berth-init to write it down: what the kernel said, when
		// this agent saw the process end, or the runtime if it reaped
		// the process first.
		code = observed
		if ec, ok := a.cfg.Runtime.(interface{ ExitCode(string) (int, bool) }); ok && code < 0 && c.exited != nil {
			for deadline := time.Now().Add(100 * time.Millisecond); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				if v, ok := ec.ExitCode(id); ok {
					code = v
					break
				}
			}
		}
	}
	if code < 0 && (c.killed || !c.meta.Spec.NoInit) {
		// berth-init ended without a word: SIGKILL, or it never ran.
		code = 128 + int(unix.SIGKILL)
		if !c.killed {
			s.Error = lastLine(filepath.Join(a.logDir(id), "init.log"))
		}
	}
	if cg, err := a.cgroup(id); err == nil {
		if n, err := cg.OOMKills(); err == nil && n > 0 {
			s.OOMKilled = true
		}
	}
	if n := c.meta.Spec.Network; n != "" && n != "none" && a.cfg.Networker != nil {
		attached = true
		s.Addresses = nil
	}
	ran := time.Since(s.StartedAt)
	s.Status, s.Pid, s.ExitCode, s.FinishedAt = StatusExited, 0, code, time.Now().UTC()
	if ran >= 10*time.Second {
		s.Backoff = 0
	}
	if err := a.save(c); err != nil {
		a.log.Warn("save exit", "id", id, "err", err)
	}
	return attached
}

func (a *Agent) maybeRestartLocked(c *container) {
	s := &c.meta.State
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed || c.removed || !ShouldRestart(c.meta.Spec.Restart, s.ExitCode, s.RestartCount, s.StoppedByUser) {
		return
	}
	delay := RestartDelay(s.Backoff, s.FinishedAt.Sub(s.StartedAt))
	s.Backoff++
	s.Status = StatusRestarting
	_ = a.save(c)
	c.restartTimer = time.AfterFunc(delay, func() {
		a.mu.Lock()
		closed := a.closed
		a.mu.Unlock()
		c.mu.Lock()
		defer c.mu.Unlock()
		c.settleLocked()
		if closed || c.removed || c.exited != nil || c.meta.State.Status != StatusRestarting {
			return
		}
		c.restartTimer = nil
		c.meta.State.RestartCount++
		if err := a.startLocked(context.Background(), c); err != nil {
			a.log.Warn("restart", "id", c.meta.ID, "err", err)
		}
	})
}

// lastLine is the last line of a small file, for error reports.
func lastLine(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// Kill sends sig to the container's init, which passes it to the workload.
func (a *Agent) Kill(ctx context.Context, ref string, sig syscall.Signal) error {
	c, err := a.get(ref)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return a.killLocked(ctx, c, sig)
}

func (a *Agent) killLocked(ctx context.Context, c *container, sig syscall.Signal) error {
	if c.exited == nil {
		return fmt.Errorf("container %s: %w", c.meta.ID, ErrNotRunning)
	}
	c.meta.State.StoppedByUser = true
	if sig == unix.SIGKILL {
		c.killed = true
	} else if !c.meta.Spec.NoInit {
		awaitInit(c.meta.State.Pid)
	}
	_ = a.save(c)
	return a.cfg.Runtime.Kill(ctx, c.meta.ID, sig, false)
}

// awaitInit waits, briefly, until berth-init runs as the container's PID
// 1 and holds its signals. Just after start, PID 1 may still be replacing
// itself with berth-init: exec resets its handlers, and a namespace's
// init discards a signal it has no handler for, so a stop sent then would
// be lost and wait out its whole timeout. berth-init blocks every signal
// first thing; once it has, a signal waits for it.
func awaitInit(pid int) {
	if pid <= 0 {
		return
	}
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return
		}
		if initReady(string(b)) {
			return
		}
	}
}

// initReady reports whether a /proc/PID/status is berth-init's, holding
// SIGTERM blocked. (Before its exec, PID 1 is the runtime's init, whose
// Go runtime may block every signal for a moment on its own.)
func initReady(status string) bool {
	name, blocked := false, false
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "Name:"); ok {
			// The comm of what PID 1 runs: berth-init's name in the container.
			name = strings.TrimSpace(v) == path.Base(initInContainer)
		}
		if v, ok := strings.CutPrefix(line, "SigBlk:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			blocked = err == nil && mask&(1<<(uint(unix.SIGTERM)-1)) != 0
		}
	}
	return name && blocked
}

// Stop asks the container to end with SIGTERM and kills it after timeout.
func (a *Agent) Stop(ctx context.Context, ref string, timeout time.Duration) error {
	c, err := a.get(ref)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.restartTimer != nil {
		c.restartTimer.Stop()
		c.restartTimer = nil
		c.meta.State.Status = StatusExited
	}
	c.meta.State.StoppedByUser = true
	exited := c.exited
	if exited == nil {
		err := a.save(c)
		c.mu.Unlock()
		return err
	}
	err = a.killLocked(ctx, c, unix.SIGTERM)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-exited:
		return c.awaitSettled(ctx)
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	c.mu.Lock()
	if c.exited == exited {
		err = a.killLocked(ctx, c, unix.SIGKILL)
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	select {
	case <-exited:
		return c.awaitSettled(ctx)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// awaitSettled returns once the release of c's ended run is done.
func (c *container) awaitSettled(ctx context.Context) error {
	c.mu.Lock()
	settled := c.settled
	c.mu.Unlock()
	if settled == nil {
		return nil
	}
	select {
	case <-settled:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// AwaitStart returns the ID of the container ref names once a start of it
// has been tried (it runs, ran, or failed to start), waiting until ctx ends
// for it to be made: a client may ask before this node has acted on the
// placement. created, when not empty, is the LabelCreated the container
// must carry: an instance deleted and made again under the same name is a
// new container, and the old one may not be gone yet.
func (a *Agent) AwaitStart(ctx context.Context, ref, created string) (string, error) {
	for {
		a.mu.Lock()
		tried := a.tried
		a.mu.Unlock()
		if id, ok := a.startTried(ref, created); ok {
			return id, nil
		}
		select {
		case <-tried:
		case <-ctx.Done():
			return "", fmt.Errorf("container %q: not started: %w", ref, ctx.Err())
		}
	}
}

func (a *Agent) startTried(ref, created string) (string, bool) {
	a.mu.Lock()
	cs := make([]*container, 0, 1)
	for id, c := range a.containers {
		if id == ref || c.meta.Spec.Name == ref {
			cs = append(cs, c)
		}
	}
	a.mu.Unlock()
	for _, c := range cs {
		c.mu.Lock()
		s := c.meta.State
		ok := !c.removed && (created == "" || c.meta.Spec.Labels[LabelCreated] == created) &&
			(c.exited != nil || !s.StartedAt.IsZero() || s.Status != StatusCreated)
		id := c.meta.ID
		c.mu.Unlock()
		if ok {
			return id, true
		}
	}
	return "", false
}

// Wait blocks until the container's current run ends (at once when it is
// not running) and what it held is released, and returns its exit code.
func (a *Agent) Wait(ctx context.Context, ref string) (int, error) {
	c, err := a.get(ref)
	if err != nil {
		return -1, err
	}
	code, err := c.waitExit(ctx)
	if err != nil {
		return -1, err
	}
	return code, c.awaitSettled(ctx)
}

// waitExit returns c's exit code once its current run has ended (at once
// when it is not running); its runtime state and network may still be
// going (Wait waits for that too).
func (c *container) waitExit(ctx context.Context) (int, error) {
	c.mu.Lock()
	exited := c.exited
	c.mu.Unlock()
	if exited != nil {
		select {
		case <-exited:
		case <-ctx.Done():
			return -1, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.meta.State.ExitCode, nil
}

// Remove deletes a container and everything the agent made for it but its
// named volumes. A running container needs force.
func (a *Agent) Remove(ctx context.Context, ref string, force bool) error {
	c, err := a.get(ref)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.exited != nil && !force {
		c.mu.Unlock()
		return fmt.Errorf("container %s is running: stop it first or force", c.meta.ID)
	}
	c.removed = true
	if c.restartTimer != nil {
		c.restartTimer.Stop()
		c.restartTimer = nil
	}
	exited := c.exited
	if exited != nil {
		c.killed = true
		_ = a.cfg.Runtime.Kill(ctx, c.meta.ID, unix.SIGKILL, false)
	}
	c.mu.Unlock()
	if exited != nil {
		select {
		case <-exited:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.mu.Lock()
	c.settleLocked()
	// A follower drains the log a moment after the exit: let it, within
	// reason, before the files are emptied.
	for deadline := time.Now().Add(5 * time.Second); c.followers > 0 && time.Now().Before(deadline); {
		c.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		c.mu.Lock()
	}
	c.mu.Unlock()
	id := c.meta.ID
	if err := a.destroy(id); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.containers, id)
	a.mu.Unlock()
	return nil
}

// destroy removes whatever exists of container id: runtime state and
// cgroup, mounts and state directory, snapshot, directory (last).
func (a *Agent) destroy(id string) error {
	ctx := context.Background()
	if err := a.cfg.Runtime.Delete(ctx, id, true); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	// Also for a container whose metadata is lost (reconcile's cleanup).
	if a.cfg.Networker != nil {
		if err := a.cfg.Networker.Detach(id); err != nil {
			return fmt.Errorf("remove %s: %w", id, err)
		}
	}
	if cg, err := a.cgroup(id); err == nil {
		_ = cg.Destroy()
	}
	// The mounts the agent makes and the state directory, then whatever
	// is mounted in the container's directory, when that is apart.
	if err := a.removeState(id); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if a.stateDir(id) != a.dir(id) {
		if err := unmountAll(a.dir(id)); err != nil {
			return fmt.Errorf("remove %s: %w", id, err)
		}
	}
	if err := a.cfg.Images.RemoveSnapshot(id); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if err := a.removeDir(id); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	return nil
}

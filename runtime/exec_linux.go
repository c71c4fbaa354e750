package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Exec runs one more process in a running container: it joins all the
// container's namespaces and its cgroup, and gets the container's seccomp
// filter. Without Detach it waits and returns the exit code.
func (r *Native) Exec(ctx context.Context, id string, p specs.Process, opts ExecOpts) (int, error) {
	rec, spec, err := r.load(id)
	if err != nil {
		return -1, err
	}
	if st := r.status(rec); st != Running && st != Created {
		return -1, fmt.Errorf("cannot exec in container %s: it is %s", id, st)
	}
	if err := validateProcess(&p, "process"); err != nil {
		return -1, err
	}
	if p.Terminal && opts.ConsoleSocket == "" && opts.Console == nil {
		return -1, errors.New("a terminal was requested but no console socket was given")
	}
	exe, err := r.initPath()
	if err != nil {
		return -1, err
	}
	prog, err := r.compileSeccomp(spec.Linux.Seccomp, nil, exe)
	if err != nil {
		return -1, err
	}
	parentJoins, childJoins, err := containerNamespaces(rec, spec)
	if err != nil {
		return -1, err
	}
	execJSON, err := json.Marshal(&p)
	if err != nil {
		return -1, fmt.Errorf("exec process: %w", err)
	}
	cfg := initConfig{ID: id, Bundle: rec.Bundle, ExecJSON: execJSON, Seccomp: prog, PreserveFDs: opts.PreserveFDs, Console: p.Terminal}
	config, err := json.Marshal(cfg)
	if err != nil {
		return -1, err
	}
	cmd, parentSync, err := r.spawn(exe, []string{"berth-runtime", "init"}, "exec", config, opts.IO, opts.PreserveFDs, nil, childJoins)
	if err != nil {
		closeJoins(parentJoins)
		closeJoins(childJoins)
		return -1, err
	}
	defer parentSync.Close()
	err = startJoined(cmd, parentJoins)
	closeJoins(childJoins)
	closeChildEnds(cmd)
	if err != nil {
		return -1, fmt.Errorf("start exec process: %w", err)
	}
	fail := func(err error) (int, error) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return -1, err
	}
	cg, err := r.openCgroup(rec, spec)
	if err != nil {
		return fail(err)
	}
	if err := cg.add(cmd.Process.Pid); err != nil {
		return fail(err)
	}
	conn := syncConn{fd: int(parentSync.Fd())}
	if err := conn.send(syncMsg{Type: msgCgroupReady}, -1); err != nil {
		return fail(err)
	}
	for ready := false; ; {
		m, fd, err := conn.recv()
		if errors.Is(err, errPeerGone) {
			if ready {
				break // the close-on-exec sync fd closed: execve succeeded
			}
			return fail(errors.New("exec process exited during set-up"))
		}
		if err != nil {
			return fail(err)
		}
		switch m.Type {
		case msgError:
			return fail(errors.New(m.Error))
		case msgConsole:
			if err := handOverConsole(os.NewFile(uintptr(fd), "pty-master"), opts.ConsoleSocket, opts.Console); err != nil {
				return fail(err)
			}
		case msgSeccompFd:
			st := r.stateOf(rec)
			if err := sendSeccompListener(spec.Linux.Seccomp, st, fd); err != nil {
				return fail(err)
			}
			if err := conn.send(syncMsg{Type: msgSeccompFdDone}, -1); err != nil {
				return fail(err)
			}
		case msgReady:
			ready = true
		default:
			return fail(fmt.Errorf("exec process sent unknown message %q", m.Type))
		}
	}
	if opts.PidFile != "" {
		if err := writeFileAtomic(opts.PidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			return fail(fmt.Errorf("write pid file: %w", err))
		}
	}
	if opts.Detach {
		if opts.LeaveUnreaped {
			_ = cmd.Process.Release()
		} else {
			go func() { _ = cmd.Wait() }()
		}
		return 0, nil
	}
	werr := cmd.Wait()
	return exitCodeOf(cmd.ProcessState, werr), nil
}

// containerNamespaces opens the init's namespaces that differ from ours:
// user and mount for the child's constructor, the rest for the parent's
// forking thread. The init's identity is checked after opening, so a
// recycled pid can never lead into someone else's namespaces.
func containerNamespaces(rec *record, spec *specs.Spec) (parent, child []nsJoin, err error) {
	order := []specs.LinuxNamespaceType{specs.UserNamespace, specs.MountNamespace, specs.CgroupNamespace,
		specs.IPCNamespace, specs.UTSNamespace, specs.NetworkNamespace, specs.PIDNamespace}
	ns, _ := validateNamespaces(spec.Linux.Namespaces)
	for _, t := range order {
		if _, ok := ns[t]; !ok {
			continue
		}
		kind, flag := nsKind(t)
		theirs := "/proc/" + strconv.Itoa(rec.Pid) + "/ns/" + kind
		if sameFile(theirs, "/proc/self/ns/"+kind) {
			continue
		}
		f, err := os.Open(theirs)
		if err != nil {
			closeJoins(parent)
			closeJoins(child)
			return nil, nil, fmt.Errorf("container %s is not running: %w", rec.ID, err)
		}
		j := nsJoin{kind: kind, flag: flag, file: f}
		if t == specs.UserNamespace || t == specs.MountNamespace {
			child = append(child, j)
		} else {
			parent = append(parent, j)
		}
	}
	if processStart(rec.Pid) != rec.PidStart {
		closeJoins(parent)
		closeJoins(child)
		return nil, nil, fmt.Errorf("container %s is not running", rec.ID)
	}
	return parent, child, nil
}

func sameFile(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

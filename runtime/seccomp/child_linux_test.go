package seccomp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The tests load filters into a child: the test binary re-executed with
// envChild set. The child locks its thread, sets no_new_privs, loads the
// program from envProg, optionally sends the notify fd to envListener, runs
// the probes in envProbes (each a raw syscall, printing "probe=result") and
// then, if envExec is set, execs that JSON argv under the filter.
const (
	envChild    = "BERTH_SECCOMP_TEST_CHILD"
	envProg     = "BERTH_SECCOMP_TEST_PROG"
	envProbes   = "BERTH_SECCOMP_TEST_PROBES"
	envExec     = "BERTH_SECCOMP_TEST_EXEC"
	envListener = "BERTH_SECCOMP_TEST_LISTENER"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) == "1" {
		if err := child(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(111)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func child() error {
	runtime.LockOSThread()
	b, err := os.ReadFile(os.Getenv(envProg))
	if err != nil {
		return err
	}
	var p Program
	if err := p.UnmarshalBinary(b); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	// A thread that exists before the filter is loaded, for probes named
	// "prethread-...": only TSYNC puts the filter on it.
	prethread := make(chan string)
	prethreadResult := make(chan string)
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		close(ready)
		for probe := range prethread {
			prethreadResult <- runProbe(probe)
		}
	}()
	<-ready
	fd, err := p.Load()
	if err != nil {
		return err
	}
	if path := os.Getenv(envListener); path != "" {
		st := specs.State{Version: specs.Version, ID: "seccomp-test", Status: specs.StateCreating, Pid: os.Getpid(), Bundle: "/nonexistent"}
		if err := SendNotifyFd(path, "test-metadata", st, fd); err != nil {
			return err
		}
		unix.Close(fd)
	}
	var out strings.Builder
	for _, probe := range strings.Fields(os.Getenv(envProbes)) {
		if rest, ok := strings.CutPrefix(probe, "prethread-"); ok {
			prethread <- rest
			fmt.Fprintf(&out, "%s=%s\n", probe, <-prethreadResult)
			continue
		}
		fmt.Fprintf(&out, "%s=%s\n", probe, runProbe(probe))
	}
	os.Stdout.WriteString(out.String())
	if cmd := os.Getenv(envExec); cmd != "" {
		var args []string
		if err := json.Unmarshal([]byte(cmd), &args); err != nil {
			return err
		}
		return unix.Exec(args[0], args, []string{"PATH=/bin:/usr/bin"})
	}
	return nil
}

// runProbe makes one raw syscall on the locked (filtered) thread and returns
// "ok" or the errno number. A probe is "name" or "name:arg".
func runProbe(probe string) string {
	name, argStr, _ := strings.Cut(probe, ":")
	var arg uint64
	if argStr != "" {
		v, err := strconv.ParseUint(argStr, 0, 64)
		if err != nil {
			return "badarg"
		}
		arg = v
	}
	var errno syscall.Errno
	var r uintptr
	switch name {
	case "getppid":
		r, _, errno = unix.RawSyscall(unix.SYS_GETPPID, 0, 0, 0)
		if errno == 0 {
			return strconv.FormatUint(uint64(r), 10)
		}
	case "getpgid":
		_, _, errno = unix.RawSyscall(unix.SYS_GETPGID, uintptr(arg), 0, 0)
	case "umask":
		_, _, errno = unix.RawSyscall(unix.SYS_UMASK, uintptr(arg), 0, 0)
	case "personality":
		_, _, errno = unix.RawSyscall(unix.SYS_PERSONALITY, uintptr(arg), 0, 0)
	case "unshare":
		_, _, errno = unix.RawSyscall(unix.SYS_UNSHARE, uintptr(arg), 0, 0)
	case "keyctl":
		// KEYCTL_GET_KEYRING_ID of the session keyring: harmless if allowed.
		_, _, errno = unix.RawSyscall(unix.SYS_KEYCTL, unix.KEYCTL_GET_KEYRING_ID, uintptr(0xfffffffd), 0)
	case "clone":
		// Only flag sets the kernel rejects with EINVAL are probed, so a
		// filter that lets the call through can never fork the Go process.
		_, _, errno = unix.RawSyscall(unix.SYS_CLONE, uintptr(arg), 0, 0)
	case "clone3":
		_, _, errno = unix.RawSyscall(unix.SYS_CLONE3, 0, 0, 0)
	case "nr":
		// A raw syscall number, for numbers no kernel has yet.
		_, _, errno = unix.RawSyscall(uintptr(arg), 0, 0, 0)
	case "uname":
		var u unix.Utsname
		_, _, errno = unix.RawSyscall(unix.SYS_UNAME, uintptr(unsafe.Pointer(&u)), 0, 0)
	default:
		return "unknown-probe"
	}
	if errno != 0 {
		return strconv.Itoa(int(errno))
	}
	return "ok"
}

type childResult struct {
	probes map[string]string
	stdout string
	stderr string
	pid    int
	err    error // from Wait
}

// signaled reports whether the child was killed by sig.
func (r childResult) signaled(sig syscall.Signal) bool {
	var ee *exec.ExitError
	if !errors.As(r.err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

type childOpts struct {
	probes   []string
	exec     []string // argv to exec under the filter after the probes
	listener string
}

// runChild loads p in a fresh child and reports what its probes saw.
func runChild(t *testing.T, p *Program, o childOpts) childResult {
	t.Helper()
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	progPath := filepath.Join(t.TempDir(), "prog.bpf")
	if err := os.WriteFile(progPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var argv []byte
	if o.exec != nil {
		if argv, err = json.Marshal(o.exec); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=1", envProg+"="+progPath,
		envProbes+"="+strings.Join(o.probes, " "), envExec+"="+string(argv), envListener+"="+o.listener)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	res := childResult{probes: map[string]string{}}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	res.pid = cmd.Process.Pid
	res.err = cmd.Wait()
	res.stdout, res.stderr = stdout.String(), stderr.String()
	for _, line := range strings.Split(res.stdout, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			res.probes[k] = v
		}
	}
	if res.err != nil {
		var ee *exec.ExitError
		if !errors.As(res.err, &ee) {
			t.Fatalf("run child: %v", res.err)
		}
		if ee.ExitCode() == 111 {
			t.Fatalf("child failed to set up: %s", res.stderr)
		}
	}
	return res
}

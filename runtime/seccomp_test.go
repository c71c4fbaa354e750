package runtime

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-dev/berth/runtime/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The default profile lets ordinary programs run and refuses what Docker's
// refuses; the spec's errno action and an argument filter act on real
// syscalls in the container.
func TestSeccompFiltersSyscalls(t *testing.T) {
	r := testRuntime(t)
	bundle := testBundle(t, []string{"sh", "-c", "echo start; unshare -n true 2>/dev/null || echo unshare=refused"}, func(s *specs.Spec) {
		s.Linux.Seccomp = seccomp.DefaultProfile()
	})
	// Twice: the second start takes the program from the cache.
	for _, id := range []string{"seccomp-default", "seccomp-cached"} {
		code, out := runOutput(t, r, id, bundle)
		if code != 0 || out != "start\nunshare=refused\n" {
			t.Errorf("default profile (%s): exit %d, output %q", id, code, out)
		}
	}
	cached, _ := filepath.Glob(filepath.Join(r.Root, ".seccomp", "raw-*.bpf"))
	if len(cached) != 1 {
		t.Fatalf("cached programs keyed by the profile's bytes: %v, want one", cached)
	}
	// A damaged entry is never loaded: it is compiled again and replaced.
	// (A runtime keeps the programs it loaded; another process, a fresh
	// runtime here, reads the entry.)
	if err := os.WriteFile(cached[0], []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	fresh, err := NewNative(r.Root, nil)
	if err != nil {
		t.Fatal(err)
	}
	fresh.GoInit = r.GoInit
	if code, out := runOutput(t, fresh, "seccomp-damaged", bundle); code != 0 || out != "start\nunshare=refused\n" {
		t.Errorf("after damaging the cache: exit %d, output %q", code, out)
	}
	if b, _ := os.ReadFile(cached[0]); string(b) == "garbage" {
		t.Error("the damaged cache entry was not replaced")
	}

	script := `touch /tmp/f; chmod 755 /tmp/f && echo chmod755=ok;
chmod 777 /tmp/f 2>/dev/null || echo chmod777=refused;
mkdir /tmp/d 2>&1; echo mkdir=$?`
	bundle = testBundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		s.Root.Readonly = false
		eperm, eacces := uint(unix.EPERM), uint(unix.EACCES)
		s.Linux.Seccomp = &specs.LinuxSeccomp{
			DefaultAction: specs.ActAllow,
			Syscalls: []specs.LinuxSyscall{
				{Names: []string{"mkdir", "mkdirat"}, Action: specs.ActErrno, ErrnoRet: &eperm},
				// The mode is the second argument of chmod, the third of fchmodat.
				{Names: []string{"chmod"}, Action: specs.ActErrno, ErrnoRet: &eacces,
					Args: []specs.LinuxSeccompArg{{Index: 1, Value: 0o777, Op: specs.OpEqualTo}}},
				{Names: []string{"fchmodat", "fchmodat2"}, Action: specs.ActErrno, ErrnoRet: &eacces,
					Args: []specs.LinuxSeccompArg{{Index: 2, Value: 0o777, Op: specs.OpEqualTo}}},
			},
		}
	})
	code, out := runOutput(t, r, "seccomp-rules", bundle)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, want := range []string{"chmod755=ok\n", "chmod777=refused\n", "Operation not permitted", "mkdir=1\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// With SCMP_ACT_NOTIFY the listener at listenerPath gets the filter's fd
// and the container's state; once the listener closes it, the notified
// syscall fails (ENOSYS) instead of hanging or running.
func TestSeccompNotifyHandsListenerFd(t *testing.T) {
	r := testRuntime(t)
	sock := filepath.Join(worldDir(t), "listener.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type received struct {
		state specs.ContainerProcessState
		fd    int
		err   error
	}
	got := make(chan received, 1)
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			got <- received{err: err}
			return
		}
		defer c.Close()
		buf, oob := make([]byte, 64<<10), make([]byte, unix.CmsgSpace(4))
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			got <- received{err: err}
			return
		}
		var rcv received
		rcv.fd = -1
		if err := json.Unmarshal(buf[:n], &rcv.state); err != nil {
			got <- received{err: err}
			return
		}
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
			if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
				rcv.fd = fds[0]
			}
		}
		got <- rcv
	}()
	bundle := testBundle(t, []string{"sh", "-c", "mkdir /tmp/d 2>&1; echo rc=$?"}, func(s *specs.Spec) {
		s.Root.Readonly = false
		s.Linux.Seccomp = &specs.LinuxSeccomp{
			DefaultAction:    specs.ActAllow,
			ListenerPath:     sock,
			ListenerMetadata: "test-metadata",
			Syscalls:         []specs.LinuxSyscall{{Names: []string{"mkdir", "mkdirat"}, Action: specs.ActNotify}},
		}
	})
	ctx := context.Background()
	if err := r.Create(ctx, "notify", bundle, CreateOpts{}); err != nil {
		t.Fatalf("create: %v", err)
	}
	rcv := <-got
	if rcv.err != nil {
		t.Fatalf("listener: %v", rcv.err)
	}
	if rcv.fd < 0 {
		t.Fatalf("listener got no fd with %+v", rcv.state)
	}
	link, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(rcv.fd))
	unix.Close(rcv.fd)
	if !strings.Contains(link, "seccomp notify") {
		t.Errorf("listener fd is %q, want a seccomp notify fd", link)
	}
	if rcv.state.Metadata != "test-metadata" || rcv.state.State.ID != "notify" || rcv.state.State.Status != specs.StateCreating || rcv.state.Pid <= 0 {
		t.Errorf("listener got state %+v", rcv.state)
	}
	if err := r.Delete(ctx, "notify", true); err != nil {
		t.Fatal(err)
	}
	// The same container, run to completion, with the listener gone:
	// handing over the fd fails and says where.
	l.Close()
	_, err = r.Run(ctx, "notify2", bundle, CreateOpts{}, false)
	if err == nil || !strings.Contains(err.Error(), sock) {
		t.Fatalf("run with no listener: %v, want an error naming %s", err, sock)
	}
	if _, err := r.State(ctx, "notify2"); err == nil {
		t.Fatal("failed run left the container behind")
	}
}

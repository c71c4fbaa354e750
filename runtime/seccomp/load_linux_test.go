package seccomp

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/busybox"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	libseccomp "github.com/seccomp/libseccomp-golang"
	"golang.org/x/sys/unix"
)

func uintp(v uint) *uint { return &v }

func mustCompile(t *testing.T, s *specs.LinuxSeccomp) *Program {
	t.Helper()
	p, err := Compile(s)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return p
}

func allowAllBut(rules ...specs.LinuxSyscall) *specs.LinuxSeccomp {
	return &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: rules}
}

func requireBusybox(t *testing.T) {
	t.Helper()
	if err := busybox.Available(); err != nil {
		t.Skip(err)
	}
}

func TestErrnoReturnsTheCustomErrno(t *testing.T) {
	p := mustCompile(t, allowAllBut(specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActErrno, ErrnoRet: uintp(99)}))
	res := runChild(t, p, childOpts{probes: []string{"getppid", "umask:0o22"}})
	if res.err != nil {
		t.Fatalf("child: %v\n%s", res.err, res.stderr)
	}
	if got := res.probes["getppid"]; got != "99" {
		t.Errorf("getppid = %q, want errno 99", got)
	}
	if got := res.probes["umask:0o22"]; got != "ok" {
		t.Errorf("umask = %q, want ok (default allow)", got)
	}
}

func TestErrnoWithoutErrnoRetIsEPERM(t *testing.T) {
	p := mustCompile(t, allowAllBut(specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActErrno}))
	res := runChild(t, p, childOpts{probes: []string{"getppid"}})
	if got := res.probes["getppid"]; got != strconv.Itoa(int(unix.EPERM)) {
		t.Errorf("getppid = %q, want EPERM", got)
	}
}

func TestDefaultErrnoRet(t *testing.T) {
	// Deny one syscall by default and allow everything the Go runtime and the
	// probe need: a default action with a custom errno.
	s := DefaultProfile()
	s.DefaultErrnoRet = uintp(uint(unix.ENOTSUP))
	p := mustCompile(t, s)
	res := runChild(t, p, childOpts{probes: []string{"keyctl", "getppid", "nr:1000"}})
	if res.err != nil {
		t.Fatalf("child: %v\n%s", res.err, res.stderr)
	}
	if got := res.probes["keyctl"]; got != strconv.Itoa(int(unix.ENOTSUP)) {
		t.Errorf("keyctl = %q, want ENOTSUP from defaultErrnoRet", got)
	}
	if got := res.probes["nr:1000"]; got != strconv.Itoa(int(unix.ENOSYS)) {
		t.Errorf("syscall 1000 = %q, want ENOSYS (newer than anything the profile names)", got)
	}
	if got := res.probes["getppid"]; got == "" || got[0] < '0' || got[0] > '9' || got == "0" {
		t.Errorf("getppid = %q, want a pid", got)
	}
}

func TestEnosysPrologueOnlyForErrnoDefault(t *testing.T) {
	prologue := enosysPrologue(runtime.GOARCH, 0)
	if len(prologue) == 0 {
		t.Skipf("no ENOSYS prologue on %s", runtime.GOARCH)
	}
	rule := specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActErrno, ErrnoRet: uintp(99)}
	allow := mustCompile(t, allowAllBut(rule))
	if reflect.DeepEqual(allow.Instructions[:2], prologue[:2]) {
		t.Error("allow-default filter got the ENOSYS prologue")
	}
	res := runChild(t, allow, childOpts{probes: []string{"nr:1000"}})
	if got := res.probes["nr:1000"]; got != strconv.Itoa(int(unix.ENOSYS)) {
		t.Errorf("syscall 1000 under allow-default = %q, want the kernel's ENOSYS", got)
	}
	kill := mustCompile(t, &specs.LinuxSeccomp{DefaultAction: specs.ActKillProcess, Syscalls: []specs.LinuxSyscall{{Names: []string{"getppid"}, Action: specs.ActAllow}}})
	if reflect.DeepEqual(kill.Instructions[:2], prologue[:2]) {
		t.Error("kill-default filter got the ENOSYS prologue: unknown syscalls must still kill")
	}
}

func TestKillProcessKillsWithSIGSYS(t *testing.T) {
	p := mustCompile(t, allowAllBut(specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActKillProcess}))
	res := runChild(t, p, childOpts{probes: []string{"getppid"}})
	if !res.signaled(syscall.SIGSYS) {
		t.Fatalf("child ended with %v (stdout %q), want killed by SIGSYS", res.err, res.stdout)
	}
	if res.stdout != "" {
		t.Errorf("child printed %q after the killing syscall", res.stdout)
	}
}

func TestKillThreadKillsSingleThreadedProgram(t *testing.T) {
	requireBusybox(t)
	for _, act := range []specs.LinuxSeccompAction{specs.ActKill, specs.ActKillThread} {
		t.Run(string(act), func(t *testing.T) {
			p := mustCompile(t, allowAllBut(specs.LinuxSyscall{Names: []string{"uname"}, Action: act}))
			// The filter survives execve; busybox is single-threaded, so
			// killing the thread ends the process.
			ok := runChild(t, p, childOpts{exec: []string{busybox.Path, "true"}})
			if ok.err != nil {
				t.Fatalf("busybox true under the filter: %v\n%s", ok.err, ok.stderr)
			}
			res := runChild(t, p, childOpts{exec: []string{busybox.Path, "uname"}})
			if !res.signaled(syscall.SIGSYS) {
				t.Fatalf("busybox uname ended with %v (stdout %q), want killed by SIGSYS", res.err, res.stdout)
			}
		})
	}
}

func TestTrapDeliversSIGSYS(t *testing.T) {
	p := mustCompile(t, allowAllBut(specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActTrap}))
	res := runChild(t, p, childOpts{probes: []string{"getppid"}})
	// Unlike a kill, the signal reaches the process's handler: the Go
	// runtime catches SIGSYS and reports it before exiting with status 2.
	if res.signaled(syscall.SIGSYS) {
		t.Fatal("child was killed outright; TRAP must deliver a catchable SIGSYS")
	}
	if !strings.Contains(res.stderr, "SIGSYS: bad system call") {
		t.Fatalf("child ended with %v, stderr %q; want the runtime's SIGSYS report", res.err, res.stderr)
	}
}

func TestTraceWithoutTracerFailsWithENOSYS(t *testing.T) {
	// With no ptracer attached the kernel fails a TRACE'd syscall with
	// ENOSYS; the errnoRet is only seen by a tracer.
	p := mustCompile(t, allowAllBut(specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActTrace, ErrnoRet: uintp(5)}))
	res := runChild(t, p, childOpts{probes: []string{"getppid"}})
	if got := res.probes["getppid"]; got != strconv.Itoa(int(unix.ENOSYS)) {
		t.Errorf("getppid = %q, want ENOSYS", got)
	}
}

func TestArgumentFilters(t *testing.T) {
	const marker = 77 // errno returned when the rule matches
	cases := []struct {
		name  string
		op    specs.LinuxSeccompOperator
		value uint64
		two   uint64
		hit   []string // probes the rule must catch
		miss  []string // probes it must let through
	}{
		{"EQ", specs.OpEqualTo, 0o22, 0, []string{"umask:0o22"}, []string{"umask:0o23", "umask:0"}},
		{"NE", specs.OpNotEqual, 0o22, 0, []string{"umask:0o23", "umask:0"}, []string{"umask:0o22"}},
		{"LT", specs.OpLessThan, 0o22, 0, []string{"umask:0o21", "umask:0"}, []string{"umask:0o22", "umask:0o777"}},
		{"LE", specs.OpLessEqual, 0o22, 0, []string{"umask:0o22", "umask:0"}, []string{"umask:0o23"}},
		{"GE", specs.OpGreaterEqual, 0o22, 0, []string{"umask:0o22", "umask:0o777"}, []string{"umask:0o21"}},
		{"GT", specs.OpGreaterThan, 0o22, 0, []string{"umask:0o23"}, []string{"umask:0o22", "umask:0"}},
		// (arg & 0o070) == 0o070: group bits all set, whatever the rest.
		{"MASKED_EQ", specs.OpMaskedEqual, 0o070, 0o070, []string{"umask:0o070", "umask:0o777", "umask:0o077"}, []string{"umask:0o060", "umask:0o007", "umask:0"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := mustCompile(t, allowAllBut(specs.LinuxSyscall{
				Names: []string{"umask"}, Action: specs.ActErrno, ErrnoRet: uintp(marker),
				Args: []specs.LinuxSeccompArg{{Index: 0, Value: tc.value, ValueTwo: tc.two, Op: tc.op}},
			}))
			res := runChild(t, p, childOpts{probes: append(append([]string(nil), tc.hit...), tc.miss...)})
			if res.err != nil {
				t.Fatalf("child: %v\n%s", res.err, res.stderr)
			}
			for _, pr := range tc.hit {
				if got := res.probes[pr]; got != strconv.Itoa(marker) {
					t.Errorf("%s = %q, want caught (errno %d)", pr, got, marker)
				}
			}
			for _, pr := range tc.miss {
				if got := res.probes[pr]; got != "ok" {
					t.Errorf("%s = %q, want let through", pr, got)
				}
			}
		})
	}
}

func TestSameArgumentTwiceMeansEither(t *testing.T) {
	p := mustCompile(t, allowAllBut(specs.LinuxSyscall{
		Names: []string{"umask"}, Action: specs.ActErrno, ErrnoRet: uintp(77),
		Args: []specs.LinuxSeccompArg{{Index: 0, Value: 0o11, Op: specs.OpEqualTo}, {Index: 0, Value: 0o22, Op: specs.OpEqualTo}},
	}))
	res := runChild(t, p, childOpts{probes: []string{"umask:0o11", "umask:0o22", "umask:0o33"}})
	want := map[string]string{"umask:0o11": "77", "umask:0o22": "77", "umask:0o33": "ok"}
	for k, v := range want {
		if res.probes[k] != v {
			t.Errorf("%s = %q, want %q", k, res.probes[k], v)
		}
	}
}

func TestDefaultProfileConfinesAndLetsAShellRun(t *testing.T) {
	requireBusybox(t)
	p := mustCompile(t, DefaultProfile())
	eperm := strconv.Itoa(int(unix.EPERM))
	einval := strconv.Itoa(int(unix.EINVAL))
	probes := map[string]string{
		"keyctl":                 eperm,
		"unshare:0x10000000":     eperm,  // CLONE_NEWUSER
		"unshare:0x20000":        eperm,  // CLONE_NEWNS
		"clone:0x10000200":       eperm,  // CLONE_NEWUSER|CLONE_FS: the filter refuses before the kernel can
		"clone:0x40010000":       eperm,  // CLONE_NEWNET|CLONE_THREAD
		"clone:0x10000":          einval, // CLONE_THREAD alone: passes the filter, the kernel says EINVAL
		"clone3":                 strconv.Itoa(int(unix.ENOSYS)),
		"personality:0xffffffff": "ok",
		"personality:0x0":        "ok",
		"personality:0x400000":   eperm, // READ_IMPLIES_EXEC
		"getppid":                strconv.Itoa(os.Getpid()),
		"nr:1000":                strconv.Itoa(int(unix.ENOSYS)), // newer than the profile: ENOSYS, so libcs fall back
	}
	var names []string
	for k := range probes {
		names = append(names, k)
	}
	script := "echo shell-ok; " + busybox.Path + " unshare -U " + busybox.Path + " true; echo unshare-rc=$?"
	res := runChild(t, p, childOpts{probes: names, exec: []string{busybox.Path, "sh", "-c", script}})
	if res.err != nil {
		t.Fatalf("child: %v\nstdout %s\nstderr %s", res.err, res.stdout, res.stderr)
	}
	for k, want := range probes {
		if got := res.probes[k]; got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(res.stdout, "shell-ok\n") {
		t.Errorf("busybox shell did not run under the default profile: stdout %q stderr %q", res.stdout, res.stderr)
	}
	if !strings.Contains(res.stdout, "unshare-rc=1") || !strings.Contains(res.stderr, "Operation not permitted") {
		t.Errorf("unshare -U inside the shell: stdout %q stderr %q, want it refused with EPERM", res.stdout, res.stderr)
	}
}

func TestNotifyDeliversFdToListener(t *testing.T) {
	for _, flags := range [][]specs.LinuxSeccompFlag{nil, {"SECCOMP_FILTER_FLAG_TSYNC"}} {
		t.Run(fmt.Sprint(flags), func(t *testing.T) { testNotify(t, flags) })
	}
}

func testNotify(t *testing.T, flags []specs.LinuxSeccompFlag) {
	s := allowAllBut(specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActNotify})
	s.Flags = flags
	s.ListenerPath = filepath.Join(t.TempDir(), "agent.sock")
	s.ListenerMetadata = "test-metadata"
	p := mustCompile(t, s)
	if !p.NeedsNotifyFd() {
		t.Fatal("NOTIFY program does not ask for a notify fd")
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.ListenerPath, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })

	type agentResult struct {
		state specs.ContainerProcessState
		sysc  string
		err   error
	}
	done := make(chan agentResult, 1)
	go func() {
		var r agentResult
		defer func() { done <- r }()
		conn, err := ln.AcceptUnix()
		if err != nil {
			r.err = err
			return
		}
		defer conn.Close()
		buf, oob := make([]byte, 1<<16), make([]byte, unix.CmsgSpace(4))
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil {
			r.err = err
			return
		}
		if r.err = json.Unmarshal(buf[:n], &r.state); r.err != nil {
			return
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			r.err = err
			return
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			r.err = err
			return
		}
		fd := libseccomp.ScmpFd(fds[0])
		defer unix.Close(fds[0])
		req, err := libseccomp.NotifReceive(fd)
		if err != nil {
			r.err = err
			return
		}
		r.sysc, _ = req.Data.Syscall.GetName()
		r.err = libseccomp.NotifRespond(fd, &libseccomp.ScmpNotifResp{ID: req.ID, Val: 4242})
	}()

	res := runChild(t, p, childOpts{probes: []string{"getppid"}, listener: s.ListenerPath})
	ar := <-done
	if ar.err != nil {
		t.Fatalf("agent: %v", ar.err)
	}
	if res.err != nil {
		t.Fatalf("child: %v\n%s", res.err, res.stderr)
	}
	if ar.sysc != "getppid" {
		t.Errorf("agent saw syscall %q, want getppid", ar.sysc)
	}
	if got := res.probes["getppid"]; got != "4242" {
		t.Errorf("getppid = %q, want the agent's 4242", got)
	}
	want := specs.ContainerProcessState{Version: specs.Version, Fds: []string{specs.SeccompFdName}, Metadata: "test-metadata"}
	if ar.state.Version != want.Version || !reflect.DeepEqual(ar.state.Fds, want.Fds) || ar.state.Metadata != want.Metadata ||
		ar.state.State.ID != "seccomp-test" || ar.state.Pid == 0 || ar.state.Pid != ar.state.State.Pid {
		t.Errorf("agent got state %+v", ar.state)
	}
}

func TestTsyncFiltersThreadsThatAlreadyExist(t *testing.T) {
	rule := specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActErrno, ErrnoRet: uintp(99)}
	without := runChild(t, mustCompile(t, allowAllBut(rule)), childOpts{probes: []string{"getppid", "prethread-getppid"}})
	if without.probes["getppid"] != "99" || without.probes["prethread-getppid"] != strconv.Itoa(os.Getpid()) {
		t.Errorf("without TSYNC: probes %v, want only the loading thread filtered", without.probes)
	}
	s := allowAllBut(rule)
	s.Flags = []specs.LinuxSeccompFlag{"SECCOMP_FILTER_FLAG_TSYNC"}
	with := runChild(t, mustCompile(t, s), childOpts{probes: []string{"getppid", "prethread-getppid"}})
	if with.err != nil {
		t.Fatalf("child: %v\n%s", with.err, with.stderr)
	}
	if with.probes["getppid"] != "99" || with.probes["prethread-getppid"] != "99" {
		t.Errorf("with TSYNC: probes %v, want every thread filtered", with.probes)
	}
}

// auditLog receives the kernel's audit records through the read-only
// multicast group of the audit netlink socket. Unlike the kernel log, that
// feed is not rate-limited and works with or without auditd.
type auditLog struct{ fd int }

func openAuditLog(t *testing.T) auditLog {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("reading audit records needs root (CAP_AUDIT_READ)")
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_AUDIT)
	if err != nil {
		t.Fatalf("audit netlink socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	const auditNlgrpReadlog = 1
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (auditNlgrpReadlog - 1)}); err != nil {
		t.Fatalf("join audit readlog group: %v", err)
	}
	tv := unix.Timeval{Sec: 1}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return auditLog{fd}
}

// waitFor returns the first seccomp record (type 1326) containing all of
// parts. Records are sent by the kauditd thread, so they may lag the syscall.
func (a auditLog) waitFor(t *testing.T, parts ...string) string {
	t.Helper()
	const auditSeccomp = 1326
	buf := make([]byte, 1<<16)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(a.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("read audit records: %v", err)
		}
		// One record per datagram. The header is read by hand: the kernel's
		// audit multicast does not keep nlmsg_len consistent, so the
		// generic netlink parser refuses these messages.
		if n < unix.NLMSG_HDRLEN || binary.NativeEndian.Uint16(buf[4:6]) != auditSeccomp {
			continue
		}
		rec := string(buf[unix.NLMSG_HDRLEN:n]) + " "
		found := true
		for _, p := range parts {
			found = found && strings.Contains(rec, p)
		}
		if found {
			return rec
		}
	}
	t.Fatalf("no seccomp audit record with %q", parts)
	return ""
}

func TestLogActionAndLogFlagReachTheKernelLog(t *testing.T) {
	k := openAuditLog(t)
	getppid := " syscall=" + strconv.Itoa(unix.SYS_GETPPID) + " "
	t.Run("SCMP_ACT_LOG", func(t *testing.T) {
		p := mustCompile(t, allowAllBut(specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActLog}))
		res := runChild(t, p, childOpts{probes: []string{"getppid"}})
		if res.err != nil || res.probes["getppid"] != strconv.Itoa(os.Getpid()) {
			t.Fatalf("LOG must allow the call: %v %v", res.err, res.probes)
		}
		k.waitFor(t, " pid="+strconv.Itoa(res.pid)+" ", getppid, "code=0x7ffc0000")
	})
	t.Run("SECCOMP_FILTER_FLAG_LOG", func(t *testing.T) {
		// ERRNO is only logged when the filter asks for it with the flag.
		s := allowAllBut(specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActErrno, ErrnoRet: uintp(99)})
		s.Flags = []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagLog}
		res := runChild(t, mustCompile(t, s), childOpts{probes: []string{"getppid"}})
		if res.probes["getppid"] != "99" {
			t.Fatalf("probes %v", res.probes)
		}
		k.waitFor(t, " pid="+strconv.Itoa(res.pid)+" ", getppid, "code=0x50000") // SECCOMP_RET_ERRNO; the log omits the errno
	})
}

func TestLoadWithoutNoNewPrivsOrCapSysAdminExplains(t *testing.T) {
	p := mustCompile(t, allowAllBut(specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActErrno}))
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, with its changed capabilities and any
		// filter, exits with the goroutine.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		data[unix.CAP_SYS_ADMIN/32].Effective &^= 1 << (unix.CAP_SYS_ADMIN % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		_, err := p.Load()
		errc <- err
	}()
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "no_new_privs") || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("Load without no_new_privs = %v, want an error naming no_new_privs", err)
	}
}

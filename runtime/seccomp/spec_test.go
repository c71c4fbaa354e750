package seccomp

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestParseRejectsBadInputNamingTheField(t *testing.T) {
	u := func(v uint) *uint { return &v }
	ok := specs.LinuxSyscall{Names: []string{"getpid"}, Action: specs.ActErrno}
	cases := []struct {
		name string
		s    *specs.LinuxSeccomp
		want string
	}{
		{"nil section", nil, "linux.seccomp: no seccomp section"},
		{"unknown default action", &specs.LinuxSeccomp{DefaultAction: "SCMP_ACT_NOPE"},
			`linux.seccomp.defaultAction: unknown action "SCMP_ACT_NOPE"`},
		{"unknown syscall action", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{ok, ok, ok,
			{Names: []string{"read"}, Action: "SCMP_ACT_FOO"}}},
			`linux.seccomp.syscalls[3].action: unknown action "SCMP_ACT_FOO"`},
		{"unknown operator", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{
			{Names: []string{"read"}, Action: specs.ActErrno, Args: []specs.LinuxSeccompArg{{Index: 0, Op: specs.OpEqualTo}, {Index: 1, Op: "SCMP_CMP_SORTA"}}}}},
			`linux.seccomp.syscalls[0].args[1].op: unknown operator "SCMP_CMP_SORTA"`},
		{"argument index out of range", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{
			{Names: []string{"read"}, Action: specs.ActErrno, Args: []specs.LinuxSeccompArg{{Index: 6, Op: specs.OpEqualTo}}}}},
			`linux.seccomp.syscalls[0].args[0].index: 6 is out of range`},
		{"unknown architecture", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Architectures: []specs.Arch{specs.ArchX86_64, "SCMP_ARCH_Z80"}},
			`linux.seccomp.architectures[1]: unknown architecture "SCMP_ARCH_Z80"`},
		{"unknown flag", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Flags: []specs.LinuxSeccompFlag{"SECCOMP_FILTER_FLAG_FAST"}},
			`linux.seccomp.flags[0]: unknown flag "SECCOMP_FILTER_FLAG_FAST"`},
		{"errnoRet on allow", &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Syscalls: []specs.LinuxSyscall{
			{Names: []string{"read"}, Action: specs.ActAllow, ErrnoRet: u(5)}}},
			`linux.seccomp.syscalls[0].action: errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE`},
		{"errnoRet too large", &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, DefaultErrnoRet: u(70000)},
			`linux.seccomp.defaultAction: errnoRet 70000 is above the largest errno 4095`},
		{"no names", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Action: specs.ActErrno}}},
			`linux.seccomp.syscalls[0].names: empty`},
		{"empty name", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Names: []string{"read", ""}, Action: specs.ActErrno}}},
			`linux.seccomp.syscalls[0].names[1]: empty syscall name`},
		{"empty name in a rule that repeats the default", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Names: []string{""}, Action: specs.ActAllow}}},
			`linux.seccomp.syscalls[0].names[0]: empty syscall name`},
		{"notify without listener", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Names: []string{"read"}, Action: specs.ActNotify}}},
			`linux.seccomp.listenerPath: required when an action is SCMP_ACT_NOTIFY`},
		{"listener without notify", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, ListenerPath: "/run/agent.sock"},
			`linux.seccomp.listenerPath: set but no action is SCMP_ACT_NOTIFY`},
		{"wait killable without notify", &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Flags: []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagWaitKillableRecv}},
			`linux.seccomp.flags: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a SCMP_ACT_NOTIFY rule`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(tc.s)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("parse = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseNormalises(t *testing.T) {
	u := func(v uint) *uint { return &v }
	s := &specs.LinuxSeccomp{
		DefaultAction:   specs.ActErrno,
		DefaultErrnoRet: u(38),
		Architectures:   []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX86_64},
		Flags:           []specs.LinuxSeccompFlag{"SECCOMP_FILTER_FLAG_TSYNC", specs.LinuxSeccompFlagSpecAllow},
		ListenerPath:    "/run/agent.sock",
		Syscalls: []specs.LinuxSyscall{
			{Names: []string{"read", "write"}, Action: specs.ActAllow},
			// Same action as the default: dropped, libseccomp would refuse it.
			{Names: []string{"mount"}, Action: specs.ActErrno, ErrnoRet: u(38)},
			// Two comparisons of argument 0: alternatives, one set each.
			{Names: []string{"personality"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{
				{Index: 0, Value: 0, Op: specs.OpEqualTo}, {Index: 0, Value: 8, Op: specs.OpEqualTo}}},
			// Different arguments: one set, ANDed.
			{Names: []string{"socket"}, Action: specs.ActNotify, Args: []specs.LinuxSeccompArg{
				{Index: 0, Value: 16, Op: specs.OpEqualTo}, {Index: 2, Value: 9, Op: specs.OpEqualTo}}},
			{Names: []string{"ptrace"}, Action: specs.ActErrno},
			{Names: []string{"kill"}, Action: specs.ActKill},
		},
	}
	p, err := parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if p.defaultAction != (action{kind: actErrno, errno: 38}) {
		t.Errorf("default action %+v", p.defaultAction)
	}
	if strings.Join(p.arches, ",") != "x86_64,x86" {
		t.Errorf("arches %v, want deduplicated x86_64,x86", p.arches)
	}
	if want := FlagTsync | FlagSpecAllow | FlagNewListener | FlagTsyncESRCH; p.flags != want {
		t.Errorf("flags %#x, want %#x (NOTIFY adds NEW_LISTENER, with TSYNC also TSYNC_ESRCH)", p.flags, want)
	}
	var got []string
	for _, r := range p.rules {
		got = append(got, r.name)
	}
	if strings.Join(got, ",") != "read,write,personality,socket,ptrace,kill" {
		t.Errorf("rules %v", got)
	}
	if sets := p.rules[2].condSets; len(sets) != 2 || len(sets[0]) != 1 || len(sets[1]) != 1 {
		t.Errorf("personality condition sets %+v, want two alternatives", sets)
	}
	if sets := p.rules[3].condSets; len(sets) != 1 || len(sets[0]) != 2 {
		t.Errorf("socket condition sets %+v, want one set of two", sets)
	}
	if p.rules[4].action != (action{kind: actErrno, errno: defaultErrno}) {
		t.Errorf("ERRNO without errnoRet = %+v, want EPERM", p.rules[4].action)
	}
	if p.rules[5].action.kind != actKillThread || p.rules[5].field() != "linux.seccomp.syscalls[5].names[0]" {
		t.Errorf("SCMP_ACT_KILL rule %+v, want kill-thread naming its field", p.rules[5])
	}
}

func TestDefaultProfileIsValid(t *testing.T) {
	p, err := parse(DefaultProfile())
	if err != nil {
		t.Fatal(err)
	}
	if p.defaultAction != (action{kind: actErrno, errno: 1}) {
		t.Errorf("default action %+v, want EPERM", p.defaultAction)
	}
	seen := map[string]bool{}
	for _, r := range p.rules {
		if r.action.kind == actAllow && len(r.condSets[0]) == 0 {
			if seen[r.name] {
				t.Errorf("%s allowed twice", r.name)
			}
			seen[r.name] = true
		}
	}
	for _, forbidden := range []string{"unshare", "setns", "mount", "umount2", "keyctl", "add_key", "request_key",
		"bpf", "perf_event_open", "kexec_load", "init_module", "reboot", "settimeofday", "clock_settime",
		"open_by_handle_at", "userfaultfd", "clone", "personality", "clone3", "swapon", "acct", "syslog"} {
		if seen[forbidden] {
			t.Errorf("%s is allowed unconditionally", forbidden)
		}
	}
	if a, b := DefaultProfile(), DefaultProfile(); &a.Syscalls[0].Names[0] == &b.Syscalls[0].Names[0] {
		t.Error("DefaultProfile shares its slices between calls")
	}
}

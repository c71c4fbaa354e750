package agent

import (
	"archive/tar"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

func TestParseSignalTakesNamesAndNumbers(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"TERM": syscall.SIGTERM, "SIGTERM": syscall.SIGTERM, "sigkill": syscall.SIGKILL, "hup": syscall.SIGHUP,
		"9": syscall.SIGKILL, "15": syscall.SIGTERM, "USR1": syscall.SIGUSR1, "SIGWINCH": syscall.SIGWINCH, "64": 64,
	} {
		got, err := ParseSignal(in)
		if err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"": "signal: empty", "0": "signal 0: out of range", "65": "signal 65: out of range",
		"-1": "out of range", "SIGNOPE": `signal "SIGNOPE": unknown`, "TERM9": "unknown",
	} {
		_, err := ParseSignal(in)
		var inv *InvalidError
		if err == nil || !strings.Contains(err.Error(), want) || !errors.As(err, &inv) {
			t.Errorf("ParseSignal(%q): err %v, want invalid input %q", in, err, want)
		}
	}
}

func TestParseStdioMessage(t *testing.T) {
	ch, data, err := ParseStdioMessage([]byte{api.ChannelStdin, 'h', 'i'})
	if err != nil || ch != api.ChannelStdin || string(data) != "hi" {
		t.Errorf("stdin message: %d %q %v", ch, data, err)
	}
	if ch, data, err := ParseStdioMessage([]byte{api.ChannelStderr}); err != nil || ch != api.ChannelStderr || len(data) != 0 {
		t.Errorf("empty stderr message: %d %q %v", ch, data, err)
	}
	if _, _, err := ParseStdioMessage(nil); err == nil {
		t.Error("an empty message has no channel, yet it parsed")
	}
	if _, _, err := ParseStdioMessage([]byte{7, 'x'}); err == nil {
		t.Error("channel 7 parsed")
	}
}

func TestResizeMessageIsWhatBerthInitReads(t *testing.T) {
	got := resizeMessage(api.TermSize{Rows: 0x0102, Cols: 80})
	if want := []byte{3, 0x02, 0x01, 80, 0}; !slices.Equal(got, want) {
		t.Errorf("resize message %v, want %v", got, want)
	}
}

func TestParseProcStat(t *testing.T) {
	// comm with a space and a ')' in it, as a process may name itself.
	s := "4242 (my) proc) S 4200 4242 4242 34816 4242 4194560 100 0 0 0 250 50 0 0 20 0 1 0 123456 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	p, start, err := parseProcStat(s)
	if err != nil {
		t.Fatal(err)
	}
	if p.Pid != 4242 || p.PPid != 4200 || p.Comm != "my) proc" || p.TTY != 34816 || p.CPUTicks != 300 || start != 123456 {
		t.Errorf("parsed %+v start %d", p, start)
	}
	if _, _, err := parseProcStat("12 (x) S 1"); err == nil {
		t.Error("a truncated stat parsed")
	}
}

func TestFormatTopAsPsDoes(t *testing.T) {
	now := time.Date(2026, 11, 23, 15, 4, 0, 0, time.UTC)
	procs := []procInfo{
		{Pid: 100, PPid: 90, UID: 0, TTY: 0, CPUTicks: 6000, Start: now.Add(-100 * time.Minute), Comm: "berth-init",
			Args: []string{"/dev/.berth-init", "-l", "/dev/.berth-log", "--", "sh"}},
		{Pid: 101, PPid: 100, UID: 1000, TTY: 136<<8 | 3, CPUTicks: 100*86400 + 100*3661, Start: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC), Comm: "sh", Args: []string{"sh"}},
		{Pid: 102, PPid: 100, UID: 7, Start: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), Comm: "kworker"},
	}
	names := map[uint32]string{0: "root", 1000: "app"}
	top := FormatTop(procs, now, func(u uint32) string { return names[u] })
	if !slices.Equal(top.Titles, []string{"UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"}) {
		t.Errorf("titles %q", top.Titles)
	}
	want := [][]string{
		{"root", "100", "90", "1", "13:24", "?", "00:01:00", "/dev/.berth-init -l /dev/.berth-log -- sh"},
		{"app", "101", "100", "0", "Mar02", "pts/3", "1-01:01:01", "sh"},
		{"7", "102", "100", "0", "2025", "?", "00:00:00", "[kworker]"},
	}
	for i, row := range want {
		if i >= len(top.Processes) || !slices.Equal(top.Processes[i], row) {
			t.Errorf("row %d: %q, want %q", i, top.Processes[i], row)
		}
	}
	if got := FormatTop(nil, now, nil); got.Processes == nil {
		t.Error("no processes must be an empty list, not null")
	}
	if c := cpuPercent(1000, time.Second); c != 99 {
		t.Errorf("C of a process using more than it lived: %d, want capped at 99", c)
	}
	if n := ttyName(4<<8 | 65); n != "ttyS1" {
		t.Errorf("tty 4,65: %q", n)
	}
}

func TestArchiveCheckRefusesHostileEntries(t *testing.T) {
	reg := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeReg} }
	for name, tc := range map[string]struct {
		hdrs []*tar.Header
		want string
	}{
		"absolute":           {[]*tar.Header{reg("/etc/passwd")}, `entry "/etc/passwd": absolute path`},
		"dot dot":            {[]*tar.Header{reg("a/../../etc/passwd")}, "contains .."},
		"through own link":   {[]*tar.Header{{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/"}, reg("l/etc/passwd")}, `goes through "l", a symlink made by the same archive`},
		"deep own link":      {[]*tar.Header{{Name: "a/l", Typeflag: tar.TypeSymlink, Linkname: "../.."}, reg("a/l/b/c")}, `goes through "a/l"`},
		"hard link out":      {[]*tar.Header{{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/shadow"}}, "contains .."},
		"hard link abs":      {[]*tar.Header{{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}}, "absolute path"},
		"device":             {[]*tar.Header{{Name: "sda", Typeflag: tar.TypeBlock}}, "is not supported"},
		"owner out of range": {[]*tar.Header{{Name: "f", Typeflag: tar.TypeReg, Uid: 65536}}, "owner 65536:0 is outside the container's 65536 ids"},
	} {
		t.Run(name, func(t *testing.T) {
			c := archiveCheck{ids: 65536}
			var err error
			for _, h := range tc.hdrs {
				if _, err = c.check(h); err != nil {
					break
				}
			}
			var inv *InvalidError
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &inv) {
				t.Fatalf("err %v, want invalid input %q", err, tc.want)
			}
		})
	}
	c := archiveCheck{ids: 65536}
	for _, h := range []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir}, {Name: "d/", Typeflag: tar.TypeDir, Uid: 1000},
		{Name: "d/link", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}, // in the container's root
		{Name: "d/f", Typeflag: tar.TypeReg}, {Name: "d/h", Typeflag: tar.TypeLink, Linkname: "d/f"},
		{Name: "d/link", Typeflag: tar.TypeReg},
	} {
		if _, err := c.check(h); err != nil {
			t.Errorf("%s refused: %v", h.Name, err)
		}
	}
}

func TestGenerateHandsTTYAndStdinToTheInit(t *testing.T) {
	for _, tc := range []struct {
		tty, stdin bool
		want       []string
	}{
		{false, false, nil},
		{true, false, []string{"-t"}},
		{false, true, []string{"-i"}},
		{true, true, []string{"-t", "-i"}},
	} {
		in := genInput()
		in.Spec.TTY, in.Spec.Stdin = tc.tty, tc.stdin
		s, err := Generate(in)
		if err != nil {
			t.Fatal(err)
		}
		want := append(append([]string{initInContainer, "-l", logDirInContainer, "-s", "10485760", "-n", "3"}, tc.want...), "--", "sh")
		if !slices.Equal(s.Process.Args, want) || s.Process.Terminal {
			t.Errorf("tty %v stdin %v: args %q terminal %v, want %q and the init's own terminal", tc.tty, tc.stdin, s.Process.Args, s.Process.Terminal, want)
		}
	}
	if err := (ContainerSpec{Image: "busybox", NoInit: true, Stdin: true}).Validate(); err == nil || !strings.Contains(err.Error(), "tty/stdin: need Berth's init") {
		t.Errorf("stdin without init: %v", err)
	}
}

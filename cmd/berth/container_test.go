package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "100": 100, "4k": 4 << 10, "512m": 512 << 20, "2g": 2 << 30, "64MB": 64 << 20} {
		got, err := parseBytes(in)
		if err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "m", "-1", "1.5g", "12x"} {
		if _, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) succeeded", in)
		}
	}
}

func TestParseVolume(t *testing.T) {
	for in, want := range map[string]api.Mount{
		"data:/var/lib/data":   {Type: api.MountVolume, Source: "data", Target: "/var/lib/data"},
		"data:/d:ro":           {Type: api.MountVolume, Source: "data", Target: "/d", ReadOnly: true},
		"/srv/www:/www:rw":     {Type: api.MountBind, Source: "/srv/www", Target: "/www"},
		"/etc/hosts:/h.txt:ro": {Type: api.MountBind, Source: "/etc/hosts", Target: "/h.txt", ReadOnly: true},
	} {
		got, err := parseVolume(in)
		if err != nil || got != want {
			t.Errorf("parseVolume(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"data", ":/d", "data:", "data:/d:rx", "a:b:c:d"} {
		if _, err := parseVolume(in); err == nil {
			t.Errorf("parseVolume(%q) succeeded", in)
		}
	}
}

func TestParsePublish(t *testing.T) {
	got, err := parsePublish("8080:80/udp")
	if err != nil || got != (api.Port{HostPort: 8080, Port: 80, Protocol: "udp"}) {
		t.Errorf("parsePublish = %+v, %v", got, err)
	}
	if got, err := parsePublish("80"); err != nil || got != (api.Port{Port: 80}) {
		t.Errorf("parsePublish(80) = %+v, %v", got, err)
	}
	for _, in := range []string{"", "a:80", "80:b"} {
		if _, err := parsePublish(in); err == nil {
			t.Errorf("parsePublish(%q) succeeded", in)
		}
	}
}

func TestRunFlagsInstance(t *testing.T) {
	t.Setenv("FROM_HOST", "yes")
	f := runFlags{name: "web", rm: true, memory: "64m", cpus: 0.5, restart: "no", tty: true, interactive: true,
		templateFlags: templateFlags{env: []string{"A=1", "FROM_HOST", "UNSET_ONE"}, volumes: []string{"data:/data"},
			labels: []string{"tier=front"}, init: true, entrypoint: "/bin/sh"}}
	in, err := f.instance("acme", "busybox", []string{"-c", "true"})
	if err != nil {
		t.Fatal(err)
	}
	tm := in.Spec.Template
	if in.Name != "web" || in.Tenant != "acme" || !in.Spec.AutoRemove || tm.Restart != api.RestartNever ||
		tm.Resources.Memory != 64<<20 || tm.Resources.CPU != 500 || tm.Env["A"] != "1" || tm.Env["FROM_HOST"] != "yes" ||
		len(tm.Env) != 2 || tm.Labels["tier"] != "front" || !tm.TTY || !tm.Stdin || tm.NoInit ||
		len(tm.Entrypoint) != 1 || strings.Join(tm.Command, " ") != "-c true" || len(tm.Mounts) != 1 {
		t.Errorf("instance = %+v", in)
	}

	for name, f := range map[string]runFlags{
		"rm with restart": {rm: true, restart: "always"},
		"bad restart":     {restart: "sometimes"},
		"bad memory":      {restart: "no", memory: "lots"},
		"bad name":        {restart: "no", name: "Web_1"},
		"negative cpus":   {restart: "no", cpus: -1},
		"relative target": {restart: "no", templateFlags: templateFlags{volumes: []string{"data:data"}}},
		"two checks":      {restart: "no", templateFlags: templateFlags{healthCmd: "true", healthHTTP: "/"}},
	} {
		if _, err := f.instance("acme", "busybox", nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	f = runFlags{restart: "no"}
	in, err = f.instance("acme", "busybox", nil)
	if err != nil || !strings.HasPrefix(in.Name, "c-") || api.ValidName(in.Name) != nil {
		t.Errorf("generated name %q, %v", in.Name, err)
	}
}

func TestDetachReader(t *testing.T) {
	keys, err := parseDetachKeys("ctrl-p,ctrl-q")
	if err != nil || !bytes.Equal(keys, []byte{16, 17}) {
		t.Fatalf("parseDetachKeys = %v, %v", keys, err)
	}
	if _, err := parseDetachKeys("ctrl-1"); err == nil {
		t.Error("ctrl-1 accepted")
	}
	for _, tc := range []struct {
		in, want string
		detached bool
	}{
		{"hello", "hello", false},
		{"ab\x10\x11cd", "ab", true},
		{"a\x10b", "a\x10b", false},
		{"\x10\x10\x11", "\x10", true},
	} {
		d := &detachReader{r: strings.NewReader(tc.in), keys: keys}
		var out []byte
		var err error
		buf := make([]byte, 2)
		for {
			var n int
			n, err = d.Read(buf)
			out = append(out, buf[:n]...)
			if err != nil {
				break
			}
		}
		if string(out) != tc.want || errors.Is(err, api.ErrDetached) != tc.detached {
			t.Errorf("%q: read %q, %v; want %q, detached %v", tc.in, out, err, tc.want, tc.detached)
		}
	}
}

func TestPsFilter(t *testing.T) {
	in := &api.Instance{Meta: api.Meta{Name: "web-1", Labels: map[string]string{"service": "web"}},
		Spec:   api.InstanceSpec{Service: "web", Node: "n1", Template: api.Template{Labels: map[string]string{"tier": "front"}}},
		Status: api.InstanceStatus{Phase: api.PhaseExited}}
	for _, tc := range []struct {
		f    psFilter
		want bool
	}{
		{psFilter{}, false},
		{psFilter{all: true}, true},
		{psFilter{all: true, filters: []string{"status=exited", "name=web", "node=n1", "service=web", "label=tier=front", "label=service"}}, true},
		{psFilter{all: true, filters: []string{"label=tier=back"}}, false},
		{psFilter{all: true, filters: []string{"status=running"}}, false},
	} {
		got, err := tc.f.match(in)
		if err != nil || got != tc.want {
			t.Errorf("%+v: match = %v, %v", tc.f, got, err)
		}
	}
	if _, err := (psFilter{filters: []string{"colour=red"}}).match(in); err == nil {
		t.Error("unknown filter key accepted")
	}
}

func TestStartFailureCodes(t *testing.T) {
	for reason, want := range map[string]int{
		"exec /nope: no such file or directory": exitNotFound,
		"exec /etc/passwd: permission denied":   exitNotExecutable,
		"pull busybox: unauthorized":            exitBerth,
	} {
		err := startFailure(&api.Instance{Status: api.InstanceStatus{Phase: api.PhaseFailed, Reason: reason}})
		if exitCode(err) != want {
			t.Errorf("%q: exit code %d, want %d", reason, exitCode(err), want)
		}
	}
	if startFailure(&api.Instance{Status: api.InstanceStatus{Phase: api.PhaseExited}}) != nil {
		t.Error("an exited instance is not a start failure")
	}
}

func TestStatsRow(t *testing.T) {
	t0 := time.Unix(100, 0)
	r := statsRowOf("a", api.Stats{Time: t0, CPUNanos: 1e9}, api.Stats{Time: t0.Add(2 * time.Second), CPUNanos: 2e9, MemoryBytes: 3 << 20})
	if r.CPUPercent != 50 || r.MemoryBytes != 3<<20 {
		t.Errorf("row = %+v", r)
	}
	if humanBytes(1536) != "1.5KiB" || humanBytes(10) != "10B" || humanBytes(3<<30) != "3.0GiB" {
		t.Errorf("humanBytes: %s %s %s", humanBytes(1536), humanBytes(10), humanBytes(3<<30))
	}
}

func TestContainerPath(t *testing.T) {
	for in, want := range map[string][2]string{"web:/etc/hosts": {"web", "/etc/hosts"}, "./a:b": {}, "/x:y": {}, "plain": {}} {
		n, p, ok := containerPath(in)
		if ok != (want[0] != "") || n != want[0] || p != want[1] {
			t.Errorf("containerPath(%q) = %q, %q, %v", in, n, p, ok)
		}
	}
}

// The copy out of a container never writes outside its destination,
// whatever names the archive holds.
func TestExtractTarStaysInside(t *testing.T) {
	mk := func(entries ...*tar.Header) *tar.Reader {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range entries {
			if h.Typeflag == tar.TypeReg {
				h.Size = int64(len("data"))
			}
			tw.WriteHeader(h)
			if h.Typeflag == tar.TypeReg {
				io.WriteString(tw, "data")
			}
		}
		tw.Close()
		return tar.NewReader(&b)
	}
	dir := t.TempDir()
	dest := filepath.Join(dir, "dest")
	os.Mkdir(dest, 0o755)
	if err := extractTar(mk(&tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}), dest, "x", ""); err == nil {
		t.Error("../escape accepted")
	}
	err := extractTar(mk(&tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/"},
		&tar.Header{Name: "link/escape", Typeflag: tar.TypeReg, Mode: 0o644}), dest, "x", "")
	if err == nil {
		t.Error("write through a symlink out of the destination accepted")
	}
	if _, err := os.Stat(filepath.Join(dir, "escape")); err == nil {
		t.Fatal("a file was written outside the destination")
	}
	// A file named for its source, renamed to the destination's name.
	if err := extractTar(mk(&tar.Header{Name: "hosts", Typeflag: tar.TypeReg, Mode: 0o644}), dest, "hosts", "copy.txt"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dest, "copy.txt")); err != nil || string(b) != "data" {
		t.Errorf("copy.txt = %q, %v", b, err)
	}
}

// A tree written by writeTar comes back out of extractTar the same.
func TestTarRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "f"), []byte("hello"), 0o600)
	os.Symlink("sub/f", filepath.Join(src, "l"))
	var b bytes.Buffer
	if err := writeTar(&b, src); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	if err := extractTar(tar.NewReader(&b), dest, "tree", ""); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dest, "tree", "l"))
	if err != nil || string(got) != "hello" {
		t.Errorf("tree/l = %q, %v", got, err)
	}
	if st, err := os.Stat(filepath.Join(dest, "tree", "sub", "f")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("mode kept? %v %v", st, err)
	}
}

func TestInstanceEvent(t *testing.T) {
	in := &api.Instance{Meta: api.Meta{Name: "a"}, Status: api.InstanceStatus{Phase: api.PhaseExited, ExitCode: 137, Reason: "OOMKilled"}}
	e, ok := instanceEvent(api.Modified, in, api.PhaseRunning)
	if !ok || e.Action != "exited" || e.Message != "exit code 137, OOMKilled" {
		t.Errorf("event = %+v, %v", e, ok)
	}
	if _, ok := instanceEvent(api.Modified, in, api.PhaseExited); ok {
		t.Error("no change of phase made an event")
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "Less than a second", 1500 * time.Millisecond: "1 second", 90 * time.Second: "1 minute",
		5 * time.Minute: "5 minutes", 3 * time.Hour: "3 hours", 72 * time.Hour: "3 days",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

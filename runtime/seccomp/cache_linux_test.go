package seccomp

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func cacheEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestCacheReturnsTheSameProgramWithoutCompiling(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	want := mustCompile(t, DefaultProfile())

	first := NewCache(dir)
	p1, err := first.Compile(DefaultProfile())
	if err != nil {
		t.Fatal(err)
	}
	if st := first.Stats(); st != (CacheStats{Compiles: 1}) {
		t.Errorf("first use: %+v, want one compile", st)
	}
	// A new Cache on the same directory (another runtime process) hits.
	second := NewCache(dir)
	p2, err := second.Compile(DefaultProfile())
	if err != nil {
		t.Fatal(err)
	}
	if st := second.Stats(); st != (CacheStats{Hits: 1}) {
		t.Errorf("second use: %+v, want one hit and no compile", st)
	}
	if !reflect.DeepEqual(p1, want) || !reflect.DeepEqual(p2, want) {
		t.Error("cached program differs from a fresh compile")
	}
	// A different listener path is the same program: still a hit.
	s := DefaultProfile()
	s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActNotify})
	s.ListenerPath = "/run/a.sock"
	if _, err := second.Compile(s); err != nil {
		t.Fatal(err)
	}
	s.ListenerPath = "/run/b.sock"
	if _, err := second.Compile(s); err != nil {
		t.Fatal(err)
	}
	if st := second.Stats(); st != (CacheStats{Hits: 2, Compiles: 1}) {
		t.Errorf("after a notify profile under two listener paths: %+v, want 2 hits and 1 compile", st)
	}
	if names := cacheEntries(t, dir); len(names) != 2 || strings.HasPrefix(names[0], ".tmp") || strings.HasPrefix(names[1], ".tmp") {
		t.Errorf("cache holds %v, want two entries and no temporary files", names)
	}
}

func TestCacheRecompilesDamagedEntries(t *testing.T) {
	dir := t.TempDir()
	want := mustCompile(t, DefaultProfile())
	if _, err := CompileCached(DefaultProfile(), dir); err != nil {
		t.Fatal(err)
	}
	names := cacheEntries(t, dir)
	if len(names) != 1 {
		t.Fatalf("cache holds %v", names)
	}
	entry := filepath.Join(dir, names[0])
	good, err := os.ReadFile(entry)
	if err != nil {
		t.Fatal(err)
	}
	// An entry for another profile, put under this profile's name.
	otherDir := t.TempDir()
	if _, err := CompileCached(allowAllBut(specs.LinuxSyscall{Names: []string{"getppid"}, Action: specs.ActErrno}), otherDir); err != nil {
		t.Fatal(err)
	}
	foreign, err := os.ReadFile(filepath.Join(otherDir, cacheEntries(t, otherDir)[0]))
	if err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/2] ^= 0x40

	cases := map[string][]byte{
		"empty":         {},
		"truncated":     good[:len(good)/2],
		"flipped bit":   flipped,
		"garbage":       []byte("not a program at all, but long enough to have a header and a checksum......"),
		"foreign entry": foreign,
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(entry, content, 0o600); err != nil {
				t.Fatal(err)
			}
			c := NewCache(dir)
			p, err := c.Compile(DefaultProfile())
			if err != nil {
				t.Fatal(err)
			}
			if st := c.Stats(); st != (CacheStats{Compiles: 1, Corrupt: 1}) {
				t.Errorf("stats %+v, want the damage noticed and one compile", st)
			}
			if !reflect.DeepEqual(p, want) {
				t.Error("program after recompiling differs from a fresh compile")
			}
			// The entry was replaced: the next start hits again.
			again := NewCache(dir)
			if _, err := again.Compile(DefaultProfile()); err != nil {
				t.Fatal(err)
			}
			if st := again.Stats(); st != (CacheStats{Hits: 1}) {
				t.Errorf("after repair: %+v, want a hit", st)
			}
		})
	}
}

func TestCacheRejectsBadSpecEvenWhenCached(t *testing.T) {
	dir := t.TempDir()
	s := DefaultProfile()
	if _, err := CompileCached(s, dir); err != nil {
		t.Fatal(err)
	}
	// Same BPF-relevant content, but a listener path without NOTIFY.
	s.ListenerPath = "/run/agent.sock"
	if _, err := CompileCached(s, dir); err == nil || !strings.Contains(err.Error(), "linux.seccomp.listenerPath") {
		t.Fatalf("got %v, want the listenerPath error", err)
	}
	bad := DefaultProfile()
	bad.Syscalls[0].Action = "SCMP_ACT_FOO"
	if _, err := CompileCached(bad, dir); err == nil || !strings.Contains(err.Error(), `linux.seccomp.syscalls[0].action: unknown action "SCMP_ACT_FOO"`) {
		t.Fatalf("got %v", err)
	}
	if n := len(cacheEntries(t, dir)); n != 1 {
		t.Errorf("bad specs left %d entries, want 1", n)
	}
}

func TestCacheThatCannotBeWrittenStillCompiles(t *testing.T) {
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c := NewCache(filepath.Join(blocker, "cache")) // a directory under a regular file
	p, err := c.Compile(DefaultProfile())
	if err != nil || p == nil {
		t.Fatalf("Compile = %v, %v; want the program despite the unwritable cache", p, err)
	}
}

func TestCacheSharedByConcurrentStarts(t *testing.T) {
	dir := t.TempDir()
	want := mustCompile(t, DefaultProfile())
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := CompileCached(DefaultProfile(), dir)
			if err == nil && !reflect.DeepEqual(p, want) {
				err = os.ErrInvalid
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if names := cacheEntries(t, dir); len(names) != 1 {
		t.Errorf("cache holds %v, want one entry and no temporary files", names)
	}
}

func TestCompileSkipsUnknownSyscallNames(t *testing.T) {
	s := allowAllBut(specs.LinuxSyscall{Names: []string{"no_such_syscall_berth", "getppid"}, Action: specs.ActErrno, ErrnoRet: uintp(99)})
	p := mustCompile(t, s)
	res := runChild(t, p, childOpts{probes: []string{"getppid"}})
	if res.probes["getppid"] != "99" {
		t.Errorf("getppid = %q: the known name after an unknown one must still be filtered", res.probes["getppid"])
	}
}

func TestCompileErrorsNameTheField(t *testing.T) {
	s := DefaultProfile()
	s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: []string{"read"}, Action: "SCMP_ACT_FOO"})
	_, err := Compile(s)
	want := `linux.seccomp.syscalls[` + strconv.Itoa(len(s.Syscalls)-1) + `].action: unknown action "SCMP_ACT_FOO"`
	if err == nil || err.Error() != want {
		t.Fatalf("Compile = %v, want %s", err, want)
	}
}

func TestCompileArchitectureLibseccompLacks(t *testing.T) {
	s := allowAllBut()
	s.Architectures = []specs.Arch{specs.ArchX86_64, specs.ArchLOONGARCH64}
	_, err := Compile(s)
	if err == nil {
		return // a libseccomp from 2.6 on knows loongarch64: nothing to refuse
	}
	if !strings.HasPrefix(err.Error(), "linux.seccomp.architectures[1]: ") {
		t.Fatalf("Compile = %v, want an error naming linux.seccomp.architectures[1]", err)
	}
}

package seccomp

import (
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func sampleProgram() *Program {
	return &Program{
		Flags: FlagLog | FlagNewListener,
		Instructions: []Instruction{
			{Code: 0x20, K: 4},
			{Code: 0x15, Jt: 1, Jf: 0, K: 0xc000003e},
			{Code: 0x06, K: 0x7fff0000},
		},
	}
}

func TestProgramBinaryRoundTrip(t *testing.T) {
	p := sampleProgram()
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var q Program
	if err := q.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*p, q) {
		t.Fatalf("round trip: got %+v, want %+v", q, *p)
	}
	if !q.NeedsNotifyFd() {
		t.Error("NeedsNotifyFd lost")
	}
}

func TestProgramUnmarshalDetectsDamage(t *testing.T) {
	good, err := sampleProgram().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= 0x01
		return b
	}
	cases := map[string][]byte{
		"empty":            nil,
		"truncated":        good[:len(good)-1],
		"trailing byte":    append(append([]byte(nil), good...), 0),
		"bad magic":        flip(0),
		"flipped flag":     flip(8),
		"flipped insn":     flip(headerLen + 5),
		"flipped checksum": flip(len(good) - 1),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			q := Program{Flags: 7}
			if err := q.UnmarshalBinary(b); err == nil {
				t.Fatal("damaged program accepted")
			}
			if q.Flags != 7 || q.Instructions != nil {
				t.Error("failed decode changed the program")
			}
		})
	}
}

func TestMarshalRefusesUnloadablePrograms(t *testing.T) {
	if _, err := (&Program{}).MarshalBinary(); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty program: %v", err)
	}
	big := &Program{Instructions: make([]Instruction, maxInstructions+1)}
	if _, err := big.MarshalBinary(); err == nil || !strings.Contains(err.Error(), "at most 4096") {
		t.Errorf("oversized program: %v", err)
	}
	odd := sampleProgram()
	odd.Flags |= 1 << 20
	if _, err := odd.MarshalBinary(); err == nil || !strings.Contains(err.Error(), "unknown flags") {
		t.Errorf("unknown flag: %v", err)
	}
}

func TestCacheKey(t *testing.T) {
	key := func(s *specs.LinuxSeccomp, compiler string) string {
		t.Helper()
		k, err := cacheKey(s, compiler)
		if err != nil {
			t.Fatal(err)
		}
		return string(k[:])
	}
	base := DefaultProfile()
	k := key(base, "c1")
	if key(DefaultProfile(), "c1") != k {
		t.Error("equal sections give different keys")
	}
	if key(base, "c2") == k {
		t.Error("compiler version is not part of the key")
	}
	listener := DefaultProfile()
	listener.ListenerPath, listener.ListenerMetadata = "/run/x.sock", "meta"
	if key(listener, "c1") != k {
		t.Error("listener fields change the key, though they are not compiled")
	}
	if base.ListenerPath != "" {
		t.Error("cacheKey modified its input")
	}
	changed := DefaultProfile()
	changed.Syscalls[len(changed.Syscalls)-1].Args[0].Value++
	if key(changed, "c1") == k {
		t.Error("an argument value does not change the key")
	}
}

package cgroups

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultDevices is the device list runc's and Berth's default specs carry.
func defaultDevices() []specs.LinuxDeviceCgroup {
	c := func(maj, min int64, acc string) specs.LinuxDeviceCgroup {
		return specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &maj, Minor: &min, Access: acc}
	}
	return []specs.LinuxDeviceCgroup{
		{Allow: false, Access: "rwm"},
		c(1, 3, "rwm"), c(1, 5, "rwm"), c(1, 7, "rwm"), c(1, 8, "rwm"), c(1, 9, "rwm"), c(5, 0, "rwm"), c(5, 1, "rwm"),
		{Allow: true, Type: "c", Major: i64(136), Access: "rwm"},
		c(5, 2, "rwm"),
	}
}

func parseRules(t *testing.T, in []specs.LinuxDeviceCgroup) []deviceRule {
	t.Helper()
	var out []deviceRule
	for _, d := range in {
		r, err := parseDeviceRule(d)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func TestDeviceAllowed(t *testing.T) {
	rules := parseRules(t, append(defaultDevices(),
		specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: i64(8), Access: "r"},
		specs.LinuxDeviceCgroup{Allow: false, Type: "c", Major: i64(136), Minor: i64(4), Access: "w"},
	))
	for _, tt := range []struct {
		typ          byte
		major, minor int64
		access       uint8
		want         bool
	}{
		{'c', 1, 3, devAccRead | devAccWrite, true}, // /dev/null
		{'c', 1, 5, devAccRead, true},               // /dev/zero
		{'c', 1, 1, devAccRead, false},              // /dev/mem
		{'c', 136, 7, devAccWrite, true},            // a pty
		{'c', 136, 4, devAccRead, true},             // the pty denied only for writing
		{'c', 136, 4, devAccRead | devAccWrite, false},
		{'b', 8, 0, devAccRead, true},
		{'b', 8, 0, devAccRead | devAccWrite, false}, // allow r does not grant rw
		{'b', 8, 0, devAccMknod, false},
		{'c', 8, 0, devAccRead, false}, // type matters
	} {
		if got := deviceAllowed(rules, tt.typ, tt.major, tt.minor, tt.access); got != tt.want {
			t.Errorf("%c %d:%d access %d: allowed=%v, want %v", tt.typ, tt.major, tt.minor, tt.access, got, tt.want)
		}
	}
	// Without a deny-all, what no rule denies is allowed, as on v1.
	denyOnly := parseRules(t, []specs.LinuxDeviceCgroup{{Allow: false, Type: "c", Major: i64(1), Minor: i64(5), Access: "rwm"}})
	if deviceAllowed(denyOnly, 'c', 1, 5, devAccRead) || !deviceAllowed(denyOnly, 'c', 1, 3, devAccRead) {
		t.Error("deny-only list: want 1:5 denied and 1:3 allowed")
	}
	// A final allow-all wins over everything before it.
	all := parseRules(t, append(defaultDevices(), specs.LinuxDeviceCgroup{Allow: true}))
	if !deviceAllowed(all, 'b', 8, 0, devAccAll) {
		t.Error("allow-all last: denied")
	}
}

func TestDeviceProgramGolden(t *testing.T) {
	insns, err := deviceProgram([]specs.LinuxDeviceCgroup{
		{Allow: false, Access: "rwm"},
		{Allow: true, Type: "c", Major: i64(1), Minor: i64(3), Access: "rwm"},
		{Allow: true, Type: "c", Major: i64(136), Access: "rw"},
		{Allow: false, Type: "b", Access: "w"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.TrimSpace(insns.String())
	want := strings.TrimSpace(`
	ldxw r2, [r1+0]
	and r2, 65535
	ldxw r3, [r1+0]
	rsh r3, 16
	ldxw r4, [r1+4]
	ldxw r5, [r1+8]
	jne r2, 1, rule3_next
	mov r1, r3
	and r1, 4
	jeq r1, 0, rule3_next
	mov r0, 0
	exit
rule3_next:
	jne r2, 2, rule2_next
	mov r1, r3
	and r1, 1
	jne r1, 0, rule2_next
	jne r4, 136, rule2_next
	mov r0, 1
	exit
rule2_next:
	jne r2, 2, rule1_next
	jne r4, 1, rule1_next
	jne r5, 3, rule1_next
	mov r0, 1
	exit
rule1_next:
	mov r0, 0
	exit`)
	if norm(got) != norm(want) {
		t.Errorf("program:\n%s\nwant:\n%s", got, want)
	}
	// The encoding the kernel reads: offsets count the instructions
	// skipped; registers dst in the low nibble on little-endian.
	code, err := insns.assemble(binary.LittleEndian)
	if err != nil {
		t.Fatal(err)
	}
	jne := code[6*insnLength : 7*insnLength] // jne r2, 1, rule3_next
	if want := []byte{0x55, 0x02, 5, 0, 1, 0, 0, 0}; !bytes.Equal(jne, want) {
		t.Errorf("jne encodes as % x, want % x", jne, want)
	}
	if _, err := (program{jneImm(1, 0, "nowhere")}).assemble(binary.LittleEndian); err == nil {
		t.Error("a jump to a missing label assembled")
	}
}

func norm(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if i := strings.Index(l, ": "); i > 0 && strings.Trim(l[:i], "0123456789") == "" {
			l = l[i+2:] // instruction index
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n")
}

func TestDeviceProgramAllowAllLastIsTrivial(t *testing.T) {
	insns, err := deviceProgram(append(defaultDevices(), specs.LinuxDeviceCgroup{Allow: true, Access: "rwm"}))
	if err != nil {
		t.Fatal(err)
	}
	// Six context loads, then "allow" and exit: nothing before the
	// allow-all can matter.
	if len(insns) != 8 || insns[6].imm != 1 {
		t.Errorf("program:\n%v", insns)
	}
}

func TestDeviceProgramWithoutDenyAllAllowsTheRest(t *testing.T) {
	insns, err := deviceProgram([]specs.LinuxDeviceCgroup{{Allow: false, Type: "c", Major: i64(1), Minor: i64(5)}})
	if err != nil {
		t.Fatal(err)
	}
	if last := insns[len(insns)-2]; last.imm != 1 {
		t.Errorf("default verdict %d, want 1 (allow):\n%v", last.imm, insns)
	}
}

func TestDeviceProgramRejectsBadRule(t *testing.T) {
	_, err := deviceProgram([]specs.LinuxDeviceCgroup{{Type: "c", Major: i64(5000)}})
	if err == nil || err.Error() != "linux.resources.devices[0]: invalid rule: major 5000 is outside [0, 4095]" {
		t.Errorf("error %v", err)
	}
}

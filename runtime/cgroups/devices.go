package cgroups

import (
	"fmt"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// deviceRule is a spec device rule in normalised form.
type deviceRule struct {
	allow  bool
	typ    byte  // 'a', 'b' or 'c'
	major  int64 // -1: any
	minor  int64 // -1: any
	access uint8 // devAcc* bits
}

// Access bits as the kernel's BPF_DEVCG_ACC_* constants define them.
const (
	devAccMknod = 1
	devAccRead  = 2
	devAccWrite = 4
	devAccAll   = devAccMknod | devAccRead | devAccWrite
)

// Device types as BPF_DEVCG_DEV_* define them.
const (
	devTypeBlock = 1
	devTypeChar  = 2
)

func parseDeviceRule(d specs.LinuxDeviceCgroup) (deviceRule, error) {
	r := deviceRule{allow: d.Allow, major: -1, minor: -1}
	switch d.Type {
	case "", "a":
		r.typ = 'a'
	case "b", "c":
		r.typ = d.Type[0]
	default:
		return r, fmt.Errorf("type %q is not a, b or c", d.Type)
	}
	if d.Major != nil && *d.Major != -1 {
		if *d.Major < 0 || *d.Major > maxMajor {
			return r, fmt.Errorf("major %d is outside [0, %d]", *d.Major, maxMajor)
		}
		r.major = *d.Major
	}
	if d.Minor != nil && *d.Minor != -1 {
		if *d.Minor < 0 || *d.Minor > maxMinor {
			return r, fmt.Errorf("minor %d is outside [0, %d]", *d.Minor, maxMinor)
		}
		r.minor = *d.Minor
	}
	if d.Access == "" {
		r.access = devAccAll
	}
	for _, c := range d.Access {
		var bit uint8
		switch c {
		case 'r':
			bit = devAccRead
		case 'w':
			bit = devAccWrite
		case 'm':
			bit = devAccMknod
		default:
			return r, fmt.Errorf("access %q has %q; only r, w and m are allowed", d.Access, c)
		}
		if r.access&bit != 0 {
			return r, fmt.Errorf("access %q repeats %q", d.Access, c)
		}
		r.access |= bit
	}
	return r, nil
}

func (r deviceRule) v1String() string {
	num := func(v int64) string {
		if v == -1 {
			return "*"
		}
		return strconv.FormatInt(v, 10)
	}
	acc := ""
	if r.access&devAccRead != 0 {
		acc += "r"
	}
	if r.access&devAccWrite != 0 {
		acc += "w"
	}
	if r.access&devAccMknod != 0 {
		acc += "m"
	}
	return string(r.typ) + " " + num(r.major) + ":" + num(r.minor) + " " + acc
}

// matchesAll reports whether the rule covers every device and access.
func (r deviceRule) matchesAll() bool {
	return r.typ == 'a' && r.major == -1 && r.minor == -1 && r.access == devAccAll
}

// matches reports whether the rule decides a request. An allow rule decides
// only if it grants every bit asked for; a deny rule decides if it refuses
// any of them.
func (r deviceRule) matches(typ byte, major, minor int64, access uint8) bool {
	if r.typ != 'a' && r.typ != typ {
		return false
	}
	if r.major != -1 && r.major != major || r.minor != -1 && r.minor != minor {
		return false
	}
	if r.allow {
		return access&^r.access == 0
	}
	return access&r.access != 0
}

// deviceAllowed is the device policy the v2 program implements, which is
// what the v1 lists do for the specs runtimes see (a leading deny-all, then
// allows; or only denies): the last rule that decides a request wins; a
// request no rule decides is allowed, as a new v1 cgroup allows everything
// until told otherwise. (v1 differs only in corner cases such as a deny
// narrower than an earlier allow, which v1 ignores and this honours.)
func deviceAllowed(rules []deviceRule, typ byte, major, minor int64, access uint8) bool {
	for i := len(rules) - 1; i >= 0; i-- {
		if rules[i].matches(typ, major, minor, access) {
			return rules[i].allow
		}
	}
	return true
}

// deviceProgram builds a BPF_PROG_TYPE_CGROUP_DEVICE program enforcing
// deviceAllowed for the spec's rules. Rules are tested last to first; a
// rule covering everything ends the search, so the usual leading
// "deny all" costs nothing.
func deviceProgram(specRules []specs.LinuxDeviceCgroup) (program, error) {
	rules := make([]deviceRule, 0, len(specRules))
	for i, d := range specRules {
		r, err := parseDeviceRule(d)
		if err != nil {
			return nil, &FieldError{Field: fmt.Sprintf("%s[%d]", fDevices, i), Msg: "invalid rule", Err: err}
		}
		rules = append(rules, r)
	}
	// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; },
	// access_type = access << 16 | type.
	insns := program{
		ldxw(2, 1, 0),
		andImm(2, 0xffff),
		ldxw(3, 1, 0),
		rshImm(3, 16),
		ldxw(4, 1, 4),
		ldxw(5, 1, 8),
	}
	label := ""
	emit := func(in insn) {
		if label != "" {
			in.label = label
			label = ""
		}
		insns = append(insns, in)
	}
	verdict := int32(1)
	for i := len(rules) - 1; i >= 0; i-- {
		r := rules[i]
		if r.matchesAll() {
			verdict = int32(boolInt(r.allow))
			break
		}
		next := fmt.Sprintf("rule%d_next", i)
		switch r.typ {
		case 'b':
			emit(jneImm(2, devTypeBlock, next))
		case 'c':
			emit(jneImm(2, devTypeChar, next))
		}
		if r.access != devAccAll {
			emit(movReg(1, 3))
			if r.allow {
				emit(andImm(1, int32(devAccAll&^r.access)))
				emit(jneImm(1, 0, next))
			} else {
				emit(andImm(1, int32(r.access)))
				emit(jeqImm(1, 0, next))
			}
		}
		if r.major != -1 {
			emit(jneImm(4, int32(r.major), next))
		}
		if r.minor != -1 {
			emit(jneImm(5, int32(r.minor), next))
		}
		emit(movImm(0, int32(boolInt(r.allow))))
		emit(exit())
		label = next
	}
	emit(movImm(0, verdict))
	emit(exit())
	return insns, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

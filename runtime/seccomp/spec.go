package seccomp

import (
	"errors"
	"fmt"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The spec is first checked and normalised into a plan by pure code, so every
// mistake is reported with the field that holds it before libseccomp is asked
// for anything; compile_linux.go then only translates the plan.

type actionKind int

const (
	actKillThread actionKind = iota + 1
	actKillProcess
	actTrap
	actErrno
	actTrace
	actAllow
	actLog
	actNotify
)

type action struct {
	kind  actionKind
	errno uint16 // for actErrno and actTrace
}

type opKind int

const (
	opNE opKind = iota + 1
	opLT
	opLE
	opEQ
	opGE
	opGT
	opMaskedEQ
)

type cond struct {
	index    uint
	op       opKind
	value    uint64
	valueTwo uint64
}

// rule is one syscall name with one action. Each entry of condSets becomes a
// separate libseccomp rule (the sets are ORed; conditions inside a set are
// ANDed). A rule without conditions has a single empty set.
type rule struct {
	syscall, nameIndex int // position in the spec, for errors
	name               string
	action             action
	condSets           [][]cond
}

// field names the rule's place in the spec. It is built only for errors and
// logs: formatting it for every rule of a large profile is measurable on the
// cached start path.
func (r rule) field() string {
	return fmt.Sprintf("linux.seccomp.syscalls[%d].names[%d]", r.syscall, r.nameIndex)
}

type plan struct {
	defaultAction action
	arches        []string // libseccomp spellings ("x86_64", "x32", ...)
	flags         uint32
	rules         []rule
}

// Linux clamps errno values above MAX_ERRNO; a larger errnoRet is a mistake.
const maxErrno = 4095

// Errno defaults when the spec names ERRNO or TRACE without errnoRet; EPERM
// is what runc and crun use, so profiles behave the same under Berth.
const defaultErrno = 1

func parseAction(field string, a specs.LinuxSeccompAction, errnoRet *uint) (action, error) {
	var k actionKind
	switch a {
	case specs.ActKill, specs.ActKillThread:
		k = actKillThread
	case specs.ActKillProcess:
		k = actKillProcess
	case specs.ActTrap:
		k = actTrap
	case specs.ActErrno:
		k = actErrno
	case specs.ActTrace:
		k = actTrace
	case specs.ActAllow:
		k = actAllow
	case specs.ActLog:
		k = actLog
	case specs.ActNotify:
		k = actNotify
	default:
		return action{}, fmt.Errorf("%s: unknown action %q", field, a)
	}
	act := action{kind: k}
	if k == actErrno || k == actTrace {
		act.errno = defaultErrno
	}
	if errnoRet != nil {
		if k != actErrno && k != actTrace {
			return action{}, fmt.Errorf("%s: errnoRet is only valid with %s or %s, not %s", field, specs.ActErrno, specs.ActTrace, a)
		}
		if *errnoRet > maxErrno {
			return action{}, fmt.Errorf("%s: errnoRet %d is above the largest errno %d", field, *errnoRet, maxErrno)
		}
		act.errno = uint16(*errnoRet)
	}
	return act, nil
}

func parseOp(field string, o specs.LinuxSeccompOperator) (opKind, error) {
	switch o {
	case specs.OpNotEqual:
		return opNE, nil
	case specs.OpLessThan:
		return opLT, nil
	case specs.OpLessEqual:
		return opLE, nil
	case specs.OpEqualTo:
		return opEQ, nil
	case specs.OpGreaterEqual:
		return opGE, nil
	case specs.OpGreaterThan:
		return opGT, nil
	case specs.OpMaskedEqual:
		return opMaskedEQ, nil
	}
	return 0, fmt.Errorf("%s: unknown operator %q", field, o)
}

// parseArch maps the spec's architecture names to libseccomp's. Whether the
// installed libseccomp supports one is only known when compiling.
func parseArch(field string, a specs.Arch) (string, error) {
	switch a {
	case specs.ArchX86, specs.ArchX86_64, specs.ArchX32, specs.ArchARM, specs.ArchAARCH64,
		specs.ArchMIPS, specs.ArchMIPS64, specs.ArchMIPS64N32, specs.ArchMIPSEL, specs.ArchMIPSEL64,
		specs.ArchMIPSEL64N32, specs.ArchPPC, specs.ArchPPC64, specs.ArchPPC64LE, specs.ArchS390,
		specs.ArchS390X, specs.ArchPARISC, specs.ArchPARISC64, specs.ArchRISCV64, specs.ArchLOONGARCH64,
		specs.ArchM68K, specs.ArchSH, specs.ArchSHEB:
		return strings.ToLower(strings.TrimPrefix(string(a), "SCMP_ARCH_")), nil
	}
	return "", fmt.Errorf("%s: unknown architecture %q", field, a)
}

func parseFlag(field string, f specs.LinuxSeccompFlag) (uint32, error) {
	switch f {
	case "SECCOMP_FILTER_FLAG_TSYNC":
		return FlagTsync, nil
	case specs.LinuxSeccompFlagLog:
		return FlagLog, nil
	case specs.LinuxSeccompFlagSpecAllow:
		return FlagSpecAllow, nil
	case specs.LinuxSeccompFlagWaitKillableRecv:
		return FlagWaitKillableRecv, nil
	}
	return 0, fmt.Errorf("%s: unknown flag %q", field, f)
}

// maxArgs is the number of syscall arguments seccomp can inspect.
const maxArgs = 6

func parse(s *specs.LinuxSeccomp) (plan, error) {
	if s == nil {
		return plan{}, errors.New("linux.seccomp: no seccomp section")
	}
	var p plan
	var err error
	if p.defaultAction, err = parseAction("linux.seccomp.defaultAction", s.DefaultAction, s.DefaultErrnoRet); err != nil {
		return plan{}, err
	}
	seenArch := map[string]bool{}
	for i, a := range s.Architectures {
		name, err := parseArch(fmt.Sprintf("linux.seccomp.architectures[%d]", i), a)
		if err != nil {
			return plan{}, err
		}
		if !seenArch[name] {
			seenArch[name] = true
			p.arches = append(p.arches, name)
		}
	}
	for i, f := range s.Flags {
		bit, err := parseFlag(fmt.Sprintf("linux.seccomp.flags[%d]", i), f)
		if err != nil {
			return plan{}, err
		}
		p.flags |= bit
	}
	notify := p.defaultAction.kind == actNotify
	for i, sc := range s.Syscalls {
		field := fmt.Sprintf("linux.seccomp.syscalls[%d]", i)
		if len(sc.Names) == 0 {
			return plan{}, fmt.Errorf("%s.names: empty", field)
		}
		act, err := parseAction(field+".action", sc.Action, sc.ErrnoRet)
		if err != nil {
			return plan{}, err
		}
		conds := make([]cond, len(sc.Args))
		sameIndex := false
		used := map[uint]bool{}
		for j, a := range sc.Args {
			af := fmt.Sprintf("%s.args[%d]", field, j)
			if a.Index >= maxArgs {
				return plan{}, fmt.Errorf("%s.index: %d is out of range, a syscall has %d arguments", af, a.Index, maxArgs)
			}
			op, err := parseOp(af+".op", a.Op)
			if err != nil {
				return plan{}, err
			}
			conds[j] = cond{index: a.Index, op: op, value: a.Value, valueTwo: a.ValueTwo}
			sameIndex = sameIndex || used[a.Index]
			used[a.Index] = true
		}
		// libseccomp refuses two comparisons of one argument in a rule, so
		// such a list is taken as alternatives, one rule per comparison, as
		// runc does; profiles in the wild rely on this reading.
		var sets [][]cond
		if sameIndex {
			for _, c := range conds {
				sets = append(sets, []cond{c})
			}
		} else {
			sets = [][]cond{conds}
		}
		for j, name := range sc.Names {
			if name == "" {
				return plan{}, fmt.Errorf("%s.names[%d]: empty syscall name", field, j)
			}
		}
		if act == p.defaultAction {
			// libseccomp rejects a rule that repeats the default action;
			// it would not change the filter anyway.
			continue
		}
		notify = notify || act.kind == actNotify
		for j, name := range sc.Names {
			p.rules = append(p.rules, rule{syscall: i, nameIndex: j, name: name, action: act, condSets: sets})
		}
	}
	if notify {
		p.flags |= FlagNewListener
		if p.flags&FlagTsync != 0 {
			// TSYNC and NEW_LISTENER both want the return value; with
			// TSYNC_ESRCH a sync failure becomes ESRCH and the fd comes back.
			p.flags |= FlagTsyncESRCH
		}
	} else if p.flags&FlagWaitKillableRecv != 0 {
		return plan{}, fmt.Errorf("linux.seccomp.flags: %s needs a %s rule", specs.LinuxSeccompFlagWaitKillableRecv, specs.ActNotify)
	}
	if notify && s.ListenerPath == "" {
		return plan{}, fmt.Errorf("linux.seccomp.listenerPath: required when an action is %s", specs.ActNotify)
	}
	if !notify && s.ListenerPath != "" {
		return plan{}, fmt.Errorf("linux.seccomp.listenerPath: set but no action is %s", specs.ActNotify)
	}
	return p, nil
}

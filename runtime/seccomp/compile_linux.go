package seccomp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	libseccomp "github.com/seccomp/libseccomp-golang"
	"golang.org/x/sys/unix"
)

// Compile turns the spec's seccomp section into a Program for the host
// architecture plus the architectures the spec lists. Syscall names that
// libseccomp does not know are skipped with a debug log (a profile written
// for a newer kernel must still run on this one); every other mistake is an
// error naming its field.
func Compile(s *specs.LinuxSeccomp) (*Program, error) {
	p, err := parse(s)
	if err != nil {
		return nil, err
	}
	return compilePlan(p)
}

func compilePlan(p plan) (*Program, error) {
	f, err := libseccomp.NewFilter(scmpAction(p.defaultAction))
	if err != nil {
		return nil, fmt.Errorf("linux.seccomp.defaultAction: %w", err)
	}
	defer f.Release()
	for i, name := range p.arches {
		a, err := libseccomp.GetArchFromString(name)
		if err != nil {
			return nil, fmt.Errorf("linux.seccomp.architectures[%d]: %w", i, err)
		}
		if err := f.AddArch(a); err != nil {
			return nil, fmt.Errorf("linux.seccomp.architectures[%d]: add %s: %w", i, name, err)
		}
	}
	// A binary tree of syscall numbers instead of a linear chain: a
	// Docker-sized allow-list costs a few comparisons per syscall instead of
	// hundreds. Only libseccomp >= 2.5 has it; without it the filter is
	// merely slower.
	if err := f.SetOptimize(2); err != nil {
		slog.Debug("seccomp: binary tree optimisation unavailable", "err", err)
	}
	highest := -1 // highest native syscall number the profile names
	for _, r := range p.rules {
		sc, err := libseccomp.GetSyscallFromName(r.name)
		if err != nil {
			slog.Debug("seccomp: skipping syscall unknown to libseccomp", "field", r.field(), "syscall", r.name)
			continue
		}
		// Negative numbers are libseccomp's pseudo-syscalls: names that
		// exist only on the other architectures of the filter.
		highest = max(highest, int(sc))
		act := scmpAction(r.action)
		for _, set := range r.condSets {
			conds := make([]libseccomp.ScmpCondition, 0, len(set))
			for _, c := range set {
				sc, err := scmpCondition(c)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", r.field(), err)
				}
				conds = append(conds, sc)
			}
			if len(conds) == 0 {
				err = f.AddRule(sc, act)
			} else {
				err = f.AddRuleConditional(sc, act, conds)
			}
			if err != nil {
				return nil, fmt.Errorf("%s: add rule for %s: %w", r.field(), r.name, err)
			}
		}
	}
	insns, err := exportBPF(f)
	if err != nil {
		return nil, err
	}
	if p.defaultAction.kind == actErrno && highest >= 0 {
		insns = append(enosysPrologue(runtime.GOARCH, uint32(highest)), insns...)
	}
	prog := &Program{Instructions: insns, Flags: p.flags}
	if err := prog.check(); err != nil {
		return nil, fmt.Errorf("linux.seccomp: %w", err)
	}
	return prog, nil
}

// enosysPrologue makes native syscalls numbered above every syscall the
// profile names fail with ENOSYS instead of the default errno. A profile
// cannot name syscalls newer than itself, and libcs probe such syscalls
// and fall back only on ENOSYS (EPERM reads as "forbidden", and breaks
// programs on newer kernels), so an errno-default allow-list would otherwise
// break every program that tries a new syscall first. Other architectures
// and x32 numbers (bit 30) go straight to libseccomp's filter; jump offsets
// there are relative, so prepending leaves them valid.
func enosysPrologue(goarch string, highest uint32) []Instruction {
	arch, ok := auditArch(goarch)
	if !ok {
		return nil
	}
	const (
		ldAbsW  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeqK    = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jgeK    = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		jgtK    = unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K
		retK    = unix.BPF_RET | unix.BPF_K
		offNr   = 0 // struct seccomp_data
		offArch = 4
		x32Bit  = 0x40000000
	)
	return []Instruction{
		{Code: ldAbsW, K: offArch},
		{Code: jeqK, Jt: 0, Jf: 4, K: arch},
		{Code: ldAbsW, K: offNr},
		{Code: jgeK, Jt: 2, Jf: 0, K: x32Bit},
		{Code: jgtK, Jt: 0, Jf: 1, K: highest},
		{Code: retK, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
	}
}

func auditArch(goarch string) (uint32, bool) {
	switch goarch {
	case "amd64":
		return unix.AUDIT_ARCH_X86_64, true
	case "386":
		return unix.AUDIT_ARCH_I386, true
	case "arm64":
		return unix.AUDIT_ARCH_AARCH64, true
	case "arm":
		return unix.AUDIT_ARCH_ARM, true
	case "ppc64le":
		return unix.AUDIT_ARCH_PPC64LE, true
	case "s390x":
		return unix.AUDIT_ARCH_S390X, true
	case "riscv64":
		return unix.AUDIT_ARCH_RISCV64, true
	}
	return 0, false
}

// exportBPF goes through a memfd: the libseccomp on Debian 12 (2.5.4)
// predates seccomp_export_bpf_mem, and a memfd never touches a disk.
func exportBPF(f *libseccomp.ScmpFilter) ([]Instruction, error) {
	fd, err := unix.MemfdCreate("berth-seccomp", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("export seccomp filter: memfd: %w", err)
	}
	file := os.NewFile(uintptr(fd), "berth-seccomp")
	defer file.Close()
	if err := f.ExportBPF(file); err != nil {
		return nil, fmt.Errorf("export seccomp filter: %w", err)
	}
	if _, err := file.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("export seccomp filter: %w", err)
	}
	raw, err := io.ReadAll(file)
	if err != nil {
		return nil, fmt.Errorf("export seccomp filter: %w", err)
	}
	if len(raw)%insnLen != 0 {
		return nil, fmt.Errorf("export seccomp filter: %d bytes is not a whole number of instructions", len(raw))
	}
	// struct sock_filter in host byte order, as the kernel will read it.
	insns := make([]Instruction, len(raw)/insnLen)
	for i := range insns {
		b := raw[i*insnLen:]
		insns[i] = Instruction{
			Code: binary.NativeEndian.Uint16(b),
			Jt:   b[2],
			Jf:   b[3],
			K:    binary.NativeEndian.Uint32(b[4:]),
		}
	}
	return insns, nil
}

func scmpAction(a action) libseccomp.ScmpAction {
	switch a.kind {
	case actKillThread:
		return libseccomp.ActKillThread
	case actKillProcess:
		return libseccomp.ActKillProcess
	case actTrap:
		return libseccomp.ActTrap
	case actErrno:
		return libseccomp.ActErrno.SetReturnCode(int16(a.errno))
	case actTrace:
		return libseccomp.ActTrace.SetReturnCode(int16(a.errno))
	case actAllow:
		return libseccomp.ActAllow
	case actLog:
		return libseccomp.ActLog
	case actNotify:
		return libseccomp.ActNotify
	}
	// parse() only produces the kinds above.
	panic(fmt.Sprintf("seccomp: action kind %d", a.kind))
}

func scmpCondition(c cond) (libseccomp.ScmpCondition, error) {
	var op libseccomp.ScmpCompareOp
	switch c.op {
	case opNE:
		op = libseccomp.CompareNotEqual
	case opLT:
		op = libseccomp.CompareLess
	case opLE:
		op = libseccomp.CompareLessOrEqual
	case opEQ:
		op = libseccomp.CompareEqual
	case opGE:
		op = libseccomp.CompareGreaterEqual
	case opGT:
		op = libseccomp.CompareGreater
	case opMaskedEQ:
		// value is the mask, valueTwo what the masked argument must equal.
		return libseccomp.MakeCondition(c.index, libseccomp.CompareMaskedEqual, c.value, c.valueTwo)
	default:
		return libseccomp.ScmpCondition{}, errors.New("unknown operator")
	}
	return libseccomp.MakeCondition(c.index, op, c.value)
}

// compilerRevision must be bumped whenever the translation from spec to BPF
// changes (the ENOSYS prologue, rule splitting, optimisation level...), so
// that caches filled by an older Berth are not served to a newer one.
const compilerRevision = 1

// compilerVersion identifies everything that can change the BPF for a given
// spec: our translation, the encoding, libseccomp and the architecture.
func compilerVersion() string {
	maj, min, mic := libseccomp.GetLibraryVersion()
	native, err := libseccomp.GetNativeArch()
	arch := "unknown"
	if err == nil {
		arch = native.String()
	}
	return fmt.Sprintf("berth-seccomp/%d.%d libseccomp/%d.%d.%d arch/%s", compilerRevision, binaryVersion, maj, min, mic, arch)
}

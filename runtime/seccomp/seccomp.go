// Package seccomp turns the OCI runtime spec's linux.seccomp section into a
// classic BPF program and loads it into a process.
//
// Compiling and loading are split on purpose. The runtime's create command
// compiles (with libseccomp, which resolves syscall names per architecture
// and builds argument comparisons) and may cache the result on disk, because
// compiling a Docker-sized profile costs milliseconds on every start. The
// container's init process only loads the finished program with a raw
// seccomp(2) call, so it needs neither libseccomp nor the spec.
package seccomp

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Kernel flags for seccomp(SECCOMP_SET_MODE_FILTER), from linux/seccomp.h.
// They are written out here so the Program format does not depend on the
// build host's headers.
const (
	FlagTsync            uint32 = 1 << 0
	FlagLog              uint32 = 1 << 1
	FlagSpecAllow        uint32 = 1 << 2
	FlagNewListener      uint32 = 1 << 3
	FlagTsyncESRCH       uint32 = 1 << 4
	FlagWaitKillableRecv uint32 = 1 << 5

	knownFlags = FlagTsync | FlagLog | FlagSpecAllow | FlagNewListener | FlagTsyncESRCH | FlagWaitKillableRecv
)

// maxInstructions is the kernel's BPF_MAXINSNS: longer programs are refused
// by seccomp(2), so they are refused here already, at compile or decode time.
const maxInstructions = 4096

// Instruction is one classic BPF instruction (struct sock_filter).
type Instruction struct {
	Code uint16
	Jt   uint8
	Jf   uint8
	K    uint32
}

// Program is a compiled seccomp filter, ready to load: the BPF instructions
// for the host architecture (and any extra architectures the spec named),
// and the seccomp(2) flags to load it with.
type Program struct {
	Instructions []Instruction
	// Flags are the seccomp(2) filter flags (Flag* constants). FlagNewListener
	// is set when the filter uses SCMP_ACT_NOTIFY.
	Flags uint32
}

// NeedsNotifyFd reports whether loading the program yields a user
// notification fd that must be handed to the spec's listener.
func (p *Program) NeedsNotifyFd() bool { return p.Flags&FlagNewListener != 0 }

// Binary encoding: magic, version, flags, instruction count, instructions,
// then a SHA-256 over everything before it. The checksum is what lets a cache
// tell a torn or corrupted file from a program, since a wrong filter loaded
// into a container would be a silent security hole.
const (
	binaryMagic   = "BSCF"
	binaryVersion = 1
	headerLen     = 4 + 2 + 2 + 4 + 4 // magic, version, reserved, flags, count
	insnLen       = 8
)

// MarshalBinary encodes the program in a self-checking format (little
// endian; a program is only meaningful on the architecture it was built for).
func (p *Program) MarshalBinary() ([]byte, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, headerLen+len(p.Instructions)*insnLen+sha256.Size)
	b = append(b, binaryMagic...)
	b = binary.LittleEndian.AppendUint16(b, binaryVersion)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, p.Flags)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Instructions)))
	for _, in := range p.Instructions {
		b = binary.LittleEndian.AppendUint16(b, in.Code)
		b = append(b, in.Jt, in.Jf)
		b = binary.LittleEndian.AppendUint32(b, in.K)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...), nil
}

// UnmarshalBinary decodes what MarshalBinary produced. Any damage (wrong
// magic or version, truncation, trailing bytes, checksum mismatch) is an
// error and leaves p unchanged.
func (p *Program) UnmarshalBinary(b []byte) error {
	if len(b) < headerLen+sha256.Size {
		return fmt.Errorf("decode seccomp program: %d bytes is too short", len(b))
	}
	if string(b[:4]) != binaryMagic {
		return errors.New("decode seccomp program: bad magic")
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != binaryVersion {
		return fmt.Errorf("decode seccomp program: unsupported version %d", v)
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if want := sha256.Sum256(body); string(want[:]) != string(sum) {
		return errors.New("decode seccomp program: checksum mismatch")
	}
	flags := binary.LittleEndian.Uint32(b[8:])
	n := binary.LittleEndian.Uint32(b[12:])
	if uint64(len(body)) != headerLen+uint64(n)*insnLen {
		return fmt.Errorf("decode seccomp program: %d instructions do not fit %d bytes", n, len(body))
	}
	q := Program{Flags: flags, Instructions: make([]Instruction, n)}
	for i := range q.Instructions {
		o := headerLen + i*insnLen
		q.Instructions[i] = Instruction{
			Code: binary.LittleEndian.Uint16(body[o:]),
			Jt:   body[o+2],
			Jf:   body[o+3],
			K:    binary.LittleEndian.Uint32(body[o+4:]),
		}
	}
	if err := q.check(); err != nil {
		return fmt.Errorf("decode seccomp program: %w", err)
	}
	*p = q
	return nil
}

func (p *Program) check() error {
	switch n := len(p.Instructions); {
	case n == 0:
		return errors.New("seccomp program is empty")
	case n > maxInstructions:
		return fmt.Errorf("seccomp program has %d instructions, the kernel accepts at most %d", n, maxInstructions)
	}
	if p.Flags&^knownFlags != 0 {
		return fmt.Errorf("seccomp program has unknown flags %#x", p.Flags&^knownFlags)
	}
	return nil
}

package cgroups

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// The device filter needs a dozen kinds of eBPF instruction; they are
// encoded here rather than with a general eBPF library, whose package
// initialisers alone cost a measurable share of every runtime process's
// start.

// eBPF opcodes used by the device filter (class | op | source).
const (
	opLdxMemW  = 0x61 // BPF_LDX | BPF_MEM | BPF_W
	opAndImm   = 0x57 // BPF_ALU64 | BPF_AND | BPF_K
	opRshImm   = 0x77 // BPF_ALU64 | BPF_RSH | BPF_K
	opMovImm   = 0xb7 // BPF_ALU64 | BPF_MOV | BPF_K
	opMovReg   = 0xbf // BPF_ALU64 | BPF_MOV | BPF_X
	opJeqImm   = 0x15 // BPF_JMP | BPF_JEQ | BPF_K
	opJneImm   = 0x55 // BPF_JMP | BPF_JNE | BPF_K
	opExit     = 0x95 // BPF_JMP | BPF_EXIT
	insnLength = 8
)

// insn is one eBPF instruction. A jump names the label it lands on, and
// assemble turns that into an offset.
type insn struct {
	op       uint8
	dst, src uint8
	off      int16
	imm      int32
	target   string // for jumps
	label    string // this instruction's label, if a jump lands here
}

func ldxw(dst, src uint8, off int16) insn { return insn{op: opLdxMemW, dst: dst, src: src, off: off} }
func andImm(dst uint8, imm int32) insn    { return insn{op: opAndImm, dst: dst, imm: imm} }
func rshImm(dst uint8, imm int32) insn    { return insn{op: opRshImm, dst: dst, imm: imm} }
func movImm(dst uint8, imm int32) insn    { return insn{op: opMovImm, dst: dst, imm: imm} }
func movReg(dst, src uint8) insn          { return insn{op: opMovReg, dst: dst, src: src} }
func exit() insn                          { return insn{op: opExit} }

func jneImm(dst uint8, imm int32, target string) insn {
	return insn{op: opJneImm, dst: dst, imm: imm, target: target}
}

func jeqImm(dst uint8, imm int32, target string) insn {
	return insn{op: opJeqImm, dst: dst, imm: imm, target: target}
}

func (i insn) String() string {
	switch i.op {
	case opLdxMemW:
		return fmt.Sprintf("ldxw r%d, [r%d%+d]", i.dst, i.src, i.off)
	case opAndImm:
		return fmt.Sprintf("and r%d, %d", i.dst, i.imm)
	case opRshImm:
		return fmt.Sprintf("rsh r%d, %d", i.dst, i.imm)
	case opMovImm:
		return fmt.Sprintf("mov r%d, %d", i.dst, i.imm)
	case opMovReg:
		return fmt.Sprintf("mov r%d, r%d", i.dst, i.src)
	case opJeqImm:
		return fmt.Sprintf("jeq r%d, %d, %s", i.dst, i.imm, i.target)
	case opJneImm:
		return fmt.Sprintf("jne r%d, %d, %s", i.dst, i.imm, i.target)
	case opExit:
		return "exit"
	}
	return fmt.Sprintf("op %#x", i.op)
}

// program is an instruction list; its String is the golden-test form, one
// instruction a line, labels on lines of their own.
type program []insn

func (p program) String() string {
	var b strings.Builder
	for _, in := range p {
		if in.label != "" {
			b.WriteString(in.label + ":\n")
		}
		b.WriteString("\t" + in.String() + "\n")
	}
	return b.String()
}

// assemble resolves jump labels and encodes the program in the host's
// byte order, as bpf(BPF_PROG_LOAD) takes it.
func (p program) assemble(order binary.AppendByteOrder) ([]byte, error) {
	at := map[string]int{}
	for i, in := range p {
		if in.label != "" {
			at[in.label] = i
		}
	}
	out := make([]byte, 0, len(p)*insnLength)
	for i, in := range p {
		off := in.off
		if in.target != "" {
			t, ok := at[in.target]
			if !ok || t <= i {
				return nil, fmt.Errorf("instruction %d jumps to %q, which does not follow it", i, in.target)
			}
			off = int16(t - i - 1)
		}
		regs := in.dst&0xf | in.src<<4
		if order == binary.AppendByteOrder(binary.BigEndian) {
			regs = in.dst<<4 | in.src&0xf
		}
		out = append(out, in.op, regs)
		out = order.AppendUint16(out, uint16(off))
		out = order.AppendUint32(out, uint32(in.imm))
	}
	return out, nil
}

//go:build linux

package cgroups

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The bpf(2) calls a device filter needs, made directly: a general eBPF
// loader probes the kernel's features on first use (a mountinfo read, two
// map creations, a test program), which costs about 1 ms in every fresh
// runtime process, more than loading the filter itself.

// progLoadAttr is the head of union bpf_attr for BPF_PROG_LOAD; the kernel
// zero-fills the fields a shorter attr leaves out.
type progLoadAttr struct {
	progType    uint32
	insnCnt     uint32
	insns       uint64
	license     uint64
	logLevel    uint32
	logSize     uint32
	logBuf      uint64
	kernVersion uint32
	progFlags   uint32
	progName    [16]byte
}

// progAttachAttr serves BPF_PROG_ATTACH and BPF_PROG_DETACH.
type progAttachAttr struct {
	targetFD    uint32
	attachBPFFD uint32
	attachType  uint32
	attachFlags uint32
}

type progQueryAttr struct {
	targetFD    uint32
	attachType  uint32
	queryFlags  uint32
	attachFlags uint32
	progIDs     uint64
	progCnt     uint32
	_           uint32
}

type progGetFDAttr struct {
	progID    uint32
	nextID    uint32
	openFlags uint32
}

func bpfCall(cmd int, attr unsafe.Pointer, size uintptr) (int, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(attr), size)
		switch errno {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return -1, errno
	}
}

// loadDeviceProgram loads a BPF_PROG_TYPE_CGROUP_DEVICE program and returns
// its fd. A rejected program's error carries the verifier's log.
func loadDeviceProgram(insns program) (int, error) {
	var order binary.AppendByteOrder = binary.LittleEndian
	if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 {
		order = binary.BigEndian
	}
	code, err := insns.assemble(order)
	if err != nil {
		return -1, fmt.Errorf("assemble device filter: %w", err)
	}
	license := []byte("Apache-2.0\x00")
	attr := progLoadAttr{
		progType: unix.BPF_PROG_TYPE_CGROUP_DEVICE,
		insnCnt:  uint32(len(code) / insnLength),
		insns:    uint64(uintptr(unsafe.Pointer(&code[0]))),
		license:  uint64(uintptr(unsafe.Pointer(&license[0]))),
	}
	copy(attr.progName[:], "berth_devices")
	fd, err := bpfCall(unix.BPF_PROG_LOAD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	for i := 0; err == unix.EAGAIN && i < 5; i++ {
		fd, err = bpfCall(unix.BPF_PROG_LOAD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	}
	if err != nil && !errors.Is(err, unix.EPERM) {
		// Load again with a log, for the verifier's reason.
		log := make([]byte, 64<<10)
		attr.logLevel, attr.logSize = 1, uint32(len(log))
		attr.logBuf = uint64(uintptr(unsafe.Pointer(&log[0])))
		if _, lerr := bpfCall(unix.BPF_PROG_LOAD, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); lerr != nil {
			if n := bytes.IndexByte(log, 0); n > 0 {
				err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(log[:n]))
			}
		}
		runtime.KeepAlive(log)
	}
	runtime.KeepAlive(code)
	runtime.KeepAlive(license)
	if err != nil {
		return -1, fmt.Errorf("load device filter: %w", err)
	}
	return fd, nil
}

func attachDeviceProgram(cgroupFD, progFD int) error {
	attr := progAttachAttr{
		targetFD:    uint32(cgroupFD),
		attachBPFFD: uint32(progFD),
		attachType:  unix.BPF_CGROUP_DEVICE,
		attachFlags: unix.BPF_F_ALLOW_MULTI,
	}
	_, err := bpfCall(unix.BPF_PROG_ATTACH, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	return err
}

func detachDeviceProgram(cgroupFD, progFD int) error {
	attr := progAttachAttr{targetFD: uint32(cgroupFD), attachBPFFD: uint32(progFD), attachType: unix.BPF_CGROUP_DEVICE}
	_, err := bpfCall(unix.BPF_PROG_DETACH, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	return err
}

// deviceProgramIDs lists the device programs attached to the cgroup itself
// (not inherited ones).
func deviceProgramIDs(cgroupFD int) ([]uint32, error) {
	ids := make([]uint32, 64)
	attr := progQueryAttr{
		targetFD:   uint32(cgroupFD),
		attachType: unix.BPF_CGROUP_DEVICE,
		progIDs:    uint64(uintptr(unsafe.Pointer(&ids[0]))),
		progCnt:    uint32(len(ids)),
	}
	_, err := bpfCall(unix.BPF_PROG_QUERY, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(ids)
	if err != nil {
		return nil, err
	}
	return ids[:attr.progCnt], nil
}

func programFDByID(id uint32) (int, error) {
	attr := progGetFDAttr{progID: id}
	return bpfCall(unix.BPF_PROG_GET_FD_BY_ID, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
}

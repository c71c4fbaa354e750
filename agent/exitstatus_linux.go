package agent

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// exitStatus is the exit code (128+N for signal N) of the exited child
// whose pidfd is fd, read without reaping it (the runtime reaps its
// children); -1 if it is not this process's child or is reaped already.
func exitStatus(fd int) int {
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
		return -1
	}
	// siginfo's child fields, as the kernel lays them out on 64-bit
	// Linux: pid, uid, then the status.
	f := (*struct {
		Signo, Errno, Code int32
		_                  int32
		Pid                int32
		UID                uint32
		Status             int32
	})(unsafe.Pointer(&info))
	switch f.Code {
	case cldExited:
		return int(f.Status)
	case cldKilled, cldDumped:
		return 128 + int(f.Status)
	}
	return -1
}

// si_code values of SIGCHLD (asm-generic/siginfo.h).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

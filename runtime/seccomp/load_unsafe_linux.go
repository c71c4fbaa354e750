package seccomp

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Load installs the program into the calling thread with seccomp(2) and
// returns the user notification fd when the program uses SCMP_ACT_NOTIFY
// (-1 otherwise). Without FlagTsync the filter applies to the calling thread
// only, so call it on the locked OS thread that will execve, after
// no_new_privs is set (or with CAP_SYS_ADMIN), as the last step before exec:
// every syscall after it is filtered.
func (p *Program) Load() (notifyFd int, err error) {
	if err := p.check(); err != nil {
		return -1, err
	}
	filters := make([]unix.SockFilter, len(p.Instructions))
	for i, in := range p.Instructions {
		filters[i] = unix.SockFilter{Code: in.Code, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filters)), Filter: &filters[0]}
	r, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, uintptr(p.Flags), uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(filters)
	if errno != 0 {
		if errno == unix.EACCES {
			return -1, fmt.Errorf("load seccomp filter: %w (no_new_privs is not set and the process lacks CAP_SYS_ADMIN)", errno)
		}
		return -1, fmt.Errorf("load seccomp filter (flags %#x): %w", p.Flags, errno)
	}
	if p.Flags&FlagNewListener != 0 {
		return int(r), nil
	}
	if p.Flags&FlagTsync != 0 && r != 0 {
		// With TSYNC alone, a positive return is the thread that could not
		// be synchronised, and nothing was installed.
		return -1, fmt.Errorf("load seccomp filter: thread %d cannot be synchronised", r)
	}
	return -1, nil
}

package agent

import (
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ParseSignal reads a signal as docker kill takes it: a name with or
// without SIG (TERM, SIGKILL, hup), or a number.
func ParseSignal(s string) (syscall.Signal, error) {
	if s == "" {
		return 0, invalidf("signal: empty")
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, invalidf("signal %d: out of range 1-64", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, invalidf("signal %q: unknown", s)
}

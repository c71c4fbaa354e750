package seccomp

import (
	"encoding/json"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// SendNotifyFd hands a container's seccomp user notification fd to the
// agent listening on the unix socket at listenerPath, as the runtime spec
// asks: one message carrying the container process state as JSON and the fd
// as SCM_RIGHTS. The caller keeps (and should then close) its copy of fd.
func SendNotifyFd(listenerPath, metadata string, state specs.State, fd int) error {
	msg, err := json.Marshal(specs.ContainerProcessState{
		Version:  specs.Version,
		Fds:      []string{specs.SeccompFdName},
		Pid:      state.Pid,
		Metadata: metadata,
		State:    state,
	})
	if err != nil {
		return fmt.Errorf("send seccomp fd to %s: %w", listenerPath, err)
	}
	// x/sys/unix rather than net: the runtime's executable starts for
	// every container, and net's initialisation is a measurable part of it.
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("send seccomp fd: %w", err)
	}
	defer unix.Close(sock)
	if err := unix.Connect(sock, &unix.SockaddrUnix{Name: listenerPath}); err != nil {
		return fmt.Errorf("send seccomp fd: connect %s: %w", listenerPath, err)
	}
	n, err := unix.SendmsgN(sock, msg, unix.UnixRights(fd), nil, 0)
	if err != nil {
		return fmt.Errorf("send seccomp fd to %s: %w", listenerPath, err)
	}
	if n != len(msg) {
		return fmt.Errorf("send seccomp fd to %s: short write (%d of %d bytes)", listenerPath, n, len(msg))
	}
	return nil
}

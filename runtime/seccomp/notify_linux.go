package seccomp

import (
	"encoding/json"
	"fmt"
	"net"

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
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: listenerPath, Net: "unix"})
	if err != nil {
		return fmt.Errorf("send seccomp fd: %w", err)
	}
	defer conn.Close()
	n, oobn, err := conn.WriteMsgUnix(msg, unix.UnixRights(fd), nil)
	if err != nil {
		return fmt.Errorf("send seccomp fd to %s: %w", listenerPath, err)
	}
	if n != len(msg) || oobn == 0 {
		return fmt.Errorf("send seccomp fd to %s: short write (%d of %d bytes)", listenerPath, n, len(msg))
	}
	return nil
}

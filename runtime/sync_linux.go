package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The parent (create/exec) and the child (container init) talk over a
// SOCK_SEQPACKET socketpair: one JSON message per packet, optionally
// carrying one file descriptor.
const (
	msgCgroupReady   = "cgroup-ready"    // parent → child: you are in your cgroup, go on
	msgPreHooks      = "prehooks"        // child → parent: run createRuntime/prestart now
	msgPreHooksDone  = "prehooks-done"   // parent → child
	msgConsole       = "console"         // child → parent: the pty master (fd attached)
	msgSeccompFd     = "seccomp-fd"      // child → parent: the seccomp listener (fd attached)
	msgSeccompFdDone = "seccomp-fd-done" // parent → child: handed to listenerPath
	msgReady         = "ready"           // child → parent: set up, waiting for start
	msgIDMap         = "idmap"           // fast init → parent: map my new user namespace
	msgIDMapDone     = "idmap-done"      // parent → fast init: mapped
	msgPid           = "pid"             // fast init → parent: the container's init is Pid
	msgError         = "error"           // child → parent: set-up failed
)

type syncMsg struct {
	Type  string `json:"t"`
	Error string `json:"e,omitempty"`
	Pid   int    `json:"p,omitempty"`
}

type syncConn struct{ fd int }

func newSyncPair() (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "sync-parent"), os.NewFile(uintptr(fds[1]), "sync-child"), nil
}

// maxSyncMsg bounds one message; send shortens an error to fit.
const maxSyncMsg = 8 << 10

func (c syncConn) send(m syncMsg, fd int) error {
	if len(m.Error) > maxSyncMsg/2 {
		m.Error = m.Error[:maxSyncMsg/2] + "…"
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if err := unix.Sendmsg(c.fd, b, oob, nil, 0); err != nil {
		return fmt.Errorf("send %s: %w", m.Type, err)
	}
	return nil
}

// recv returns the next message and the fd it carried (-1 if none). A closed
// peer is io.EOF-like: errPeerGone.
func (c syncConn) recv() (syncMsg, int, error) {
	buf := make([]byte, maxSyncMsg)
	oob := make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(c.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return syncMsg{}, -1, fmt.Errorf("receive: %w", err)
		}
		if n == 0 && oobn == 0 {
			return syncMsg{}, -1, errPeerGone
		}
		fd := -1
		if oobn > 0 {
			cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err == nil && len(cmsgs) > 0 {
				if fds, err := unix.ParseUnixRights(&cmsgs[0]); err == nil && len(fds) > 0 {
					fd = fds[0]
				}
			}
		}
		var m syncMsg
		if err := json.Unmarshal(buf[:n], &m); err != nil {
			return syncMsg{}, -1, fmt.Errorf("garbled sync message: %w", err)
		}
		return m, fd, nil
	}
}

var errPeerGone = errors.New("peer closed the sync socket")

// lastWords returns the error a peer that has gone said before it went,
// from what it left unread, or nil.
func (c syncConn) lastWords() error {
	for range 16 {
		m, fd, err := c.recv()
		if fd >= 0 {
			unix.Close(fd)
		}
		if err != nil {
			return nil
		}
		if m.Type == msgError {
			return errors.New(m.Error)
		}
	}
	return nil
}

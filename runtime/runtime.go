// Package runtime owns one container's life on one kernel: an OCI bundle in,
// an isolated running process out. Native is Berth's own implementation; OCI
// drives any external runtime (runc, crun, runsc) through its command line,
// so both serve behind the same Runtime interface.
package runtime

import (
	"context"
	"io"
	"os"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Status is a container's lifecycle state, as the OCI runtime spec names them.
type Status string

const (
	Creating Status = "creating"
	Created  Status = "created"
	Running  Status = "running"
	Stopped  Status = "stopped"
	Paused   Status = "paused"
)

// State is the OCI state of a container, plus the fields runc also reports.
type State struct {
	OCIVersion  string            `json:"ociVersion"`
	ID          string            `json:"id"`
	Status      Status            `json:"status"`
	Pid         int               `json:"pid"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Owner       string            `json:"owner"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// IO is what the container's first process gets as stdio when no terminal is
// requested. Nil fields mean /dev/null.
type IO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// CreateOpts are the per-call choices runc's create and run take.
type CreateOpts struct {
	// ConsoleSocket is the path of a unix socket that receives the pty master
	// when the process asks for a terminal.
	ConsoleSocket string
	// PidFile, if set, receives the init pid once the container is created.
	PidFile string
	// NoPivot uses MS_MOVE and chroot instead of pivot_root, for rootfs on
	// ramfs where pivot_root cannot work.
	NoPivot bool
	// PreserveFDs passes fds 3..3+N-1 of the caller to the container.
	PreserveFDs int
	// IO is the process's stdio; unused when a terminal is requested.
	IO IO
	// Console, if set, receives the pty master instead of ConsoleSocket,
	// for callers that proxy the terminal themselves (`run -t`).
	Console func(master *os.File)
	// Written, if set, is the bundle's config.json as the caller wrote it
	// (SaveSpec), taken as it is rather than read and decoded again: on a
	// container's start, reading it back cost more than the rest of the
	// runtime's own work before the init runs. Ignored for another bundle.
	Written *Written
	// Pid, if set, receives the init's pid once the container is created:
	// a caller that needs only that is spared reading the state back.
	Pid *int
	// Start runs the process as soon as the container is set up, as `runc
	// run` does, for a caller with nothing to do between create and start
	// (a network to attach, say): the init does not wait for Start, which
	// must not be called, and the handshake it would take is saved.
	Start bool
}

// ExecOpts are the choices for running one more process in a container.
type ExecOpts struct {
	ConsoleSocket string
	PidFile       string
	PreserveFDs   int
	IO            IO
	Console       func(master *os.File)
	// Detach returns once the process runs; otherwise Exec waits for it.
	// A detached process is reaped in the background, unless
	// LeaveUnreaped.
	Detach bool
	// LeaveUnreaped, with Detach, leaves the process for whoever reaps it
	// once the caller exits: runc's behaviour, which conmon and
	// containerd-shim rely on as subreapers to learn the exit code of a
	// process that ends quickly. Only for a caller that exits right
	// after: until it does, the zombie keeps the container's pid
	// namespace from ending.
	LeaveUnreaped bool
}

// Runtime is what the agent needs from a container runtime. Native
// implements it in-process; OCI implements it over an external runtime's
// command line.
type Runtime interface {
	Create(ctx context.Context, id, bundle string, opts CreateOpts) error
	Start(ctx context.Context, id string) error
	State(ctx context.Context, id string) (State, error)
	Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error
	Delete(ctx context.Context, id string, force bool) error
	Exec(ctx context.Context, id string, p specs.Process, opts ExecOpts) (exitCode int, err error)
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error
	List(ctx context.Context) ([]State, error)
	Pids(ctx context.Context, id string) ([]int, error)
}

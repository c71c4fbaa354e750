package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/runtime"
	"golang.org/x/sys/unix"
)

// Session is a client's end of a process's stdio: the container's own
// (Attach) or an exec'd process's (StartExec).
type Session interface {
	// Read returns the next piece of output and its channel
	// (api.ChannelStdout or api.ChannelStderr); io.EOF once the process
	// has ended and all it wrote is read.
	Read() (channel byte, data []byte, err error)
	// Write sends input; without stdin it is dropped.
	Write(p []byte) (int, error)
	CloseStdin() error
	// Resize sets the terminal's size; without a terminal it does nothing.
	Resize(api.TermSize) error
	// Wait returns the exit code once Read has returned io.EOF.
	Wait(ctx context.Context) (int, error)
	// Close detaches: the process runs on.
	Close() error
}

// attachName is the socket berth-init listens on in the log directory
// (ATTACH_NAME in berth-init.c), and the message types on it.
const (
	attachName = "attach.sock"
	msgResize  = 3
	msgClose   = 4
	msgBusy    = 5
	// maxMessage is berth-init's receive buffer: larger input is split.
	maxMessage = 16384
)

// Attach connects to the container's own stdio, which berth-init serves
// for a container run with TTY or Stdin. Several clients may attach at
// once; each sees the output from when it attached.
func (a *Agent) Attach(ctx context.Context, ref string) (Session, error) {
	c, err := a.get(ref)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	id, spec, running := c.meta.ID, c.meta.Spec, c.exited != nil
	c.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("container %s: %w", id, ErrNotRunning)
	}
	if !spec.TTY && !spec.Stdin {
		return nil, invalidf("container %s: attach needs a container run with tty or stdin; its output is in its logs", id)
	}
	// berth-init binds the socket as it starts, just after the runtime
	// reports the container started; until then it is missing (or a
	// previous run's, refusing).
	var d net.Dialer
	var conn net.Conn
	for tries := 0; ; tries++ {
		conn, err = d.DialContext(ctx, "unixpacket", filepath.Join(a.logDir(id), attachName))
		if err == nil || tries == 100 || !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ECONNREFUSED) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("attach to %s: %w", id, err)
	}
	return &attachSession{a: a, id: id, conn: conn.(*net.UnixConn), buf: make([]byte, 64<<10)}, nil
}

type attachSession struct {
	a    *Agent
	id   string
	conn *net.UnixConn
	buf  []byte
}

func (s *attachSession) Read() (byte, []byte, error) {
	for {
		n, err := s.conn.Read(s.buf)
		if err != nil {
			return 0, nil, err
		}
		if n == 0 {
			// berth-init closed the socket: it and the workload are gone.
			return 0, nil, io.EOF
		}
		if n > 1 && (s.buf[0] == api.ChannelStdout || s.buf[0] == api.ChannelStderr) {
			return s.buf[0], s.buf[1:n], nil
		}
		if s.buf[0] == msgBusy {
			return 0, nil, fmt.Errorf("attach to %s: too many clients attached", s.id)
		}
	}
}

func (s *attachSession) Write(p []byte) (int, error) {
	msg := make([]byte, 0, min(len(p), maxMessage-1)+1)
	done := 0
	for done < len(p) {
		n := min(len(p)-done, maxMessage-1)
		msg = append(append(msg[:0], api.ChannelStdin), p[done:done+n]...)
		if _, err := s.conn.Write(msg); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

func (s *attachSession) CloseStdin() error {
	_, err := s.conn.Write([]byte{msgClose})
	return err
}

func (s *attachSession) Resize(t api.TermSize) error {
	_, err := s.conn.Write(resizeMessage(t))
	return err
}

// resizeMessage is berth-init's MSG_RESIZE: rows, then columns, each a
// little-endian uint16.
func resizeMessage(t api.TermSize) []byte {
	m := []byte{msgResize, 0, 0, 0, 0}
	binary.LittleEndian.PutUint16(m[1:], t.Rows)
	binary.LittleEndian.PutUint16(m[3:], t.Cols)
	return m
}

func (s *attachSession) Wait(ctx context.Context) (int, error) { return s.a.Wait(ctx, s.id) }
func (s *attachSession) Close() error                          { return s.conn.Close() }

// ExecOptions are how an exec's stdio is connected.
type ExecOptions struct {
	TTY   bool
	Stdin bool
}

// StartExec runs a process in the running container with its stdio served
// as a Session. Closing the session before the process ends hangs up its
// terminal or closes its pipes.
func (a *Agent) StartExec(ctx context.Context, ref string, e ExecSpec, o ExecOptions) (Session, error) {
	c, err := a.get(ref)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	id, running := c.meta.ID, c.exited != nil
	c.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("container %s: %w", id, ErrNotRunning)
	}
	if len(e.Args) == 0 {
		return nil, invalidf("exec: no command")
	}
	s := &execSession{out: make(chan frame, 16), done: make(chan struct{}), tty: o.TTY}
	e.TTY = o.TTY
	var childEnds []*os.File
	var stdio runtime.IO
	if o.TTY {
		ready := make(chan struct{})
		// The runtime calls this while it sets the process up, before
		// Exec can return.
		e.Console = func(m *os.File) {
			defer close(ready)
			pty, err := pollable(m)
			if err != nil {
				a.log.Warn("exec terminal", "id", id, "err", err)
				return
			}
			s.pty = pty
			if o.Stdin {
				s.stdin = pty
			}
			s.readers.Add(1)
			go s.pump(pty, api.ChannelStdout)
		}
		go s.run(a, id, e, stdio, nil)
		select {
		case <-ready:
		case <-s.done:
		}
		select {
		case <-ready:
		default:
			// Exec ended before it made the terminal.
			if s.err != nil {
				return nil, s.err
			}
			return nil, fmt.Errorf("exec in %s: no terminal was made", id)
		}
	} else {
		outR, outW, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			outR.Close()
			outW.Close()
			return nil, err
		}
		stdio.Stdout, stdio.Stderr = outW, errW
		childEnds = append(childEnds, outW, errW)
		if o.Stdin {
			inR, inW, err := os.Pipe()
			if err != nil {
				for _, f := range []*os.File{outR, outW, errR, errW} {
					f.Close()
				}
				return nil, err
			}
			stdio.Stdin = inR
			childEnds = append(childEnds, inR)
			s.stdin = inW
		}
		s.pipes = []*os.File{outR, errR}
		s.readers.Add(2)
		go s.pump(outR, api.ChannelStdout)
		go s.pump(errR, api.ChannelStderr)
		go s.run(a, id, e, stdio, childEnds)
	}
	go func() {
		s.readers.Wait()
		close(s.out)
	}()
	return s, nil
}

// pollable turns a blocking pty master into a file in the netpoller, so
// reads can be cut short.
func pollable(m *os.File) (*os.File, error) {
	defer m.Close()
	fd, err := unix.Dup(int(m.Fd()))
	if err != nil {
		return nil, fmt.Errorf("pty: %w", err)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pty: %w", err)
	}
	return os.NewFile(uintptr(fd), "pty"), nil
}

type frame struct {
	ch   byte
	data []byte
}

type execSession struct {
	out     chan frame
	readers sync.WaitGroup
	tty     bool
	pty     *os.File   // the terminal's master, with TTY
	pipes   []*os.File // the read ends of stdout and stderr, without
	stdin   *os.File   // nil without stdin

	// done is closed when the process has ended; code and err are set
	// before.
	done chan struct{}
	code int
	err  error

	closeOnce sync.Once
}

func (s *execSession) run(a *Agent, id string, e ExecSpec, stdio runtime.IO, childEnds []*os.File) {
	s.code, s.err = a.Exec(context.Background(), id, e, stdio)
	for _, f := range childEnds {
		f.Close()
	}
	close(s.done)
	// What the process left in flight is read; a descendant that keeps
	// its stdio open does not hold the session.
	deadline := time.Now().Add(time.Second)
	if s.pty != nil {
		_ = s.pty.SetReadDeadline(deadline)
	}
	for _, f := range s.pipes {
		_ = f.SetReadDeadline(deadline)
	}
}

func (s *execSession) pump(f *os.File, ch byte) {
	defer s.readers.Done()
	for {
		buf := make([]byte, 32<<10)
		n, err := f.Read(buf)
		if n > 0 {
			s.out <- frame{ch, buf[:n]}
		}
		if err != nil {
			// EIO: the terminal's last holder is gone.
			return
		}
	}
}

func (s *execSession) Read() (byte, []byte, error) {
	f, ok := <-s.out
	if !ok {
		return 0, nil, io.EOF
	}
	return f.ch, f.data, nil
}

func (s *execSession) Write(p []byte) (int, error) {
	if s.stdin == nil {
		return len(p), nil
	}
	return s.stdin.Write(p)
}

func (s *execSession) CloseStdin() error {
	if s.stdin == nil {
		return nil
	}
	if s.tty {
		// A terminal has no end of input, only its EOF character.
		_, err := s.stdin.Write([]byte{4})
		return err
	}
	return s.stdin.Close()
}

func (s *execSession) Resize(t api.TermSize) error {
	if s.pty == nil {
		return nil
	}
	rc, err := s.pty.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: t.Rows, Col: t.Cols})
	})
	return errors.Join(err, ierr)
}

func (s *execSession) Wait(ctx context.Context) (int, error) {
	select {
	case <-s.done:
		return s.code, s.err
	case <-ctx.Done():
		return -1, ctx.Err()
	}
}

func (s *execSession) Close() error {
	s.closeOnce.Do(func() {
		if s.pty != nil {
			s.pty.Close() // hangs up the terminal: SIGHUP to its session
		}
		for _, f := range s.pipes {
			f.Close()
		}
		if s.stdin != nil && s.stdin != s.pty {
			s.stdin.Close()
		}
		// Let the pumps end if nobody reads.
		go func() {
			for range s.out {
			}
		}()
	})
	return nil
}

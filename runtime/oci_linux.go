package runtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// OCI drives an external OCI runtime (runc, crun, runsc, or berth-runtime
// itself) through runc's command line, the contract every such runtime
// keeps. Errors come from the runtime's JSON log, not its stderr, which
// create hands on to the container.
type OCI struct {
	// Binary is the runtime's executable, a path or a name on PATH.
	Binary string
	// Root is the runtime's state directory (its --root).
	Root string
	Log  *slog.Logger
}

// NewOCI checks that binary runs and returns an OCI runtime keeping its
// state under root.
func NewOCI(binary, root string, log *slog.Logger) (*OCI, error) {
	p, err := exec.LookPath(binary)
	if err != nil {
		return nil, fmt.Errorf("oci runtime %s: %w", binary, err)
	}
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, fmt.Errorf("oci runtime root: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &OCI{Binary: p, Root: root, Log: log}, nil
}

var _ Runtime = (*OCI)(nil)

// command runs one verb. stdio, if set, is the process's (and through create
// or exec, the container's); otherwise it gets /dev/null. It returns the
// runtime's exit status as an error, with the error it logged.
func (o *OCI) command(ctx context.Context, stdio *IO, args ...string) error {
	cmd, logPath, cleanup, err := o.prepare(ctx, stdio, args...)
	if err != nil {
		return err
	}
	defer cleanup()
	if err := cmd.Run(); err != nil {
		return o.failure(args, logPath, err)
	}
	return nil
}

// output runs one verb and returns what it printed.
func (o *OCI) output(ctx context.Context, args ...string) ([]byte, error) {
	cmd, logPath, cleanup, err := o.prepare(ctx, nil, args...)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		return nil, o.failure(args, logPath, err)
	}
	return out.Bytes(), nil
}

func (o *OCI) prepare(ctx context.Context, stdio *IO, args ...string) (*exec.Cmd, string, func(), error) {
	logf, err := os.CreateTemp(o.Root, ".log-")
	if err != nil {
		return nil, "", nil, fmt.Errorf("oci runtime log: %w", err)
	}
	logf.Close()
	full := append([]string{"--root", o.Root, "--log", logf.Name(), "--log-format", "json"}, args...)
	cmd := exec.CommandContext(ctx, o.Binary, full...)
	var closers []io.Closer
	cleanup := func() {
		for _, c := range closers {
			c.Close()
		}
		os.Remove(logf.Name())
	}
	if stdio != nil {
		// Files, not exec's copying goroutines: a created container keeps
		// its stdio open long after the runtime has exited.
		in, out, errw, cs, err := stdioFiles(*stdio)
		if err != nil {
			cleanup()
			return nil, "", nil, err
		}
		closers = append(closers, cs...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = in, out, errw
	}
	return cmd, logf.Name(), cleanup, nil
}

// stdioFiles turns IO into files: an *os.File as is, any other reader or
// writer through a pipe pumped by a goroutine that ends with the pipe.
// The returned closers are the parent's ends, to close once the child has
// them.
func stdioFiles(s IO) (in, out, errw *os.File, closers []io.Closer, err error) {
	pipeOut := func(w io.Writer) (*os.File, error) {
		if w == nil {
			return nil, nil
		}
		if f, ok := w.(*os.File); ok {
			return f, nil
		}
		r, pw, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		go func() { _, _ = io.Copy(w, r); r.Close() }()
		closers = append(closers, pw)
		return pw, nil
	}
	if s.Stdin != nil {
		if f, ok := s.Stdin.(*os.File); ok {
			in = f
		} else {
			pr, w, perr := os.Pipe()
			if perr != nil {
				return nil, nil, nil, nil, perr
			}
			go func() { _, _ = io.Copy(w, s.Stdin); w.Close() }()
			closers = append(closers, pr)
			in = pr
		}
	}
	if out, err = pipeOut(s.Stdout); err != nil {
		return nil, nil, nil, closers, err
	}
	if errw, err = pipeOut(s.Stderr); err != nil {
		return nil, nil, nil, closers, err
	}
	return in, out, errw, closers, nil
}

// runtimeError is a verb that failed. msg is what the runtime logged; a
// verb that exits non-zero without logging an error (exec passing on its
// process's exit code) has none.
type runtimeError struct {
	bin, verb, msg string
	err            error
}

func (e *runtimeError) Error() string {
	if e.msg == "" {
		return fmt.Sprintf("%s %s: %v", e.bin, e.verb, e.err)
	}
	return fmt.Sprintf("%s %s: %s", e.bin, e.verb, e.msg)
}

func (e *runtimeError) Unwrap() error { return e.err }

// failure reads the last error the runtime logged (runc and crun log JSON
// lines with "level" and "msg").
func (o *OCI) failure(args []string, logPath string, runErr error) error {
	e := &runtimeError{bin: filepath.Base(o.Binary), verb: strings.Join(args, " "), err: runErr}
	if f, err := os.Open(logPath); err == nil {
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var l struct{ Level, Msg string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && (l.Level == "error" || l.Level == "fatal") {
				e.msg = l.Msg
			}
		}
		f.Close()
	}
	return e
}

func (o *OCI) Create(ctx context.Context, id, bundle string, opts CreateOpts) error {
	if opts.Console != nil {
		return errors.New("oci runtime: an in-process console is not supported; use a console socket")
	}
	args := []string{"create", "--bundle", bundle}
	args = appendCommon(args, opts.ConsoleSocket, opts.PidFile, opts.PreserveFDs)
	if opts.NoPivot {
		args = append(args, "--no-pivot")
	}
	if err := o.command(ctx, &opts.IO, append(args, id)...); err != nil {
		return err
	}
	// What fails after the create takes the container with it: the caller
	// has nothing to delete.
	if opts.Pid != nil {
		st, err := o.State(ctx, id)
		if err != nil {
			_ = o.Delete(context.WithoutCancel(ctx), id, true)
			return err
		}
		*opts.Pid = st.Pid
	}
	if opts.Start {
		if err := o.Start(ctx, id); err != nil {
			_ = o.Delete(context.WithoutCancel(ctx), id, true)
			return err
		}
	}
	return nil
}

func appendCommon(args []string, consoleSocket, pidFile string, preserve int) []string {
	if consoleSocket != "" {
		args = append(args, "--console-socket", consoleSocket)
	}
	if pidFile != "" {
		args = append(args, "--pid-file", pidFile)
	}
	if preserve > 0 {
		args = append(args, "--preserve-fds", strconv.Itoa(preserve))
	}
	return args
}

func (o *OCI) Start(ctx context.Context, id string) error {
	return o.command(ctx, nil, "start", id)
}

func (o *OCI) State(ctx context.Context, id string) (State, error) {
	b, err := o.output(ctx, "state", id)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") {
			return State{}, fmt.Errorf("%w: %v", ErrNotExist, err)
		}
		return State{}, err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("%s state %s: %w", filepath.Base(o.Binary), id, err)
	}
	return st, nil
}

func (o *OCI) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	args := []string{"kill"}
	if all {
		args = append(args, "--all")
	}
	return o.command(ctx, nil, append(args, id, strconv.Itoa(int(sig)))...)
}

func (o *OCI) Delete(ctx context.Context, id string, force bool) error {
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	return o.command(ctx, nil, append(args, id)...)
}

// Exec passes the process as a --process file, as containerd does, so no
// field is lost to flag spelling.
func (o *OCI) Exec(ctx context.Context, id string, p specs.Process, opts ExecOpts) (int, error) {
	if opts.Console != nil {
		return -1, errors.New("oci runtime: an in-process console is not supported; use a console socket")
	}
	b, err := json.Marshal(p)
	if err != nil {
		return -1, err
	}
	f, err := os.CreateTemp(o.Root, ".process-")
	if err != nil {
		return -1, fmt.Errorf("exec process file: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return -1, fmt.Errorf("exec process file: %w", err)
	}
	f.Close()
	args := appendCommon([]string{"exec", "--process", f.Name()}, opts.ConsoleSocket, opts.PidFile, opts.PreserveFDs)
	if opts.Detach {
		args = append(args, "--detach")
	}
	err = o.command(ctx, &opts.IO, append(args, id)...)
	var re *runtimeError
	var ee *exec.ExitError
	if errors.As(err, &re) && re.msg == "" && errors.As(err, &ee) && !opts.Detach {
		// The runtime passes the process's exit code on as its own.
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}

func (o *OCI) Pause(ctx context.Context, id string) error {
	return o.command(ctx, nil, "pause", id)
}

func (o *OCI) Resume(ctx context.Context, id string) error {
	return o.command(ctx, nil, "resume", id)
}

func (o *OCI) List(ctx context.Context) ([]State, error) {
	b, err := o.output(ctx, "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var list []State
	if len(bytes.TrimSpace(b)) == 0 || bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		return nil, nil
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("%s list: %w", filepath.Base(o.Binary), err)
	}
	return list, nil
}

func (o *OCI) Pids(ctx context.Context, id string) ([]int, error) {
	b, err := o.output(ctx, "ps", "--format", "json", id)
	if err != nil {
		return nil, err
	}
	var pids []int
	if err := json.Unmarshal(b, &pids); err != nil {
		return nil, fmt.Errorf("%s ps %s: %w", filepath.Base(o.Binary), id, err)
	}
	return pids, nil
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/runtime"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// allVerbs builds the verbs, in the order help lists them.
func allVerbs(g *globals, out io.Writer, code *int) []*verb {
	return []*verb{
		createVerb(g), deleteVerb(g), execVerb(g, code), featuresVerb(out),
		killVerb(g), listVerb(g, out), pauseVerb(g), psVerb(g, out),
		resumeVerb(g), runVerb(g, code), specVerb(), startVerb(g), stateVerb(g, out),
	}
}

func stdio() runtime.IO {
	return runtime.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
}

type createFlags struct {
	bundle        string
	consoleSocket string
	pidFile       string
	noPivot       bool
	noNewKeyring  bool
	preserveFDs   int
}

func (f *createFlags) register(fl *flagSet) {
	fl.stringVar(&f.bundle, "bundle", "b", "", "path to the root of the bundle directory, defaults to the current directory")
	fl.stringVar(&f.consoleSocket, "console-socket", "", "", "path to an AF_UNIX socket which will receive a file descriptor referencing the master end of the console's pseudoterminal")
	fl.stringVar(&f.pidFile, "pid-file", "", "", "specify the file to write the process id to")
	fl.boolVar(&f.noPivot, "no-pivot", "", "do not use pivot root to jail process inside rootfs")
	fl.boolVar(&f.noNewKeyring, "no-new-keyring", "", "do not create a new session keyring for the container")
	fl.intVar(&f.preserveFDs, "preserve-fds", "", "pass N additional file descriptors to the container (stdio + $LISTEN_FDS + N in total)")
}

func (f *createFlags) opts() (string, runtime.CreateOpts) {
	bundle := f.bundle
	if bundle == "" {
		bundle, _ = os.Getwd()
	}
	preserve := f.preserveFDs
	if n, err := strconv.Atoi(os.Getenv("LISTEN_FDS")); err == nil && n > 0 {
		preserve += n
	}
	return bundle, runtime.CreateOpts{
		ConsoleSocket: f.consoleSocket, PidFile: absOrEmpty(f.pidFile), NoPivot: f.noPivot,
		PreserveFDs: preserve, IO: stdio(),
	}
}

func absOrEmpty(p string) string {
	if p == "" {
		return ""
	}
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

func createVerb(g *globals) *verb {
	var f createFlags
	v := idVerb(g, "create [flags] <container-id>", "create a container", func(r *runtime.Native, ctx context.Context, id string) error {
		bundle, o := f.opts()
		return r.Create(ctx, id, bundle, o)
	})
	f.register(v.flags)
	return v
}

func startVerb(g *globals) *verb {
	return idVerb(g, "start <container-id>", "executes the user defined process in a created container", (*runtime.Native).Start)
}

// idVerb is a verb that takes one container ID and calls fn with it.
func idVerb(g *globals, use, short string, fn func(*runtime.Native, context.Context, string) error) *verb {
	v := newVerb(use, short, func(args []string) error {
		r, err := g.runtime()
		if err != nil {
			return err
		}
		return fn(r, context.Background(), args[0])
	})
	v.args = oneID
	return v
}

func runVerb(g *globals, code *int) *verb {
	var f createFlags
	var detach, keep bool
	v := newVerb("run [flags] <container-id>", "create and run a container", func(args []string) error {
		r, err := g.runtime()
		if err != nil {
			return err
		}
		bundle, o := f.opts()
		ctx := context.Background()
		if detach {
			if err := r.Create(ctx, args[0], bundle, o); err != nil {
				return err
			}
			return r.Start(ctx, args[0])
		}
		var restore func()
		if f.consoleSocket == "" {
			o.Console = func(master *os.File) { restore = proxyTerminal(master) }
		}
		stop := forwardSignals(r, args[0])
		defer stop()
		c, err := r.Run(ctx, args[0], bundle, o, keep)
		if restore != nil {
			restore()
		}
		if err != nil {
			return err
		}
		*code = c
		return nil
	})
	v.args = oneID
	f.register(v.flags)
	v.flags.boolVar(&detach, "detach", "d", "detach from the container's process")
	v.flags.boolVar(&keep, "keep", "", "do not delete the container after it exits")
	return v
}

// forwardSignals relays the signals a foreground `run` receives to the
// container's init, as runc does.
func forwardSignals(r *runtime.Native, id string) func() {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-ch:
				_ = r.Kill(context.Background(), id, s.(syscall.Signal), false)
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}

func stateVerb(g *globals, out io.Writer) *verb {
	v := newVerb("state <container-id>", "output the state of a container", func(args []string) error {
		r, err := g.runtime()
		if err != nil {
			return err
		}
		st, err := r.State(context.Background(), args[0])
		if err != nil {
			return err
		}
		return printJSON(out, st)
	})
	v.args = oneID
	return v
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func killVerb(g *globals) *verb {
	var all bool
	v := newVerb("kill [flags] <container-id> [signal]", "kill sends the specified signal (default: SIGTERM) to the container's init process", func(args []string) error {
		sig := unix.SIGTERM
		if len(args) == 2 {
			s, err := parseSignal(args[1])
			if err != nil {
				return err
			}
			sig = s
		}
		r, err := g.runtime()
		if err != nil {
			return err
		}
		return r.Kill(context.Background(), args[0], sig, all)
	})
	v.args = argsBetween(1, 2)
	v.flags.boolVar(&all, "all", "a", "send the specified signal to all processes inside the container")
	return v
}

// parseSignal accepts 9, KILL and SIGKILL alike.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("signal %d is out of range", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	if sig == 0 {
		return 0, fmt.Errorf("unknown signal %q", s)
	}
	return sig, nil
}

func deleteVerb(g *globals) *verb {
	var force bool
	v := newVerb("delete [flags] <container-id>", "delete any resources held by the container", func(args []string) error {
		r, err := g.runtime()
		if err != nil {
			return err
		}
		var errs []error
		for _, id := range args {
			if err := r.Delete(context.Background(), id, force); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	v.args = argsAtLeast(1)
	v.flags.boolVar(&force, "force", "f", "forcibly delete the container if it is still running (uses SIGKILL)")
	return v
}

type execFlags struct {
	consoleSocket, cwd, user, processPath, pidFile string
	env, caps                                      []string
	addGids                                        []int
	tty, detach, noNewPrivs                        bool
	preserveFDs                                    int
}

func (f *execFlags) register(fl *flagSet) {
	fl.stringVar(&f.consoleSocket, "console-socket", "", "", "path to an AF_UNIX socket which will receive a file descriptor referencing the master end of the console's pseudoterminal")
	fl.stringVar(&f.cwd, "cwd", "", "", "current working directory in the container")
	fl.stringsVar(&f.env, "env", "e", "set environment variables")
	fl.boolVar(&f.tty, "tty", "t", "allocate a pseudo-TTY")
	fl.stringVar(&f.user, "user", "u", "", "UID (format: <uid>[:<gid>])")
	fl.intsVar(&f.addGids, "additional-gids", "g", "additional gids")
	fl.stringVar(&f.processPath, "process", "p", "", "path to the process.json")
	fl.boolVar(&f.detach, "detach", "d", "detach from the container's process")
	fl.stringVar(&f.pidFile, "pid-file", "", "", "specify the file to write the process id to")
	fl.boolVar(&f.noNewPrivs, "no-new-privs", "", "set the no new privileges value for the process")
	fl.stringsVar(&f.caps, "cap", "c", "add a capability to the bounding set for the process")
	fl.intVar(&f.preserveFDs, "preserve-fds", "", "pass N additional file descriptors to the container")
}

func execVerb(g *globals, code *int) *verb {
	var f execFlags
	var v *verb
	v = newVerb("exec [flags] <container-id> <command> [args...]", "execute new process inside the container", func(args []string) error {
		r, err := g.runtime()
		if err != nil {
			return err
		}
		id, cmdline := args[0], args[1:]
		// The flags end at the container ID, so a -- after it can only
		// be there to separate the command: runc's callers write
		// `exec ID -- cmd args`.
		if len(cmdline) > 0 && cmdline[0] == "--" {
			cmdline = cmdline[1:]
		}
		p, err := execProcess(r, id, f.processPath, cmdline)
		if err != nil {
			return err
		}
		if v.flags.changed("tty") {
			p.Terminal = f.tty
		}
		if f.cwd != "" {
			p.Cwd = f.cwd
		}
		p.Env = append(p.Env, f.env...)
		if f.user != "" {
			if err := parseUser(f.user, &p.User); err != nil {
				return err
			}
		}
		for _, gid := range f.addGids {
			p.User.AdditionalGids = append(p.User.AdditionalGids, uint32(gid))
		}
		if f.noNewPrivs {
			p.NoNewPrivileges = true
		}
		if len(f.caps) > 0 && p.Capabilities != nil {
			for _, c := range f.caps {
				p.Capabilities.Bounding = append(p.Capabilities.Bounding, c)
				p.Capabilities.Effective = append(p.Capabilities.Effective, c)
				p.Capabilities.Permitted = append(p.Capabilities.Permitted, c)
			}
		}
		o := runtime.ExecOpts{ConsoleSocket: f.consoleSocket, PidFile: absOrEmpty(f.pidFile), PreserveFDs: f.preserveFDs, IO: stdio(), Detach: f.detach, LeaveUnreaped: f.detach}
		var restore func()
		if p.Terminal && f.consoleSocket == "" {
			o.Console = func(master *os.File) { restore = proxyTerminal(master) }
		}
		c, err := r.Exec(context.Background(), id, *p, o)
		if restore != nil {
			restore()
		}
		if err != nil {
			return err
		}
		*code = c
		return nil
	})
	v.interspersed = false
	v.args = argsAtLeast(1)
	f.register(v.flags)
	return v
}

// execProcess builds the process to exec: from --process, or from the
// container's own process with new arguments, as runc does.
func execProcess(r *runtime.Native, id, processPath string, args []string) (*specs.Process, error) {
	if processPath != "" {
		b, err := os.ReadFile(processPath)
		if err != nil {
			return nil, fmt.Errorf("read process: %w", err)
		}
		var p specs.Process
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, fmt.Errorf("%s: %w", processPath, err)
		}
		return &p, nil
	}
	if len(args) == 0 {
		return nil, errors.New("exec needs a command, or --process")
	}
	spec, err := r.Spec(id)
	if err != nil {
		return nil, err
	}
	p := *spec.Process
	p.Args = args
	p.Terminal = false
	p.ConsoleSize = nil
	return &p, nil
}

func parseUser(s string, u *specs.User) error {
	uidS, gidS, hasGid := strings.Cut(s, ":")
	uid, err := strconv.ParseUint(uidS, 10, 32)
	if err != nil {
		return fmt.Errorf("--user %q: uid must be a number", s)
	}
	u.UID = uint32(uid)
	if hasGid {
		gid, err := strconv.ParseUint(gidS, 10, 32)
		if err != nil {
			return fmt.Errorf("--user %q: gid must be a number", s)
		}
		u.GID = uint32(gid)
	}
	return nil
}

func listVerb(g *globals, out io.Writer) *verb {
	var format string
	var quiet bool
	v := newVerb("list [flags]", "lists containers started by berth-runtime with the given root", func(args []string) error {
		r, err := g.runtime()
		if err != nil {
			return err
		}
		list, err := r.List(context.Background())
		if err != nil {
			return err
		}
		switch {
		case quiet:
			for _, s := range list {
				fmt.Fprintln(out, s.ID)
			}
		case format == "json":
			if list == nil {
				list = []runtime.State{}
			}
			return printJSON(out, list)
		case format == "table":
			w := tabwriter.NewWriter(out, 12, 1, 3, ' ', 0)
			fmt.Fprint(w, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n")
			for _, s := range list {
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", s.ID, s.Pid, s.Status, s.Bundle, s.Created.Format(time.RFC3339Nano), s.Owner)
			}
			return w.Flush()
		default:
			return fmt.Errorf("--format %q: want table or json", format)
		}
		return nil
	})
	v.args = noArgs("list")
	v.flags.stringVar(&format, "format", "f", "table", "select one of: table or json")
	v.flags.boolVar(&quiet, "quiet", "q", "display only container IDs")
	return v
}

func psVerb(g *globals, out io.Writer) *verb {
	var format string
	v := newVerb("ps [flags] <container-id> [ps options]", "ps displays the processes running inside a container", func(args []string) error {
		r, err := g.runtime()
		if err != nil {
			return err
		}
		pids, err := r.Pids(context.Background(), args[0])
		if err != nil {
			return err
		}
		if format == "json" {
			if pids == nil {
				pids = []int{}
			}
			return json.NewEncoder(out).Encode(pids)
		}
		if format != "table" {
			return fmt.Errorf("--format %q: want table or json", format)
		}
		psArgs := args[1:]
		if len(psArgs) == 0 {
			psArgs = []string{"-ef"}
		}
		b, err := exec.Command("ps", psArgs...).Output()
		if err != nil {
			return fmt.Errorf("ps %s: %w", strings.Join(psArgs, " "), err)
		}
		return filterPs(out, string(b), pids)
	})
	v.interspersed = false
	v.args = argsAtLeast(1)
	v.flags.stringVar(&format, "format", "f", "table", "select one of: table or json")
	return v
}

// filterPs keeps ps's header and the rows whose PID column is one of pids.
func filterPs(w io.Writer, out string, pids []int) error {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 {
		return nil
	}
	col := -1
	for i, h := range strings.Fields(lines[0]) {
		if h == "PID" {
			col = i
		}
	}
	if col < 0 {
		return errors.New("ps output has no PID column")
	}
	in := map[int]bool{}
	for _, p := range pids {
		in[p] = true
	}
	fmt.Fprintln(w, lines[0])
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) > col {
			if p, err := strconv.Atoi(f[col]); err == nil && in[p] {
				fmt.Fprintln(w, l)
			}
		}
	}
	return nil
}

func pauseVerb(g *globals) *verb {
	return idVerb(g, "pause <container-id>", "pause suspends all processes inside the container", (*runtime.Native).Pause)
}

func resumeVerb(g *globals) *verb {
	return idVerb(g, "resume <container-id>", "resumes all processes that have been previously paused", (*runtime.Native).Resume)
}

func specVerb() *verb {
	var bundle string
	var rootless bool
	v := newVerb("spec [flags] [-- command args...]", "create a new specification file (config.json) in the bundle", func(args []string) error {
		if rootless {
			return errors.New("--rootless: rootless specs are not supported")
		}
		if bundle == "" {
			bundle = "."
		}
		p := filepath.Join(bundle, "config.json")
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s already exists; remove it first", p)
		}
		s := runtime.DefaultSpec()
		if len(args) > 0 {
			s.Process.Args = args
			s.Process.Terminal = false
		}
		b, err := json.MarshalIndent(s, "", "\t")
		if err != nil {
			return err
		}
		return os.WriteFile(p, append(b, '\n'), 0o644)
	})
	v.flags.stringVar(&bundle, "bundle", "b", "", "path to the root of the bundle directory")
	v.flags.boolVar(&rootless, "rootless", "", "generate a configuration for a rootless container")
	return v
}

func featuresVerb(out io.Writer) *verb {
	v := newVerb("features", "show the enabled features", func(args []string) error {
		return printJSON(out, runtime.Features())
	})
	v.args = noArgs("features")
	return v
}

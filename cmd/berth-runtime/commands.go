package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

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

func (f *createFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.bundle, "bundle", "b", "", "path to the root of the bundle directory, defaults to the current directory")
	fl.StringVar(&f.consoleSocket, "console-socket", "", "path to an AF_UNIX socket which will receive a file descriptor referencing the master end of the console's pseudoterminal")
	fl.StringVar(&f.pidFile, "pid-file", "", "specify the file to write the process id to")
	fl.BoolVar(&f.noPivot, "no-pivot", false, "do not use pivot root to jail process inside rootfs")
	fl.BoolVar(&f.noNewKeyring, "no-new-keyring", false, "do not create a new session keyring for the container")
	fl.IntVar(&f.preserveFDs, "preserve-fds", 0, "pass N additional file descriptors to the container (stdio + $LISTEN_FDS + N in total)")
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

func oneID(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("expected exactly one container ID, got %d arguments", len(args))
	}
	return nil
}

func newCreateCmd(g *globals) *cobra.Command {
	var f createFlags
	cmd := idCmd(g, "create [flags] <container-id>", "create a container", func(r *runtime.Native, ctx context.Context, id string) error {
		bundle, o := f.opts()
		return r.Create(ctx, id, bundle, o)
	})
	f.register(cmd)
	return cmd
}

func newStartCmd(g *globals) *cobra.Command {
	return idCmd(g, "start <container-id>", "executes the user defined process in a created container", (*runtime.Native).Start)
}

// idCmd is a verb that takes one container ID and calls fn with it.
func idCmd(g *globals, use, short string, fn func(*runtime.Native, context.Context, string) error) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  func(_ *cobra.Command, args []string) error { return oneID(args) },
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.runtime()
			if err != nil {
				return err
			}
			return fn(r, context.Background(), args[0])
		},
	}
}

func newRunCmd(g *globals, code *int) *cobra.Command {
	var f createFlags
	var detach, keep bool
	cmd := &cobra.Command{
		Use:   "run [flags] <container-id>",
		Short: "create and run a container",
		Args:  func(_ *cobra.Command, args []string) error { return oneID(args) },
		RunE: func(cmd *cobra.Command, args []string) error {
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
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "detach from the container's process")
	cmd.Flags().BoolVar(&keep, "keep", false, "do not delete the container after it exits")
	return cmd
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

func newStateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "state <container-id>",
		Short: "output the state of a container",
		Args:  func(_ *cobra.Command, args []string) error { return oneID(args) },
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.runtime()
			if err != nil {
				return err
			}
			st, err := r.State(context.Background(), args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd, st)
		},
	}
}

func printJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newKillCmd(g *globals) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "kill [flags] <container-id> [signal]",
		Short: "kill sends the specified signal (default: SIGTERM) to the container's init process",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
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
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "send the specified signal to all processes inside the container")
	return cmd
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

func newDeleteCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete [flags] <container-id>",
		Short: "delete any resources held by the container",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
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
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "forcibly delete the container if it is still running (uses SIGKILL)")
	return cmd
}

func newExecCmd(g *globals, code *int) *cobra.Command {
	var (
		consoleSocket, cwd, user, processPath, pidFile string
		env, caps                                      []string
		addGids                                        []int
		tty, detach, noNewPrivs                        bool
		preserveFDs                                    int
	)
	cmd := &cobra.Command{
		Use:   "exec [flags] <container-id> <command> [args...]",
		Short: "execute new process inside the container",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.runtime()
			if err != nil {
				return err
			}
			id := args[0]
			p, err := execProcess(r, g.root, id, processPath, args[1:])
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("tty") {
				p.Terminal = tty
			}
			if cwd != "" {
				p.Cwd = cwd
			}
			p.Env = append(p.Env, env...)
			if user != "" {
				if err := parseUser(user, &p.User); err != nil {
					return err
				}
			}
			for _, gid := range addGids {
				p.User.AdditionalGids = append(p.User.AdditionalGids, uint32(gid))
			}
			if noNewPrivs {
				p.NoNewPrivileges = true
			}
			if len(caps) > 0 && p.Capabilities != nil {
				for _, c := range caps {
					p.Capabilities.Bounding = append(p.Capabilities.Bounding, c)
					p.Capabilities.Effective = append(p.Capabilities.Effective, c)
					p.Capabilities.Permitted = append(p.Capabilities.Permitted, c)
				}
			}
			o := runtime.ExecOpts{ConsoleSocket: consoleSocket, PidFile: absOrEmpty(pidFile), PreserveFDs: preserveFDs, IO: stdio(), Detach: detach, LeaveUnreaped: detach}
			var restore func()
			if p.Terminal && consoleSocket == "" {
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
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	fl.StringVar(&consoleSocket, "console-socket", "", "path to an AF_UNIX socket which will receive a file descriptor referencing the master end of the console's pseudoterminal")
	fl.StringVar(&cwd, "cwd", "", "current working directory in the container")
	fl.StringArrayVarP(&env, "env", "e", nil, "set environment variables")
	fl.BoolVarP(&tty, "tty", "t", false, "allocate a pseudo-TTY")
	fl.StringVarP(&user, "user", "u", "", "UID (format: <uid>[:<gid>])")
	fl.IntSliceVarP(&addGids, "additional-gids", "g", nil, "additional gids")
	fl.StringVarP(&processPath, "process", "p", "", "path to the process.json")
	fl.BoolVarP(&detach, "detach", "d", false, "detach from the container's process")
	fl.StringVar(&pidFile, "pid-file", "", "specify the file to write the process id to")
	fl.BoolVar(&noNewPrivs, "no-new-privs", false, "set the no new privileges value for the process")
	fl.StringArrayVarP(&caps, "cap", "c", nil, "add a capability to the bounding set for the process")
	fl.IntVar(&preserveFDs, "preserve-fds", 0, "pass N additional file descriptors to the container")
	return cmd
}

// execProcess builds the process to exec: from --process, or from the
// container's own process with new arguments, as runc does.
func execProcess(r *runtime.Native, root, id, processPath string, args []string) (*specs.Process, error) {
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

func newListCmd(g *globals) *cobra.Command {
	var format string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "list [flags]",
		Short: "lists containers started by berth-runtime with the given root",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
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
					fmt.Fprintln(cmd.OutOrStdout(), s.ID)
				}
			case format == "json":
				if list == nil {
					list = []runtime.State{}
				}
				return printJSON(cmd, list)
			case format == "table":
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 12, 1, 3, ' ', 0)
				fmt.Fprint(w, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n")
				for _, s := range list {
					fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", s.ID, s.Pid, s.Status, s.Bundle, s.Created.Format(time.RFC3339Nano), s.Owner)
				}
				return w.Flush()
			default:
				return fmt.Errorf("--format %q: want table or json", format)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "table", "select one of: table or json")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "display only container IDs")
	return cmd
}

func newPsCmd(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "ps [flags] <container-id> [ps options]",
		Short: "ps displays the processes running inside a container",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
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
				return json.NewEncoder(cmd.OutOrStdout()).Encode(pids)
			}
			if format != "table" {
				return fmt.Errorf("--format %q: want table or json", format)
			}
			psArgs := args[1:]
			if len(psArgs) == 0 {
				psArgs = []string{"-ef"}
			}
			out, err := exec.Command("ps", psArgs...).Output()
			if err != nil {
				return fmt.Errorf("ps %s: %w", strings.Join(psArgs, " "), err)
			}
			return filterPs(cmd, string(out), pids)
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "table", "select one of: table or json")
	cmd.Flags().SetInterspersed(false)
	return cmd
}

// filterPs keeps ps's header and the rows whose PID column is one of pids.
func filterPs(cmd *cobra.Command, out string, pids []int) error {
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
	fmt.Fprintln(cmd.OutOrStdout(), lines[0])
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) > col {
			if p, err := strconv.Atoi(f[col]); err == nil && in[p] {
				fmt.Fprintln(cmd.OutOrStdout(), l)
			}
		}
	}
	return nil
}

func newPauseCmd(g *globals) *cobra.Command {
	return idCmd(g, "pause <container-id>", "pause suspends all processes inside the container", (*runtime.Native).Pause)
}

func newResumeCmd(g *globals) *cobra.Command {
	return idCmd(g, "resume <container-id>", "resumes all processes that have been previously paused", (*runtime.Native).Resume)
}

func newSpecCmd(g *globals) *cobra.Command {
	var bundle string
	var rootless bool
	cmd := &cobra.Command{
		Use:   "spec [flags] [-- command args...]",
		Short: "create a new specification file (config.json) in the bundle",
		RunE: func(cmd *cobra.Command, args []string) error {
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
		},
	}
	cmd.Flags().StringVarP(&bundle, "bundle", "b", "", "path to the root of the bundle directory")
	cmd.Flags().BoolVar(&rootless, "rootless", false, "generate a configuration for a rootless container")
	return cmd
}

func newFeaturesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "features",
		Short: "show the enabled features",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return printJSON(cmd, runtime.Features())
		},
	}
}

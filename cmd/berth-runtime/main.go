// Command berth-runtime is Berth's OCI runtime. It speaks runc's command
// line, so anything that drives runc (containerd, Podman, CRI-O, Docker)
// can drive it: install it as runc, or point the tool's runtime path at it.
// It is separate from the berth binary to stay lean: every container start
// runs it two or three times, and each start of a binary that links the
// control plane costs ~30 ms of package initialisation.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"

	"github.com/berth-dev/berth/runtime"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if runtime.IsInit() {
		runtime.InitMain() // never returns
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// globals are runc's global flags.
type globals struct {
	root          string
	log           string
	logFormat     string
	debug         bool
	systemdCgroup bool
	criu          string
	rootless      string
	logger        *slog.Logger
	logFile       *os.File
}

func run(args []string, stdout, stderr io.Writer) int {
	g := &globals{}
	code := 0
	root := &cobra.Command{
		Use:           "berth-runtime",
		Short:         "Berth's OCI runtime, command-line compatible with runc",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if n := cmd.Name(); n != "run" && n != "exec" {
				// A verb that returns in milliseconds allocates a few MiB at
				// most; a collection would cost more than it frees.
				debug.SetGCPercent(-1)
			}
			return g.setup(stderr)
		},
	}
	root.SetVersionTemplate("berth-runtime version {{.Version}}\nspec: " + specs.Version + "\n")
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.root, "root", "/run/berth-runtime", "root directory for storage of container state (this should be located in tmpfs)")
	pf.StringVar(&g.log, "log", "", "set the log file to write runtime logs to (default is stderr)")
	pf.StringVar(&g.logFormat, "log-format", "text", "set the log format ('text' (default), or 'json')")
	pf.BoolVar(&g.debug, "debug", false, "enable debug logging")
	pf.BoolVar(&g.systemdCgroup, "systemd-cgroup", false, "enable systemd cgroup support (not supported: use cgroupfs)")
	pf.StringVar(&g.criu, "criu", "criu", "path to the criu binary (checkpoint is not supported)")
	pf.StringVar(&g.rootless, "rootless", "auto", "ignore cgroup permission errors ('true', 'false', or 'auto')")
	root.AddCommand(
		newCreateCmd(g), newStartCmd(g), newRunCmd(g, &code), newStateCmd(g),
		newKillCmd(g), newDeleteCmd(g), newExecCmd(g, &code), newListCmd(g),
		newPsCmd(g), newPauseCmd(g), newResumeCmd(g), newSpecCmd(g), newFeaturesCmd(g),
	)
	root.SetArgs(args)
	err := root.Execute()
	if g.logFile != nil {
		defer g.logFile.Close()
	}
	if err != nil {
		if g.logger != nil && g.log != "" {
			g.logger.Error(err.Error())
		}
		fmt.Fprintln(stderr, "berth-runtime:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return code
}

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func (g *globals) setup(stderr io.Writer) error {
	if g.systemdCgroup {
		return errors.New("--systemd-cgroup: the systemd cgroup driver is not supported; configure the caller to use cgroupfs")
	}
	if g.rootless == "true" {
		return errors.New("--rootless=true: rootless mode is not supported; run as root")
	}
	var w io.Writer = stderr
	if g.log != "" {
		f, err := os.OpenFile(g.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("open log %s: %w", g.log, err)
		}
		g.logFile = f
		w = f
	}
	level := slog.LevelWarn
	if g.debug {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{
		Level: level,
		// runc's callers (containerd, conmon) read "level" in lower case
		// and the message from "msg".
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.LevelKey {
				a.Value = slog.StringValue(strings.ToLower(a.Value.String()))
			}
			return a
		},
	}
	switch g.logFormat {
	case "json":
		g.logger = slog.New(slog.NewJSONHandler(w, opts))
	case "text", "":
		g.logger = slog.New(slog.NewTextHandler(w, opts))
	default:
		return fmt.Errorf("--log-format %q: want text or json", g.logFormat)
	}
	return nil
}

func (g *globals) runtime() (*runtime.Native, error) {
	return runtime.NewNative(g.root, g.logger)
}

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
	"sort"
	"strings"

	"github.com/berth-dev/berth/runtime"
	specs "github.com/opencontainers/runtime-spec/specs-go"
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
	err := dispatch(g, args, stdout, stderr, &code)
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

// register defines runc's global flags in fs. They are defined twice: in
// the set read before the verb (with --help and --version) and in the set
// read after it, as cobra's persistent flags were accepted on both sides.
func (g *globals) register(fs *flagSet) {
	fs.stringVar(&g.root, "root", "", "/run/berth-runtime", "root directory for storage of container state (this should be located in tmpfs)")
	fs.stringVar(&g.log, "log", "", "", "set the log file to write runtime logs to (default is stderr)")
	fs.stringVar(&g.logFormat, "log-format", "", "text", "set the log format ('text' (default), or 'json')")
	fs.boolVar(&g.debug, "debug", "", "enable debug logging")
	fs.boolVar(&g.systemdCgroup, "systemd-cgroup", "", "enable systemd cgroup support (not supported: use cgroupfs)")
	fs.stringVar(&g.criu, "criu", "", "criu", "path to the criu binary (checkpoint is not supported)")
	fs.stringVar(&g.rootless, "rootless", "", "auto", "ignore cgroup permission errors ('true', 'false', or 'auto')")
}

// dispatch parses the command line and runs its verb.
func dispatch(g *globals, args []string, stdout, stderr io.Writer, code *int) error {
	v, operands, err := parse(g, args, stdout, code)
	if v == nil || err != nil {
		return err
	}
	if v.name != "run" && v.name != "exec" {
		// A verb that returns in milliseconds allocates a few MiB at most;
		// a collection would cost more than it frees.
		debug.SetGCPercent(-1)
	}
	if err := g.setup(stderr); err != nil {
		return err
	}
	return v.run(operands)
}

// parse reads the global flags into g, then the verb and its flags, and
// returns the verb with its operands checked; or no verb when it printed
// the help or the version to stdout instead.
func parse(g *globals, args []string, stdout io.Writer, code *int) (*verb, []string, error) {
	var help, showVersion bool
	// Both sets are defined before either is parsed: defining a flag
	// stores its default in the variable.
	top, gf := newFlagSet("berth-runtime"), newFlagSet("global")
	g.register(top)
	g.register(gf)
	top.boolVar(&help, "help", "h", "help for berth-runtime")
	top.boolVar(&showVersion, "version", "v", "version for berth-runtime")
	rest, err := parseFlags(args, false, top)
	if err != nil {
		return nil, nil, err
	}
	verbs := allVerbs(g, stdout, code)
	if len(rest) > 0 && rest[0] == "help" {
		help, rest = true, rest[1:]
	}
	var v *verb
	if len(rest) > 0 {
		if v = findVerb(verbs, rest[0]); v == nil {
			if help {
				fmt.Fprintf(stdout, "Unknown help topic %q\n", rest[0])
				rootHelp(stdout, top, verbs)
				return nil, nil, nil
			}
			return nil, nil, unknownVerb(rest[0], verbs)
		}
	}
	switch {
	case help && v != nil:
		v.help(stdout, gf)
		return nil, nil, nil
	case help || (v == nil && !showVersion):
		rootHelp(stdout, top, verbs)
		return nil, nil, nil
	case showVersion:
		fmt.Fprintf(stdout, "berth-runtime version %s\nspec: %s\n", version, specs.Version)
		return nil, nil, nil
	}
	operands, err := parseFlags(rest[1:], v.interspersed, v.flags, gf)
	if err != nil {
		return nil, nil, err
	}
	if v.wantHelp {
		v.help(stdout, gf)
		return nil, nil, nil
	}
	if v.args != nil {
		if err := v.args(operands); err != nil {
			return nil, nil, err
		}
	}
	return v, operands, nil
}

func findVerb(verbs []*verb, name string) *verb {
	for _, v := range verbs {
		if v.name == name {
			return v
		}
	}
	return nil
}

func unknownVerb(name string, verbs []*verb) error {
	msg := fmt.Sprintf("unknown command %q for \"berth-runtime\"", name)
	if s := suggest(name, verbs); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t") + "\n"
	}
	return errors.New(msg)
}

const rootShort = "Berth's OCI runtime, command-line compatible with runc"

func rootHelp(w io.Writer, top *flagSet, verbs []*verb) {
	fmt.Fprintf(w, "%s\n\nUsage:\n  berth-runtime [command]\n\nAvailable Commands:\n", rootShort)
	names := []string{"help"}
	shorts := map[string]string{"help": "Help about any command"}
	for _, v := range verbs {
		names = append(names, v.name)
		shorts[v.name] = v.short
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, shorts[n])
	}
	fmt.Fprint(w, "\nFlags:\n")
	top.usage(w, nil)
	fmt.Fprint(w, "\nUse \"berth-runtime [command] --help\" for more information about a command.\n")
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
	r, err := runtime.NewNative(g.root, g.logger)
	if err != nil {
		return nil, err
	}
	// The same switch turns off fastpath.c's start and delete.
	r.GoInit = os.Getenv("BERTH_RUNTIME_FASTPATH") == "0"
	return r, nil
}

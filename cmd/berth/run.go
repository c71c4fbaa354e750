package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
)

// templateFlags are the flags of docker run that describe the container
// itself, shared by berth run and berth service create.
type templateFlags struct {
	readOnly, init                                            bool
	user, workdir, entrypoint, network, healthCmd, healthHTTP string
	healthPort, healthRetries                                 int
	healthInterval, healthTimeout                             time.Duration
	pidsLimit                                                 int64
	env, volumes, ports, labels, capAdd, capDrop              []string
}

func (f *templateFlags) add(fl *pflag.FlagSet) {
	fl.BoolVar(&f.readOnly, "read-only", false, "mount the root filesystem read-only")
	fl.BoolVar(&f.init, "init", true, "run Berth's init as PID 1 (reaps zombies, forwards signals, keeps logs and exit codes)")
	fl.Int64Var(&f.pidsLimit, "pids-limit", 0, "maximum number of processes")
	fl.StringVar(&f.healthCmd, "health-cmd", "", "command (run by sh -c in the container) that checks health")
	fl.StringVar(&f.healthHTTP, "health-http", "", "HTTP path whose GET on --health-port checks health")
	fl.IntVar(&f.healthPort, "health-port", 0, "port of the HTTP health check; alone, a TCP connect to it checks health")
	fl.DurationVar(&f.healthInterval, "health-interval", 0, "time between health checks (default 30s)")
	fl.DurationVar(&f.healthTimeout, "health-timeout", 0, "how long a check may take (default 30s)")
	fl.IntVar(&f.healthRetries, "health-retries", 0, "failures in a row that make it unhealthy (default 3)")
	fl.StringVarP(&f.user, "user", "u", "", "user[:group] to run as")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working directory in the container")
	fl.StringVar(&f.entrypoint, "entrypoint", "", "replace the image's entrypoint")
	fl.StringVar(&f.network, "network", "", "none for loopback only (default: the node's network)")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "environment KEY=VALUE (or KEY, from this environment)")
	fl.StringArrayVarP(&f.volumes, "volume", "v", nil, "VOLUME:/path[:ro] (named volume) or /host/path:/path[:ro] (admins)")
	fl.StringArrayVarP(&f.ports, "publish", "p", nil, "PORT the container listens on, or HOSTPORT:PORT[/udp] to publish it on the node")
	fl.StringArrayVarP(&f.labels, "label", "l", nil, "label KEY=VALUE")
	fl.StringArrayVar(&f.capAdd, "cap-add", nil, "add a capability")
	fl.StringArrayVar(&f.capDrop, "cap-drop", nil, "drop a capability")
}

// apply sets the template fields these flags describe.
func (f *templateFlags) apply(t *api.Template) error {
	t.User, t.Workdir, t.ReadOnly, t.PidsLimit, t.NoInit, t.Network = f.user, f.workdir, f.readOnly, f.pidsLimit, !f.init, f.network
	t.CapAdd, t.CapDrop = f.capAdd, f.capDrop
	if f.entrypoint != "" {
		t.Entrypoint = []string{f.entrypoint}
	}
	for _, e := range f.env {
		k, v, ok := strings.Cut(e, "=")
		if !ok {
			if v, ok = os.LookupEnv(k); !ok {
				continue
			}
		}
		if t.Env == nil {
			t.Env = map[string]string{}
		}
		t.Env[k] = v
	}
	for _, l := range f.labels {
		k, v, _ := strings.Cut(l, "=")
		if t.Labels == nil {
			t.Labels = map[string]string{}
		}
		t.Labels[k] = v
	}
	for _, v := range f.volumes {
		m, err := parseVolume(v)
		if err != nil {
			return err
		}
		t.Mounts = append(t.Mounts, m)
	}
	for _, p := range f.ports {
		port, err := parsePublish(p)
		if err != nil {
			return err
		}
		t.Ports = append(t.Ports, port)
	}
	if f.healthCmd != "" && f.healthHTTP != "" {
		return errors.New("--health-cmd and --health-http: choose one")
	}
	if f.healthCmd != "" || f.healthHTTP != "" || f.healthPort != 0 {
		t.Health = &api.HealthCheck{HTTPPath: f.healthHTTP, Port: f.healthPort, Interval: api.Duration(f.healthInterval),
			Timeout: api.Duration(f.healthTimeout), Retries: f.healthRetries}
		if f.healthCmd != "" {
			t.Health.Command = []string{"/bin/sh", "-c", f.healthCmd}
		}
	}
	return nil
}

// runFlags are docker run's flags that Berth takes.
type runFlags struct {
	templateFlags
	detach, rm, interactive, tty            bool
	name, memory, restart, node, detachKeys string
	cpus                                    float64
}

func (f *runFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.SetInterspersed(false) // flags after IMAGE belong to the command
	f.templateFlags.add(fl)
	fl.BoolVarP(&f.detach, "detach", "d", false, "run in the background and print the name")
	fl.BoolVar(&f.rm, "rm", false, "remove the container when it exits")
	fl.BoolVarP(&f.interactive, "interactive", "i", false, "keep stdin open and connect it")
	fl.BoolVarP(&f.tty, "tty", "t", false, "give the container a terminal")
	fl.StringVar(&f.name, "name", "", "container name (a DNS label; default: generated)")
	fl.StringVarP(&f.memory, "memory", "m", "", "memory limit (bytes, or with k, m, g)")
	fl.Float64Var(&f.cpus, "cpus", 0, "CPUs (1.5 = one and a half)")
	fl.StringVar(&f.restart, "restart", "no", "restart policy: no, always, on-failure, unless-stopped")
	fl.StringVar(&f.node, "node", "", "run on this node")
	fl.StringVar(&f.detachKeys, "detach-keys", "ctrl-p,ctrl-q", "keys that detach from a terminal")
}

// instance turns the flags, image and command into an instance, checking
// everything the API would not know to say in docker's terms.
func (f *runFlags) instance(tenant, image string, command []string) (*api.Instance, error) {
	name := f.name
	if name == "" {
		name = randomName()
	}
	t := api.Template{Image: image, Command: command, TTY: f.tty, Stdin: f.interactive}
	if err := f.templateFlags.apply(&t); err != nil {
		return nil, err
	}
	switch f.restart {
	case "no", "":
		t.Restart = api.RestartNever
	case "always", "unless-stopped":
		t.Restart = api.RestartAlways
	case "on-failure":
		t.Restart = api.RestartOnFailure
	default:
		return nil, fmt.Errorf("--restart %q: no, always, on-failure or unless-stopped", f.restart)
	}
	if f.rm && t.Restart != api.RestartNever {
		return nil, errors.New("--rm and --restart conflict: a removed container cannot be restarted")
	}
	if f.memory != "" {
		m, err := parseBytes(f.memory)
		if err != nil {
			return nil, fmt.Errorf("--memory: %w", err)
		}
		t.Resources.Memory = m
	}
	if f.cpus < 0 {
		return nil, fmt.Errorf("--cpus %v: must not be negative", f.cpus)
	}
	t.Resources.CPU = int64(f.cpus * 1000)
	in := &api.Instance{Meta: api.Meta{Name: name, Tenant: tenant},
		Spec: api.InstanceSpec{Template: t, Pin: f.node, Desired: api.DesiredRunning, AutoRemove: f.rm}}
	return in, api.Validate(in)
}

// parseBytes reads a size such as 512m or 1g (powers of 1024, as docker).
func parseBytes(s string) (int64, error) {
	mult := int64(1)
	n := strings.ToLower(strings.TrimSuffix(strings.ToLower(s), "b"))
	if n != "" {
		switch n[len(n)-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		}
		if mult != 1 {
			n = n[:len(n)-1]
		}
	}
	v, err := strconv.ParseInt(n, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a size (bytes, or with k, m, g)", s)
	}
	return v * mult, nil
}

// parseVolume reads -v: SOURCE:TARGET[:ro|rw], a source starting with /
// being a host path.
func parseVolume(s string) (api.Mount, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return api.Mount{}, fmt.Errorf("-v %q: want VOLUME:/path[:ro] or /host/path:/path[:ro]", s)
	}
	m := api.Mount{Type: api.MountVolume, Source: parts[0], Target: parts[1]}
	if strings.HasPrefix(m.Source, "/") {
		m.Type = api.MountBind
	}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			m.ReadOnly = true
		case "rw":
		default:
			return api.Mount{}, fmt.Errorf("-v %q: option %q (ro or rw)", s, parts[2])
		}
	}
	return m, nil
}

// parsePublish reads -p: [HOSTPORT:]PORT[/tcp|/udp]. A port alone only
// declares what the container listens on: its own address needs no mapping.
func parsePublish(s string) (api.Port, error) {
	spec, proto, _ := strings.Cut(s, "/")
	hp, cp, ok := strings.Cut(spec, ":")
	if !ok {
		hp, cp = "0", spec
	}
	h, err1 := strconv.Atoi(hp)
	c, err2 := strconv.Atoi(cp)
	if err1 != nil || err2 != nil {
		return api.Port{}, fmt.Errorf("-p %q: want [HOSTPORT:]PORT[/udp] with numbers", s)
	}
	return api.Port{Port: c, HostPort: h, Protocol: proto}, nil
}

func newRunCmd(af *apiFlags) *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [FLAGS] IMAGE [COMMAND [ARG...]]",
		Short: "Run a container",
		Long: `Run a container from an image, through the control plane: it is scheduled on a node,
gets its own IP on the node's network, and is supervised there.

Without -d, berth run follows the container's output and returns its exit code;
125 means Berth could not run it, 126 that the command cannot be executed, 127 that it
does not exist.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := run(cmd.Context(), af, &f, args[0], args[1:])
			var ee *exitError
			if err != nil && !errors.As(err, &ee) {
				err = &exitError{exitBerth, err}
			}
			return err
		},
	}
	f.add(cmd)
	return cmd
}

func run(ctx context.Context, af *apiFlags, f *runFlags, image string, command []string) error {
	c := af.client()
	in, err := f.instance(af.tenant, image, command)
	if err != nil {
		return err
	}
	if !f.detach && !f.tty && !f.interactive {
		return runFollowed(ctx, c, af.tenant, in)
	}
	// With a terminal or input, --rm is done here once the session is
	// over and the exit code known: removal by the control plane could
	// take the container's logs before this command has read them.
	// Detached, the control plane removes it.
	removeHere := f.rm && !f.detach
	if removeHere {
		in.Spec.AutoRemove = false
	}
	fw, err := follow(ctx, c, af.tenant, in.Name)
	if err != nil {
		return err
	}
	defer fw.close()
	if err := c.Create(ctx, in); err != nil {
		return err
	}
	fw.seen(in)
	if removeHere {
		defer func() {
			if !removeHere {
				return
			}
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := c.Delete(dctx, api.KindInstance, af.tenant, in.Name, 0); err != nil && !api.IsNotFound(err) {
				fmt.Fprintf(os.Stderr, "berth: remove %s: %v\n", in.Name, err)
			}
		}()
	}
	if f.detach {
		cur, err := fw.until(ctx, startedOrFailed)
		if err != nil {
			return err
		}
		if err := startFailure(cur); err != nil {
			return err
		}
		fmt.Println(in.Name)
		return nil
	}
	// A terminal sends Ctrl-C through the session itself.
	if !f.tty {
		defer proxySignals(ctx, c, af.tenant, in.Name)()
	}
	cur, err := fw.until(ctx, started)
	if err != nil {
		return err
	}
	if err := startFailure(cur); err != nil {
		return err
	}
	if (f.tty || f.interactive) && isRunning(cur) {
		code, err := attach(ctx, c, af.tenant, in.Name, f.tty, f.interactive, f.detachKeys)
		switch {
		case errors.Is(err, api.ErrDetached):
			// The container runs on; the control plane removes it once
			// it exits.
			removeHere = false
			_, _ = modifyInstance(context.WithoutCancel(ctx), c, af.tenant, in.Name, func(in *api.Instance) error {
				in.Spec.AutoRemove = true
				return nil
			})
			return nil
		case err == nil:
			return exitWith(code)
		case api.Code(err) != http.StatusConflict:
			return err
		}
		// It ended before the session opened: its output is in the logs.
	}
	// The log files hold everything from the first byte: nothing written
	// before this call is lost.
	if err := c.Logs(ctx, af.tenant, in.Name, api.LogQuery{Follow: true, Tail: -1}, func(l api.LogLine) error {
		return writeLogLine(l, false)
	}); err != nil {
		return err
	}
	cur, err = fw.until(ctx, isDone)
	if err != nil {
		return err
	}
	if cur.Status.Phase == api.PhaseFailed {
		return startFailure(cur)
	}
	return exitWith(cur.Status.ExitCode)
}

// runFollowed runs in in the foreground without a terminal or input: one
// request creates it and streams its output and how it ended, deleting it
// first with --rm (see control's followRun).
func runFollowed(ctx context.Context, c *api.Client, tenant string, in *api.Instance) error {
	defer proxySignals(ctx, c, tenant, in.Name)()
	exit, err := c.Run(ctx, in, func(l api.LogLine) error { return writeLogLine(l, false) })
	if err != nil {
		return err
	}
	if exit.Code == exitBerth && exit.Error != "" {
		return failure(in.Name, exit.Error)
	}
	return exitWith(exit.Code)
}

// proxySignals makes an interrupt or termination of this command the
// container's, as docker's --sig-proxy does, until the returned stop.
func proxySignals(ctx context.Context, c *api.Client, tenant, name string) (stop func()) {
	sigs := make(chan os.Signal, 1)
	notified := make(chan struct{})
	// The process's first Notify starts the runtime's signal thread, a
	// tenth of a millisecond: the request goes out meanwhile.
	go func() {
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		close(notified)
		for s := range sigs {
			sig := "INT"
			if s == syscall.SIGTERM {
				sig = "TERM"
			}
			_ = c.Kill(ctx, tenant, name, sig)
		}
	}()
	return func() {
		<-notified
		signal.Stop(sigs)
	}
}

// exitWith makes berth exit with a container's code.
func exitWith(code int) error {
	if code == 0 {
		return nil
	}
	return &exitError{code: code}
}

func newExecCmd(af *apiFlags) *cobra.Command {
	var o api.ExecOptions
	var detachKeys string
	cmd := &cobra.Command{
		Use: "exec [FLAGS] NAME COMMAND [ARG...]", Short: "Run a command in a running container", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Cmd = args[1:]
			code, err := execIn(cmd.Context(), af, args[0], o, detachKeys)
			var ee *exitError
			switch {
			case err == nil:
				return exitWith(code)
			case errors.As(err, &ee):
				return err
			}
			return &exitError{exitBerth, err}
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	fl.BoolVarP(&o.Stdin, "interactive", "i", false, "connect stdin")
	fl.BoolVarP(&o.TTY, "tty", "t", false, "give the command a terminal")
	fl.StringArrayVarP(&o.Env, "env", "e", nil, "environment KEY=VALUE")
	fl.StringVarP(&o.User, "user", "u", "", "user[:group] to run as")
	fl.StringVarP(&o.Workdir, "workdir", "w", "", "working directory")
	fl.StringVar(&detachKeys, "detach-keys", "ctrl-p,ctrl-q", "keys that detach from a terminal")
	return cmd
}

func execIn(ctx context.Context, af *apiFlags, name string, o api.ExecOptions, detachKeys string) (int, error) {
	s, err := af.client().Exec(ctx, af.tenant, name, o)
	if err != nil {
		return -1, err
	}
	code, err := pump(ctx, s, o.TTY, o.Stdin, detachKeys)
	if err != nil {
		// The command could not be started: docker's codes for that.
		msg := strings.ToLower(err.Error())
		switch {
		case strings.Contains(msg, "no such file") || strings.Contains(msg, "not found"):
			return -1, &exitError{exitNotFound, err}
		case strings.Contains(msg, "permission denied"):
			return -1, &exitError{exitNotExecutable, err}
		}
	}
	return code, err
}

func newAttachCmd(af *apiFlags) *cobra.Command {
	var detachKeys string
	cmd := &cobra.Command{
		Use: "attach NAME", Short: "Connect to a container's terminal or input (run with -t or -i)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := getInstance(cmd.Context(), af.client(), af.tenant, args[0])
			if err != nil {
				return err
			}
			code, err := attach(cmd.Context(), af.client(), af.tenant, args[0], in.Spec.Template.TTY, in.Spec.Template.Stdin, detachKeys)
			if errors.Is(err, api.ErrDetached) {
				return nil
			}
			if err != nil {
				return err
			}
			return exitWith(code)
		},
	}
	cmd.Flags().StringVar(&detachKeys, "detach-keys", "ctrl-p,ctrl-q", "keys that detach from a terminal")
	return cmd
}

func attach(ctx context.Context, c *api.Client, tenant, name string, tty, stdin bool, detachKeys string) (int, error) {
	s, err := c.Attach(ctx, tenant, name)
	if err != nil {
		return -1, err
	}
	return pump(ctx, s, tty, stdin, detachKeys)
}

// pump connects a session to this process's stdio: the terminal goes raw
// for a TTY session, follows window size changes, and the detach keys end
// the session without stopping the process.
func pump(ctx context.Context, s *api.Stream, tty, stdin bool, detachKeys string) (int, error) {
	sio := api.StreamIO{Stdout: os.Stdout, Stderr: os.Stderr}
	fd := int(os.Stdin.Fd())
	isTerm := term.IsTerminal(fd)
	if stdin {
		sio.Stdin = os.Stdin
		if tty {
			keys, err := parseDetachKeys(detachKeys)
			if err != nil {
				s.Close()
				return -1, err
			}
			sio.Stdin = &detachReader{r: os.Stdin, keys: keys}
		}
	}
	if tty && isTerm {
		old, err := term.MakeRaw(fd)
		if err != nil {
			s.Close()
			return -1, fmt.Errorf("terminal: %w", err)
		}
		defer term.Restore(fd, old)
		sizes := make(chan api.TermSize, 1)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		send := func() {
			if w, h, err := term.GetSize(fd); err == nil {
				select {
				case sizes <- api.TermSize{Rows: uint16(h), Cols: uint16(w)}:
				default:
				}
			}
		}
		send()
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-winch:
					send()
				}
			}
		}()
		sio.Resize = sizes
	}
	return s.Run(ctx, sio)
}

// parseDetachKeys reads docker's --detach-keys: ctrl-<letter> or single
// characters, comma-separated.
func parseDetachKeys(s string) ([]byte, error) {
	var keys []byte
	for _, k := range strings.Split(s, ",") {
		switch {
		case len(k) == 6 && strings.HasPrefix(k, "ctrl-") && k[5] >= 'a' && k[5] <= 'z':
			keys = append(keys, k[5]-'a'+1)
		case len(k) == 1:
			keys = append(keys, k[0])
		default:
			return nil, fmt.Errorf("--detach-keys %q: ctrl-<letter> or single characters, comma-separated", s)
		}
	}
	return keys, nil
}

// detachReader passes input through until the detach sequence is typed,
// then reports api.ErrDetached. A sequence that breaks off part-way was
// input after all, and is passed on.
type detachReader struct {
	r        io.Reader
	keys     []byte
	matched  int
	pending  []byte
	detached bool
	err      error
}

func (d *detachReader) Read(p []byte) (int, error) {
	if len(d.pending) == 0 && !d.detached && d.err == nil {
		buf := make([]byte, len(p))
		n, err := d.r.Read(buf)
		d.err = err
		for _, b := range buf[:n] {
			if b == d.keys[d.matched] {
				d.matched++
				if d.matched == len(d.keys) {
					d.detached = true
					break
				}
				continue
			}
			d.pending = append(d.pending, d.keys[:d.matched]...)
			d.matched = 0
			if b == d.keys[0] {
				d.matched = 1
				continue
			}
			d.pending = append(d.pending, b)
		}
	}
	n := copy(p, d.pending)
	d.pending = d.pending[n:]
	if len(d.pending) == 0 {
		if d.detached {
			return n, api.ErrDetached
		}
		return n, d.err
	}
	return n, nil
}

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/spf13/cobra"
)

// The Docker-like verbs. Each container is an instance in the control
// plane (standalone, or one of a service's), so everything goes through the
// API: the same verbs work on `berth up` and on a fleet.

// Docker's exit codes for its own failures.
const (
	exitBerth         = 125 // Berth itself failed (bad flags, API errors, the container could not be made)
	exitNotExecutable = 126 // the command exists but cannot be run
	exitNotFound      = 127 // the command does not exist
)

// errGone is returned while waiting on an instance that was deleted.
var errGone = errors.New("instance was removed")

// getInstance reads one instance.
func getInstance(ctx context.Context, c *api.Client, tenant, name string) (*api.Instance, error) {
	in := &api.Instance{}
	if err := c.Get(ctx, tenant, name, in); err != nil {
		return nil, err
	}
	return in, nil
}

// follower follows one instance through a watch opened before the caller
// changes it, so that each change arrives as it happens: a watch opened
// later from an older revision is served from etcd's history, which
// catches up only every 100 ms.
type follower struct {
	c            *api.Client
	tenant, name string
	events       chan api.WatchEvent
	errs         chan error
	last         *api.Instance
	cancel       context.CancelFunc
}

// follow opens the watch; call it before the change whose effects are
// awaited, then tell it the instance as the change left it (seen).
func follow(ctx context.Context, c *api.Client, tenant, name string) (*follower, error) {
	ctx, cancel := context.WithCancel(ctx)
	w := c.Watch(ctx, api.KindInstance, tenant, "", 0)
	if err := w.Open(); err != nil {
		cancel()
		return nil, err
	}
	f := &follower{c: c, tenant: tenant, name: name, events: make(chan api.WatchEvent), errs: make(chan error, 1), cancel: cancel}
	go func() {
		defer w.Close()
		for {
			ev, err := w.Next()
			if err != nil {
				f.errs <- err
				return
			}
			select {
			case f.events <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return f, nil
}

func (f *follower) close() { f.cancel() }

// seen records the instance as a write returned it.
func (f *follower) seen(in *api.Instance) {
	if f.last == nil || in.ResourceVersion > f.last.ResourceVersion {
		f.last = in
	}
}

// until waits until done holds for the instance and returns it; errGone
// (with the last version seen) if it is deleted first. Should the watch
// have missed a change (it opened as the change was being written), a
// read every second makes up for it.
func (f *follower) until(ctx context.Context, done func(*api.Instance) bool) (*api.Instance, error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if f.last != nil && done(f.last) {
			return f.last, nil
		}
		select {
		case <-ctx.Done():
			return f.last, ctx.Err()
		case err := <-f.errs:
			return f.last, err
		case <-tick.C:
			in, err := getInstance(ctx, f.c, f.tenant, f.name)
			if api.IsNotFound(err) {
				return f.last, errGone
			}
			if err != nil {
				return f.last, err
			}
			f.seen(in)
		case ev := <-f.events:
			in := &api.Instance{}
			if err := ev.Into(in); err != nil || in.Name != f.name {
				continue
			}
			if ev.Type == api.Deleted {
				return f.last, errGone
			}
			f.seen(in)
		}
	}
}

// change applies f to an instance and then waits until done holds for it
// (a minute at most), following it from before the write.
func change(ctx context.Context, c *api.Client, tenant, name string, f func(*api.Instance) error, done func(*api.Instance) bool) (*api.Instance, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	fw, err := follow(ctx, c, tenant, name)
	if err != nil {
		return nil, err
	}
	defer fw.close()
	in, err := modifyInstance(ctx, c, tenant, name, f)
	if err != nil {
		return nil, err
	}
	fw.seen(in)
	return fw.until(ctx, done)
}

func isRunning(in *api.Instance) bool { return in.Status.Phase == api.PhaseRunning }

func isDone(in *api.Instance) bool {
	return in.Status.Phase == api.PhaseExited || in.Status.Phase == api.PhaseFailed
}

// started is true once the container runs, or could not be started.
func started(in *api.Instance) bool { return isRunning(in) || isDone(in) }

// startFailure turns an instance that could not be started into an error
// with Docker's exit code for it.
func startFailure(in *api.Instance) error {
	if in.Status.Phase != api.PhaseFailed {
		return nil
	}
	return failure(in.Name, in.Status.Reason)
}

// failure is why an instance could not run, with docker's exit code for it.
func failure(name, reason string) error {
	msg := fmt.Errorf("%s: %s", name, reason)
	r := strings.ToLower(reason)
	switch {
	case strings.Contains(r, "no such file") || strings.Contains(r, "not found"):
		return &exitError{exitNotFound, msg}
	case strings.Contains(r, "permission denied") || strings.Contains(r, "not executable") || strings.Contains(r, "exec format"):
		return &exitError{exitNotExecutable, msg}
	}
	return &exitError{exitBerth, msg}
}

// modifyInstance reads, changes and writes an instance, retrying on conflicts.
func modifyInstance(ctx context.Context, c *api.Client, tenant, name string, f func(*api.Instance) error) (*api.Instance, error) {
	for attempt := 0; ; attempt++ {
		in, err := getInstance(ctx, c, tenant, name)
		if err != nil {
			return nil, err
		}
		if err := f(in); err != nil {
			return nil, err
		}
		err = c.Update(ctx, in)
		if err == nil || !api.IsConflict(err) || attempt > 5 {
			return in, err
		}
	}
}

func randomName() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "c-" + hex.EncodeToString(b)
}

// forEach runs f on every name, reporting each failure and returning the
// last one, as docker stop a b c does.
func forEach(names []string, f func(string) error) error {
	var last error
	for _, n := range names {
		if err := f(n); err != nil {
			fmt.Fprintf(os.Stderr, "berth: %s: %v\n", n, err)
			last = err
			continue
		}
		fmt.Println(n)
	}
	if last != nil {
		return &exitError{1, errors.New("some containers failed")}
	}
	return nil
}

func newStopCmd(af *apiFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use: "stop NAME...", Short: "Stop containers (SIGTERM, then SIGKILL after 10 seconds)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := af.client()
			return forEach(args, func(n string) error {
				_, err := change(cmd.Context(), c, af.tenant, n, func(in *api.Instance) error {
					in.Spec.Desired = api.DesiredStopped
					return nil
				}, func(in *api.Instance) bool { return !isRunning(in) })
				return err
			})
		},
	}
	return cmd
}

func newStartCmd(af *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use: "start NAME...", Short: "Start stopped or exited containers", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := af.client()
			return forEach(args, func(n string) error {
				in, err := change(cmd.Context(), c, af.tenant, n, func(in *api.Instance) error {
					in.Spec.Desired = api.DesiredRunning
					if isDone(in) {
						in.Spec.RestartGeneration = max(in.Spec.RestartGeneration, in.Status.Restarts) + 1
					}
					return nil
				}, startedOrFailed)
				if err != nil {
					return err
				}
				return startFailure(in)
			})
		},
	}
}

// startedOrFailed is true once the container has acted on its last start
// request: it runs, has run and ended, or could not be started.
func startedOrFailed(in *api.Instance) bool {
	return in.Spec.RestartGeneration <= in.Status.Restarts && started(in) || in.Status.Phase == api.PhaseFailed
}

func newRestartCmd(af *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use: "restart NAME...", Short: "Restart containers", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := af.client()
			return forEach(args, func(n string) error {
				in, err := change(cmd.Context(), c, af.tenant, n, func(in *api.Instance) error {
					in.Spec.Desired = api.DesiredRunning
					in.Spec.RestartGeneration = max(in.Spec.RestartGeneration, in.Status.Restarts) + 1
					return nil
				}, startedOrFailed)
				if err != nil {
					return err
				}
				return startFailure(in)
			})
		},
	}
}

func newKillCmd(af *apiFlags) *cobra.Command {
	var signal string
	cmd := &cobra.Command{
		Use: "kill NAME...", Short: "Send a signal to containers", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := af.client()
			return forEach(args, func(n string) error { return c.Kill(cmd.Context(), af.tenant, n, signal) })
		},
	}
	cmd.Flags().StringVarP(&signal, "signal", "s", "KILL", "signal to send")
	return cmd
}

func newRmCmd(af *apiFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use: "rm NAME...", Short: "Remove containers", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := af.client()
			return forEach(args, func(n string) error {
				in, err := getInstance(cmd.Context(), c, af.tenant, n)
				if err != nil {
					return err
				}
				if in.Spec.Service != "" {
					return fmt.Errorf("belongs to service %s: scale or remove the service instead", in.Spec.Service)
				}
				if isRunning(in) && !force {
					return fmt.Errorf("container is running: stop it first, or use rm -f")
				}
				return c.Delete(cmd.Context(), api.KindInstance, af.tenant, n, 0)
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove running containers too")
	return cmd
}

func newWaitCmd(af *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use: "wait NAME...", Short: "Wait for containers to end, and print their exit codes", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := af.client()
			for _, n := range args {
				code, err := waitExit(cmd.Context(), c, af.tenant, n)
				if err != nil {
					return err
				}
				fmt.Println(code)
			}
			return nil
		},
	}
}

// waitExit waits for a container to end and returns its exit code.
func waitExit(ctx context.Context, c *api.Client, tenant, name string) (int, error) {
	fw, err := follow(ctx, c, tenant, name)
	if err != nil {
		return -1, err
	}
	defer fw.close()
	in, err := getInstance(ctx, c, tenant, name)
	if err != nil {
		return -1, err
	}
	fw.seen(in)
	in, err = fw.until(ctx, isDone)
	if err != nil && !errors.Is(err, errGone) {
		return -1, err
	}
	return in.Status.ExitCode, nil
}

func newInspectCmd(af *apiFlags) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use: "inspect NAME...", Short: "Show containers as JSON (or through a Go template)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out []*api.Instance
			for _, n := range args {
				in, err := getInstance(cmd.Context(), af.client(), af.tenant, n)
				if err != nil {
					return err
				}
				out = append(out, in)
			}
			if format == "" || format == "json" {
				return printJSON(out)
			}
			return printTemplate(format, out)
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "", "json (default) or a Go template applied to each")
	return cmd
}

// psRow is one line of berth ps.
type psRow struct {
	Name     string `json:"name"`
	Image    string `json:"image"`
	Command  string `json:"command"`
	Created  string `json:"created"`
	Status   string `json:"status"`
	Node     string `json:"node"`
	IP       string `json:"ip"`
	Service  string `json:"service,omitempty"`
	Restarts int    `json:"restarts"`
}

// PSFilter decides which instances berth ps shows: keys name, label,
// status (a phase), service and node, as docker ps --filter.
type psFilter struct {
	all     bool
	filters []string
}

func (f psFilter) match(in *api.Instance) (bool, error) {
	match := f.all || isRunning(in)
	for _, kv := range f.filters {
		k, v, _ := strings.Cut(kv, "=")
		var ok bool
		switch k {
		case "name":
			ok = strings.Contains(in.Name, v)
		case "status":
			ok = in.Status.Phase == v
		case "service":
			ok = in.Spec.Service == v
		case "node":
			ok = in.Spec.Node == v
		case "label":
			lk, lv, hasValue := strings.Cut(v, "=")
			got, has := in.Labels[lk]
			if !has {
				got, has = in.Spec.Template.Labels[lk]
			}
			ok = has && (!hasValue || got == lv)
		default:
			return false, fmt.Errorf("filter %q: unknown key (name, label, status, service, node)", kv)
		}
		match = match && ok
	}
	return match, nil
}

func statusText(in *api.Instance, now time.Time) string {
	s := in.Status
	switch s.Phase {
	case api.PhaseRunning:
		t := "Up " + humanDuration(now.Sub(s.StartedAt))
		if s.Health != "" {
			t += " (" + s.Health + ")"
		}
		return t
	case api.PhaseExited:
		t := fmt.Sprintf("Exited (%d) %s ago", s.ExitCode, humanDuration(now.Sub(s.FinishedAt)))
		if s.Reason == "OOMKilled" {
			t += " OOMKilled"
		}
		return t
	case api.PhaseFailed:
		return "Failed: " + s.Reason
	case "":
		return "Pending"
	}
	t := strings.ToUpper(s.Phase[:1]) + s.Phase[1:]
	if s.Reason != "" {
		t += ": " + s.Reason
	}
	return t
}

// humanDuration says roughly how long d is, as docker ps does.
func humanDuration(d time.Duration) string {
	plural := func(n int, unit string) string {
		if n == 1 {
			return "1 " + unit
		}
		return fmt.Sprintf("%d %ss", n, unit)
	}
	switch {
	case d < time.Second:
		return "Less than a second"
	case d < time.Minute:
		return plural(int(d.Seconds()), "second")
	case d < time.Hour:
		return plural(int(d.Minutes()), "minute")
	case d < 48*time.Hour:
		return plural(int(d.Hours()), "hour")
	}
	return plural(int(d.Hours()/24), "day")
}

func newPsCmd(af *apiFlags) *cobra.Command {
	var f psFilter
	var quiet bool
	var format string
	cmd := &cobra.Command{
		Use: "ps", Short: "List containers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := api.ListOf[*api.Instance](cmd.Context(), af.client(), af.tenant, "")
			if err != nil {
				return err
			}
			now := time.Now()
			var rows []psRow
			for _, in := range l.Items {
				ok, err := f.match(in)
				if err != nil {
					return err
				}
				if !ok {
					continue
				}
				t := in.Spec.Template
				r := psRow{Name: in.Name, Image: t.Image, Command: strings.Join(append(slices.Clone(t.Entrypoint), t.Command...), " "),
					Created: humanDuration(now.Sub(in.Created)) + " ago", Status: statusText(in, now), Node: in.Spec.Node,
					Service: in.Spec.Service, Restarts: in.Status.Restarts}
				if in.Status.IP.IsValid() {
					r.IP = in.Status.IP.String()
				}
				rows = append(rows, r)
			}
			switch {
			case quiet:
				for _, r := range rows {
					fmt.Println(r.Name)
				}
				return nil
			case format == "json":
				return printJSON(rows)
			case format != "" && format != "table":
				return printTemplate(format, rows)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tIMAGE\tCOMMAND\tCREATED\tSTATUS\tNODE\tIP")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%q\t%s\t%s\t%s\t%s\n", r.Name, r.Image, truncate(r.Command, 20), r.Created, r.Status, r.Node, r.IP)
			}
			return tw.Flush()
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&f.all, "all", "a", false, "show all containers, not only running ones")
	fl.BoolVarP(&quiet, "quiet", "q", false, "only names")
	fl.StringArrayVarP(&f.filters, "filter", "f", nil, "filter: name=, label=KEY[=VALUE], status=PHASE, service=, node=")
	fl.StringVar(&format, "format", "", "table (default), json, or a Go template")
	return cmd
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func newLogsCmd(af *apiFlags) *cobra.Command {
	var follow, timestamps bool
	var tail, since string
	cmd := &cobra.Command{
		Use: "logs NAME", Short: "Show a container's output", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := api.LogQuery{Follow: follow, Tail: -1}
			if tail != "all" {
				n, err := strconv.Atoi(tail)
				if err != nil || n < 0 {
					return fmt.Errorf("--tail %q: a number of lines or all", tail)
				}
				q.Tail = n
			}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				q.Since = t
			}
			return af.client().Logs(cmd.Context(), af.tenant, args[0], q, func(l api.LogLine) error {
				return writeLogLine(l, timestamps)
			})
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&follow, "follow", "f", false, "follow new output")
	fl.BoolVarP(&timestamps, "timestamps", "t", false, "show each line's time")
	fl.StringVarP(&tail, "tail", "n", "all", "number of last lines to show")
	fl.StringVar(&since, "since", "", "only lines since a time (RFC 3339) or a duration ago (10m)")
	return cmd
}

func writeLogLine(l api.LogLine, timestamps bool) error {
	w := os.Stdout
	if l.Stream == "stderr" {
		w = os.Stderr
	}
	var err error
	if timestamps {
		_, err = fmt.Fprintf(w, "%s %s\n", l.Time.UTC().Format(time.RFC3339Nano), l.Log)
	} else {
		_, err = fmt.Fprintln(w, l.Log)
	}
	return err
}

// parseSince reads --since: an RFC 3339 time, or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q: an RFC 3339 time or a duration such as 10m", s)
}

func newTopCmd(af *apiFlags) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use: "top NAME", Short: "Show a container's processes", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := af.client().Top(cmd.Context(), af.tenant, args[0])
			if err != nil {
				return err
			}
			if format == "json" {
				return printJSON(t)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, strings.Join(t.Titles, "\t"))
			for _, p := range t.Processes {
				fmt.Fprintln(tw, strings.Join(p, "\t"))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "table (default) or json")
	return cmd
}

func newEventsCmd(af *apiFlags) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use: "events", Short: "Follow what the control plane does and sees (events and container state changes)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := af.client()
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			l, err := api.ListOf[*api.Instance](ctx, c, af.tenant, "")
			if err != nil {
				return err
			}
			phases := map[string]string{}
			for _, in := range l.Items {
				phases[in.Name] = in.Status.Phase
			}
			out := make(chan eventLine)
			errs := make(chan error, 2)
			// watch sends what each change of kind says, until ctx ends.
			watch := func(k api.Kind, say func(api.WatchEvent) (eventLine, bool)) {
				w := c.Watch(ctx, k, af.tenant, "", l.Revision)
				defer w.Close()
				for {
					ev, err := w.Next()
					if err != nil {
						errs <- err
						return
					}
					if e, ok := say(ev); ok {
						select {
						case out <- e:
						case <-ctx.Done():
							return
						}
					}
				}
			}
			go watch(api.KindInstance, func(ev api.WatchEvent) (eventLine, bool) {
				in := &api.Instance{}
				if ev.Into(in) != nil {
					return eventLine{}, false
				}
				e, ok := instanceEvent(ev.Type, in, phases[in.Name])
				phases[in.Name] = in.Status.Phase
				return e, ok
			})
			go watch(api.KindEvent, func(ev api.WatchEvent) (eventLine, bool) {
				e := &api.Event{}
				if ev.Type != api.Added || ev.Into(e) != nil {
					return eventLine{}, false
				}
				return eventLine{Time: e.Time, Type: e.Type, Object: e.Object, Action: e.Reason, Message: e.Message}, true
			})
			for {
				select {
				case err := <-errs:
					if ctx.Err() != nil {
						return nil
					}
					return err
				case e := <-out:
					if format == "json" {
						if err := printJSONLine(e); err != nil {
							return err
						}
						continue
					}
					fmt.Printf("%s %s %s %s %s\n", e.Time.Format(time.RFC3339), e.Type, e.Object, e.Action, e.Message)
				}
			}
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "text (default) or json (one object per line)")
	return cmd
}

type eventLine struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Object  string    `json:"object"`
	Action  string    `json:"action"`
	Message string    `json:"message,omitempty"`
}

// instanceEvent describes an instance change worth a line: creation,
// removal, and every change of phase.
func instanceEvent(typ string, in *api.Instance, prevPhase string) (eventLine, bool) {
	e := eventLine{Time: time.Now().UTC(), Type: "container", Object: "instances/" + in.Name}
	switch {
	case typ == api.Added:
		e.Action = "create"
	case typ == api.Deleted:
		e.Action = "destroy"
	case in.Status.Phase != prevPhase && in.Status.Phase != "":
		e.Action = in.Status.Phase
		switch in.Status.Phase {
		case api.PhaseExited:
			e.Message = fmt.Sprintf("exit code %d", in.Status.ExitCode)
			if in.Status.Reason == "OOMKilled" {
				e.Message += ", OOMKilled"
			}
		case api.PhaseRunning:
			e.Message = "on " + in.Spec.Node
		default:
			e.Message = in.Status.Reason
		}
	default:
		return e, false
	}
	return e, true
}

// completeInstances completes container names from the API, for shells.
func completeInstances(af *apiFlags) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
		ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
		defer cancel()
		l, err := api.ListOf[*api.Instance](ctx, af.client(), af.tenant, "")
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		for _, in := range l.Items {
			if strings.HasPrefix(in.Name, prefix) && !slices.Contains(args, in.Name) {
				out = append(out, in.Name)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/spf13/cobra"
)

// apiFlags are the connection flags of every verb that talks to a server.
type apiFlags struct {
	server, token, tenant, cacert string
}

func (a *apiFlags) add(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&a.server, "server", envOr("BERTH_SERVER", "http://127.0.0.1:7070"), "API server URL ($BERTH_SERVER)")
	f.StringVar(&a.token, "token", os.Getenv("BERTH_TOKEN"), "bearer token ($BERTH_TOKEN)")
	f.StringVar(&a.tenant, "tenant", envOr("BERTH_TENANT", api.DefaultTenant), "tenant ($BERTH_TENANT)")
	f.StringVar(&a.cacert, "cacert", os.Getenv("BERTH_CACERT"), "CA certificate (PEM) to trust for an https server: the cluster CA ($BERTH_CACERT)")
}

// defaultRoot is where `berth up` keeps its data (and admin token) by default.
const defaultRoot = "/var/lib/berth"

// client speaks to the server. Without a token it uses the admin token
// that `berth up` keeps in its default data directory, if this user can
// read it: on one machine, root's berth commands just work.
func (a *apiFlags) client() *api.Client {
	tok := a.token
	if tok == "" {
		if b, err := os.ReadFile(filepath.Join(defaultRoot, "admin-token")); err == nil {
			tok = strings.TrimSpace(string(b))
		}
	}
	var hc *http.Client
	if a.cacert != "" {
		// An unreadable CA leaves the default roots: the request then
		// fails with the server's certificate named as unknown.
		if b, err := os.ReadFile(a.cacert); err == nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(b)
			hc = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
				ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64}}
		}
	}
	return api.NewClient(a.server, tok, hc)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printJSONLine writes v as one line, for streams a script reads line by line.
func printJSONLine(v any) error { return json.NewEncoder(os.Stdout).Encode(v) }

// printTemplate applies a Go template (docker's --format) to each item.
func printTemplate[T any](format string, items []T) error {
	tmpl, err := template.New("format").Funcs(template.FuncMap{
		"json": func(v any) (string, error) { b, err := json.Marshal(v); return string(b), err },
	}).Parse(format)
	if err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	for _, it := range items {
		if err := tmpl.Execute(os.Stdout, it); err != nil {
			return fmt.Errorf("--format: %w", err)
		}
		fmt.Println()
	}
	return nil
}

func newServiceCmd() *cobra.Command {
	var af apiFlags
	cmd := &cobra.Command{Use: "service", Short: "Manage replicated services"}
	af.add(cmd)

	var image, restart string
	var replicas, parallelism int
	var cpu, mem int64
	var constraints []string
	var tf templateFlags
	var format string
	var grace time.Duration
	create := &cobra.Command{
		Use:   "create NAME [-- COMMAND...]",
		Short: "Create a service",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s := &api.Service{Meta: api.Meta{Name: args[0], Tenant: af.tenant}, Spec: api.ServiceSpec{Replicas: replicas, Parallelism: parallelism,
				Template: api.Template{Image: image, Command: args[1:], Restart: restart, Resources: api.Resources{CPU: cpu, Memory: mem << 20}}}}
			if err := tf.apply(&s.Spec.Template); err != nil {
				return err
			}
			for _, c := range constraints {
				s.Spec.Template.Constraints = append(s.Spec.Template.Constraints, parseConstraint(c))
			}
			if cmd.Flags().Changed("stop-grace-period") {
				d := api.Duration(grace)
				s.Spec.Template.StopGracePeriod = &d
			}
			if err := af.client().Create(cmd.Context(), s); err != nil {
				return err
			}
			fmt.Println(s.Name)
			return nil
		},
	}
	cf := create.Flags()
	cf.StringVar(&image, "image", "", "image reference")
	cf.IntVar(&replicas, "replicas", 1, "number of instances")
	cf.IntVar(&parallelism, "parallelism", 1, "instances replaced at a time in a rolling update")
	cf.Int64Var(&cpu, "cpu", 0, "CPU per instance, millicores")
	cf.Int64Var(&mem, "memory", 0, "memory per instance, MiB")
	cf.StringVar(&restart, "restart", "always", "restart policy: always, on-failure, never")
	tf.add(cf)
	cf.StringArrayVar(&constraints, "constraint", nil, "placement constraint: key==value, key!=value or key")
	cf.DurationVar(&grace, "stop-grace-period", api.DefaultStopGracePeriod, "how long an instance keeps serving after it leaves the endpoints (scale-in, update, drain) before it is signalled")

	list := &cobra.Command{
		Use:   "ls",
		Short: "List services",
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := api.ListOf[*api.Service](cmd.Context(), af.client(), af.tenant, "")
			if err != nil {
				return err
			}
			if format == "json" {
				return printJSON(l.Items)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tIMAGE\tREPLICAS\tREADY\tROLLOUT")
			for _, s := range l.Items {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", s.Name, s.Spec.Template.Image, s.Spec.Replicas, s.Status.Ready, s.Status.Rollout)
			}
			return tw.Flush()
		},
	}
	inspect := &cobra.Command{
		Use: "inspect NAME", Short: "Show a service as JSON", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s := &api.Service{}
			if err := af.client().Get(cmd.Context(), af.tenant, args[0], s); err != nil {
				return err
			}
			return printJSON(s)
		},
	}
	scale := &cobra.Command{
		Use: "scale NAME REPLICAS", Short: "Change a service's replica count", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var n int
			if _, err := fmt.Sscan(args[1], &n); err != nil {
				return fmt.Errorf("replicas %q: not a number", args[1])
			}
			return modifyService(cmd.Context(), af, args[0], func(s *api.Service) error { s.Spec.Replicas = n; return nil })
		},
	}
	update := &cobra.Command{
		Use: "update NAME --image IMAGE", Short: "Roll a service to a new image", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return modifyService(cmd.Context(), af, args[0], func(s *api.Service) error { s.Spec.Template.Image = image; return nil })
		},
	}
	update.Flags().StringVar(&image, "image", "", "new image")
	rollback := &cobra.Command{
		Use: "rollback NAME", Short: "Restore the last fully rolled-out template", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return modifyService(cmd.Context(), af, args[0], func(s *api.Service) error {
				if s.Status.Stable == nil {
					return fmt.Errorf("service %s has no completed rollout to return to", s.Name)
				}
				s.Spec.Template = *s.Status.Stable
				return nil
			})
		},
	}
	ps := &cobra.Command{
		Use: "ps NAME", Short: "List a service's instances: node, phase, and why one is pending", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := api.ListOf[*api.Instance](cmd.Context(), af.client(), af.tenant, "service="+args[0])
			if err != nil {
				return err
			}
			if format == "json" {
				return printJSON(l.Items)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "INSTANCE\tNODE\tPHASE\tHEALTH\tRESTARTS\tIP\tREASON")
			for _, in := range l.Items {
				ip := ""
				if in.Status.IP.IsValid() {
					ip = in.Status.IP.String()
				}
				phase := in.Status.Phase
				if in.Status.CrashLoop {
					phase += " (crash loop)"
				}
				if !in.Spec.StopAt.IsZero() {
					phase += " (retiring)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", in.Name, in.Spec.Node, phase, in.Status.Health, in.Status.Restarts, ip, in.Status.Reason)
			}
			return tw.Flush()
		},
	}
	rm := &cobra.Command{
		Use: "rm NAME", Short: "Delete a service and its instances", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.client().Delete(cmd.Context(), api.KindService, af.tenant, args[0], 0)
		},
	}
	var watchEndpoints bool
	endpoints := &cobra.Command{
		Use: "endpoints NAME", Short: "List where a service's traffic may go: its running, healthy, not retiring instances", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := af.client()
			l, err := c.Endpoints(cmd.Context(), af.tenant, args[0])
			if err != nil {
				return err
			}
			if err := printEndpoints(l, format); err != nil || !watchEndpoints {
				return err
			}
			w := c.WatchEndpoints(cmd.Context(), af.tenant, args[0], l.Revision)
			defer w.Close()
			for {
				ev, err := w.Next()
				if err != nil {
					return err
				}
				l = api.List[api.Endpoint]{}
				if err := api.DecodeBytes(ev.Object, &l); err != nil {
					return fmt.Errorf("endpoints of %s: %w", args[0], err)
				}
				if format != "json" {
					fmt.Println()
				}
				if err := printEndpoints(l, format); err != nil {
					return err
				}
			}
		},
	}
	list.Flags().StringVar(&format, "format", "", "table (default) or json")
	ps.Flags().StringVar(&format, "format", "", "table (default) or json")
	endpoints.Flags().StringVar(&format, "format", "", "table (default) or json (one line per set with --watch)")
	endpoints.Flags().BoolVarP(&watchEndpoints, "watch", "w", false, "print the set again each time it changes")
	cmd.AddCommand(create, list, inspect, ps, scale, update, rollback, rm, endpoints)
	return cmd
}

// printEndpoints writes a service's endpoints as a table or as JSON (one
// line, so that a watch prints one set per line).
func printEndpoints(l api.List[api.Endpoint], format string) error {
	if format == "json" {
		return printJSONLine(l)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tNODE\tIP\tPORTS")
	for _, e := range l.Items {
		var ports []string
		for _, p := range e.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s", p.Port, cmp.Or(p.Protocol, "tcp")))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Instance, e.Node, e.IP, strings.Join(ports, ","))
	}
	return tw.Flush()
}

func parseConstraint(s string) api.Constraint {
	if k, v, ok := strings.Cut(s, "!="); ok {
		return api.Constraint{Key: k, Op: api.OpNotEqual, Value: v}
	}
	if k, v, ok := strings.Cut(s, "=="); ok {
		return api.Constraint{Key: k, Op: api.OpEqual, Value: v}
	}
	if k, v, ok := strings.Cut(s, "="); ok {
		return api.Constraint{Key: k, Op: api.OpEqual, Value: v}
	}
	return api.Constraint{Key: s, Op: api.OpExists}
}

// modifyService reads, changes and writes a service, retrying on conflicts.
func modifyService(ctx context.Context, af apiFlags, name string, f func(*api.Service) error) error {
	c := af.client()
	for attempt := 0; ; attempt++ {
		s := &api.Service{}
		if err := c.Get(ctx, af.tenant, name, s); err != nil {
			return err
		}
		if err := f(s); err != nil {
			return err
		}
		err := c.Update(ctx, s)
		if !api.IsConflict(err) || attempt > 5 {
			return err
		}
	}
}

func newNodeCmd() *cobra.Command {
	var af apiFlags
	var format string
	cmd := &cobra.Command{Use: "node", Short: "Inspect and drain nodes"}
	af.add(cmd)
	list := &cobra.Command{
		Use: "ls", Short: "List nodes",
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := api.ListOf[*api.Node](cmd.Context(), af.client(), "", "")
			if err != nil {
				return err
			}
			if format == "json" {
				return printJSON(l.Items)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tPHASE\tCPU\tMEMORY\tLABELS")
			for _, n := range l.Items {
				fmt.Fprintf(tw, "%s\t%s\t%dm\t%dMiB\t%s\n", n.Name, n.Status.Phase, n.Spec.Capacity.CPU, n.Spec.Capacity.Memory>>20, api.FormatLabels(n.Labels))
			}
			return tw.Flush()
		},
	}
	inspect := &cobra.Command{
		Use: "inspect NAME...", Short: "Show nodes as JSON", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out []*api.Node
			for _, name := range args {
				n := &api.Node{}
				if err := af.client().Get(cmd.Context(), "", name, n); err != nil {
					return err
				}
				out = append(out, n)
			}
			return printJSON(out)
		},
	}
	drain := &cobra.Command{
		Use: "drain NAME", Short: "Move a node's instances elsewhere, then mark it unschedulable", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := af.client().Drain(cmd.Context(), args[0])
			return err
		},
	}
	move := &cobra.Command{
		Use: "move INSTANCE NODE", Short: "Move one instance to a named node", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := af.client().Move(cmd.Context(), af.tenant, args[0], args[1])
			return err
		},
	}
	var ttl time.Duration
	joinToken := &cobra.Command{
		Use: "join-token", Short: "Mint a short-lived token that joins one or more agents (berth agent --join URL --token TOKEN)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := af.client().JoinToken(cmd.Context(), ttl)
			if err != nil {
				return err
			}
			fmt.Println(t.Token)
			return nil
		},
	}
	joinToken.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token joins agents")
	rm := &cobra.Command{
		Use: "rm NAME...", Short: "Remove nodes: their credentials stop working at once and their instances are rescheduled", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, name := range args {
				if err := af.client().Delete(cmd.Context(), api.KindNode, "", name, 0); err != nil {
					return fmt.Errorf("node %s: %w", name, err)
				}
			}
			return nil
		},
	}
	list.Flags().StringVar(&format, "format", "", "table (default) or json")
	cmd.AddCommand(list, inspect, drain, move, rm, joinToken, newNodeProvisionCmd(&af))
	return cmd
}

// newMoveCmd is `berth move INSTANCE --to NODE`: the instance keeps its
// name and labels; the node it leaves keeps serving it until it serves on
// the new one. Named volumes live on their node: with --copy-volumes the
// container is stopped, its volumes copied to the new node, and it starts
// there (a stateful move has to stop writing to copy consistently).
func newMoveCmd() *cobra.Command {
	var af apiFlags
	var to string
	var copyVolumes bool
	cmd := &cobra.Command{
		Use: "move INSTANCE --to NODE", Short: "Move a container (an instance) to another node, keeping its name and labels", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return fmt.Errorf("--to: the node to move %s to is required", args[0])
			}
			ctx, c, name := cmd.Context(), af.client(), args[0]
			in, err := getInstance(ctx, c, af.tenant, name)
			if err != nil {
				return err
			}
			var vols []string
			for _, m := range in.Spec.Template.Mounts {
				if m.Type == api.MountVolume {
					vols = append(vols, m.Source)
				}
			}
			from := in.Spec.Node
			if !copyVolumes || len(vols) == 0 || from == "" || from == to {
				if len(vols) > 0 && !copyVolumes {
					fmt.Fprintf(os.Stderr, "berth: %s's volumes (%s) stay on %s; it starts on %s with empty ones (--copy-volumes copies them)\n",
						name, strings.Join(vols, ", "), from, to)
				}
				if _, err := c.Move(ctx, af.tenant, name, to); err != nil {
					return err
				}
				fmt.Printf("%s moving to %s\n", name, to)
				return nil
			}
			wasRunning := in.Spec.Desired != api.DesiredStopped
			if _, err := change(ctx, c, af.tenant, name, func(in *api.Instance) error {
				in.Spec.Desired = api.DesiredStopped
				return nil
			}, func(in *api.Instance) bool { return !isRunning(in) }); err != nil {
				return fmt.Errorf("stop %s to copy its volumes: %w", name, err)
			}
			for _, v := range vols {
				if err := copyVolume(ctx, c, af.tenant, v, from, to); err != nil {
					return fmt.Errorf("copy volume %s from %s to %s (%s is stopped on %s; berth start %s resumes it there): %w", v, from, to, name, from, name, err)
				}
			}
			if _, err := c.Move(ctx, af.tenant, name, to); err != nil {
				return err
			}
			if wasRunning {
				in, err := change(ctx, c, af.tenant, name, func(in *api.Instance) error {
					in.Spec.Desired = api.DesiredRunning
					in.Spec.RestartGeneration = max(in.Spec.RestartGeneration, in.Status.Restarts) + 1
					return nil
				}, func(in *api.Instance) bool { return in.Status.ObservedNode == to && startedOrFailed(in) })
				if err != nil {
					return err
				}
				if err := startFailure(in); err != nil {
					return err
				}
			}
			fmt.Printf("%s moved to %s with its volumes %s\n", name, to, strings.Join(vols, ", "))
			return nil
		},
	}
	af.add(cmd)
	cmd.Flags().StringVar(&to, "to", "", "node to move to")
	cmd.Flags().BoolVar(&copyVolumes, "copy-volumes", false, "stop the container, copy its named volumes to the new node, start it there")
	return cmd
}

// copyVolume streams a tenant's volume from one node's agent to another's
// through the control plane.
func copyVolume(ctx context.Context, c *api.Client, tenant, vol, from, to string) error {
	rc, err := c.CopyVolumeFrom(ctx, tenant, vol, from)
	if err != nil {
		return err
	}
	defer rc.Close()
	return c.CopyVolumeTo(ctx, tenant, vol, to, rc)
}

// newClusterCmd shows the control plane's own state: the leading server
// and the etcd members.
func newClusterCmd() *cobra.Command {
	var af apiFlags
	var format string
	cmd := &cobra.Command{
		Use: "cluster", Short: "Show which server leads the control plane and the etcd members it runs on", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := af.client().Cluster(cmd.Context())
			if err != nil {
				return err
			}
			if format == "json" {
				return printJSON(cl)
			}
			leader := cl.Leader
			if leader == "" {
				leader = "(none elected)"
			}
			fmt.Printf("leader: %s\n", leader)
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ETCD MEMBER\tPEER URLS\tCLIENT URLS")
			for _, m := range cl.Etcd {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", m.Name, strings.Join(m.PeerURLs, ","), strings.Join(m.ClientURLs, ","))
			}
			return tw.Flush()
		},
	}
	af.add(cmd)
	cmd.Flags().StringVar(&format, "format", "", "table (default) or json")
	return cmd
}

func newTokenCmd() *cobra.Command {
	var af apiFlags
	var role, node string
	cmd := &cobra.Command{Use: "token", Short: "Manage bearer tokens"}
	af.add(cmd)
	create := &cobra.Command{
		Use: "create NAME", Short: "Create a token and print its secret (shown once)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t := &api.Token{Meta: api.Meta{Name: args[0], Tenant: af.tenant}, Role: api.Role(role), Node: node}
			if err := af.client().Create(cmd.Context(), t); err != nil {
				return err
			}
			fmt.Println(t.Secret)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", string(api.RoleTenantAdmin), "admin, tenant-admin, read-only or node")
	create.Flags().StringVar(&node, "node", "", "the node a node token acts as")
	tenant := &cobra.Command{
		Use: "tenant-create NAME", Short: "Create a tenant", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.client().Create(cmd.Context(), &api.Tenant{Meta: api.Meta{Name: args[0]}})
		},
	}
	cmd.AddCommand(create, tenant)
	return cmd
}

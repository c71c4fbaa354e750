package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control"
	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/internal/sibling"
	"github.com/berth-dev/berth/internal/statedir"
	"github.com/berth-dev/berth/runtime"
	"github.com/berth-dev/berth/runtime/cgroups"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// newUpCmd is the single-machine Berth: embedded etcd, the control plane
// and this machine's node agent in one process.
func newUpCmd() *cobra.Command {
	var dataDir, stateDir, listen, etcdListen, nodeName, network string
	var pools []string
	var keepCgroups bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run Berth on this machine: embedded etcd, the control plane and the node agent in one process",
		Long: `Run Berth on this machine: embedded etcd, the control plane and the node agent in one process.
State lives under --data-dir: etcd/, admin-token, image/ (the store ` + "`berth image --root`" + ` uses),
agent/ and network/ (the node's container addresses); what does not outlive a boot (the runtime's
state, containers' mount points) under --state-dir, best a tmpfs. Each container gets its own
routable IP on --network, from the blocks of --pool this node claims. Stopping it (Ctrl-C,
SIGTERM) stops the control plane but not the containers; starting it again adopts them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			unet, err := parseUpNetwork(network, pools)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return up(ctx, log, upConfig{dataDir: dataDir, listen: listen, etcdListen: etcdListen, node: nodeName, net: unet, keepCgroups: keepCgroups,
				stateDir: stateDir},
				func(apiURL, tokenFile string) {
					fmt.Fprintf(cmd.OutOrStdout(), "API: %s\nadmin token: %s\n", apiURL, tokenFile)
				})
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", defaultRoot, "state directory (etcd, admin token, images, containers)")
	addStateDirFlag(f, &stateDir)
	f.StringVar(&listen, "listen", "127.0.0.1:7070", "API address: HOST:PORT for TCP, or unix:///PATH for a unix socket of mode 0660 (as Docker's docker.sock; a stale socket there is replaced)")
	f.StringVar(&etcdListen, "etcd-listen", "", "client URL of the embedded etcd (default: a free loopback port)")
	f.StringVar(&nodeName, "node-name", agent.NodeName(), "this node's name")
	f.StringVar(&network, "network", defaultUpNetwork, "network containers are attached to, each with its own routable address (none: loopback only)")
	addKeepCgroupsFlag(f, &keepCgroups)
	f.StringSliceVar(&pools, "pool", []string{defaultUpPool}, "private CIDR the network's addresses come from, in per-node blocks (/26 for IPv4, /122 for IPv6); repeat for an IPv6 pool too")
	return cmd
}

type upConfig struct {
	dataDir, listen, etcdListen, node string
	net                               upNetwork
	keepCgroups                       bool
	stateDir                          string
}

// up serves until ctx ends; ready is told the API's URL (http://HOST:PORT
// or unix:///PATH) and the admin token file once the API listens.
func up(ctx context.Context, log *slog.Logger, cfg upConfig, ready func(apiURL, tokenFile string)) error {
	if err := os.MkdirAll(cfg.dataDir, 0o711); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	e, cli, err := control.StartEtcd(control.EtcdConfig{Dir: filepath.Join(cfg.dataDir, "etcd"), ClientURL: cfg.etcdListen, Quiet: true})
	if err != nil {
		return err
	}
	defer e.Close()
	defer cli.Close()
	st := control.NewStore(cli, "/berth")
	secret, err := adminSecret(cfg.dataDir, "")
	if err != nil {
		return err
	}
	if err := control.Bootstrap(ctx, st, secret, time.Now().UTC()); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Runs before the deferred closes of the agent, API and etcd below.
	defer wg.Wait()
	defer cancel()
	// The leader and the API share a process: runs are created placed.
	runs := control.NewRuns()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = control.RunLeader(ctx, control.LoopConfig{Store: st, Runs: runs, Log: log, Now: time.Now, Rand: rand.Reader,
			Batch: 1000, Candidates: 64, Identity: fmt.Sprintf("%s-%d", cfg.node, os.Getpid())})
	}()
	handler := control.NewServer(control.Config{Store: st, Runs: runs, Log: log, Now: time.Now, Rand: rand.Reader, NodeTTL: 3 * time.Second})
	defer handler.Close()
	ln, apiURL, err := listenAPI(cfg.listen)
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveErr <- serveAPI(ctx, handler, ln)
	}()

	admin := api.NewClient(apiURL, secret, nil)
	nodeClient, err := nodeToken(ctx, admin, cfg.node)
	if err != nil {
		return err
	}
	nodeErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		nodeErr <- runNodeHost(ctx, log, nodeHost{
			dataDir: cfg.dataDir, node: cfg.node, client: nodeClient, keepCgroups: cfg.keepCgroups, stateDir: cfg.stateDir, runs: runs,
			openNet: func(ctx context.Context) (agent.Networker, string, func() error, error) {
				if !cfg.net.enabled() {
					return nil, "none", func() error { return nil }, nil
				}
				un, err := openUpNetwork(ctx, log, cfg.dataDir, cfg.node, cfg.net, admin, nodeClient)
				if err != nil {
					return nil, "", nil, err
				}
				return un, cfg.net.name, un.Close, nil
			},
			serveOps: func(ctx context.Context, h http.Handler) (string, <-chan error, error) {
				return serveNodeAPI(ctx, filepath.Join(cfg.dataDir, "agent.sock"), h)
			},
			ready: func() { ready(apiURL, filepath.Join(cfg.dataDir, "admin-token")) },
		})
	}()
	select {
	case err = <-serveErr:
	case err = <-nodeErr:
	case <-ctx.Done():
		log.Info("stopping the control plane; containers keep running")
	}
	// Everything stops before the API and etcd close.
	cancel()
	wg.Wait()
	return err
}

// nodeHost is what makes this machine a node: `berth up` and `berth
// agent` differ only in how they reach the control plane, attach the
// network and serve container operations.
type nodeHost struct {
	dataDir, node string
	// client acts as the node.
	client *api.Client
	// openNet opens the node's network (nil Networker: loopback only) and
	// says its name; close keeps containers attached.
	openNet func(ctx context.Context) (nw agent.Networker, name string, close func() error, err error)
	// serveOps serves the agent's container operations until ctx ends and
	// returns the URL the control plane reaches them at.
	serveOps func(ctx context.Context, h http.Handler) (agentURL string, errs <-chan error, err error)
	// reg is the registration beyond the agent URL.
	reg api.Registration
	// ready is told once the node is about to register.
	ready func()
	// keepCgroups leaves the host's cgroup2 options alone.
	keepCgroups bool
	// stateDir holds what does not outlive a boot: the runtime's state and
	// the agent's mount points. Empty means statedir.Default(dataDir).
	stateDir string
	// runs, when the control plane's leader runs in this process, is
	// where the node offers to prepare the runs placed on it.
	runs *control.Runs
}

// addStateDirFlag is the node commands' --state-dir.
func addStateDirFlag(f *pflag.FlagSet, v *string) {
	f.StringVar(v, "state-dir", "", "directory for what does not outlive a boot, as containers do not: the runtime's state and containers' mount points; "+
		"best on a tmpfs, where a directory costs microseconds to make, not a disk's metadata writes (default "+statedir.Base+"/<first 12 hex digits of the SHA-256 of the absolute --data-dir>)")
}

// addKeepCgroupsFlag is the node commands' opt-out of favordynmods.
func addKeepCgroupsFlag(f *pflag.FlagSet, v *bool) {
	f.BoolVar(v, "keep-cgroup-options", false, "leave the host's cgroup2 mount options alone; by default the node adds favordynmods, "+
		"which makes moving a process into a container's cgroup cost microseconds instead of an RCU grace period (milliseconds), at a small cost to every fork and exit")
}

// runNodeHost runs the agent and the node loop until ctx ends or either
// fails. Containers keep running after it returns.
func runNodeHost(ctx context.Context, log *slog.Logger, h nodeHost) error {
	rtPath, err := sibling.Find("berth-runtime")
	if err != nil {
		return err
	}
	initPath, err := sibling.Find("berth-init")
	if err != nil {
		return err
	}
	images, err := image.Open(filepath.Join(h.dataDir, "image"), log)
	if err != nil {
		return err
	}
	stateDir, err := prepareStateDir(h.dataDir, h.stateDir)
	if err != nil {
		return err
	}
	if ok, err := statedir.OnTmpfs(stateDir); err == nil && !ok {
		log.Warn("state dir is not on a tmpfs: container starts and removals pay a disk's metadata writes; "+
			"choose one on a tmpfs with --state-dir, or leave the default", "dir", stateDir)
	}
	rt, err := runtime.NewNative(filepath.Join(stateDir, "runtime"), log)
	if err != nil {
		return err
	}
	rt.InitPath = rtPath
	rt.PlanInitPath = initPath
	if !h.keepCgroups {
		if changed, err := cgroups.FavorDynMods(); err != nil {
			log.Warn("cgroup2 favordynmods: not set, container starts wait for the kernel's cgroup lock", "err", err)
		} else if changed {
			log.Info("cgroup2 reconfigured with favordynmods: containers join their cgroups without waiting for an RCU grace period")
		}
	}
	// The network opens before the agent, whose start sweeps what dead
	// containers left in it; it closes after, keeping containers attached.
	nw, netName, closeNet, err := h.openNet(ctx)
	if err != nil {
		return err
	}
	defer closeNet()
	a, err := agent.New(ctx, agent.Config{Root: filepath.Join(h.dataDir, "agent"), StateRoot: filepath.Join(stateDir, "agent"),
		Images: images, Runtime: rt, InitPath: initPath, Networker: nw, Log: log})
	if err != nil {
		return err
	}
	// Closing the agent stops its watches only: containers keep running.
	defer a.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	agentURL, opsErr, err := h.serveOps(ctx, agent.NewNodeAPI(a, log))
	if err != nil {
		return err
	}
	reg := h.reg
	reg.Spec.AgentURL = agentURL
	n, err := agent.NewNode(agent.NodeConfig{Name: h.node, Client: h.client, Agent: a, Network: netName, Log: log, Reg: reg})
	if err != nil {
		return err
	}
	if h.runs != nil {
		h.runs.SetPreparer(n)
		defer h.runs.SetPreparer(nil)
	}
	if h.ready != nil {
		h.ready()
	}
	nodeErr := make(chan error, 1)
	go func() { nodeErr <- n.Run(ctx) }()
	select {
	case err = <-opsErr:
		if err != nil {
			err = fmt.Errorf("agent operations API: %w", err)
		}
		cancel()
		<-nodeErr
	case err = <-nodeErr:
		if err != nil {
			err = fmt.Errorf("node %s: %w", h.node, err)
		}
	}
	return err
}

// prepareStateDir makes the node's state directory (dir, or by default
// statedir.Default(dataDir)) mode 0711, as are the parents it makes and
// the default's statedir.Base: containers' unprivileged host uids reach
// their mount points below it.
func prepareStateDir(dataDir, dir string) (string, error) {
	if dir == "" && statedir.HasOldLayout(dataDir) {
		// Containers made before the state directory existed keep their
		// runtime state in the data directory: a node upgraded in place
		// goes on with them there rather than take them for exited.
		return dataDir, nil
	}
	modes := []string{dir}
	if dir == "" {
		d, err := statedir.Default(dataDir)
		if err != nil {
			return "", fmt.Errorf("state dir: %w", err)
		}
		dir, modes = d, []string{statedir.Base, d}
		if _, err := statedir.EnsureTmpfs(statedir.Base); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return "", fmt.Errorf("state dir: %w", err)
	}
	for _, d := range modes {
		if err := os.Chmod(d, 0o711); err != nil {
			return "", fmt.Errorf("state dir: %w", err)
		}
	}
	return dir, nil
}

// nodeToken mints a fresh node token for this process's node loop: the
// secret lives only in memory, so a token of a previous start is replaced.
func nodeToken(ctx context.Context, admin *api.Client, node string) (*api.Client, error) {
	name := "node-" + node
	if err := admin.Delete(ctx, api.KindToken, api.SystemTenant, name, 0); err != nil && !api.IsNotFound(err) {
		return nil, fmt.Errorf("node token: %w", err)
	}
	tok := &api.Token{Meta: api.Meta{Name: name, Tenant: api.SystemTenant}, Role: api.RoleNode, Node: node}
	if err := admin.Create(ctx, tok); err != nil {
		return nil, fmt.Errorf("node token: %w", err)
	}
	return admin.WithToken(tok.Secret), nil
}

// listenAPI listens where --listen says: a TCP address, or a unix socket
// (unix:///PATH) that only its owner and group can use, and returns the
// listener and the API's URL. Closing the listener, as serveAPI does when
// it stops, removes the socket file.
func listenAPI(listen string) (net.Listener, string, error) {
	if !strings.HasPrefix(listen, "unix:") {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return nil, "", fmt.Errorf("listen on %s: %w", listen, err)
		}
		return ln, "http://" + ln.Addr().String(), nil
	}
	sock, err := api.UnixSocketPath(listen)
	if err != nil {
		return nil, "", fmt.Errorf("--listen: %w", err)
	}
	if err := removeStaleSocket(sock); err != nil {
		return nil, "", err
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, "", fmt.Errorf("listen on %s: %w", sock, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(sock, 0o660); err != nil {
		ln.Close()
		return nil, "", fmt.Errorf("API socket %s: %w", sock, err)
	}
	return ln, (&url.URL{Scheme: "unix", Path: sock}).String(), nil
}

// removeStaleSocket removes the socket file a server that ended without
// closing it left at sock. A socket someone still listens on, or a file
// that is not a socket, stays and is an error.
func removeStaleSocket(sock string) error {
	fi, err := os.Lstat(sock)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("API socket: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("API socket %s: exists and is not a socket", sock)
	}
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("API socket %s: another server listens on it", sock)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("API socket: %w", err)
	}
	return nil
}

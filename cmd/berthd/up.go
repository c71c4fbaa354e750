package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"github.com/berth-dev/berth/internal/sibling"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/control"
	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/runtime"
	"github.com/spf13/cobra"
)

// newUpCmd is the single-machine Berth: embedded etcd, the control plane
// and this machine's node agent in one process.
func newUpCmd() *cobra.Command {
	var dataDir, listen, etcdListen, nodeName, network string
	var pools []string
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run Berth on this machine: embedded etcd, the control plane and the node agent in one process",
		Long: `Run Berth on this machine: embedded etcd, the control plane and the node agent in one process.
State lives under --data-dir: etcd/, admin-token, image/ (the store ` + "`berth image --root`" + ` uses),
runtime/, agent/ and network/ (the node's container addresses). Each container gets its own
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
			return up(ctx, log, upConfig{dataDir: dataDir, listen: listen, etcdListen: etcdListen, node: nodeName, net: unet},
				func(addr, tokenFile string) {
					fmt.Fprintf(cmd.OutOrStdout(), "API: http://%s\nadmin token: %s\n", addr, tokenFile)
				})
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", defaultRoot, "state directory (etcd, admin token, images, containers)")
	f.StringVar(&listen, "listen", "127.0.0.1:7070", "API address")
	f.StringVar(&etcdListen, "etcd-listen", "", "client URL of the embedded etcd (default: a free loopback port)")
	f.StringVar(&nodeName, "node-name", agent.NodeName(), "this node's name")
	f.StringVar(&network, "network", defaultUpNetwork, "network containers are attached to, each with its own routable address (none: loopback only)")
	f.StringSliceVar(&pools, "pool", []string{defaultUpPool}, "private CIDR the network's addresses come from, in per-node blocks (/26 for IPv4, /122 for IPv6); repeat for an IPv6 pool too")
	return cmd
}

type upConfig struct {
	dataDir, listen, etcdListen, node string
	net                               upNetwork
}

// up serves until ctx ends; ready is told the API address and the admin
// token file once the API listens.
func up(ctx context.Context, log *slog.Logger, cfg upConfig, ready func(addr, tokenFile string)) error {
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
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = control.RunLeader(ctx, control.LoopConfig{Store: st, Log: log, Now: time.Now, Rand: rand.Reader,
			Batch: 1000, Candidates: 64, Identity: fmt.Sprintf("%s-%d", cfg.node, os.Getpid())})
	}()
	handler := control.NewServer(control.Config{Store: st, Log: log, Now: time.Now, Rand: rand.Reader, NodeTTL: 3 * time.Second})
	defer handler.Close()
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.listen, err)
	}
	addr := ln.Addr().String()
	serveErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveErr <- serveAPI(ctx, handler, ln)
	}()

	admin := api.NewClient("http://"+addr, secret, nil)
	nodeClient, err := nodeToken(ctx, admin, cfg.node)
	if err != nil {
		return err
	}
	nodeErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		nodeErr <- runNodeHost(ctx, log, nodeHost{
			dataDir: cfg.dataDir, node: cfg.node, client: nodeClient,
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
			ready: func() { ready(addr, filepath.Join(cfg.dataDir, "admin-token")) },
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
	rt, err := runtime.NewNative(filepath.Join(h.dataDir, "runtime"), log)
	if err != nil {
		return err
	}
	rt.InitPath = rtPath
	// The network opens before the agent, whose start sweeps what dead
	// containers left in it; it closes after, keeping containers attached.
	nw, netName, closeNet, err := h.openNet(ctx)
	if err != nil {
		return err
	}
	defer closeNet()
	a, err := agent.New(ctx, agent.Config{Root: filepath.Join(h.dataDir, "agent"), Images: images, Runtime: rt, InitPath: initPath, Networker: nw, Log: log})
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

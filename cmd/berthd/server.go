package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/console"
	"github.com/berth-dev/berth/control"
	"github.com/spf13/cobra"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func newServerCmd() *cobra.Command {
	var (
		dataDir, listen, endpoints, caFile, certFile, keyFile, prefix, adminToken, etcdListen string
		nodeTTL                                                                               time.Duration
		batch                                                                                 int
	)
	var (
		tlsListen       string
		tlsNames, pools []string
		certTTL         time.Duration
	)
	var member etcdFlags
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: the API, and (when elected leader) the scheduler and controllers",
		RunE: func(cmd *cobra.Command, args []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			member.listen = etcdListen
			etcdCfg, err := member.config(filepath.Join(dataDir, "etcd"), endpoints != "")
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return fmt.Errorf("data dir: %w", err)
			}
			var cli *clientv3.Client
			if endpoints == "" {
				e, c, err := control.StartEtcd(etcdCfg)
				if err != nil {
					return err
				}
				defer e.Close()
				cli = c
			} else {
				if !cmd.Flags().Changed("batch") {
					// An external etcd keeps its default --max-txn-ops of 128.
					batch = 25
				}
				cfg := clientv3.Config{Endpoints: strings.Split(endpoints, ","), DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
					DialOptions: control.ClientWindows()}
				if caFile != "" || certFile != "" {
					tlsInfo := transport.TLSInfo{TrustedCAFile: caFile, CertFile: certFile, KeyFile: keyFile}
					tc, err := tlsInfo.ClientConfig()
					if err != nil {
						return fmt.Errorf("etcd TLS: %w", err)
					}
					cfg.TLS = tc
				}
				c, err := clientv3.New(cfg)
				if err != nil {
					return fmt.Errorf("connect to etcd %s: %w", endpoints, err)
				}
				cli = c
			}
			defer cli.Close()
			st := control.NewStore(cli, prefix)
			secret, err := adminSecret(dataDir, adminToken)
			if err != nil {
				return err
			}
			if err := control.Bootstrap(ctx, st, secret, time.Now().UTC()); err != nil {
				return err
			}
			ca, err := control.LoadCA(ctx, st, rand.Reader, time.Now())
			if err != nil {
				return err
			}
			unet, err := parseUpNetwork("berth", pools)
			if err != nil {
				return err
			}
			host, _ := os.Hostname()
			// The leader and the API share a process: runs are created placed.
			runs := control.NewRuns()
			go func() {
				_ = control.RunLeader(ctx, control.LoopConfig{Store: st, Runs: runs, Log: log, Now: time.Now, Rand: rand.Reader,
					Batch: batch, Candidates: 64, Identity: fmt.Sprintf("%s-%d", host, os.Getpid())})
			}()
			handler := control.NewServer(control.Config{Store: st, Runs: runs, Log: log, Now: time.Now, Rand: rand.Reader, NodeTTL: nodeTTL,
				CA: ca, NodeCertTTL: certTTL})
			defer handler.Close()
			return serveServer(ctx, log, handler, serverListen{plain: listen, tls: tlsListen, names: tlsNames, dataDir: dataDir, secret: secret, net: unet})
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", "/var/lib/berth/server", "state directory (embedded etcd, admin token)")
	f.StringVar(&listen, "listen", "127.0.0.1:7070", "API address (plain HTTP: keep it on loopback)")
	f.StringVar(&tlsListen, "tls-listen", "", "API address over TLS with the cluster CA's certificate, for agents (mutual TLS) and remote clients, e.g. 0.0.0.0:7443")
	f.StringSliceVar(&tlsNames, "tls-name", nil, "extra host name or address the TLS certificate is valid for (the listen address and host name are included)")
	f.StringSliceVar(&pools, "pool", []string{defaultUpPool}, "private CIDR the agents' container addresses come from, in per-node blocks")
	f.DurationVar(&certTTL, "node-cert-ttl", 24*time.Hour, "life of a node certificate; agents renew two thirds in")
	f.StringVar(&endpoints, "etcd-endpoints", "", "external etcd endpoints, comma-separated (default: embedded etcd)")
	f.StringVar(&caFile, "etcd-cacert", "", "CA bundle for an external etcd")
	f.StringVar(&certFile, "etcd-cert", "", "client certificate for an external etcd")
	f.StringVar(&keyFile, "etcd-key", "", "client key for an external etcd")
	f.StringVar(&prefix, "etcd-prefix", "/berth", "key prefix in etcd")
	f.StringVar(&adminToken, "admin-token", "", "admin bearer token (system.NAME.SECRET); default: generated into DATA-DIR/admin-token")
	f.DurationVar(&nodeTTL, "node-ttl", 3*time.Second, "node liveness lease")
	f.StringVar(&etcdListen, "etcd-listen", "http://127.0.0.1:2379", "client URL of the embedded etcd")
	f.StringVar(&member.name, "etcd-name", "", "this server's member name in --etcd-initial-cluster")
	f.StringVar(&member.peerListen, "etcd-peer-listen", "", "peer URL of the embedded etcd member (default: its entry in --etcd-initial-cluster)")
	f.StringVar(&member.initialCluster, "etcd-initial-cluster", "", "make the embedded etcd one member of a static cluster: name=PEER-URL,... of every member")
	f.IntVar(&batch, "batch", 1000, "instances written per etcd transaction (25 with --etcd-endpoints unless set)")
	return cmd
}

type serverListen struct {
	plain, tls, dataDir, secret string
	names                       []string
	net                         upNetwork
}

// serveServer serves the API on the plain and TLS listeners until ctx ends,
// and makes the pool's address blocks once it answers.
func serveServer(ctx context.Context, log *slog.Logger, h *control.Server, l serverListen) error {
	ln, err := net.Listen("tcp", l.plain)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", l.plain, err)
	}
	errs := make(chan error, 2)
	go func() { errs <- serveAPI(ctx, h, ln) }()
	log.Info("serving the API", "addr", ln.Addr().String(), "admin-token-file", filepath.Join(l.dataDir, "admin-token"))
	n := 1
	if l.tls != "" {
		tln, err := net.Listen("tcp", l.tls)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", l.tls, err)
		}
		ips, dns := tlsNames(tln.Addr(), l.names)
		tc := h.TLSConfig(ips, dns)
		go func() { errs <- serveAPI(ctx, h, tls.NewListener(tln, tc)) }()
		n++
		log.Info("serving the API over TLS", "addr", tln.Addr().String(), "names", append(dns, fmt.Sprint(ips)))
	}
	admin := api.NewClient("http://"+ln.Addr().String(), l.secret, nil)
	// With several servers, etcd may be electing a leader while this one
	// starts: the pool's blocks are made again until they are there.
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := ensureBlocks(ctx, admin, l.net.plan)
		if err == nil || ctx.Err() != nil {
			break
		}
		log.Warn("make the pool's address blocks; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// tlsNames are what the TLS certificate is valid for: the listen address
// (every local address when it is unspecified), the host name, loopback
// and the extra names given.
func tlsNames(addr net.Addr, extra []string) ([]netip.Addr, []string) {
	var ips []netip.Addr
	dns := []string{"localhost"}
	if h, err := os.Hostname(); err == nil && h != "" {
		dns = append(dns, h)
	}
	add := func(a netip.Addr) {
		if a.IsValid() && !slices.Contains(ips, a.Unmap()) {
			ips = append(ips, a.Unmap())
		}
	}
	if ta, ok := addr.(*net.TCPAddr); ok {
		a := ta.AddrPort().Addr().Unmap()
		if a.IsUnspecified() {
			if ifs, err := net.InterfaceAddrs(); err == nil {
				for _, ia := range ifs {
					if p, err := netip.ParsePrefix(ia.String()); err == nil {
						add(p.Addr())
					}
				}
			}
		} else {
			add(a)
		}
	}
	add(netip.AddrFrom4([4]byte{127, 0, 0, 1}))
	for _, n := range extra {
		if a, err := netip.ParseAddr(n); err == nil {
			add(a)
		} else if n != "" {
			dns = append(dns, n)
		}
	}
	return ips, dns
}

// serveAPI serves handler on ln until ctx ends, then shuts down gracefully.
func serveAPI(ctx context.Context, handler http.Handler, ln net.Listener) error {
	// The console is served beside the API it uses, from the same origin.
	mux := http.NewServeMux()
	mux.Handle("/v1/", handler)
	mux.Handle("/", console.Handler())
	srv := &http.Server{Handler: mux,
		ReadHeaderTimeout: 10 * time.Second, TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	if d, ok := handler.(interface{ Drain() }); ok {
		// Long polls answer rather than hold the shutdown.
		srv.RegisterOnShutdown(d.Drain)
	}
	// Cleartext HTTP/2 as well as HTTP/1.1: an agent's watch and its
	// reports can share one connection.
	srv.Protocols = &http.Protocols{}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetHTTP2(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve API: %w", err)
	}
	<-stopped
	return nil
}

// adminSecret returns the given token or the one kept in the data
// directory, generating it on first start.
func adminSecret(dir, given string) (string, error) {
	path := filepath.Join(dir, "admin-token")
	if given != "" {
		return given, nil
	}
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	s, err := control.NewSecret(rand.Reader, "system", "admin")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write admin token: %w", err)
	}
	return s, nil
}

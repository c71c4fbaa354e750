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
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

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
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: the API, and (when elected leader) the scheduler and controllers",
		RunE: func(cmd *cobra.Command, args []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return fmt.Errorf("data dir: %w", err)
			}
			var cli *clientv3.Client
			if endpoints == "" {
				e, c, err := control.StartEtcd(control.EtcdConfig{Dir: filepath.Join(dataDir, "etcd"), ClientURL: etcdListen, Quiet: true})
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
				cfg := clientv3.Config{Endpoints: strings.Split(endpoints, ","), DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
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
			host, _ := os.Hostname()
			go func() {
				_ = control.RunLeader(ctx, control.LoopConfig{Store: st, Log: log, Now: time.Now, Rand: rand.Reader,
					Batch: batch, Candidates: 64, Identity: fmt.Sprintf("%s-%d", host, os.Getpid())})
			}()
			handler := control.NewServer(control.Config{Store: st, Log: log, Now: time.Now, Rand: rand.Reader, NodeTTL: nodeTTL})
			defer handler.Close()
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			log.Info("serving the API", "addr", ln.Addr().String(), "admin-token-file", filepath.Join(dataDir, "admin-token"))
			return serveAPI(ctx, handler, ln)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", "/var/lib/berth/server", "state directory (embedded etcd, admin token)")
	f.StringVar(&listen, "listen", "127.0.0.1:7070", "API address")
	f.StringVar(&endpoints, "etcd-endpoints", "", "external etcd endpoints, comma-separated (default: embedded etcd)")
	f.StringVar(&caFile, "etcd-cacert", "", "CA bundle for an external etcd")
	f.StringVar(&certFile, "etcd-cert", "", "client certificate for an external etcd")
	f.StringVar(&keyFile, "etcd-key", "", "client key for an external etcd")
	f.StringVar(&prefix, "etcd-prefix", "/berth", "key prefix in etcd")
	f.StringVar(&adminToken, "admin-token", "", "admin bearer token (system.NAME.SECRET); default: generated into DATA-DIR/admin-token")
	f.DurationVar(&nodeTTL, "node-ttl", 3*time.Second, "node liveness lease")
	f.StringVar(&etcdListen, "etcd-listen", "http://127.0.0.1:2379", "client URL of the embedded etcd")
	f.IntVar(&batch, "batch", 1000, "instances written per etcd transaction (25 with --etcd-endpoints unless set)")
	return cmd
}

// serveAPI serves handler on ln until ctx ends, then shuts down gracefully.
func serveAPI(ctx context.Context, handler http.Handler, ln net.Listener) error {
	// The console is served beside the API it uses, from the same origin.
	mux := http.NewServeMux()
	mux.Handle("/v1/", handler)
	mux.Handle("/", console.Handler())
	srv := &http.Server{Handler: mux,
		ReadHeaderTimeout: 10 * time.Second, TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	// Cleartext HTTP/2 as well as HTTP/1.1: an agent's watch and its
	// reports can share one connection.
	srv.Protocols = &http.Protocols{}
	srv.Protocols.SetHTTP1(true)
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

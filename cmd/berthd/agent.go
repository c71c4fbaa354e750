package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/network"
	"github.com/berth-dev/berth/network/policy"
	"github.com/berth-dev/berth/pki"
	"github.com/spf13/cobra"
)

// defaultAgentPort is where an agent serves container operations to the
// control plane unless told otherwise.
const defaultAgentPort = 7071

func newAgentCmd() *cobra.Command {
	var join, token, tokenFile, dataDir, stateDir, nodeName, address, listen, netName string
	var pools, labels []string
	var keepCgroups bool
	cmd := &cobra.Command{
		Use:   "agent --join https://SERVER:PORT --token TOKEN",
		Short: "Run this host's node agent, joined to a control plane (berth server) over mutual TLS",
		Long: `Run this host's node agent, joined to a control plane (berth server --tls-listen).
The first start exchanges the join token (berth node join-token) for a client certificate signed
by the cluster's CA, kept under DATA-DIR/pki; later starts need no token. The certificate is
renewed two thirds into its life. Containers get addresses from the blocks of --pool this node
claims, routed across the fabric by the nodes' --address. Stopping the agent never stops
containers; starting it again adopts them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if join == "" {
				return errors.New("--join: the control plane's URL (https://SERVER:PORT) is required")
			}
			unet, err := parseUpNetwork(netName, pools)
			if err != nil {
				return err
			}
			lbls, err := parseLabels(labels)
			if err != nil {
				return err
			}
			cfg := agentConfig{join: join, token: token, tokenFile: tokenFile, dataDir: dataDir, node: nodeName, listen: listen, net: unet, labels: lbls, keepCgroups: keepCgroups,
				stateDir: stateDir}
			if address != "" {
				a, err := netip.ParseAddr(address)
				if err != nil {
					return fmt.Errorf("--address %q: %w", address, err)
				}
				cfg.address = a
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runAgent(ctx, log, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&join, "join", "", "URL of the control plane's TLS API (berth server --tls-listen); several servers comma-separated, tried in turn")
	f.StringVar(&token, "token", "", "join token (berth node join-token); needed only until the node has its certificate")
	f.StringVar(&tokenFile, "token-file", "", "read the join token from this file instead (keeps it out of ps)")
	f.StringVar(&dataDir, "data-dir", "/var/lib/berth/agent", "state directory (certificates, images, containers)")
	addStateDirFlag(f, &stateDir)
	f.StringVar(&nodeName, "node-name", agent.NodeName(), "this node's name")
	f.StringVar(&address, "address", "", "this host's address on the fabric, that other hosts route its containers' addresses to (default: the one it reaches the control plane from)")
	f.StringVar(&listen, "listen", "", fmt.Sprintf("address the control plane reaches this agent at (default: --address, port %d)", defaultAgentPort))
	f.StringVar(&netName, "network", defaultUpNetwork, "network containers are attached to, each with its own routable address (none: loopback only)")
	f.StringSliceVar(&pools, "pool", []string{defaultUpPool}, "the cluster's address pool (as given to berth server --pool)")
	addKeepCgroupsFlag(f, &keepCgroups)
	f.StringArrayVar(&labels, "label", nil, "node label KEY=VALUE for placement constraints and spreading (zone=a); repeatable")
	return cmd
}

func parseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want KEY=VALUE", kv)
		}
		out[k] = v
	}
	return out, nil
}

type agentConfig struct {
	join, token, tokenFile, dataDir, node, listen string
	address                                       netip.Addr
	net                                           upNetwork
	labels                                        map[string]string
	keepCgroups                                   bool
	stateDir                                      string
}

// runAgent joins (once), then runs the node until ctx ends.
func runAgent(ctx context.Context, log *slog.Logger, cfg agentConfig) error {
	if err := os.MkdirAll(cfg.dataDir, 0o711); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	servers, err := parseServers(cfg.join)
	if err != nil {
		return err
	}
	if !cfg.address.IsValid() {
		a, err := sourceAddress(servers[0].Host)
		if err != nil {
			return fmt.Errorf("--address: %w", err)
		}
		cfg.address = a
	}
	if cfg.listen == "" {
		cfg.listen = net.JoinHostPort(cfg.address.String(), fmt.Sprint(defaultAgentPort))
	}
	lhost, _, err := net.SplitHostPort(cfg.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", cfg.listen, err)
	}
	served := []netip.Addr{cfg.address}
	if a, err := netip.ParseAddr(lhost); err == nil && a != cfg.address && !a.IsUnspecified() {
		served = append(served, a)
	}
	var hosts []string
	for _, u := range servers {
		hosts = append(hosts, u.Host)
	}
	creds := &nodeCreds{dir: filepath.Join(cfg.dataDir, "pki"), node: cfg.node, base: servers[0].String(), hosts: hosts, addrs: served, log: log}
	if err := creds.load(); err != nil {
		// The token file is read only to join: once the node has its
		// certificate, whoever provisioned it may delete the file.
		if cfg.token == "" && cfg.tokenFile != "" {
			b, ferr := os.ReadFile(cfg.tokenFile)
			if ferr != nil {
				return fmt.Errorf("--token-file: %w", ferr)
			}
			cfg.token = strings.TrimSpace(string(b))
		}
		if cfg.token == "" {
			return fmt.Errorf("node %s has no certificate yet (%v): give the join token with --token or --token-file", cfg.node, err)
		}
		var jerr error
		for _, u := range servers {
			creds.base = u.String()
			if jerr = creds.join(ctx, cfg.token); jerr == nil {
				break
			}
			log.Warn("join", "server", u.String(), "err", jerr)
		}
		creds.base = servers[0].String()
		if jerr != nil {
			return jerr
		}
		log.Info("joined the cluster", "node", cfg.node, "server", cfg.join)
	}
	client := api.NewClient(creds.base, "", &http.Client{Transport: creds.transport()})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() { defer wg.Done(); creds.renewLoop(ctx, client) }()

	var fabric *fleetFabric
	return runNodeHost(ctx, log, nodeHost{
		dataDir: cfg.dataDir, node: cfg.node, client: client, keepCgroups: cfg.keepCgroups, stateDir: cfg.stateDir,
		reg: api.Registration{Spec: api.NodeSpec{Address: cfg.address}, Labels: cfg.labels},
		openNet: func(ctx context.Context) (agent.Networker, string, func() error, error) {
			if !cfg.net.enabled() {
				return nil, "none", func() error { return nil }, nil
			}
			fabric = &fleetFabric{cli: client, node: cfg.node, log: log}
			un, err := openNetwork(ctx, log, cfg.dataDir, cfg.node, cfg.net, nil, client, fabric.routes)
			if err != nil {
				return nil, "", nil, err
			}
			fabric.un = un
			wg.Add(1)
			go func() { defer wg.Done(); fabric.loop(ctx) }()
			return un, cfg.net.name, un.Close, nil
		},
		serveOps: func(ctx context.Context, h http.Handler) (string, <-chan error, error) {
			return serveNodeAPITLS(ctx, cfg.listen, creds, h)
		},
	})
}

// sourceAddress is the local address this host reaches hostport from.
func sourceAddress(hostport string) (netip.Addr, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, "443"
	}
	c, err := net.Dial("udp", net.JoinHostPort(host, port))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no route to %s: %w", host, err)
	}
	defer c.Close()
	a := c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	return a, nil
}

// serveNodeAPITLS serves the agent's container operations over TLS with
// the node's certificate, to the control plane only (a client certificate
// of the cluster's control plane is required).
func serveNodeAPITLS(ctx context.Context, listen string, creds *nodeCreds, h http.Handler) (string, <-chan error, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return "", nil, fmt.Errorf("agent listener: %w", err)
	}
	tc := &tls.Config{
		MinVersion:       tls.VersionTLS12,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        creds.caPool(),
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return creds.current(), nil },
		VerifyConnection: pki.RequireOrg(pki.OrgControl),
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, TLSConfig: tc}
	done := make(chan error, 1)
	go func() {
		<-ctx.Done()
		// Open exec and attach sessions end with the process serving them.
		_ = srv.Close()
	}()
	go func() {
		err := srv.ServeTLS(ln, "", "")
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	return "https://" + ln.Addr().String(), done, nil
}

// fleetFabric keeps the node's routes to the other nodes' blocks and its
// policy's view of their containers in step with the control plane.
type fleetFabric struct {
	cli  *api.Client
	node string
	log  *slog.Logger
	un   *upNetworker

	mu sync.Mutex
	// foreign routes the other nodes' blocks; guarded by mu.
	foreign map[netip.Prefix]netip.Addr
	remote  []policy.Endpoint
}

// loop follows the fabric by long polls: each asks for a fabric newer
// than the last, so a change elsewhere reaches this node's routes and
// policy as soon as the control plane hears of it.
func (f *fleetFabric) loop(ctx context.Context) {
	var since int64
	for ctx.Err() == nil {
		fab, err := f.cli.Fabric(ctx, f.node, since)
		if err == nil {
			since = fab.Revision
			err = f.apply(fab)
		}
		if err != nil && ctx.Err() == nil {
			f.log.Warn("follow the fabric", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (f *fleetFabric) apply(fab api.Fabric) error {
	foreign, remote, err := fabricView(fab, f.node)
	if err != nil {
		return err
	}
	f.mu.Lock()
	routesChanged := !maps.Equal(foreign, f.foreign)
	epsChanged := !slices.EqualFunc(remote, f.remote, sameEndpoint)
	f.foreign, f.remote = foreign, remote
	f.mu.Unlock()
	if routesChanged {
		if err := f.un.syncRoutes(); err != nil {
			return err
		}
	}
	if epsChanged {
		if err := f.un.SetRemoteEndpoints(remote); err != nil {
			return err
		}
	}
	return nil
}

// routes is the node's block route table: its own blocks (blackholed by
// SyncRoutes, being local) and the others' via their nodes.
func (f *fleetFabric) routes(own map[netip.Prefix]netip.Addr) map[netip.Prefix]netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := maps.Clone(own)
	for b, via := range f.foreign {
		if _, mine := t[b]; !mine {
			t[b] = via
		}
	}
	return t
}

// fabricView turns the fabric into the routes to other nodes' blocks and
// the other nodes' containers as policy endpoints. A block of a node with
// no address (yet) is left out rather than routed to a guess.
func fabricView(fab api.Fabric, self string) (map[netip.Prefix]netip.Addr, []policy.Endpoint, error) {
	addrs := map[string][]netip.Addr{}
	for _, n := range fab.Nodes {
		if n.Address.IsValid() {
			addrs[n.Name] = []netip.Addr{n.Address}
		}
	}
	blocks := map[netip.Prefix]string{}
	for _, b := range fab.Blocks {
		if b.Node != self && len(addrs[b.Node]) > 0 {
			blocks[b.Prefix] = b.Node
		}
	}
	table, err := network.BlockTable(blocks, addrs)
	if err != nil {
		return nil, nil, err
	}
	var eps []policy.Endpoint
	for _, e := range fab.Endpoints {
		if e.Node == self || e.Node == "" || !e.IP.IsValid() {
			continue
		}
		eps = append(eps, policy.Endpoint{ID: "node:" + e.Node + "/" + e.Tenant + "/" + e.Instance, Tenant: e.Tenant,
			Addrs: []netip.Addr{e.IP}, Labels: e.Labels})
	}
	slices.SortFunc(eps, func(a, b policy.Endpoint) int { return strings.Compare(a.ID, b.ID) })
	return table, eps, nil
}

func sameEndpoint(a, b policy.Endpoint) bool {
	return a.ID == b.ID && a.Tenant == b.Tenant && slices.Equal(a.Addrs, b.Addrs) && maps.Equal(a.Labels, b.Labels)
}

// nodeCreds are the node's key, certificate and the cluster's CA, kept in
// dir and renewed in place.
type nodeCreds struct {
	dir, node, base string
	// hosts are the servers' host:port, base's first.
	hosts []string
	addrs []netip.Addr
	log   *slog.Logger

	mu sync.Mutex
	// cert, ca and rt are guarded by mu.
	cert *tls.Certificate
	ca   []byte
	rt   *swapTransport
}

// swapTransport is a RoundTripper whose transport can be replaced.
type swapTransport struct {
	mu  sync.Mutex
	cur *http.Transport
}

func (s *swapTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	t := s.cur
	s.mu.Unlock()
	return t.RoundTrip(r)
}

func (s *swapTransport) swap(t *http.Transport) {
	s.mu.Lock()
	old := s.cur
	s.cur = t
	s.mu.Unlock()
	old.CloseIdleConnections()
}

func (c *nodeCreds) paths() (ca, cert, key string) {
	return filepath.Join(c.dir, "ca.pem"), filepath.Join(c.dir, "node.pem"), filepath.Join(c.dir, "node-key.pem")
}

// load reads the stored credentials; an error means the node must join.
func (c *nodeCreds) load() error {
	caPath, certPath, keyPath := c.paths()
	ca, err := os.ReadFile(caPath)
	if err != nil {
		return err
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}
	kp, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("%s: %w", certPath, err)
	}
	if id, ok := pki.IdentityOf(kp.Leaf); !ok || id.Name != c.node {
		return fmt.Errorf("%s is node %q's certificate, not %s's", certPath, kp.Leaf.Subject.CommonName, c.node)
	}
	if time.Now().After(kp.Leaf.NotAfter) {
		return fmt.Errorf("%s expired at %s", certPath, kp.Leaf.NotAfter.Format(time.RFC3339))
	}
	c.mu.Lock()
	c.cert, c.ca = &kp, ca
	c.mu.Unlock()
	return nil
}

func (c *nodeCreds) current() *tls.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cert
}

func (c *nodeCreds) caPool() *x509.CertPool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return poolOf(c.ca)
}

// transport speaks mTLS to the control plane, trusting only the cluster
// CA and showing the node's current certificate. A connection keeps the
// certificate it was opened with, so each renewal starts a new transport:
// requests from then on show the new certificate, streams already open
// (the instance watch) finish on the old one.
func (c *nodeCreds) transport() http.RoundTripper {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rt == nil {
		c.rt = &swapTransport{cur: c.newTransport()}
	}
	return &failover{next: c.rt, hosts: c.hosts}
}

func (c *nodeCreds) newTransport() *http.Transport {
	return &http.Transport{
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: poolOf(c.ca),
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c.current(), nil }},
		// A server cut off must not hold a request for long: the
		// failover moves on to the next.
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
}

// join fetches the CA, checks it against the token's fingerprint, and
// exchanges a certificate request for the node's certificate.
func (c *nodeCreds) join(ctx context.Context, token string) error {
	fp, secret, err := api.ParseJoinToken(token)
	if err != nil {
		return err
	}
	// The first contact cannot verify the server: the CA it sends is
	// trusted only if it is the one the token names.
	insecure := api.NewClient(c.base, "", &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}})
	caPEM, err := insecure.CA(ctx)
	if err != nil {
		return fmt.Errorf("join %s: read the cluster CA: %w", c.base, err)
	}
	caCert, err := pki.ParseCert(caPEM)
	if err != nil {
		return fmt.Errorf("join %s: the server's CA: %w", c.base, err)
	}
	if got := pki.Fingerprint(caCert); got != fp {
		return fmt.Errorf("join %s: the server's CA has fingerprint %s, the join token pins %s: not the cluster the token is for (or someone in between)", c.base, got, fp)
	}
	keyPEM, csr, err := pki.NewKey(rand.Reader, c.node)
	if err != nil {
		return err
	}
	cli := api.NewClient(c.base, secret, &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: poolOf(caPEM)}}})
	var resp api.JoinResponse
	// A node of this name whose agent just stopped is alive until its
	// lease runs out: wait for that rather than fail a re-provision.
	for attempt := 0; ; attempt++ {
		resp, err = cli.Join(ctx, api.JoinRequest{Node: c.node, CSR: string(csr), Addresses: c.addrs})
		if err == nil || !api.IsConflict(err) || attempt >= 20 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("join %s as node %s: %w", c.base, c.node, err)
	}
	return c.store(resp, keyPEM)
}

// store writes new credentials (each file replaced atomically, the key
// before the certificate that needs it) and makes them current.
func (c *nodeCreds) store(resp api.JoinResponse, keyPEM []byte) error {
	kp, err := pki.KeyPair([]byte(resp.Certificate), keyPEM)
	if err != nil {
		return fmt.Errorf("the control plane's certificate: %w", err)
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	caPath, certPath, keyPath := c.paths()
	for _, f := range []struct {
		path string
		b    []byte
	}{{caPath, []byte(resp.CA)}, {keyPath, keyPEM}, {certPath, []byte(resp.Certificate)}} {
		if err := writeFileAtomic(f.path, f.b, 0o600); err != nil {
			return fmt.Errorf("credentials: %w", err)
		}
	}
	c.mu.Lock()
	c.cert, c.ca = &kp, []byte(resp.CA)
	var fresh *http.Transport
	if c.rt != nil {
		fresh = c.newTransport()
	}
	c.mu.Unlock()
	if fresh != nil {
		c.rt.swap(fresh)
	}
	return nil
}

// renewLoop renews the certificate two thirds into its life; a failure is
// retried every few seconds until it lapses.
func (c *nodeCreds) renewLoop(ctx context.Context, cli *api.Client) {
	for {
		wait := time.Until(pki.RenewAt(c.current().Leaf))
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, 0)):
		}
		if err := c.renew(ctx, cli); err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("renew the node certificate", "err", err, "expires", c.current().Leaf.NotAfter)
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
			continue
		}
		c.log.Info("renewed the node certificate", "expires", c.current().Leaf.NotAfter)
	}
}

func (c *nodeCreds) renew(ctx context.Context, cli *api.Client) error {
	keyPEM, csr, err := pki.NewKey(rand.Reader, c.node)
	if err != nil {
		return err
	}
	resp, err := cli.RenewCertificate(ctx, api.JoinRequest{Node: c.node, CSR: string(csr), Addresses: c.addrs})
	if err != nil {
		return err
	}
	return c.store(resp, keyPEM)
}

func poolOf(caPEM []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(caPEM)
	return p
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

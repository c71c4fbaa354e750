package control

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver"
	"go.etcd.io/etcd/server/v3/etcdserver/api/membership"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy/adapter"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EtcdConfig tunes the embedded etcd.
type EtcdConfig struct {
	Dir string
	// Name of this member; empty is etcd's own default ("default").
	Name string
	// ClientURL to listen on and advertise; empty picks a free loopback port.
	ClientURL string
	// PeerURL to listen on and advertise to the other members; empty picks
	// a free loopback port when running alone, and takes this member's
	// entry of InitialCluster in a cluster.
	PeerURL string
	// InitialCluster lists every member of a static cluster as
	// "name=peerURL,..."; empty runs a single-node etcd of this member alone.
	InitialCluster string
	// Fast shortens heartbeats and elections and skips fsync: for tests
	// and benchmarks only.
	Fast bool
	// Quiet discards etcd's own logs.
	Quiet bool
	// NoFsync skips fsync: a crash may lose the last writes. For
	// benchmarks on a disk shared with other work, whose fsync latency
	// would measure the neighbours rather than the control plane.
	NoFsync bool
}

// EtcdMember is one entry of an initial cluster.
type EtcdMember struct {
	Name    string
	PeerURL string
}

// ParseInitialCluster parses "name=peerURL,..." into its members, in order.
func ParseInitialCluster(s string) ([]EtcdMember, error) {
	var ms []EtcdMember
	names, peers := map[string]bool{}, map[string]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		name, u, ok := strings.Cut(part, "=")
		if !ok || name == "" || u == "" {
			return nil, fmt.Errorf("initial cluster entry %q: want name=URL", part)
		}
		pu, err := memberURL(u)
		if err != nil {
			return nil, fmt.Errorf("initial cluster member %s: %w", name, err)
		}
		if names[name] {
			return nil, fmt.Errorf("initial cluster lists member %s twice", name)
		}
		if other, dup := peers[pu]; dup {
			return nil, fmt.Errorf("initial cluster members %s and %s share the peer URL %s", other, name, pu)
		}
		names[name], peers[pu] = true, name
		ms = append(ms, EtcdMember{Name: name, PeerURL: pu})
	}
	return ms, nil
}

// memberURL checks that s is an http(s) URL of a host and port, which is
// all etcd can listen on, and returns it in canonical form.
func memberURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("url %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("url %q: scheme must be http or https", s)
	}
	if u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("url %q: want %s://HOST:PORT", s, u.Scheme)
	}
	return u.Scheme + "://" + strings.ToLower(u.Host), nil
}

// cluster checks a clustered configuration and returns its members and
// this member's peer URL; nil members means a single node.
func (c EtcdConfig) cluster() ([]EtcdMember, string, error) {
	if c.InitialCluster == "" {
		if c.Name != "" || c.PeerURL != "" {
			return nil, "", fmt.Errorf("etcd member name and peer URL need an initial cluster")
		}
		return nil, "", nil
	}
	if c.Name == "" {
		return nil, "", fmt.Errorf("etcd cluster member needs a name")
	}
	ms, err := ParseInitialCluster(c.InitialCluster)
	if err != nil {
		return nil, "", err
	}
	var own string
	for _, m := range ms {
		if m.Name == c.Name {
			own = m.PeerURL
		}
	}
	if own == "" {
		return nil, "", fmt.Errorf("etcd member %s is not in the initial cluster %q", c.Name, c.InitialCluster)
	}
	if c.PeerURL != "" {
		pu, err := memberURL(c.PeerURL)
		if err != nil {
			return nil, "", fmt.Errorf("etcd peer URL: %w", err)
		}
		if pu != own {
			return nil, "", fmt.Errorf("etcd member %s listens for peers on %s but the initial cluster gives it %s", c.Name, pu, own)
		}
	}
	if c.ClientURL == "" {
		return nil, "", fmt.Errorf("etcd cluster member %s needs a client URL the other servers can reach", c.Name)
	}
	cu, err := memberURL(c.ClientURL)
	if err != nil {
		return nil, "", fmt.Errorf("etcd client URL: %w", err)
	}
	for _, m := range ms {
		if m.PeerURL == cu {
			return nil, "", fmt.Errorf("etcd client URL %s is also the peer URL of member %s", cu, m.Name)
		}
	}
	return ms, own, nil
}

// Check reports what is wrong with the configuration, without touching
// the disk or the network.
func (c EtcdConfig) Check() error {
	_, _, err := c.cluster()
	return err
}

// clusterState is "existing" when dir already holds a member's write-ahead
// log, so that a restarted member rejoins with its own data rather than
// bootstrapping a cluster that exists.
func clusterState(dir string) string {
	if wal.Exist(filepath.Join(dir, "member", "wal")) {
		return embed.ClusterStateFlagExisting
	}
	return embed.ClusterStateFlagNew
}

// grpcWindow is the flow-control window of each gRPC stream to and from
// etcd (see StartEtcd).
const grpcWindow = 8 << 20

// ClientWindows are the dial options that give an etcd client's streams
// the windows StartEtcd gives its server's: big transactions and watch
// responses flow without waiting on window updates.
func ClientWindows() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithInitialWindowSize(grpcWindow), grpc.WithInitialConnWindowSize(4 * grpcWindow)}
}

// StartEtcd runs an embedded etcd in dir, alone or as one member of a
// static cluster, and returns it with a client. A member's client reaches
// every member that has published its client URL (its own first), so that
// one member's death does not stop it.
func StartEtcd(cfg EtcdConfig) (*embed.Etcd, *clientv3.Client, error) {
	members, ownPeer, err := cfg.cluster()
	if err != nil {
		return nil, nil, err
	}
	ec := embed.NewConfig()
	ec.Dir = cfg.Dir
	ec.LogLevel = "error"
	if cfg.Quiet {
		ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	}
	ec.MaxTxnOps = 16384
	ec.MaxRequestBytes = 32 << 20
	ec.QuotaBackendBytes = 8 << 30
	ec.AutoCompactionMode = "revision"
	ec.AutoCompactionRetention = "100000"
	if cfg.Fast {
		ec.TickMs, ec.ElectionMs, ec.UnsafeNoFsync = 10, 50, true
	}
	if cfg.NoFsync {
		ec.UnsafeNoFsync = true
	}
	// Placement transactions run to megabytes. At gRPC's default 64 KiB
	// flow-control window, etcd read each in dozens of window updates, a
	// round trip each through a busy scheduler: the leader's writes, not
	// its decisions, set the placement rate. Windows of megabytes let a
	// transaction arrive at once. (Setting them turns off gRPC's own
	// window estimate, which grew too slowly under that load.)
	ec.GRPCAdditionalServerOptions = []grpc.ServerOption{grpc.InitialWindowSize(grpcWindow), grpc.InitialConnWindowSize(4 * grpcWindow)}
	clientURL := cfg.ClientURL
	if clientURL == "" {
		p, err := freePort()
		if err != nil {
			return nil, nil, err
		}
		clientURL = fmt.Sprintf("http://127.0.0.1:%d", p)
	}
	peerURL := ownPeer
	if members == nil {
		p, err := freePort()
		if err != nil {
			return nil, nil, err
		}
		peerURL = fmt.Sprintf("http://127.0.0.1:%d", p)
	}
	cu, err := url.Parse(clientURL)
	if err != nil {
		return nil, nil, fmt.Errorf("etcd client url %q: %w", clientURL, err)
	}
	pu, _ := url.Parse(peerURL)
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ready := 30 * time.Second
	if members == nil {
		ec.InitialCluster = ec.Name + "=" + pu.String()
	} else {
		ec.Name = cfg.Name
		var entries []string
		for _, m := range members {
			entries = append(entries, m.Name+"="+m.PeerURL)
		}
		ec.InitialCluster = strings.Join(entries, ",")
		ec.InitialClusterToken = "berth"
		ec.ClusterState = clusterState(cfg.Dir)
		// A member is ready only once a quorum is up: give the other
		// servers time to start.
		ready = 2 * time.Minute
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(ready):
		e.Close()
		if members != nil {
			return nil, nil, fmt.Errorf("embedded etcd member %s in %s not ready after %s: is a quorum of %s up?", cfg.Name, cfg.Dir, ready, cfg.InitialCluster)
		}
		return nil, nil, fmt.Errorf("embedded etcd in %s not ready after %s", cfg.Dir, ready)
	}
	if members == nil {
		// Alone, every request is this process's own: see localClient.
		return e, localClient(e.Server), nil
	}
	// Its own member first, another only while that cannot be reached
	// (pick_first, not clientv3's round robin): requests stay in the
	// process, and a peer's death fails none of them.
	ccfg := clientv3.Config{Endpoints: memberEndpoints(clientURL, e.Server.Cluster().Members()), DialTimeout: 5 * time.Second,
		MaxCallSendMsgSize: 64 << 20, MaxCallRecvMsgSize: 1 << 30,
		DialOptions: append([]grpc.DialOption{grpc.WithDisableServiceConfig(),
			grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"pick_first": {}}]}`)}, ClientWindows()...)}
	if cfg.Quiet {
		ccfg.Logger = zap.NewNop()
	}
	c, err := clientv3.New(ccfg)
	if err != nil {
		e.Close()
		return nil, nil, fmt.Errorf("connect to embedded etcd: %w", err)
	}
	go followMembers(e, c, clientURL)
	return e, c, nil
}

// localLeases is the key of a local client's lease service in its
// context, for the lease line.
type localLeases struct{}

// localClient is a client of the member in this process that calls its
// services directly. Over the loopback, each transaction, range and watch
// event went through gRPC's HTTP/2 framing and the kernel's TCP twice, a
// sizeable share of a short run's time (berth run --rm) and of the CPU.
// The member's other clients (etcdctl, other servers) still come in over
// its client URL.
func localClient(s *etcdserver.EtcdServer) *clientv3.Client {
	leases := adapter.LeaseServerToLeaseClient(v3rpc.NewQuotaLeaseServer(s))
	c := clientv3.NewCtxClient(context.WithValue(context.Background(), localLeases{}, leases), clientv3.WithZapLogger(s.Logger()))
	c.KV = clientv3.NewKVFromKVClient(adapter.KvServerToKvClient(v3rpc.NewQuotaKVServer(s)), c)
	c.Lease = clientv3.NewLeaseFromLeaseClient(leases, c, time.Second)
	c.Watcher = localWatcher{clientv3.NewWatchFromWatchClient(adapter.WatchServerToWatchClient(v3rpc.NewWatchServer(s)), c)}
	c.Cluster = clientv3.NewClusterFromClusterClient(adapter.ClusterServerToClusterClient(v3rpc.NewClusterServer(s)), c)
	c.Maintenance = clientv3.NewMaintenanceFromMaintenanceClient(adapter.MaintenanceServerToMaintenanceClient(v3rpc.NewMaintenanceServer(s, nil)), c)
	c.Auth = clientv3.NewAuthFromAuthClient(adapter.AuthServerToAuthClient(v3rpc.NewAuthServer(s)), c)
	return c
}

// localWatcher gives the member's watch server the caller's context under
// a fixed name: the server's goroutines may print it, and printing a
// context reads its values, which the caller may still be writing.
type localWatcher struct{ clientv3.Watcher }

func (w localWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	return w.Watcher.Watch(named{ctx}, key, opts...)
}

type named struct{ context.Context }

func (named) String() string { return "local watch" }

// followMembers adds to the client's endpoints the members that publish
// their client URLs after this one started (at first start, a member is
// ready once a quorum is, before the rest of the cluster), until the
// client or the member stops.
func followMembers(e *embed.Etcd, c *clientv3.Client, own string) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.Ctx().Done():
			return
		case <-e.Server.StopNotify():
			return
		case <-t.C:
		}
		if eps := memberEndpoints(own, e.Server.Cluster().Members()); !slices.Equal(eps, c.Endpoints()) {
			c.SetEndpoints(eps...)
		}
	}
}

// memberEndpoints lists own first, then the other members' client URLs.
func memberEndpoints(own string, ms []*membership.Member) []string {
	eps := []string{own}
	seen := map[string]bool{own: true}
	for _, m := range ms {
		for _, u := range m.ClientURLs {
			if !seen[u] {
				seen[u] = true
				eps = append(eps, u)
			}
		}
	}
	return eps
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Bootstrap makes sure the system tenant and an admin token with the given
// secret ("system.NAME.RANDOM") exist.
func Bootstrap(ctx context.Context, st *Store, adminSecret string, now time.Time) error {
	t := &api.Tenant{Meta: api.Meta{Name: api.SystemTenant, Created: now}, Description: "the cluster's own tokens"}
	if err := st.Create(ctx, t); err != nil && !api.IsConflict(err) {
		return fmt.Errorf("bootstrap system tenant: %w", err)
	}
	// The tenant a CLI user lands in without asking for one, as every
	// Docker user expects `run` to work on a fresh install.
	d := &api.Tenant{Meta: api.Meta{Name: api.DefaultTenant, Created: now}, Description: "the tenant of commands that name none"}
	if err := st.Create(ctx, d); err != nil && !api.IsConflict(err) {
		return fmt.Errorf("bootstrap default tenant: %w", err)
	}
	parts := strings.SplitN(adminSecret, ".", 3)
	if len(parts) != 3 || parts[0] != api.SystemTenant || api.ValidName(parts[1]) != nil {
		return fmt.Errorf("admin token must look like system.NAME.SECRET")
	}
	tok := &api.Token{Meta: api.Meta{Name: parts[1], Tenant: api.SystemTenant, Created: now}, Role: api.RoleAdmin, SecretHash: hashSecret(adminSecret)}
	if err := st.Create(ctx, tok); err != nil && !api.IsConflict(err) {
		return fmt.Errorf("bootstrap admin token: %w", err)
	}
	return nil
}

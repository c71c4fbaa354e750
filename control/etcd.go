package control

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// EtcdConfig tunes the embedded etcd.
type EtcdConfig struct {
	Dir string
	// ClientURL to listen on; empty picks a free loopback port.
	ClientURL string
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

// StartEtcd runs a single-node etcd in dir and returns it with a client.
func StartEtcd(cfg EtcdConfig) (*embed.Etcd, *clientv3.Client, error) {
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
	clientURL := cfg.ClientURL
	if clientURL == "" {
		p, err := freePort()
		if err != nil {
			return nil, nil, err
		}
		clientURL = fmt.Sprintf("http://127.0.0.1:%d", p)
	}
	peer, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	cu, err := url.Parse(clientURL)
	if err != nil {
		return nil, nil, fmt.Errorf("etcd client url %q: %w", clientURL, err)
	}
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peer))
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = ec.Name + "=" + pu.String()
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, nil, fmt.Errorf("embedded etcd in %s not ready after 30s", cfg.Dir)
	}
	ccfg := clientv3.Config{Endpoints: []string{clientURL}, DialTimeout: 5 * time.Second, MaxCallSendMsgSize: 64 << 20, MaxCallRecvMsgSize: 1 << 30}
	if cfg.Quiet {
		ccfg.Logger = zap.NewNop()
	}
	c, err := clientv3.New(ccfg)
	if err != nil {
		e.Close()
		return nil, nil, fmt.Errorf("connect to embedded etcd: %w", err)
	}
	return e, c, nil
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

package main

import (
	"fmt"
	"net"
	"net/url"

	"github.com/berth-dev/berth/control"
)

// etcdFlags are the flags that shape the embedded etcd of `berth server`.
type etcdFlags struct {
	// listen is the client URL (--etcd-listen).
	listen string
	// name, peerListen and initialCluster make the embedded etcd one
	// member of a static cluster (--etcd-name, --etcd-peer-listen,
	// --etcd-initial-cluster).
	name, peerListen, initialCluster string
}

// clustered reports whether any member flag was given.
func (f etcdFlags) clustered() bool {
	return f.name != "" || f.peerListen != "" || f.initialCluster != ""
}

// config turns the flags into the embedded etcd's configuration, or says
// which flag is wrong. external is whether --etcd-endpoints was given.
func (f etcdFlags) config(dir string, external bool) (control.EtcdConfig, error) {
	if external {
		if f.clustered() {
			return control.EtcdConfig{}, fmt.Errorf("--etcd-name, --etcd-peer-listen and --etcd-initial-cluster shape the embedded etcd: they cannot go with --etcd-endpoints")
		}
		return control.EtcdConfig{}, nil
	}
	cfg := control.EtcdConfig{Dir: dir, ClientURL: f.listen, Quiet: true}
	if !f.clustered() {
		return cfg, nil
	}
	if f.initialCluster == "" {
		return cfg, fmt.Errorf("--etcd-name and --etcd-peer-listen need --etcd-initial-cluster (name=URL,... of every member)")
	}
	if f.name == "" {
		return cfg, fmt.Errorf("--etcd-initial-cluster needs --etcd-name: which of its members this server is")
	}
	cfg.Name, cfg.PeerURL, cfg.InitialCluster = f.name, f.peerListen, f.initialCluster
	if err := cfg.Check(); err != nil {
		return cfg, fmt.Errorf("etcd cluster flags: %w", err)
	}
	ms, _ := control.ParseInitialCluster(f.initialCluster)
	for _, m := range ms {
		if m.Name == f.name && !loopback(m.PeerURL) && loopback(f.listen) {
			return cfg, fmt.Errorf("--etcd-listen %s is a loopback address but the other members reach this one at %s: listen for clients on an address the other servers can reach", f.listen, m.PeerURL)
		}
	}
	return cfg, nil
}

// loopback reports whether the URL's host is a loopback address or name.
func loopback(s string) bool {
	u, err := url.Parse(s)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

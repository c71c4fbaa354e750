package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// poll calls f until it succeeds or the deadline passes, failing with f's
// last error; stop, when it returns an error, ends the wait at once.
func poll(t *testing.T, what string, within time.Duration, stop func() error, f func() error) {
	t.Helper()
	end := time.Now().Add(within)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if stop != nil {
			if serr := stop(); serr != nil {
				t.Fatalf("%s: %v", what, serr)
			}
		}
		if time.Now().After(end) {
			t.Fatalf("%s: still failing after %s: %v", what, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const threeMembers = "s0=http://10.0.0.1:2380,s1=http://10.0.0.2:2380,s2=http://10.0.0.3:2380"

func TestEtcdFlagsMakeAMemberOrSayWhichFlagIsWrong(t *testing.T) {
	for _, tc := range []struct {
		name     string
		flags    etcdFlags
		external bool
		want     control.EtcdConfig
		err      string
	}{
		{name: "single node as before", flags: etcdFlags{listen: "http://127.0.0.1:2379"},
			want: control.EtcdConfig{Dir: "d", ClientURL: "http://127.0.0.1:2379", Quiet: true}},
		{name: "external etcd", flags: etcdFlags{listen: "http://127.0.0.1:2379"}, external: true},
		{name: "member", flags: etcdFlags{listen: "http://10.0.0.2:2379", name: "s1", peerListen: "http://10.0.0.2:2380", initialCluster: threeMembers},
			want: control.EtcdConfig{Dir: "d", ClientURL: "http://10.0.0.2:2379", Name: "s1", PeerURL: "http://10.0.0.2:2380", InitialCluster: threeMembers, Quiet: true}},
		{name: "peer URL from the initial cluster", flags: etcdFlags{listen: "http://10.0.0.2:2379", name: "s1", initialCluster: threeMembers},
			want: control.EtcdConfig{Dir: "d", ClientURL: "http://10.0.0.2:2379", Name: "s1", InitialCluster: threeMembers, Quiet: true}},
		{name: "members on one machine over loopback", flags: etcdFlags{listen: "http://127.0.0.1:3379", name: "a", initialCluster: "a=http://127.0.0.1:3380,b=http://127.0.0.1:4380"},
			want: control.EtcdConfig{Dir: "d", ClientURL: "http://127.0.0.1:3379", Name: "a", InitialCluster: "a=http://127.0.0.1:3380,b=http://127.0.0.1:4380", Quiet: true}},
		{name: "member flags with an external etcd", flags: etcdFlags{name: "s1", initialCluster: threeMembers}, external: true,
			err: "cannot go with --etcd-endpoints"},
		{name: "name without a cluster", flags: etcdFlags{listen: "http://10.0.0.2:2379", name: "s1"},
			err: "need --etcd-initial-cluster"},
		{name: "cluster without a name", flags: etcdFlags{listen: "http://10.0.0.2:2379", initialCluster: threeMembers},
			err: "needs --etcd-name"},
		{name: "name not in the cluster", flags: etcdFlags{listen: "http://10.0.0.4:2379", name: "s3", initialCluster: threeMembers},
			err: "etcd member s3 is not in the initial cluster"},
		{name: "peer URL differs from the cluster's", flags: etcdFlags{listen: "http://10.0.0.2:2379", name: "s1", peerListen: "http://10.0.0.2:2390", initialCluster: threeMembers},
			err: "listens for peers on http://10.0.0.2:2390 but the initial cluster gives it http://10.0.0.2:2380"},
		{name: "loopback clients of a networked member", flags: etcdFlags{listen: "http://127.0.0.1:2379", name: "s1", initialCluster: threeMembers},
			err: "--etcd-listen http://127.0.0.1:2379 is a loopback address"},
		{name: "entry without a URL", flags: etcdFlags{listen: "http://10.0.0.1:2379", name: "s0", initialCluster: "s0=http://10.0.0.1:2380,s1"},
			err: `initial cluster entry "s1": want name=URL`},
		{name: "member twice", flags: etcdFlags{listen: "http://10.0.0.1:2379", name: "s0", initialCluster: "s0=http://10.0.0.1:2380,s0=http://10.0.0.2:2380"},
			err: "lists member s0 twice"},
		{name: "shared peer URL", flags: etcdFlags{listen: "http://10.0.0.1:2379", name: "s0", initialCluster: "s0=http://10.0.0.1:2380,s1=http://10.0.0.1:2380"},
			err: "members s0 and s1 share the peer URL"},
		{name: "peer URL without a port", flags: etcdFlags{listen: "http://10.0.0.1:2379", name: "s0", initialCluster: "s0=http://10.0.0.1"},
			err: "want http://HOST:PORT"},
		{name: "peer URL of another scheme", flags: etcdFlags{listen: "http://10.0.0.1:2379", name: "s0", initialCluster: "s0=unix:///run/etcd"},
			err: "scheme must be http or https"},
		{name: "client URL that is a peer URL", flags: etcdFlags{listen: "http://10.0.0.2:2380", name: "s0", initialCluster: threeMembers},
			err: "etcd client URL http://10.0.0.2:2380 is also the peer URL of member s1"},
		{name: "client URL with a path", flags: etcdFlags{listen: "http://10.0.0.1:2379/etcd", name: "s0", initialCluster: threeMembers},
			err: "etcd client URL: url \"http://10.0.0.1:2379/etcd\": want http://HOST:PORT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.flags.config("d", tc.external)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseInitialClusterKeepsTheOrderAndCanonicalURLs(t *testing.T) {
	got, err := control.ParseInitialCluster("b=http://HOST-B:2380/, a=https://10.0.0.1:2380")
	if err != nil {
		t.Fatal(err)
	}
	want := []control.EtcdMember{{Name: "b", PeerURL: "http://host-b:2380"}, {Name: "a", PeerURL: "https://10.0.0.1:2380"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// A bad member configuration is refused before etcd writes anything.
func TestServerWithABadMemberConfigurationWritesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "server")
	out, err := berth(t, nil, "server", "--data-dir", dir, "--listen", "127.0.0.1:0",
		"--etcd-name", "s3", "--etcd-listen", "http://10.0.0.4:2379", "--etcd-initial-cluster", threeMembers)
	if err == nil || !strings.Contains(err.Error(), "etcd member s3 is not in the initial cluster") {
		t.Fatalf("got %v (%s), want the member refused", err, out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("data dir left behind: %v", err)
	}
}

func loopbackURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "http://" + l.Addr().String()
}

// Three embedded members in one process over loopback: each client talks
// to every member, outlives its own member's death, and a member restarted
// on its data rejoins with what was written while it was down.
func TestEtcdMembersFormAClusterThatOutlivesAMember(t *testing.T) {
	var cfgs []control.EtcdConfig
	var initial []string
	for i := range 3 {
		name := fmt.Sprintf("m%d", i)
		peer := loopbackURL(t)
		initial = append(initial, name+"="+peer)
		cfgs = append(cfgs, control.EtcdConfig{Dir: filepath.Join(t.TempDir(), name), Name: name, PeerURL: peer,
			ClientURL: loopbackURL(t), Fast: true, Quiet: true})
	}
	type member struct {
		e *embed.Etcd
		c *clientv3.Client
	}
	ms := make([]member, 3)
	start := func(i int) {
		t.Helper()
		cfg := cfgs[i]
		cfg.InitialCluster = strings.Join(initial, ",")
		e, c, err := control.StartEtcd(cfg)
		if err != nil {
			t.Errorf("member %d: %v", i, err)
			return
		}
		ms[i] = member{e, c}
	}
	var wg sync.WaitGroup
	for i := range ms {
		wg.Go(func() { start(i) })
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, m := range ms {
			if m.e != nil {
				m.c.Close()
				m.e.Close()
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := ms[0].c.Put(ctx, "k", "written through m0"); err != nil {
		t.Fatal(err)
	}
	got, err := ms[2].c.Get(ctx, "k")
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("read through m2: %v %v", err, got)
	}
	// Every client comes to know every member, its own first.
	for i, m := range ms {
		poll(t, fmt.Sprintf("endpoints of m%d", i), 10*time.Second, nil, func() error {
			eps := m.c.Endpoints()
			if len(eps) != 3 || eps[0] != cfgs[i].ClientURL {
				return fmt.Errorf("endpoints %v, want 3 with %s first", eps, cfgs[i].ClientURL)
			}
			return nil
		})
	}

	// m0's own member dies; its client carries on through the others.
	ms[0].e.Close()
	ms[0].e = nil
	defer ms[0].c.Close()
	poll(t, "write through m0's client after m0 died", 20*time.Second, nil, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := ms[0].c.Put(ctx, "after", "m0 died")
		return err
	})

	// m0 restarts on its data and holds what was written without it.
	start(0)
	if t.Failed() {
		t.FailNow()
	}
	one, err := clientv3.New(clientv3.Config{Endpoints: []string{cfgs[0].ClientURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	got, err = one.Get(ctx, "after")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "m0 died" {
		t.Fatalf("read through the restarted m0 alone: %v %v", err, got)
	}
	ml, err := one.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("members after the restart: %v %v", err, ml)
	}
}

package control

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// TestKeeperRenewsWhileBeatsComeAndStopsAfter proves against etcd that a
// lease outlives its TTL while heartbeats come, expires once they stop, and
// that a lease etcd no longer holds is reported gone.
func TestKeeperRenewsWhileBeatsComeAndStopsAfter(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	k := newKeeper(ctx, &leaseLine{c: etcdClient}, time.Now)
	g, err := etcdClient.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = etcdClient.Revoke(context.Background(), g.ID) })
	ttl := func() int64 {
		t.Helper()
		r, err := etcdClient.TimeToLive(ctx, g.ID)
		if err != nil {
			t.Fatal(err)
		}
		return r.TTL
	}
	// Three TTLs of heartbeats, each granting half a second of renewals.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if err := k.beat(ctx, g.ID, 500*time.Millisecond); err != nil {
			t.Fatalf("beat: %v", err)
		}
	}
	if got := ttl(); got < 0 {
		t.Fatalf("lease expired while its node beat (TTL %d)", got)
	}
	// Silence: the keeper stops at the last deadline, etcd a TTL later.
	deadline := time.Now().Add(5 * time.Second)
	for ttl() >= 0 {
		if time.Now().After(deadline) {
			t.Fatal("lease still alive 5s after the last heartbeat")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := k.beat(ctx, g.ID, time.Second); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("beat of an expired lease: %v, want lease not found", err)
	}
}

// TestKeeperReportsARevokedLeaseGone: a lease revoked while kept is
// dropped on etcd's word, and the next heartbeat learns it is gone.
func TestKeeperReportsARevokedLeaseGone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	k := newKeeper(ctx, &leaseLine{c: etcdClient}, time.Now)
	g, err := etcdClient.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.beat(ctx, g.ID, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := etcdClient.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := k.beat(ctx, g.ID, time.Minute)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return
		}
		if err != nil {
			t.Fatalf("beat: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("revoked lease still reported alive after 5s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

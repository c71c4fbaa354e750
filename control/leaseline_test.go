package control

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

func TestLeasesRideALineOfTheirOwn(t *testing.T) {
	l := &leaseLine{c: etcdClient}
	defer l.Close()
	_, lc, conn := l.lease()
	if conn == nil || conn == etcdClient.ActiveConnection() {
		t.Fatalf("lease connection %p, the client's own %p: want one of its own", conn, etcdClient.ActiveConnection())
	}
	// A session on the line's client holds a lease and reaches the store.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := concurrency.NewSession(lc, concurrency.WithTTL(3), concurrency.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Put(ctx, "/test-leaseline/k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	// A failure reported on it dials again; one reported on a connection
	// already replaced changes nothing.
	l.failed(conn)
	_, _, again := l.lease()
	if again == nil || again == conn {
		t.Fatalf("after a failure: %p, was %p", again, conn)
	}
	l.failed(conn)
	if _, _, still := l.lease(); still != again {
		t.Fatal("a stale failure replaced the live connection")
	}
	if _, err := etcdClient.Delete(ctx, "/test-leaseline/k"); err != nil {
		t.Fatal(err)
	}
}

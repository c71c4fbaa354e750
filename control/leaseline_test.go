package control

import (
	"context"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

func TestLeasesRideALineOfTheirOwn(t *testing.T) {
	remote, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	l := &leaseLine{c: remote}
	defer l.Close()
	_, lc, conn := l.lease()
	if conn == nil || conn == remote.ActiveConnection() {
		t.Fatalf("lease connection %p, the client's own %p: want one of its own", conn, remote.ActiveConnection())
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
	if _, err := remote.Delete(ctx, "/test-leaseline/k"); err != nil {
		t.Fatal(err)
	}
}

// A lone embedded member's client calls its services in process, leases
// too: its line is the member's lease service, with no connection to fail.
func TestLocalClientLeases(t *testing.T) {
	if len(etcdClient.Endpoints()) != 0 {
		t.Fatalf("the embedded member's client dials %v, want calls in process", etcdClient.Endpoints())
	}
	l := &leaseLine{c: etcdClient}
	defer l.Close()
	remote, lc, conn := l.lease()
	if conn != nil || lc != etcdClient {
		t.Fatalf("local line: connection %p, client %p (want none, the client's own %p)", conn, lc, etcdClient)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := concurrency.NewSession(lc, concurrency.WithTTL(3), concurrency.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	// The keeper's way: a renewal on a stream of the line's service.
	stream, err := remote.LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(sess.Lease())}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.TTL <= 0 || resp.ID != int64(sess.Lease()) {
		t.Fatalf("renewal of %x answered %+v", sess.Lease(), resp)
	}
	// A watch sees a put, through the member's watch server.
	w := etcdClient.Watch(ctx, "/test-local/", clientv3.WithPrefix())
	if _, err := etcdClient.Put(ctx, "/test-local/k", "v", clientv3.WithLease(sess.Lease())); err != nil {
		t.Fatal(err)
	}
	select {
	case wr := <-w:
		if len(wr.Events) != 1 || string(wr.Events[0].Kv.Key) != "/test-local/k" {
			t.Fatalf("watch answered %+v", wr)
		}
	case <-ctx.Done():
		t.Fatal("no watch event for a put")
	}
}

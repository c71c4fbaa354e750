package control

import (
	"fmt"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// leaseLine is a gRPC connection to etcd of the leases' own: the node
// leases' renewals and the leader's session ride it, apart from the
// transactions, ranges and watches of everything else.
//
// On the one connection a client has, renewals queued in the same TCP
// stream behind placement transactions of megabytes and bursts of watch
// responses; under load their answers came seconds late, leases lapsed
// by the thousand (each a false node death) and the leader lost its
// session, then had to reload the whole cluster. On a line of their own,
// the same load lapsed none.
//
// A local client (a lone embedded member's) has no connection to share:
// its line is the member's lease service, called directly.
//
// The line keeps to one endpoint (the first: a server's own embedded
// member comes first) and moves to the next when a user of it reports it
// failed.
type leaseLine struct {
	c *clientv3.Client

	mu sync.Mutex
	// Guarded by mu.
	conn   *grpc.ClientConn
	client *clientv3.Client // shares c's KV and watches, leases on conn
	next   int              // index of the endpoint to dial next
}

// lease is the connection's lease service and a client whose leases ride
// it (for sessions); on any failure to dial, c's own.
func (l *leaseLine) lease() (pb.LeaseClient, *clientv3.Client, *grpc.ClientConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if local, ok := l.c.Ctx().Value(localLeases{}).(pb.LeaseClient); ok {
		return local, l.c, nil
	}
	if l.conn == nil {
		eps := l.c.Endpoints()
		if len(eps) == 0 {
			return pb.NewLeaseClient(l.c.ActiveConnection()), l.c, nil
		}
		conn, err := l.c.Dial(eps[l.next%len(eps)])
		if err != nil {
			return pb.NewLeaseClient(l.c.ActiveConnection()), l.c, nil
		}
		l.next++
		lc := clientv3.NewCtxClient(l.c.Ctx())
		lc.KV, lc.Watcher, lc.Cluster, lc.Maintenance = l.c.KV, l.c.Watcher, l.c.Cluster, l.c.Maintenance
		lc.Lease = clientv3.NewLeaseFromLeaseClient(pb.NewLeaseClient(conn), lc, 5*time.Second)
		l.conn, l.client = conn, lc
	}
	return pb.NewLeaseClient(l.conn), l.client, l.conn
}

// failed reports that conn failed its user: the next use dials the next
// endpoint. A failure of a connection already replaced is ignored.
func (l *leaseLine) failed(conn *grpc.ClientConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if conn == nil || conn != l.conn {
		return
	}
	l.close()
}

// Close releases the connection.
func (l *leaseLine) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.close()
}

// close closes the connection; mu is held.
func (l *leaseLine) close() error {
	if l.conn == nil {
		return nil
	}
	l.client.Lease.Close()
	err := l.conn.Close()
	l.conn, l.client = nil, nil
	if err != nil {
		return fmt.Errorf("close the lease connection: %w", err)
	}
	return nil
}

// Package control is Berth's control plane: the API server, the store on
// etcd, authentication, and the leader's loop that runs the scheduler and
// controllers.
package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Store keeps objects in etcd under a prefix:
//
//	<prefix>/v1/<kind>/<name>                  cluster-scoped
//	<prefix>/v1/<kind>/<tenant>/<name>         tenant-scoped
//	<prefix>/idx/node/<node>/<tenant>/<name>   instances on a node (copy)
//	<prefix>/alive/<node>                      leased: the node is alive
//	<prefix>/alloc/<node>                      bumped by every placement on the node
//
// An instance and its index entry are written in one transaction, so the
// index entry's ModRevision equals the instance's, and an agent watches only
// its own node's prefix. Unplaced instances have no index entry: only the
// leader looks for them, in its mirror.
type Store struct {
	c      *clientv3.Client
	prefix string
	// leases carries lease renewals apart from the rest.
	leases *leaseLine
}

// NewStore returns a store under prefix ("/berth").
func NewStore(c *clientv3.Client, prefix string) *Store {
	return &Store{c: c, prefix: strings.TrimSuffix(prefix, "/"), leases: &leaseLine{c: c}}
}

// Client is the etcd client.
func (s *Store) Client() *clientv3.Client { return s.c }

// Key is the key of one object.
func (s *Store) Key(k api.Kind, tenant, name string) string {
	return s.KindPrefix(k, tenant) + name
}

// KindPrefix is the prefix of a collection; tenant "" on a tenant-scoped kind
// spans all tenants.
func (s *Store) KindPrefix(k api.Kind, tenant string) string {
	p := s.prefix + "/v1/" + string(k) + "/"
	if k.TenantScoped() && tenant != "" {
		p += tenant + "/"
	}
	return p
}

// NodePrefix is the index prefix of the instances placed on node.
func (s *Store) NodePrefix(node string) string { return s.prefix + "/idx/node/" + node + "/" }

// PlacedPrefix spans the index entries of every placed instance.
func (s *Store) PlacedPrefix() string { return s.prefix + "/idx/node/" }

// AliveKey is the leased key that says a node is alive.
func (s *Store) AliveKey(node string) string { return s.prefix + "/alive/" + node }

// AlivePrefix spans all alive keys.
func (s *Store) AlivePrefix() string { return s.prefix + "/alive/" }

// AllocKey is bumped by every placement onto node; placements compare it.
func (s *Store) AllocKey(node string) string { return s.prefix + "/alloc/" + node }

// AllocPrefix spans all allocation keys.
func (s *Store) AllocPrefix() string { return s.prefix + "/alloc/" }

// Root is the store's prefix.
func (s *Store) Root() string { return s.prefix + "/" }

func (s *Store) indexKey(in *api.Instance) string {
	if in == nil {
		return ""
	}
	if in.Spec.Node != "" {
		return s.NodePrefix(in.Spec.Node) + in.Tenant + "/" + in.Name
	}
	return ""
}

// Decode turns a stored value into an object of kind k.
func Decode(k api.Kind, v []byte, modRev int64) (api.Object, error) {
	o := api.New(k)
	if o == nil {
		return nil, fmt.Errorf("unknown kind %q", k)
	}
	if err := json.Unmarshal(v, o); err != nil {
		return nil, fmt.Errorf("decode stored %s: %w", k, err)
	}
	o.GetMeta().ResourceVersion = modRev
	return o, nil
}

func encode(o api.Object) string {
	m := o.GetMeta()
	rv := m.ResourceVersion
	m.ResourceVersion = 0
	b, _ := json.Marshal(o)
	m.ResourceVersion = rv
	return string(b)
}

// PutOps are the operations that write o (replacing prev, nil on create),
// with the instance index kept in step.
func (s *Store) PutOps(o, prev api.Object) []clientv3.Op {
	m := o.GetMeta()
	v := encode(o)
	ops := []clientv3.Op{clientv3.OpPut(s.Key(o.Kind(), m.Tenant, m.Name), v)}
	if in, ok := o.(*api.Instance); ok {
		var old *api.Instance
		if p, ok := prev.(*api.Instance); ok {
			old = p
		}
		nk, ok := s.indexKey(in), s.indexKey(old)
		if ok != "" && ok != nk {
			ops = append(ops, clientv3.OpDelete(ok))
		}
		if nk != "" {
			ops = append(ops, clientv3.OpPut(nk, v))
		}
	}
	return ops
}

// DeleteOps are the operations that delete o and its index entry.
func (s *Store) DeleteOps(o api.Object) []clientv3.Op {
	m := o.GetMeta()
	ops := []clientv3.Op{clientv3.OpDelete(s.Key(o.Kind(), m.Tenant, m.Name))}
	if in, ok := o.(*api.Instance); ok {
		if k := s.indexKey(in); k != "" {
			ops = append(ops, clientv3.OpDelete(k))
		}
	}
	return ops
}

// Unchanged is the condition that o is as read (or absent, if never stored).
func (s *Store) Unchanged(o api.Object) clientv3.Cmp {
	m := o.GetMeta()
	key := s.Key(o.Kind(), m.Tenant, m.Name)
	if m.ResourceVersion == 0 {
		return clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(key), "=", m.ResourceVersion)
}

// Get reads one object.
func (s *Store) Get(ctx context.Context, k api.Kind, tenant, name string) (api.Object, error) {
	return s.get(ctx, k, tenant, name)
}

// get is Get with options for etcd's read.
func (s *Store) get(ctx context.Context, k api.Kind, tenant, name string, opts ...clientv3.OpOption) (api.Object, error) {
	resp, err := s.c.Get(ctx, s.Key(k, tenant, name), opts...)
	if err != nil {
		return nil, fmt.Errorf("get %s %s: %w", k, name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, api.Errorf(http.StatusNotFound, "%s %q not found", strings.TrimSuffix(string(k), "s"), name)
	}
	return Decode(k, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
}

// List reads a collection (all tenants when tenant is "" on a tenant-scoped
// kind) filtered by sel, and the revision it was read at.
func (s *Store) List(ctx context.Context, k api.Kind, tenant string, sel api.Selector) ([]api.Object, int64, error) {
	return s.ListPrefix(ctx, k, s.KindPrefix(k, tenant), sel)
}

// ListPrefix lists objects of kind k stored under any prefix (an index).
func (s *Store) ListPrefix(ctx context.Context, k api.Kind, prefix string, sel api.Selector) ([]api.Object, int64, error) {
	resp, err := s.c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", k, err)
	}
	out := make([]api.Object, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		o, err := Decode(k, kv.Value, kv.ModRevision)
		if err != nil {
			return nil, 0, err
		}
		if sel.Matches(o.GetMeta().Labels) {
			out = append(out, o)
		}
	}
	return out, resp.Header.Revision, nil
}

// Txn runs one transaction; a failed condition is a 409.
func (s *Store) Txn(ctx context.Context, what string, cmps []clientv3.Cmp, ops []clientv3.Op) (int64, error) {
	resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if !resp.Succeeded {
		return 0, api.Errorf(http.StatusConflict, "%s: the object changed since it was read (or already exists); read it again and retry", what)
	}
	return resp.Header.Revision, nil
}

// Create stores a new object; 409 if the name is taken.
func (s *Store) Create(ctx context.Context, o api.Object) error {
	m := o.GetMeta()
	m.ResourceVersion = 0
	rev, err := s.Txn(ctx, fmt.Sprintf("create %s %s", o.Kind(), m.Name), []clientv3.Cmp{s.Unchanged(o)}, s.PutOps(o, nil))
	if err != nil {
		if api.IsConflict(err) {
			return api.Errorf(http.StatusConflict, "%s %q already exists", strings.TrimSuffix(string(o.Kind()), "s"), m.Name)
		}
		return err
	}
	m.ResourceVersion = rev
	return nil
}

// CreateInTenant creates a tenant-scoped o if its tenant exists, in one
// transaction: a read of the tenant before the write would cost a round
// of its own, and would not stop the tenant's deletion in between.
func (s *Store) CreateInTenant(ctx context.Context, o api.Object) error {
	m := o.GetMeta()
	m.ResourceVersion = 0
	tenant := clientv3.Compare(clientv3.CreateRevision(s.Key(api.KindTenant, "", m.Tenant)), ">", 0)
	rev, err := s.Txn(ctx, fmt.Sprintf("create %s %s", o.Kind(), m.Name), []clientv3.Cmp{s.Unchanged(o), tenant}, s.PutOps(o, nil))
	if err != nil {
		if !api.IsConflict(err) {
			return err
		}
		if _, gerr := s.Get(ctx, api.KindTenant, "", m.Tenant); api.IsNotFound(gerr) {
			return api.Errorf(http.StatusNotFound, "tenant %q not found", m.Tenant)
		}
		return api.Errorf(http.StatusConflict, "%s %q already exists", strings.TrimSuffix(string(o.Kind()), "s"), m.Name)
	}
	m.ResourceVersion = rev
	return nil
}

// Update writes o over prev if prev is unchanged since read.
func (s *Store) Update(ctx context.Context, o, prev api.Object) error {
	m := o.GetMeta()
	rev, err := s.Txn(ctx, fmt.Sprintf("update %s %s", o.Kind(), m.Name), []clientv3.Cmp{s.Unchanged(prev)}, s.PutOps(o, prev))
	if err != nil {
		return err
	}
	m.ResourceVersion = rev
	return nil
}

// Delete removes o if it is unchanged since read.
func (s *Store) Delete(ctx context.Context, o api.Object) error {
	_, err := s.Txn(ctx, fmt.Sprintf("delete %s %s", o.Kind(), o.GetMeta().Name), []clientv3.Cmp{s.Unchanged(o)}, s.DeleteOps(o))
	return err
}

// Modify reads an object, applies f and writes it back, retrying on
// conflict: for the control plane's own read-modify-write updates.
//
// The first read is serializable: it does not wait for etcd to apply
// every write committed before it, which under a fleet's load is seconds
// of backlog. The write is conditional on the version read, so a stale
// read costs a retry, never a lost update; and a stale read's verdict (not
// found, or f's refusal) is checked by a linearizable one before it is
// returned.
func (s *Store) Modify(ctx context.Context, k api.Kind, tenant, name string, f func(api.Object) error) (api.Object, error) {
	for attempt := 0; ; attempt++ {
		var opts []clientv3.OpOption
		if attempt == 0 {
			opts = append(opts, clientv3.WithSerializable())
		}
		prev, err := s.get(ctx, k, tenant, name, opts...)
		if err != nil {
			if attempt == 0 && api.IsNotFound(err) {
				continue
			}
			return nil, err
		}
		next, _ := Decode(k, []byte(encode(prev)), prev.GetMeta().ResourceVersion)
		if err := f(next); err != nil {
			if attempt == 0 {
				continue
			}
			return nil, err
		}
		err = s.Update(ctx, next, prev)
		if err == nil || !api.IsConflict(err) || attempt >= 20 {
			return next, err
		}
	}
}

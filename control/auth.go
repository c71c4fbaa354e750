package control

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Principal is who a request acts as.
type Principal struct {
	Tenant string
	Role   api.Role
	Node   string
	Token  string // "tenant/name" of the token
}

func hashSecret(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// NewSecret makes a token secret "tenant.name.random" from rnd.
func NewSecret(rnd io.Reader, tenant, name string) (string, error) {
	b := make([]byte, 24)
	if _, err := io.ReadFull(rnd, b); err != nil {
		return "", fmt.Errorf("token randomness: %w", err)
	}
	return tenant + "." + name + "." + base64.RawURLEncoding.EncodeToString(b), nil
}

// authenticator checks bearer tokens against the stored hashes. A good
// token's principal is cached, so that a fleet's heartbeats do not each
// cost an etcd read, and a watch on the tokens drops it as soon as its
// token changes or is deleted, on every server. While that watch is not
// following (before it starts, or after it failed) entries live cacheTTL,
// so a deleted token stops working within that.
//
// The cache used to expire every entry after cacheTTL and read the token
// again in the request: at 5,000 nodes a thousand linearizable reads a
// second, each waiting behind etcd's backlog of writes, and a heartbeat
// that waited seconds for one let its node's lease lapse.
type authenticator struct {
	store *Store
	now   func() time.Time

	mu sync.Mutex
	// All guarded by mu.
	cache map[string]cachedPrincipal
	// watching is true while the token watch follows the store; since is
	// the revision it follows from, and changedRev the revision of the
	// last change seen to each token ("tenant/name"), by the watch or by
	// this server's own writes.
	watching   bool
	since      int64
	changedRev map[string]int64
}

type cachedPrincipal struct {
	p   Principal
	exp time.Time
}

// cacheTTL bounds a cached principal while the token watch is not
// following; cacheWatched bounds one while it is (a backstop only: the
// watch drops it when its token changes).
const (
	cacheTTL     = 5 * time.Second
	cacheWatched = time.Hour
)

func newAuthenticator(st *Store, now func() time.Time) *authenticator {
	return &authenticator{store: st, now: now, cache: map[string]cachedPrincipal{}, changedRev: map[string]int64{}}
}

// follow watches the tokens until ctx ends, dropping cached principals as
// their tokens change.
func (a *authenticator) follow(ctx context.Context) {
	prefix := a.store.KindPrefix(api.KindToken, "")
	var rev int64
	for ctx.Err() == nil {
		if rev == 0 {
			resp, err := a.store.c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				sleep(ctx, time.Second)
				continue
			}
			rev = resp.Header.Revision
		}
		a.mu.Lock()
		a.watching, a.since = true, rev
		a.mu.Unlock()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for resp := range a.store.c.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					// Changes were missed: start again from now, with an
					// empty cache.
					rev = 0
				}
				break
			}
			a.mu.Lock()
			for _, ev := range resp.Events {
				tok := strings.TrimPrefix(string(ev.Kv.Key), prefix)
				a.changedRev[tok] = max(a.changedRev[tok], ev.Kv.ModRevision)
				for k, c := range a.cache {
					if c.p.Token == tok {
						delete(a.cache, k)
					}
				}
				rev = ev.Kv.ModRevision
			}
			a.mu.Unlock()
		}
		cancel()
		a.unwatched(rev == 0)
		sleep(ctx, 100*time.Millisecond)
	}
	a.unwatched(true)
}

// unwatched returns the cache to expiring entries after cacheTTL while no
// watch follows; clear empties it when changes may have been missed.
func (a *authenticator) unwatched(clear bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.watching = false
	if clear {
		a.cache, a.changedRev = map[string]cachedPrincipal{}, map[string]int64{}
		return
	}
	limit := a.now().Add(cacheTTL)
	for k, c := range a.cache {
		if c.exp.After(limit) {
			c.exp = limit
			a.cache[k] = c
		}
	}
}

// token reads a token and the revision the read saw the store at.
func (a *authenticator) token(ctx context.Context, tenant, name string) (*api.Token, int64, error) {
	resp, err := a.store.c.Get(ctx, a.store.Key(api.KindToken, tenant, name))
	if err != nil {
		return nil, 0, fmt.Errorf("get token %s/%s: %w", tenant, name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, api.Errorf(http.StatusNotFound, "token %s/%s not found", tenant, name)
	}
	o, err := Decode(api.KindToken, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
	if err != nil {
		return nil, 0, err
	}
	return o.(*api.Token), resp.Header.Revision, nil
}

func (a *authenticator) authenticate(ctx context.Context, r *http.Request) (Principal, error) {
	h := r.Header.Get("Authorization")
	// A node that joined shows its certificate instead of a token.
	if h == "" && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		return a.authenticateCert(ctx, r.TLS.VerifiedChains[0][0])
	}
	secret, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		secret, ok = websocketBearer(r)
	}
	if !ok || secret == "" {
		return Principal{}, api.Errorf(http.StatusUnauthorized, "missing bearer token")
	}
	if p, ok := a.cached(secret); ok {
		return p, nil
	}
	parts := strings.SplitN(secret, ".", 3)
	if len(parts) != 3 || api.ValidName(parts[0]) != nil || api.ValidName(parts[1]) != nil {
		return Principal{}, api.Errorf(http.StatusUnauthorized, "malformed bearer token")
	}
	t, rev, err := a.token(ctx, parts[0], parts[1])
	if err != nil {
		if api.IsNotFound(err) {
			return Principal{}, api.Errorf(http.StatusUnauthorized, "unknown token")
		}
		return Principal{}, err
	}
	if t.SecretHash == "" || subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(t.SecretHash)) != 1 {
		return Principal{}, api.Errorf(http.StatusUnauthorized, "unknown token")
	}
	now := a.now()
	if !t.Expires.IsZero() && !now.Before(t.Expires) {
		return Principal{}, api.Errorf(http.StatusUnauthorized, "token %s/%s expired at %s", t.Tenant, t.Name, t.Expires.Format(time.RFC3339))
	}
	p := Principal{Tenant: t.Tenant, Role: t.Role, Node: t.Node, Token: t.Tenant + "/" + t.Name}
	a.remember(secret, p, rev, t.Expires)
	return p, nil
}

// changed drops the cached principals of token tok ("tenant/name"), which
// a write at rev changed, and keeps reads older than rev from being cached:
// the server that made the change knows of it before its watch does.
func (a *authenticator) changed(tok string, rev int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.changedRev[tok] = max(a.changedRev[tok], rev)
	for k, c := range a.cache {
		if c.p.Token == tok {
			delete(a.cache, k)
		}
	}
}

// cached is the principal remembered under key, if it is still good.
func (a *authenticator) cached(key string) (Principal, bool) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.cache[key]
	return c.p, ok && now.Before(c.exp)
}

// remember caches p under key, from a read of its token at rev; expires,
// if set, is when the token expires. A read older than a change the watch
// has seen, or than the watch itself, is not cached: the watch may
// already have passed the change that makes it stale.
func (a *authenticator) remember(key string, p Principal, rev int64, expires time.Time) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	exp := now.Add(cacheTTL)
	if a.watching {
		if rev < a.since || a.changedRev[p.Token] > rev {
			return
		}
		exp = now.Add(cacheWatched)
	}
	if !expires.IsZero() && expires.Before(exp) {
		exp = expires
	}
	if len(a.cache) > 100_000 {
		a.cache = map[string]cachedPrincipal{}
	}
	a.cache[key] = cachedPrincipal{p: p, exp: exp}
}

// forget drops the cached principals drop says are revoked, so that a
// deleted token, or a removed node's, stops working at once rather than
// when its cache entry expires.
func (a *authenticator) forget(drop func(Principal) bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, c := range a.cache {
		if drop(c.p) {
			delete(a.cache, k)
		}
	}
}

// Verbs.
const (
	verbRead  = "read"
	verbWrite = "write"
)

// authorize decides whether p may do verb on kind in tenant ("" for
// cluster-scoped objects or all tenants). Node endpoints check node tokens
// themselves.
func authorize(p Principal, verb string, k api.Kind, tenant, name string) error {
	if p.Role == api.RoleAdmin {
		return nil
	}
	deny := api.Errorf(http.StatusForbidden, "token %s (%s) may not %s %s in %s", p.Token, p.Role, verb, k, scope(tenant))
	switch p.Role {
	case api.RoleNode:
		if verb == verbRead && (k == api.KindNode && name == p.Node || k == api.KindAddressBlock) {
			return nil
		}
		return deny
	case api.RoleTenantAdmin, api.RoleReadOnly:
		if p.Role == api.RoleReadOnly && verb != verbRead {
			return deny
		}
		if k == api.KindTenant && name == p.Tenant && verb == verbRead {
			return nil
		}
		if k.TenantScoped() && tenant == p.Tenant {
			return nil
		}
	}
	return deny
}

func scope(tenant string) string {
	if tenant == "" {
		return "the cluster"
	}
	return "tenant " + tenant
}

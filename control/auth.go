package control

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
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

// authenticator checks bearer tokens against the stored hashes. It caches
// good tokens briefly so a fleet's heartbeats do not each cost a read;
// a deleted token stops working within cacheTTL.
type authenticator struct {
	store *Store
	now   func() time.Time

	mu sync.Mutex
	// cache is guarded by mu.
	cache map[string]cachedPrincipal
}

type cachedPrincipal struct {
	p   Principal
	exp time.Time
}

const cacheTTL = 5 * time.Second

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
	now := a.now()
	a.mu.Lock()
	c, ok := a.cache[secret]
	a.mu.Unlock()
	if ok && now.Before(c.exp) {
		return c.p, nil
	}
	parts := strings.SplitN(secret, ".", 3)
	if len(parts) != 3 || api.ValidName(parts[0]) != nil || api.ValidName(parts[1]) != nil {
		return Principal{}, api.Errorf(http.StatusUnauthorized, "malformed bearer token")
	}
	o, err := a.store.Get(ctx, api.KindToken, parts[0], parts[1])
	if err != nil {
		if api.IsNotFound(err) {
			return Principal{}, api.Errorf(http.StatusUnauthorized, "unknown token")
		}
		return Principal{}, err
	}
	t := o.(*api.Token)
	if t.SecretHash == "" || subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(t.SecretHash)) != 1 {
		return Principal{}, api.Errorf(http.StatusUnauthorized, "unknown token")
	}
	exp := now.Add(cacheTTL)
	if !t.Expires.IsZero() {
		if !now.Before(t.Expires) {
			return Principal{}, api.Errorf(http.StatusUnauthorized, "token %s/%s expired at %s", t.Tenant, t.Name, t.Expires.Format(time.RFC3339))
		}
		if t.Expires.Before(exp) {
			exp = t.Expires
		}
	}
	p := Principal{Tenant: t.Tenant, Role: t.Role, Node: t.Node, Token: t.Tenant + "/" + t.Name}
	a.remember(secret, p, exp)
	return p, nil
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

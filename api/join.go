package api

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// RoleJoin is a join token's role: it may only exchange a certificate
// request for a node certificate, and only until it expires.
const RoleJoin Role = "join"

// joinTokenPrefix starts every join token; the CA fingerprint after it lets
// a joining agent trust the server it has never seen before (the token
// came over a trusted channel; the server's certificate did not).
const joinTokenPrefix = "bjt1-"

// lowerHex reports whether s is lower-case hexadecimal digits only. (A
// regexp compiled at init cost every command of the CLI a tenth of a
// millisecond.)
func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// FormatJoinToken makes the string an operator hands to `berth agent
// --join`: the CA's SHA-256 fingerprint and the token's secret.
func FormatJoinToken(caFingerprint, secret string) string {
	return joinTokenPrefix + caFingerprint + "-" + secret
}

// ParseJoinToken splits a join token into the CA fingerprint it pins and
// the bearer secret.
func ParseJoinToken(s string) (caFingerprint, secret string, err error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), joinTokenPrefix)
	if !ok || len(rest) < 66 || rest[64] != '-' || !lowerHex(rest[:64]) {
		return "", "", fmt.Errorf("join token: want %sCAFINGERPRINT-SECRET, as `berth node join-token` prints", joinTokenPrefix)
	}
	return rest[:64], rest[65:], nil
}

// JoinTokenRequest asks for a join token good for TTL.
type JoinTokenRequest struct {
	TTL Duration `json:"ttl,omitempty"`
}

// JoinTokenResponse is a minted join token.
type JoinTokenResponse struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// JoinRequest is an agent's request for its node certificate: at join with
// a join token, and to renew with its current certificate.
type JoinRequest struct {
	Node string `json:"node"`
	// CSR is a PEM certificate request for the agent's new key.
	CSR string `json:"csr"`
	// Addresses are where the agent serves container operations: they go
	// into the certificate so that the control plane can verify it.
	Addresses []netip.Addr `json:"addresses,omitempty"`
}

// JoinResponse is a node certificate and the CA that signed it.
type JoinResponse struct {
	Certificate string `json:"certificate"`
	CA          string `json:"ca"`
}

// MaxJoinTokenTTL bounds a join token's life: it is a bootstrap
// credential, not a standing one.
const MaxJoinTokenTTL = 7 * 24 * time.Hour

// JoinToken mints a join token good for ttl (an hour when zero).
func (c *Client) JoinToken(ctx context.Context, ttl time.Duration) (JoinTokenResponse, error) {
	var out JoinTokenResponse
	err := c.do(ctx, http.MethodPost, "/v1/jointokens", nil, JoinTokenRequest{TTL: Duration(ttl)}, &out)
	return out, err
}

// Join exchanges a certificate request for a node certificate; c acts as
// the join token's secret.
func (c *Client) Join(ctx context.Context, req JoinRequest) (JoinResponse, error) {
	var out JoinResponse
	err := c.do(ctx, http.MethodPost, "/v1/join", nil, req, &out)
	return out, err
}

// RenewCertificate replaces a node's certificate; c acts as the node
// through its current certificate. The old certificate stops working.
func (c *Client) RenewCertificate(ctx context.Context, req JoinRequest) (JoinResponse, error) {
	var out JoinResponse
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(req.Node)+"/certificate", nil, req, &out)
	return out, err
}

// CA fetches the cluster CA's certificate (PEM). It needs no credentials;
// a joining agent checks it against its token's fingerprint.
func (c *Client) CA(ctx context.Context) ([]byte, error) {
	var out JoinResponse
	if err := c.do(ctx, http.MethodGet, "/v1/ca", nil, nil, &out); err != nil {
		return nil, err
	}
	return []byte(out.CA), nil
}

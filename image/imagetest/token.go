package imagetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TokenRegistry is a registry behind a token server, as Docker Hub and most
// hosted registries are: the registry answers 401 with a Bearer challenge,
// the client fetches a signed token from the token server with its basic
// credentials, and the registry checks the token's signature and grants.
type TokenRegistry struct {
	Addr string // registry host:port
	// Tokens counts the tokens issued.
	Tokens atomic.Int64
}

// RegistryWithTokens starts a token server for user and password and a
// registry trusting it, both on loopback.
func RegistryWithTokens(tb testing.TB, user, password string) *TokenRegistry {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "berth test token issuer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	bundle := filepath.Join(dir, "issuer.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	const service, issuer = "berth-test-registry", "berth-test-issuer"
	tr := &TokenRegistry{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != password {
			http.Error(w, `{"details":"wrong user name or password"}`, http.StatusUnauthorized)
			return
		}
		// Grant whatever is asked: the test is about the protocol.
		var access []map[string]any
		for _, scope := range r.URL.Query()["scope"] {
			parts := strings.Split(scope, ":")
			if len(parts) != 3 {
				continue
			}
			access = append(access, map[string]any{"type": parts[0], "name": parts[1], "actions": strings.Split(parts[2], ",")})
		}
		now := time.Now()
		claims := map[string]any{
			"iss": issuer, "sub": u, "aud": r.URL.Query().Get("service"), "exp": now.Add(5 * time.Minute).Unix(),
			"nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(), "jti": fmt.Sprint(now.UnixNano()), "access": access,
		}
		token, err := signES256(key, der, claims)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		tr.Tokens.Add(1)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"token": token, "access_token": token, "expires_in": 300})
	}))
	tb.Cleanup(srv.Close)
	// Named "localhost", not 127.0.0.1: go-containerregistry refuses a
	// realm on a private IP literal other than the registry's own address.
	realm := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1) + "/token"
	tr.Addr = registry(tb, fmt.Sprintf("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n", realm, service, issuer, bundle))
	return tr
}

// signES256 makes a compact JWS with the certificate in its x5c header,
// the form the registry verifies against its root bundle.
func signES256(key *ecdsa.PrivateKey, cert []byte, claims map[string]any) (string, error) {
	enc := base64.RawURLEncoding
	h, err := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{base64.StdEncoding.EncodeToString(cert)}})
	if err != nil {
		return "", err
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signing := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + enc.EncodeToString(sig), nil
}

// Package pki is the cluster's certificate authority: the control plane
// signs node agents' and servers' certificates with it, and each side of
// the fleet's mTLS checks the other against it.
//
// Identities live in the certificate subject: the common name is the node
// (or server) name and the organization says which kind of party it is, so
// a node's certificate can never pass for the control plane's.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"slices"
	"time"
)

// The organizations that name the kinds of parties.
const (
	OrgNode    = "berth:nodes"
	OrgControl = "berth:control"
)

// caLifetime is long: rotating the CA means re-joining every node.
const caLifetime = 10 * 365 * 24 * time.Hour

// clockSkew backdates certificates so that a host whose clock runs a
// little behind accepts them at once (by a tenth of a short life at most,
// so that renewal two thirds in still comes after issue).
const clockSkew = 5 * time.Minute

func backdate(life time.Duration) time.Duration { return min(clockSkew, life/10) }

// CA is the cluster's signing authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM is Cert as PEM, what parties are given to trust.
	CertPEM []byte
}

// NewCA makes a CA named after the cluster and returns it with its key as
// PEM, to be stored.
func NewCA(rnd io.Reader, name string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	serial, err := newSerial(rnd)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name + " CA", Organization: []string{"berth"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rnd, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	return pemOf("CERTIFICATE", der), pemOf("PRIVATE KEY", kder), nil
}

// ParseCA reads a CA stored by NewCA.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("CA: the certificate is not a CA's")
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
}

// Pool is a cert pool trusting only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Request is what a certificate is issued for.
type Request struct {
	// CSR is a PEM certificate request; its key is the one certified.
	// Its subject is ignored: the CA names the party.
	CSR []byte
	// Name is the node's or server's name; Org is OrgNode or OrgControl.
	Name, Org string
	// IPs and DNS are the addresses the party serves on.
	IPs []netip.Addr
	DNS []string
	TTL time.Duration
}

// Sign issues a certificate for req, good for client and server auth.
func (ca *CA) Sign(rnd io.Reader, req Request, now time.Time) ([]byte, error) {
	if req.Org != OrgNode && req.Org != OrgControl {
		return nil, fmt.Errorf("sign: unknown organization %q", req.Org)
	}
	if req.Name == "" {
		return nil, errors.New("sign: no name")
	}
	if req.TTL <= 0 {
		return nil, fmt.Errorf("sign: lifetime %v is not positive", req.TTL)
	}
	b, _ := pem.Decode(req.CSR)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("csr: not a PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	serial, err := newSerial(rnd)
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(req.TTL)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{req.Org}},
		NotBefore:    now.Add(-backdate(req.TTL)),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		DNSNames:     req.DNS,
	}
	for _, a := range req.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
	}
	der, err := x509.CreateCertificate(rnd, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", req.Name, err)
	}
	return pemOf("CERTIFICATE", der), nil
}

// NewKey makes a party's private key and a certificate request for it,
// both as PEM.
func NewKey(rnd io.Reader, name string) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rnd, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate request: %w", err)
	}
	return pemOf("PRIVATE KEY", kder), pemOf("CERTIFICATE REQUEST", csr), nil
}

// ParseCert reads the first certificate of a PEM bundle.
func ParseCert(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// ParseKey reads a PKCS #8 PEM private key.
func ParseKey(keyPEM []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("private key cannot sign")
	}
	return s, nil
}

// Fingerprint is the SHA-256 of a certificate's DER, in hex: how a join
// token pins the CA and how the control plane remembers a node's current
// certificate.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// Identity is who a verified peer certificate says it is.
type Identity struct {
	Name, Org   string
	Fingerprint string
}

// IdentityOf reads the identity of a verified peer certificate; ok is false
// for a certificate of no known kind.
func IdentityOf(c *x509.Certificate) (Identity, bool) {
	if len(c.Subject.Organization) != 1 || c.Subject.CommonName == "" {
		return Identity{}, false
	}
	org := c.Subject.Organization[0]
	if org != OrgNode && org != OrgControl {
		return Identity{}, false
	}
	return Identity{Name: c.Subject.CommonName, Org: org, Fingerprint: Fingerprint(c)}, true
}

// RenewAt is when a certificate should be replaced: two thirds into its
// life, as kubelet does, so that a control plane down for a while does not
// let it lapse.
func RenewAt(c *x509.Certificate) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(life * 2 / 3)
}

// KeyPair turns PEM certificate and key into a tls.Certificate.
func KeyPair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return kp, fmt.Errorf("key pair: %w", err)
	}
	return kp, nil
}

// RequireOrg returns a tls VerifyConnection hook that accepts only peers
// whose verified certificate is of org: an agent serves the control plane,
// never another node.
func RequireOrg(org string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
			return errors.New("no verified peer certificate")
		}
		id, ok := IdentityOf(cs.VerifiedChains[0][0])
		if !ok || id.Org != org {
			return fmt.Errorf("peer %q is not of %s", cs.VerifiedChains[0][0].Subject.CommonName, org)
		}
		return nil
	}
}

// SameCert reports whether two PEM bundles hold the same first certificate.
func SameCert(a, b []byte) bool {
	ca, err1 := ParseCert(a)
	cb, err2 := ParseCert(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca.Raw, cb.Raw)
}

// IPsOf parses addresses, skipping none: a bad one is an error.
func IPsOf(ss []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", s, err)
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

func newSerial(rnd io.Reader) (*big.Int, error) {
	s, err := randInt(rnd, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func randInt(rnd io.Reader, max *big.Int) (*big.Int, error) {
	b := make([]byte, (max.BitLen()+7)/8)
	if _, err := io.ReadFull(rnd, b); err != nil {
		return nil, err
	}
	n := new(big.Int).SetBytes(b)
	return n.Mod(n, max), nil
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

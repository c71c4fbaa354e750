package pki

import (
	"crypto/rand"
	"crypto/x509"
	"net/netip"
	"testing"
	"time"
)

func TestSignedCertificatesVerifyAndNameTheirParty(t *testing.T) {
	now := time.Now()
	certPEM, keyPEM, err := NewCA(rand.Reader, "test", now)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ParseCA(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, csr, err := NewKey(rand.Reader, "ignored")
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("10.0.0.7")
	pemCert, err := ca.Sign(rand.Reader, Request{CSR: csr, Name: "n1", Org: OrgNode, IPs: []netip.Addr{ip}, TTL: 30 * time.Second}, now)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCert(pemCert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: now}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if err := c.VerifyHostname("10.0.0.7"); err != nil {
		t.Fatal(err)
	}
	id, ok := IdentityOf(c)
	if !ok || id.Name != "n1" || id.Org != OrgNode || id.Fingerprint != Fingerprint(c) {
		t.Fatalf("identity %+v %v", id, ok)
	}
	if r := RenewAt(c); !r.After(now) || !r.Before(now.Add(30*time.Second)) {
		t.Fatalf("renew at %v, want within the certificate's life from %v", r, now)
	}
	// Another CA's certificate does not verify.
	otherPEM, otherKey, _ := NewCA(rand.Reader, "other", now)
	other, _ := ParseCA(otherPEM, otherKey)
	if _, err := c.Verify(x509.VerifyOptions{Roots: other.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: now}); err == nil {
		t.Fatal("a certificate verified against another CA")
	}
}

func TestSignRefusesBadRequests(t *testing.T) {
	now := time.Now()
	certPEM, keyPEM, _ := NewCA(rand.Reader, "test", now)
	ca, _ := ParseCA(certPEM, keyPEM)
	_, csr, _ := NewKey(rand.Reader, "x")
	for name, r := range map[string]Request{
		"no csr":      {Name: "n1", Org: OrgNode, TTL: time.Hour},
		"garbage csr": {CSR: []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), Name: "n1", Org: OrgNode, TTL: time.Hour},
		"unknown org": {CSR: csr, Name: "n1", Org: "root", TTL: time.Hour},
		"no name":     {CSR: csr, Org: OrgNode, TTL: time.Hour},
		"no life":     {CSR: csr, Name: "n1", Org: OrgNode},
	} {
		if _, err := ca.Sign(rand.Reader, r, now); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
	if _, err := ParseCA(certPEM, []byte("junk")); err == nil {
		t.Error("a CA with a junk key parsed")
	}
}

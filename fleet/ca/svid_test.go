package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"net"
	"net/url"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// The tests in this file hold the CA's certificates to the SPIFFE X509-SVID
// specification and to tools that other people's software relies on:
// go-spiffe (the SPIFFE project's Go library), openssl (ca_test.go,
// TestOpenSSLVerify) and zlint.

const svidDeviceID = "0123456789abcdef0123456789abcdef"

var (
	oidKeyUsage    = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSAN         = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 37}
)

// svidOf parses cert and key as go-spiffe does for a workload's SVID.
func svidOf(t *testing.T, cert *x509.Certificate, key *ecdsa.PrivateKey) *x509svid.SVID {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	s, err := x509svid.ParseRaw(cert.Raw, der)
	if err != nil {
		t.Fatalf("go-spiffe refuses the device certificate as an X509-SVID: %v", err)
	}
	return s
}

// bundleOf is the fleet's trust bundle as a go-spiffe X.509 bundle.
func bundleOf(t *testing.T, c *CA) *x509bundle.Bundle {
	t.Helper()
	var roots []*x509.Certificate
	for _, der := range c.TrustBundle() {
		r, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, r)
	}
	return x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(td), roots)
}

func extension(c *x509.Certificate, oid asn1.ObjectIdentifier) (ext struct {
	found, critical bool
}) {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			ext.found, ext.critical = true, e.Critical
		}
	}
	return ext
}

// TestDeviceCertificateIsX509SVID: a device certificate follows the leaf
// SVID rules of the SPIFFE X509-SVID specification (sections 2, 3.1, 4.1,
// 4.3, 4.4 and 5.2), carries a subject key identifier, and go-spiffe
// parses and verifies it against the fleet's bundle, before and after a CA
// rotation.
func TestDeviceCertificateIsX509SVID(t *testing.T) {
	now := time.Date(2026, 12, 8, 12, 0, 0, 0, time.UTC)
	c, err := Open(Config{Dir: t.TempDir(), TrustDomain: td, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	key := deviceKey(t)
	cert, err := c.IssueDevice(svidDeviceID, key.Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	wantID := spiffeid.RequireFromString("spiffe://" + td + "/device/" + svidDeviceID)

	// Section 2: exactly one URI SAN, the SPIFFE ID, with a path (3.1).
	if len(cert.URIs) != 1 || cert.URIs[0].String() != wantID.String() {
		t.Errorf("URI SANs %v, want exactly %s", cert.URIs, wantID)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
		t.Errorf("other SANs: %v %v %v", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
	}
	if !extension(cert, oidSAN).found {
		t.Error("no subject alternative name extension")
	}
	// Section 4.1: a leaf is not a CA.
	if !cert.BasicConstraintsValid || cert.IsCA {
		t.Errorf("basic constraints: valid %v, CA %v", cert.BasicConstraintsValid, cert.IsCA)
	}
	// Section 4.3: key usage present and critical; digitalSignature, never
	// keyCertSign or cRLSign.
	if ku := extension(cert, oidKeyUsage); !ku.found || !ku.critical {
		t.Errorf("key usage extension present %v, critical %v; want both", ku.found, ku.critical)
	}
	if cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 || cert.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		t.Errorf("key usage %b", cert.KeyUsage)
	}
	// Section 4.4: when the extended key usage is present, serverAuth and
	// clientAuth are both set.
	if extension(cert, oidExtKeyUsage).found &&
		(!slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth)) {
		t.Errorf("extended key usage %v, want serverAuth and clientAuth", cert.ExtKeyUsage)
	}
	// RFC 5280 4.2.1.2: a subject key identifier, here by RFC 7093 method 1
	// (leftmost 160 bits of the SHA-256 of the public key's bit string, the
	// uncompressed point for ECDSA), and the issuer's as authority key ID.
	pt, err := key.PublicKey.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(pt.Bytes())
	if !bytes.Equal(cert.SubjectKeyId, sum[:20]) {
		t.Errorf("subject key identifier %x, want %x", cert.SubjectKeyId, sum[:20])
	}
	if !bytes.Equal(cert.AuthorityKeyId, c.Certificate().SubjectKeyId) {
		t.Errorf("authority key identifier %x, want the CA's %x", cert.AuthorityKeyId, c.Certificate().SubjectKeyId)
	}

	// go-spiffe: the SVID parses with its key and verifies against the
	// fleet's bundle (section 5).
	svid := svidOf(t, cert, key)
	if svid.ID != wantID {
		t.Errorf("go-spiffe reads the ID %s, want %s", svid.ID, wantID)
	}
	id, _, err := x509svid.Verify([]*x509.Certificate{cert}, bundleOf(t, c), x509svid.WithTime(now))
	if err != nil || id != wantID {
		t.Fatalf("x509svid.Verify: %v, %v", id, err)
	}
	// And it refuses the certificate against another fleet's bundle, so
	// the check can fail.
	other := openCA(t, t.TempDir())
	if _, _, err := x509svid.Verify([]*x509.Certificate{cert}, bundleOf(t, other), x509svid.WithTime(now)); err == nil {
		t.Fatal("x509svid.Verify accepted the certificate against another CA's bundle")
	}

	// After a CA rotation: a certificate of generation 2 verifies against
	// the bundle (both roots), and against the old root alone through the
	// cross certificate.
	if _, err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	cert2, err := c.IssueDevice(svidDeviceID, key.Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify([]*x509.Certificate{cert2}, bundleOf(t, c), x509svid.WithTime(now)); err != nil {
		t.Fatalf("generation 2: %v", err)
	}
	g1, err := x509.ParseCertificate(c.TrustBundle()[1])
	if err != nil {
		t.Fatal(err)
	}
	cross := c.gens[1].cross
	oldBundle := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(td), []*x509.Certificate{g1})
	if _, _, err := x509svid.Verify([]*x509.Certificate{cert2, cross}, oldBundle, x509svid.WithTime(now)); err != nil {
		t.Fatalf("generation 2 with the cross certificate against the old root: %v", err)
	}
}

// TestDeviceSVIDsAuthenticateEachOther: two device certificates serve as
// the SVIDs of a go-spiffe mTLS server and client, each authorizing the
// other by SPIFFE ID.
func TestDeviceSVIDsAuthenticateEachOther(t *testing.T) {
	c := openCA(t, t.TempDir())
	const other = "fedcba9876543210fedcba9876543210"
	ka, kb := deviceKey(t), deviceKey(t)
	ca1, err := c.IssueDevice(svidDeviceID, ka.Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := c.IssueDevice(other, kb.Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := svidOf(t, ca1, ka), svidOf(t, cb, kb)
	bundle := bundleOf(t, c)
	srvCfg := tlsconfig.MTLSServerConfig(a, bundle, tlsconfig.AuthorizeID(b.ID))
	cliCfg := tlsconfig.MTLSClientConfig(b, bundle, tlsconfig.AuthorizeID(a.ID))
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	srv, cli := tls.Server(p, srvCfg), tls.Client(q, cliCfg)
	errs := make(chan error, 1)
	go func() { errs <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errs; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	peer := srv.ConnectionState().PeerCertificates
	if len(peer) == 0 || !peer[0].Equal(cb) {
		t.Fatal("the server did not see the client's SVID")
	}
}

// TestDeviceCertificateIsNoServerForAnyName: the device certificate has
// serverAuth (section 4.4) but names no host: a client that checks the
// server's name, as every client of the fleet does, refuses it as the
// fleet's broker or API whatever name or address it dials.
func TestDeviceCertificateIsNoServerForAnyName(t *testing.T) {
	c := openCA(t, t.TempDir())
	cert, err := c.IssueDevice(svidDeviceID, deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"broker.example.com", "localhost", "127.0.0.1", "::1", svidDeviceID, td} {
		_, err := cert.Verify(x509.VerifyOptions{Roots: c.Pool(), DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		var he x509.HostnameError
		if !errors.As(err, &he) {
			t.Errorf("device certificate as the server %q: %v, want a HostnameError", name, err)
		}
	}
}

// TestCertificatesFromBeforeSVIDsStillVerify: a device certificate issued
// before device certificates became X509-SVIDs (client authentication
// only, no subject key identifier) still verifies for client
// authentication and is attributed to its generation, so devices keep
// connecting until their next renewal re-issues them.
func TestCertificatesFromBeforeSVIDsStillVerify(t *testing.T) {
	c := openCA(t, t.TempDir())
	key := deviceKey(t)
	caCert, signer := c.active()
	serial, err := c.serial()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: caCert.Subject, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td, Path: "/device/" + svidDeviceID}},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	tmpl.Subject.CommonName, tmpl.Subject.Organization = svidDeviceID, nil
	der, err := x509.CreateCertificate(c.cfg.Rand, tmpl, caCert, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	old, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(old.SubjectKeyId) != 0 {
		t.Fatal("the old-style certificate has a subject key identifier")
	}
	if _, err := old.Verify(x509.VerifyOptions{Roots: c.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("old-style certificate refused for client authentication: %v", err)
	}
	if g, err := c.Issuer(old); err != nil || g.N != 1 {
		t.Fatalf("Issuer(old-style certificate) = %+v, %v", g, err)
	}
}

// zlintNotApplicable lists the zlint lints that do not apply to the
// fleet's private PKI, each with the reason. Every other lint of zlint
// v3.7.3 that reports a warning or worse fails TestZlint, and so does an
// entry here that no certificate triggers any more.
//
// All of them come from the CA/Browser Forum's Baseline Requirements, which
// govern certificates that browsers trust. The fleet CA is trusted only by
// its own devices and tools, which receive its roots when they enroll or
// are set up; it publishes no certificate policy, and its relying parties
// learn of revocations from the fleet (its CRL, the broker's inventory
// check), not from URLs in the certificates.
var zlintNotApplicable = map[string]string{
	// Leaf certificates (devices' and the fleet server's).
	"e_sub_cert_aia_missing":                                  "no AIA: relying parties hold the fleet's roots, and the chain comes with the certificate",
	"w_sub_cert_aia_does_not_contain_issuing_ca_url":          "no AIA, as above",
	"e_sub_cert_certificate_policies_missing":                 "no certificate policy OIDs in a private PKI (BR 7.1.2.7.9)",
	"e_sub_cert_cert_policy_empty":                            "no certificate policy OIDs in a private PKI (BR 7.1.2.7.9)",
	"e_missing_crl_distrib_point":                             "the fleet serves its CRL itself (GET /crl); certificates name no CRL URL",
	"e_server_cert_valid_time_longer_than_200_days":           "BR limit for browser-trusted server certificates; the fleet's server certificate lasts a year and is re-issued when a third of it is left",
	"w_server_cert_valid_time_longer_than_199_days":           "as above",
	"w_subject_common_name_included":                          "the common name is the device ID (Mosquitto's use_identity_as_username maps it to per-device topics) or the server's first name",
	"e_dnsname_not_valid_tld":                                 "zlint reads a device's common name, its device ID, as a DNS name; the device names no host",
	"e_ext_san_uniform_resource_identifier_present":           "a URI SAN is how an X509-SVID carries its SPIFFE ID (SPIFFE X509-SVID section 2)",
	"e_subject_common_name_not_exactly_from_san":              "a device's common name is its device ID; its only SAN is the SPIFFE ID that holds it",
	"e_ext_san_contains_reserved_ip":                          "the fleet server's certificate names the loopback or private addresses it listens on",
	"w_ext_subject_key_identifier_not_recommended_subscriber": "BR discourages a subject key identifier in browser-trusted leaves; RFC 5280 4.2.1.2 recommends it (zlint's w_ext_subject_key_identifier_missing_sub_cert), and the fleet sets it",
	// CA certificates (the roots and the cross certificate).
	"e_ca_country_name_missing":                                     "the CA's name identifies the fleet's trust domain, not a legal entity of a country",
	"w_root_ca_basic_constraints_path_len_constraint_field_present": "path length 1 leaves room for exactly the cross certificate of a rotation (rotate.go)",
	"e_sub_ca_certificate_policies_missing":                         "the cross certificate links two generations of one private CA, with no policy OIDs",
	"e_invalid_ca_certificate_policies":                             "as above",
	"e_sub_ca_crl_distribution_points_missing":                      "the fleet serves its CRL itself; certificates name no CRL URL",
	"w_sub_ca_aia_missing":                                          "no AIA: the cross certificate is sent in the TLS chain",
}

// TestZlint runs every zlint lint on what the CA issues and holds: a device
// certificate (generations 1 and 2), the server certificate, both roots and
// the cross certificate. A lint that reports a warning, an error or a fatal
// finding fails the test unless zlintNotApplicable lists it with its
// reason.
func TestZlint(t *testing.T) {
	c := openCA(t, t.TempDir())
	dev1, err := c.IssueDevice(svidDeviceID, deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	root1 := c.Certificate()
	if _, err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	srv, err := c.ServerTLS([]string{"broker.example.com", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	dev2, err := c.IssueDevice(svidDeviceID, deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(srv.Certificate) != 2 {
		t.Fatalf("server chain of %d certificates, want the leaf and the cross certificate", len(srv.Certificate))
	}
	fired := map[string]bool{}
	reg := lint.GlobalRegistry()
	for name, reason := range zlintNotApplicable {
		if reg.ByName(name) == nil {
			t.Errorf("zlintNotApplicable lists %s (%s), which zlint does not have", name, reason)
		}
	}
	for _, tc := range []struct {
		name string
		der  []byte
	}{
		{"device certificate (generation 1)", dev1.Raw},
		{"device certificate (generation 2)", dev2.Raw},
		{"server certificate", srv.Certificate[0]},
		{"cross certificate", srv.Certificate[1]},
		{"root (generation 1)", root1.Raw},
		{"root (generation 2)", c.Certificate().Raw},
	} {
		zc, err := zx509.ParseCertificate(tc.der)
		if err != nil {
			t.Fatalf("%s: zcrypto cannot parse it: %v", tc.name, err)
		}
		rs := zlint.LintCertificate(zc)
		if len(rs.Results) < 100 {
			t.Fatalf("%s: only %d lints ran", tc.name, len(rs.Results))
		}
		var findings []string
		for n, r := range rs.Results {
			if r.Status < lint.Warn {
				continue
			}
			if _, ok := zlintNotApplicable[n]; ok {
				fired[n] = true
				continue
			}
			findings = append(findings, n+" ("+r.Status.String()+") "+r.Details)
		}
		sort.Strings(findings)
		for _, f := range findings {
			t.Errorf("%s: zlint %s", tc.name, f)
		}
	}
	for name := range zlintNotApplicable {
		if !fired[name] {
			t.Errorf("zlintNotApplicable lists %s, which no certificate triggers: remove it", name)
		}
	}
}

// TestSigningCertificatesFollowSVIDRules: the roots and the cross
// certificate follow the SPIFFE X509-SVID rules for signing certificates
// (sections 3.2, 4.1, 4.3): a CA, keyCertSign in a critical key usage, and
// no SPIFFE ID with a path.
func TestSigningCertificatesFollowSVIDRules(t *testing.T) {
	c := openCA(t, t.TempDir())
	root1 := c.Certificate()
	if _, err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	cross := c.gens[1].cross
	for name, cert := range map[string]*x509.Certificate{"root 1": root1, "root 2": c.gens[1].cert, "cross": cross} {
		if !cert.BasicConstraintsValid || !cert.IsCA {
			t.Errorf("%s: not a CA", name)
		}
		if ku := extension(cert, oidKeyUsage); !ku.found || !ku.critical || cert.KeyUsage&x509.KeyUsageCertSign == 0 || cert.KeyUsage&x509.KeyUsageDigitalSignature != 0 {
			t.Errorf("%s: key usage %b (present %v, critical %v)", name, cert.KeyUsage, ku.found, ku.critical)
		}
		for _, u := range cert.URIs {
			if u.Scheme == "spiffe" && u.Path != "" {
				t.Errorf("%s: SPIFFE ID with a path %s", name, u)
			}
		}
	}
}

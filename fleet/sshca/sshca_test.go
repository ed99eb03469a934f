//lint:file-ignore SA1019 the test builds a DSA key to check that DSA host keys are refused
package sshca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
	"golang.org/x/crypto/ssh"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func openCA(t testing.TB, dir string) *CA {
	t.Helper()
	c, err := Open(Config{KeyFile: filepath.Join(dir, "ssh_ca.key"), TrustDomain: "fleet.example", Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func hostKey(t testing.TB) ssh.PublicKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ssh.NewPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func authorized(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " root@gw"
}

func TestOpenCreatesAndKeepsKey(t *testing.T) {
	dir := t.TempDir()
	c := openCA(t, dir)
	fi, err := os.Stat(filepath.Join(dir, "ssh_ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %o", fi.Mode().Perm())
	}
	if c.PublicKey().Type() != ssh.KeyAlgoECDSA256 {
		t.Fatalf("CA key type %s", c.PublicKey().Type())
	}
	again := openCA(t, dir)
	if !bytes.Equal(again.PublicKey().Marshal(), c.PublicKey().Marshal()) {
		t.Fatal("a second start made a new CA key")
	}
	// The published forms parse back to the CA key.
	pub, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(c.AuthorizedKey()))
	if err != nil || !bytes.Equal(pub.Marshal(), c.PublicKey().Marshal()) || comment != "sigil-ssh-ca@fleet.example" {
		t.Fatalf("authorized key %q: %v", c.AuthorizedKey(), err)
	}
	marker, hosts, pub, _, _, err := ssh.ParseKnownHosts([]byte(c.KnownHosts()))
	if err != nil || marker != "cert-authority" || !slices.Equal(hosts, []string{"*.fleet.example"}) || !bytes.Equal(pub.Marshal(), c.PublicKey().Marshal()) {
		t.Fatalf("known_hosts %q: %s %v %v", c.KnownHosts(), marker, hosts, err)
	}
	if !strings.HasPrefix(c.Fingerprint(), "SHA256:") {
		t.Fatal(c.Fingerprint())
	}
	if err := os.Chmod(filepath.Join(dir, "ssh_ca.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{KeyFile: filepath.Join(dir, "ssh_ca.key"), TrustDomain: "fleet.example"}); err == nil {
		t.Fatal("a world-readable CA key was accepted")
	}
}

func TestOpenConfig(t *testing.T) {
	dir := t.TempDir()
	for name, cfg := range map[string]Config{
		"no key":           {TrustDomain: "a.b"},
		"no domain":        {KeyFile: filepath.Join(dir, "k")},
		"bad domain":       {KeyFile: filepath.Join(dir, "k"), TrustDomain: "A B"},
		"bad principal":    {KeyFile: filepath.Join(dir, "k"), TrustDomain: "a.b", Principals: []string{"{id} *"}},
		"wildcard":         {KeyFile: filepath.Join(dir, "k"), TrustDomain: "a.b", Principals: []string{"*.{domain}"}},
		"comma principals": {KeyFile: filepath.Join(dir, "k"), TrustDomain: "a.b", Principals: []string{"{id},x"}},
	} {
		if _, err := Open(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	c, err := Open(Config{Signer: priv, TrustDomain: "a.b", Principals: []string{"{id}.ssh.{domain}"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.PublicKey().Type() != ssh.KeyAlgoED25519 || !slices.Equal(c.Principals("d1"), []string{"d1.ssh.a.b"}) {
		t.Fatalf("external signer CA: %s %v", c.PublicKey().Type(), c.Principals("d1"))
	}
}

// TestSign checks every field and verifies the certificate as OpenSSH's
// client logic (x/crypto/ssh CertChecker) does.
func TestSign(t *testing.T) {
	c := openCA(t, t.TempDir())
	hk := hostKey(t)
	cert, err := c.Sign("dev1", hk, nil, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if cert.CertType != ssh.HostCert || cert.KeyId != "dev1" || !slices.Equal(cert.ValidPrincipals, []string{"dev1", "dev1.fleet.example"}) {
		t.Fatalf("cert fields: type %d id %q principals %v", cert.CertType, cert.KeyId, cert.ValidPrincipals)
	}
	if cert.ValidAfter != uint64(t0.Add(-time.Minute).Unix()) || cert.ValidBefore != uint64(t0.Add(24*time.Hour).Unix()) {
		t.Fatalf("validity %d..%d", cert.ValidAfter, cert.ValidBefore)
	}
	if !bytes.Equal(cert.Key.Marshal(), hk.Marshal()) || !bytes.Equal(cert.SignatureKey.Marshal(), c.PublicKey().Marshal()) {
		t.Fatal("certificate is not for the host key or not signed by the CA")
	}
	if len(cert.Permissions.CriticalOptions) != 0 || len(cert.Permissions.Extensions) != 0 {
		t.Fatal("a host certificate carries options")
	}
	other, _ := c.Sign("dev1", hk, []string{"gw.site"}, time.Hour)
	if cert.Serial == other.Serial {
		t.Fatal("two certificates share a serial")
	}
	if !slices.Equal(other.ValidPrincipals, []string{"gw.site"}) {
		t.Fatal(other.ValidPrincipals)
	}

	checker := &ssh.CertChecker{
		IsHostAuthority: func(auth ssh.PublicKey, address string) bool {
			return bytes.Equal(auth.Marshal(), c.PublicKey().Marshal())
		},
		Clock: func() time.Time { return t0.Add(time.Hour) },
	}
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}
	if err := checker.CheckHostKey("dev1.fleet.example:22", addr, cert); err != nil {
		t.Fatalf("OpenSSH-style check: %v", err)
	}
	if err := checker.CheckHostKey("other.fleet.example:22", addr, cert); err == nil {
		t.Fatal("certificate accepted for a name it does not carry")
	}
	checker.Clock = func() time.Time { return t0.Add(25 * time.Hour) }
	if err := checker.CheckHostKey("dev1:22", addr, cert); err == nil {
		t.Fatal("expired certificate accepted")
	}
	checker.Clock = func() time.Time { return t0.Add(time.Hour) }
	stranger := openCA(t, t.TempDir())
	forged, _ := stranger.Sign("dev1", hk, nil, time.Hour)
	if err := checker.CheckHostKey("dev1:22", addr, forged); err == nil {
		t.Fatal("certificate from another CA accepted")
	}
}

func TestSignRefusals(t *testing.T) {
	c := openCA(t, t.TempDir())
	hk := hostKey(t)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallPub, _ := ssh.NewPublicKey(&small.PublicKey)
	// golang.org/x/crypto/ssh no longer makes DSA keys (v0.59): a key
	// that says it is one stands in, as a peer could send it.
	var dsaPub ssh.PublicKey = foreignKey{"ssh-dss"}
	if smallPub == nil {
		t.Fatal("no RSA key")
	}
	cert, _ := c.Sign("dev1", hk, nil, time.Hour)
	for name, f := range map[string]func() error{
		"bad id":          func() error { _, err := c.Sign("Dev/1", hk, nil, time.Hour); return err },
		"no key":          func() error { _, err := c.Sign("dev1", nil, nil, time.Hour); return err },
		"short RSA":       func() error { _, err := c.Sign("dev1", smallPub, nil, time.Hour); return err },
		"DSA":             func() error { _, err := c.Sign("dev1", dsaPub, nil, time.Hour); return err },
		"certificate":     func() error { _, err := c.Sign("dev1", cert, nil, time.Hour); return err },
		"zero validity":   func() error { _, err := c.Sign("dev1", hk, nil, 0); return err },
		"too long":        func() error { _, err := c.Sign("dev1", hk, nil, MaxValidity+time.Hour); return err },
		"empty principal": func() error { _, err := c.Sign("dev1", hk, []string{}, time.Hour); return err },
		"bad principal":   func() error { _, err := c.Sign("dev1", hk, []string{"a b"}, time.Hour); return err },
	} {
		if err := f(); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
	big, _ := rsa.GenerateKey(rand.Reader, 2048)
	bigPub, _ := ssh.NewPublicKey(&big.PublicKey)
	if _, err := c.Sign("dev1", bigPub, nil, time.Hour); err != nil {
		t.Fatalf("RSA-2048: %v", err)
	}
}

// fleet is an issuer over a real inventory with one device.
type fleet struct {
	inv    *inventory.Store
	issuer *Issuer
	now    time.Time
	mu     sync.Mutex
	sent   [][]byte
}

func newFleet(t *testing.T, d inventory.Device) *fleet {
	t.Helper()
	inv, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	if err := inv.PutDevice(t.Context(), &d); err != nil {
		t.Fatal(err)
	}
	f := &fleet{inv: inv, now: t0}
	// Current as the fleet judges it, by age here: a pass at most ten
	// minutes old.
	current := VerdictsFunc(func(id string) error {
		d, err := inv.Device(t.Context(), id)
		if err != nil {
			return err
		}
		if d.Attestation != wire.VerdictPass || f.now.Sub(d.LastAttested) > 10*time.Minute {
			return errors.New("no current passing attestation")
		}
		return nil
	})
	f.issuer, err = NewIssuer(IssuerConfig{CA: openCA(t, t.TempDir()), Devices: inv, Validity: 12 * time.Hour, Verdicts: current,
		Now: func() time.Time { return f.now },
		Send: func(deviceID, kind string, payload []byte) error {
			if deviceID != d.ID || kind != "ssh" {
				t.Errorf("sent to %s/%s", deviceID, kind)
			}
			f.mu.Lock()
			f.sent = append(f.sent, payload)
			f.mu.Unlock()
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestIssue(t *testing.T) {
	f := newFleet(t, inventory.Device{ID: "dev1", State: inventory.StateActive, Attestation: wire.VerdictPass, LastAttested: t0})
	hk := hostKey(t)
	res, err := f.issuer.Issue("dev1", []string{"ssh-ed25519 AAAAnotakey", authorized(hk), "ssh-dss AAAAB3NzaC1kc3MAAACBAP"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != wire.StatusActive || len(res.Certs) != 1 || res.Certs[0].Index != 1 || res.Validity != 12*3600 {
		t.Fatalf("result %+v", res)
	}
	if !strings.Contains(res.Message, "key 0") || !strings.Contains(res.Message, "key 2") {
		t.Fatalf("skipped keys not named: %q", res.Message)
	}
	if err := res.Validate(); err != nil {
		t.Fatalf("the answer does not pass the wire checks: %v", err)
	}
	pub, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(res.Certs[0].Cert))
	if err != nil {
		t.Fatal(err)
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok || cert.KeyId != "dev1" || comment != "dev1" || !bytes.Equal(cert.Key.Marshal(), hk.Marshal()) ||
		cert.ValidBefore != uint64(t0.Add(12*time.Hour).Unix()) {
		t.Fatalf("issued %T %+v", pub, cert)
	}
	evs, _ := f.inv.Events(t.Context(), "dev1", 5)
	if len(evs) == 0 || evs[0].Kind != "ssh-certificates" {
		t.Fatalf("events %+v", evs)
	}

	// Asked again at once: rate-limited; a little later: issued.
	if _, err := f.issuer.Issue("dev1", []string{authorized(hk)}); !isReason(err, wire.ReasonRateLimited) {
		t.Fatalf("immediate repeat: %v", err)
	}
	f.now = f.now.Add(DefaultMinInterval)
	if _, err := f.issuer.Issue("dev1", []string{authorized(hk)}); err != nil {
		t.Fatal(err)
	}
	f.now = f.now.Add(DefaultMinInterval)
	if _, err := f.issuer.Issue("dev1", []string{"ssh-ed25519 AAAAnotakey"}); !isReason(err, wire.ReasonBadRequest) {
		t.Fatalf("no usable key: %v", err)
	}
}

func isReason(err error, r wire.Reason) bool {
	var we *wire.Error
	return errors.As(err, &we) && we.Reason == r
}

// TestIssueRefusals: quarantined, pending or decommissioned devices and
// devices without a passing last attestation get nothing.
func TestIssueRefusals(t *testing.T) {
	hk := authorized(hostKey(t))
	for _, c := range []struct {
		dev  inventory.Device
		want wire.Reason
	}{
		{inventory.Device{ID: "dev1", State: inventory.StateQuarantined, Attestation: wire.VerdictPass}, wire.ReasonQuarantined},
		{inventory.Device{ID: "dev1", State: inventory.StatePending}, wire.ReasonQuarantined},
		{inventory.Device{ID: "dev1", State: inventory.StateDecommissioned, Attestation: wire.VerdictPass}, wire.ReasonQuarantined},
		{inventory.Device{ID: "dev1", State: inventory.StateActive, Attestation: wire.VerdictFail}, wire.ReasonAttestationFailed},
		{inventory.Device{ID: "dev1", State: inventory.StateActive}, wire.ReasonAttestationFailed},
	} {
		f := newFleet(t, c.dev)
		res, err := f.issuer.Issue("dev1", []string{hk})
		if !isReason(err, c.want) || res != nil {
			t.Errorf("%s/%q: got %v, %+v; want %s", c.dev.State, c.dev.Attestation, err, res, c.want)
		}
		if evs, _ := f.inv.Events(t.Context(), "dev1", 5); len(evs) != 0 {
			t.Errorf("%s: a refusal recorded %+v", c.dev.State, evs)
		}
	}
	f := newFleet(t, inventory.Device{ID: "dev1", State: inventory.StateActive, Attestation: wire.VerdictPass, LastAttested: t0})
	if _, err := f.issuer.Issue("ghost", []string{hk}); err == nil {
		t.Fatal("unknown device served")
	}
}

// TestHandle: a request on the wire gets an answer correlated to it; a
// refusal travels as a refused SSHCerts.
func TestHandle(t *testing.T) {
	f := newFleet(t, inventory.Device{ID: "dev1", State: inventory.StateActive, Attestation: wire.VerdictPass, LastAttested: t0})
	b, _ := wire.Encode(wire.TypeSSHRequest, nil, t0, &wire.SSHRequest{HostKeys: []string{authorized(hostKey(t))}})
	env, _ := wire.Decode(b)
	f.issuer.Handle("dev1", env)
	f.now = f.now.Add(time.Second)
	f.issuer.Handle("dev1", env) // rate-limited
	bad := *env
	bad.Body = []byte{0xa0}
	f.issuer.Handle("dev1", &bad)
	if len(f.sent) != 3 {
		t.Fatalf("%d answers", len(f.sent))
	}
	want := []struct {
		status string
		reason wire.Reason
	}{{wire.StatusActive, wire.ReasonOK}, {wire.StatusRefused, wire.ReasonRateLimited}, {wire.StatusRefused, wire.ReasonBadRequest}}
	for i, raw := range f.sent {
		ans, err := wire.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		var res wire.SSHCerts
		if err := wire.DecodeBody(ans, wire.TypeSSHCerts, &res); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ans.Corr, env.ID) || res.Status != want[i].status || res.Reason != want[i].reason {
			t.Errorf("answer %d: corr ok %v, %+v", i, bytes.Equal(ans.Corr, env.ID), res)
		}
	}
}

// foreignKey is a public key of a type the CA does not sign.
type foreignKey struct{ typ string }

func (k foreignKey) Type() string { return k.typ }
func (k foreignKey) Marshal() []byte {
	return ssh.Marshal(struct{ Name string }{k.typ})
}
func (k foreignKey) Verify([]byte, *ssh.Signature) error { return errors.New("foreign key") }

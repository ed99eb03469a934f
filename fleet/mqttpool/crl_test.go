package mqttpool_test

import (
	"context"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
)

// TestCRLSync: a newer CRL of the broker's CA replaces the broker's and
// reloads it; the same one changes nothing; an older one, one of another
// CA, an expired one (Mosquitto would refuse every client) and garbage
// are refused with ErrCRL and leave the broker's in place.
func TestCRLSync(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	fleetCA := openCA(t, func() time.Time { return clock() })
	otherCA := openCA(t, nil)
	dir := brokerDir(t, fleetCA)
	sign := func(c *ca.CA, serials ...string) []byte {
		var rs []ca.Revoked
		for _, s := range serials {
			rs = append(rs, ca.Revoked{Serial: s, Time: now})
		}
		validity := time.Hour
		if len(serials) == 1 && serials[0] == "expired" {
			rs, validity = nil, -time.Minute
		}
		der, err := c.CRL(rs, validity)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	first := sign(fleetCA)
	if err := os.WriteFile(filepath.Join(dir, mqttpool.CRLFile), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: first}), 0o644); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Second)
	newer := sign(fleetCA, "0a")
	var serve []byte
	reloads := 0
	s := &mqttpool.CRLSync{Dir: dir, Fetch: func(context.Context) ([]byte, error) { return serve, nil }, Reload: func() error { reloads++; return nil }}
	installed := func() []byte {
		b, err := os.ReadFile(filepath.Join(dir, mqttpool.CRLFile))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Fatalf("crl.pem is not PEM: %q", b)
		}
		return blk.Bytes
	}

	serve = newer
	if changed, err := s.Once(t.Context()); err != nil || !changed || reloads != 1 || string(installed()) != string(newer) {
		t.Fatalf("a newer CRL: changed %v, err %v, reloads %d", changed, err, reloads)
	}
	if changed, err := s.Once(t.Context()); err != nil || changed || reloads != 1 {
		t.Fatalf("the same CRL again: changed %v, err %v, reloads %d", changed, err, reloads)
	}
	now = now.Add(time.Second)
	expired := sign(fleetCA, "expired") // newer, but past its NextUpdate
	for name, b := range map[string][]byte{"older": first, "another CA's": sign(otherCA, "0b"), "garbage": []byte("not a CRL"), "expired": expired} {
		serve = b
		if changed, err := s.Once(t.Context()); !errors.Is(err, mqttpool.ErrCRL) || changed {
			t.Errorf("%s CRL: changed %v, err %v", name, changed, err)
		}
	}
	if reloads != 1 || string(installed()) != string(newer) {
		t.Fatalf("a refused CRL changed the broker's (reloads %d)", reloads)
	}
}

// openCA opens a new CA of the trust domain pool.test on the clock now
// (nil: time.Now).
func openCA(t *testing.T, now func() time.Time) *ca.CA {
	t.Helper()
	c, err := ca.Open(ca.Config{Dir: filepath.Join(t.TempDir(), "ca"), TrustDomain: "pool.test", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// brokerDir returns a new broker directory whose ca.pem trusts c's root.
func brokerDir(t *testing.T, c *ca.CA) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, mqttpool.CAFile), c.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

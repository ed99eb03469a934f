package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/fleet/mqttpool/mosquittotest"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestBrokerPoolCARotation: a CA rotation reaches the Mosquitto brokers
// of a pool through `sigil broker-sync` (each with an interval of an
// hour: the fleet's push carries it). After the new generation is
// activated, every device broker accepts a certificate of either
// generation (the overlap: both roots in its ca.pem, a CRL of each in its
// crl.pem); a revoked certificate of either generation is refused by
// every broker; after the old generation is retired, its certificates
// are refused and the new generation's still accepted. The retirement
// is refused while the brokers still present certificates of the old
// generation (the devices would refuse them), and made once each
// presents one of the new generation; the test's clients then verify the
// brokers with the reduced bundle, as devices do.
func TestBrokerPoolCARotation(t *testing.T) {
	p := startBrokerPool(t, nil)
	sigil, _ := buildBinaries(t)
	const (
		oldKept    = "feedface00000000feedface000000c1"
		oldRevoked = "feedface00000000feedface000000c2"
		newKept    = "feedface00000000feedface000000c3"
		newRevoked = "feedface00000000feedface000000c4"
	)
	type holder struct{ id, cert, key string }
	var certs = map[string]holder{}
	add := func(id string) {
		cert, key := p.fakeDevice(t, id)
		certs[id] = holder{id, cert, key}
	}
	add(oldKept)
	add(oldRevoked)
	for _, br := range p.dev {
		startProcess(t, sigil, "broker-sync", "--fleet", p.f.APIURL(), "--dir", br.Dir, "--interval", "1h",
			"--reload", fmt.Sprintf("kill -HUP %d", br.Pid()))
	}
	state := func(id string, accepted bool) {
		t.Helper()
		h := certs[id]
		for i, br := range p.dev {
			wait.Until(t, func() error {
				if ok, out := p.mqttConnects(t, br.Addr, h.cert, h.key, id); ok != accepted {
					return fmt.Errorf("broker %d: %s connects: %v, want %v:\n%s", i+1, id, ok, accepted, out)
				}
				return nil
			})
		}
	}
	state(oldKept, true)

	ctx := context.Background()
	c, err := p.f.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PrepareCA(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ActivateCA(ctx, 0); err != nil {
		t.Fatal(err)
	}
	// Certificates of the new generation, as the devices' renewals get
	// them now.
	p.ca = p.f.CA
	add(newKept)
	add(newRevoked)
	state(newKept, true)
	state(newRevoked, true)
	state(oldKept, true)
	state(oldRevoked, true)

	for _, id := range []string{oldRevoked, newRevoked} {
		if _, err := c.Revoke(ctx, id, "keyCompromise", "e2e: revoked during the overlap"); err != nil {
			t.Fatal(err)
		}
	}
	state(oldRevoked, false)
	state(newRevoked, false)
	state(oldKept, true)
	state(newKept, true)

	// The brokers' own certificates are still the old generation's: a
	// retirement now would have every device refuse every broker.
	var se *api.StatusError
	if _, err := c.RetireCA(ctx); !errors.As(err, &se) || se.Status != http.StatusConflict {
		t.Fatalf("retiring while the brokers present certificates of the old generation: %v; want 409", err)
	}
	reissueBrokerCerts(t, p.f.CA, append(slices.Clone(p.dev), p.boot)...)
	// SIGHUP is handled asynchronously: retry until every broker shows
	// its new certificate.
	wait.Until(t, func() error { _, err := c.RetireCA(ctx); return err })
	// The test's clients now verify the brokers as the devices do, with
	// the reduced trust bundle.
	var bundle []byte
	for _, der := range p.f.CA.TrustBundle() {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	p.trust = filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(p.trust, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	state(oldKept, false)
	state(newKept, true)
	state(newRevoked, false)
}

// reissueBrokerCerts issues each broker's certificate again with the
// issuer's active generation (what sigil broker-config writes) and has
// the broker reread it (SIGHUP, handled asynchronously).
func reissueBrokerCerts(t *testing.T, issuer *ca.CA, brokers ...*mosquittotest.Broker) {
	t.Helper()
	for _, br := range brokers {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := issuer.IssueServer([]string{"localhost", "127.0.0.1"}, k.Public(), 0)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		// Written in place: the files keep their owner and mode.
		if err := os.WriteFile(filepath.Join(br.Dir, mqttpool.KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(br.Dir, mqttpool.CertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(br.Pid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
}

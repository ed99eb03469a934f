package e2e

import (
	"context"
	"fmt"
	"testing"

	"github.com/sigil-iot/sigil/internal/wait"
)

// TestBrokerPoolCARotation: a CA rotation reaches the Mosquitto brokers
// of a pool through `sigil broker-sync` (each with an interval of an
// hour: the fleet's push carries it). After the new generation is
// activated, every device broker accepts a certificate of either
// generation (the overlap: both roots in its ca.pem, a CRL of each in its
// crl.pem); a revoked certificate of either generation is refused by
// every broker; after the old generation is retired, its certificates
// are refused and the new generation's still accepted.
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

	if _, err := c.RetireCA(ctx); err != nil {
		t.Fatal(err)
	}
	state(oldKept, false)
	state(newKept, true)
	state(newRevoked, false)
}

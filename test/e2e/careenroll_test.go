package e2e

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/sim/harness"
)

// rotateCA runs one CA rotation (prepare, activate, retire) while the
// device is online and waits until it holds only the new root and a
// certificate the new generation issued. It returns an API client that
// trusts the new root (the fleet's listeners present the new generation's
// certificates, cross-signed by the previous one only).
func rotateCA(t *testing.T, f *harness.Fleet, c *api.Client, d *harness.Device) *api.Client {
	t.Helper()
	ctx := context.Background()
	g, err := c.PrepareCA(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Wait(ctx, 20*time.Second, func(s agent.Status) bool { return len(s.TrustRoots) == 2 }); err != nil {
		t.Fatalf("the device did not learn the prepared root: %v", err)
	}
	if _, err := c.ActivateCA(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Wait(ctx, 30*time.Second, func(s agent.Status) bool { return s.Connected && s.CertIssuer == g.Subject }); err != nil {
		t.Fatalf("the device was not re-issued by generation %d: %v", g.N, err)
	}
	if _, err := c.RetireCA(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Wait(ctx, 20*time.Second, func(s agent.Status) bool {
		return s.Connected && len(s.TrustRoots) == 1 && s.TrustRoots[0] == g.Subject
	}); err != nil {
		t.Fatalf("the device kept the retired root: %v", err)
	}
	view, err := c.CA(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(view.BundlePEM)) {
		t.Fatalf("CA bundle: %q", view.BundlePEM)
	}
	return api.NewClient(f.APIURL(), f.AdminToken(), roots)
}

// TestReenrollWithTheHeldTrustBundle: a device follows two CA rotations
// online, so the root in its fleet_ca file no longer verifies the fleet's
// server certificate (a generation-3 certificate, cross-signed by
// generation 2). Refused (revoked), it enrolls again over a bootstrap
// connection verified with the roots it holds; and again once fleet_ca is
// removed, as docs/CONFIG.md allows after enrollment.
func TestReenrollWithTheHeldTrustBundle(t *testing.T) {
	f := startFleet(t, withEKCA(t, nil))
	dir := t.TempDir()
	fleetCA := filepath.Join(dir, "fleet-ca.pem")
	pemBytes, err := os.ReadFile(f.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fleetCA, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Dir: dir, Tweak: func(c *agentConfig) { c.EventLog = "-"; c.FleetCA = fleetCA }})
	waitConnected(t, d)
	c, _ := f.Client()
	c = rotateCA(t, f, c, d)
	c = rotateCA(t, f, c, d)

	ctx := context.Background()
	reenroll := func(why string) {
		t.Helper()
		st := d.Status()
		if _, err := c.Revoke(ctx, st.DeviceID, "superseded", "test"); err != nil {
			t.Fatal(err)
		}
		back, err := d.Wait(ctx, 45*time.Second, func(s agent.Status) bool { return s.Connected && s.CertSerial != st.CertSerial })
		if err != nil {
			t.Fatalf("%s: the device did not enroll again: %v", why, err)
		}
		if back.DeviceID != st.DeviceID || back.CertIssuer != st.CertIssuer {
			t.Fatalf("%s: enrolled again as %+v (was %+v)", why, back, st)
		}
	}
	reenroll("fleet_ca names generation 1")
	if err := os.Remove(fleetCA); err != nil {
		t.Fatal(err)
	}
	reenroll("fleet_ca removed")
}

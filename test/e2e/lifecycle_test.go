package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
)

func withEKCA(t testing.TB, more func(*server.Config)) func(*server.Config) {
	return func(c *server.Config) {
		c.EKCADir = ekCADir(t, vendorCA(t))
		if more != nil {
			more(c)
		}
	}
}

// tkPublicKey returns the public key of the transport key stored in dir.
func tkPublicKey(t testing.TB, uri, dir string) (*ecdsa.PublicKey, []byte) {
	id := readIdentity(t, dir)
	tp, err := tpm.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	pub, err := tp.PublicKey(&tpm.KeyBlob{Public: id.TK.Public, Private: id.TK.Private})
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*ecdsa.PublicKey), id.Cert
}

// TestRenewal: at RenewAt of its lifetime the device renews with a new TPM
// key certified by its AK and a fresh passing attestation; it switches once
// it connected with the new certificate, and the old one is then revoked.
func TestRenewal(t *testing.T) {
	f := startFleet(t, withEKCA(t, func(c *server.Config) { c.DeviceLifetime = config.Duration(8 * time.Second) }))
	inst := newTPM(t)
	dir := t.TempDir()
	noLog := func(c *agentConfig) { c.EventLog = "-"; c.RenewAt = 0.5 }
	d := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: noLog})
	first := waitConnected(t, d)
	d.Stop()
	key0, _ := tkPublicKey(t, inst.URI(), dir)

	d = startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: noLog})
	st, err := d.Wait(context.Background(), 30*time.Second, func(s agent.Status) bool {
		return s.Connected && s.CertSerial != "" && s.CertSerial != first.CertSerial
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { dev, _ := f.Inv.Device(t.Context(), st.DeviceID); return dev.IsRevoked(first.CertSerial) }, "the superseded certificate to be revoked")
	dev, _ := f.Inv.Device(t.Context(), st.DeviceID)
	if dev.CertSerial != st.CertSerial || dev.State != inventory.StateActive {
		t.Fatalf("inventory after renewal: %+v", dev)
	}
	evs, _ := f.Inv.Events(t.Context(), st.DeviceID, 20)
	if !slices.ContainsFunc(evs, func(e inventory.Event) bool { return e.Kind == "renewed" }) {
		t.Fatalf("no renewal event: %+v", evs)
	}
	d.Stop()
	key1, certDER := tkPublicKey(t, inst.URI(), dir)
	if key1.Equal(key0) {
		t.Fatal("renewal kept the old TPM key")
	}
	cert, _ := x509.ParseCertificate(certDER)
	if !cert.PublicKey.(*ecdsa.PublicKey).Equal(key1) || hex.EncodeToString(cert.SerialNumber.Bytes()) != st.CertSerial {
		t.Fatal("stored certificate is not the renewed one for the new key")
	}
	if n := f.Enroll.Stats().Requests.Load(); n != 1 {
		t.Fatalf("renewal went through enrollment (%d requests)", n)
	}
}

// TestRenewalRefusedOnFailingAttestation: with an alert-only policy the
// device stays active after tampering, but it gets no new certificate.
func TestRenewalRefusedOnFailingAttestation(t *testing.T) {
	f := startFleet(t, withEKCA(t, nil))
	inst := newTPM(t)
	d := startDevice(t, f, inst, harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	st := waitConnected(t, d)
	c, _ := f.Client()
	ctx := context.Background()
	firstVerdict(t, c, st.DeviceID)
	if _, err := c.LearnPolicy(ctx, api.LearnRequest{DeviceID: st.DeviceID, Name: "alert only", Action: "alert"}); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "tpm2_pcrextend", "-T", inst.TCTI(), "9:sha256="+strings.Repeat("ef", 32))
	job, err := c.StartRotation(ctx, api.RotationRequest{Selector: rotation.Selector{DeviceIDs: []string{st.DeviceID}}, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Wait(ctx, 20*time.Second, func(s agent.Status) bool { return strings.HasPrefix(s.LastReason, "attestation_failed") })
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := f.Inv.Device(ctx, st.DeviceID)
	if dev.CertSerial != st.CertSerial || dev.State != inventory.StateActive {
		t.Fatalf("device after refused renewal: %+v", dev)
	}
	j, _ := c.Rotation(ctx, job.ID)
	if j.Progress.Renewed != 0 || j.State != rotation.JobRunning {
		t.Fatalf("job %+v", j.Progress)
	}
}

// TestRevocationAndCRL: a revoked certificate is refused at the broker at
// once, listed in a CRL openssl accepts, and the device proves itself again
// from its EK; a decommissioned device is shut out.
func TestRevocationAndCRL(t *testing.T) {
	f := startFleet(t, withEKCA(t, nil))
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	st := waitConnected(t, d)
	c, _ := f.Client()
	ctx := context.Background()
	if _, err := c.Revoke(ctx, st.DeviceID, "keyCompromise", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Revoke(ctx, st.DeviceID, "bogus", ""); err == nil {
		t.Fatal("unknown reason accepted")
	}
	again, err := d.Wait(ctx, 30*time.Second, func(s agent.Status) bool { return s.Connected && s.CertSerial != st.CertSerial })
	if err != nil {
		t.Fatal(err)
	}
	der, err := c.CRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil || crl.CheckSignatureFrom(f.CA.Certificate()) != nil || crl.NextUpdate.Before(time.Now()) {
		t.Fatalf("CRL: %v", err)
	}
	var found bool
	for _, e := range crl.RevokedCertificateEntries {
		if hex.EncodeToString(e.SerialNumber.Bytes()) == st.CertSerial && e.ReasonCode == 1 {
			found = true
		}
	}
	if !found {
		t.Fatalf("revoked serial %s not in the CRL", st.CertSerial)
	}
	crlFile := filepath.Join(t.TempDir(), "crl.der")
	os.WriteFile(crlFile, der, 0o600)
	out := mustRun(t, "openssl", "crl", "-inform", "DER", "-in", crlFile, "-CAfile", f.CACertPath(), "-noout", "-text")
	if !strings.Contains(out, "verify OK") || !strings.Contains(out, strings.ToUpper(st.CertSerial)) {
		t.Fatalf("openssl crl:\n%s", out)
	}

	if _, err := c.Decommission(ctx, again.DeviceID, "retired"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Wait(ctx, 30*time.Second, func(s agent.Status) bool {
		return !s.Connected && strings.HasPrefix(s.LastReason, "decommissioned")
	}); err != nil {
		t.Fatal(err)
	}
	der2, _ := c.CRL(ctx)
	if bytes.Equal(der, der2) {
		t.Fatal("CRL not re-signed after another revocation")
	}
}

// TestForcedRotationResumes: a fleet-wide rotation with one device offline
// survives a fleet restart and completes when the device comes back.
func TestForcedRotationResumes(t *testing.T) {
	requireTools(t)
	cfg := server.Config{DataDir: t.TempDir(), MQTTAddr: freeAddr(t), APIAddr: freeAddr(t), EKCADir: ekCADir(t, vendorCA(t))}
	f, err := harness.StartFleet(context.Background(), cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	noLog := func(c *agentConfig) { c.EventLog = "-" }
	a := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: noLog})
	instB, dirB := newTPM(t), t.TempDir()
	b := startDevice(t, f, instB, harness.DeviceConfig{Dir: dirB, Tweak: noLog})
	sa, sb := waitConnected(t, a), waitConnected(t, b)
	b.Stop()
	c, _ := f.Client()
	ctx := context.Background()
	job, err := c.StartRotation(ctx, api.RotationRequest{Selector: rotation.Selector{All: true}, Rate: 5, Reason: "incident 42"})
	if err != nil {
		t.Fatal(err)
	}
	if job.Progress.Total != 2 {
		t.Fatalf("job %+v", job.Progress)
	}
	if _, err := a.Wait(ctx, 30*time.Second, func(s agent.Status) bool { return s.Connected && s.CertSerial != sa.CertSerial }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { j, err := c.Rotation(ctx, job.ID); return err == nil && j.Progress.Renewed == 1 }, "the online device's rotation to be counted")
	f.Stop()
	f, err = harness.StartFleet(context.Background(), cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	c, _ = f.Client()
	b = startDevice(t, f, instB, harness.DeviceConfig{Dir: dirB, Tweak: noLog})
	if _, err := b.Wait(ctx, 30*time.Second, func(s agent.Status) bool { return s.Connected && s.CertSerial != sb.CertSerial }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		j, err := c.Rotation(ctx, job.ID)
		return err == nil && j.State == rotation.JobDone && j.Progress.Renewed == 2
	}, "the job to finish after the restart")
}

// TestRecoveryAfterExpiry: a device offline past its certificate's lifetime
// proves itself again from its EK and AK without an operator.
func TestRecoveryAfterExpiry(t *testing.T) {
	f := startFleet(t, withEKCA(t, func(c *server.Config) { c.DeviceLifetime = config.Duration(3 * time.Second) }))
	inst := newTPM(t)
	dir := t.TempDir()
	tweak := func(c *agentConfig) { c.EventLog = "-"; c.RenewAt = 0.9 }
	d := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: tweak})
	st := waitConnected(t, d)
	d.Stop()
	// sleep: offline past the certificate's NotAfter, on the real clock of sigild and the fleet (the CA's one-minute backdating does not extend NotAfter)
	time.Sleep(time.Until(st.CertExpiry) + 500*time.Millisecond)
	d = startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: tweak})
	again, err := d.Wait(context.Background(), 30*time.Second, func(s agent.Status) bool { return s.Connected && s.CertSerial != st.CertSerial })
	if err != nil {
		t.Fatal(err)
	}
	if dev, _ := f.Inv.Device(t.Context(), st.DeviceID); dev.State != inventory.StateActive || dev.CertSerial != again.CertSerial {
		t.Fatalf("after recovery %+v", dev)
	}
}

// TestExpiryStorm: devices with very short certificates renew cycle after
// cycle, concurrently, without ever falling back to enrollment.
func TestExpiryStorm(t *testing.T) {
	f := startFleet(t, withEKCA(t, func(c *server.Config) { c.DeviceLifetime = config.Duration(3 * time.Second) }))
	const n = 4
	var devs []*harness.Device
	for range n {
		devs = append(devs, startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-"; c.RenewAt = 0.5 }}))
	}
	first := map[string]bool{}
	for _, d := range devs {
		first[waitConnected(t, d).CertSerial] = true
	}
	// Each device renews every ~1.5 s: wait until each held three
	// certificates, connected with each.
	seen := map[*harness.Device]map[string]bool{}
	wait.Until(t, func() error {
		var short []string
		for i, d := range devs {
			if seen[d] == nil {
				seen[d] = map[string]bool{}
			}
			if s := d.Status(); s.Connected {
				seen[d][s.CertSerial] = true
			}
			if len(seen[d]) < 3 {
				short = append(short, fmt.Sprintf("device %d held %d", i, len(seen[d])))
			}
		}
		if len(short) > 0 {
			return fmt.Errorf("certificates (want 3 each): %s", strings.Join(short, ", "))
		}
		return nil
	})
	for _, d := range devs {
		waitConnected(t, d)
	}
	if got := f.Enroll.Stats().Requests.Load(); got != n {
		t.Fatalf("%d enrollment requests for %d devices: some fell back to enrollment", got, n)
	}
}

// TestRenewalWhileFleetDown: the fleet is down when the device's renewal is
// due; the device keeps its working identity and renews once the fleet is
// back, without enrolling again.
func TestRenewalWhileFleetDown(t *testing.T) {
	requireTools(t)
	cfg := server.Config{DataDir: t.TempDir(), MQTTAddr: freeAddr(t), APIAddr: freeAddr(t), EKCADir: ekCADir(t, vendorCA(t)),
		DeviceLifetime: config.Duration(12 * time.Second)}
	f, err := harness.StartFleet(context.Background(), cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) {
		c.EventLog = "-"
		c.RenewAt = 0.5
		c.RetryMax = agent.Duration(time.Second)
	}})
	first := waitConnected(t, d)
	f.Stop() // renewal falls due (at 6 s) while the fleet is down
	// sleep: past the renewal point (half the 12 s lifetime) with the fleet down, on sigild's real clock
	time.Sleep(time.Until(first.CertExpiry.Add(-5 * time.Second)))
	if st := d.Status(); st.Connected || st.CertSerial != first.CertSerial {
		t.Fatalf("while the fleet was down: %+v", st)
	}
	f, err = harness.StartFleet(context.Background(), cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	st, err := d.Wait(context.Background(), 30*time.Second, func(s agent.Status) bool { return s.Connected && s.CertSerial != first.CertSerial })
	if err != nil {
		t.Fatal(err)
	}
	if n := f.Enroll.Stats().Requests.Load(); n != 0 {
		t.Fatalf("the device enrolled again (%d requests) instead of renewing", n)
	}
	if dev, _ := f.Inv.Device(t.Context(), st.DeviceID); dev.CertSerial != st.CertSerial {
		t.Fatalf("inventory %s, device %s", dev.CertSerial, st.CertSerial)
	}
}

// TestCARotation: prepare, activate and retire a new CA generation while
// one device is online and another sleeps through the whole overlap. The
// online device learns the new root, is re-issued by the new generation and
// drops the old root; the sleeper, whose certificate and roots are from the
// retired generation, still authenticates the fleet (cross certificate), is
// refused, and comes back by re-attestation from its EK.
func TestCARotation(t *testing.T) {
	f := startFleet(t, withEKCA(t, nil))
	noLog := func(c *agentConfig) { c.EventLog = "-" }
	a := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: noLog})
	instB, dirB := newTPM(t), t.TempDir()
	b := startDevice(t, f, instB, harness.DeviceConfig{Dir: dirB, Tweak: noLog})
	sa, sb := waitConnected(t, a), waitConnected(t, b)
	b.Stop()
	c, _ := f.Client()
	ctx := context.Background()
	gen1 := sa.CertIssuer

	g, err := c.PrepareCA(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Wait(ctx, 20*time.Second, func(s agent.Status) bool { return len(s.TrustRoots) == 2 }); err != nil {
		t.Fatalf("online device did not learn the prepared root: %v", err)
	}
	if _, err := c.PrepareCA(ctx); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("second prepare: %v", err)
	}

	act, err := c.ActivateCA(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	if act.Generation.N != g.N || act.Rotation == nil || act.Rotation.Progress.Total != 2 {
		t.Fatalf("activate: %+v", act)
	}
	reissued, err := a.Wait(ctx, 30*time.Second, func(s agent.Status) bool {
		return s.Connected && s.CertSerial != sa.CertSerial && s.CertIssuer == g.Subject
	})
	if err != nil {
		t.Fatalf("online device was not re-issued by the new generation: %v", err)
	}

	if _, err := c.RetireCA(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Wait(ctx, 20*time.Second, func(s agent.Status) bool {
		return len(s.TrustRoots) == 1 && s.TrustRoots[0] == g.Subject && s.Connected
	}); err != nil {
		t.Fatalf("online device kept the retired root: %v", err)
	}
	view, err := c.CA(ctx)
	if err != nil || len(view.Generations) != 2 || view.Generations[0].State != "retired" || strings.Count(view.BundlePEM, "BEGIN CERTIFICATE") != 1 {
		t.Fatalf("CA view %+v %v", view, err)
	}

	// The sleeper wakes up with generation-1 everything.
	b = startDevice(t, f, instB, harness.DeviceConfig{Dir: dirB, Tweak: noLog})
	back, err := b.Wait(ctx, 45*time.Second, func(s agent.Status) bool {
		return s.Connected && s.CertIssuer == g.Subject
	})
	if err != nil {
		t.Fatalf("offline device did not recover after the retirement: %v", err)
	}
	if back.DeviceID != sb.DeviceID || sb.CertIssuer != gen1 || back.CertSerial == sb.CertSerial {
		t.Fatalf("recovered as %+v (was %+v)", back, sb)
	}
	if len(back.TrustRoots) != 1 || back.TrustRoots[0] != g.Subject {
		t.Fatalf("recovered device trusts %v", back.TrustRoots)
	}
	if dev, _ := f.Inv.Device(ctx, sb.DeviceID); dev.State != inventory.StateActive || dev.CertSerial != back.CertSerial {
		t.Fatalf("inventory after recovery: %+v", dev)
	}
	if dev, _ := f.Inv.Device(ctx, sa.DeviceID); dev.CertSerial != reissued.CertSerial {
		t.Fatalf("online device's inventory: %+v", dev)
	}
}

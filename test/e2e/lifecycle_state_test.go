package e2e

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// TestManualApprovalSecondSerial: under manual_approval a TPM no operator
// approved asks with one serial, then with another, then with the first
// again. It is not taken for its own clone, its record stays pending (a
// quarantined EK would count as known) and it never gets a certificate.
func TestManualApprovalSecondSerial(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.ManualApproval = true })
	k := newKit(t, newTPM(t))
	ask := func(clientID, serial string) *wire.EnrollResult {
		t.Helper()
		r := dialRaw(t, f, clientID)
		corr := r.send(wire.TypeEnrollRequest, nil, k.request(serial, ""))
		ch := r.challenge(corr)
		corr = r.send(wire.TypeEnrollProof, nil, k.answer(ch))
		res := r.result(corr)
		r.conn.Close()
		return res
	}
	for i, serial := range []string{"SN-A", "SN-B", "SN-A"} {
		res := ask("e-ask-"+string(rune('0'+i)), serial)
		if res.Status != wire.StatusPending || len(res.Certificate) != 0 {
			t.Fatalf("request %d (%s) of a never-approved TPM: %s %s %q", i+1, serial, res.Status, res.Reason, res.Message)
		}
	}
	d, err := f.Inv.Device(t.Context(), k.id)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != inventory.StatePending || d.CertSerial != "" || d.Serial != "SN-A" {
		t.Fatalf("the pending record became %s (certificate %q, serial %q)", d.State, d.CertSerial, d.Serial)
	}
}

// TestRenewedAwayCertificateRefused: a device renews over its session
// (the fleet issues a second certificate) and is quarantined before it
// connects with the new one. Both certificates are revoked and listed in
// the CRL; the renewed-away one is refused by the broker (it used to
// connect, limited to attestation, and then survive a decommissioning
// whose failing evidence moved the device back to quarantined, from which
// it enrolled again). Decommissioned, the device stays out for good.
func TestRenewedAwayCertificateRefused(t *testing.T) {
	f := startFleet(t, withEKCA(t, nil))
	inst, dir := newTPM(t), t.TempDir()
	noLog := func(c *agentConfig) { c.EventLog = "-" }
	d := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: noLog})
	st := waitConnected(t, d)
	d.Stop()
	first := readIdentity(t, dir)
	second := renewRaw(t, f, inst, first)
	dev, _ := f.Inv.Device(t.Context(), st.DeviceID)
	if dev.CertSerial != second || second == st.CertSerial {
		t.Fatalf("after the raw renewal the fleet holds %s (renewed %s, first %s)", dev.CertSerial, second, st.CertSerial)
	}

	c, _ := f.Client()
	ctx := context.Background()
	var out api.Device
	if err := c.Do(ctx, "POST", "/api/v1/devices/"+st.DeviceID+"/quarantine", api.QuarantineRequest{Justification: "odd traffic"}, &out); err != nil {
		t.Fatal(err)
	}
	der, err := c.CRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	crlFile := filepath.Join(t.TempDir(), "crl.der")
	if err := os.WriteFile(crlFile, der, 0o600); err != nil {
		t.Fatal(err)
	}
	text := mustRun(t, "openssl", "crl", "-inform", "DER", "-in", crlFile, "-CAfile", f.CACertPath(), "-noout", "-text")
	for _, s := range []string{st.CertSerial, second} {
		if !strings.Contains(text, strings.ToUpper(s)) {
			t.Errorf("serial %s of the quarantined device is not in the CRL", s)
		}
	}

	conn, err := dialAs(t, f, inst.URI(), first)
	if err == nil {
		t.Errorf("the renewed-away certificate %s connected after the quarantine", st.CertSerial)
		// What it used to lead to: decommissioning skipped the disconnect,
		// and failing evidence over this session undid it.
		if _, err := c.Decommission(ctx, st.DeviceID, "retired"); err != nil {
			t.Fatal(err)
		}
		failingEvidence(t, conn, inst, first)
		conn.Close()
	} else if _, err := c.Decommission(ctx, st.DeviceID, "retired"); err != nil {
		t.Fatal(err)
	}

	d = startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: noLog})
	if _, err := d.Wait(ctx, 30*time.Second, func(s agent.Status) bool {
		return !s.Connected && strings.HasPrefix(s.LastReason, "decommissioned")
	}); err != nil {
		t.Fatalf("the decommissioned device was not refused as decommissioned: %v (%+v)", err, d.Status())
	}
	if dev, _ := f.Inv.Device(ctx, st.DeviceID); dev.State != inventory.StateDecommissioned {
		t.Fatalf("the decommissioned device is %s again", dev.State)
	}
}

// TestOperatorRevokeRefusesRenewedAwayCertificate: a device renews over
// its session (the fleet issues a second certificate) and an operator
// revokes the device through the API before it connects with the new one.
// Both certificates are revoked and listed in the CRL (read with openssl);
// the renewed-away one, which used to stay admitted because only the
// current serial was revoked, is refused by the broker. The device keeps
// its identity: it proves itself again from its EK and connects with a
// third certificate.
func TestOperatorRevokeRefusesRenewedAwayCertificate(t *testing.T) {
	f := startFleet(t, withEKCA(t, nil))
	inst, dir := newTPM(t), t.TempDir()
	noLog := func(c *agentConfig) { c.EventLog = "-" }
	d := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: noLog})
	st := waitConnected(t, d)
	d.Stop()
	first := readIdentity(t, dir)
	second := renewRaw(t, f, inst, first)

	c, _ := f.Client()
	ctx := context.Background()
	if _, err := c.Revoke(ctx, st.DeviceID, "keyCompromise", "stolen gateway"); err != nil {
		t.Fatal(err)
	}
	der, err := c.CRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	crlFile := filepath.Join(t.TempDir(), "crl.der")
	if err := os.WriteFile(crlFile, der, 0o600); err != nil {
		t.Fatal(err)
	}
	text := mustRun(t, "openssl", "crl", "-inform", "DER", "-in", crlFile, "-CAfile", f.CACertPath(), "-noout", "-text")
	for _, s := range []string{st.CertSerial, second} {
		if !strings.Contains(text, strings.ToUpper(s)) {
			t.Errorf("serial %s of the revoked device is not in the CRL", s)
		}
	}
	if conn, err := dialAs(t, f, inst.URI(), first); err == nil {
		conn.Close()
		t.Fatalf("the renewed-away certificate %s connected after the device was revoked", st.CertSerial)
	}

	d = startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: noLog})
	again := waitConnected(t, d)
	if again.DeviceID != st.DeviceID || again.CertSerial == st.CertSerial || again.CertSerial == second {
		t.Fatalf("after the revocation the device connected as %s with %s (first %s, renewed %s)", again.DeviceID, again.CertSerial, st.CertSerial, second)
	}
}

// TestBrokerRefusesUnissuedFleetCertificate: a certificate the fleet CA
// signed for an active device's ID, but never issued to it, is refused by
// the broker (mosquitto_pub); the device's own keeps working.
func TestBrokerRefusesUnissuedFleetCertificate(t *testing.T) {
	f := startFleet(t, withEKCA(t, nil))
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	id := waitConnected(t, d).DeviceID
	certFile, keyFile := softwareIdentity(t, f, id)
	if out, err := publish(t, f, "sigil/v1/dev/"+id+"/up/hello", "-i", id, "--cert", certFile, "--key", keyFile); err == nil {
		t.Fatalf("a fleet certificate never issued to %s connected: %s", id, out)
	}
	if dev, _ := f.Inv.Device(t.Context(), id); dev.State != inventory.StateActive {
		t.Fatalf("device %s", dev.State)
	}
	waitConnected(t, d)
}

// renewRaw renews the device's certificate over a session of its current
// one, as sigild does, without ever connecting with the new certificate;
// it returns the new serial.
func renewRaw(t *testing.T, f *harness.Fleet, inst *swtpm.Instance, id *state.Identity) string {
	t.Helper()
	conn, err := dialAs(t, f, inst.URI(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	ak := &tpm.KeyBlob{Public: id.AK.Public, Private: id.AK.Private}
	tk, err := tp.CreateTransportKey()
	if err != nil {
		t.Fatal(err)
	}
	ch := challengeOver(t, conn, id.DeviceID, wire.PurposeRenew)
	ev := &wire.AttestEvidence{Nonce: ch.Nonce, Firmware: "1.0.0"}
	for _, sel := range ch.Selections {
		q, err := tp.Quote(ak, ch.Nonce, sel)
		if err != nil {
			t.Fatal(err)
		}
		ev.Quotes = append(ev.Quotes, *q)
	}
	info, sig, err := tp.Certify(ak, tk, ch.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := tp.Signer(tk)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.DeviceID}, SignatureAlgorithm: x509.ECDSAWithSHA256}, signer)
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan *wire.RenewResult, 1)
	var topics wire.Topics
	if err := conn.Subscribe(context.Background(), topics.DeviceDown(id.DeviceID, "cert"), func(_ string, p []byte) {
		var res wire.RenewResult
		if env, err := wire.Decode(p); err == nil && wire.DecodeBody(env, wire.TypeRenewResult, &res) == nil {
			results <- &res
		}
	}); err != nil {
		t.Fatal(err)
	}
	b, err := wire.Encode(wire.TypeRenewRequest, nil, time.Now(), &wire.RenewRequest{Nonce: ch.Nonce, TKPublic: tk.Public, CertifyInfo: info, CertifySig: sig, CSR: csr, Evidence: *ev})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Publish(context.Background(), topics.DeviceUp(id.DeviceID, "renew"), b); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-results:
		if res.Status != wire.StatusActive {
			t.Fatalf("renewal refused: %s %q", res.Reason, res.Message)
		}
		cert, err := x509.ParseCertificate(res.Certificate)
		if err != nil {
			t.Fatal(err)
		}
		return hex.EncodeToString(cert.SerialNumber.Bytes())
	case <-time.After(20 * time.Second):
		t.Fatal("no renewal result")
		return ""
	}
}

// challengeOver asks for an attestation challenge of purpose over a device
// session and returns it.
func challengeOver(t *testing.T, conn *link.Conn, deviceID, purpose string) *wire.AttestChallenge {
	t.Helper()
	var topics wire.Topics
	got := make(chan *wire.AttestChallenge, 4)
	if err := conn.Subscribe(context.Background(), topics.DeviceDown(deviceID, "attest"), func(_ string, p []byte) {
		var ch wire.AttestChallenge
		if env, err := wire.Decode(p); err == nil && wire.DecodeBody(env, wire.TypeAttestChallenge, &ch) == nil {
			got <- &ch
		}
	}); err != nil {
		t.Fatal(err)
	}
	b, _ := wire.Encode(wire.TypeAttestRequest, nil, time.Now(), &wire.AttestRequest{Reason: purpose})
	if err := conn.Publish(context.Background(), topics.DeviceUp(deviceID, "attest"), b); err != nil {
		t.Fatal(err)
	}
	want := "" // a challenge carries a purpose only for renewals
	if purpose == wire.PurposeRenew {
		want = purpose
	}
	for {
		select {
		case ch := <-got:
			if ch.Purpose == want {
				return ch
			}
		case <-time.After(20 * time.Second):
			t.Fatal("no attestation challenge")
			return nil
		}
	}
}

// failingEvidence answers a fresh challenge over conn with a quote over
// another nonce (evidence that fails verification) and waits until it
// was judged.
func failingEvidence(t *testing.T, conn *link.Conn, inst *swtpm.Instance, id *state.Identity) {
	t.Helper()
	var topics wire.Topics
	verdicts := make(chan string, 4)
	if err := conn.Subscribe(context.Background(), topics.DeviceDown(id.DeviceID, "verdict"), func(_ string, p []byte) {
		var v wire.AttestVerdict
		if env, err := wire.Decode(p); err == nil && wire.DecodeBody(env, wire.TypeAttestVerdict, &v) == nil {
			verdicts <- v.Result
		}
	}); err != nil {
		t.Fatal(err)
	}
	ch := challengeOver(t, conn, id.DeviceID, "schedule")
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	ev := &wire.AttestEvidence{Nonce: ch.Nonce, Firmware: "1.0.0"}
	for _, sel := range ch.Selections {
		q, err := tp.Quote(&tpm.KeyBlob{Public: id.AK.Public, Private: id.AK.Private}, make([]byte, 32), sel)
		if err != nil {
			t.Fatal(err)
		}
		ev.Quotes = append(ev.Quotes, *q)
	}
	b, _ := wire.Encode(wire.TypeAttestEvidence, nil, time.Now(), ev)
	if err := conn.Publish(context.Background(), topics.DeviceUp(id.DeviceID, "attest"), b); err != nil {
		t.Fatal(err)
	}
	select {
	case <-verdicts:
	case <-conn.Done(): // a quarantine closes the session before the verdict is sent
	case <-time.After(20 * time.Second):
		t.Fatal("no verdict for the failing evidence")
	}
}

package conformance

import (
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// outbox keeps what a fleet service sends, by recipient.
type outbox struct {
	mu   sync.Mutex
	sent map[string][]*wire.Envelope
}

func (o *outbox) send(to, _ string, b []byte) error {
	env, err := wire.Decode(b)
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.sent == nil {
		o.sent = map[string][]*wire.Envelope{}
	}
	o.sent[to] = append(o.sent[to], env)
	return nil
}

// last decodes the last message sent to to, which must be of type typ.
func (o *outbox) last(t *testing.T, to, typ string, body any) {
	t.Helper()
	o.mu.Lock()
	envs := o.sent[to]
	o.mu.Unlock()
	if len(envs) == 0 {
		t.Fatalf("nothing sent to %s", to)
	}
	env := envs[len(envs)-1]
	if env.Type != typ {
		var res wire.EnrollResult
		if wire.DecodeBody(env, wire.TypeEnrollResult, &res) == nil {
			t.Fatalf("fleet answered %s: %v: %s", res.Status, res.Reason, res.Message)
		}
		t.Fatalf("fleet sent %s, want %s", env.Type, typ)
	}
	if err := wire.DecodeBody(env, typ, body); err != nil {
		t.Fatal(err)
	}
}

func encode(t *testing.T, typ string, body any) []byte {
	t.Helper()
	b, err := wire.Encode(typ, nil, time.Now(), body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pcr16Policy is a reference policy that expects one value of PCR 16.
type pcr16Policy struct{ p *policy.Policy }

func (p pcr16Policy) Choose(context.Context, string, string, string) (policy.Choice, error) {
	return policy.Choice{Policy: p.p, Action: policy.ActionQuarantine, Covered: true}, nil
}

// testEnrollAndAttest enrolls device A with the fleet's enrollment service
// (fleet/enroll: EK chain, AK and transport key checks, credential
// activation, certify, CSR, first quote) as sigild does, then attests it
// with the fleet's attestation service (fleet/attest) against a reference
// policy on PCR 16: it passes, fails once PCR 16 changes, and passes again
// after a reboot that the fleet notices from the TPM's reset counter.
func testEnrollAndAttest(t *testing.T, e *env) {
	if err := e.a.Reboot(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	inv, err := inventory.Open(filepath.Join(dir, "inventory.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), TrustDomain: "conformance.sigil.local"})
	if err != nil {
		t.Fatal(err)
	}
	var out outbox
	svc, err := enroll.New(enroll.Config{CA: fleetCA, Inventory: inv, Trust: e.trust(), Send: out.send,
		Selection: sha256Sel(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 16)})
	if err != nil {
		t.Fatal(err)
	}

	// The request, as sigild builds it.
	ek, err := e.a.EK()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := e.a.Signer(e.tkA)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "conformance"}}, signer)
	if err != nil {
		t.Fatal(err)
	}
	const client = "bootstrap-1"
	svc.Handle(client, encode(t, wire.TypeEnrollRequest, &wire.EnrollRequest{
		EKPublic: ek.Public, EKCert: ek.Cert, AKPublic: e.akA.Public, TKPublic: e.tkA.Public, CSR: csr,
		Model: "conformance-gw", Firmware: "1.0.0",
	}))
	var ch wire.EnrollChallenge
	out.last(t, client, wire.TypeEnrollChallenge, &ch)

	// The proof.
	secret, err := e.a.ActivateCredential(e.akA, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(ch.Session)
	mac.Write(ch.Nonce)
	certifyInfo, certifySig, err := e.a.Certify(e.akA, e.tkA, ch.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	q, err := e.a.Quote(e.akA, ch.Nonce, ch.Selection)
	if err != nil {
		t.Fatal(err)
	}
	svc.Handle(client, encode(t, wire.TypeEnrollProof, &wire.EnrollProof{
		Session: ch.Session, Activation: mac.Sum(nil), CertifyInfo: certifyInfo, CertifySig: certifySig, Quote: *q,
	}))
	var res wire.EnrollResult
	out.last(t, client, wire.TypeEnrollResult, &res)
	if res.Status != wire.StatusActive {
		t.Fatalf("enrollment: %s: %v: %s", res.Status, res.Reason, res.Message)
	}
	cert, err := x509.ParseCertificate(res.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	if !signer.Public().(*ecdsa.PublicKey).Equal(cert.PublicKey) {
		t.Fatal("the device certificate is not for the transport key")
	}

	// Attestation against a policy that expects PCR 16's current value.
	values, err := e.a.ReadPCRs(sha256Sel(16))
	if err != nil {
		t.Fatal(err)
	}
	hist, err := attest.OpenHistory(filepath.Join(dir, "attest.db"), 100)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hist.Close() })
	noLog := false
	pol := &policy.Policy{ID: "pcr16", Name: "PCR 16", Action: policy.ActionAlert,
		PCRs: map[string]map[int]string{"sha256": {16: hex.EncodeToString(values[0])}}}
	att, err := attest.New(attest.Config{Inventory: inv, History: hist, Send: out.send, Disconnect: func(string) {},
		Alert: func(attest.Alert) {}, Policies: pcr16Policy{pol}, EventLog: &noLog,
		Selections: []wire.PCRSelection{sha256Sel(0, 7, 14, 16)}})
	if err != nil {
		t.Fatal(err)
	}
	judge := func(want string) *attest.Record {
		t.Helper()
		// Judge takes evidence as a renewal carries it: ask for a nonce
		// for that purpose, as sigild does before renewing.
		raw, err := wire.Encode(wire.TypeAttestRequest, nil, time.Now(), &wire.AttestRequest{Reason: wire.PurposeRenew})
		if err != nil {
			t.Fatal(err)
		}
		env, err := wire.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		att.Submit(res.DeviceID, env, raw)
		var ch wire.AttestChallenge
		out.last(t, res.DeviceID, wire.TypeAttestChallenge, &ch)
		ev := &wire.AttestEvidence{Nonce: ch.Nonce, Firmware: "1.0.0"}
		for _, sel := range ch.Selections {
			q, err := e.a.Quote(e.akA, ch.Nonce, sel)
			if err != nil {
				t.Fatal(err)
			}
			ev.Quotes = append(ev.Quotes, *q)
		}
		rec, err := att.Judge(res.DeviceID, ev)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Result != want {
			t.Fatalf("attestation %s (%s: %s), want %s", rec.Result, rec.Reason, rec.Message, want)
		}
		return rec
	}
	judge(wire.VerdictPass)
	d := sha256.Sum256([]byte("unexpected kernel"))
	if err := e.a.ExtendPCR(16, d[:]); err != nil {
		t.Fatal(err)
	}
	if rec := judge(wire.VerdictFail); rec.Code != wire.ReasonPolicyViolation {
		t.Fatalf("attestation after PCR 16 changed: %s, want a policy violation", rec.Reason)
	}
	if err := e.a.Reboot(); err != nil {
		t.Fatal(err)
	}
	if rec := judge(wire.VerdictPass); !rec.Rebooted {
		t.Error("the fleet did not see the reboot in the TPM's reset counter")
	}
}

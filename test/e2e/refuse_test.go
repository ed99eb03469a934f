package e2e

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// Each refusal: the device gets the reason code and the inventory does not
// change.

func TestRefuseEKFromUntrustedCA(t *testing.T) {
	// The fleet trusts another vendor's CA (a second swtpm EK CA).
	other, err := swtpm.NewCA(filepath.Join(t.TempDir(), "other-vendor"))
	if err != nil {
		t.Fatal(err)
	}
	inst, err := swtpm.Start(context.Background(), swtpm.Options{StateDir: t.TempDir(), CA: other})
	if err != nil {
		t.Fatal(err)
	}
	inst.Stop()
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, other) })
	before := inventorySnapshot(t, f)
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{})
	st := waitReason(t, d, "untrusted_ek")
	if st.Enrollment == "enrolled" || st.Connected {
		t.Fatalf("status %+v", st)
	}
	assertUnchanged(t, f, before)
}

func TestRefuseUnknownEKWithoutToken(t *testing.T) {
	f := startFleet(t, nil)
	before := inventorySnapshot(t, f)
	waitReason(t, startDevice(t, f, newTPM(t), harness.DeviceConfig{}), "unknown_ek")
	assertUnchanged(t, f, before)
}

func TestRefuseTokens(t *testing.T) {
	f := startFleet(t, nil)
	client, _ := f.Client()
	ctx := context.Background()
	used, err := client.CreateToken(ctx, "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	first := startDevice(t, f, newTPM(t), harness.DeviceConfig{Token: used.Token})
	waitConnected(t, first)
	before := inventorySnapshot(t, f)

	expired, _, err := f.Inv.CreateToken(ctx, inventory.Grant{}, "", time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond) // sleep: past the token's 1 ms lifetime, on the fleet's real clock
	bound, err := client.CreateToken(ctx, "other-model", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ token, reason string }{
		{used.Token, "token_used"},
		{expired, "token_expired"},
		{bound.Token, "token_binding"},
		{"sgt_" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "token_invalid"},
	}
	for _, c := range cases {
		t.Run(c.reason, func(t *testing.T) {
			waitReason(t, startDevice(t, f, newTPM(t), harness.DeviceConfig{Token: c.token}), c.reason)
			assertUnchanged(t, f, before)
		})
	}
}

// swtpmTransport is a bare TPM connection for building keys the product
// refuses to create.
type swtpmTransport struct{ c net.Conn }

func (s *swtpmTransport) Send(cmd []byte) ([]byte, error) {
	if _, err := s.c.Write(cmd); err != nil {
		return nil, err
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.c, hdr); err != nil {
		return nil, err
	}
	rsp := make([]byte, binary.BigEndian.Uint32(hdr[2:6]))
	copy(rsp, hdr)
	_, err := io.ReadFull(s.c, rsp[10:])
	return rsp, err
}

// rogueKey creates an ECC P-256 signing key under the device's SRK with
// attributes edited by edit — a key sigild would never make.
func rogueKey(t testing.TB, inst *swtpm.Instance, edit func(*tpm2.TPMAObject)) *tpm.KeyBlob {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", inst.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tr := &swtpmTransport{c}
	srk := tpm2.TPMHandle(0x81000001)
	rp, err := tpm2.ReadPublic{ObjectHandle: srk}.Execute(tr)
	if err != nil {
		t.Fatal(err)
	}
	attrs := tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, NoDA: true, Restricted: true, SignEncrypt: true}
	edit(&attrs)
	tmpl := tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256, KDF: tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: srk, Name: rp.Name, Auth: tpm2.PasswordAuth(nil)},
		InPublic:     tpm2.New2B(tmpl),
	}.Execute(tr)
	if err != nil {
		t.Fatalf("create rogue key: %v", err)
	}
	return &tpm.KeyBlob{Public: rsp.OutPublic.Bytes(), Private: rsp.OutPrivate.Buffer}
}

// TestRefuseForgedEvidence drives enrollment by hand and sends what a faulty
// or hostile device would.
func TestRefuseForgedEvidence(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	inst := newTPM(t)
	k := newKit(t, inst)
	before := inventorySnapshot(t, f)
	n := 0
	session := func() *raw { n++; return dialRaw(t, f, fmt.Sprintf("e-forged-%d", n)) }

	t.Run("AK without restricted", func(t *testing.T) {
		r := session()
		req := k.request("SN-F", "")
		req.AKPublic = rogueKey(t, inst, func(a *tpm2.TPMAObject) { a.Restricted = false }).Public
		wantRefusal(t, r.result(r.send(wire.TypeEnrollRequest, nil, req)), wire.ReasonAKAttributes)
	})
	t.Run("AK without fixedTPM", func(t *testing.T) {
		r := session()
		req := k.request("SN-F", "")
		req.AKPublic = rogueKey(t, inst, func(a *tpm2.TPMAObject) { a.FixedTPM = false; a.FixedParent = false }).Public
		wantRefusal(t, r.result(r.send(wire.TypeEnrollRequest, nil, req)), wire.ReasonAKAttributes)
	})
	t.Run("transport key that can leave the TPM", func(t *testing.T) {
		r := session()
		req := k.request("SN-F", "")
		req.TKPublic = rogueKey(t, inst, func(a *tpm2.TPMAObject) { a.Restricted = false; a.FixedTPM = false; a.FixedParent = false }).Public
		wantRefusal(t, r.result(r.send(wire.TypeEnrollRequest, nil, req)), wire.ReasonTKAttributes)
	})
	t.Run("CSR key is not the certified key", func(t *testing.T) {
		other, err := k.tpm.CreateTransportKey()
		if err != nil {
			t.Fatal(err)
		}
		r := session()
		req := k.request("SN-F", "")
		req.CSR = k.csr(other)
		ch := r.challenge(r.send(wire.TypeEnrollRequest, nil, req))
		wantRefusal(t, r.result(r.send(wire.TypeEnrollProof, nil, k.answer(ch))), wire.ReasonCSRKeyMismatch)
	})
	t.Run("certify over a different key", func(t *testing.T) {
		other, err := k.tpm.CreateTransportKey()
		if err != nil {
			t.Fatal(err)
		}
		r := session()
		ch := r.challenge(r.send(wire.TypeEnrollRequest, nil, k.request("SN-F", "")))
		proof := k.answer(ch)
		proof.CertifyInfo, proof.CertifySig, err = k.tpm.Certify(k.ak, other, ch.Nonce)
		if err != nil {
			t.Fatal(err)
		}
		wantRefusal(t, r.result(r.send(wire.TypeEnrollProof, nil, proof)), wire.ReasonCertifyInvalid)
	})
	t.Run("certify with another nonce", func(t *testing.T) {
		r := session()
		ch := r.challenge(r.send(wire.TypeEnrollRequest, nil, k.request("SN-F", "")))
		proof := k.answer(ch)
		stale := make([]byte, 32)
		rand.Read(stale)
		var err error
		proof.CertifyInfo, proof.CertifySig, err = k.tpm.Certify(k.ak, k.tk, stale)
		if err != nil {
			t.Fatal(err)
		}
		wantRefusal(t, r.result(r.send(wire.TypeEnrollProof, nil, proof)), wire.ReasonCertifyInvalid)
	})
	t.Run("quote over other PCRs than asked", func(t *testing.T) {
		r := session()
		ch := r.challenge(r.send(wire.TypeEnrollRequest, nil, k.request("SN-F", "")))
		proof := k.answer(ch)
		q, err := k.tpm.Quote(k.ak, ch.Nonce, wire.PCRSelection{Hash: ch.Selection.Hash, PCRs: []int{16}})
		if err != nil {
			t.Fatal(err)
		}
		proof.Quote = *q
		wantRefusal(t, r.result(r.send(wire.TypeEnrollProof, nil, proof)), wire.ReasonQuoteInvalid)
	})
	t.Run("proof from another client", func(t *testing.T) {
		r := session()
		ch := r.challenge(r.send(wire.TypeEnrollRequest, nil, k.request("SN-F", "")))
		thief := session()
		wantRefusal(t, thief.result(thief.send(wire.TypeEnrollProof, nil, k.answer(ch))), wire.ReasonChallengeExpired)
	})
	assertUnchanged(t, f, before)
}

// TestRefuseActivationFromAnotherTPM: a second TPM presents the first one's
// EK (public area and genuine certificate) with its own AK. The credential is
// encrypted to the first TPM's EK, so the second cannot recover the secret,
// and a guessed answer is refused.
func TestRefuseActivationFromAnotherTPM(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	victim := newKit(t, newTPM(t))
	thief := newKit(t, newTPM(t))
	before := inventorySnapshot(t, f)
	r := dialRaw(t, f, "e-thief")
	req := thief.request("SN-VICTIM", "")
	req.EKPublic, req.EKCert = victim.ek.Public, victim.ek.Cert
	ch := r.challenge(r.send(wire.TypeEnrollRequest, nil, req))
	if secret, err := thief.tpm.ActivateCredential(thief.ak, ch.CredentialBlob, ch.EncryptedSecret); err == nil {
		t.Fatalf("a second TPM recovered the credential secret (%d bytes)", len(secret))
	}
	guess := make([]byte, 32)
	rand.Read(guess)
	proof := thief.prove(ch, guess)
	wantRefusal(t, r.result(r.send(wire.TypeEnrollProof, nil, proof)), wire.ReasonActivationFailed)
	assertUnchanged(t, f, before)
}

// TestRefuseReplay: a complete, genuine enrollment's messages sent again.
func TestRefuseReplay(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	k := newKit(t, newTPM(t))
	r := dialRaw(t, f, "e-replay")
	reqID := r.send(wire.TypeEnrollRequest, nil, k.request("SN-R", ""))
	ch := r.challenge(reqID)
	proof := k.answer(ch)
	proofID := r.send(wire.TypeEnrollProof, nil, proof)
	if res := r.result(proofID); res.Status != wire.StatusActive {
		t.Fatalf("genuine enrollment: %+v", res)
	}
	before := inventorySnapshot(t, f)
	// The same bytes again: request and proof.
	for _, b := range r.sent {
		env, _ := wire.Decode(b)
		r.sendBytes(b)
		wantRefusal(t, r.result(env.ID), wire.ReasonReplay)
	}
	// The same proof in a new envelope: the session was single use.
	wantRefusal(t, r.result(r.send(wire.TypeEnrollProof, nil, proof)), wire.ReasonReplay)
	assertUnchanged(t, f, before)
}

// TestRefuseClonedEK: an EK already enrolled is presented under another
// identity (serial). It is refused, the enrolled device flagged, and —
// governance's clone rule — quarantined with its certificate revoked;
// nothing else changes.
func TestRefuseClonedEK(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	inst := newTPM(t)
	orig := startDevice(t, f, inst, harness.DeviceConfig{Serial: "SN-ORIGINAL"})
	st := waitConnected(t, orig)
	orig.Stop()
	before := inventorySnapshot(t, f)

	// The same TPM under a new identity claim (state wiped, serial changed).
	clone := startDevice(t, f, inst, harness.DeviceConfig{Serial: "SN-CLONE"})
	waitReason(t, clone, "clone")
	dev, err := f.Inv.Device(t.Context(), st.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(dev.Flags, enroll.FlagCloneSuspect) {
		t.Fatalf("enrolled device not flagged: %+v", dev.Flags)
	}
	waitFor(t, func() bool {
		d, err := f.Inv.Device(t.Context(), st.DeviceID)
		return err == nil && d.State == inventory.StateQuarantined && d.IsRevoked(st.CertSerial)
	}, "the cloned identity's device to be quarantined and its certificate revoked")
	after := inventorySnapshot(t, f)
	for i := range after.Devices {
		d := &after.Devices[i]
		d.Flags = slices.DeleteFunc(d.Flags, func(s string) bool { return s == enroll.FlagCloneSuspect })
		if d.ID == st.DeviceID {
			d.State, d.Revoked, d.Quarantine = inventory.StateActive, nil, nil
			for j := range d.Certs {
				d.Certs[j] = inventory.Cert{Serial: d.Certs[j].Serial, NotAfter: d.Certs[j].NotAfter}
			}
		}
	}
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("inventory changed beyond the flag:\n%+v\n%+v", before, after)
	}
	evs, _ := f.Inv.Events(t.Context(), st.DeviceID, 10)
	found := false
	for _, e := range evs {
		found = found || e.Kind == "clone-suspect"
	}
	if !found {
		t.Fatalf("no clone event: %+v", evs)
	}
}

// TestQuarantineDuringEnrollmentHolds: a device re-enrolling while the
// fleet quarantines it cannot come back active: the decision is made on the
// record as it is when the proof arrives, not when the request did.
func TestQuarantineDuringEnrollmentHolds(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	inst := newTPM(t)
	d := startDevice(t, f, inst, harness.DeviceConfig{Serial: "SN-Q", Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	id := waitConnected(t, d).DeviceID
	d.Stop()
	k := newKit(t, inst)
	r := dialRaw(t, f, "e-racer")
	ch := r.challenge(r.send(wire.TypeEnrollRequest, nil, k.request("SN-Q", "")))
	if err := f.Inv.Update(t.Context(), id, func(d *inventory.Device) error { d.State = inventory.StateQuarantined; return nil }); err != nil {
		t.Fatal(err)
	}
	res := r.result(r.send(wire.TypeEnrollProof, nil, k.answer(ch)))
	if res.Status != wire.StatusActive {
		t.Fatalf("result %+v", res)
	}
	dev, _ := f.Inv.Device(t.Context(), id)
	if dev.State != inventory.StateQuarantined {
		t.Fatalf("re-enrollment during quarantine made the device %s", dev.State)
	}
}

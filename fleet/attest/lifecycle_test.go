package attest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// onePolicy is a Policies that selects one policy for every device; select
// runs first when it is set (a renewal committing meanwhile, for example).
type onePolicy struct {
	pol    *policy.Policy
	before func()
}

func (p *onePolicy) Choose(_ context.Context, _, _, _ string) (policy.Choice, error) {
	if p.before != nil {
		p.before()
	}
	if p.pol == nil {
		return policy.Choice{}, nil
	}
	action := p.pol.Action
	if action == "" {
		action = policy.ActionQuarantine
	}
	return policy.Choice{Policy: p.pol, Action: action, Covered: true}, nil
}

// pcr0 returns the sha256 PCR 0 value the fixture's TPM quotes, from a
// passing verdict of the second device (which the tests leave alone).
func (f *fixture) pcr0() string {
	f.t.Helper()
	other := "fedcba9876543210fedcba9876543210"
	rec := f.submit(other, f.evidence(f.challenge(other), f.ak, nil))
	v := rec.PCRs["sha256"][0]
	if rec.Result != wire.VerdictPass || v == "" {
		f.t.Fatalf("no PCR 0 value: %+v", rec)
	}
	return v
}

func pinned(id, pcr0 string, autoRelease bool) *policy.Policy {
	return &policy.Policy{ID: id, Name: id, AutoRelease: autoRelease, PCRs: map[string]map[int]string{"sha256": {0: pcr0}}}
}

// TestEvidenceNeverUndoesDecommission: failing evidence over a session that
// outlived the decommissioning (its nonce issued before) leaves the device
// decommissioned — never quarantined, from where it could enroll again.
func TestEvidenceNeverUndoesDecommission(t *testing.T) {
	f := newFixture(t)
	ch := f.challenge(f.dev)
	if err := f.inv.Update(t.Context(), f.dev, func(d *inventory.Device) error { d.State = inventory.StateDecommissioned; return nil }); err != nil {
		t.Fatal(err)
	}
	ak2, err := f.tpm.CreateAK()
	if err != nil {
		t.Fatal(err)
	}
	env, raw := f.envelope(f.evidence(ch, ak2, nil))
	f.svc.evidence(job{deviceID: f.dev, env: env, raw: raw, at: f.now()})
	if st := f.state(f.dev); st != inventory.StateDecommissioned {
		t.Fatalf("a decommissioned device's evidence moved it to %s", st)
	}
}

// TestQuarantineRevokesEveryUnexpiredSerial: a renewed-away certificate the
// device has not yet been seen to give up is revoked with the current one.
func TestQuarantineRevokesEveryUnexpiredSerial(t *testing.T) {
	f := newFixture(t)
	renewAway(t, f.inv, f.dev, "5e1a11")
	if err := f.svc.Quarantine(f.dev, "alert rule: odd port"); err != nil {
		t.Fatal(err)
	}
	d, _ := f.inv.Device(t.Context(), f.dev)
	for _, s := range []string{"c0ffee00", "5e1a11"} {
		if !d.IsRevoked(s) {
			t.Errorf("quarantine left serial %s unrevoked", s)
		}
	}
	crl, err := f.inv.Revocations(t.Context(), f.now())
	if err != nil || len(crl) != 2 {
		t.Fatalf("CRL entries %+v %v, want both serials", crl, err)
	}
}

// TestQuarantineRacingRenewal: a renewal that commits while failing
// evidence is being judged is revoked by the quarantine that follows.
func TestQuarantineRacingRenewal(t *testing.T) {
	f := newFixture(t)
	pol := &onePolicy{pol: pinned("golden", strings.Repeat("ab", 32), false)}
	f.svc.cfg.Policies = pol
	pol.before = func() {
		pol.before = nil
		renewAway(t, f.inv, f.dev, "5e1a11")
	}
	rec := f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	if rec.Result != wire.VerdictFail || rec.Action != "quarantined" {
		t.Fatalf("verdict %+v", rec)
	}
	d, _ := f.inv.Device(t.Context(), f.dev)
	if d.State != inventory.StateQuarantined || !d.IsRevoked("5e1a11") || !d.IsRevoked("c0ffee00") {
		t.Fatalf("after the race: state %s, current %s revoked %v, old revoked %v", d.State, d.CertSerial, d.IsRevoked("5e1a11"), d.IsRevoked("c0ffee00"))
	}
}

// TestAutoReleaseLiftsOnlyItsOwnQuarantine: a passing attestation under an
// auto-release policy ends a quarantine that policy's failing verdict made,
// never one made for another cause (an alert rule, a clone, an operator).
func TestAutoReleaseLiftsOnlyItsOwnQuarantine(t *testing.T) {
	f := newFixture(t)
	good := f.pcr0()
	pol := &onePolicy{pol: pinned("golden", good, true)}
	f.svc.cfg.Policies = pol
	if err := f.svc.Quarantine(f.dev, "alert rule new-listening-port: tcp/4444"); err != nil {
		t.Fatal(err)
	}
	if rec := f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil)); rec.Result != wire.VerdictPass {
		t.Fatalf("verdict %+v", rec)
	}
	if st := f.state(f.dev); st != inventory.StateQuarantined {
		t.Fatalf("an auto-release policy lifted an alert rule's quarantine: %s", st)
	}

	// Its own quarantine it lifts.
	other := "fedcba9876543210fedcba9876543210"
	pol.pol = pinned("golden", strings.Repeat("ab", 32), true)
	if rec := f.submit(other, f.evidence(f.challenge(other), f.ak, nil)); rec.Action != "quarantined" {
		t.Fatalf("verdict %+v", rec)
	}
	pol.pol = pinned("golden", good, true)
	if rec := f.submit(other, f.evidence(f.challenge(other), f.ak, nil)); rec.Result != wire.VerdictPass || rec.Action != "released" {
		t.Fatalf("verdict %+v", rec)
	}
	if st := f.state(other); st != inventory.StateActive {
		t.Fatalf("the policy's own quarantine was not lifted: %s", st)
	}
}

// TestNoncePurpose: a nonce issued for a renewal does not answer a plain
// challenge, and a plain one does not carry a renewal.
func TestNoncePurpose(t *testing.T) {
	f := newFixture(t)
	req, _ := wire.Encode(wire.TypeAttestRequest, nil, f.now(), &wire.AttestRequest{Reason: wire.PurposeRenew})
	env, _ := wire.Decode(req)
	f.svc.Submit(f.dev, env, req)
	f.mu.Lock()
	last := f.out[f.dev][len(f.out[f.dev])-1]
	f.mu.Unlock()
	var renewCh wire.AttestChallenge
	if err := wire.DecodeBody(last, wire.TypeAttestChallenge, &renewCh); err != nil || renewCh.Purpose != wire.PurposeRenew {
		t.Fatalf("renewal challenge %+v %v", renewCh, err)
	}
	if rec := f.submit(f.dev, f.evidence(&renewCh, f.ak, nil)); rec.Code != wire.ReasonNonceInvalid {
		t.Fatalf("renewal nonce answering a plain challenge: %+v", rec)
	}

	plain := f.challenge(f.dev)
	var ev wire.AttestEvidence
	e, _ := wire.Decode(f.evidence(plain, f.ak, nil))
	if err := wire.DecodeBody(e, wire.TypeAttestEvidence, &ev); err != nil {
		t.Fatal(err)
	}
	rec, err := f.svc.Judge(f.dev, &ev)
	if err != nil || rec.Code != wire.ReasonNonceInvalid {
		t.Fatalf("plain nonce carrying a renewal: %+v %v", rec, err)
	}
}

// renewAway records a renewal of id to serial as rotation does: the old
// serial stays valid until the device connects with the new one.
func renewAway(t *testing.T, inv *inventory.Store, id, serial string) {
	t.Helper()
	err := inv.Update(t.Context(), id, func(d *inventory.Device) error {
		d.Issued(serial, time.Now(), time.Now().Add(time.Hour))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) envelope(b []byte) (*wire.Envelope, []byte) {
	f.t.Helper()
	env, err := wire.Decode(b)
	if err != nil {
		f.t.Fatal(err)
	}
	return env, b
}

// TestCurrent: credentials go out only on a passing verdict on a nonce
// issued in the device's current session, no older than VerdictMaxAge,
// while the device is active.
func TestCurrent(t *testing.T) {
	f := newFixture(t)
	isCurrent := func(want bool, what string) {
		t.Helper()
		err := f.svc.Current(f.dev)
		if (err == nil) != want || err != nil && !errors.Is(err, ErrNoCurrentVerdict) {
			t.Fatalf("%s: Current = %v, want current %v", what, err, want)
		}
	}
	f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	isCurrent(false, "a pass without a session")

	f.svc.SessionStarted(f.dev, f.now())
	isCurrent(false, "a pass from before the session")
	f.advance(time.Second)
	f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	isCurrent(true, "a pass in the session")

	f.advance(f.svc.cfg.VerdictMaxAge + time.Second)
	isCurrent(false, "a pass older than VerdictMaxAge")
	f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	isCurrent(true, "a new pass")

	// A reconnect (a reboot, a re-enrollment): the earlier session's
	// evidence no longer counts, even judged after the reconnect.
	pending := f.challenge(f.dev)
	f.advance(time.Second)
	f.svc.SessionStarted(f.dev, f.now())
	f.submit(f.dev, f.evidence(pending, f.ak, nil))
	isCurrent(false, "a pass on a nonce of the previous session")
	f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	isCurrent(true, "a pass in the new session")

	ak2, _ := f.tpm.CreateAK()
	f.submit(f.dev, f.evidence(f.challenge(f.dev), ak2, nil))
	isCurrent(false, "after a failing verdict (quarantined)")
	f.svc.SessionEnded(f.dev)
	isCurrent(false, "after the session ended")
}

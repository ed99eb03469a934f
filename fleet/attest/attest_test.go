package attest

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/tpm"
	_ "github.com/sigil-iot/sigil/device/tpm/tpmsim"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// fixture: a fleet attestation service and a device on the in-process TPM
// simulator, wired by hand (no broker) so each refusal is isolated.
type fixture struct {
	t      testing.TB
	svc    *Service
	inv    *inventory.Store
	tpm    *tpm.TPM
	ak     *tpm.KeyBlob
	dev    string
	mu     sync.Mutex
	clock  time.Time
	out    map[string][]*wire.Envelope // device -> messages sent
	kicked []string
	alerts []Alert
}

func (f *fixture) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clock
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.clock = f.clock.Add(d)
	f.mu.Unlock()
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: time.Now(), out: map[string][]*wire.Envelope{}}
	tp, err := tpm.Open("sim://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	f.tpm = tp
	if f.ak, err = tp.CreateAK(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if f.inv, err = inventory.Open(filepath.Join(dir, "inv.db"), inventory.WithNoSync()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.inv.Close() })
	h, err := OpenHistory(filepath.Join(dir, "attest.db"), 100)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	f.dev = "0123456789abcdef0123456789abcdef"
	for i, id := range []string{f.dev, "fedcba9876543210fedcba9876543210"} {
		fp := []byte("0000000000000000000000000000000000000000000000000000000000000000")
		fp[0] = byte('1' + i)
		if err := f.inv.PutDevice(t.Context(), &inventory.Device{ID: id, EKFingerprint: string(fp), Model: "gw-1", State: inventory.StateActive,
			CertSerial: "c0ffee0" + string(rune('0'+i)), AKPublic: f.ak.Public}); err != nil {
			t.Fatal(err)
		}
	}
	f.svc, err = New(Config{Inventory: f.inv, History: h, Now: f.now, Interval: time.Minute, StaleAfter: 2,
		Send: func(id, _ string, b []byte) error {
			env, err := wire.Decode(b)
			if err != nil {
				return err
			}
			f.mu.Lock()
			f.out[id] = append(f.out[id], env)
			f.mu.Unlock()
			return nil
		},
		Disconnect: func(id string) { f.mu.Lock(); f.kicked = append(f.kicked, id); f.mu.Unlock() },
		Alert:      func(a Alert) { f.mu.Lock(); f.alerts = append(f.alerts, a); f.mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// challenge asks the service for a challenge to device id.
func (f *fixture) challenge(id string) *wire.AttestChallenge {
	f.t.Helper()
	if err := f.svc.Challenge(id); err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	env := f.out[id][len(f.out[id])-1]
	f.mu.Unlock()
	var ch wire.AttestChallenge
	if err := wire.DecodeBody(env, wire.TypeAttestChallenge, &ch); err != nil {
		f.t.Fatal(err)
	}
	return &ch
}

func (f *fixture) evidence(ch *wire.AttestChallenge, ak *tpm.KeyBlob, edit func(*wire.AttestEvidence)) []byte {
	f.t.Helper()
	ev := &wire.AttestEvidence{Nonce: ch.Nonce, Firmware: "1.0.0"}
	for _, sel := range ch.Selections {
		q, err := f.tpm.Quote(ak, ch.Nonce, sel)
		if err != nil {
			f.t.Fatal(err)
		}
		ev.Quotes = append(ev.Quotes, *q)
	}
	if edit != nil {
		edit(ev)
	}
	b, err := wire.Encode(wire.TypeAttestEvidence, nil, f.now(), ev)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// submit runs one evidence message synchronously and returns its record.
func (f *fixture) submit(id string, b []byte) *Record {
	f.t.Helper()
	env, err := wire.Decode(b)
	if err != nil {
		f.t.Fatal(err)
	}
	f.svc.evidence(job{deviceID: id, env: env, raw: b, at: f.now()})
	f.mu.Lock()
	last := f.out[id][len(f.out[id])-1]
	f.mu.Unlock()
	var v wire.AttestVerdict
	if err := wire.DecodeBody(last, wire.TypeAttestVerdict, &v); err != nil {
		f.t.Fatalf("no verdict sent: %v", err)
	}
	recs, _ := f.svc.History(context.Background(), id, 1)
	if len(recs) == 0 || recs[0].Code != v.Reason {
		// refused-nonce evidence is not recorded; build the record from the verdict
		return &Record{Result: v.Result, Code: v.Reason, Reason: v.Reason.String(), Message: v.Message}
	}
	return &recs[0]
}

func (f *fixture) state(id string) inventory.State {
	d, err := f.inv.Device(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return d.State
}

func TestHonestEvidencePasses(t *testing.T) {
	f := newFixture(t)
	rec := f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	if rec.Result != wire.VerdictPass || rec.Code != wire.ReasonNoPolicy || len(rec.PCRs["sha256"]) != 11 || rec.EvidenceDigest == "" {
		t.Fatalf("record %+v", rec)
	}
	d, _ := f.inv.Device(t.Context(), f.dev)
	if d.Attestation != "pass" || d.LastAttested.IsZero() || d.Firmware != "1.0.0" {
		t.Fatalf("inventory %+v", d)
	}
}

func TestRefusals(t *testing.T) {
	other := "fedcba9876543210fedcba9876543210"
	cases := []struct {
		name       string
		evidence   func(f *fixture) []byte
		code       wire.Reason
		quarantine bool
	}{
		{"replayed evidence (nonce reused)", func(f *fixture) []byte {
			b := f.evidence(f.challenge(f.dev), f.ak, nil)
			f.submit(f.dev, b)
			return b
		}, wire.ReasonNonceInvalid, false},
		{"old quote presented with a fresh nonce", func(f *fixture) []byte {
			old := f.challenge(f.dev)
			oldQuote, err := f.tpm.Quote(f.ak, old.Nonce, old.Selections[0])
			if err != nil {
				f.t.Fatal(err)
			}
			return f.evidence(f.challenge(f.dev), f.ak, func(ev *wire.AttestEvidence) { ev.Quotes[0] = *oldQuote })
		}, wire.ReasonQuoteInvalid, true},
		{"nonce issued to another device", func(f *fixture) []byte {
			return f.evidence(f.challenge(other), f.ak, nil)
		}, wire.ReasonNonceInvalid, false},
		{"expired nonce", func(f *fixture) []byte {
			ch := f.challenge(f.dev)
			f.advance(3 * time.Minute)
			return f.evidence(ch, f.ak, nil)
		}, wire.ReasonNonceInvalid, false},
		{"nonce never issued", func(f *fixture) []byte {
			ch := f.challenge(f.dev)
			ch.Nonce = append([]byte{}, ch.Nonce...)
			ch.Nonce[0] ^= 1
			return f.evidence(ch, f.ak, nil)
		}, wire.ReasonNonceInvalid, false},
		{"quote signed by another AK", func(f *fixture) []byte {
			ak2, err := f.tpm.CreateAK()
			if err != nil {
				f.t.Fatal(err)
			}
			return f.evidence(f.challenge(f.dev), ak2, nil)
		}, wire.ReasonQuoteInvalid, true},
		{"quote over other PCRs than asked", func(f *fixture) []byte {
			ch := f.challenge(f.dev)
			return f.evidence(ch, f.ak, func(ev *wire.AttestEvidence) {
				q, err := f.tpm.Quote(f.ak, ch.Nonce, wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: []int{0, 1}})
				if err != nil {
					f.t.Fatal(err)
				}
				ev.Quotes[0] = *q
			})
		}, wire.ReasonQuoteInvalid, true},
		{"PCR value that does not match the digest", func(f *fixture) []byte {
			return f.evidence(f.challenge(f.dev), f.ak, func(ev *wire.AttestEvidence) {
				ev.Quotes[0].Values[3] = append([]byte{}, ev.Quotes[0].Values[3]...)
				ev.Quotes[0].Values[3][0] ^= 0xff
			})
		}, wire.ReasonQuoteInvalid, true},
		{"device could not quote (reported, alerted, not condemned)", func(f *fixture) []byte {
			return f.evidence(f.challenge(f.dev), f.ak, func(ev *wire.AttestEvidence) { ev.Quotes = nil; ev.Error = "tpm busy" })
		}, wire.ReasonQuoteInvalid, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			rec := f.submit(f.dev, c.evidence(f))
			if rec.Result != wire.VerdictFail || rec.Code != c.code || rec.Message == "" {
				t.Fatalf("record %+v, want fail %s", rec, c.code)
			}
			quarantined := f.state(f.dev) == inventory.StateQuarantined
			if quarantined != c.quarantine {
				t.Fatalf("quarantined = %v, want %v", quarantined, c.quarantine)
			}
			if c.quarantine {
				d, _ := f.inv.Device(t.Context(), f.dev)
				if !d.IsRevoked(d.CertSerial) || !slices.Contains(f.kicked, f.dev) {
					t.Fatalf("quarantine incomplete: revoked %v, kicked %v", d.Revoked, f.kicked)
				}
				found := false
				for _, a := range f.alerts {
					found = found || (a.Kind == "quarantined" && a.DeviceID == f.dev)
				}
				if !found {
					t.Fatalf("no quarantine alert: %+v", f.alerts)
				}
			}
		})
	}
}

func TestCounterRollback(t *testing.T) {
	f := newFixture(t)
	first := f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	// A history that saw a later TPM boot than the TPM now reports.
	if err := f.svc.cfg.History.Add(t.Context(), &Record{DeviceID: f.dev, Time: f.now(), Result: "pass", ResetCount: first.ResetCount + 5, Clock: first.Clock + 1}); err != nil {
		t.Fatal(err)
	}
	rec := f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	if rec.Code != wire.ReasonCounterRollback {
		t.Fatalf("record %+v", rec)
	}
}

func TestReleaseNeedsJustification(t *testing.T) {
	f := newFixture(t)
	ak2, _ := f.tpm.CreateAK()
	f.submit(f.dev, f.evidence(f.challenge(f.dev), ak2, nil))
	if f.state(f.dev) != inventory.StateQuarantined {
		t.Fatal("not quarantined")
	}
	if err := f.svc.Release(f.dev, "alice", ""); err != ErrJustification {
		t.Fatalf("release without justification: %v", err)
	}
	if err := f.svc.Release(f.dev, "alice", "reflashed and verified on the bench"); err != nil {
		t.Fatal(err)
	}
	if f.state(f.dev) != inventory.StateActive {
		t.Fatal("not released")
	}
	if err := f.svc.Release(f.dev, "alice", "again"); err != ErrNotQuarantined {
		t.Fatalf("second release: %v", err)
	}
	evs, _ := f.inv.Events(t.Context(), f.dev, 10)
	if len(evs) == 0 || evs[0].Kind != "alert" && evs[0].Kind != "released" {
		t.Fatalf("events %+v", evs)
	}
}

func TestStale(t *testing.T) {
	f := newFixture(t)
	f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	if err := f.svc.sweepStale(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d, _ := f.inv.Device(t.Context(), f.dev); d.HasFlag(FlagStale) {
		t.Fatal("fresh device flagged stale")
	}
	f.advance(3 * time.Minute) // StaleAfter 2 × Interval 1m
	if err := f.svc.sweepStale(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d, _ := f.inv.Device(t.Context(), f.dev); !d.HasFlag(FlagStale) {
		t.Fatal("silent device not flagged stale")
	}
	n := len(f.alerts)
	f.svc.sweepStale(t.Context())
	if len(f.alerts) != n {
		t.Fatal("stale alert repeated")
	}
	// Evidence again clears it.
	f.submit(f.dev, f.evidence(f.challenge(f.dev), f.ak, nil))
	if d, _ := f.inv.Device(t.Context(), f.dev); d.HasFlag(FlagStale) {
		t.Fatal("stale flag kept after a passing attestation")
	}
	// Unanswered challenges also make a device stale.
	other := "fedcba9876543210fedcba9876543210"
	f.challenge(other)
	f.challenge(other)
	f.svc.sweepStale(t.Context())
	if d, _ := f.inv.Device(t.Context(), other); !d.HasFlag(FlagStale) {
		t.Fatal("device ignoring challenges not flagged stale")
	}
}

// FuzzEvidence: arbitrary bytes on a device's attest topic are answered and
// never change the device's state — only evidence bound to a nonce the
// fleet issued can condemn or release a device.
func FuzzEvidence(f *testing.F) {
	fx := newFixture(f)
	// Seeds carry a nonce that was issued and already used.
	ch := fx.challenge(fx.dev)
	used := fx.evidence(ch, fx.ak, nil)
	fx.submit(fx.dev, used)
	f.Add(used)
	f.Add(fx.evidence(ch, fx.ak, func(ev *wire.AttestEvidence) { ev.EventLog = []byte{0, 0, 0, 0, 1, 2, 3} }))
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := wire.Decode(b)
		if err != nil || env.Type != wire.TypeAttestEvidence {
			return
		}
		fx.svc.evidence(job{deviceID: fx.dev, env: env, raw: b, at: fx.now()})
		if st := fx.state(fx.dev); st != inventory.StateActive {
			t.Fatalf("unsolicited evidence changed the device to %s", st)
		}
	})
}

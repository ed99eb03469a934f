package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/big"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// softKeys is the part of a TPM renewal uses, with software keys: a new
// transport key, its public key and signer, a certify and a quote (their
// bytes are placeholders the fake fleet does not check).
type softKeys struct {
	TPM // the rest is never called here
	mu  sync.Mutex
	key map[string]*ecdsa.PrivateKey // by public blob
}

func (k *softKeys) CreateTransportKey() (*tpm.KeyBlob, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	pub := make([]byte, 16)
	rand.Read(pub)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.key == nil {
		k.key = map[string]*ecdsa.PrivateKey{}
	}
	k.key[string(pub)] = priv
	return &tpm.KeyBlob{Public: pub, Private: []byte("wrapped")}, nil
}

func (k *softKeys) get(b *tpm.KeyBlob) (*ecdsa.PrivateKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if p := k.key[string(b.Public)]; p != nil {
		return p, nil
	}
	return nil, fmt.Errorf("no key %x", b.Public)
}

func (k *softKeys) PublicKey(b *tpm.KeyBlob) (crypto.PublicKey, error) {
	p, err := k.get(b)
	if err != nil {
		return nil, err
	}
	return p.Public(), nil
}

func (k *softKeys) Signer(b *tpm.KeyBlob) (crypto.Signer, error) { return k.get(b) }

func (k *softKeys) Certify(_, _ *tpm.KeyBlob, _ []byte) ([]byte, []byte, error) {
	return []byte("certify-info"), []byte("certify-sig"), nil
}

func (k *softKeys) Quote(_ *tpm.KeyBlob, _ []byte, sel wire.PCRSelection) (*wire.Quote, error) {
	q := &wire.Quote{Attest: []byte("attest"), Signature: []byte("sig"), Hash: sel.Hash, PCRs: sel.PCRs}
	for range sel.PCRs {
		q.Values = append(q.Values, make([]byte, 32))
	}
	return q, nil
}

// renewAnswer is what the fake fleet answers to the n-th renewal request
// (from 1): res after delay, or nothing when res is nil.
type renewAnswer func(f *renewFleet, n int, req *wire.RenewRequest) (delay time.Duration, res *wire.RenewResult)

// sent is a message the device published, and when.
type sent struct {
	at     time.Time
	typ    string
	reason string             // an attest request's
	renew  *wire.RenewRequest // a renewal request
}

// renewFleet is a minimal fleet for a device session: it answers a
// request for a renewal challenge with challengesPer challenges, and a
// renewal request as answer says, through the agent's own message handler
// (handleDown), from its own goroutines.
type renewFleet struct {
	t             *testing.T
	a             *Agent
	ca            *testCA
	deviceID      string
	answer        renewAnswer
	challengesPer int

	mu   sync.Mutex
	log  []sent
	reqs int
	wg   sync.WaitGroup
}

var _ publisher = (*renewFleet)(nil)

func (f *renewFleet) Publish(_ context.Context, _ string, payload []byte) error {
	env, err := wire.Decode(payload)
	if err != nil {
		f.t.Errorf("device sent a malformed message: %v", err)
		return nil
	}
	s := sent{at: time.Now(), typ: env.Type}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch env.Type {
	case wire.TypeAttestRequest:
		var r wire.AttestRequest
		if err := wire.DecodeBody(env, wire.TypeAttestRequest, &r); err != nil {
			f.t.Errorf("attest request: %v", err)
			return nil
		}
		s.reason = r.Reason
		if r.Reason == wire.PurposeRenew {
			for range max(f.challengesPer, 1) {
				nonce := make([]byte, 32)
				rand.Read(nonce)
				f.down(0, wire.TypeAttestChallenge, &wire.AttestChallenge{Nonce: nonce, Purpose: wire.PurposeRenew,
					Selections: []wire.PCRSelection{{Hash: wire.AlgSHA256, PCRs: []int{0, 7}}}})
			}
		}
	case wire.TypeRenewRequest:
		var r wire.RenewRequest
		if err := wire.DecodeBody(env, wire.TypeRenewRequest, &r); err != nil {
			f.t.Errorf("renewal request: %v", err)
			return nil
		}
		s.renew = &r
		f.reqs++
		if delay, res := f.answer(f, f.reqs, &r); res != nil {
			f.down(delay, wire.TypeRenewResult, res)
		}
	}
	f.log = append(f.log, s)
	return nil
}

// down hands the device a message after delay.
func (f *renewFleet) down(delay time.Duration, typ string, body any) {
	f.wg.Go(func() {
		// sleep: a fleet slow to answer, on the fake clock of the synctest bubble these tests run in
		time.Sleep(delay)
		b, err := wire.Encode(typ, nil, time.Now(), body)
		if err != nil {
			f.t.Errorf("encoding %s: %v", typ, err)
			return
		}
		f.a.handleDown("fleet/down", b)
	})
}

// issue is the certificate for the key of req, as the fleet issues it.
func (f *renewFleet) issue(req *wire.RenewRequest) *wire.RenewResult {
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		f.t.Errorf("CSR: %v", err)
		return &wire.RenewResult{Status: wire.StatusRefused, Reason: wire.ReasonCSRInvalid}
	}
	return &wire.RenewResult{Status: wire.StatusActive, Certificate: f.ca.issue(f.t, f.deviceID, csr.PublicKey, time.Now(), 3*time.Hour),
		TrustBundle: [][]byte{f.ca.cert.Raw}}
}

// sentOf returns what the device sent of type typ (and reason, for
// attest requests), in order.
func (f *renewFleet) sentOf(typ, reason string) []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []sent
	for _, s := range f.log {
		if s.typ == typ && (reason == "" || s.reason == reason) {
			out = append(out, s)
		}
	}
	return out
}

// testCA issues device certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test fleet CA"},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: key}
}

func (ca *testCA) issue(t *testing.T, deviceID string, pub any, notBefore time.Time, life time.Duration) []byte {
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: deviceID},
		NotBefore: notBefore, NotAfter: notBefore.Add(life), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// renewSession runs one device session in a synctest bubble against a
// fake fleet that answers renewals as answer says. The device's
// certificate is past RenewAt, so it renews a second after the session
// starts. It returns what sessionLoop returned (true: renewed), the
// fleet, and the device's identity. The session ends once it renews or
// after limit.
func renewSession(t *testing.T, cfg Config, answer renewAnswer, challengesPer int, during func(f *renewFleet), limit time.Duration) (bool, *renewFleet, *state.Identity) {
	t.Helper()
	cfg.Broker, cfg.Model, cfg.EventLog, cfg.Control = "fleet.test:8883", "gw-1", "-", "-"
	cfg.AttestInterval = -1 // no schedule: only renewals here
	keys := &softKeys{}
	st, err := state.Open(filepath.Join(t.TempDir(), "state.db"), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a, err := New(cfg, slog.New(slog.DiscardHandler), WithTPM(keys), WithState(st))
	if err != nil {
		t.Fatal(err)
	}
	a.st, a.tpm = st, keys
	ca := newTestCA(t)
	tk, err := keys.CreateTransportKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := keys.PublicKey(tk)
	deviceID := hex.EncodeToString(bytes.Repeat([]byte{0x5a}, 16))
	id := &state.Identity{Status: state.StatusEnrolled, DeviceID: deviceID, AK: state.KeyBlob{Public: []byte("ak"), Private: []byte("ak")},
		TK:   state.KeyBlob{Public: tk.Public, Private: tk.Private},
		Cert: ca.issue(t, deviceID, pub, time.Now().Add(-2*time.Hour), 3*time.Hour), TrustBundle: [][]byte{ca.cert.Raw}}
	if err := st.SaveIdentity(id); err != nil {
		t.Fatal(err)
	}
	f := &renewFleet{t: t, a: a, ca: ca, deviceID: deviceID, answer: answer, challengesPer: challengesPer}
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	done := make(chan bool, 1)
	go func() { done <- a.sessionLoop(ctx, f, id) }()
	if during != nil {
		during(f)
	}
	renewed := <-done
	cancel()
	f.wg.Wait()
	return renewed, f, id
}

// TestRenewalWaitsForASlowFleet: a fleet slower than the device's retry
// interval gets one renewal request, and answers it; the device renews
// once. It used to ask again every max(RetryMax/2, 5 s) and have a second
// certificate issued for the same key. A second challenge for the same
// attempt is not answered either.
func TestRenewalWaitsForASlowFleet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{RetryMin: Duration(time.Second), RetryMax: Duration(10 * time.Second)}
		renewed, f, id := renewSession(t, cfg, func(f *renewFleet, n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			return 40 * time.Second, f.issue(req)
		}, 2, nil, time.Hour)
		if !renewed {
			t.Fatal("the session ended without a renewed certificate")
		}
		if asks, reqs := f.sentOf(wire.TypeAttestRequest, wire.PurposeRenew), f.sentOf(wire.TypeRenewRequest, ""); len(asks) != 1 || len(reqs) != 1 {
			t.Fatalf("%d renewal challenges asked for and %d renewal requests sent while the fleet took 40 s; want 1 and 1", len(asks), len(reqs))
		}
		if id.Next == nil || len(id.Next.Cert) == 0 {
			t.Fatal("the renewed certificate was not stored")
		}
	})
}

// TestRenewalHonoursRetryAfter: a refusal with RetryAfter (the fleet's
// renewal queue was full) is followed by the next attempt no sooner than
// that, and not much later; the attempt renews with the same key.
func TestRenewalHonoursRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{RetryMin: Duration(time.Second), RetryMax: Duration(10 * time.Second)}
		var refusedAt time.Time
		renewed, f, _ := renewSession(t, cfg, func(f *renewFleet, n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			if n == 1 {
				refusedAt = time.Now()
				return 0, &wire.RenewResult{Status: wire.StatusRefused, Reason: wire.ReasonRateLimited, Message: "renewal queue full", RetryAfter: 30}
			}
			return 0, f.issue(req)
		}, 1, nil, time.Hour)
		if !renewed {
			t.Fatal("the session ended without a renewed certificate")
		}
		asks, reqs := f.sentOf(wire.TypeAttestRequest, wire.PurposeRenew), f.sentOf(wire.TypeRenewRequest, "")
		if len(asks) != 2 || len(reqs) != 2 {
			t.Fatalf("%d renewal challenges asked for and %d requests; want 2 and 2", len(asks), len(reqs))
		}
		if wait := asks[1].at.Sub(refusedAt); wait < 30*time.Second || wait > 36*time.Second {
			t.Fatalf("asked again %v after a refusal with RetryAfter 30 s; want 30 s to 36 s", wait)
		}
		if !bytes.Equal(reqs[0].renew.TKPublic, reqs[1].renew.TKPublic) {
			t.Fatal("the second attempt is for another key")
		}
	})
}

// TestRenewalBacksOff: refusals without RetryAfter are retried after a
// backoff that doubles from RetryMin up to RetryMax, with jitter (each
// wait in [b/2, b] for the backoff step b), for the same key.
func TestRenewalBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{RetryMin: Duration(time.Second), RetryMax: Duration(8 * time.Second)}
		var refusals []time.Time
		const refused = 6
		renewed, f, _ := renewSession(t, cfg, func(f *renewFleet, n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			if n <= refused {
				refusals = append(refusals, time.Now())
				return 0, &wire.RenewResult{Status: wire.StatusRefused, Reason: wire.ReasonAttestationFailed, Message: "renewal refused: PCR 7"}
			}
			return 0, f.issue(req)
		}, 1, nil, time.Hour)
		if !renewed {
			t.Fatal("the session ended without a renewed certificate")
		}
		asks, reqs := f.sentOf(wire.TypeAttestRequest, wire.PurposeRenew), f.sentOf(wire.TypeRenewRequest, "")
		if len(asks) != refused+1 || len(reqs) != refused+1 {
			t.Fatalf("%d renewal challenges asked for and %d requests; want %d and %d", len(asks), len(reqs), refused+1, refused+1)
		}
		step := time.Second
		for i, at := range refusals {
			wait := asks[i+1].at.Sub(at)
			if wait < step/2 || wait > step {
				t.Errorf("attempt %d came %v after refusal %d; want %v to %v", i+2, wait, i+1, step/2, step)
			}
			step = min(2*step, 8*time.Second)
			if !bytes.Equal(reqs[i+1].renew.TKPublic, reqs[0].renew.TKPublic) {
				t.Errorf("attempt %d is for another key", i+2)
			}
		}
	})
}

// TestRenewalAsksAgainOnlyAfterTimeout: while a renewal request is
// unanswered, neither the fleet's cert.rotate nor time before the
// generous answer timeout starts another; after it, the device asks again
// once, for the same key.
func TestRenewalAsksAgainOnlyAfterTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{RetryMin: Duration(time.Second), RetryMax: Duration(10 * time.Second)}
		renewed, f, _ := renewSession(t, cfg, func(f *renewFleet, n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			if n == 1 {
				return 0, nil // lost
			}
			return 0, f.issue(req)
		}, 1, func(f *renewFleet) {
			time.Sleep(time.Minute)
			synctest.Wait()
			rot, err := wire.Encode(wire.TypeRotate, nil, time.Now(), &wire.Rotate{Reason: "forced re-key"})
			if err != nil {
				t.Error(err)
				return
			}
			f.a.handleDown("fleet/down", rot)
			synctest.Wait()
			if n := len(f.sentOf(wire.TypeAttestRequest, wire.PurposeRenew)); n != 1 {
				t.Errorf("%d renewal challenges asked for a minute after the first request, a rotation asked meanwhile; want 1", n)
			}
		}, time.Hour)
		if !renewed {
			t.Fatal("the session ended without a renewed certificate")
		}
		asks, reqs := f.sentOf(wire.TypeAttestRequest, wire.PurposeRenew), f.sentOf(wire.TypeRenewRequest, "")
		if len(asks) != 2 || len(reqs) != 2 {
			t.Fatalf("%d renewal challenges asked for and %d requests; want 2 and 2", len(asks), len(reqs))
		}
		if wait := asks[1].at.Sub(reqs[0].at); wait < minRenewTimeout {
			t.Fatalf("asked again %v after an unanswered request; want at least %v", wait, minRenewTimeout)
		}
		if !bytes.Equal(reqs[0].renew.TKPublic, reqs[1].renew.TKPublic) {
			t.Fatal("the second request is for another key")
		}
	})
}

// TestRenewalRefusedCertificateNewKey: a certificate for the new key that
// does not verify (not from the trust bundle it came with) is refused, and
// the next attempt, after the backoff, is for another key (the fleet
// answers the same key with the same certificate). A certificate for a
// key the device is not renewing is an answer to an older request:
// ignored.
func TestRenewalRefusedCertificateNewKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{RetryMin: Duration(time.Second), RetryMax: Duration(10 * time.Second)}
		rogue := newTestCA(t)
		renewed, f, _ := renewSession(t, cfg, func(f *renewFleet, n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			res := f.issue(req)
			switch n {
			case 1:
				other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				stale := &wire.RenewResult{Status: wire.StatusActive, Certificate: f.ca.issue(t, f.deviceID, other.Public(), time.Now(), time.Hour),
					TrustBundle: [][]byte{f.ca.cert.Raw}}
				f.down(0, wire.TypeRenewResult, stale)
				res.Certificate, res.TrustBundle = rogue.issue(t, f.deviceID, mustCSRKey(t, req), time.Now(), time.Hour), [][]byte{f.ca.cert.Raw}
				return time.Second, res
			}
			return 0, res
		}, 1, nil, time.Hour)
		if !renewed {
			t.Fatal("the session ended without a renewed certificate")
		}
		reqs := f.sentOf(wire.TypeRenewRequest, "")
		if len(reqs) != 2 || bytes.Equal(reqs[0].renew.TKPublic, reqs[1].renew.TKPublic) {
			t.Fatalf("%d requests; want 2, for two keys", len(reqs))
		}
	})
}

func mustCSRKey(t *testing.T, req *wire.RenewRequest) any {
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		t.Fatal(err)
	}
	return csr.PublicKey
}

package renew

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/device/internal/fakefleet"
	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/devicetest"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// device is an enrolled device whose certificate is past RenewAt, with
// the fake fleet it renews with.
type device struct {
	fleet *fakefleet.Fleet
	tpm   *softtpm.TPM
	st    *state.Store
	id    *state.Identity
	cfg   Config
}

var topics = wire.Topics{Prefix: "sigil"}

func newDevice(t *testing.T) *device {
	t.Helper()
	f := fakefleet.New(t, topics)
	dev := devicetest.New(t)
	tp, st, id := dev.TPM, dev.Store, dev.Keys(t)
	pub, _ := tp.PublicKey(blob(id.TK))
	const deviceID = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
	id.Status, id.DeviceID = state.StatusEnrolled, deviceID
	id.Cert, id.TrustBundle = f.IssueCert(deviceID, pub, time.Now().Add(-2*time.Hour), 3*time.Hour), [][]byte{f.CA().Raw}
	if err := st.SaveIdentity(id); err != nil {
		t.Fatal(err)
	}
	d := &device{fleet: f, tpm: tp, st: st, id: id}
	d.cfg = Config{TPM: tp, Store: st, Topics: topics, RetryMin: time.Second, RetryMax: 10 * time.Second,
		Attester: AttesterFunc(func(_ context.Context, id *state.Identity, ch *wire.AttestChallenge) *wire.AttestEvidence {
			ev := &wire.AttestEvidence{Nonce: ch.Nonce}
			for _, sel := range ch.Selections {
				q, err := tp.Quote(blob(id.AK), ch.Nonce, sel)
				if err != nil {
					t.Errorf("quote: %v", err)
					return nil
				}
				ev.Quotes = append(ev.Quotes, *q)
			}
			return ev
		})}
	return d
}

// session runs one mTLS session's renewal against the fake fleet, as the
// agent's session loop routes the fleet's messages, until the session
// renews (true) or limit passes. during, if set, runs beside it.
func (d *device) session(t *testing.T, limit time.Duration, during func()) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	cert, err := d.clientCert()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := d.fleet.Dial(ctx, link.Config{Broker: fakefleet.Broker, ClientID: d.id.DeviceID, TLS: cert})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	challenges, results, rotate := make(chan *wire.AttestChallenge, 4), make(chan *wire.RenewResult, 2), make(chan struct{}, 1)
	err = conn.Subscribe(ctx, topics.Filter(wire.SegDevice, d.id.DeviceID, wire.Down), func(_ string, payload []byte) {
		env, err := wire.Decode(payload)
		if err != nil {
			t.Errorf("fleet sent a malformed message: %v", err)
			return
		}
		switch env.Type {
		case wire.TypeAttestChallenge:
			var ch wire.AttestChallenge
			if wire.DecodeBody(env, env.Type, &ch) == nil {
				challenges <- &ch
			}
		case wire.TypeRenewResult:
			var res wire.RenewResult
			if wire.DecodeBody(env, env.Type, &res) == nil {
				results <- &res
			}
		case wire.TypeRotate:
			rotate <- struct{}{}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(d.cfg, conn, d.id)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if during != nil {
		go during()
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.C():
			s.Due(ctx)
		case ch := <-challenges:
			s.Challenge(ctx, ch)
		case <-rotate:
			s.Rotate(ctx)
		case res := <-results:
			if s.Result(res) {
				return true
			}
		}
	}
}

func (d *device) stored(t *testing.T) *state.Identity {
	t.Helper()
	id, err := d.st.Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// attempts returns the renewal challenges the device asked for and the
// renewal requests it sent.
func (d *device) attempts() (asks, reqs []fakefleet.Message) {
	for _, m := range d.fleet.Sent(wire.TypeAttestRequest) {
		var r wire.AttestRequest
		if m.Body(wire.TypeAttestRequest, &r) == nil && r.Reason == wire.PurposeRenew {
			asks = append(asks, m)
		}
	}
	return asks, d.fleet.Sent(wire.TypeRenewRequest)
}

func tkOf(t *testing.T, m fakefleet.Message) []byte {
	t.Helper()
	var r wire.RenewRequest
	if err := m.Body(wire.TypeRenewRequest, &r); err != nil {
		t.Fatal(err)
	}
	return r.TKPublic
}

// TestNextKeyStoredBeforeUse: the new transport key is in the state store
// before any request names it, and the certificate the fleet issues for
// it is stored in Next once verified, while the current key and
// certificate stay until the device connects with the new one (the
// agent's switch).
func TestNextKeyStoredBeforeUse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		old := d.stored(t)
		var storedAtRequest *state.Identity
		d.fleet.OnRenew(func(n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			storedAtRequest = d.stored(t) // the fleet has the request: what would a crash now leave?
			return 0, d.fleet.Issue(req)
		})
		if !d.session(t, time.Hour, nil) {
			t.Fatal("the session ended without a renewed certificate")
		}
		_, reqs := d.attempts()
		if len(reqs) != 1 {
			t.Fatalf("%d requests, want 1", len(reqs))
		}
		if n := storedAtRequest.Next; n == nil || !bytes.Equal(n.TK.Public, tkOf(t, reqs[0])) || len(n.TK.Private) == 0 || len(n.Cert) != 0 {
			t.Fatalf("when the request reached the fleet the store held next key %+v; want the key it names, without a certificate", n)
		}
		now := d.stored(t)
		if now.Next == nil || len(now.Next.Cert) == 0 || !bytes.Equal(now.Next.TK.Public, tkOf(t, reqs[0])) {
			t.Fatal("the renewed certificate was not stored with its key")
		}
		c, err := x509.ParseCertificate(now.Next.Cert)
		if err != nil || c.NotBefore.After(time.Now()) {
			t.Fatalf("stored next certificate: %v", err)
		}
		if !bytes.Equal(now.TK.Public, old.TK.Public) || !bytes.Equal(now.Cert, old.Cert) {
			t.Fatal("renewal replaced the current key or certificate before a connection with the new one")
		}
	})
}

// TestSlowFleetGetsOneRequest: a fleet slower than the device's retry
// interval gets one renewal request, and answers it; the device renews
// once. It used to ask again every max(RetryMax/2, 5 s) and have a second
// certificate issued for the same key. A second challenge for the same
// attempt is not answered either.
func TestSlowFleetGetsOneRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		d.fleet.ChallengesPerRequest(2)
		d.fleet.OnRenew(func(n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			return 40 * time.Second, d.fleet.Issue(req)
		})
		if !d.session(t, time.Hour, nil) {
			t.Fatal("the session ended without a renewed certificate")
		}
		if asks, reqs := d.attempts(); len(asks) != 1 || len(reqs) != 1 {
			t.Fatalf("%d renewal challenges asked for and %d renewal requests sent while the fleet took 40 s; want 1 and 1", len(asks), len(reqs))
		}
	})
}

// TestRetryAfter: a refusal with RetryAfter (the fleet's renewal queue was
// full) is followed by the next attempt no sooner than that, and not much
// later; the attempt renews with the same key.
func TestRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		var refusedAt time.Time
		d.fleet.OnRenew(func(n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			if n == 1 {
				refusedAt = time.Now()
				return 0, &wire.RenewResult{Status: wire.StatusRefused, Reason: wire.ReasonRateLimited, Message: "renewal queue full", RetryAfter: 30}
			}
			return 0, d.fleet.Issue(req)
		})
		if !d.session(t, time.Hour, nil) {
			t.Fatal("the session ended without a renewed certificate")
		}
		asks, reqs := d.attempts()
		if len(asks) != 2 || len(reqs) != 2 {
			t.Fatalf("%d renewal challenges asked for and %d requests; want 2 and 2", len(asks), len(reqs))
		}
		if wait := asks[1].At.Sub(refusedAt); wait < 30*time.Second || wait > 36*time.Second {
			t.Fatalf("asked again %v after a refusal with RetryAfter 30 s; want 30 s to 36 s", wait)
		}
		if !bytes.Equal(tkOf(t, reqs[0]), tkOf(t, reqs[1])) {
			t.Fatal("the second attempt is for another key")
		}
	})
}

// TestBackoff: refusals without RetryAfter are retried after a backoff
// that doubles from RetryMin up to RetryMax, with jitter (each wait in
// [b/2, b] for the backoff step b), for the same key.
func TestBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		d.cfg.RetryMax = 8 * time.Second
		var refusals []time.Time
		const refused = 6
		d.fleet.OnRenew(func(n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			if n <= refused {
				refusals = append(refusals, time.Now())
				return 0, &wire.RenewResult{Status: wire.StatusRefused, Reason: wire.ReasonAttestationFailed, Message: "renewal refused: PCR 7"}
			}
			return 0, d.fleet.Issue(req)
		})
		if !d.session(t, time.Hour, nil) {
			t.Fatal("the session ended without a renewed certificate")
		}
		asks, reqs := d.attempts()
		if len(asks) != refused+1 || len(reqs) != refused+1 {
			t.Fatalf("%d renewal challenges asked for and %d requests; want %d and %d", len(asks), len(reqs), refused+1, refused+1)
		}
		step := time.Second
		for i, at := range refusals {
			wait := asks[i+1].At.Sub(at)
			if wait < step/2 || wait > step {
				t.Errorf("attempt %d came %v after refusal %d; want %v to %v", i+2, wait, i+1, step/2, step)
			}
			step = min(2*step, 8*time.Second)
			if !bytes.Equal(tkOf(t, reqs[i+1]), tkOf(t, reqs[0])) {
				t.Errorf("attempt %d is for another key", i+2)
			}
		}
	})
}

// TestAsksAgainOnlyAfterTimeout: while a renewal request is unanswered,
// neither the fleet's cert.rotate nor time before the generous answer
// timeout starts another; after it, the device asks again once, for the
// same key.
func TestAsksAgainOnlyAfterTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		d.fleet.OnRenew(func(n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			if n == 1 {
				return 0, nil // lost
			}
			return 0, d.fleet.Issue(req)
		})
		during := func() {
			time.Sleep(time.Minute)
			synctest.Wait()
			if !d.fleet.Send(d.id.DeviceID, wire.TypeRotate, &wire.Rotate{Reason: "forced re-key"}) {
				t.Error("no session to send cert.rotate on")
			}
			synctest.Wait()
			if asks, _ := d.attempts(); len(asks) != 1 {
				t.Errorf("%d renewal challenges asked for a minute after the first request, a rotation asked meanwhile; want 1", len(asks))
			}
		}
		if !d.session(t, time.Hour, during) {
			t.Fatal("the session ended without a renewed certificate")
		}
		asks, reqs := d.attempts()
		if len(asks) != 2 || len(reqs) != 2 {
			t.Fatalf("%d renewal challenges asked for and %d requests; want 2 and 2", len(asks), len(reqs))
		}
		if wait := asks[1].At.Sub(reqs[0].At); wait < MinAnswerTimeout {
			t.Fatalf("asked again %v after an unanswered request; want at least %v", wait, MinAnswerTimeout)
		}
		if !bytes.Equal(tkOf(t, reqs[0]), tkOf(t, reqs[1])) {
			t.Fatal("the second request is for another key")
		}
	})
}

// TestRefusedCertificateNewKey: a certificate for the new key that does
// not verify (not from the trust bundle it came with) is refused, and the
// next attempt, after the backoff, is for another key (the fleet answers
// the same key with the same certificate). A certificate for a key the
// device is not renewing is an answer to an older request: ignored.
func TestRefusedCertificateNewKey(t *testing.T) {
	rogue := fakefleet.New(t, topics)
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		d.fleet.OnRenew(func(n int, req *wire.RenewRequest) (time.Duration, *wire.RenewResult) {
			res := d.fleet.Issue(req)
			if n > 1 {
				return 0, res
			}
			other, _ := d.tpm.CreateTransportKey()
			pub, _ := d.tpm.PublicKey(other)
			stale := &wire.RenewResult{Status: wire.StatusActive, Certificate: d.fleet.IssueCert(d.id.DeviceID, pub, time.Now(), time.Hour),
				TrustBundle: [][]byte{d.fleet.CA().Raw}}
			if !d.fleet.Send(d.id.DeviceID, wire.TypeRenewResult, stale) {
				t.Error("no session")
			}
			c, _ := x509.ParseCertificate(res.Certificate)
			res.Certificate = rogue.IssueCert(d.id.DeviceID, c.PublicKey, time.Now(), time.Hour)
			return time.Second, res
		})
		if !d.session(t, time.Hour, nil) {
			t.Fatal("the session ended without a renewed certificate")
		}
		_, reqs := d.attempts()
		if len(reqs) != 2 || bytes.Equal(tkOf(t, reqs[0]), tkOf(t, reqs[1])) {
			t.Fatalf("%d requests; want 2, for two keys", len(reqs))
		}
		if n := d.stored(t).Next; n == nil || !bytes.Equal(n.TK.Public, tkOf(t, reqs[1])) {
			t.Fatal("the certificate for the second key was not stored")
		}
	})
}

// clientCert is the mTLS configuration of the device's current
// credentials.
func (d *device) clientCert() (*tls.Config, error) {
	signer, err := d.tpm.Signer(blob(d.id.TK))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(d.fleet.CA())
	return &tls.Config{RootCAs: roots, ServerName: fakefleet.ServerName,
		Certificates: []tls.Certificate{{Certificate: [][]byte{d.id.Cert}, PrivateKey: signer}}}, nil
}

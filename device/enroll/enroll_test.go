package enroll

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/device/credential"
	"github.com/sigil-iot/sigil/device/internal/fakefleet"
	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/devicetest"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// device is a device with its keys made, not enrolled, and the fake fleet
// it enrolls with.
type device struct {
	fleet *fakefleet.Fleet
	tpm   *softtpm.TPM
	st    *state.Store
	id    *state.Identity
	cfg   Config

	mu       sync.Mutex
	observed []string // identity statuses the observer saw
	failures []error
}

func (d *device) Identity(id *state.Identity) {
	d.mu.Lock()
	d.observed = append(d.observed, id.Status)
	d.mu.Unlock()
}

func (d *device) Failed(err error) {
	d.mu.Lock()
	d.failures = append(d.failures, err)
	d.mu.Unlock()
}

func newDevice(t *testing.T) *device {
	t.Helper()
	topics := wire.Topics{Prefix: "sigil"}
	f := fakefleet.New(t, topics)
	dev := devicetest.New(t)
	tp, st, id := dev.TPM, dev.Store, dev.Keys(t)
	if err := st.SaveIdentity(id); err != nil {
		t.Fatal(err)
	}
	fleetCA := f.WriteCA(t)
	d := &device{fleet: f, tpm: tp, st: st, id: id}
	d.cfg = Config{TPM: tp, Store: st, Link: link.Config{Broker: fakefleet.Broker}, Topics: topics,
		Dial: func(ctx context.Context, cfg link.Config) (Conn, error) {
			c, err := f.Dial(ctx, cfg)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		ServerName: fakefleet.ServerName, FleetCA: fleetCA, Model: "gw-1", Serial: "SN-1",
		Firmware: func() string { return "1.0.0" }, EventLog: "-", Observer: d,
		PendingRetry: 30 * time.Second, RetryMin: time.Second, RetryMax: 10 * time.Second}
	return d
}

func (d *device) client(t *testing.T) *Client {
	t.Helper()
	c, err := New(d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// stored is the identity in the state store.
func (d *device) stored(t *testing.T) *state.Identity {
	t.Helper()
	id, err := d.st.Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestEnroll: challenge, proof, result. The device answers the fleet's
// challenge (the credential activated for its EK and AK, which the fake
// fleet checks), and stores the certificate for its transport key under
// the device ID of its EK; the release trust of the result is handed on
// before the enrolled identity is stored.
func TestEnroll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		trust := []byte("release trust set")
		d.fleet.OnEnroll(func(int, *wire.EnrollRequest) fakefleet.EnrollAnswer {
			return fakefleet.EnrollAnswer{Edit: func(res *wire.EnrollResult) { res.FirmwareTrust = trust }}
		})
		var handedOn bool
		d.cfg.ReleaseTrust = func(got []byte, _ []wire.TrustRotation) {
			handedOn = bytes.Equal(got, trust) && d.stored(t).Status != state.StatusEnrolled
		}
		id, err := d.client(t).Attempt(t.Context(), d.id)
		if err != nil {
			t.Fatal(err)
		}
		ek, _ := d.tpm.EK()
		want, _ := identity.DeviceID(ek.Key)
		st := d.stored(t)
		if id.Status != state.StatusEnrolled || st.Status != state.StatusEnrolled || st.DeviceID != want || id.DeviceID != want {
			t.Fatalf("identity %s %s, stored %s %s; want enrolled %s", id.Status, id.DeviceID, st.Status, st.DeviceID, want)
		}
		tk, _ := d.tpm.PublicKey(blob(d.id.TK))
		cert, err := credential.Verify(st.Cert, st.Chain, st.TrustBundle, tk, time.Now())
		if err != nil || cert.Subject.CommonName != want {
			t.Fatalf("stored certificate: %v", err)
		}
		if !handedOn {
			t.Fatal("the release trust was not handed on before the identity was stored")
		}
		if n := len(d.fleet.Sent(wire.TypeEnrollProof)); n != 1 {
			t.Fatalf("%d proofs sent, want 1", n)
		}
		var req wire.EnrollRequest
		if err := d.fleet.Sent(wire.TypeEnrollRequest)[0].Body(wire.TypeEnrollRequest, &req); err != nil ||
			req.Model != "gw-1" || req.Firmware != "1.0.0" || req.Serial != "SN-1" || !bytes.Equal(req.TKPublic, d.id.TK.Public) {
			t.Fatalf("request %+v, %v", req, err)
		}
	})
}

// TestEnrollPending: a pending answer is stored, and the device stays
// connected and asks again every PendingRetry; once the fleet says it was
// approved it asks at once, and enrolls.
func TestEnrollPending(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		approved := false
		var mu sync.Mutex
		d.fleet.OnEnroll(func(int, *wire.EnrollRequest) fakefleet.EnrollAnswer {
			mu.Lock()
			defer mu.Unlock()
			return fakefleet.EnrollAnswer{Pending: !approved}
		})
		done := make(chan error, 1)
		start := time.Now()
		go func() {
			_, err := d.client(t).Attempt(t.Context(), d.id)
			done <- err
		}()
		time.Sleep(time.Minute + time.Second)
		synctest.Wait()
		if st := d.stored(t); st.Status != state.StatusPending || st.LastReason != wire.ReasonPending.String() {
			t.Fatalf("stored %s (%s), want pending", st.Status, st.LastReason)
		}
		if n := len(d.fleet.Sent(wire.TypeEnrollRequest)); n != 3 {
			t.Fatalf("%d requests in 61 s with pending_retry 30 s; want 3", n)
		}
		if dials := d.fleet.Dials(); len(dials) != 1 {
			t.Fatalf("%d connections while pending; want 1", len(dials))
		}
		mu.Lock()
		approved = true
		mu.Unlock()
		approvedAt := time.Now()
		d.fleet.Approve()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		reqs := d.fleet.Sent(wire.TypeEnrollRequest)
		if len(reqs) != 4 || !reqs[3].At.Equal(approvedAt) {
			t.Fatalf("%d requests, the last %v after approval (started %v ago); want 4, at once", len(reqs), reqs[len(reqs)-1].At.Sub(approvedAt), time.Since(start))
		}
		if st := d.stored(t); st.Status != state.StatusEnrolled {
			t.Fatalf("stored %s after approval", st.Status)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.observed) < 2 || d.observed[0] != state.StatusPending || d.observed[len(d.observed)-1] != state.StatusEnrolled {
			t.Fatalf("observed %v", d.observed)
		}
	})
}

// TestEnrollRefused: a refusal is a *RefusedError with the fleet's reason
// (decided with errors.As, never on its text) and leaves the device
// unenrolled; Enroll tries again after a backoff, and a later attempt
// enrolls.
func TestEnrollRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		d.fleet.OnEnroll(func(n int, _ *wire.EnrollRequest) fakefleet.EnrollAnswer {
			if n == 1 {
				return fakefleet.EnrollAnswer{Refuse: wire.ReasonUnknownEK, Message: "EK not trusted"}
			}
			return fakefleet.EnrollAnswer{}
		})
		_, err := d.client(t).Attempt(t.Context(), d.id)
		var refused *RefusedError
		if !errors.As(err, &refused) || refused.Reason != wire.ReasonUnknownEK || refused.Message != "EK not trusted" {
			t.Fatalf("Attempt = %v, want a refusal for an unknown EK", err)
		}
		if st := d.stored(t); st.Status != state.StatusKeys || d.id.LastReason == "" {
			t.Fatalf("stored %s, reason %q after a refusal", st.Status, d.id.LastReason)
		}
		d.fleet.OnEnroll(func(n int, _ *wire.EnrollRequest) fakefleet.EnrollAnswer {
			if n == 2 {
				return fakefleet.EnrollAnswer{Refuse: wire.ReasonRateLimited}
			}
			return fakefleet.EnrollAnswer{}
		})
		id, err := d.client(t).Enroll(t.Context(), d.id)
		if err != nil || id.Status != state.StatusEnrolled {
			t.Fatalf("Enroll = %v, %v", id.Status, err)
		}
		reqs := d.fleet.Sent(wire.TypeEnrollRequest)
		if len(reqs) != 3 {
			t.Fatalf("%d requests, want 3", len(reqs))
		}
		if wait := reqs[2].At.Sub(reqs[1].At); wait < 500*time.Millisecond || wait > time.Second {
			t.Fatalf("attempt after a refusal came %v later; want the first backoff step, 0.5 s to 1 s", wait)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.failures) != 1 || !errors.As(d.failures[0], &refused) {
			t.Fatalf("failures observed: %v", d.failures)
		}
	})
}

// TestEnrollHonoursRetryAfter: a fleet that refuses with a RetryAfter
// (rate_limited, as a busy fleet answers) gets the next attempt that long
// later, jittered by up to a quarter more, however many refusals came
// before (the exponential backoff, which would have grown past it, does
// not apply); a RetryAfter beyond MaxRetryAfter is bounded by it.
func TestEnrollHonoursRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		d.cfg.RetryMin, d.cfg.RetryMax = time.Second, 5*time.Minute
		const refusals = 8
		d.fleet.OnEnroll(func(n int, _ *wire.EnrollRequest) fakefleet.EnrollAnswer {
			switch {
			case n <= refusals:
				return fakefleet.EnrollAnswer{Refuse: wire.ReasonRateLimited, Message: "busy", RetryAfter: 10}
			case n == refusals+1:
				return fakefleet.EnrollAnswer{Refuse: wire.ReasonRateLimited, Message: "very busy", RetryAfter: 100_000}
			}
			return fakefleet.EnrollAnswer{}
		})
		id, err := d.client(t).Enroll(t.Context(), d.id)
		if err != nil || id.Status != state.StatusEnrolled {
			t.Fatalf("Enroll = %v, %v", id.Status, err)
		}
		reqs := d.fleet.Sent(wire.TypeEnrollRequest)
		if len(reqs) != refusals+2 {
			t.Fatalf("%d requests, want %d", len(reqs), refusals+2)
		}
		for i := 1; i <= refusals; i++ {
			if wait := reqs[i].At.Sub(reqs[i-1].At); wait < 10*time.Second || wait > 12500*time.Millisecond {
				t.Errorf("attempt %d came %v after a refusal with RetryAfter 10 s; want 10 s to 12.5 s", i+1, wait)
			}
		}
		if wait := reqs[refusals+1].At.Sub(reqs[refusals].At); wait < MaxRetryAfter || wait > MaxRetryAfter*5/4 {
			t.Errorf("attempt after a RetryAfter of 100,000 s came %v later; want MaxRetryAfter (%v) to a quarter more", wait, MaxRetryAfter)
		}
	})
}

// TestEnrollRefusedByOlderFleet: a fleet older than the device cannot
// decode its request and refuses it with unsupported_version without
// naming it; the device takes that refusal (and shows its reason), and no
// other uncorrelated answer.
func TestEnrollRefusedByOlderFleet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		d.fleet.OnEnroll(func(int, *wire.EnrollRequest) fakefleet.EnrollAnswer {
			return fakefleet.EnrollAnswer{Refuse: wire.ReasonUnsupportedVersion, Message: "fleet speaks protocol version 4", Uncorrelated: true}
		})
		_, err := d.client(t).Attempt(t.Context(), d.id)
		var refused *RefusedError
		if !errors.As(err, &refused) || refused.Reason != wire.ReasonUnsupportedVersion {
			t.Fatalf("Attempt = %v, want the older fleet's refusal", err)
		}
		if st := d.stored(t); st.Status != state.StatusKeys {
			t.Fatalf("stored %s after a refusal", st.Status)
		}
		d.fleet.OnEnroll(func(int, *wire.EnrollRequest) fakefleet.EnrollAnswer {
			return fakefleet.EnrollAnswer{Refuse: wire.ReasonUnknownEK, Uncorrelated: true}
		})
		if _, err := d.client(t).Attempt(t.Context(), d.id); !errors.Is(err, ErrNoAnswer) {
			t.Fatalf("Attempt after an uncorrelated refusal of another reason = %v, want ErrNoAnswer", err)
		}
	})
}

// TestEnrollRefusesWrongCertificate: an active result whose certificate
// is not for the transport key, or does not chain to the trust bundle it
// came with, is not stored.
func TestEnrollRefusesWrongCertificate(t *testing.T) {
	rogue := fakefleet.New(t, wire.Topics{})
	for name, edit := range map[string]func(f *fakefleet.Fleet, res *wire.EnrollResult){
		"another key": func(f *fakefleet.Fleet, res *wire.EnrollResult) {
			other, _ := softtpm.New()
			k, _ := other.CreateTransportKey()
			pub, _ := other.PublicKey(k)
			res.Certificate = f.IssueCert(res.DeviceID, pub, time.Now(), time.Hour)
		},
		"another CA": func(f *fakefleet.Fleet, res *wire.EnrollResult) {
			res.TrustBundle = [][]byte{rogue.CA().Raw}
		},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := newDevice(t)
				d.fleet.OnEnroll(func(int, *wire.EnrollRequest) fakefleet.EnrollAnswer {
					return fakefleet.EnrollAnswer{Edit: func(res *wire.EnrollResult) { edit(d.fleet, res) }}
				})
				if _, err := d.client(t).Attempt(t.Context(), d.id); err == nil {
					t.Fatal("a wrong certificate was accepted")
				}
				if st := d.stored(t); st.Status == state.StatusEnrolled || st.Cert != nil {
					t.Fatalf("stored %s with a certificate", st.Status)
				}
			})
		})
	}
}

// TestEnrollNoAnswerOrLost: a fleet that does not answer ends the attempt
// after AnswerTimeout (ErrNoAnswer); a session lost during the attempt
// ends it at once (*LostError).
func TestEnrollNoAnswerOrLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		d.fleet.OnEnroll(func(int, *wire.EnrollRequest) fakefleet.EnrollAnswer { return fakefleet.EnrollAnswer{Silent: true} })
		start := time.Now()
		if _, err := d.client(t).Attempt(t.Context(), d.id); !errors.Is(err, ErrNoAnswer) || time.Since(start) != DefaultAnswerTimeout {
			t.Fatalf("Attempt = %v after %v; want ErrNoAnswer after %v", err, time.Since(start), DefaultAnswerTimeout)
		}
		done := make(chan error, 1)
		go func() {
			_, err := d.client(t).Attempt(t.Context(), d.id)
			done <- err
		}()
		synctest.Wait()
		d.fleet.Drop(d.fleet.Dials()[1].ClientID)
		var lost *LostError
		if err := <-done; !errors.As(err, &lost) {
			t.Fatalf("Attempt = %v, want a lost session", err)
		}
	})
}

// TestEnrollOnlyFromKeysOrPending: an enrolled identity is not enrolled
// again by Attempt (a re-enrollment first forgets the certificate).
func TestEnrollOnlyFromKeysOrPending(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDevice(t)
		d.id.Status = state.StatusEnrolled
		if _, err := d.client(t).Attempt(t.Context(), d.id); err == nil {
			t.Fatal("an enrolled identity was enrolled again")
		}
		if n := len(d.fleet.Dials()); n != 0 {
			t.Fatalf("%d connections", n)
		}
	})
}

// TestBootstrapTrust: the bootstrap connection trusts the roots the device
// holds, with fleet_ca beside them when it exists; without either it
// refuses to start.
func TestBootstrapTrust(t *testing.T) {
	held, stale := fakefleet.New(t, wire.Topics{}), fakefleet.New(t, wire.Topics{})
	dir := t.TempDir()
	fleetCA := filepath.Join(dir, "fleet-ca.pem")
	if err := os.WriteFile(fleetCA, stale.CAPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	c := &Client{cfg: Config{FleetCA: fleetCA, ServerName: fakefleet.ServerName, Now: time.Now}, log: discard()}
	verifies := func(pool *x509.CertPool, f *fakefleet.Fleet) bool {
		_, err := f.CA().Verify(x509.VerifyOptions{Roots: pool})
		return err == nil
	}
	cfg, err := c.bootstrapTLS([][]byte{held.CA().Raw})
	if err != nil || !verifies(cfg.RootCAs, held) || !verifies(cfg.RootCAs, stale) {
		t.Fatalf("held bundle and fleet_ca: %v", err)
	}
	os.Remove(fleetCA)
	cfg, err = c.bootstrapTLS([][]byte{held.CA().Raw})
	if err != nil || !verifies(cfg.RootCAs, held) || verifies(cfg.RootCAs, stale) {
		t.Fatalf("held bundle without fleet_ca: %v", err)
	}
	if _, err := c.bootstrapTLS(nil); err == nil {
		t.Fatal("no trust at all accepted")
	}
	if err := os.WriteFile(fleetCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: stale.CA().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = c.bootstrapTLS(nil)
	if err != nil || !verifies(cfg.RootCAs, stale) || verifies(cfg.RootCAs, held) {
		t.Fatalf("first enrollment with fleet_ca only: %v", err)
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

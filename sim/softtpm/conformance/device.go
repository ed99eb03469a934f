package conformance

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// testCounters checks the anti-rollback NV counters: an undefined one is
// ErrCounterUndefined, a defined one starts at 0,
// never go backwards, refuse a jump, refuse an index that is not a counter,
// and survive a reboot.
func testCounters(t *testing.T, e *env) {
	const idx = 0x01800200
	if v, err := e.a.Counter(idx); !errors.Is(err, tpm.ErrCounterUndefined) {
		t.Fatalf("undefined counter: %d %v, want ErrCounterUndefined", v, err)
	}
	if v, err := e.a.AdvanceCounter(idx, 0); err != nil || v != 0 {
		t.Fatalf("advance to 0: %d %v", v, err)
	}
	if v, err := e.a.Counter(idx); err != nil || v != 0 {
		t.Fatalf("counter defined by advancing to 0: %d %v, want 0", v, err)
	}
	// A random walk of targets: the value is always the highest target yet.
	r := mrand.New(mrand.NewPCG(1, 2))
	high := uint64(0)
	for range 20 {
		to := high + uint64(r.IntN(6)) - 2
		if high < 2 && to > high+3 { // wrapped below zero
			to = 0
		}
		v, err := e.a.AdvanceCounter(idx, to)
		if err != nil {
			t.Fatal(err)
		}
		high = max(high, to)
		if v != high {
			t.Fatalf("advance to %d: value %d, want %d", to, v, high)
		}
		if got, err := e.a.Counter(idx); err != nil || got != high {
			t.Fatalf("counter reads %d (%v), want %d", got, err, high)
		}
	}
	if _, err := e.a.AdvanceCounter(idx, high+tpm.MaxCounterAdvance+1); !errors.Is(err, tpm.ErrCounterJump) {
		t.Fatalf("jump: %v, want ErrCounterJump", err)
	}
	if got, err := e.a.Counter(idx); err != nil || got != high {
		t.Fatalf("a refused jump moved the counter to %d (%v)", got, err)
	}

	sv, err := e.a.SecurityVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v, err := e.a.AdvanceSecurityVersion(sv + 3); err != nil || v != sv+3 {
		t.Fatalf("advance security version: %d %v", v, err)
	}
	if v, err := e.a.AdvanceSecurityVersion(sv + 1); err != nil || v != sv+3 {
		t.Fatalf("security version went back to %d (%v)", v, err)
	}

	// The EK certificate's index is NV, but not a counter.
	notCounter := 0
	for _, i := range []uint32{softtpm.EKCertIndexRSA, softtpm.EKCertIndexP256, 0x01c00016} {
		v, err := e.a.Counter(i)
		switch {
		case errors.Is(err, tpm.ErrNotCounter):
			notCounter++
			if _, err := e.a.AdvanceCounter(i, 1); !errors.Is(err, tpm.ErrNotCounter) {
				t.Errorf("advance of EK certificate index 0x%08x: %v", i, err)
			}
		case errors.Is(err, tpm.ErrCounterUndefined): // not written by this TPM
		default:
			t.Errorf("EK certificate index 0x%08x: %d %v, want ErrNotCounter or ErrCounterUndefined", i, v, err)
		}
	}
	if notCounter == 0 {
		t.Error("no EK certificate index reads as a non-counter")
	}
	if _, err := e.a.Counter(0x81000001); err == nil {
		t.Error("a persistent object handle read as a counter")
	}

	if err := e.a.Reboot(); err != nil {
		t.Fatal(err)
	}
	if got, err := e.a.Counter(idx); err != nil || got != high {
		t.Fatalf("counter after reboot: %d %v, want %d", got, err, high)
	}
}

// testReboot power-cycles device A: same EK, keys still load, PCRs reset,
// and the quote's reset counter (obfuscated by the TPM, but by a constant
// per AK) moves on by one.
func testReboot(t *testing.T, e *env) {
	ek := e.verifiedEK(t, e.a)
	ak := verifyAK(t, e.a, e.akA)
	sel := sha256Sel(16)
	nonce := bytes.Repeat([]byte{3}, 32)
	quote := func() *verifier.VerifiedQuote {
		t.Helper()
		q, err := e.a.Quote(e.akA, nonce, sel)
		if err != nil {
			t.Fatal(err)
		}
		vq, err := verifier.VerifyQuote(ak, nonce, sel, q)
		if err != nil {
			t.Fatal(err)
		}
		return vq
	}
	d := sha256.Sum256([]byte("before reboot"))
	if err := e.a.ExtendPCR(16, d[:]); err != nil {
		t.Fatal(err)
	}
	before := quote()
	if err := e.a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := e.a.Reboot(); err != nil {
		t.Fatal(err)
	}
	after := quote()
	if !bytes.Equal(after.PCRs[16], make([]byte, 32)) {
		t.Errorf("PCR 16 after reboot = %x, want zero", after.PCRs[16])
	}
	if after.Clock.ResetCount-before.Clock.ResetCount != 1 {
		t.Errorf("reset count went from %d to %d, want one more", before.Clock.ResetCount, after.Clock.ResetCount)
	}
	if after.Clock.RestartCount != before.Clock.RestartCount {
		t.Errorf("restart count went from %d to %d on a reset", before.Clock.RestartCount, after.Clock.RestartCount)
	}
	if after.Clock.Clock < before.Clock.Clock {
		t.Errorf("clock went back from %d to %d", before.Clock.Clock, after.Clock.Clock)
	}
	if e.verifiedEK(t, e.a).Fingerprint != ek.Fingerprint {
		t.Error("EK changed across a reboot")
	}
	s, err := e.a.Signer(e.tkA)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte("after reboot"))
	if _, err := s.Sign(rand.Reader, h[:], crypto.SHA256); err != nil {
		t.Fatalf("transport key after reboot: %v", err)
	}
}

// testConcurrent runs signatures and quotes from several goroutines, as
// TLS handshakes and attestation do on a device: all succeed and verify.
func testConcurrent(t *testing.T, e *env) {
	s, err := e.a.Signer(e.tkA)
	if err != nil {
		t.Fatal(err)
	}
	ak := verifyAK(t, e.a, e.akA)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 6 {
		wg.Go(func() {
			for i := range 4 {
				d := sha256.Sum256([]byte{byte(g), byte(i)})
				if g%3 == 0 {
					q, err := e.a.Quote(e.akA, d[:], sha256Sel(0, 16))
					if err == nil {
						_, err = verifier.VerifyQuote(ak, d[:], sha256Sel(0, 16), q)
					}
					if err != nil {
						errs <- err
						return
					}
					continue
				}
				sig, err := s.Sign(nil, d[:], crypto.SHA256)
				if err != nil {
					errs <- err
					return
				}
				if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
					errs <- fmt.Errorf("goroutine %d: signature does not verify", g)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// testClosed closes device B: every operation then fails with
// tpm.ErrClosed, and closing again is harmless.
func testClosed(t *testing.T, e *env) {
	if err := e.b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.EK(); !errors.Is(err, tpm.ErrClosed) {
		t.Errorf("EK after Close: %v", err)
	}
	if _, err := e.b.CreateAK(); !errors.Is(err, tpm.ErrClosed) {
		t.Errorf("CreateAK after Close: %v", err)
	}
	if _, err := e.b.Quote(e.akB, nil, sha256Sel(0)); !errors.Is(err, tpm.ErrClosed) {
		t.Errorf("Quote after Close: %v", err)
	}
	if err := e.b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

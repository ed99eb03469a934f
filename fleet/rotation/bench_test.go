package rotation

// Fleet-side renewal cost next to its crypto floor (docs/BENCHMARKS.md,
// figure 6). No TPM is in the measured loop.
//
// The evidence is genuine: the in-process TPM simulator, through device/tpm
// as sigild uses it, creates the AK and the new transport key, quotes and
// certifies over the fleet's renewal nonce and signs the CSR, once per
// benchmark run. The renewal nonce is random, so a recorded request would
// answer only one challenge; the attestation service is therefore given a
// deterministic Config.Rand that is rewound before every challenge, so each
// challenge issues the same nonce and the one recorded request answers it.
// Everything else is the production path: the nonce is issued, stored and
// consumed every time, the quote, certify and CSR are verified, a
// certificate is issued, and the verdict, device, event and history writes
// happen every time (fsync'd unless the name says nosync).

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/tpm"
	_ "github.com/sigil-iot/sigil/device/tpm/tpmsim" // the in-process TPM that records the evidence
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// replayRand is a deterministic entropy source that rewind restarts. It is
// used from one goroutine at a time.
type replayRand struct {
	seed [32]byte
	r    *mrand.ChaCha8
}

func newReplayRand() *replayRand {
	r := &replayRand{seed: [32]byte{'r', 'e', 'n', 'e', 'w'}}
	r.rewind()
	return r
}

func (r *replayRand) rewind()                    { r.r = mrand.NewChaCha8(r.seed) }
func (r *replayRand) Read(p []byte) (int, error) { return r.r.Read(p) }

const benchDevice = "0123456789abcdef0123456789abcdef"

// recording is genuine renewal requests and what the crypto floor needs.
type recording struct {
	akPublic []byte
	// reqs are renewals for two new keys over the same nonce: a renewal
	// for the key the device's current certificate certifies is answered
	// with that certificate, so renewals that should each issue one
	// alternate keys.
	reqs [2]wire.RenewRequest
	sels []wire.PCRSelection
}

var (
	recordOnce sync.Once
	recorded   *recording
	recordErr  error
)

// record returns the recording, making it on first use.
func record(tb testing.TB) *recording {
	tb.Helper()
	recordOnce.Do(func() { recorded, recordErr = newRecording(tb.TempDir()) })
	if recordErr != nil {
		tb.Fatal(recordErr)
	}
	return recorded
}

// newRecording records renewals: a throwaway fleet issues the renewal
// challenge, the simulator answers it as sigild's sendRenewal does, for
// each of two new keys, and the fleet must accept each answer.
func newRecording(dir string) (*recording, error) {
	t, err := tpm.Open("sim://")
	if err != nil {
		return nil, err
	}
	defer t.Close() // the TPM is gone before any benchmark loop runs
	ak, err := t.CreateAK()
	if err != nil {
		return nil, err
	}
	rec := &recording{akPublic: ak.Public}
	h, err := rec.newHarness(dir, false)
	if err != nil {
		return nil, err
	}
	defer h.close()
	h.rand.rewind()
	ch, err := h.challenge()
	if err != nil {
		return nil, err
	}
	ev := wire.AttestEvidence{Nonce: ch.Nonce, Firmware: "1.0.0"}
	for _, sel := range ch.Selections {
		q, err := t.Quote(ak, ch.Nonce, sel)
		if err != nil {
			return nil, err
		}
		ev.Quotes = append(ev.Quotes, *q)
	}
	rec.sels = ch.Selections
	for i := range rec.reqs {
		tk, err := t.CreateTransportKey()
		if err != nil {
			return nil, err
		}
		certInfo, sig, err := t.Certify(ak, tk, ch.Nonce)
		if err != nil {
			return nil, err
		}
		signer, err := t.Signer(tk)
		if err != nil {
			return nil, err
		}
		csr, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: benchDevice}, SignatureAlgorithm: x509.ECDSAWithSHA256}, signer)
		if err != nil {
			return nil, err
		}
		rec.reqs[i] = wire.RenewRequest{Nonce: ch.Nonce, TKPublic: tk.Public, CertifyInfo: certInfo, CertifySig: sig, CSR: csr, Evidence: ev}
		if i > 0 {
			h.rand.rewind()
			if _, err := h.challenge(); err != nil {
				return nil, err
			}
		}
		if err := h.renew(encode(wire.TypeRenewRequest, &rec.reqs[i])); err != nil {
			return nil, fmt.Errorf("recorded renewal %d refused: %w", i, err)
		}
	}
	return rec, nil
}

// harness is a rotation service, with its attestation service, CA,
// inventory, history and job file, and the messages it sends captured.
type harness struct {
	svc  *Service
	att  *attest.Service
	inv  *inventory.Store
	hist *attest.History
	jobs *Jobs
	rand *replayRand

	mu   sync.Mutex
	sent map[string][]byte // by kind: the last message sent
}

// newHarness builds the services in dir with one active device whose AK is
// the recording's.
func (rec *recording) newHarness(dir string, noSync bool) (*harness, error) {
	h := &harness{rand: newReplayRand(), sent: map[string][]byte{}}
	var opts []inventory.Option
	if noSync {
		opts = append(opts, inventory.WithNoSync())
	}
	var err error
	if h.inv, err = inventory.Open(filepath.Join(dir, "inventory.db"), opts...); err != nil {
		return nil, err
	}
	if h.hist, err = attest.OpenHistory(filepath.Join(dir, "attestations.db"), 100); err != nil {
		h.close()
		return nil, err
	}
	if h.jobs, err = OpenJobs(filepath.Join(dir, "rotations.db")); err != nil {
		h.close()
		return nil, err
	}
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), TrustDomain: "bench.sigil.local"})
	if err != nil {
		h.close()
		return nil, err
	}
	send := func(_, kind string, payload []byte) error {
		h.mu.Lock()
		h.sent[kind] = payload
		h.mu.Unlock()
		return nil
	}
	noEventLog := false
	if h.att, err = attest.New(attest.Config{Inventory: h.inv, History: h.hist, Rand: h.rand, EventLog: &noEventLog,
		Send: send, Disconnect: func(string) {}}); err != nil {
		h.close()
		return nil, err
	}
	if h.svc, err = New(Config{CA: fleetCA, Inventory: h.inv, Attest: h.att, Jobs: h.jobs, Send: send}); err != nil {
		h.close()
		return nil, err
	}
	err = h.inv.PutDevice(context.Background(), &inventory.Device{ID: benchDevice, EKFingerprint: "1111111111111111111111111111111111111111111111111111111111111111",
		Model: "bench-gw", Firmware: "1.0.0", State: inventory.StateActive, CertSerial: "c0ffee", AKPublic: rec.akPublic})
	if err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *harness) close() {
	for _, c := range []interface{ Close() error }{h.inv, h.hist, h.jobs} {
		if c != nil {
			c.Close()
		}
	}
}

var renewRequestMsg = encode(wire.TypeAttestRequest, &wire.AttestRequest{Reason: wire.PurposeRenew})

// challenge asks the attestation service for a renewal nonce, as the
// device's attest.request does, and returns the challenge it sent.
func (h *harness) challenge() (*wire.AttestChallenge, error) {
	env, err := wire.Decode(renewRequestMsg)
	if err != nil {
		return nil, err
	}
	h.att.Submit(benchDevice, env, renewRequestMsg)
	var ch wire.AttestChallenge
	if err := h.last("attest", wire.TypeAttestChallenge, &ch); err != nil {
		return nil, err
	}
	return &ch, nil
}

// renew hands a renewal request to the service, as the fleet's broker
// handler does after decoding it, and checks the answer is a certificate.
func (h *harness) renew(msg []byte) error {
	env, err := wire.Decode(msg)
	if err != nil {
		return err
	}
	h.svc.Renew(benchDevice, env)
	var res wire.RenewResult
	if err := h.last("cert", wire.TypeRenewResult, &res); err != nil {
		return err
	}
	if res.Status != wire.StatusActive || len(res.Certificate) == 0 {
		return &refusedError{res}
	}
	return nil
}

type refusedError struct{ res wire.RenewResult }

func (e *refusedError) Error() string {
	return fmt.Sprintf("renewal answered %s: %v: %s", e.res.Status, e.res.Reason, e.res.Message)
}

func (h *harness) last(kind, typ string, body any) error {
	h.mu.Lock()
	b := h.sent[kind]
	h.sent[kind] = nil
	h.mu.Unlock()
	if b == nil {
		return fmt.Errorf("nothing sent on %s", kind)
	}
	env, err := wire.Decode(b)
	if err != nil {
		return err
	}
	return wire.DecodeBody(env, typ, body)
}

func encode(typ string, body any) []byte {
	b, err := wire.Encode(typ, nil, time.Now(), body)
	if err != nil {
		panic(err)
	}
	return b
}

// messages pre-encodes n renewal requests (fresh message IDs), the keys
// alternating, so that each issues a certificate.
func (rec *recording) messages(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = encode(wire.TypeRenewRequest, &rec.reqs[i%2])
	}
	return out
}

func opsPerSecond(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// renewal is the fleet side of one renewal: the renewal challenge issued
// (nonce drawn, stored, challenge encoded and sent), then Renew.
func (h *harness) renewal(msg []byte) error {
	h.rand.rewind()
	if _, err := h.challenge(); err != nil {
		return err
	}
	return h.renew(msg)
}

// BenchmarkRenew measures the fleet side of a renewal, one at a time on one
// goroutine (Run verifies on Config.Workers of them, GOMAXPROCS by
// default):
//
//   - renewal: the renewal challenge (nonce issued and sent), then Renew:
//     decode, device lookup, attestation (nonce consumed, quote verified,
//     counters against the history, policy selection; the verdict written
//     to the inventory and the history), AK and new-key checks,
//     TPM2_Certify, CSR, certificate issue, device write, event write,
//     result encode;
//   - renewal-nosync: the same with the inventory not syncing to disk (the
//     history still does), to show what fsync costs.
func BenchmarkRenew(b *testing.B) {
	rec := record(b)
	run := func(b *testing.B, noSync bool) {
		h, err := rec.newHarness(b.TempDir(), noSync)
		if err != nil {
			b.Fatal(err)
		}
		defer h.close()
		msgs := rec.messages(b.N)
		b.ResetTimer()
		for i := range b.N {
			if err := h.renewal(msgs[i]); err != nil {
				b.Fatalf("renewal %d: %v", i, err)
			}
		}
		b.StopTimer()
		opsPerSecond(b)
	}
	b.Run("renewal", func(b *testing.B) { run(b, false) })
	b.Run("renewal-nosync", func(b *testing.B) { run(b, true) })
}

// floor is the cryptography of one renewal, called directly: the quote
// signature(s), the TPM2_Certify signature, the CSR signature and the
// certificate signature. The AK and the new key are decoded once outside
// (decoding is not cryptography).
type floor struct {
	rec   *recording
	ak    *verifier.AK
	tk    *verifier.TransportKey
	fleet *ca.CA
}

func newFloor(b *testing.B, rec *recording) *floor {
	ak, err := verifier.VerifyAK(rec.akPublic)
	if err != nil {
		b.Fatal(err)
	}
	tk, err := verifier.VerifyTransportKeyPublic(rec.reqs[0].TKPublic)
	if err != nil {
		b.Fatal(err)
	}
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(b.TempDir(), "ca"), TrustDomain: "bench.sigil.local"})
	if err != nil {
		b.Fatal(err)
	}
	return &floor{rec: rec, ak: ak, tk: tk, fleet: fleetCA}
}

func (f *floor) run() error {
	req := &f.rec.reqs[0]
	for i, sel := range f.rec.sels {
		if _, err := verifier.VerifyQuote(f.ak, req.Nonce, sel, &req.Evidence.Quotes[i]); err != nil {
			return err
		}
	}
	ck, err := verifier.VerifyCertify(f.ak, f.tk, req.Nonce, req.CertifyInfo, req.CertifySig)
	if err != nil {
		return err
	}
	if _, err := verifier.VerifyCSR(req.CSR, ck); err != nil {
		return err
	}
	_, err = f.fleet.IssueDevice(benchDevice, ck.Key, time.Hour)
	return err
}

// BenchmarkRenewFloor is the lower bound of BenchmarkRenew/renewal: the
// same verifications and signature on the same evidence, without
// messages, nonces, policy or stores.
func BenchmarkRenewFloor(b *testing.B) {
	f := newFloor(b, record(b))
	for b.Loop() {
		if err := f.run(); err != nil {
			b.Fatal(err)
		}
	}
	opsPerSecond(b)
}

// BenchmarkRenewFloorShare interleaves a whole fleet-side renewal
// (BenchmarkRenew/renewal) and a crypto floor pass (BenchmarkRenewFloor)
// in every iteration and times each, so that both see the same machine
// state; it reports their rates and the floor's share of the renewal.
func BenchmarkRenewFloorShare(b *testing.B) {
	rec := record(b)
	f := newFloor(b, rec)
	h, err := rec.newHarness(b.TempDir(), false)
	if err != nil {
		b.Fatal(err)
	}
	defer h.close()
	msgs := rec.messages(b.N)
	var renew, floorTime time.Duration
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if err := h.renewal(msgs[i]); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := f.run(); err != nil {
			b.Fatal(err)
		}
		renew += t1.Sub(t0)
		floorTime += time.Since(t1)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/renew.Seconds(), "renew/s")
	b.ReportMetric(float64(b.N)/floorTime.Seconds(), "floor/s")
	b.ReportMetric(100*floorTime.Seconds()/renew.Seconds(), "floor-%")
}

// BenchmarkJobStep measures the job bookkeeping of a forced rotation over
// N devices (all active, inventory writes not synced: set-up), with the
// job writes fsync'd as in production:
//
//   - renewed: what a renewal pays: the device looked up by key in the
//     running job and marked renewed (one write);
//   - tick: one once-a-second step of a job at rate 100: the 100 devices
//     at the front of its queue read from the inventory, asked, and
//     written back (one write). The clock moves past the resend time
//     every iteration, so every step has 100 devices to ask.
func BenchmarkJobStep(b *testing.B) {
	for _, n := range []int{100, 1000, 10000, 100000} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			inv, err := inventory.Open(filepath.Join(dir, "inventory.db"), inventory.WithNoSync())
			if err != nil {
				b.Fatal(err)
			}
			defer inv.Close()
			jobs, err := OpenJobs(filepath.Join(dir, "rotations.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer jobs.Close()
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("%032x", i+1)
				err := inv.PutDevice(context.Background(), &inventory.Device{ID: ids[i], EKFingerprint: fmt.Sprintf("%064x", i+1), Model: "bench-gw",
					State: inventory.StateActive, CertSerial: "01"})
				if err != nil {
					b.Fatal(err)
				}
			}
			now := time.Now()
			svc := &Service{cfg: Config{Inventory: inv, Jobs: jobs, Now: func() time.Time { return now },
				Send: func(string, string, []byte) error { return nil }}, log: slog.New(slog.DiscardHandler)}
			start := func(b *testing.B) *Job {
				job, err := svc.Start(Selector{All: true}, 100, "bench", "")
				if err != nil {
					b.Fatal(err)
				}
				return job
			}
			b.Run("renewed", func(b *testing.B) {
				job, k := start(b), 0
				for b.Loop() {
					if k == n { // every device renewed: a new job
						b.StopTimer()
						job, k = start(b), 0
						b.StartTimer()
					}
					done, err := jobs.renewed(context.Background(), ids[k], now)
					if err != nil || (len(done) == 1) != (k == n-1) {
						b.Fatalf("renewed %d of %d: done %v, %v", k, n, done, err)
					}
					k++
				}
				b.StopTimer()
				got, err := jobs.Get(context.Background(), job.ID)
				if err != nil {
					b.Fatal(err)
				}
				if p := got.Progress(); p.Renewed != k || p.Waiting != n-k {
					b.Fatalf("after %d renewals: %+v", k, p)
				}
				svc.Cancel(job.ID) // b.Loop may run this again on the same devices
			})
			b.Run("tick", func(b *testing.B) {
				job := start(b)
				for b.Loop() {
					now = now.Add(resend + time.Second)
					svc.step(context.Background())
				}
				b.StopTimer()
				got, err := jobs.Get(context.Background(), job.ID)
				if err != nil {
					b.Fatal(err)
				}
				if p := got.Progress(); p.Sent+p.Renewed != min(n, 100*b.N) && p.Sent != n {
					b.Fatalf("after %d ticks: %+v", b.N, p)
				}
				svc.Cancel(job.ID)
			})
		})
	}
}

// BenchmarkBoltWrite is one small fsync'd bbolt write on this disk (a job
// header): the unit the renewal path pays several times.
func BenchmarkBoltWrite(b *testing.B) {
	jobs, err := OpenJobs(filepath.Join(b.TempDir(), "rotations.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer jobs.Close()
	h := &header{Job: &Job{ID: "rot_bench", Created: time.Now().UTC(), Selector: Selector{All: true}, State: JobRunning}, Total: 1}
	for b.Loop() {
		if err := jobs.db.Update(context.Background(), func(tx kv.Tx) error { return putHeader(tx, h) }); err != nil {
			b.Fatal(err)
		}
	}
	opsPerSecond(b)
}

// TestRecordingRenews checks the premise of the benchmarks in a normal
// test run: the recorded requests, keys alternating, renew under a rewound
// Rand, again and again, and are refused for a nonce the fleet did not
// issue.
func TestRecordingRenews(t *testing.T) {
	if testing.Short() {
		t.Skip("records evidence with the TPM simulator")
	}
	rec := record(t)
	h, err := rec.newHarness(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	serials := map[string]bool{}
	for i := range 3 {
		if err := h.renewal(encode(wire.TypeRenewRequest, &rec.reqs[i%2])); err != nil {
			t.Fatalf("renewal %d: %v", i, err)
		}
		d, err := h.inv.Device(t.Context(), benchDevice)
		if err != nil {
			t.Fatal(err)
		}
		serials[d.CertSerial] = true
	}
	if len(serials) != 3 {
		t.Fatalf("%d distinct serials after 3 renewals", len(serials))
	}
	// Without a fresh challenge the nonce was consumed: refused.
	var re *refusedError
	if err := h.renew(encode(wire.TypeRenewRequest, &rec.reqs[0])); !errors.As(err, &re) || re.res.Reason != wire.ReasonNonceInvalid {
		t.Fatalf("a renewal without an issued nonce: %v, want refused with %v", err, wire.ReasonNonceInvalid)
	}
}

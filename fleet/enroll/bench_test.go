package enroll_test

// Server-side enrollment cost next to its crypto floor (docs/BENCHMARKS.md,
// figure 1). No TPM is in the measured loop.
//
// The evidence is genuine: a TPM (the in-process simulator, through
// device/tpm exactly as sigild uses it) creates the AK and the transport
// key, signs the CSR, activates the fleet's credential, certifies and
// quotes, once per benchmark run. The fleet's credential challenge is random,
// so a recorded proof would normally answer only one session. The services
// under test are therefore given a deterministic Config.Rand that is rewound
// before every request: each request draws the same session ID, nonce and
// secret, and the one recorded proof answers every session. Everything else
// is the production path: message IDs are fresh (the replay check passes
// because the message is new, not because it is skipped), the session is
// consumed by its proof, MakeCredential encrypts to the EK every time, and
// the certificate and inventory writes happen every time. From the second
// iteration on the EK is known to the inventory, so the request takes the
// re-enrollment branch of the same lookups and the proof overwrites the
// device record; the work is the same as a first enrollment.

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/tpm"
	_ "github.com/sigil-iot/sigil/device/tpm/tpmsim" // the in-process TPM that records the evidence
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/inventory"
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
	r := &replayRand{seed: [32]byte{'s', 'i', 'g', 'i', 'l'}}
	r.rewind()
	return r
}

func (r *replayRand) rewind()                    { r.r = mrand.NewChaCha8(r.seed) }
func (r *replayRand) Read(p []byte) (int, error) { return r.r.Read(p) }

// recording is one genuine enrollment: the request, the proof that answers
// the challenge replayRand makes the fleet issue, and the values the crypto
// floor needs.
type recording struct {
	req   wire.EnrollRequest
	proof wire.EnrollProof

	// The manufacturer CA the fleet trusts: a root and the intermediate that
	// issued the EK certificate, both RSA-2048 like swtpm's and most
	// vendors'. The device presents only its EK certificate.
	roots, intermediates *x509.CertPool

	session, nonce, secret []byte // the challenge replayRand produces
	sel                    wire.PCRSelection
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

// newRecording records an enrollment; dir holds a throwaway fleet.
func newRecording(dir string) (*recording, error) {
	t, err := tpm.Open("sim://")
	if err != nil {
		return nil, err
	}
	defer t.Close() // the TPM is gone before any benchmark loop runs
	ek, err := t.EK()
	if err != nil {
		return nil, err
	}
	ak, err := t.CreateAK()
	if err != nil {
		return nil, err
	}
	tk, err := t.CreateTransportKey()
	if err != nil {
		return nil, err
	}
	signer, err := t.Signer(tk)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "bench"}, SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, signer)
	if err != nil {
		return nil, err
	}
	rec := &recording{}
	ekCert, err := rec.vendorCA(ek.Key)
	if err != nil {
		return nil, err
	}
	rec.req = wire.EnrollRequest{
		EKPublic: ek.Public, EKCert: ekCert, AKPublic: ak.Public, TKPublic: tk.Public, CSR: csr,
		Model: "bench-gw", Firmware: "1.0.0", Serial: "BENCH-0001",
	}

	// Ask a fleet for the challenge, answer it with the TPM, and check the
	// fleet accepts the answer.
	h, err := rec.newHarness(dir, false)
	if err != nil {
		return nil, err
	}
	defer h.inv.Close()
	h.rand.rewind()
	h.svc.Handle("bench", encode(wire.TypeEnrollRequest, &rec.req))
	var ch wire.EnrollChallenge
	if err := h.last(wire.TypeEnrollChallenge, &ch); err != nil {
		return nil, err
	}
	secret, err := t.ActivateCredential(ak, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		return nil, err
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(ch.Session)
	mac.Write(ch.Nonce)
	attest, sig, err := t.Certify(ak, tk, ch.Nonce)
	if err != nil {
		return nil, err
	}
	q, err := t.Quote(ak, ch.Nonce, ch.Selection)
	if err != nil {
		return nil, err
	}
	rec.proof = wire.EnrollProof{Session: ch.Session, Activation: mac.Sum(nil), CertifyInfo: attest, CertifySig: sig, Quote: *q}
	rec.session, rec.nonce, rec.secret, rec.sel = ch.Session, ch.Nonce, secret, ch.Selection
	h.svc.Handle("bench", encode(wire.TypeEnrollProof, &rec.proof))
	var res wire.EnrollResult
	if err := h.last(wire.TypeEnrollResult, &res); err != nil {
		return nil, err
	}
	if res.Status != wire.StatusActive {
		return nil, fmt.Errorf("recorded proof refused: %v: %s", res.Reason, res.Message)
	}
	return rec, nil
}

// vendorCA makes an RSA-2048 root and intermediate, as a TPM manufacturer
// has, and issues the EK certificate for ekKey.
func (rec *recording) vendorCA(ekKey crypto.PublicKey) ([]byte, error) {
	now := time.Now()
	mk := func(cn string, parent *x509.Certificate, parentKey crypto.Signer, pub crypto.PublicKey, isCA bool) (*x509.Certificate, error) {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{Organization: []string{"Bench TPM Vendor"}, CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), BasicConstraintsValid: true, IsCA: isCA,
			KeyUsage: x509.KeyUsageCertSign,
		}
		if !isCA {
			tmpl.KeyUsage = x509.KeyUsageKeyEncipherment
			tmpl.UnknownExtKeyUsage = append(tmpl.UnknownExtKeyUsage, []int{2, 23, 133, 8, 1}) // TCG EK certificate
		}
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
		if err != nil {
			return nil, err
		}
		return x509.ParseCertificate(der)
	}
	rootKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	interKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	root, err := mk("Bench EK Root CA", nil, rootKey, rootKey.Public(), true)
	if err != nil {
		return nil, err
	}
	inter, err := mk("Bench EK Issuing CA", root, rootKey, interKey.Public(), true)
	if err != nil {
		return nil, err
	}
	leaf, err := mk("EK", inter, interKey, ekKey, false)
	if err != nil {
		return nil, err
	}
	rec.roots, rec.intermediates = x509.NewCertPool(), x509.NewCertPool()
	rec.roots.AddCert(root)
	rec.intermediates.AddCert(inter)
	return leaf.Raw, nil
}

// trust is a fresh EKTrust (empty verified-intermediate cache) for the
// vendor CA, configured as sigil serve loads an EK CA directory.
func (rec *recording) trust() *verifier.EKTrust {
	return &verifier.EKTrust{Roots: rec.roots, Intermediates: rec.intermediates}
}

// harness is a service under test with what it sends captured.
type harness struct {
	svc  *enroll.Service
	inv  *inventory.Store
	ca   *ca.CA
	rand *replayRand

	mu   sync.Mutex
	sent []byte // the last message sent
}

// newHarness builds a service with a new fleet CA and inventory in dir, and
// a fresh EKTrust.
func (rec *recording) newHarness(dir string, noSync bool) (*harness, error) {
	var opts []inventory.Option
	if noSync {
		opts = append(opts, inventory.WithNoSync())
	}
	inv, err := inventory.Open(filepath.Join(dir, "inventory.db"), opts...)
	if err != nil {
		return nil, err
	}
	fleetCA, err := newCA(dir)
	if err != nil {
		inv.Close()
		return nil, err
	}
	h := &harness{inv: inv, ca: fleetCA, rand: newReplayRand()}
	h.svc, err = h.service(rec.trust())
	if err != nil {
		inv.Close()
		return nil, err
	}
	return h, nil
}

// send records payload as the last message sent: the harness's Send.
func (h *harness) send(_, _ string, payload []byte) error {
	h.mu.Lock()
	h.sent = payload
	h.mu.Unlock()
	return nil
}

func newCA(dir string) (*ca.CA, error) {
	return ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), TrustDomain: "bench.sigil.local"})
}

func (h *harness) service(trust *verifier.EKTrust) (*enroll.Service, error) {
	return enroll.New(enroll.Config{
		CA: h.ca, Inventory: h.inv, Trust: trust, Rand: h.rand,
		Send: h.send,
	})
}

// last decodes the last message sent; it must be of type typ.
func (h *harness) last(typ string, body any) error {
	h.mu.Lock()
	b := h.sent
	h.mu.Unlock()
	env, err := wire.Decode(b)
	if err != nil {
		return err
	}
	if env.Type == wire.TypeEnrollResult && typ != wire.TypeEnrollResult {
		var res wire.EnrollResult
		if wire.DecodeBody(env, wire.TypeEnrollResult, &res) == nil {
			return fmt.Errorf("fleet answered %s: %v: %s", res.Status, res.Reason, res.Message)
		}
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

// messages pre-encodes n envelopes (fresh message IDs) around body.
func messages(n int, typ string, body any) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = encode(typ, body)
	}
	return out
}

func opsPerSecond(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkHandle measures (*enroll.Service).Handle, one message at a time
// on one goroutine:
//
//   - request: decode, EK certificate chain (cached intermediate), AK and
//     transport key checks, inventory lookup, trust path, MakeCredential to
//     the RSA-2048 EK, challenge encode;
//   - proof: session, activation, certify, CSR and quote verification,
//     certificate issue, two inventory writes (device, event) with fsync,
//     result encode (the request before it is not timed);
//   - enrollment: request then proof, the whole server-side enrollment;
//   - enrollment-nosync: the same with the inventory not syncing to disk,
//     to show what fsync costs;
//   - enrollment-cold: the same with a new EKTrust per enrollment, so the
//     EK chain is verified up to the root every time.
func BenchmarkHandle(b *testing.B) {
	rec := record(b)
	run := func(b *testing.B, noSync, cold, timeRequest, timeProof bool) {
		h, err := rec.newHarness(b.TempDir(), noSync)
		if err != nil {
			b.Fatal(err)
		}
		defer h.inv.Close()
		reqs := messages(b.N, wire.TypeEnrollRequest, &rec.req)
		var proofs [][]byte
		if timeProof {
			proofs = messages(b.N, wire.TypeEnrollProof, &rec.proof)
		}
		svcs := make([]*enroll.Service, b.N)
		for i := range svcs {
			svcs[i] = h.svc
			if cold {
				if svcs[i], err = h.service(rec.trust()); err != nil {
					b.Fatal(err)
				}
			}
		}
		var challenges, enrolled int64
		b.ResetTimer()
		for i := range b.N {
			svc := svcs[i]
			if !timeRequest {
				b.StopTimer()
			}
			h.rand.rewind()
			svc.Handle("bench", reqs[i])
			if !timeRequest {
				b.StartTimer()
			}
			if timeProof {
				svc.Handle("bench", proofs[i])
			}
			if cold {
				challenges += svc.Stats().Challenges.Load()
				enrolled += svc.Stats().Enrolled.Load()
			}
		}
		b.StopTimer()
		opsPerSecond(b)
		if !cold {
			challenges, enrolled = h.svc.Stats().Challenges.Load(), h.svc.Stats().Enrolled.Load()
		}
		if challenges != int64(b.N) || (timeProof && enrolled != int64(b.N)) {
			var res wire.EnrollResult
			b.Fatalf("%d challenges, %d enrolled for %d iterations (last answer: %v)", challenges, enrolled, b.N, h.last(wire.TypeEnrollResult, &res))
		}
	}
	b.Run("request", func(b *testing.B) { run(b, false, false, true, false) })
	b.Run("proof", func(b *testing.B) { run(b, false, false, false, true) })
	b.Run("enrollment", func(b *testing.B) { run(b, false, false, true, true) })
	b.Run("enrollment-nosync", func(b *testing.B) { run(b, true, false, true, true) })
	b.Run("enrollment-cold", func(b *testing.B) { run(b, false, true, true, true) })
}

// floor is the cryptography of one enrollment, called directly: EK
// certificate chain, MakeCredential, activation check, TPM2_Certify
// signature, CSR signature, quote signature, certificate signature. ak and
// tk are decoded once outside (decoding is not cryptography).
type floor struct {
	rec    *recording
	ak     *verifier.AK
	tk     *verifier.TransportKey
	fleet  *ca.CA
	rand   *replayRand
	secret []byte
}

func newFloor(b *testing.B, rec *recording) *floor {
	ak, err := verifier.VerifyAK(rec.req.AKPublic)
	if err != nil {
		b.Fatal(err)
	}
	tk, err := verifier.VerifyTransportKeyPublic(rec.req.TKPublic)
	if err != nil {
		b.Fatal(err)
	}
	fleetCA, err := newCA(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	return &floor{rec: rec, ak: ak, tk: tk, fleet: fleetCA, rand: newReplayRand(), secret: make([]byte, 32)}
}

func (f *floor) run(trust *verifier.EKTrust) error {
	rec := f.rec
	ek, err := trust.VerifyEK(rec.req.EKPublic, rec.req.EKCert, nil)
	if err != nil {
		return err
	}
	if !ek.ChainVerified {
		return fmt.Errorf("EK chain: %v", ek.ChainErr)
	}
	if _, _, err := verifier.MakeCredential(f.rand, ek, f.ak, f.secret); err != nil {
		return err
	}
	if err := verifier.CheckActivation(rec.secret, rec.session, rec.nonce, rec.proof.Activation); err != nil {
		return err
	}
	ck, err := verifier.VerifyCertify(f.ak, f.tk, rec.nonce, rec.proof.CertifyInfo, rec.proof.CertifySig)
	if err != nil {
		return err
	}
	if _, err := verifier.VerifyCSR(rec.req.CSR, ck); err != nil {
		return err
	}
	if _, err := verifier.VerifyQuote(f.ak, rec.nonce, rec.sel, &rec.proof.Quote); err != nil {
		return err
	}
	if _, err := f.fleet.IssueDevice(ek.DeviceID, ck.Key, time.Hour); err != nil {
		return err
	}
	return nil
}

// BenchmarkCryptoFloor is the lower bound of BenchmarkHandle/enrollment:
// the same verifications and signatures on the same evidence, without
// messages, sessions or inventory. cached keeps one EKTrust (the issuing
// intermediate verified once, then one signature per EK certificate); cold
// verifies the chain to the root every time.
func BenchmarkCryptoFloor(b *testing.B) {
	rec := record(b)
	f := newFloor(b, rec)
	b.Run("cached", func(b *testing.B) {
		trust := rec.trust()
		for b.Loop() {
			if err := f.run(trust); err != nil {
				b.Fatal(err)
			}
		}
		opsPerSecond(b)
	})
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			if err := f.run(rec.trust()); err != nil {
				b.Fatal(err)
			}
		}
		opsPerSecond(b)
	})
}

// BenchmarkFloorShare interleaves a whole server-side enrollment
// (BenchmarkHandle/enrollment) and a crypto floor pass (BenchmarkCryptoFloor/cached)
// in every iteration and times each, so that both see the same machine
// state; it reports their rates and the floor's share of the enrollment.
func BenchmarkFloorShare(b *testing.B) {
	rec := record(b)
	f := newFloor(b, rec)
	trust := rec.trust()
	h, err := rec.newHarness(b.TempDir(), false)
	if err != nil {
		b.Fatal(err)
	}
	defer h.inv.Close()
	reqs := messages(b.N, wire.TypeEnrollRequest, &rec.req)
	proofs := messages(b.N, wire.TypeEnrollProof, &rec.proof)
	var handle, floorTime time.Duration
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		h.rand.rewind()
		h.svc.Handle("bench", reqs[i])
		h.svc.Handle("bench", proofs[i])
		t1 := time.Now()
		if err := f.run(trust); err != nil {
			b.Fatal(err)
		}
		handle += t1.Sub(t0)
		floorTime += time.Since(t1)
	}
	b.StopTimer()
	if n := h.svc.Stats().Enrolled.Load(); n != int64(b.N) {
		b.Fatalf("%d enrolled for %d iterations", n, b.N)
	}
	b.ReportMetric(float64(b.N)/handle.Seconds(), "enroll/s")
	b.ReportMetric(float64(b.N)/floorTime.Seconds(), "floor/s")
	b.ReportMetric(100*floorTime.Seconds()/handle.Seconds(), "floor-%")
}

// TestRecordingReplays checks the premise of the benchmarks in a normal
// test run: the recorded proof enrolls under a rewound Rand, and a proof
// for another challenge does not.
func TestRecordingReplays(t *testing.T) {
	if testing.Short() {
		t.Skip("records evidence with the TPM simulator")
	}
	rec := record(t)
	h, err := rec.newHarness(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer h.inv.Close()
	for i := range 2 {
		h.rand.rewind()
		h.svc.Handle("bench", encode(wire.TypeEnrollRequest, &rec.req))
		h.svc.Handle("bench", encode(wire.TypeEnrollProof, &rec.proof))
		var res wire.EnrollResult
		if err := h.last(wire.TypeEnrollResult, &res); err != nil || res.Status != wire.StatusActive {
			t.Fatalf("replay %d: %v %+v", i, err, res)
		}
	}
	// Without the rewind the fleet issues another challenge, and the
	// recorded proof answers it wrongly.
	h.svc.Handle("bench", encode(wire.TypeEnrollRequest, &rec.req))
	var ch wire.EnrollChallenge
	if err := h.last(wire.TypeEnrollChallenge, &ch); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ch.Nonce, rec.nonce) {
		t.Fatal("the challenge repeats without a rewind")
	}
	p := rec.proof
	p.Session = ch.Session
	h.svc.Handle("bench", encode(wire.TypeEnrollProof, &p))
	var res wire.EnrollResult
	if err := h.last(wire.TypeEnrollResult, &res); err != nil {
		t.Fatal(err)
	}
	if res.Status != wire.StatusRefused || res.Reason != wire.ReasonActivationFailed {
		t.Fatalf("proof for another challenge: %v %v, want refused with %v", res.Status, res.Reason, wire.ReasonActivationFailed)
	}
}

package attest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// softFleet is a fleet's attestation service on files that fsync, as
// sigil serve runs it, with devices on software TPMs (sim/softtpm), their
// realistic inventory records and a policy they pass.
type softFleet struct {
	svc     *Service
	inv     *inventory.Store
	ids     []string
	tpms    []*softtpm.TPM
	aks     []*tpm.KeyBlob
	nonces  *nonceQueue
	verdict chan string
}

// nonceQueue is the service's Rand: it hands out the nonces the benchmark
// prepared evidence for, in order.
type nonceQueue struct {
	mu   sync.Mutex
	next [][]byte
}

func (q *nonceQueue) Read(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.next) == 0 {
		return rand.Read(p)
	}
	n := copy(p, q.next[0])
	q.next = q.next[1:]
	return n, nil
}

func newSoftFleet(b testing.TB, devices int, configure func(*Config)) *softFleet {
	b.Helper()
	dir := b.TempDir()
	f := &softFleet{nonces: &nonceQueue{}, verdict: make(chan string, devices)}
	var err error
	if f.inv, err = inventory.Open(filepath.Join(dir, "inventory.db")); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.inv.Close() })
	h, err := OpenHistory(filepath.Join(dir, "attestations.db"), 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	pols, err := policy.Open(filepath.Join(dir, "policies.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pols.Close() })

	sel := wire.DefaultSelection()
	var pcrs map[int]string
	for i := range devices {
		seed := sha256.Sum256(fmt.Appendf(nil, "bench device %d", i))
		tp, err := softtpm.New(softtpm.WithSeed(seed[:]))
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range []int{0, 2, 4, 7} { // a measured boot, alike on every device
			m := sha256.Sum256(fmt.Appendf(nil, "bench measurement %d", p))
			if err := tp.ExtendPCR(p, m[:]); err != nil {
				b.Fatal(err)
			}
		}
		ak, err := tp.CreateAK()
		if err != nil {
			b.Fatal(err)
		}
		if pcrs == nil {
			vals, err := tp.ReadPCRs(sel)
			if err != nil {
				b.Fatal(err)
			}
			pcrs = map[int]string{}
			for j, p := range sel.PCRs {
				pcrs[p] = hex.EncodeToString(vals[j])
			}
		}
		id := hex.EncodeToString(seed[:16])
		now := time.Now().UTC()
		d := &inventory.Device{ID: id, EKFingerprint: hex.EncodeToString(seed[:]), Model: "gw-1", Firmware: "1.0.0",
			Serial: "SN-" + id[:8], State: inventory.StateActive, TrustPath: inventory.TrustEKCA,
			CertSerial: id[:20], CertExpiry: now.Add(30 * 24 * time.Hour), CertIssued: now, FirstSeen: now, EnrolledAt: now,
			AKName: seed[:], EKPublic: make([]byte, 120), AKPublic: ak.Public, CertDER: make([]byte, 480),
			Tags: []string{"site:bench", "canary"}, Certs: []inventory.Cert{{Serial: id[:20], NotAfter: now.Add(30 * 24 * time.Hour)}}}
		if err := f.inv.PutDevice(b.Context(), d); err != nil {
			b.Fatal(err)
		}
		f.ids, f.tpms, f.aks = append(f.ids, id), append(f.tpms, tp), append(f.aks, ak)
	}
	// Every device's PCRs extend alike, so one policy pins them all.
	if _, err := pols.Put(b.Context(), policy.Policy{ID: "gw", Name: "gw", Model: "gw-1", Action: policy.ActionQuarantine,
		PCRs: map[string]map[int]string{"sha256": pcrs}}); err != nil {
		b.Fatal(err)
	}
	cfg := Config{Inventory: f.inv, History: h, Policies: pols, Rand: f.nonces, Interval: time.Minute,
		Send: func(string, string, []byte) error { return nil }, Disconnect: func(string) {}}
	if configure != nil {
		configure(&cfg)
	}
	f.svc, err = New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	f.svc.OnVerdict(func(id string, rec *Record, _ time.Duration) {
		if rec.Result != wire.VerdictPass {
			b.Errorf("%s: %s %s", id, rec.Reason, rec.Message)
		}
		f.verdict <- id
	})
	return f
}

// prepare makes the evidence of attestations by the devices in order
// (indexes into ids), and queues their nonces for the service's
// challenges, which attest must then ask for in that order.
func (f *softFleet) prepare(b testing.TB, order []int) [][]byte {
	b.Helper()
	out := make([][]byte, len(order))
	nonces := make([][]byte, len(order))
	for i, d := range order {
		nonce := make([]byte, 32)
		rand.Read(nonce)
		q, err := f.tpms[d].Quote(f.aks[d], nonce, wire.DefaultSelection())
		if err != nil {
			b.Fatal(err)
		}
		ev := &wire.AttestEvidence{Nonce: nonce, Firmware: "1.0.0", Quotes: []wire.Quote{*q}}
		if out[i], err = wire.Encode(wire.TypeAttestEvidence, nil, time.Now(), ev); err != nil {
			b.Fatal(err)
		}
		nonces[i] = nonce
	}
	f.nonces.mu.Lock()
	f.nonces.next = nonces
	f.nonces.mu.Unlock()
	return out
}

// roundRobin is the order of n attestations by devices devices in turn.
func roundRobin(n, devices int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i % devices
	}
	return out
}

// attest runs an attestation of device d with evidence raw (prepare's):
// the challenge, then the evidence through Submit, as a device's
// attest.request and attest.evidence arrive.
func (f *softFleet) attest(b testing.TB, d int, raw []byte) {
	id := f.ids[d]
	if err := f.svc.Challenge(id); err != nil {
		b.Fatal(err)
	}
	env, err := wire.Decode(raw)
	if err != nil {
		b.Fatal(err)
	}
	f.svc.Submit(id, env, raw)
}

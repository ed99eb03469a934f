package enroll

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

type sent struct {
	mu   sync.Mutex
	msgs []*wire.Envelope
}

func (s *sent) send(_, _ string, b []byte) error {
	env, err := wire.Decode(b)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, env)
	s.mu.Unlock()
	return nil
}

func (s *sent) last(t testing.TB) *wire.EnrollResult {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.msgs) == 0 {
		t.Fatal("nothing sent")
	}
	var r wire.EnrollResult
	if err := wire.DecodeBody(s.msgs[len(s.msgs)-1], wire.TypeEnrollResult, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func newService(t testing.TB) (*Service, *inventory.Store, *sent) {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), TrustDomain: "test.local"})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Open(filepath.Join(dir, "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	out := &sent{}
	s, err := New(Config{CA: c, Inventory: inv, Trust: &verifier.EKTrust{}, Send: out.send})
	if err != nil {
		t.Fatal(err)
	}
	return s, inv, out
}

func TestRefusesGarbageWithReason(t *testing.T) {
	s, inv, out := newService(t)
	b, _ := wire.Encode(wire.TypeEnrollRequest, nil, time.Now(), &wire.EnrollRequest{Model: "m"})
	s.Handle("e-1", b)
	if r := out.last(t); r.Status != wire.StatusRefused || r.Reason != wire.ReasonBadRequest {
		t.Fatalf("result %+v", r)
	}
	s.Handle("e-1", b) // same message ID
	if r := out.last(t); r.Reason != wire.ReasonReplay {
		t.Fatalf("replay: %+v", r)
	}
	proof, _ := wire.Encode(wire.TypeEnrollProof, nil, time.Now(), &wire.EnrollProof{Session: make([]byte, 16), Activation: make([]byte, 32),
		CertifyInfo: []byte{1}, CertifySig: []byte{1}, Quote: wire.Quote{Attest: []byte{1}, Signature: []byte{1}}})
	s.Handle("e-1", proof)
	if r := out.last(t); r.Reason != wire.ReasonChallengeExpired {
		t.Fatalf("unknown session: %+v", r)
	}
	if devs, _, err := inv.ListDevices(t.Context(), inventory.Filter{}); err != nil || len(devs) != 0 {
		t.Fatalf("inventory changed: %v %v", devs, err)
	}
}

func TestApproveRequiresPending(t *testing.T) {
	s, _, _ := newService(t)
	if err := s.Approve("0123456789abcdef0123456789abcdef", "op"); !errors.Is(err, inventory.ErrNotFound) {
		t.Fatalf("approve unknown: %v", err)
	}
}

// FuzzHandle feeds arbitrary bytes to the enrollment service as a bootstrap
// client would: it must answer or drop, never panic, never enroll.
func FuzzHandle(f *testing.F) {
	now := time.Unix(1_700_000_000, 0)
	seed := func(typ string, body any) {
		b, err := wire.Encode(typ, nil, now, body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(wire.TypeEnrollRequest, &wire.EnrollRequest{EKPublic: []byte{0, 1, 0, 11}, AKPublic: []byte{0, 35}, TKPublic: []byte{0, 35}, CSR: []byte{0x30, 0}, Model: "m"})
	seed(wire.TypeEnrollProof, &wire.EnrollProof{Session: make([]byte, 16), Activation: make([]byte, 32), CertifyInfo: []byte{0xff, 0x54, 0x43, 0x47}, CertifySig: []byte{0, 0x18},
		Quote: wire.Quote{Attest: []byte{1}, Signature: []byte{1}, Hash: 11, PCRs: []int{0}, Values: [][]byte{make([]byte, 32)}}})
	seed(wire.TypeHello, &wire.Hello{})
	f.Add([]byte{0xa0})
	s, inv, _ := newService(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		s.Handle("e-fuzz", b)
		devs, _, err := inv.ListDevices(t.Context(), inventory.Filter{})
		if err != nil || len(devs) != 0 {
			t.Fatalf("fuzz input enrolled a device: %v %v", devs, err)
		}
	})
}

package enroll_test

import (
	"bytes"
	"encoding/base64"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// replicas is n enrollment services on one PostgreSQL database and one
// fleet CA, as n `sigil serve` replicas run them; each captures what it
// sends, with the topic kind.
type replicas struct {
	h     []*harness
	db    *postgres.DB // replica A's connection
	kinds [][]string
	mu    sync.Mutex
}

func newReplicas(t *testing.T, rec *recording, n int, trust func() *verifier.EKTrust, manual bool, keys ...[]byte) *replicas {
	t.Helper()
	url := pgtest.Start(t).NewDatabase(t)
	fleetCA, err := newCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &replicas{kinds: make([][]string, n)}
	for i := range n {
		db := pgtest.Open(t, url)
		if i == 0 {
			r.db = db
		}
		inv, err := inventory.OpenPostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { inv.Close() })
		h := &harness{inv: inv, ca: fleetCA, rand: newReplayRand()}
		cfg := enroll.Config{CA: h.ca, Inventory: h.inv, Trust: trust(), Rand: h.rand, ManualApproval: manual,
			Send: func(_, kind string, payload []byte) error {
				h.mu.Lock()
				h.sent = payload
				h.mu.Unlock()
				r.mu.Lock()
				r.kinds[i] = append(r.kinds[i], kind)
				r.mu.Unlock()
				return nil
			}}
		key := fleetKey
		if i < len(keys) {
			key = keys[i] // a party without the fleet's key
		}
		shareSessions(t, db, &cfg, key)
		if h.svc, err = enroll.New(cfg); err != nil {
			t.Fatal(err)
		}
		r.h = append(r.h, h)
	}
	return r
}

// TestReplicasShareEnrollment: the enrollment request reaches replica A,
// the device's activation proof reaches replica B, and the device
// enrolls; the proof replayed to either replica is refused as a replay.
func TestReplicasShareEnrollment(t *testing.T) {
	rec := record(t)
	r := newReplicas(t, rec, 2, rec.trust, false)
	a, b := r.h[0], r.h[1]
	a.rand.rewind() // the recorded proof answers A's session
	challengeFor(t, a, "e-device", &rec.req)
	b.svc.Handle("e-device", encode(wire.TypeEnrollProof, &rec.proof))
	res := result(t, b)
	if res.Status != wire.StatusActive || len(res.Certificate) == 0 {
		t.Fatalf("proof on B of A's session: %s %s (%q)", res.Status, res.Reason, res.Message)
	}
	for i, h := range r.h {
		h.svc.Handle("e-device", encode(wire.TypeEnrollProof, &rec.proof))
		if res := result(t, h); res.Status != wire.StatusRefused || res.Reason != wire.ReasonReplay {
			t.Errorf("the proof replayed to replica %d: %s %s (%q), want a replay refusal", i, res.Status, res.Reason, res.Message)
		}
	}
	// A session is its client's on every replica.
	a.rand.rewind()
	challengeFor(t, a, "e-device", &rec.req)
	b.svc.Handle("e-thief", encode(wire.TypeEnrollProof, &rec.proof))
	if res := result(t, b); res.Status != wire.StatusRefused {
		t.Fatalf("another client's proof, on B, for the device's session opened on A: %+v", res)
	}
	b.svc.Handle("e-device", encode(wire.TypeEnrollProof, &rec.proof))
	if res := result(t, b); res.Status != wire.StatusActive {
		t.Fatalf("the device's own proof after another client's try: %s %s (%q)", res.Status, res.Reason, res.Message)
	}
}

// TestReplicasShareWrongActivation: a wrong activation answer on B to a
// session opened on A is refused, and ends the session everywhere.
func TestReplicasShareWrongActivation(t *testing.T) {
	rec := record(t)
	r := newReplicas(t, rec, 2, rec.trust, false)
	a, b := r.h[0], r.h[1]
	a.rand.rewind()
	ch := challengeFor(t, a, "e-device", &rec.req)
	b.svc.Handle("e-device", encode(wire.TypeEnrollProof, guess(rec, ch)))
	if res := result(t, b); res.Status != wire.StatusRefused || res.Reason != wire.ReasonActivationFailed {
		t.Fatalf("a wrong activation on B: %s %s (%q)", res.Status, res.Reason, res.Message)
	}
	a.svc.Handle("e-device", encode(wire.TypeEnrollProof, &rec.proof))
	if res := result(t, a); res.Status != wire.StatusRefused || res.Reason != wire.ReasonReplay {
		t.Fatalf("the right proof after a wrong one used the session: %s %s (%q)", res.Status, res.Reason, res.Message)
	}
}

// TestReplicasShareApproval: a device verified on A waits for approval;
// an operator approves it through replica B's API, and B tells the
// device's bootstrap client to ask again.
func TestReplicasShareApproval(t *testing.T) {
	rec := record(t)
	r := newReplicas(t, rec, 2, func() *verifier.EKTrust { return &verifier.EKTrust{} }, true)
	a, b := r.h[0], r.h[1]
	a.rand.rewind()
	challengeFor(t, a, "e-device", &rec.req)
	a.svc.Handle("e-device", encode(wire.TypeEnrollProof, &rec.proof))
	res := result(t, a)
	if res.Status != wire.StatusPending {
		t.Fatalf("manual approval: %s %s (%q)", res.Status, res.Reason, res.Message)
	}
	if err := b.svc.Approve(res.DeviceID, "operator"); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	sent := r.kinds[1]
	r.mu.Unlock()
	if len(sent) != 1 || sent[0] != "retry" {
		t.Fatalf("B sent %v after approving a device that waits on A, want one retry", sent)
	}
}

// TestReplicasSealSessions: what a shared session row shows is neither
// the request's enrollment token nor the activation proof that answers
// it — someone who reads the database can answer no session and spend no
// token — and the device that holds the EK still enrolls by its token on
// another replica.
func TestReplicasSealSessions(t *testing.T) {
	rec := record(t)
	r := newReplicas(t, rec, 2, func() *verifier.EKTrust { return &verifier.EKTrust{} }, false)
	a, b := r.h[0], r.h[1]
	secret, _, err := a.inv.CreateToken(t.Context(), inventory.Grant{Group: "lab"}, "operator", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	req := rec.req
	req.Token = secret
	a.rand.rewind()
	challengeFor(t, a, "e-device", &req)
	rows, err := r.db.Pool().Query(t.Context(), "SELECT digest, sealed FROM enroll_session")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var digest, sealed []byte
		if err := rows.Scan(&digest, &sealed); err != nil {
			t.Fatal(err)
		}
		n++
		for _, row := range [][]byte{digest, sealed} {
			for _, v := range [][]byte{[]byte(secret), rec.proof.Activation, rec.secret} {
				if shows(row, v) {
					t.Error("a session row shows the token, the activation proof or its secret")
				}
			}
		}
	}
	if err := rows.Err(); err != nil || n != 1 {
		t.Fatalf("%d session rows, %v", n, err)
	}
	b.svc.Handle("e-device", encode(wire.TypeEnrollProof, &rec.proof))
	res := result(t, b)
	if res.Status != wire.StatusActive {
		t.Fatalf("token enrollment completed on B: %s %s (%q)", res.Status, res.Reason, res.Message)
	}
	d, err := b.inv.Device(t.Context(), res.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	if d.TrustPath != enroll.PathToken || d.Group != "lab" {
		t.Errorf("device enrolled by path %q into group %q, want the token's", d.TrustPath, d.Group)
	}
	if used, err := b.inv.TokenUsedBy(t.Context(), secret); err != nil || used != res.DeviceID {
		t.Errorf("token used by %q (%v), want %s", used, err, res.DeviceID)
	}
}

// TestSessionsNeedTheFleetKey: what a session row seals opens only with
// the fleet's key: a party that can write the database but does not hold
// the key (here replica B with another one) cannot complete, or make, a
// session the fleet would turn into a certificate.
func TestSessionsNeedTheFleetKey(t *testing.T) {
	rec := record(t)
	r := newReplicas(t, rec, 2, rec.trust, false, fleetKey, bytes.Repeat([]byte{9}, 32))
	a, b := r.h[0], r.h[1]
	a.rand.rewind()
	challengeFor(t, a, "e-device", &rec.req)
	b.svc.Handle("e-device", encode(wire.TypeEnrollProof, &rec.proof))
	if res := result(t, b); res.Status == wire.StatusActive || len(res.Certificate) != 0 {
		t.Fatalf("a session sealed under the fleet's key was completed with another key: %+v", res)
	}
	if n, err := b.inv.Count(t.Context(), nil); err != nil || n != 0 {
		t.Errorf("%d devices enrolled (%v), want none", n, err)
	}
}

// shows reports whether row holds v as is or in base64 (JSON's []byte),
// at any alignment: the middle of each encoding, which v's bytes alone
// decide.
func shows(row, v []byte) bool {
	if bytes.Contains(row, v) {
		return true
	}
	for shift := range 3 {
		enc := base64.StdEncoding.EncodeToString(append(make([]byte, shift), v...))
		if len(enc) > 12 && bytes.Contains(row, []byte(enc[4:len(enc)-4])) {
			return true
		}
	}
	return false
}

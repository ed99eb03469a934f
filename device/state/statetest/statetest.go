// Package statetest is the conformance suite of device/state's storage
// engines: the store's own tests (identity, secrets, release trust,
// firmware update records and floor, SSH host key, telemetry outbox), run
// over the engine under test, and the engine's contract (ordered keys,
// nested buckets, rollback of a failed transaction, read-only views).
// device/state runs it over bbolt, sim/memstate over memory.
package statetest

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Opener opens the store of one location (a file, a memory volume). Each
// call, once the store it returned before is closed, sees everything
// committed there: a reopen is a device restart. readOnly opens it for
// reading only. It fails the test when the store cannot be opened.
type Opener func(t *testing.T, readOnly bool) *state.Store

// Run runs the store's tests; fresh returns an Opener of a new, empty
// location.
func Run(t *testing.T, fresh func(t *testing.T) Opener) {
	tests := []struct {
		name string
		fn   func(*testing.T, func(*testing.T) Opener)
	}{
		{"IdentityRoundTripAndReopen", identityRoundTrip},
		{"SecretsNewestWinsAndSurviveReopen", secretsNewestWins},
		{"SecretsOnStoreWithoutBucket", secretsWithoutBucket},
		{"SecretGracePeriod", secretGracePeriod},
		{"ReleaseTrustSurvivesReopen", releaseTrust},
		{"SSHHostKey", sshHostKey},
		{"UpdateRecordsSurviveReopen", updateRecords},
		{"UpdateReadsOnStoreWithoutBucket", updateWithoutBucket},
		{"UnreportedUpdatesOldestFirst", unreportedOrder},
		{"FloorOnlyRises", floorOnlyRises},
		{"OutboxSurvivesReopen", outboxSurvivesReopen},
		{"OutboxBoundDropsOldestAndCounts", outboxBound},
		{"OutboxRefusals", outboxRefusals},
		{"OutboxStreamIsNewForANewStore", outboxNewStream},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, fresh) })
	}
}

func identityRoundTrip(t *testing.T, fresh func(*testing.T) Opener) {
	open := fresh(t)
	s := open(t, false)
	id, err := s.Identity()
	if err != nil || id.Status != state.StatusNew {
		t.Fatalf("fresh identity = %+v, %v", id, err)
	}
	want := &state.Identity{Status: state.StatusEnrolled, DeviceID: "abc", AK: state.KeyBlob{Public: []byte{1}, Private: []byte{2}},
		Cert: []byte{3}, EnrolledAt: time.Unix(1700000000, 0).UTC(),
		Next: &state.Renewal{TK: state.KeyBlob{Public: []byte{4}, Private: []byte{5}}, Cert: []byte{6}}}
	if err := s.SaveIdentity(want); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, true)
	defer s.Close()
	got, err := s.Identity()
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != want.Status || got.DeviceID != want.DeviceID || !bytes.Equal(got.AK.Private, want.AK.Private) ||
		!bytes.Equal(got.Cert, want.Cert) || !got.EnrolledAt.Equal(want.EnrolledAt) || got.Next == nil ||
		!bytes.Equal(got.Next.TK.Private, want.Next.TK.Private) || !bytes.Equal(got.Next.Cert, want.Next.Cert) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if err := s.SaveIdentity(want); err == nil {
		t.Fatal("a read-only store saved an identity")
	}
}

func secretsNewestWins(t *testing.T, fresh func(*testing.T) Opener) {
	open := fresh(t)
	s := open(t, false)
	if _, err := s.Secret("db-password"); !errors.Is(err, state.ErrNoSecret) {
		t.Fatalf("empty store: %v", err)
	}
	v2 := &state.Secret{Name: "db-password", Version: 2, Public: []byte{1}, Private: []byte{2},
		PCRs: &wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: []int{7}}}
	if err := s.PutSecret(v2, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret(&state.Secret{Name: "db-password", Version: 1, Public: []byte{9}, Private: []byte{9}}, 0); !errors.Is(err, state.ErrOlderSecret) {
		t.Fatalf("older version: %v", err)
	}
	if err := s.PutSecret(&state.Secret{Name: "api-key", Version: 1, Public: []byte{3}, Private: []byte{4}}, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret(&state.Secret{Name: "bad/name", Version: 1, Public: []byte{3}, Private: []byte{4}}, 0); err == nil {
		t.Fatal("invalid name stored")
	}
	s.Close()

	s = open(t, true)
	defer s.Close()
	got, err := s.Secret("db-password")
	if err != nil || got.Version != 2 || !bytes.Equal(got.Private, []byte{2}) || got.PCRs == nil || got.PCRs.PCRs[0] != 7 {
		t.Fatalf("got %+v, %v", got, err)
	}
	all, err := s.Secrets()
	if err != nil || len(all) != 2 || all[0].Name != "api-key" || all[1].Name != "db-password" {
		t.Fatalf("list %+v, %v", all, err)
	}
}

// unreportedOrder checks that unreported updates come oldest change first,
// and those changed at the same time in ID order, whatever order they were
// saved in.
func unreportedOrder(t *testing.T, fresh func(*testing.T) Opener) {
	s := fresh(t)(t, false)
	defer s.Close()
	t0 := time.Unix(1700000000, 0).UTC()
	for _, u := range []state.Update{
		{ID: "u2", Changed: t0.Add(2 * time.Minute)},
		{ID: "u1", Changed: t0.Add(time.Minute)},
		{ID: "z9", Changed: t0},
		{ID: "a1", Changed: t0.Add(2 * time.Minute)},
	} {
		u.Phase, u.Final = "failed", true
		if err := s.SaveUpdate(&u); err != nil {
			t.Fatal(err)
		}
	}
	q, err := s.UnreportedUpdates()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, u := range q {
		got = append(got, u.ID)
	}
	if want := []string{"z9", "u1", "a1", "u2"}; !slices.Equal(got, want) {
		t.Fatalf("unreported updates in order %v, want %v", got, want)
	}
}

func secretsWithoutBucket(t *testing.T, fresh func(*testing.T) Opener) {
	open := fresh(t)
	open(t, false).Close()
	s := open(t, true)
	defer s.Close()
	if all, err := s.Secrets(); err != nil || len(all) != 0 {
		t.Fatalf("%v %v", all, err)
	}
	if _, err := s.Secret("x"); !errors.Is(err, state.ErrNoSecret) {
		t.Fatal(err)
	}
}

// secretGracePeriod: a rotation with a grace period keeps the replaced
// version until it ends, and only that one version.
func secretGracePeriod(t *testing.T, fresh func(*testing.T) Opener) {
	s := fresh(t)(t, false)
	defer s.Close()
	t0 := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	put := func(v int, at time.Time, keep time.Duration) {
		t.Helper()
		if err := s.PutSecret(&state.Secret{Name: "api-key", Version: v, Public: []byte{byte(v)}, Private: []byte{byte(v)}, Received: at}, keep); err != nil {
			t.Fatal(err)
		}
	}
	put(1, t0, time.Hour)
	put(2, t0.Add(time.Minute), time.Hour)
	if got, err := s.SecretVersion("api-key", 1, t0.Add(30*time.Minute)); err != nil || got.Public[0] != 1 {
		t.Fatalf("previous version during grace: %+v %v", got, err)
	}
	if got, err := s.SecretVersion("api-key", 0, t0.Add(30*time.Minute)); err != nil || got.Version != 2 || got.Previous != nil {
		t.Fatalf("current: %+v %v", got, err)
	}
	if _, err := s.SecretVersion("api-key", 1, t0.Add(61*time.Minute)); !errors.Is(err, state.ErrNoSecret) {
		t.Fatalf("previous version after grace: %v", err)
	}
	put(3, t0.Add(2*time.Minute), time.Hour)
	if _, err := s.SecretVersion("api-key", 1, t0.Add(3*time.Minute)); !errors.Is(err, state.ErrNoSecret) {
		t.Fatal("two versions back is still available")
	}
	if got, err := s.SecretVersion("api-key", 2, t0.Add(3*time.Minute)); err != nil || got.Version != 2 {
		t.Fatalf("version 2 after rotation to 3: %+v %v", got, err)
	}
	put(4, t0.Add(4*time.Minute), 0) // no grace: the replaced version is gone at once
	if _, err := s.SecretVersion("api-key", 3, t0.Add(4*time.Minute)); !errors.Is(err, state.ErrNoSecret) {
		t.Fatal("a rotation without grace kept the previous version")
	}
}

func releaseTrust(t *testing.T, fresh func(*testing.T) Opener) {
	open := fresh(t)
	s := open(t, false)
	if _, err := s.ReleaseTrust(); !errors.Is(err, state.ErrNoReleaseTrust) {
		t.Fatalf("fresh store: %v", err)
	}
	if err := s.SaveReleaseTrust(nil); err == nil {
		t.Fatal("empty trust set saved")
	}
	for _, v := range [][]byte{[]byte(`{"sequence":1}`), []byte(`{"sequence":2}`)} {
		if err := s.SaveReleaseTrust(v); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s = open(t, false)
	defer s.Close()
	got, err := s.ReleaseTrust()
	if err != nil || !bytes.Equal(got, []byte(`{"sequence":2}`)) {
		t.Fatalf("after reopen: %q, %v", got, err)
	}
}

func sshHostKey(t *testing.T, fresh func(*testing.T) Opener) {
	open := fresh(t)
	s := open(t, false)
	if _, err := s.SSHHostKey(); !errors.Is(err, state.ErrNoSSHHostKey) {
		t.Fatalf("fresh store: %v", err)
	}
	if err := s.PutSSHHostKey(&state.KeyBlob{Public: []byte{1}}); err == nil {
		t.Fatal("a blob without its private part was stored")
	}
	if err := s.PutSSHHostKey(&state.KeyBlob{Public: []byte{1}, Private: []byte{2}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, true)
	defer s.Close()
	if k, err := s.SSHHostKey(); err != nil || !bytes.Equal(k.Private, []byte{2}) {
		t.Fatalf("after reopen: %+v, %v", k, err)
	}
}

func updateRecords(t *testing.T, fresh func(*testing.T) Opener) {
	open := fresh(t)
	s := open(t, false)
	if _, err := s.Update(); !errors.Is(err, state.ErrNoUpdate) {
		t.Fatalf("fresh store: %v", err)
	}
	if _, err := s.Slot("a"); !errors.Is(err, state.ErrNoSlot) {
		t.Fatalf("fresh store slot: %v", err)
	}
	if _, err := s.Measurement(); !errors.Is(err, state.ErrNoMeasurement) {
		t.Fatalf("fresh store measurement: %v", err)
	}
	if err := s.SaveUpdate(&state.Update{ID: "Bad/ID", Phase: "announced"}); err == nil {
		t.Fatal("invalid ID saved")
	}
	if err := s.SaveUpdate(&state.Update{ID: "u1"}); err == nil {
		t.Fatal("update without phase saved")
	}
	if err := s.SaveUpdate(&state.Update{ID: "u1", Phase: "installing"}, state.Slot{}); err == nil {
		t.Fatal("slot without name saved")
	}

	t0 := time.Unix(1700000000, 0).UTC()
	rel := &state.Release{Name: "gw", Version: "2.0.0", SecurityVersion: 4, Size: 10, SHA256: bytes.Repeat([]byte{1}, 32)}
	inFlight := &state.Update{ID: "u1", Phase: "installing", Release: rel, From: "a", Target: "b", Changed: t0}
	if err := s.SaveUpdate(inFlight, state.Slot{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	if q, err := s.UnreportedUpdates(); err != nil || len(q) != 0 {
		t.Fatalf("in-flight update queued for reporting: %v %v", q, err)
	}
	done := *inFlight
	done.Phase, done.Final, done.Reason, done.Running, done.Changed = "rolled_back", true, wire.ReasonFirmwareHealth, "1.0.0", t0.Add(time.Minute)
	if err := s.SaveUpdate(&done, state.Slot{Name: "b", Version: "2.0.0", SHA256: rel.SHA256, SecurityVersion: 4}); err != nil {
		t.Fatal(err)
	}
	second := &state.Update{ID: "u2", Phase: "failed", Final: true, Reason: wire.ReasonFirmwareDigest, Changed: t0.Add(2 * time.Minute)}
	if err := s.SaveUpdate(second); err != nil {
		t.Fatal(err)
	}
	m := &state.Measurement{PCR: 14, Digest: rel.SHA256, After: bytes.Repeat([]byte{2}, 32)}
	if err := s.SaveMeasurement(m); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open(t, false)
	defer s.Close()
	u, err := s.Update()
	if err != nil || u.ID != "u2" || u.Phase != "failed" || !u.Final || u.Reason != wire.ReasonFirmwareDigest {
		t.Fatalf("current: %+v, %v", u, err)
	}
	q, err := s.UnreportedUpdates()
	if err != nil || len(q) != 2 || q[0].ID != "u1" || q[1].ID != "u2" {
		t.Fatalf("unreported: %+v, %v", q, err)
	}
	if q[0].Reason != wire.ReasonFirmwareHealth || q[0].Running != "1.0.0" || q[0].Release == nil || q[0].Release.SecurityVersion != 4 {
		t.Fatalf("queued record lost fields: %+v", q[0])
	}
	if err := s.UpdateReported("u1"); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateReported("never-queued"); err != nil {
		t.Fatal(err)
	}
	if q, err := s.UnreportedUpdates(); err != nil || len(q) != 1 || q[0].ID != "u2" {
		t.Fatalf("after report: %+v, %v", q, err)
	}
	sl, err := s.Slot("b")
	if err != nil || sl.Version != "2.0.0" || sl.SecurityVersion != 4 || !bytes.Equal(sl.SHA256, rel.SHA256) {
		t.Fatalf("slot: %+v, %v", sl, err)
	}
	got, err := s.Measurement()
	if err != nil || got.PCR != 14 || !bytes.Equal(got.After, m.After) {
		t.Fatalf("measurement: %+v, %v", got, err)
	}
}

func updateWithoutBucket(t *testing.T, fresh func(*testing.T) Opener) {
	open := fresh(t)
	open(t, false).Close()
	s := open(t, true)
	defer s.Close()
	if _, err := s.Update(); !errors.Is(err, state.ErrNoUpdate) {
		t.Fatal(err)
	}
	if q, err := s.UnreportedUpdates(); err != nil || len(q) != 0 {
		t.Fatal(q, err)
	}
	if v, err := s.Floor(); err != nil || v != 0 {
		t.Fatal(v, err)
	}
}

// floorOnlyRises: the recorded anti-rollback floor starts at 0, never goes
// down, and survives a reopen.
func floorOnlyRises(t *testing.T, fresh func(*testing.T) Opener) {
	open := fresh(t)
	s := open(t, false)
	if v, err := s.Floor(); err != nil || v != 0 {
		t.Fatalf("fresh store: %d, %v", v, err)
	}
	for _, step := range []struct{ raise, want uint64 }{{3, 3}, {2, 3}, {0, 3}, {7, 7}} {
		if err := s.RaiseFloor(step.raise); err != nil {
			t.Fatal(err)
		}
		if v, err := s.Floor(); err != nil || v != step.want {
			t.Fatalf("after raising to %d: %d, %v; want %d", step.raise, v, err, step.want)
		}
	}
	s.Close()
	s = open(t, true)
	defer s.Close()
	if v, err := s.Floor(); err != nil || v != 7 {
		t.Fatalf("reopened: %d, %v", v, err)
	}
}

// point is a telemetry point whose "seq" metric is i.
func point(i int) wire.TelemetryPoint {
	p := wire.TelemetryPoint{Time: int64(1_700_000_000_000 + i*1000)}
	p.SetMetric("seq", float64(i))
	return p
}

// values returns the "seq" metric of each point of b.
func values(b *wire.TelemetryBatch) []int {
	var out []int
	for _, p := range b.Points {
		out = append(out, int(p.Metrics["seq"]))
	}
	return out
}

func outboxSurvivesReopen(t *testing.T, fresh func(*testing.T) Opener) {
	open := fresh(t)
	s := open(t, false)
	o := s.Outbox(state.OutboxOptions{})
	if b, err := o.Pending(0, 1<<20); err != nil || b != nil {
		t.Fatalf("empty outbox: %v, %v", b, err)
	}
	if st, err := o.Stats(); err != nil || st.Next != 1 || st.Points != 0 || len(st.Stream) != 0 {
		t.Fatalf("empty stats: %+v, %v", st, err)
	}
	for i := 1; i <= 10; i++ {
		if n, err := o.Append(point(i)); err != nil || n != 0 {
			t.Fatalf("append %d: dropped %d, %v", i, n, err)
		}
	}
	b, err := o.Pending(4, 1<<20)
	if err != nil || b.First != 1 || fmt.Sprint(values(b)) != "[1 2 3 4]" || b.Acked != 0 || b.Dropped != 0 {
		t.Fatalf("first batch: %+v, %v", b, err)
	}
	if n, err := o.Ack(b.Stream, b.Last()); err != nil || n != 4 {
		t.Fatalf("ack: %d, %v", n, err)
	}
	stream := b.Stream
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, false)
	defer s.Close()
	o = s.Outbox(state.OutboxOptions{})
	st, err := o.Stats()
	if err != nil || !bytes.Equal(st.Stream, stream) || st.Next != 11 || st.Acked != 4 || st.Points != 6 || st.Bytes <= 0 {
		t.Fatalf("stats after reopen: %+v, %v", st, err)
	}
	if _, err := o.Append(point(11)); err != nil {
		t.Fatal(err)
	}
	b, err = o.Pending(0, 1<<20)
	if err != nil || b.First != 5 || fmt.Sprint(values(b)) != "[5 6 7 8 9 10 11]" || b.Acked != 4 || !bytes.Equal(b.Stream, stream) {
		t.Fatalf("batch after reopen: %+v, %v", b, err)
	}
	if err := b.Validate(); err != nil {
		t.Fatalf("outbox built an invalid batch: %v", err)
	}
	// Acks are cumulative and idempotent.
	if n, err := o.Ack(stream, 7); err != nil || n != 3 {
		t.Fatalf("ack 7: %d, %v", n, err)
	}
	if n, err := o.Ack(stream, 6); err != nil || n != 0 {
		t.Fatalf("older ack: %d, %v", n, err)
	}
	if n, err := o.Ack(stream, 7); err != nil || n != 0 {
		t.Fatalf("repeated ack: %d, %v", n, err)
	}
	if st, _ := o.Stats(); st.Points != 4 || st.Acked != 7 {
		t.Fatalf("stats after acks: %+v", st)
	}
}

func outboxBound(t *testing.T, fresh func(*testing.T) Opener) {
	open := fresh(t)
	s := open(t, false)
	o := s.Outbox(state.OutboxOptions{MaxPoints: 5})
	total := 0
	for i := 1; i <= 8; i++ {
		n, err := o.Append(point(i))
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	if total != 3 {
		t.Fatalf("dropped %d, want 3", total)
	}
	s.Close()

	// The count is persisted and rides on the next batch.
	s = open(t, false)
	o = s.Outbox(state.OutboxOptions{MaxPoints: 5})
	b, err := o.Pending(0, 1<<20)
	if err != nil || b.First != 4 || b.Dropped != 3 || fmt.Sprint(values(b)) != "[4 5 6 7 8]" {
		t.Fatalf("batch: %+v, %v", b, err)
	}
	// Several points in one Append past the bound: the oldest go first,
	// even new ones.
	n, err := o.Append(point(9), point(10), point(11), point(12), point(13), point(14))
	if err != nil || n != 6 {
		t.Fatalf("bulk append dropped %d, %v", n, err)
	}
	b, _ = o.Pending(0, 1<<20)
	if b.First != 10 || b.Dropped != 9 || fmt.Sprint(values(b)) != "[10 11 12 13 14]" {
		t.Fatalf("after bulk append: first %d dropped %d %v", b.First, b.Dropped, values(b))
	}
	s.Close()

	// The byte bound: each point is the same size; room for three.
	p1 := point(1)
	one, _ := wire.Marshal(&p1)
	s = fresh(t)(t, false)
	defer s.Close()
	o = s.Outbox(state.OutboxOptions{MaxBytes: int64(3*len(one) + len(one)/2)})
	for i := 1; i <= 5; i++ {
		if _, err := o.Append(point(i)); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := o.Stats()
	if st.Points != 3 || st.Dropped != 2 || st.Bytes != int64(3*len(one)) {
		t.Fatalf("byte bound: %+v (one point is %d bytes)", st, len(one))
	}
	// A batch limited by bytes still carries at least one point.
	if b, _ := o.Pending(0, 1); len(b.Points) != 1 || b.First != 3 {
		t.Fatalf("tiny byte budget: %+v", b)
	}
	if b, _ := o.Pending(0, 2*len(one)); len(b.Points) != 2 {
		t.Fatalf("two-point byte budget: %d points", len(b.Points))
	}
}

func outboxRefusals(t *testing.T, fresh func(*testing.T) Opener) {
	s := fresh(t)(t, false)
	defer s.Close()
	o := s.Outbox(state.OutboxOptions{MaxBytes: 1024})
	if _, err := o.Ack(make([]byte, 16), 1); !errors.Is(err, state.ErrOutboxStream) {
		t.Fatalf("ack before any point: %v", err)
	}
	bad := point(1)
	bad.Metrics["seq"] = math.NaN()
	if _, err := o.Append(point(1), bad); err == nil {
		t.Fatal("invalid point stored")
	}
	big := point(2)
	big.SetInfo("blob", strings.Repeat("x", 100))
	for i := range wire.MaxPointMetrics - 1 {
		big.SetMetric(fmt.Sprintf("metric_with_a_rather_long_name_%03d", i), 1)
	}
	if _, err := o.Append(big); !errors.Is(err, state.ErrPointTooLarge) {
		t.Fatalf("point over the byte bound: %v", err)
	}
	if st, _ := o.Stats(); st.Points != 0 {
		t.Fatalf("refused appends stored %d points", st.Points)
	}
	if _, err := o.Append(point(3)); err != nil {
		t.Fatal(err)
	}
	b, _ := o.Pending(0, 1<<20)
	if _, err := o.Ack(bytes.Repeat([]byte{9}, 16), 1); !errors.Is(err, state.ErrOutboxStream) {
		t.Fatalf("ack of another stream: %v", err)
	}
	if _, err := o.Ack(b.Stream, 2); !errors.Is(err, state.ErrOutboxAck) {
		t.Fatalf("ack beyond the last point: %v", err)
	}
	if st, _ := o.Stats(); st.Points != 1 || st.Acked != 0 {
		t.Fatalf("refused acks changed the outbox: %+v", st)
	}
}

func outboxNewStream(t *testing.T, fresh func(*testing.T) Opener) {
	s1 := fresh(t)(t, false)
	defer s1.Close()
	s2 := fresh(t)(t, false)
	defer s2.Close()
	o1, o2 := s1.Outbox(state.OutboxOptions{}), s2.Outbox(state.OutboxOptions{})
	if _, err := o1.Append(point(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := o2.Append(point(1)); err != nil {
		t.Fatal(err)
	}
	a, _ := o1.Stats()
	b, _ := o2.Stats()
	if bytes.Equal(a.Stream, b.Stream) || len(a.Stream) != wire.TelemetryStreamLen {
		t.Fatalf("streams %x and %x", a.Stream, b.Stream)
	}
}

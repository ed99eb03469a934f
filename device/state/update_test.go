package state

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestUpdateRecordsSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(); !errors.Is(err, ErrNoUpdate) {
		t.Fatalf("fresh store: %v", err)
	}
	if _, err := s.Slot("a"); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("fresh store slot: %v", err)
	}
	if _, err := s.Measurement(); !errors.Is(err, ErrNoMeasurement) {
		t.Fatalf("fresh store measurement: %v", err)
	}
	if err := s.SaveUpdate(&Update{ID: "Bad/ID", Phase: "announced"}); err == nil {
		t.Fatal("invalid ID saved")
	}
	if err := s.SaveUpdate(&Update{ID: "u1"}); err == nil {
		t.Fatal("update without phase saved")
	}
	if err := s.SaveUpdate(&Update{ID: "u1", Phase: "installing"}, Slot{}); err == nil {
		t.Fatal("slot without name saved")
	}

	t0 := time.Unix(1700000000, 0).UTC()
	rel := &Release{Name: "gw", Version: "2.0.0", SecurityVersion: 4, Size: 10, SHA256: bytes.Repeat([]byte{1}, 32)}
	inFlight := &Update{ID: "u1", Phase: "installing", Release: rel, From: "a", Target: "b", Changed: t0}
	if err := s.SaveUpdate(inFlight, Slot{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	if q, err := s.UnreportedUpdates(); err != nil || len(q) != 0 {
		t.Fatalf("in-flight update queued for reporting: %v %v", q, err)
	}
	done := *inFlight
	done.Phase, done.Final, done.Reason, done.Running, done.Changed = "rolled_back", true, wire.ReasonFirmwareHealth, "1.0.0", t0.Add(time.Minute)
	if err := s.SaveUpdate(&done, Slot{Name: "b", Version: "2.0.0", SHA256: rel.SHA256, SecurityVersion: 4}); err != nil {
		t.Fatal(err)
	}
	second := &Update{ID: "u2", Phase: "failed", Final: true, Reason: wire.ReasonFirmwareDigest, Changed: t0.Add(2 * time.Minute)}
	if err := s.SaveUpdate(second); err != nil {
		t.Fatal(err)
	}
	m := &Measurement{PCR: 14, Digest: rel.SHA256, After: bytes.Repeat([]byte{2}, 32)}
	if err := s.SaveMeasurement(m); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
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

func TestUpdateReadsOnStoreWithoutBucket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Update(); !errors.Is(err, ErrNoUpdate) {
		t.Fatal(err)
	}
	if q, err := s.UnreportedUpdates(); err != nil || len(q) != 0 {
		t.Fatal(q, err)
	}
}

// TestFloorOnlyRises: the recorded anti-rollback floor starts at 0, never
// goes down, and survives a reopen.
func TestFloorOnlyRises(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
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
	s, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.Floor(); err != nil || v != 7 {
		t.Fatalf("reopened: %d, %v", v, err)
	}
}

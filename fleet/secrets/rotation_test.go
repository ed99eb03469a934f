package secrets_test

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/config"
)

// TestRotationSchedule: a scheduled secret is due once its latest version
// is Every old; Rotate stores a fresh random value with the same target;
// the replaced version is "grace" until the new version's Grace ends, then
// "expired".
func TestRotationSchedule(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	s, err := openBackend(t, secrets.Config{Dir: t.TempDir(), NoSync: true, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	target := secrets.Target{Group: "plant-7"}
	if _, err := s.Put(t.Context(), "mqtt-bridge", []byte("first"), target, true); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRotation(t.Context(), "nope", &secrets.Rotation{Every: config.Duration(time.Hour)}); !errors.Is(err, secrets.ErrNotFound) {
		t.Fatalf("schedule for a missing secret: %v", err)
	}
	rot := &secrets.Rotation{Every: config.Duration(24 * time.Hour), Grace: config.Duration(2 * time.Hour), Length: 16, Encoding: "hex"}
	if err := s.SetRotation(t.Context(), "mqtt-bridge", rot); err != nil {
		t.Fatal(err)
	}
	if due, _ := s.Due(t.Context(), now.Add(23*time.Hour)); len(due) != 0 {
		t.Fatalf("due too early: %v", due)
	}
	now = now.Add(24 * time.Hour)
	due, err := s.Due(t.Context(), now)
	if err != nil || len(due) != 1 || due[0] != "mqtt-bridge" {
		t.Fatalf("due %v %v", due, err)
	}
	info, err := s.Rotate(t.Context(), "mqtt-bridge")
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != 2 || info.Target != target || !info.PCRBound || info.Grace != rot.Grace {
		t.Fatalf("rotated %+v", info)
	}
	got, err := s.Get(t.Context(), "mqtt-bridge")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := hex.DecodeString(string(got.Value)); err != nil || len(b) != 16 {
		t.Fatalf("generated value %q is not 16 hex-encoded bytes", got.Value)
	}
	if info, err := s.RotateDue(t.Context(), "mqtt-bridge", now); info != nil || err != nil {
		t.Fatalf("a scheduled rotation that is no longer due rotated: %+v %v", info, err)
	}
	if due, _ := s.Due(t.Context(), now); len(due) != 0 {
		t.Fatalf("still due after rotating: %v", due)
	}
	state := func(at time.Time) []secrets.VersionInfo {
		now = at
		l, err := s.List(t.Context())
		if err != nil || len(l) != 1 {
			t.Fatalf("list %v %v", l, err)
		}
		if l[0].Rotation == nil || l[0].Rotation.Every != rot.Every {
			t.Fatalf("listing lacks the schedule: %+v", l[0])
		}
		return l[0].History
	}
	h := state(now.Add(time.Hour))
	if len(h) != 2 || h[0].State != secrets.VersionGrace || h[1].State != secrets.VersionCurrent || !h[0].ValidUntil.Equal(info.Created.Add(2*time.Hour)) {
		t.Fatalf("during grace: %+v", h)
	}
	if h = state(now.Add(2 * time.Hour)); h[0].State != secrets.VersionExpired {
		t.Fatalf("after grace: %+v", h)
	}
	// Clearing the schedule stops rotation; deleting the secret drops it.
	if err := s.SetRotation(t.Context(), "mqtt-bridge", nil); err != nil {
		t.Fatal(err)
	}
	if due, _ := s.Due(t.Context(), now.Add(100*24*time.Hour)); len(due) != 0 {
		t.Fatalf("cleared schedule still due: %v", due)
	}
	if _, err := s.Rotate(t.Context(), "mqtt-bridge"); err == nil || !strings.Contains(err.Error(), "no rotation schedule") {
		t.Fatalf("rotate without schedule: %v", err)
	}
}

func TestRotationValidateAndGenerate(t *testing.T) {
	for _, bad := range []secrets.Rotation{
		{Every: 0},
		{Every: config.Duration(time.Hour), Grace: config.Duration(31 * 24 * time.Hour)},
		{Every: config.Duration(time.Hour), Length: -1},
		{Every: config.Duration(time.Hour), Length: secrets.MaxValue},
		{Every: config.Duration(time.Hour), Encoding: "rot13"},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
	r := secrets.Rotation{Every: config.Duration(time.Hour)}
	a, err := r.Generate(strings.NewReader(strings.Repeat("x", 32)))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := base64.RawURLEncoding.DecodeString(string(a)); err != nil || string(b) != strings.Repeat("x", 32) {
		t.Fatalf("default encoding: %q %v", a, err)
	}
	if _, err := r.Generate(strings.NewReader("short")); err == nil {
		t.Fatal("generate with too little entropy succeeded")
	}
	raw := secrets.Rotation{Every: config.Duration(time.Hour), Length: 4, Encoding: "raw"}
	if v, _ := raw.Generate(strings.NewReader("abcd")); string(v) != "abcd" {
		t.Fatalf("raw: %q", v)
	}
}

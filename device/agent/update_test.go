package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestUpdateConfigDefaults(t *testing.T) {
	c := Config{Broker: "fleet.example:8883", Model: "gw", State: "/var/lib/sigild/dev1/state.db"}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.UpdateBackend != "file:/var/lib/sigild/dev1/slots" || c.UpdateDir != "/var/lib/sigild/dev1/update" || c.UpdateServer != "fleet.example:8443" {
		t.Fatalf("defaults: backend %q, dir %q, server %q", c.UpdateBackend, c.UpdateDir, c.UpdateServer)
	}
	for _, bad := range []Config{
		{UpdateBackend: "rauc"},
		{UpdateBackend: "file:"},
		{UpdateBackend: "hook:"},
		{UpdateServer: "no-port"},
	} {
		bad.Broker, bad.Model = "fleet.example:8883", "gw"
		bad.setDefaults()
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "update_") {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	off := Config{Broker: "fleet.example:8883", Model: "gw", UpdateBackend: "-", UpdateServer: "ignored"}
	off.setDefaults()
	if err := off.Validate(); err != nil {
		t.Fatalf("updates off: %v", err)
	}
}

// trustSet is the marshaled trust set of the keys (signtest.Trust).
func trustSet(t *testing.T, seq uint64, threshold int, keys ...*sign.Signer) []byte {
	t.Helper()
	b, err := signtest.Trust(t, seq, threshold, keys...).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rotation(t *testing.T, stmt []byte, keys ...*sign.Signer) wire.TrustRotation {
	t.Helper()
	r := wire.TrustRotation{Statement: stmt}
	for _, k := range keys {
		b, err := k.Sign(stmt)
		if err != nil {
			t.Fatal(err)
		}
		r.Bundles = append(r.Bundles, b)
	}
	return r
}

func trustAgent(t *testing.T) *Agent {
	t.Helper()
	st, err := state.Open(filepath.Join(t.TempDir(), "state.db"), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &Agent{st: st, log: slog.New(slog.DiscardHandler)}
}

func heldSequence(t *testing.T, a *Agent) uint64 {
	t.Helper()
	ts, err := a.releaseTrust()
	if err != nil {
		t.Fatal(err)
	}
	return ts.Sequence()
}

// TestReleaseTrustFromEnrollment: a device without a set takes the one
// an enrollment result carries (a malformed one is ignored); a device that
// holds one never takes another as it is, newer or older.
func TestReleaseTrustFromEnrollment(t *testing.T) {
	a := trustAgent(t)
	k := signtest.Signers(t, 2)
	a.adoptReleaseTrust(nil, nil, "enrollment")
	if _, err := a.releaseTrust(); !errors.Is(err, state.ErrNoReleaseTrust) {
		t.Fatalf("no set from an empty field: %v", err)
	}
	a.adoptReleaseTrust([]byte(`{"type":"sigil.firmware.trust/v1"}`), nil, "enrollment")
	if _, err := a.releaseTrust(); !errors.Is(err, state.ErrNoReleaseTrust) {
		t.Fatalf("malformed set stored: %v", err)
	}
	a.adoptReleaseTrust(trustSet(t, 3, 1, k[0]), nil, "enrollment")
	if got := heldSequence(t, a); got != 3 {
		t.Fatalf("first set: sequence %d, want 3", got)
	}
	a.adoptReleaseTrust(trustSet(t, 2, 1, k[1]), nil, "enrollment")       // re-enrollment at a fleet with an older set
	a.adoptReleaseTrust(trustSet(t, 4, 2, k[0], k[1]), nil, "enrollment") // a newer set nobody signed
	if got := heldSequence(t, a); got != 3 {
		t.Fatalf("held sequence %d, want 3 (a held set changes only by signed rotations)", got)
	}
}

// TestReleaseTrustRotations: a device without a set takes the fleet's
// from firmware.trust; one with a set applies only rotations the current
// keys signed, skipping those it already has and stopping at the first
// that does not verify.
func TestReleaseTrustRotations(t *testing.T) {
	k := signtest.Signers(t, 4)
	s1 := trustSet(t, 1, 1, k[0])
	s2 := trustSet(t, 2, 2, k[1], k[2])
	s3 := trustSet(t, 3, 1, k[3])
	r2 := rotation(t, s2, k[0], k[1], k[2])
	r3 := rotation(t, s3, k[1], k[2], k[3])
	forged := rotation(t, s3, k[3]) // only the new key signed

	a := trustAgent(t)
	a.applyTrust(&wire.FirmwareTrust{Trust: s2, Rotations: []wire.TrustRotation{r2}})
	if got := heldSequence(t, a); got != 2 {
		t.Fatalf("device without a set: sequence %d, want the fleet's 2", got)
	}

	a = trustAgent(t)
	if err := a.st.SaveReleaseTrust(s1); err != nil {
		t.Fatal(err)
	}
	a.applyTrust(&wire.FirmwareTrust{Trust: s3, Rotations: []wire.TrustRotation{forged}})
	if got := heldSequence(t, a); got != 1 {
		t.Fatalf("forged rotation or the bare set taken: sequence %d", got)
	}
	a.applyTrust(&wire.FirmwareTrust{Trust: s3, Rotations: []wire.TrustRotation{r2, forged, r3}})
	if got := heldSequence(t, a); got != 2 {
		t.Fatalf("chain with a forged step: sequence %d, want 2 (stop at the forgery)", got)
	}
	a.applyTrust(&wire.FirmwareTrust{Trust: s3, Rotations: []wire.TrustRotation{r2, r3}})
	if got := heldSequence(t, a); got != 3 {
		t.Fatalf("chain: sequence %d, want 3", got)
	}
	a.applyTrust(&wire.FirmwareTrust{Rotations: []wire.TrustRotation{r2}}) // replayed
	if got := heldSequence(t, a); got != 3 {
		t.Fatalf("replayed old rotation: sequence %d, want 3", got)
	}
}

func TestPackBundles(t *testing.T) {
	in := [][]byte{[]byte(`{"a":1}`), []byte(`{"b":2}`)}
	var out [][]byte
	if err := wire.Unmarshal(packBundles(in), &out); err != nil || len(out) != 2 || string(out[1]) != `{"b":2}` {
		t.Fatalf("%q %v", out, err)
	}
}

// TestRunHealth: the file backend's health program, run with the real
// shell: exit 0 is healthy, another status fails with the start of its
// output, and a program that hangs is killed when the context ends.
func TestRunHealth(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ctx := context.Background()
	if err := runHealth(ctx, script("ok", `test "$1" = b && test "$2" = /slots/slot-b.img`), "b", "/slots/slot-b.img"); err != nil {
		t.Fatalf("healthy program: %v", err)
	}
	err := runHealth(ctx, script("bad", `echo "service gw-uplink did not start on $1" >&2; exit 3`), "b", "x")
	if err == nil || !strings.Contains(err.Error(), "service gw-uplink did not start on b") || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("failing program: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	// Were it not killed (with the child holding its output open), the
	// check would wait 1000 s and the test time out.
	if err := runHealth(short, script("hang", "sleep 1000 & sleep 1000"), "b", "x"); err == nil {
		t.Fatal("hanging program reported healthy")
	}
	if err := runHealth(ctx, filepath.Join(dir, "missing"), "b", "x"); err == nil {
		t.Fatal("missing program reported healthy")
	}
}

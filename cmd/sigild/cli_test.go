package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/state"
)

// TestEveryCommandHelp: every command and subcommand answers --help and
// -h with exit 0, its usage on stdout and nothing on stderr, before
// loading any configuration.
func TestEveryCommandHelp(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, cmd := range [][]string{{"run"}, {"status"}, {"secret"}, {"secret", "get"}, {"secret", "get", "db-password"}, {"secret", "list"}, {"version"}, {}} {
		for _, help := range []string{"--help", "-h"} {
			args := append(append([]string{}, cmd...), help)
			var out, errb bytes.Buffer
			code := run(args, &out, &errb)
			want := "sigild"
			if len(cmd) > 0 {
				want += " " + cmd[0]
			}
			if code != exitOK || !strings.Contains(out.String(), want) || errb.Len() != 0 {
				t.Errorf("sigild %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out.String(), errb.String())
			}
		}
	}
	var out bytes.Buffer
	run([]string{"status", "--help"}, &out, &bytes.Buffer{})
	if !strings.Contains(out.String(), "-config") || !strings.Contains(out.String(), "-json") {
		t.Errorf("status --help lacks its flags:\n%s", out.String())
	}
}

// TestMissingConfigNamed: status and secret with a --config that does not
// exist say so (exit 2), instead of blaming the state file the defaults
// would name.
func TestMissingConfigNamed(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "sigild.json")
	for _, args := range [][]string{
		{"status", "--config", missing}, {"status", "--json", "--config", missing},
		{"secret", "list", "--config", missing}, {"secret", "get", "db-password", "--config", missing},
		{"run", "--config", missing},
	} {
		var out, errb bytes.Buffer
		code := run(args, &out, &errb)
		want := "sigild: config file " + missing + " does not exist"
		if code != exitUsage || !strings.HasPrefix(errb.String(), want) || strings.Contains(errb.String(), "state") || out.Len() != 0 {
			t.Errorf("sigild %s: exit %d, stderr %q, want %q", strings.Join(args, " "), code, errb.String(), want)
		}
	}
}

// TestStatusStoppedReportsInstalledFirmware: with the daemon stopped,
// `sigild status` reads the firmware the device runs from the update
// record in the state store, not the configured (factory) version.
func TestStatusStoppedReportsInstalledFirmware(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sigild.json")
	db := filepath.Join(dir, "state.db")
	b, _ := json.Marshal(map[string]string{"broker": "fleet:8883", "model": "gw-1", "firmware": "1.0.0",
		"control": filepath.Join(dir, "no-daemon.sock"), "state": db})
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	status := func() string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run([]string{"status", "--config", cfg, "--json"}, &out, &errb); code != exitNotReady {
			t.Fatalf("exit %d: %s%s", code, out.String(), errb.String())
		}
		var st struct {
			Firmware string `json:"firmware"`
			Running  bool   `json:"running"`
		}
		if err := json.Unmarshal(out.Bytes(), &st); err != nil || st.Running {
			t.Fatalf("status %s: %v", out.String(), err)
		}
		return st.Firmware
	}
	st, err := state.Open(db, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if got := status(); got != "1.0.0" {
		t.Errorf("no update ever: firmware %q, want the configured 1.0.0", got)
	}

	save := func(u *state.Update, slots ...state.Slot) {
		t.Helper()
		st, err := state.Open(db, state.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if err := st.SaveUpdate(u, slots...); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	rel := &state.Release{Name: "gw-os", Version: "2.0.0", SecurityVersion: 2, Size: 1, SHA256: make([]byte, 32)}
	save(&state.Update{ID: "u1", Phase: "committed", Final: true, Release: rel, From: "a", Target: "b",
		Running: "2.0.0", Slot: "b", Started: now, Changed: now}, state.Slot{Name: "b", Version: "2.0.0"})
	if got := status(); got != "2.0.0" {
		t.Errorf("after a committed update: firmware %q, want 2.0.0 (the update record)", got)
	}
	// A later update under way before its switch: still the running one.
	rel3 := &state.Release{Name: "gw-os", Version: "3.0.0", SecurityVersion: 3, Size: 1, SHA256: make([]byte, 32)}
	save(&state.Update{ID: "u2", Phase: "installing", Release: rel3, From: "b", Target: "a", Started: now, Changed: now},
		state.Slot{Name: "a"})
	if got := status(); got != "2.0.0" {
		t.Errorf("an update installing: firmware %q, want 2.0.0 (slot b's)", got)
	}
	// Rolled back by the boot loader: the version that runs, not the target.
	save(&state.Update{ID: "u2", Phase: "rolled_back", Final: true, Release: rel3, From: "b", Target: "a",
		Running: "2.0.0", Slot: "b", Started: now, Changed: now})
	if got := status(); got != "2.0.0" {
		t.Errorf("after a rollback: firmware %q, want 2.0.0", got)
	}
}

// TestRunTunesGC: sigild run collects garbage at GOGC 50, not Go's 100,
// unless the environment sets GOGC (then it is left alone).
func TestRunTunesGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	for _, c := range []struct {
		env  map[string]string
		want int
	}{
		{map[string]string{}, 50},
		{map[string]string{"GOGC": "100"}, 100},
		{map[string]string{"GOGC": "off"}, 100}, // what the runtime read stays
	} {
		debug.SetGCPercent(100)
		tuneGC(func(k string) (string, bool) { v, ok := c.env[k]; return v, ok })
		if got := debug.SetGCPercent(100); got != c.want {
			t.Errorf("environment %v: GC percent %d, want %d", c.env, got, c.want)
		}
	}
}

// TestRunTunesProcs: sigild run uses one processor (GOMAXPROCS 1), unless
// the environment sets GOMAXPROCS (then it is left alone).
func TestRunTunesProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, c := range []struct {
		env  map[string]string
		want int
	}{
		{map[string]string{}, 1},
		{map[string]string{"GOMAXPROCS": "3"}, 3}, // what the test set stands for what the runtime read
	} {
		runtime.GOMAXPROCS(3)
		tuneProcs(func(k string) (string, bool) { v, ok := c.env[k]; return v, ok })
		if got := runtime.GOMAXPROCS(0); got != c.want {
			t.Errorf("environment %v: GOMAXPROCS %d, want %d", c.env, got, c.want)
		}
	}
}

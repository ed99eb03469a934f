package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
)

// hostile holds what a network peer controls and status prints: an OSC
// sequence that retitles the terminal, a colour change, a cursor move, a
// BEL, an 8-bit CSI (U+009B) and a right-to-left override.
const hostile = "x509: certificate signed by unknown authority (possibly because of \"\x1b]0;pwned\a\x1b[31mnot authorized\x1b[2J\" while trying to verify candidate authority certificate \"\u009b6n\u202egpj.exe\")"

// fakeDaemon answers one status request on a Unix socket, as sigild's
// control socket does, with st.
func fakeDaemon(t *testing.T, dir string, st agent.Status) string {
	t.Helper()
	path := filepath.Join(dir, "sigild.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var req map[string]any
			_ = json.NewDecoder(c).Decode(&req)
			_ = json.NewEncoder(c).Encode(st)
			c.Close()
		}
	}()
	return path
}

// TestStatusEscapesUntrustedText: `sigild status` prints strings that came
// from the network (a server certificate's names in the last error, the
// fleet's reasons, names of issuers) without letting their control
// characters reach the terminal, in text and in JSON.
func TestStatusEscapesUntrustedText(t *testing.T) {
	dir := t.TempDir()
	sock := fakeDaemon(t, dir, agent.Status{
		DeviceID: "0123abcd", Enrollment: "enrolled", Broker: "fleet:8883", Model: "gw-1", Agent: "dev",
		LastError: hostile, LastReason: "refused: \x1b[5mflash", CertIssuer: "CA \x1b[8m", TrustRoots: []string{"root\x07"},
		Firmware: "1.0\x1b[A",
	})
	cfg := filepath.Join(dir, "sigild.json")
	b, _ := json.Marshal(map[string]string{"broker": "fleet:8883", "model": "gw-1", "control": sock, "state": filepath.Join(dir, "state.db")})
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--config", cfg}, {"--config", cfg, "--json"}} {
		var out bytes.Buffer
		if code := cmdStatus(args, &out, io.Discard); code != exitNotReady {
			t.Fatalf("%v: exit %d, want %d (daemon not connected)\n%s", args, code, exitNotReady, out.String())
		}
		s := out.String()
		for _, r := range s {
			if (r < 0x20 && r != '\n') || (r >= 0x7f && r <= 0x9f) || r == '\u202e' {
				t.Fatalf("%v: output carries %U raw:\n%q", args, r, s)
			}
		}
		if !strings.Contains(s, "not authorized") || !strings.Contains(s, "pwned") {
			t.Fatalf("%v: the error itself is gone:\n%s", args, s)
		}
		if args[len(args)-1] == "--json" {
			var got agent.Status
			if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.LastError != hostile || got.Firmware != "1.0\x1b[A" {
				t.Fatalf("JSON does not carry the same values: %v\n%s", err, s)
			}
		}
	}
}

// TestStatusSaysTheFleetIsSilent: a daemon connected to a broker whose
// fleet has answered nothing for minutes is not reported "connected":
// the text says so (with the last answer), --json carries the times, and
// the exit code is "not ready"; once the fleet answers, it is ready.
func TestStatusSaysTheFleetIsSilent(t *testing.T) {
	silentSince := time.Now().Add(-2*time.Minute - 10*time.Second)
	for _, tc := range []struct {
		name string
		st   agent.Status
		want string
		code int
	}{
		{"silent", agent.Status{Connected: true, FleetSilentSince: silentSince},
			"connected:    to the broker; no answer from the fleet for 2m1", exitNotReady},
		{"answered", agent.Status{Connected: true, LastFleetMessage: time.Now()}, "connected:    true\n", exitOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.st.DeviceID, tc.st.Enrollment, tc.st.Broker, tc.st.Model, tc.st.Running = "0123abcd", "enrolled", "plant:8883", "gw-1", true
			cfg := filepath.Join(dir, "sigild.json")
			b, _ := json.Marshal(map[string]string{"broker": "plant:8883", "model": "gw-1", "control": fakeDaemon(t, dir, tc.st), "state": filepath.Join(dir, "state.db")})
			if err := os.WriteFile(cfg, b, 0o600); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if code := cmdStatus([]string{"--config", cfg}, &out, io.Discard); code != tc.code || !strings.Contains(out.String(), tc.want) {
				t.Fatalf("exit %d (want %d), want %q in:\n%s", code, tc.code, tc.want, out.String())
			}
			if tc.name == "silent" && !strings.Contains(out.String(), "(last answer: never)") {
				t.Fatalf("no last answer:\n%s", out.String())
			}
			out.Reset()
			if code := cmdStatus([]string{"--config", cfg, "--json"}, &out, io.Discard); code != tc.code {
				t.Fatalf("--json: exit %d, want %d", code, tc.code)
			}
			var got agent.Status
			if err := json.Unmarshal(out.Bytes(), &got); err != nil || !got.FleetSilentSince.Equal(tc.st.FleetSilentSince) || !got.LastFleetMessage.Equal(tc.st.LastFleetMessage) {
				t.Fatalf("--json does not carry the fleet's times: %v\n%s", err, out.String())
			}
		})
	}
}

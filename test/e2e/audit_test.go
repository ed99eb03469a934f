package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestAuditLog: operator actions (allowed, refused and failed) and device
// lifecycle events land in the hash-chained audit log; `sigil audit
// export` + `sigil audit verify` (offline, real binaries) accept it; an
// edited, deleted or reordered entry is detected and named.
func TestAuditLog(t *testing.T) {
	sigil, _ := buildBinaries(t)
	f := startFleet(t, withEKCA(t, nil))
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	id := waitConnected(t, d).DeviceID
	c, _ := f.Client()
	ctx := context.Background()
	if _, err := c.CreateToken(ctx, "gw-1", "", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Approve(ctx, "no-such-device"); err == nil {
		t.Fatal("approving a missing device succeeded")
	}
	if _, err := c.CreateUser(ctx, api.UserRequest{Name: "vera", Role: auth.RoleViewer}); err != nil {
		t.Fatal(err)
	}
	secret, _, err := f.Auth.CreateToken(ctx, "vera", "audit-test", auth.RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	viewer := api.NewClient(f.APIURL(), secret, nil)
	viewer.HTTP = c.HTTP
	if _, err := viewer.Revoke(ctx, id, "keyCompromise", "not allowed"); err == nil {
		t.Fatal("a viewer revoked a device")
	}

	var l api.AuditList
	if err := c.Do(ctx, "GET", "/api/v1/audit?limit=200", nil, &l); err != nil {
		t.Fatal(err)
	}
	has := func(pred func(audit.Entry) bool) bool { return slices.ContainsFunc(l.Entries, pred) }
	for name, pred := range map[string]func(audit.Entry) bool{
		"the admin's token creation": func(e audit.Entry) bool {
			return e.Action == "api.enrollment-tokens.post" && e.Actor == audit.User("admin") && e.Outcome == audit.OK && e.RequestID != ""
		},
		"the failed approval": func(e audit.Entry) bool {
			return e.Action == "api.devices.approve.post" && e.Outcome == audit.Failed && e.Target == "no-such-device"
		},
		"the viewer's refused revocation": func(e audit.Entry) bool {
			return e.Action == "api.devices.revoke.post" && e.Actor == audit.User("vera") && e.Outcome == audit.Denied && e.Target == id
		},
		"the device's enrollment": func(e audit.Entry) bool {
			return strings.HasPrefix(e.Action, "device.") && e.Target == id && e.Actor.Kind == audit.ActorSystem
		},
	} {
		if !has(pred) {
			b, _ := json.MarshalIndent(l.Entries, "", " ")
			t.Fatalf("audit log lacks %s:\n%s", name, b)
		}
	}

	base := "https://localhost" + f.APIURL()[strings.LastIndexByte(f.APIURL(), ':'):]
	export := filepath.Join(t.TempDir(), "audit.jsonl")
	if out, err := exec.Command(sigil, "audit", "export", "--out", export, "--data-dir", f.Config.DataDir, "--server", base).CombinedOutput(); err != nil {
		t.Fatalf("sigil audit export: %v\n%s", err, out)
	}
	pub := filepath.Join(f.Config.DataDir, server.AuditPubFile)
	verify := func(file string) (string, int) {
		cmd := exec.Command(sigil, "audit", "verify", file, "--key", pub)
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	if out, code := verify(export); code != 0 || !strings.Contains(out, "audit log verifies") || strings.Contains(out, "warning") {
		t.Fatalf("verify of the untouched export: %d\n%s", code, out)
	}
	raw, _ := os.ReadFile(export)
	lines := bytes.Split(bytes.TrimSuffix(raw, []byte("\n")), []byte("\n"))
	if len(lines) < 6 {
		t.Fatalf("export has %d lines", len(lines))
	}
	// Pick two adjacent entry lines in the middle (not checkpoints).
	mid := -1
	for i := len(lines) / 2; i < len(lines)-1; i++ {
		if bytes.Contains(lines[i], []byte(`"seq"`)) && bytes.Contains(lines[i+1], []byte(`"seq"`)) &&
			!bytes.Contains(lines[i], []byte(`"signature"`)) && !bytes.Contains(lines[i+1], []byte(`"signature"`)) {
			mid = i
			break
		}
	}
	if mid < 0 {
		t.Fatalf("no two adjacent entries in:\n%s", raw)
	}
	m := regexp.MustCompile(`"seq":(\d+)`).FindSubmatch(lines[mid])
	if m == nil {
		t.Fatalf("no seq in %s", lines[mid])
	}
	seq, _ := strconv.Atoi(string(m[1]))
	write := func(ls [][]byte) string {
		p := filepath.Join(t.TempDir(), "tampered.jsonl")
		os.WriteFile(p, append(bytes.Join(ls, []byte("\n")), '\n'), 0o600)
		return p
	}
	edited := slices.Clone(lines)
	edited[mid] = bytes.Replace(lines[mid], []byte(`"outcome":"`), []byte(`"outcome":"x`), 1)
	if bytes.Equal(edited[mid], lines[mid]) {
		edited[mid] = bytes.Replace(lines[mid], []byte(`"target":"`), []byte(`"target":"x`), 1)
	}
	deleted := slices.Delete(slices.Clone(lines), mid, mid+1)
	reordered := slices.Clone(lines)
	reordered[mid], reordered[mid+1] = reordered[mid+1], reordered[mid]
	for name, ls := range map[string][][]byte{"edited": edited, "deleted": deleted, "reordered": reordered} {
		out, code := verify(write(ls))
		if code != 6 || !strings.Contains(out, "does NOT verify") {
			t.Errorf("%s export: exit %d\n%s", name, code, out)
			continue
		}
		// The message names the entry (its sequence number) where the chain breaks.
		if !strings.Contains(out, "entry "+strconv.Itoa(seq)+":") {
			t.Errorf("%s export: the error does not name entry %d:\n%s", name, seq, out)
		}
	}
}

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestBackupRestoreLive: a running fleet with an enrolled swtpm device is
// backed up through its API with the real `sigil backup --server` while
// it keeps serving (an operator changes policies meanwhile): a
// security-admin's token (no backup.read) is refused with 403 and leaves
// no archive; an admin's gets the archive, encrypted on the server to the
// age public key given; both calls are in the audit log. The data
// directory is then lost, `sigil restore` brings the archive back on a
// new one (its audit chain verified), and the fleet started there takes
// the device back with the same ID and certificate, without enrolling
// again; it still opens its secret.
func TestBackupRestoreLive(t *testing.T) {
	sigil, _ := buildBinaries(t)
	ctx := context.Background()
	root := t.TempDir()
	oldDir, newDir := filepath.Join(root, "old"), filepath.Join(root, "new")
	cfg := server.Config{DataDir: oldDir, TrustDomain: "backup.example", MQTTAddr: freeAddr(t), APIAddr: freeAddr(t), EKCADir: ekCADir(t, vendorCA(t)), APIRateLimit: -1}
	f, err := harness.StartFleet(ctx, cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			f.Stop()
		}
	}()
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	st := waitConnected(t, d)
	c, _ := f.Client()
	secret := []byte("kept across a live backup")
	if _, err := c.PutSecret(ctx, "db-password", secret, secrets.Target{Device: st.DeviceID}, false); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, c, st.DeviceID, "db-password", 1)

	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(root, "backup.key")
	if err := os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Auth.CreateUser(ctx, "sam", "sam's long password", auth.RoleSecurityAdmin); err != nil {
		t.Fatal(err)
	}
	samToken, _, err := f.Auth.CreateToken(ctx, "sam", "backup", auth.RoleSecurityAdmin, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	samFile := filepath.Join(root, "sam.token")
	if err := os.WriteFile(samFile, []byte(samToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := "https://localhost" + f.APIURL()[strings.LastIndexByte(f.APIURL(), ':'):]
	archive := filepath.Join(root, "live.sigil-backup")
	backup := func(tokenFile string) (string, int) {
		cmd := exec.Command(sigil, "backup", "--server", base, "--ca", filepath.Join(oldDir, server.CACertFile),
			"--token-file", tokenFile, "--recipient", id.Recipient().String(), "--out", archive)
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}

	if out, code := backup(samFile); code != 5 || !strings.Contains(out, "403") {
		t.Fatalf("backup with a security-admin's token: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(archive); err == nil {
		t.Fatal("a refused backup left its archive")
	}

	// An operator keeps changing policies while the backup runs.
	wctx, stopWriting := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wrote := 0
	wg.Go(func() {
		for wctx.Err() == nil {
			if _, err := c.PutPolicy(wctx, &policy.Policy{ID: fmt.Sprintf("live-%d", wrote), Name: "written during the backup", Model: fmt.Sprintf("no-such-model-%d", wrote),
				PCRs: map[string]map[int]string{"sha256": {7: strings.Repeat("00", 32)}}}); err != nil {
				if wctx.Err() == nil {
					t.Errorf("policy write during the backup: %v", err)
				}
				return
			}
			wrote++
		}
	})
	out, code := backup(filepath.Join(oldDir, server.AdminTokenFile))
	stopWriting()
	wg.Wait()
	if code != 0 || !strings.Contains(out, "backed up the running fleet") {
		t.Fatalf("live backup: exit %d\n%s", code, out)
	}
	t.Logf("%s(%d policy writes meanwhile)", out, wrote)
	raw, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(filepath.Join(oldDir, server.AdminTokenFile))
	if bytes.Contains(raw, bytes.TrimSpace(key)) || bytes.Contains(raw, []byte("PRIVATE KEY")) || bytes.Contains(raw, []byte(st.DeviceID)) {
		t.Fatal("the archive holds plaintext")
	}
	// The fleet served throughout, and audited both calls.
	if s, err := d.Wait(ctx, time.Second, harness.Connected); err != nil || s.CertSerial != st.CertSerial {
		t.Fatalf("the device after the backup: %+v %v", s, err)
	}
	// The request's entry is recorded once the answer is sent: after
	// the client has it.
	wait.Until(t, func() error {
		page, err := f.Audit.List(ctx, audit.Filter{Action: "api.backup"})
		if err != nil {
			return err
		}
		var ok, denied bool
		for _, e := range page.Entries {
			ok = ok || e.Actor == audit.User("admin") && e.Outcome == audit.OK
			denied = denied || e.Actor == audit.User("sam") && e.Outcome == audit.Denied
		}
		if !ok || !denied {
			return fmt.Errorf("audit entries of the backups: %+v", page.Entries)
		}
		return nil
	})
	// Which key opens the archive that left, by whom.
	page, err := f.Audit.List(ctx, audit.Filter{Action: "backup.create"})
	if err != nil || len(page.Entries) != 1 || page.Entries[0].Actor != audit.User("admin") ||
		page.Entries[0].Details["recipients"] != id.Recipient().String() {
		t.Fatalf("backup.create entries: %+v %v", page.Entries, err)
	}

	stopped = true
	stopFleet(t, f, d)
	if err := os.RemoveAll(oldDir); err != nil { // the lost disk
		t.Fatal(err)
	}
	restored, err := exec.Command(sigil, "restore", archive, "--data-dir", newDir, "--identity", idFile).CombinedOutput()
	if err != nil || !strings.Contains(string(restored), "audit log verified") || !strings.Contains(string(restored), "trust domain backup.example") {
		t.Fatalf("sigil restore: %v\n%s", err, restored)
	}
	t.Logf("%s", restored)

	f = startRestored(t, ctx, cfg, newDir, d, st)
	if rep, err := f.Audit.VerifyStore(ctx, nil); err != nil || rep.Checkpoints == 0 {
		t.Fatalf("audit after restore: %+v %v", rep, err)
	}
	if got, err := agent.Unseal(d.Config, "db-password", 0); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal after restore: %q %v", got, err)
	}
}

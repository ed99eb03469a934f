package e2e

import (
	"bytes"
	"context"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestBackupRestore: a fleet with an enrolled swtpm device, a secret, a
// policy and audit entries is backed up with the real `sigil backup`
// (refused while the fleet runs, then done once it stopped), restored
// with `sigil restore` into a new data directory (the old one deleted, as
// on a new machine) and started there: the audit chain verifies (in the
// store, and an export with `sigil audit verify`), the device reconnects
// with the same ID and certificate serial without enrolling again, is
// active, still opens its secret, and receives a new version from the
// restored fleet (whose secrets key came back with it).
func TestBackupRestore(t *testing.T) { backupRestore(t, nil) }

// TestBackupRestoreOnPostgres: the same with the stores in PostgreSQL
// (a real server): `sigil backup` carries the data directory's keys and
// files, pg_dump the database; the old database is dropped, pg_restore
// fills a new one, and the fleet started on it and the restored data
// directory passes the same checks.
func TestBackupRestoreOnPostgres(t *testing.T) {
	requireTools(t)
	backupRestore(t, pgtest.Start(t))
}

// backupRestore is TestBackupRestore, with its stores in pg when not nil.
func backupRestore(t *testing.T, pg *pgtest.Server) {
	sigil, _ := buildBinaries(t)
	ctx := context.Background()
	root := t.TempDir()
	oldDir, newDir := filepath.Join(root, "old"), filepath.Join(root, "new")
	cfg := server.Config{DataDir: oldDir, TrustDomain: "backup.example", MQTTAddr: freeAddr(t), APIAddr: freeAddr(t), EKCADir: ekCADir(t, vendorCA(t))}
	if pg != nil {
		cfg.DatabaseURL = pg.NewDatabase(t)
	}
	f, err := harness.StartFleet(ctx, cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	st := waitConnected(t, d)
	c, _ := f.Client()
	v1, v2 := []byte("before the disk died"), []byte("after the restore")
	if _, err := c.PutSecret(ctx, "db-password", v1, secrets.Target{Device: st.DeviceID}, false); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, c, st.DeviceID, "db-password", 1)
	if _, err := c.PutPolicy(ctx, &policy.Policy{ID: "backup-check", Name: "kept across a restore", Model: "no-such-model",
		PCRs: map[string]map[int]string{"sha256": {7: strings.Repeat("00", 32)}}}); err != nil {
		t.Fatal(err)
	}
	before, err := f.Audit.VerifyStore(ctx, nil)
	if err != nil || before.Entries == 0 {
		t.Fatalf("audit before: %+v %v", before, err)
	}

	pass := filepath.Join(root, "passphrase")
	if err := os.WriteFile(pass, []byte("a long operator passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(root, "sigil.json")
	if err := os.WriteFile(conf, []byte(`{"data_dir": "`+oldDir+`", "trust_domain": "backup.example", "database_url": "`+cfg.DatabaseURL+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(root, "fleet.sigil-backup")
	backup := func() (string, error) {
		out, err := exec.Command(sigil, "backup", "--config", conf, "--out", archive, "--passphrase-file", pass).CombinedOutput()
		return string(out), err
	}
	dump := filepath.Join(root, "fleet.pgdump")
	if pg == nil {
		// While the fleet runs its bbolt stores are locked: refused,
		// nothing left; stopped, they are copied.
		if out, err := backup(); err == nil || !strings.Contains(out, "running fleet") {
			t.Fatalf("backup of a running fleet: %v\n%s", err, out)
		}
		if _, err := os.Stat(archive); err == nil {
			t.Fatal("a refused backup left its archive")
		}
		stopFleet(t, f, d)
	}
	if out, err := backup(); err != nil || !strings.Contains(out, "backed up") {
		t.Fatalf("sigil backup: %v\n%s", err, out)
	}
	if pg != nil {
		// The data directory holds only key material and files written
		// once, and pg_dump reads one snapshot: both while it runs.
		mustRun(t, filepath.Join(pgtest.RequireBinaries(t), "pg_dump"), "--format=custom", "--file", dump, "--dbname", cfg.DatabaseURL)
		stopFleet(t, f, d)
		dropDatabase(t, pg, cfg.DatabaseURL)
	}
	raw, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(filepath.Join(oldDir, server.AdminTokenFile))
	if bytes.Contains(raw, bytes.TrimSpace(key)) || bytes.Contains(raw, []byte("PRIVATE KEY")) {
		t.Fatal("the archive holds key material in the clear")
	}
	if err := os.RemoveAll(oldDir); err != nil { // the lost disk
		t.Fatal(err)
	}
	wrong := filepath.Join(root, "wrong")
	os.WriteFile(wrong, []byte("not the passphrase\n"), 0o600)
	if out, err := exec.Command(sigil, "restore", archive, "--data-dir", newDir, "--passphrase-file", wrong).CombinedOutput(); err == nil || !strings.Contains(string(out), "not encrypted to this key") {
		t.Fatalf("restore with the wrong passphrase: %s", out)
	}
	if _, err := os.Stat(newDir); err == nil {
		t.Fatal("a refused restore left the data directory")
	}
	tampered := filepath.Join(root, "tampered")
	os.WriteFile(tampered, append(raw[:len(raw)-1:len(raw)-1], raw[len(raw)-1]^1), 0o600)
	cmd := exec.Command(sigil, "restore", tampered, "--data-dir", newDir, "--passphrase-file", pass)
	if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 6 /* does not verify */ || !strings.Contains(string(out), "tampered") {
		t.Fatalf("restore of a tampered archive: exit %d\n%s", cmd.ProcessState.ExitCode(), out)
	}
	if _, err := os.Stat(newDir); err == nil {
		t.Fatal("a refused restore left the data directory")
	}
	out, err := exec.Command(sigil, "restore", archive, "--data-dir", newDir, "--passphrase-file", pass).CombinedOutput()
	want := "audit log verified" // with bbolt the audit log is in the archive
	if pg != nil {
		want = "pg_restore the dump"
	}
	if err != nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "trust domain backup.example") {
		t.Fatalf("sigil restore: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	if pg != nil {
		cfg.DatabaseURL = pg.NewDatabase(t)
		mustRun(t, filepath.Join(pgtest.RequireBinaries(t), "pg_restore"), "--exit-on-error", "--no-owner", "--dbname", cfg.DatabaseURL, dump)
	}

	f = startRestored(t, ctx, cfg, newDir, d, st)
	after, err := f.Audit.VerifyStore(ctx, nil)
	if err != nil || after.Entries < before.Entries {
		t.Fatalf("audit after restore: %+v %v (before %+v)", after, err, before)
	}
	c, _ = f.Client()
	var p policy.Policy
	if err := c.Do(ctx, "GET", "/api/v1/policies/backup-check", nil, &p); err != nil || p.Name != "kept across a restore" {
		t.Fatalf("policy after restore: %+v %v", p, err)
	}
	if got, err := agent.Unseal(d.Config, "db-password", 0); err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("unseal after restore: %q %v", got, err)
	}
	if _, err := c.PutSecret(ctx, "db-password", v2, secrets.Target{Device: st.DeviceID}, false); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, c, st.DeviceID, "db-password", 2)
	if got, err := agent.Unseal(d.Config, "db-password", 0); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("unseal v2 from the restored fleet: %q %v", got, err)
	}

	base := "https://localhost" + f.APIURL()[strings.LastIndexByte(f.APIURL(), ':'):]
	export := filepath.Join(root, "audit.jsonl")
	if out, err := exec.Command(sigil, "audit", "export", "--out", export, "--data-dir", newDir, "--server", base).CombinedOutput(); err != nil {
		t.Fatalf("sigil audit export: %v\n%s", err, out)
	}
	if out, err := exec.Command(sigil, "audit", "verify", export, "--key", filepath.Join(newDir, server.AuditPubFile)).CombinedOutput(); err != nil || !strings.Contains(string(out), "audit log verifies") {
		t.Fatalf("sigil audit verify after restore: %v\n%s", err, out)
	}
}

// dropDatabase drops the database of url on pg (a lost database server).
func dropDatabase(t *testing.T, pg *pgtest.Server, url string) {
	t.Helper()
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), "DROP DATABASE "+pgx.Identifier{strings.TrimPrefix(u.Path, "/")}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
}

// startRestored starts the fleet of cfg on the restored data directory dir
// (stopped when the test ends) and checks that d, connected as st before the
// backup, comes back with the credential it had: it reconnects with the same
// certificate, sends no enrollment request and is active in the inventory.
func startRestored(t *testing.T, ctx context.Context, cfg server.Config, dir string, d *harness.Device, st agent.Status) *harness.Fleet {
	t.Helper()
	cfg.DataDir = dir
	f, err := harness.StartFleet(ctx, cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop() })
	again := waitConnected(t, d)
	if again.DeviceID != st.DeviceID || again.CertSerial != st.CertSerial || !again.ConnectedAt.After(st.ConnectedAt) {
		t.Fatalf("reconnect after restore: %+v, was %+v", again, st)
	}
	if n := f.Enroll.Stats().Requests.Load(); n != 0 {
		t.Fatalf("the device sent %d enrollment requests to the restored fleet", n)
	}
	dev, err := f.Inv.Device(ctx, st.DeviceID)
	if err != nil || dev.CertSerial != st.CertSerial || dev.State != inventory.StateActive {
		t.Fatalf("inventory after restore: %+v, %v", dev, err)
	}
	return f
}

// stopFleet stops f and waits for d to notice.
func stopFleet(t *testing.T, f *harness.Fleet, d *harness.Device) {
	t.Helper()
	f.Stop()
	if _, err := d.Wait(t.Context(), 10*time.Second, func(s agent.Status) bool { return !s.Connected }); err != nil {
		t.Fatal(err)
	}
}

package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/config"
)

// TestMigrateToPostgres runs `sigil migrate` on a data directory whose
// stores hold records, against a real PostgreSQL (pgtest): the records
// are in the database afterwards and work there (a login, a token, the
// audit chain and its checkpoint verifying against audit.pub, a pending
// approval, devices, a rotation job with its devices, sealed secrets and
// their deliveries, an approved firmware release); a second run is
// refused, and --force replaces.
func TestMigrateToPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	dir := t.TempDir()
	ctx := t.Context()
	const pw = "correct horse battery"

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, server.AuditPubFile), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := audit.Open(audit.Config{Path: filepath.Join(dir, audit.File), Signer: key, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if err := log.Record(ctx, audit.New(audit.User("alice"), "device.tag", inventorytest.ID(i%4))); err != nil {
			t.Fatal(err)
		}
		if i == 19 {
			if _, err := log.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	log.Close()

	a, err := auth.Open(auth.Config{Path: filepath.Join(dir, server.OperatorsFile), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateUser(ctx, "alice", pw, auth.RoleOperator); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Login(ctx, "alice", pw, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	secret, _, err := a.CreateToken(ctx, "alice", "ci", auth.RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()

	m, err := approval.Open(approval.Config{Path: filepath.Join(dir, server.ApprovalsFile), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Register(approval.KindPolicyChange, func(context.Context, approval.Request, approval.Actor) error { return nil }); err != nil {
		t.Fatal(err)
	}
	req, err := m.Submit(ctx, auth.Principal{User: "alice", Role: auth.RoleSecurityAdmin},
		approval.Draft{Kind: approval.KindPolicyChange, Target: "policy/kiosk", Justification: "new firmware"})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()

	h, err := attest.OpenHistory(filepath.Join(dir, server.HistoryFile), 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 7 {
		if err := h.Add(ctx, &attest.Record{DeviceID: inventorytest.ID(i % 2), Result: "pass"}); err != nil {
			t.Fatal(err)
		}
	}
	h.Close()

	ps, err := policy.Open(filepath.Join(dir, server.PolicyFile), policy.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	pol := policy.Policy{ID: "gw", Name: "gw", Model: "gw", Firmware: "1.0", CreatedBy: "alice",
		PCRs: map[string]map[int]string{"sha256": {7: strings.Repeat("aa", 32)}}}
	for range 2 {
		if _, err := ps.Put(ctx, pol); err != nil {
			t.Fatal(err)
		}
	}
	ps.Close()

	inv, err := inventory.Open(filepath.Join(dir, server.InventoryFile), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := inv.PutDevice(ctx, inventorytest.NewDevice(i)); err != nil {
			t.Fatal(err)
		}
	}
	inv.Close()
	for _, st := range moreMigratedStores {
		st.seed(t, dir)
	}

	seedRotationJob(t, filepath.Join(dir, server.JobsFile))
	sec, err := secrets.Open(secrets.Config{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"psk-1", "psk-2"} {
		if _, err := sec.Put(ctx, "wifi", []byte(v), secrets.Target{Group: "plant-7"}, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sec.Put(ctx, "api", []byte("token"), secrets.Target{Model: "gw"}, true); err != nil {
		t.Fatal(err)
	}
	if err := sec.SetRotation(ctx, "wifi", &secrets.Rotation{Every: config.Duration(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	sec.Close()
	dl, err := secrets.OpenDeliveries(filepath.Join(dir, secrets.DeliveriesFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{inventorytest.ID(0), inventorytest.ID(1)} {
		if err := dl.Update(ctx, "wifi", id, func(d *secrets.Delivery) { d.Sent, d.Acked = 2, 2 }); err != nil {
			t.Fatal(err)
		}
	}
	if err := dl.Update(ctx, "api", inventorytest.ID(0), func(d *secrets.Delivery) { d.Sent, d.Error = 1, "not attested" }); err != nil {
		t.Fatal(err)
	}
	dl.Close()
	fwDir := filepath.Join(dir, server.FirmwareDir)
	trust, releaseID := seedRelease(t, fwDir)

	url := srv.NewDatabase(t)
	out, errOut, code := runCLI(t, "", "migrate", "--data-dir", dir, "--database-url", url)
	if code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"audit ", "entries 30", "checkpoints 1", "operators", "users 1", "sessions 1", "tokens 1", "approvals", "requests 1", "inventory", "devices 4", "attestations", "devices 2, records 7", "policies", "versions 2",
		"rotations", "devices 3, jobs 1", "secrets", "names 2, schedules 1, versions 3", "deliveries", "deliveries 3, secrets 2", "firmware", "releases 1",
		"the audit chain verifies"} {
		if !strings.Contains(out, want) {
			t.Errorf("migrate output lacks %q:\n%s", want, out)
		}
	}
	for _, st := range moreMigratedStores {
		for _, want := range st.want {
			if !strings.Contains(out, want) {
				t.Errorf("migrate output lacks %q (%s):\n%s", want, st.name, out)
			}
		}
	}

	db, err := postgres.Open(ctx, url, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	pl, err := audit.OpenPostgres(ctx, db, audit.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := pl.VerifyStore(ctx, &key.PublicKey); err != nil || rep.Entries != 30 || rep.Checkpoints != 1 || rep.Unsigned != 10 {
		t.Fatalf("audit log in the database: %+v, %v", rep, err)
	}
	pl.Close()
	pa, err := auth.OpenPostgres(ctx, db, auth.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pa.Login(ctx, "alice", pw, "192.0.2.1"); err != nil {
		t.Fatalf("login in the database: %v", err)
	}
	if toks, err := pa.Tokens(ctx, "alice"); err != nil || len(toks) != 1 || !strings.HasPrefix(secret, auth.TokenPrefix) {
		t.Fatalf("tokens in the database: %v, %v", toks, err)
	}
	pm, err := approval.OpenPostgres(ctx, db, approval.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := pm.Get(ctx, req.ID); err != nil || r.State != approval.StatePending {
		t.Fatalf("approval in the database: %+v, %v", r, err)
	}
	ph, err := attest.OpenHistoryPostgres(ctx, db, 0)
	if err != nil {
		t.Fatal(err)
	}
	if recs, err := ph.List(ctx, inventorytest.ID(0), 10); err != nil || len(recs) != 4 || recs[0].Seq != 4 {
		t.Fatalf("attestation history in the database: %+v, %v", recs, err)
	}
	if err := ph.Add(ctx, &attest.Record{DeviceID: inventorytest.ID(1), Result: "fail"}); err != nil {
		t.Fatal(err)
	}
	if last, err := ph.Last(ctx, inventorytest.ID(1)); err != nil || last.Seq != 4 {
		t.Fatalf("a verdict added after the copy: %+v, %v (the sequence must continue)", last, err)
	}
	pp, err := policy.OpenPostgres(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := pp.Get(ctx, "gw"); err != nil || got.Version != 2 || got.Model != "gw" {
		t.Fatalf("policy in the database: %+v, %v", got, err)
	}
	pi, err := inventory.OpenPostgres(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := pi.DeviceByEK(ctx, inventorytest.EK(2)); err != nil || d.ID != inventorytest.ID(2) {
		t.Fatalf("device in the database: %v, %v", d, err)
	}
	for _, st := range moreMigratedStores {
		st.check(t, ctx, db)
	}

	pj, err := rotation.OpenJobsPostgres(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if j, err := pj.Get(ctx, "rot_old"); err != nil || j.Progress() != (rotation.Progress{Total: 3, Sent: 1, Renewed: 1, Waiting: 1}) || len(j.Devices) != 3 {
		t.Fatalf("rotation job in the database: %+v, %v", j, err)
	}
	if devs, _, err := pj.Devices(ctx, "rot_old", "", 2); err != nil || len(devs) != 2 || devs[0].ID != "a1" {
		t.Fatalf("rotation job's devices in the database: %+v, %v", devs, err)
	}
	ps2, err := secrets.OpenPostgres(ctx, db, secrets.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ps2.Get(ctx, "wifi"); err != nil || string(got.Value) != "psk-2" || got.Version != 2 {
		t.Fatalf("secret in the database: %v, %v", got, err)
	}
	if l, err := ps2.List(ctx); err != nil || len(l) != 2 || l[1].Rotation == nil {
		t.Fatalf("secrets listed in the database: %+v, %v", l, err)
	}
	if v, err := ps2.Put(ctx, "wifi", []byte("psk-3"), secrets.Target{Group: "plant-7"}, false); err != nil || v != 3 {
		t.Fatalf("a version stored after the copy: %d, %v (the numbers must continue)", v, err)
	}
	if _, err := secrets.OpenPostgres(ctx, db, secrets.Config{Dir: t.TempDir()}); err == nil {
		t.Fatal("the secrets in the database opened with another key file")
	}
	pd, err := secrets.OpenDeliveriesPostgres(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := pd.ForDevice(ctx, inventorytest.ID(0)); err != nil || len(got) != 2 || got["wifi"].Acked != 2 || got["api"].Error == "" {
		t.Fatalf("deliveries in the database: %+v, %v", got, err)
	}
	pf, err := firmware.OpenPostgres(ctx, db, firmware.Config{Dir: fwDir, Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pf.Offerable(ctx, releaseID, time.Now()); err != nil {
		t.Fatalf("firmware release in the database: %v", err)
	}

	// The database holds records now: refused, nothing copied; --force
	// replaces them.
	if _, err := pa.CreateUser(ctx, "bob", pw, auth.RoleViewer); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runCLI(t, "", "migrate", "--data-dir", dir, "--database-url", url); code == 0 || !strings.Contains(errOut, "already holds records") {
		t.Fatalf("second migrate: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := runCLI(t, "", "migrate", "--data-dir", dir, "--database-url", url, "--force"); code != 0 {
		t.Fatalf("migrate --force: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := pa.User(ctx, "bob"); err == nil {
		t.Fatal("migrate --force kept a user the file does not have")
	}
}

// seedRotationJob writes a job as an earlier version stored it (devices
// inline) and opens the file, which converts it to the layout of nested
// buckets sigil migrate copies.
func seedRotationJob(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	old := `{"id":"rot_old","created":"2026-01-01T00:00:00Z","selector":{"all":true},"rate":5,"state":"running","devices":[` +
		`{"id":"a1","from":"01","sent":"` + now + `","attempts":1},{"id":"a2","from":"01","done_at":"` + now + `"},{"id":"a3","from":"01"}]}`
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("jobs"))
		if err != nil {
			return err
		}
		return b.Put([]byte("rot_old"), []byte(old))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	j, err := rotation.OpenJobs(path)
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
}

// seedRelease uploads a signed release to the store in dir and has it
// approved; it returns the trust set and the release's ID.
func seedRelease(t *testing.T, dir string) (*verify.TrustSet, string) {
	t.Helper()
	signer, trust := signtest.Key(t)
	img := bytes.Repeat([]byte("firmware "), 100)
	m := &manifest.Manifest{Name: "gateway-os", Version: "1.0.0", SecurityVersion: 1, Models: []string{"gw"},
		Size: int64(len(img)), SHA256: sha256.Sum256(img), Expires: time.Now().AddDate(1, 0, 0)}
	raw, bundles := signtest.Release(t, m, signer)
	st, err := firmware.Open(firmware.Config{Dir: dir, Trust: trust, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r, err := st.Upload(t.Context(), "alice", raw, bundles, bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Approve(t.Context(), "bob", r.ID); err != nil {
		t.Fatal(err)
	}
	return trust, r.ID
}

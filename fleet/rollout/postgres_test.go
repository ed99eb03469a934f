package rollout

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// TestOpenKeepsReleasesInTheDatabase: with Config.Database the release
// records and the campaigns are in PostgreSQL, where another replica's
// stores read them, and no bbolt file is written; the images stay in Dir.
func TestOpenKeepsReleasesInTheDatabase(t *testing.T) {
	srv := pgtest.Start(t)
	db, err := postgres.Open(t.Context(), srv.NewDatabase(t), postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	dir := t.TempDir()
	k := signtest.Signers(t, 1)
	trustFile, _ := writeTrust(t, dir, "trust.json", 1, 1, k...)
	cfg := Config{Dir: filepath.Join(dir, "fw"), StagingDir: filepath.Join(dir, "staging"), CampaignsPath: filepath.Join(dir, "campaigns.db"),
		TrustFile: trustFile, Database: db}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	img := bytes.Repeat([]byte("pg"), 2048)
	m := &manifest.Manifest{Name: "gw-os", Version: "3.0.0", SecurityVersion: 3, Models: []string{"gw-1"},
		Size: int64(len(img)), SHA256: sha256.Sum256(img), Expires: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}
	raw, bundles := signtest.Release(t, m, k[0])
	r, err := s.Upload(t.Context(), "ana", raw, bundles, bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(cfg.Dir, firmware.DBFile), cfg.CampaignsPath} {
		if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("a bbolt file beside the database: %v", err)
		}
	}
	ts, err := verify.NewTrustSet(1, 1, k[0].Public())
	if err != nil {
		t.Fatal(err)
	}
	other, err := firmware.OpenPostgres(t.Context(), db, firmware.Config{Dir: cfg.Dir, Trust: ts})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	got, err := other.Release(t.Context(), r.ID)
	if err != nil || got.UploadedBy != "ana" {
		t.Fatalf("the release read from the database: %+v, %v", got, err)
	}
}

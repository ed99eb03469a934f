package secrets_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/config"
)

// openBackend opens the store of cfg.Dir in bbolt, or in PostgreSQL under
// TestConformance/postgres (the key file stays in cfg.Dir).
func openBackend(t testing.TB, cfg secrets.Config) (*secrets.Store, error) {
	db, ok := pgtest.Database(t, cfg.Dir)
	if !ok {
		return secrets.Open(cfg)
	}
	return secrets.OpenPostgres(context.Background(), db, cfg)
}

// stored returns every byte the store of dir keeps: its file, or its
// rows in PostgreSQL.
func stored(t *testing.T, dir string) []byte {
	t.Helper()
	db, ok := pgtest.Database(t, dir)
	if !ok {
		raw, err := os.ReadFile(filepath.Join(dir, secrets.DBFile))
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	var raw []byte
	err := db.Pool().QueryRow(t.Context(), "SELECT coalesce(string_agg(bucket || key || value, ''::bytea), ''::bytea) FROM "+secrets.Table).Scan(&raw)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// conformanceTests are the store's tests run against both backends.
var conformanceTests = []pgtest.Test{
	{Name: "Store", Fn: TestStore},
	{Name: "StoreKeyFile", Fn: TestStoreKeyFile},
	{Name: "StorePutRefusals", Fn: TestStorePutRefusals},
	{Name: "RotationSchedule", Fn: TestRotationSchedule},
}

// TestConformance runs the store's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Conformance(t, conformanceTests)
	t.Run("ReplicasRotateOnce", func(t *testing.T) { testReplicasRotateOnce(t, srv) })
	t.Run("ReplicasShareTheKeyFile", func(t *testing.T) { testReplicasShareTheKey(t, srv) })
}

// testReplicasRotateOnce: replicas that all find a scheduled secret due
// store one new version, not one each.
func testReplicasRotateOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	dir := t.TempDir()
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	later := now.Add(2 * time.Hour)
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	var replicas []*secrets.Store
	for range 3 {
		db := pgtest.Open(t, url)
		s, err := secrets.OpenPostgres(t.Context(), db, secrets.Config{Dir: dir, Now: func() time.Time { return *clock.Load() }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		replicas = append(replicas, s)
	}
	if _, err := replicas[0].Put(t.Context(), "wifi", []byte("v1"), secrets.Target{Group: "g"}, false); err != nil {
		t.Fatal(err)
	}
	if err := replicas[1].SetRotation(t.Context(), "wifi", &secrets.Rotation{Every: config.Duration(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	clock.Store(&later)
	// Every replica finds it due, then all rotate at once.
	for _, s := range replicas {
		if due, err := s.Due(t.Context(), later); err != nil || len(due) != 1 {
			t.Fatalf("due: %v %v", due, err)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	rotated := 0
	for _, s := range replicas {
		for range 2 {
			wg.Go(func() {
				info, err := s.RotateDue(t.Context(), "wifi", later)
				if err != nil {
					t.Errorf("rotate: %v", err)
				}
				if info != nil {
					mu.Lock()
					rotated++
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	l, err := replicas[2].List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rotated != 1 || len(l) != 1 || len(l[0].Versions) != 2 {
		t.Fatalf("%d rotations, listing %+v: want one rotation, versions [1 2]", rotated, l)
	}
}

// testReplicasShareTheKey: a replica whose key file is not the one the
// database's secrets are sealed with is refused.
func testReplicasShareTheKey(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	open := func(dir string) error {
		db, err := postgres.Open(t.Context(), url, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		s, err := secrets.OpenPostgres(t.Context(), db, secrets.Config{Dir: dir})
		if err == nil {
			s.Close()
		}
		return err
	}
	a, b := t.TempDir(), t.TempDir()
	if err := open(a); err != nil {
		t.Fatal(err)
	}
	if err := open(b); err == nil {
		t.Fatal("a replica with another key file opened the secrets")
	}
	key, err := os.ReadFile(filepath.Join(a, secrets.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, secrets.KeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := open(b); err != nil {
		t.Fatalf("a replica with the same key file: %v", err)
	}
}

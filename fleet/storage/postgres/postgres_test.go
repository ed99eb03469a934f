package postgres_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

func open(t *testing.T, url string) *postgres.DB {
	t.Helper()
	db := pgtest.Open(t, url)
	return db
}

func TestPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	t.Run("Migrate", func(t *testing.T) { testMigrate(t, open(t, srv.NewDatabase(t))) })
	t.Run("TxSerializes", func(t *testing.T) { testTxSerializes(t, open(t, srv.NewDatabase(t))) })
	t.Run("BadURL", testBadURL)
}

// testMigrate: files apply in order once, each recorded; a second run
// applies nothing; a database a newer build migrated is refused; a
// malformed set of files is refused before anything runs.
func testMigrate(t *testing.T, db *postgres.DB) {
	ctx := t.Context()
	v1 := fstest.MapFS{
		"m/0001_create.sql": {Data: []byte("CREATE TABLE t (n integer PRIMARY KEY)")},
	}
	v2 := fstest.MapFS{
		"m/0001_create.sql": v1["m/0001_create.sql"],
		"m/0002_seed.sql":   {Data: []byte("INSERT INTO t VALUES (1), (2)")},
	}
	if err := db.Migrate(ctx, "x", v1); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := db.Migrate(ctx, "x", v2); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := db.Pool().QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 2 {
		t.Fatalf("rows after migrating twice: %d, %v; want 2 (the seed applied once)", n, err)
	}
	if v, err := db.Version(ctx, "x"); v != 2 || err != nil {
		t.Fatalf("version %d, %v; want 2", v, err)
	}
	if v, _ := db.Version(ctx, "other"); v != 0 {
		t.Fatalf("another component's version %d, want 0", v)
	}
	if err := db.Migrate(ctx, "x", v1); !errors.Is(err, postgres.ErrSchema) {
		t.Fatalf("older build on a newer database: %v, want ErrSchema", err)
	}
	gap := fstest.MapFS{"0001_a.sql": {Data: []byte("SELECT 1")}, "0003_c.sql": {Data: []byte("SELECT 1")}}
	if err := db.Migrate(ctx, "y", gap); !errors.Is(err, postgres.ErrSchema) {
		t.Fatalf("a gap in the versions: %v, want ErrSchema", err)
	}
	bad := fstest.MapFS{"create.sql": {Data: []byte("SELECT 1")}}
	if err := db.Migrate(ctx, "z", bad); !errors.Is(err, postgres.ErrSchema) {
		t.Fatalf("a file without a version: %v, want ErrSchema", err)
	}
	failing := fstest.MapFS{"0001_bad.sql": {Data: []byte("CREATE TABLE u (n integer); SELECT nonsense()")}}
	if err := db.Migrate(ctx, "w", failing); err == nil {
		t.Fatal("a failing migration succeeded")
	}
	if v, _ := db.Version(ctx, "w"); v != 0 {
		t.Fatalf("a failed migration was recorded (version %d)", v)
	}
}

// testTxSerializes: concurrent read-modify-write transactions on one row
// all land (the ones that fail to serialize run again), as bbolt's single
// writer guarantees.
func testTxSerializes(t *testing.T, db *postgres.DB) {
	ctx := t.Context()
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE c (k integer PRIMARY KEY, n integer NOT NULL); INSERT INTO c VALUES (1, 0)"); err != nil {
		t.Fatal(err)
	}
	const writers = 16
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			errs[i] = db.Tx(ctx, func(tx pgx.Tx) error {
				var n int
				if err := tx.QueryRow(ctx, "SELECT n FROM c WHERE k = 1").Scan(&n); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "UPDATE c SET n = $1 WHERE k = 1", n+1)
				return err
			})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := db.Pool().QueryRow(ctx, "SELECT n FROM c WHERE k = 1").Scan(&n); err != nil || n != writers {
		t.Fatalf("counter %d, %v; want %d (no lost update)", n, err, writers)
	}
	boom := errors.New("boom")
	if err := db.Tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE c SET n = 0"); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("fn's error: %v, want boom", err)
	}
	if err := db.Pool().QueryRow(ctx, "SELECT n FROM c WHERE k = 1").Scan(&n); err != nil || n != writers {
		t.Fatalf("a failed transaction was committed: %d, %v", n, err)
	}
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE u (k text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO u VALUES ('a'), ('a')")
		return err
	})
	if !postgres.UniqueViolation(err, "u_pkey") || postgres.UniqueViolation(err, "other") {
		t.Fatalf("duplicate key: %v, want a violation of u_pkey", err)
	}
}

// testBadURL: an unparsable URL fails without echoing it (it may carry a
// password).
func testBadURL(t *testing.T) {
	_, err := postgres.Open(context.Background(), "postgres://u:s3cret@[::1", postgres.Options{})
	if !errors.Is(err, postgres.ErrConfig) {
		t.Fatalf("bad URL: %v, want ErrConfig", err)
	}
	if err != nil && (strings.Contains(err.Error(), "s3cret")) {
		t.Fatalf("error shows the password: %v", err)
	}
}

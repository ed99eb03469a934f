package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/fleet/telemetry"
)

// migratedStore seeds one more store's file in a data directory for
// TestMigrateToPostgres and checks it in the database after the copy.
type migratedStore struct {
	name  string
	seed  func(t *testing.T, dir string)
	want  []string // in sigil migrate's output
	check func(t *testing.T, ctx context.Context, db *postgres.DB)
}

// moreMigratedStores are the campaigns, telemetry cursors, alerts and
// governance stores.
var moreMigratedStores = []migratedStore{
	{name: "telemetry",
		seed: func(t *testing.T, dir string) {
			c, err := telemetry.OpenCursors(filepath.Join(dir, telemetry.File))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
				if err := c.SetCursor(t.Context(), id, telemetry.Cursor{Stream: []byte(strings.Repeat("s", 16)), Through: 41}); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.SetFlag(t.Context(), "default_rules_installed"); err != nil {
				t.Fatal(err)
			}
		},
		want: []string{"telemetry ", "cursors 3, meta 1"},
		check: func(t *testing.T, ctx context.Context, db *postgres.DB) {
			c, err := telemetry.OpenCursorsPostgres(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if cur, ok, err := c.Cursor(ctx, "dev-2"); err != nil || !ok || cur.Through != 41 {
				t.Fatalf("telemetry cursor in the database: %+v %v %v", cur, ok, err)
			}
			if set, err := c.Flag(ctx, "default_rules_installed"); err != nil || !set {
				t.Fatalf("telemetry flag in the database: %v %v", set, err)
			}
		}},
}

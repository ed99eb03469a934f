package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/sigil-iot/sigil/fleet/migrate"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
)

// migrateCommand is `sigil migrate`: the data directory's bbolt stores
// that have a PostgreSQL backend, copied into the database and verified.
func migrateCommand() *command {
	return &command{name: "migrate", args: "[--config FILE] [--data-dir DIR] [--database-url URL] [--force]",
		summary: "copy the data directory's stores into PostgreSQL, verified",
		note: "Copies the stores that have a PostgreSQL backend (inventory, audit log, operators, attestation history, policies, approvals, " +
			"campaigns, telemetry cursors, alerts, governance, rotation jobs, secrets and their deliveries, firmware release records, workload registrations; firmware images stay files) " +
			"from the data directory's bbolt files into the database, then checks that the database holds the same " +
			"records (counts and a digest of the contents) and that the audit chain verifies there against audit.pub. " +
			"Stop the fleet first. A database that already holds records of a store is refused unless --force, which replaces them. " +
			"The files are left as they were; set database_url in the configuration to use the database.",
		setup: func(fs *flag.FlagSet) action {
			path := fs.String("config", "", "configuration file (JSON): its data_dir and database_url")
			dataDir := fs.String("data-dir", "", "data directory (overrides the file; default /var/lib/sigil)")
			url := fs.String("database-url", "", "PostgreSQL URL (overrides the file; default $SIGIL_DATABASE_URL)")
			force := fs.Bool("force", false, "replace what the database holds")
			return func(ctx context.Context, x *call) error {
				var cfg server.Config
				if *path != "" {
					if err := config.Load(*path, &cfg); err != nil {
						return err
					}
				}
				if *dataDir != "" {
					cfg.DataDir = *dataDir
				}
				if cfg.DataDir == "" {
					cfg.DataDir = "/var/lib/sigil"
				}
				if *url != "" {
					cfg.DatabaseURL = *url
				}
				if cfg.DatabaseURL == "" {
					cfg.DatabaseURL = os.Getenv("SIGIL_DATABASE_URL")
				}
				if cfg.DatabaseURL == "" {
					return usageError{"migrate needs a database: --database-url, database_url in --config, or $SIGIL_DATABASE_URL"}
				}
				stores, err := migrate.Run(ctx, cfg.DataDir, cfg.DatabaseURL, migrate.Options{Force: *force})
				if errors.Is(err, migrate.ErrNotEmpty) {
					return fmt.Errorf("%w; nothing was copied", err)
				}
				if err != nil {
					return err
				}
				printMigrated(x.stdout, stores)
				return nil
			}
		}}
}

// printMigrated lists what each store copied.
func printMigrated(w io.Writer, stores []migrate.Store) {
	for _, st := range stores {
		if st.Absent {
			fmt.Fprintf(w, "%-10s %s: no file, nothing to copy\n", st.Name, st.File)
			continue
		}
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(st.Records)) {
			parts = append(parts, fmt.Sprintf("%s %d", k, st.Records[k]))
		}
		fmt.Fprintf(w, "%-10s %s: copied and verified (%s)\n", st.Name, st.File, strings.Join(parts, ", "))
	}
	fmt.Fprintln(w, "the audit chain verifies in the database")
}

package attest

import (
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// shareState gives a replica the state every replica on db shares.
func shareState(t *testing.T, db *postgres.DB, cfg *Config) {
	t.Helper()
	st, err := OpenStatePostgres(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	cfg.State = st
}

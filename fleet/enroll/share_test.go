package enroll_test

import (
	"testing"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// shareSessions gives a replica the sessions every replica on db shares.
func shareSessions(t *testing.T, db *postgres.DB, cfg *enroll.Config) {
	t.Helper()
	s, err := enroll.OpenSessionsPostgres(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Sessions = s
}

package enroll_test

import (
	"bytes"
	"testing"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// fleetKey seals the sessions of the tests' replicas.
var fleetKey = bytes.Repeat([]byte{7}, 32)

// shareSessions gives a replica the sessions every replica on db shares.
func shareSessions(t *testing.T, db *postgres.DB, cfg *enroll.Config, key []byte) {
	t.Helper()
	s, err := enroll.OpenSessionsPostgres(t.Context(), db, key)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Sessions = s
}

// testSessions is the Sessions a test of enrollment sessions runs on: nil
// (in memory) as a plain test, PostgreSQL (its own database) under
// TestSessionsConformance.
func testSessions(t *testing.T) enroll.Sessions {
	t.Helper()
	db, ok := pgtest.Database(t, t.Name())
	if !ok {
		return nil
	}
	s, err := enroll.OpenSessionsPostgres(t.Context(), db, fleetKey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSessionsConformance runs the enrollment sessions' tests on
// PostgreSQL (they run in memory as plain tests).
func TestSessionsConformance(t *testing.T) {
	pgtest.Conformance(t, []pgtest.Test{
		{Name: "SessionBoundToClient", Fn: TestSessionBoundToClient},
		{Name: "AnonymousFailuresKeepLifecycleEvents", Fn: TestAnonymousFailuresKeepLifecycleEvents},
		{Name: "ClientSessionsBounded", Fn: TestClientSessionsBounded},
		{Name: "FailedActivationsCounted", Fn: TestFailedActivationsCounted},
	})
}

package telemetry

import (
	"context"
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
)

// openCursors opens the cursor store at path in bbolt, or in PostgreSQL
// under TestConformance/postgres.
func openCursors(t testing.TB, path string) (*CursorStore, error) {
	db, ok := pgtest.Database(t, path)
	if !ok {
		return OpenCursors(path)
	}
	return OpenCursorsPostgres(context.Background(), db)
}

// conformanceTests are the cursor store's tests run against both
// backends.
var conformanceTests = []pgtest.Test{
	{Name: "CursorStore", Fn: TestCursorStore},
	{Name: "CursorFlags", Fn: TestCursorFlags},
	{Name: "ResumeWithStoredCursors", Fn: TestResumeWithStoredCursors},
	{Name: "CursorSwap", Fn: TestCursorSwap},
	{Name: "RetiredStreamsStored", Fn: TestRetiredStreamsStored},
	{Name: "ReplicasIngestOnce", Fn: TestReplicasIngestOnce},
	{Name: "ReplicasIngestConcurrently", Fn: TestReplicasIngestConcurrently},
}

// TestConformance runs the cursor store's tests on PostgreSQL (pgtest:
// skipped without one unless CI=true); the package's tests run them on
// bbolt.
func TestConformance(t *testing.T) {
	pgtest.Conformance(t, conformanceTests)
}

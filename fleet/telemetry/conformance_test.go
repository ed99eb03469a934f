package telemetry

import (
	"context"
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// openCursors opens the cursor store at path in bbolt, or in PostgreSQL
// under TestConformance/postgres.
func openCursors(t testing.TB, path string) (*CursorStore, error) {
	return pgtest.OpenBackend(t, path, path, OpenCursors, func(ctx context.Context, db *postgres.DB, _ string) (*CursorStore, error) {
		return OpenCursorsPostgres(ctx, db)
	})
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

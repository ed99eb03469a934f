package workload

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// testKEK is the sealing key of the tests' stores.
var testKEK = bytes.Repeat([]byte{0x5a}, 32)

// openStore opens a store in t's temporary directory on bbolt, or in
// PostgreSQL under TestConformance/postgres; it is closed when t ends.
func openStore(t testing.TB) *Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), File)
	st, err := pgtest.OpenBackend(t, path, path, func(p string) (*Store, error) { return Open(p, testKEK) },
		func(ctx context.Context, db *postgres.DB, _ string) (*Store, error) {
			return OpenPostgres(ctx, db, testKEK)
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// conformanceTests are the store's tests run against both backends.
var conformanceTests = []pgtest.Test{
	{Name: "Registrations", Fn: TestRegistrations},
	{Name: "KeyRotation", Fn: TestKeyRotation},
	{Name: "KeyRotationByAge", Fn: TestKeyRotationByAge},
	{Name: "IssueX509", Fn: TestIssueX509},
	{Name: "OIDCVerifier", Fn: TestOIDCVerifier},
}

// TestConformance runs the store's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	pgtest.Conformance(t, conformanceTests)
}

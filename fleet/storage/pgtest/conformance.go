package pgtest

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// Test is one test of a store's conformance suite: a test of the
// package that opens its store through Database, so that it runs on
// bbolt as a plain test and on PostgreSQL under Conformance.
type Test struct {
	Name string
	Fn   func(*testing.T)
}

// runs maps the name prefix of a running Conformance ("TestX/postgres/")
// to its databases.
var runs sync.Map // string -> *run

type run struct {
	srv *Server
	mu  sync.Mutex
	dbs map[string]string // key -> database URL
}

// Conformance starts a PostgreSQL server and runs tests as subtests of
// t/postgres, where Database gives them their databases. Without
// PostgreSQL it skips t (fails it with CI=true), as Start does. It
// returns the server for tests that need several connections to one
// database (replicas), which the caller runs after it.
func Conformance(t *testing.T, tests []Test) *Server {
	t.Helper()
	srv := Start(t)
	prefix := t.Name() + "/postgres/"
	runs.Store(prefix, &run{srv: srv, dbs: map[string]string{}})
	t.Cleanup(func() { runs.Delete(prefix) })
	t.Run("postgres", func(t *testing.T) {
		for _, c := range tests {
			t.Run(c.Name, c.Fn)
		}
	})
	return srv
}

// Database returns, for a test running under Conformance, a connection
// to the database that key (a store's path) stands for: the first call
// for a key creates an empty database, later calls reopen the same one
// (a test that reopens its store reopens its data). The connection is
// closed when t ends. Outside Conformance it returns false: the test
// opens its store in bbolt.
func Database(t testing.TB, key string) (*postgres.DB, bool) {
	t.Helper()
	var r *run
	runs.Range(func(k, v any) bool {
		if strings.HasPrefix(t.Name(), k.(string)) {
			r = v.(*run)
		}
		return r == nil
	})
	if r == nil {
		return nil, false
	}
	r.mu.Lock()
	url, ok := r.dbs[key]
	if !ok {
		url = r.srv.NewDatabase(t)
		r.dbs[key] = url
	}
	r.mu.Unlock()
	db, err := postgres.Open(context.Background(), url, postgres.Options{})
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(db.Close)
	return db, true
}

// Open connects to the database at url (one of NewDatabase's) as one more
// replica would, failing t if it cannot; the connection is closed when t
// ends.
func Open(t testing.TB, url string) *postgres.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), url, postgres.Options{})
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(db.Close)
	return db
}

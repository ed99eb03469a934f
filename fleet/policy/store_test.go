package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
)

// clock is a fake clock that advances a second per reading.
type clock struct{ t time.Time }

func (c *clock) now() time.Time {
	c.t = c.t.Add(time.Second)
	return c.t
}

func openStore(t *testing.T, path string, opts ...StoreOption) *Store {
	t.Helper()
	if url := pgDatabase(t, path); url != "" {
		db := pgtest.Open(t, url)
		s, err := OpenPostgres(t.Context(), db, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s, err := Open(path, append([]StoreOption{WithNoSync()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// conformance holds, for the run of TestConformance on PostgreSQL, the
// server and the database each path stands for (a test that reopens a
// path reopens its database).
var conformance sync.Map // test name prefix -> *pgBackend

type pgBackend struct {
	srv *pgtest.Server
	mu  sync.Mutex
	dbs map[string]string
}

// pgDatabase returns the database standing for path under
// TestConformance/postgres, "" elsewhere (bbolt).
func pgDatabase(t *testing.T, path string) string {
	var be *pgBackend
	conformance.Range(func(k, v any) bool {
		if strings.HasPrefix(t.Name(), k.(string)) {
			be = v.(*pgBackend)
		}
		return be == nil
	})
	if be == nil {
		return ""
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	url, ok := be.dbs[path]
	if !ok {
		url = be.srv.NewDatabase(t)
		be.dbs[path] = url
	}
	return url
}

// TestConformance runs the store's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
// TestStoreLocked is about the bbolt file.
func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	conformance.Store(t.Name()+"/postgres/", &pgBackend{srv: srv, dbs: map[string]string{}})
	t.Cleanup(func() { conformance.Delete(t.Name() + "/postgres/") })
	t.Run("postgres", func(t *testing.T) {
		t.Run("StoreVersions", TestStoreVersions)
		t.Run("ConcurrentConflictingPuts", testConcurrentConflictingPuts)
	})
	t.Run("bbolt", func(t *testing.T) {
		t.Run("ConcurrentConflictingPuts", testConcurrentConflictingPuts)
	})
}

// testConcurrentConflictingPuts: of policies for one model, firmware and
// group put at once under different IDs, exactly one is stored.
func testConcurrentConflictingPuts(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "policies.db"))
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.Put(t.Context(), pcrPolicy(fmt.Sprint("p", i), "gw", "1.0", "aa"))
		})
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrConflict):
			t.Fatalf("put: %v, want ErrConflict", err)
		}
	}
	if ps, err := s.List(t.Context()); ok != 1 || err != nil || len(ps) != 1 {
		t.Fatalf("%d puts succeeded, %d policies listed (%v); want 1 and 1", ok, len(ps), err)
	}
}

func pcrPolicy(id, model, firmware, pcr7 string) Policy {
	return Policy{ID: id, Name: id, Model: model, Firmware: firmware, CreatedBy: "alice",
		PCRs: map[string]map[int]string{"sha256": {7: strings.Repeat(pcr7, 32)}}}
}

func TestStoreVersions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.db")
	c := &clock{t: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	s := openStore(t, path, WithClock(c.now))

	v1, err := s.Put(t.Context(), pcrPolicy("gw", "gw", "1.0", "aa"))
	if err != nil {
		t.Fatal(err)
	}
	if v1.Version != 1 || !v1.CreatedAt.Equal(time.Date(2026, 11, 22, 10, 0, 1, 0, time.UTC)) {
		t.Fatalf("v1 %+v", v1)
	}
	p := pcrPolicy("gw", "gw", "1.0", "bb")
	p.Version, p.CreatedAt = 17, time.Unix(0, 0) // ignored
	v2, err := s.Put(t.Context(), p)
	if err != nil {
		t.Fatal(err)
	}
	if v2.Version != 2 {
		t.Fatalf("v2 version %d", v2.Version)
	}
	got, err := s.Get(t.Context(), "gw")
	if err != nil || got.Version != 2 || got.PCRs["sha256"][7] != strings.Repeat("bb", 32) {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	old, err := s.GetVersion(t.Context(), "gw", 1)
	if err != nil || old.PCRs["sha256"][7] != strings.Repeat("aa", 32) || !old.CreatedAt.Equal(v1.CreatedAt) {
		t.Fatalf("version 1 = %+v, %v (the first version was overwritten?)", old, err)
	}

	// A second policy with the same scope is refused; another scope is fine.
	if _, err := s.Put(t.Context(), pcrPolicy("gw-copy", "gw", "1.0", "cc")); !errors.Is(err, ErrConflict) {
		t.Fatalf("same scope: %v", err)
	}
	if _, err := s.Put(t.Context(), pcrPolicy("gw-2", "gw", "2.0", "cc")); err != nil {
		t.Fatal(err)
	}
	// Invalid policies are refused with the validation errors.
	bad := pcrPolicy("gw", "gw", "1.0", "zz")
	if _, err := s.Put(t.Context(), bad); err == nil || !strings.Contains(err.Error(), "not hex") {
		t.Fatalf("invalid policy: %v", err)
	}
	bad.Deleted = true
	if _, err := s.Put(t.Context(), bad); err == nil {
		t.Fatal("Put of a deletion accepted")
	}

	if err := s.Delete(t.Context(), "gw", "bob", "model retired"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(t.Context(), "gw"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete: %v", err)
	}
	if err := s.Delete(t.Context(), "gw", "bob", "again"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete: %v", err)
	}
	if err := s.Delete(t.Context(), "nope", "bob", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete of an unknown policy: %v", err)
	}
	list, err := s.List(t.Context())
	if err != nil || len(list) != 1 || list[0].ID != "gw-2" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	// The deleted scope is free again.
	if _, err := s.Put(t.Context(), pcrPolicy("gw-copy", "gw", "1.0", "cc")); err != nil {
		t.Fatal(err)
	}

	// Put after Delete revives the policy as a new version.
	v4, err := s.Put(t.Context(), pcrPolicy("gw", "gw", "1.1", "dd"))
	if err != nil || v4.Version != 4 {
		t.Fatalf("revive: %+v, %v", v4, err)
	}
	s.Close()

	// Everything survives a reopen.
	s = openStore(t, path)
	h, err := s.History(t.Context(), "gw")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 4 {
		t.Fatalf("%d versions, want 4", len(h))
	}
	for i, p := range h {
		if p.Version != i+1 {
			t.Fatalf("history[%d] is version %d", i, p.Version)
		}
	}
	if !h[2].Deleted || h[2].CreatedBy != "bob" || h[2].Comment != "model retired" || h[2].PCRs["sha256"][7] != strings.Repeat("bb", 32) {
		t.Fatalf("deletion record %+v", h[2])
	}
	if h[0].Deleted || h[1].Deleted || h[3].Deleted {
		t.Fatal("live versions marked deleted")
	}
	if _, err := s.History(t.Context(), "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("History of an unknown policy: %v", err)
	}
	if _, err := s.GetVersion(t.Context(), "gw", 9); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown version: %v", err)
	}
	if p, err := s.Select(t.Context(), "gw", "1.0", ""); err != nil || p == nil || p.ID != "gw-copy" {
		t.Fatalf("Store.Select = %v, %v", p, err)
	}
	if p, err := s.Select(t.Context(), "gw", "1.1", ""); err != nil || p == nil || p.ID != "gw" || p.Version != 4 {
		t.Fatalf("Store.Select = %v, %v", p, err)
	}
	if p, err := s.Select(t.Context(), "cam", "1.0", ""); err != nil || p != nil {
		t.Fatalf("Store.Select without a policy = %v, %v", p, err)
	}

	if pgDatabase(t, path) != "" {
		return // no file
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("store file mode %v, %v", fi.Mode(), err)
	}
}

func TestStoreLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.db")
	openStore(t, path)
	// bbolt's file lock is per open file description: a second Open in the
	// same process waits for it too.
	_, err := Open(path, func(o *storeOptions) { o.timeout = 50 * time.Millisecond })
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v", err)
	}
}

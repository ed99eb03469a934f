package auth

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// conformance holds, for the runs of TestConformance on PostgreSQL, the
// server and the database each Config.Path stands for (a test that
// reopens a path reopens its database).
var conformance sync.Map // test name prefix -> *pgBackend

type pgBackend struct {
	srv *pgtest.Server
	mu  sync.Mutex
	dbs map[string]string // Config.Path -> database URL
}

// openBackend opens cfg in bbolt, or in PostgreSQL under
// TestConformance/postgres.
func openBackend(t testing.TB, cfg Config) (*Service, error) {
	var be *pgBackend
	conformance.Range(func(k, v any) bool {
		if strings.HasPrefix(t.Name(), k.(string)) {
			be = v.(*pgBackend)
		}
		return be == nil
	})
	if be == nil {
		return Open(cfg)
	}
	be.mu.Lock()
	url, ok := be.dbs[cfg.Path]
	if !ok {
		url = be.srv.NewDatabase(t)
		be.dbs[cfg.Path] = url
	}
	be.mu.Unlock()
	db, err := postgres.Open(context.Background(), url, postgres.Options{})
	if err != nil {
		return nil, err
	}
	t.Cleanup(db.Close)
	return OpenPostgres(context.Background(), db, cfg)
}

// conformanceTests are the tests of the store's behaviour, run against
// both backends. TestThrottleMemoryIsBounded is about the memory
// throttle's eviction (PostgreSQL prunes instead), the file-reading part
// of TestTokenShownOnceAndScoped is checked on the table by
// testSharedByReplicas.
var conformanceTests = []struct {
	name string
	fn   func(*testing.T)
}{
	{"EnsureAdmin", TestEnsureAdmin},
	{"LastAdminStays", TestLastAdminStays},
	{"UserValidation", TestUserValidation},
	{"CSRF", TestCSRF},
	{"CSRFRefusalDoesNotKeepSessionAlive", TestCSRFRefusalDoesNotKeepSessionAlive},
	{"LoginThrottleAndLockout", TestLoginThrottleAndLockout},
	{"LoginSuccessResetsUserCounter", TestLoginSuccessResetsUserCounter},
	{"AddressLockout", TestAddressLockout},
	{"ParallelGuessesWait", TestParallelGuessesWait},
	{"DisabledUserGetsTheSameAnswer", TestDisabledUserGetsTheSameAnswer},
	{"LoginHandlerAnswers", TestLoginHandlerAnswers},
	{"LockoutIsPerUserAndSource", TestLockoutIsPerUserAndSource},
	{"ChangeOwnPasswordEndsOtherSessions", TestChangeOwnPasswordEndsOtherSessions},
	{"ChangeOwnPasswordWithToken", TestChangeOwnPasswordWithToken},
	{"ChangeOwnPasswordRules", TestChangeOwnPasswordRules},
	{"ChangeOwnPasswordThrottled", TestChangeOwnPasswordThrottled},
	{"SetPasswordEndsSessions", TestSetPasswordEndsSessions},
	{"RehashOnLogin", TestRehashOnLogin},
	{"PermissionMatrix", TestPermissionMatrix},
	{"CreateTokenAsStaysInScope", TestCreateTokenAsStaysInScope},
	{"RevokeTokenAs", TestRevokeTokenAs},
	{"UserChangesAsStayInScope", TestUserChangesAsStayInScope},
	{"SinceMarksAccountChanges", TestSinceMarksAccountChanges},
	{"PrincipalFromCredential", TestPrincipalFromCredential},
	{"PendingTokenActivation", TestPendingTokenActivation},
	{"LoginsAudited", TestLoginsAudited},
	{"DistributedGuessSlowsNeverLocks", TestDistributedGuessSlowsNeverLocks},
	{"UnknownNamesGoToTheAnonymousRecorder", TestUnknownNamesGoToTheAnonymousRecorder},
	{"SessionIdleExpiry", TestSessionIdleExpiry},
	{"SessionAbsoluteExpiry", TestSessionAbsoluteExpiry},
	{"SessionEndsWithPasswordChangeAndDisable", TestSessionEndsWithPasswordChangeAndDisable},
	{"BrowserFlow", TestBrowserFlow},
	{"PruneAndRun", TestPruneAndRun},
	{"TokenExpiryRevocationAndLastUsed", TestTokenExpiryRevocationAndLastUsed},
	{"TokenFollowsItsOwner", TestTokenFollowsItsOwner},
	{"TokenLifetimeBounds", TestTokenLifetimeBounds},
	{"MalformedCredentials", TestMalformedCredentials},
}

// TestConformance runs the store's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	conformance.Store(t.Name()+"/postgres/", &pgBackend{srv: srv, dbs: map[string]string{}})
	t.Cleanup(func() { conformance.Delete(t.Name() + "/postgres/") })
	t.Run("postgres", func(t *testing.T) {
		for _, c := range conformanceTests {
			t.Run(c.name, c.fn)
		}
		t.Run("SharedByReplicas", func(t *testing.T) { testSharedByReplicas(t, srv) })
	})
}

// testSharedByReplicas: two services on one database (two replicas)
// share users, sessions, API tokens and the login throttle.
func testSharedByReplicas(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	clk := newClock()
	open := func() *Service {
		db, err := postgres.Open(t.Context(), url, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(db.Close)
		s, err := OpenPostgres(t.Context(), db, Config{Params: testParams, Now: clk.Now, Throttle: Throttle{Failures: 3, Lockout: time.Hour}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	db, err := postgres.Open(t.Context(), url, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	a, b := open(), open()
	mustCreate(t, a, "alice", alicePW, RoleOperator)
	if u, err := b.User(t.Context(), "alice"); err != nil || u.Role != RoleOperator {
		t.Fatalf("user made on one replica, read on the other: %+v, %v", u, err)
	}
	sess := mustLogin(t, a, "alice", alicePW)
	if p, err := b.Authenticate(request(b, "GET", "/me", "", &sess)); err != nil || p.User != "alice" {
		t.Fatalf("session made on one replica, on the other: %+v, %v", p, err)
	}
	secret, _, err := b.CreateToken(t.Context(), "alice", "ci", RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := a.Authenticate(request(a, "GET", "/me", "", nil, "Authorization", "Bearer "+secret)); err != nil || p.User != "alice" {
		t.Fatalf("token made on one replica, on the other: %+v, %v", p, err)
	}
	// Only hashes of secrets are stored.
	var n int
	if err := db.Pool().QueryRow(t.Context(), "SELECT count(*) FROM auth_kv WHERE position($1::bytea in value) > 0 OR position($1::bytea in key) > 0 OR position($2::bytea in value) > 0 OR position($2::bytea in key) > 0",
		[]byte(strings.TrimPrefix(secret, TokenPrefix)), []byte(sess.ID)).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows hold a token secret or session ID (%v)", n, err)
	}
	if err := b.EndSessions(t.Context(), "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(request(a, "GET", "/me", "", &sess)); !errors.Is(err, ErrSessionInvalid) {
		t.Fatalf("session ended on one replica still works on the other: %v", err)
	}
	// Guesses spread over the replicas count together: the third locks
	// alice out from this address on both.
	for i, s := range []*Service{a, b, a} {
		clk.Advance(2 * time.Minute) // past each failure's delay
		if _, err := s.Login(t.Context(), "alice", "wrong password!", "198.51.100.7"); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	clk.Advance(2 * time.Minute)
	for _, s := range []*Service{a, b} {
		if _, err := s.Login(t.Context(), "alice", alicePW, "198.51.100.7"); !errors.Is(err, ErrThrottled) {
			t.Fatalf("after 3 failures spread over the replicas: %v, want ErrThrottled", err)
		}
	}
	// Another address is not held back.
	if _, err := b.Login(t.Context(), "alice", alicePW, "198.51.100.8"); err != nil {
		t.Fatal(err)
	}
}

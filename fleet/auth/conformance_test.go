package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// openBackend opens cfg in bbolt, or in PostgreSQL under
// TestConformance/postgres.
func openBackend(t testing.TB, cfg Config) (*Service, error) {
	return pgtest.OpenBackend(t, cfg.Path, cfg, Open, OpenPostgres)
}

// conformanceTests are the tests of the store's behaviour, run against
// both backends. TestThrottleMemoryIsBounded is about the memory
// throttle's eviction (PostgreSQL prunes instead), the file-reading part
// of TestTokenShownOnceAndScoped is checked on the table by
// testSharedByReplicas.
var conformanceTests = []pgtest.Test{
	{Name: "EnsureAdmin", Fn: TestEnsureAdmin},
	{Name: "LastAdminStays", Fn: TestLastAdminStays},
	{Name: "UserValidation", Fn: TestUserValidation},
	{Name: "CSRF", Fn: TestCSRF},
	{Name: "CSRFRefusalDoesNotKeepSessionAlive", Fn: TestCSRFRefusalDoesNotKeepSessionAlive},
	{Name: "LoginThrottleAndLockout", Fn: TestLoginThrottleAndLockout},
	{Name: "LoginSuccessResetsUserCounter", Fn: TestLoginSuccessResetsUserCounter},
	{Name: "AddressLockout", Fn: TestAddressLockout},
	{Name: "ParallelGuessesWait", Fn: TestParallelGuessesWait},
	{Name: "DisabledUserGetsTheSameAnswer", Fn: TestDisabledUserGetsTheSameAnswer},
	{Name: "LoginHandlerAnswers", Fn: TestLoginHandlerAnswers},
	{Name: "LockoutIsPerUserAndSource", Fn: TestLockoutIsPerUserAndSource},
	{Name: "ChangeOwnPasswordEndsOtherSessions", Fn: TestChangeOwnPasswordEndsOtherSessions},
	{Name: "ChangeOwnPasswordWithToken", Fn: TestChangeOwnPasswordWithToken},
	{Name: "ChangeOwnPasswordRules", Fn: TestChangeOwnPasswordRules},
	{Name: "ChangeOwnPasswordThrottled", Fn: TestChangeOwnPasswordThrottled},
	{Name: "SetPasswordEndsSessions", Fn: TestSetPasswordEndsSessions},
	{Name: "RehashOnLogin", Fn: TestRehashOnLogin},
	{Name: "PermissionMatrix", Fn: TestPermissionMatrix},
	{Name: "CreateTokenAsStaysInScope", Fn: TestCreateTokenAsStaysInScope},
	{Name: "RevokeTokenAs", Fn: TestRevokeTokenAs},
	{Name: "UserChangesAsStayInScope", Fn: TestUserChangesAsStayInScope},
	{Name: "SinceMarksAccountChanges", Fn: TestSinceMarksAccountChanges},
	{Name: "PrincipalFromCredential", Fn: TestPrincipalFromCredential},
	{Name: "PendingTokenActivation", Fn: TestPendingTokenActivation},
	{Name: "LoginsAudited", Fn: TestLoginsAudited},
	{Name: "DistributedGuessSlowsNeverLocks", Fn: TestDistributedGuessSlowsNeverLocks},
	{Name: "UnknownNamesGoToTheAnonymousRecorder", Fn: TestUnknownNamesGoToTheAnonymousRecorder},
	{Name: "SessionIdleExpiry", Fn: TestSessionIdleExpiry},
	{Name: "SessionAbsoluteExpiry", Fn: TestSessionAbsoluteExpiry},
	{Name: "SessionEndsWithPasswordChangeAndDisable", Fn: TestSessionEndsWithPasswordChangeAndDisable},
	{Name: "BrowserFlow", Fn: TestBrowserFlow},
	{Name: "PruneAndRun", Fn: TestPruneAndRun},
	{Name: "TokenExpiryRevocationAndLastUsed", Fn: TestTokenExpiryRevocationAndLastUsed},
	{Name: "TokenFollowsItsOwner", Fn: TestTokenFollowsItsOwner},
	{Name: "TokenLifetimeBounds", Fn: TestTokenLifetimeBounds},
	{Name: "MalformedCredentials", Fn: TestMalformedCredentials},
	{Name: "ExternalAccounts", Fn: TestExternalAccounts},
	{Name: "ExternalAccountPassword", Fn: TestExternalAccountPassword},
	{Name: "PasswordLoginOff", Fn: TestPasswordLoginOff},
}

// TestConformance runs the store's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Conformance(t, conformanceTests)
	t.Run("SharedByReplicas", func(t *testing.T) { testSharedByReplicas(t, srv) })
}

// testSharedByReplicas: two services on one database (two replicas)
// share users, sessions, API tokens and the login throttle.
func testSharedByReplicas(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	clk := newClock()
	open := func() *Service {
		return pgtest.Replica(t, url, func(db *postgres.DB) (*Service, error) {
			return OpenPostgres(t.Context(), db, Config{Params: testParams, Now: clk.Now, Throttle: Throttle{Failures: 3, Lockout: time.Hour}})
		})
	}
	db := pgtest.Open(t, url)
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

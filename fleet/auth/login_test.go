package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// outcome describes a login's result the way a client sees it.
func outcome(err error) string {
	var te *ThrottleError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &te):
		return "throttled " + te.RetryAfter.String()
	case errors.Is(err, ErrInvalidCredentials):
		return "invalid"
	}
	return "error " + err.Error()
}

func TestLoginThrottleAndLockout(t *testing.T) {
	throttle := Throttle{Failures: 4, Lockout: 10 * time.Minute, BaseDelay: time.Second, MaxDelay: 3 * time.Second, AddrFailures: 1000}
	// Each step: advance the clock, then log in with the right or a wrong
	// password. The right password is refused while throttled.
	steps := []struct {
		advance time.Duration
		right   bool
		want    string
	}{
		{0, false, "invalid"},     // failure 1: wait 1s
		{0, true, "throttled 1s"}, // even the right password waits
		{500 * time.Millisecond, false, "throttled 500ms"},
		{500 * time.Millisecond, false, "invalid"}, // failure 2: wait 2s
		{time.Second, false, "throttled 1s"},
		{time.Second, false, "invalid"}, // failure 3: wait 4s, capped at 3s
		{2 * time.Second, true, "throttled 1s"},
		{time.Second, false, "invalid"}, // failure 4: locked out for 10m
		{3 * time.Second, true, "throttled 9m57s"},
		{9*time.Minute + 56*time.Second, true, "throttled 1s"},
		{time.Second, true, "ok"}, // lockout over
	}
	run := func(user string) []string {
		s, clk := newTestService(t, func(c *Config) { c.Throttle = throttle })
		mustCreate(t, s, "alice", alicePW, RoleViewer)
		var got []string
		for i, st := range steps {
			clk.Advance(st.advance)
			pw := "wrong password " + fmt.Sprint(i)
			if st.right {
				pw = alicePW
			}
			_, err := s.Login(context.Background(), user, pw, "192.0.2.1")
			got = append(got, outcome(err))
		}
		return got
	}
	known := run("alice")
	for i, st := range steps {
		if known[i] != st.want {
			t.Errorf("step %d: got %q, want %q", i, known[i], st.want)
		}
	}
	// An unknown user name goes through exactly the same answers, the last
	// one included: nothing tells the two apart.
	unknown := run("mallory")
	for i := range steps {
		want := known[i]
		if i == len(steps)-1 {
			want = "invalid"
		}
		if unknown[i] != want {
			t.Errorf("unknown user, step %d: got %q, want %q", i, unknown[i], want)
		}
	}
}

func TestLoginSuccessResetsUserCounter(t *testing.T) {
	s, clk := newTestService(t, func(c *Config) { c.Throttle = Throttle{Failures: 3} })
	mustCreate(t, s, "alice", alicePW, RoleViewer)
	ctx := context.Background()
	for range 2 {
		if _, err := s.Login(ctx, "alice", "wrong password!", "192.0.2.1"); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatal(err)
		}
		clk.Advance(time.Minute)
	}
	mustLogin(t, s, "alice", alicePW)
	// Two more failures do not lock: the counter started again.
	for range 2 {
		if _, err := s.Login(ctx, "alice", "wrong password!", "192.0.2.1"); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatal(err)
		}
		clk.Advance(time.Minute)
	}
	mustLogin(t, s, "alice", alicePW)
}

func TestAddressLockout(t *testing.T) {
	s, clk := newTestService(t, func(c *Config) {
		c.Throttle = Throttle{Failures: 100, AddrFailures: 3, Lockout: 5 * time.Minute}
	})
	mustCreate(t, s, "alice", alicePW, RoleViewer)
	ctx := context.Background()
	for _, u := range []string{"u1", "u2", "u3"} { // spraying different names from one address
		if _, err := s.Login(ctx, u, "some password", "198.51.100.7"); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("%s: %v", u, err)
		}
	}
	_, err := s.Login(ctx, "alice", alicePW, "198.51.100.7")
	if got := outcome(err); got != "throttled 5m0s" {
		t.Fatalf("alice from the locked address: %s", got)
	}
	if _, err := s.Login(ctx, "alice", alicePW, "203.0.113.9"); err != nil {
		t.Fatalf("alice from another address: %v", err)
	}
	clk.Advance(5 * time.Minute)
	if _, err := s.Login(ctx, "alice", alicePW, "198.51.100.7"); err != nil {
		t.Fatalf("after the lockout: %v", err)
	}
}

func TestParallelGuessesWait(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "alice", alicePW, RoleViewer)
	const n = 16
	var wg sync.WaitGroup
	results := make([]string, n)
	for i := range n {
		wg.Go(func() {
			_, err := s.Login(context.Background(), "alice", fmt.Sprintf("guess number %d", i), "192.0.2.1")
			results[i] = outcome(err)
		})
	}
	wg.Wait()
	tried := 0
	for _, r := range results {
		switch r {
		case "invalid":
			tried++
		case "throttled 1s":
		default:
			t.Errorf("unexpected outcome %q", r)
		}
	}
	if tried != 1 {
		t.Fatalf("%d of %d simultaneous guesses were checked; want 1 (the others wait)", tried, n)
	}
}

func TestDisabledUserGetsTheSameAnswer(t *testing.T) {
	s, clk := newTestService(t, nil)
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	if _, err := s.SetDisabled(t.Context(), "alice", true); err != nil {
		t.Fatal(err)
	}
	_, err := s.Login(context.Background(), "alice", alicePW, "192.0.2.1")
	if !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("disabled user with the right password: %v", err)
	}
	clk.Advance(time.Second)
	if _, err := s.SetDisabled(t.Context(), "alice", false); err != nil {
		t.Fatal(err)
	}
	mustLogin(t, s, "alice", alicePW)
}

func TestUnknownUserIsHashedWithTheConfiguredParameters(t *testing.T) {
	s, _ := newTestService(t, nil)
	if _, err := s.Login(context.Background(), "nobody", "a password guess", "192.0.2.1"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatal(err)
	}
	h, err := ParseHash(s.dummy)
	if err != nil {
		t.Fatalf("no dummy hash was verified: %v", err)
	}
	if h.NeedsRehash(s.cfg.Params) {
		t.Fatalf("the unknown user's hash costs %+v, a real one %+v", h.Params, s.cfg.Params)
	}
}

func TestLoginHandlerAnswers(t *testing.T) {
	s, clk := newTestService(t, func(c *Config) { c.Throttle = Throttle{Failures: 2, Lockout: time.Minute} })
	mustCreate(t, s, "alice", alicePW, RoleViewer)
	mux := testMux(s)
	login := func(user, pw string, hdr ...string) *httptest.ResponseRecorder {
		body := fmt.Sprintf(`{"user":%q,"password":%q}`, user, pw)
		return serve(mux, request(s, "POST", "/login", body, nil, append([]string{"Content-Type", "application/json"}, hdr...)...))
	}
	wrong := login("alice", "not the password")
	clk.Advance(time.Hour)
	unknown := login("nobody", "not the password")
	clk.Advance(time.Hour)
	if wrong.Code != http.StatusUnauthorized || unknown.Code != http.StatusUnauthorized {
		t.Fatalf("status wrong=%d unknown=%d, want 401", wrong.Code, unknown.Code)
	}
	if wrong.Body.String() != unknown.Body.String() || wrong.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("answers differ:\n%s\n%s", wrong.Body, unknown.Body)
	}
	if c := wrong.Result().Cookies(); len(c) != 0 {
		t.Fatalf("failed login set cookies %v", c)
	}

	login("alice", "not the password")
	w := login("alice", alicePW)
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("throttled login: %d Retry-After=%q %s", w.Code, w.Header().Get("Retry-After"), w.Body)
	}

	clk.Advance(time.Hour)
	if w := login("alice", alicePW, "Origin", "https://evil.example"); w.Code != http.StatusForbidden {
		t.Fatalf("cross-site login: %d", w.Code)
	}
	if w := login("alice", alicePW); w.Code != http.StatusOK {
		t.Fatalf("login: %d %s", w.Code, w.Body)
	}
	form := request(s, "POST", "/login", "user=alice&password="+"correct+horse+battery", nil, "Content-Type", "application/x-www-form-urlencoded")
	if w := serve(mux, form); w.Code != http.StatusOK {
		t.Fatalf("form login: %d %s", w.Code, w.Body)
	}
	for _, body := range []string{"", "{", `{"user":"alice"}`, `{"user":"alice","password":"x","admin":true}`, `{"user":1}`, `{"user":"a","password":"b"} {}`} {
		if w := serve(mux, request(s, "POST", "/login", body, nil, "Content-Type", "application/json")); w.Code != http.StatusBadRequest {
			t.Errorf("body %q: %d, want 400", body, w.Code)
		}
	}
	if w := serve(mux, request(s, "POST", "/login", `{"user":"alice","password":"`+strings.Repeat("a", 10000)+`"}`, nil)); w.Code != http.StatusBadRequest {
		t.Errorf("oversized body: %d, want 400", w.Code)
	}
}

func TestClientAddr(t *testing.T) {
	for remote, want := range map[string]string{
		"192.0.2.1:1234":                   "192.0.2.1",
		"[2001:db8:1:2:3:4:5:6]:443":       "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff:ffff:1:1]:443": "2001:db8:1:2::/64",
		"[::ffff:192.0.2.9]:80":            "192.0.2.9",
		"not an address":                   "not an address",
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = remote
		r.Header.Set("X-Forwarded-For", "203.0.113.1")
		if got := ClientAddr(r); got != want {
			t.Errorf("ClientAddr(%q) = %q, want %q", remote, got, want)
		}
	}
}

func TestThrottleMemoryIsBounded(t *testing.T) {
	s, clk := newTestService(t, func(c *Config) { c.Throttle = Throttle{MaxEntries: 8, Failures: 2, Lockout: time.Hour} })
	mustCreate(t, s, "alice", alicePW, RoleViewer)
	ctx := context.Background()
	// Lock alice out, then flood with new names from many addresses.
	s.Login(ctx, "alice", "wrong password!", "192.0.2.1")
	clk.Advance(time.Second)
	s.Login(ctx, "alice", "wrong password!", "192.0.2.1")
	for i := range 100 {
		s.Login(ctx, fmt.Sprintf("flood%d", i), "wrong password!", fmt.Sprintf("10.0.%d.%d", i/250, i%250))
	}
	mt := s.throttle.(memThrottle)
	if n, m, k := len(mt.pairs), len(mt.names), len(mt.addrs); n > 8 || m > 8 || k > 8 {
		t.Fatalf("%d name-and-address, %d name and %d address counters kept; MaxEntries is 8", n, m, k)
	}
	if _, err := s.Login(ctx, "alice", alicePW, "192.0.2.1"); !errors.Is(err, ErrThrottled) {
		t.Fatalf("the flood washed alice's lockout away: %v", err)
	}
}

// TestLockoutIsPerUserAndSource: five wrong passwords for the admin from
// one address lock the admin out from that address only; the admin logs in
// at once from another, and that address's own failures count apart.
func TestLockoutIsPerUserAndSource(t *testing.T) {
	s, clk := newTestService(t, func(c *Config) { c.Throttle = Throttle{Failures: 5, Lockout: 15 * time.Minute} })
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	ctx := context.Background()
	const attacker, operator = "203.0.113.66", "192.0.2.1"
	for i := range 5 {
		if i > 0 {
			clk.Advance(time.Minute) // past each delay
		}
		if _, err := s.Login(ctx, "root", fmt.Sprintf("guess number %d", i), attacker); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	if got := outcome(mustFail(s.Login(ctx, "root", alicePW, attacker))); got != "throttled 15m0s" {
		t.Fatalf("the right password from the attacker's address: %s, want throttled 15m0s", got)
	}
	if _, err := s.Login(ctx, "root", alicePW, operator); err != nil {
		t.Fatalf("the admin from another address while the attacker's is locked: %v", err)
	}
	// The operator's own typo waits the base delay, no more.
	if _, err := s.Login(ctx, "root", "a typo in the password", operator); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatal(err)
	}
	if got := outcome(mustFail(s.Login(ctx, "root", alicePW, operator))); got != "throttled 1s" {
		t.Fatalf("right after a typo: %s", got)
	}
	clk.Advance(time.Second)
	if _, err := s.Login(ctx, "root", alicePW, operator); err != nil {
		t.Fatalf("after the typo's delay: %v", err)
	}
}

func mustFail(_ Session, err error) error { return err }

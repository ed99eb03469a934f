package auth

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func decodeProblem(t *testing.T, body []byte) Problem {
	t.Helper()
	var p Problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("not a problem document: %s", body)
	}
	return p
}

func TestCSRF(t *testing.T) {
	s, _ := newTestService(t, func(c *Config) { c.Origins = []string{"https://fleet.test"} })
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	mustCreate(t, s, "bob", bobPW, RoleOperator)
	sess := mustLogin(t, s, "alice", alicePW)
	other := mustLogin(t, s, "bob", bobPW)
	secret, _, err := s.CreateToken(t.Context(), "alice", "ci", RoleOperator, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mux := testMux(s)
	form := "Content-Type"
	for _, tc := range []struct {
		name   string
		method string
		body   string
		sess   *Session
		hdr    []string
		want   int
	}{
		{"no token", "POST", "{}", &sess, nil, 403},
		{"empty token", "POST", "{}", &sess, []string{CSRFHeader, ""}, 403},
		{"another session's token", "POST", "{}", &sess, []string{CSRFHeader, other.CSRFToken}, 403},
		{"truncated token", "POST", "{}", &sess, []string{CSRFHeader, sess.CSRFToken[:20]}, 403},
		{"session ID as token", "POST", "{}", &sess, []string{CSRFHeader, sess.ID}, 403},
		{"right token", "POST", "{}", &sess, []string{CSRFHeader, sess.CSRFToken}, 200},
		{"right token, same origin", "POST", "{}", &sess, []string{CSRFHeader, sess.CSRFToken, "Origin", "https://fleet.test", "Sec-Fetch-Site", "same-origin"}, 200},
		{"right token in a form", "POST", CSRFField + "=" + sess.CSRFToken, &sess, []string{form, "application/x-www-form-urlencoded"}, 200},
		{"wrong token in a form", "POST", CSRFField + "=" + other.CSRFToken, &sess, []string{form, "application/x-www-form-urlencoded"}, 403},
		{"token in a JSON body is not read", "POST", `{"csrf_token":"` + sess.CSRFToken + `"}`, &sess, []string{form, "application/json"}, 403},
		{"right token, foreign origin", "POST", "{}", &sess, []string{CSRFHeader, sess.CSRFToken, "Origin", "https://evil.example"}, 403},
		{"right token, null origin", "POST", "{}", &sess, []string{CSRFHeader, sess.CSRFToken, "Origin", "null"}, 403},
		{"right token, cross-site fetch", "POST", "{}", &sess, []string{CSRFHeader, sess.CSRFToken, "Sec-Fetch-Site", "cross-site"}, 403},
		{"right token, same-site fetch", "POST", "{}", &sess, []string{CSRFHeader, sess.CSRFToken, "Sec-Fetch-Site", "same-site"}, 403},
		{"GET needs no token", "GET", "", &sess, nil, 200},
		{"bearer is exempt", "POST", "{}", nil, []string{"Authorization", "Bearer " + secret, "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := serve(mux, request(s, tc.method, "/devices", tc.body, tc.sess, tc.hdr...))
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.want, w.Body)
			}
			if tc.want == 403 {
				if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
					t.Errorf("Content-Type %q", ct)
				}
				p := decodeProblem(t, w.Body.Bytes())
				if p.Status != 403 || p.Title == "" || p.Type == "" || p.Detail == "" {
					t.Errorf("problem %+v", p)
				}
				if strings.Contains(w.Body.String(), "auth:") {
					t.Errorf("the internal error leaks: %s", w.Body)
				}
			}
		})
	}
}

func TestCSRFRefusalDoesNotKeepSessionAlive(t *testing.T) {
	s, clk := newTestService(t, func(c *Config) { c.IdleTimeout = 30 * time.Minute })
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	sess := mustLogin(t, s, "alice", alicePW)
	mux := testMux(s)
	clk.Advance(20 * time.Minute)
	if w := serve(mux, request(s, "POST", "/devices", "{}", &sess)); w.Code != http.StatusForbidden {
		t.Fatalf("forged request: %d", w.Code)
	}
	clk.Advance(15 * time.Minute)
	if w := serve(mux, request(s, "GET", "/devices", "", &sess)); w.Code != http.StatusUnauthorized {
		t.Fatalf("35 minutes after the last real request: %d, want 401", w.Code)
	}
}

func TestDefaultOriginIsTheRequestHost(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	sess := mustLogin(t, s, "alice", alicePW)
	mux := testMux(s)
	if w := serve(mux, request(s, "POST", "/devices", "{}", &sess, CSRFHeader, sess.CSRFToken, "Origin", "https://fleet.test")); w.Code != 200 {
		t.Fatalf("same host: %d", w.Code)
	}
	if w := serve(mux, request(s, "POST", "/devices", "{}", &sess, CSRFHeader, sess.CSRFToken, "Origin", "http://fleet.test")); w.Code != 403 {
		t.Fatalf("plain http origin: %d", w.Code)
	}
}

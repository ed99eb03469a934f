package auth

import (
	"context"
	"crypto/rand"
	"testing"
	"time"
)

// BenchmarkHashDefaultParams measures one argon2id hash with DefaultParams:
// the cost of a login (and of a failed one).
func BenchmarkHashDefaultParams(b *testing.B) {
	p := DefaultParams()
	for b.Loop() {
		if _, err := HashPassword(alicePW, p, rand.Reader); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAuthenticateToken measures a bearer request's authentication.
func BenchmarkAuthenticateToken(b *testing.B) {
	s, _ := newTestService(b, nil)
	mustCreate(b, s, "alice", alicePW, RoleOperator)
	secret, _, err := s.CreateToken(b.Context(), "alice", "bench", RoleOperator, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	r := bearer(s, "POST", "/devices", secret)
	for b.Loop() {
		if _, err := s.Authenticate(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAuthenticateSession measures a cookie request's authentication,
// CSRF check included.
func BenchmarkAuthenticateSession(b *testing.B) {
	s, _ := newTestService(b, nil)
	mustCreate(b, s, "alice", alicePW, RoleOperator)
	sess, err := s.Login(context.Background(), "alice", alicePW, "192.0.2.1")
	if err != nil {
		b.Fatal(err)
	}
	r := request(s, "POST", "/devices", "", &sess, CSRFHeader, sess.CSRFToken)
	for b.Loop() {
		if _, err := s.Authenticate(r); err != nil {
			b.Fatal(err)
		}
	}
}

package server

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/access"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"golang.org/x/crypto/ssh"
)

// TestAccessWithoutTwoPersonRule: a fleet without two_person_rule grants
// just-in-time access on one approval by another person with
// access.approve (the server hands the access service its operators to
// establish requesters again), never on the requester's own.
func TestAccessWithoutTwoPersonRule(t *testing.T) {
	s, err := New(testConfig(t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.closeUnstarted()
	ctx := t.Context()
	if s.Approvals != nil {
		t.Fatal("the fleet-wide approvals are open without two_person_rule")
	}
	if _, err := s.Auth.CreateUser(ctx, "ana", "ana's long password", auth.RoleOperator); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Auth.CreateUser(ctx, "sam", "sam's long password", auth.RoleSecurityAdmin); err != nil {
		t.Fatal(err)
	}
	as := func(name string, role auth.Role) auth.Principal {
		p, err := s.Auth.Principal(ctx, auth.Credential{User: name, Method: auth.MethodSession, Scope: role})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	ana, sam := as("ana", auth.RoleOperator), as("sam", auth.RoleSecurityAdmin)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	k, _ := ssh.NewPublicKey(pub)
	g, err := s.Access.Request(ctx, ana, access.Draft{Group: "kiosks", PublicKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))), Justification: "INC-21"})
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	if _, err := s.Access.Approve(ctx, ana, g.ID, ""); !errors.Is(err, approval.ErrSelfApproval) {
		t.Fatalf("self-approval: %v", err)
	}
	if g, err = s.Access.Approve(ctx, sam, g.ID, "ok"); err != nil || g.State != access.StateApproved || g.Certificate == "" {
		t.Fatalf("approve: %+v %v", g, err)
	}
}

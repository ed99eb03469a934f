package auth

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPermissionMatrix states, cell by cell, what each role may do, and
// checks it both on Role.Has and through Require with a real API token of
// each role.
func TestPermissionMatrix(t *testing.T) {
	const (
		V = "viewer"
		O = "operator"
		R = "release-approver"
		S = "security-admin"
		A = "admin"
		B = "broker-sync"
	)
	matrix := map[Permission][]string{
		PermDevicesRead:     {V, O, R, S, A},
		PermDevicesWrite:    {O, S, A},
		PermRotationWrite:   {O, S, A},
		PermPoliciesRead:    {V, O, R, S, A},
		PermPoliciesWrite:   {S, A},
		PermSecretsRead:     {V, O, R, S, A},
		PermSecretsWrite:    {S, A},
		PermFirmwareRead:    {V, O, R, S, A},
		PermFirmwareWrite:   {O, A},
		PermFirmwareApprove: {R, A},
		PermAlertsRead:      {V, O, R, S, A},
		PermAlertsWrite:     {O, S, A},
		PermAuditRead:       {S, A},
		PermApprovalsRead:   {V, O, R, S, A},
		PermSecurityApprove: {S, A},
		PermCAAdmin:         {S, A},
		PermUsersAdmin:      {A},
		PermBrokersSync:     {B, A},
		PermWorkloadsRead:   {V, O, R, S, A},
		PermWorkloadsWrite:  {S, A},
		PermAccessRequest:   {O, S, A},
		PermAccessApprove:   {S, A},
		PermBackupRead:      {A},
		PermBridgesRead:     {V, O, R, S, A},
		PermBridgesWrite:    {S, A},
	}
	if len(matrix) != len(Permissions()) {
		t.Fatalf("the matrix has %d permissions, the package %d", len(matrix), len(Permissions()))
	}
	s, _ := newTestService(t, nil)
	mux := testMux(s)
	for _, role := range Roles() {
		user := "u-" + string(role)
		mustCreate(t, s, user, alicePW, role)
		secret, _, err := s.CreateToken(t.Context(), user, "matrix", role, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for _, perm := range Permissions() {
			cells, ok := matrix[perm]
			if !ok {
				t.Fatalf("permission %s is missing from the matrix", perm)
			}
			want := false
			for _, c := range cells {
				want = want || c == string(role)
			}
			if got := role.Has(perm); got != want {
				t.Errorf("%s.Has(%s) = %v, want %v", role, perm, got, want)
			}
			code := serve(mux, bearer(s, "POST", "/perm/"+string(perm), secret)).Code
			if wantCode := map[bool]int{true: http.StatusOK, false: http.StatusForbidden}[want]; code != wantCode {
				t.Errorf("%s token on a route needing %s: %d, want %d", role, perm, code, wantCode)
			}
		}
	}
	if Role("root").Has(PermDevicesRead) || Role("").Valid() {
		t.Error("an unknown role grants something")
	}
}

func TestRoleCovers(t *testing.T) {
	for _, tc := range []struct {
		r, other Role
		want     bool
	}{
		{RoleAdmin, RoleSecurityAdmin, true},
		{RoleAdmin, RoleReleaseApprover, true},
		{RoleOperator, RoleViewer, true},
		{RoleOperator, RoleOperator, true},
		{RoleOperator, RoleReleaseApprover, false}, // firmware.approve
		{RoleReleaseApprover, RoleOperator, false},
		{RoleSecurityAdmin, RoleOperator, false}, // firmware.write
		{RoleViewer, RoleOperator, false},
		{RoleSecurityAdmin, RoleAdmin, false},
		{RoleAdmin, Role("root"), false},
	} {
		if got := tc.r.Covers(tc.other); got != tc.want {
			t.Errorf("%s.Covers(%s) = %v, want %v", tc.r, tc.other, got, tc.want)
		}
	}
}

// TestEveryRoleHoldsTheViewersPermissions: every role an operator works
// with reads what the viewer reads; the broker sync's (a machine's token
// scope) holds only its one permission.
func TestEveryRoleHoldsTheViewersPermissions(t *testing.T) {
	for _, r := range Roles() {
		if r == RoleBrokerSync {
			if got := r.Permissions(); len(got) != 1 || got[0] != PermBrokersSync {
				t.Errorf("%s grants %v, want only %s", r, got, PermBrokersSync)
			}
			continue
		}
		if !r.Covers(RoleViewer) {
			t.Errorf("%s does not cover viewer", r)
		}
	}
}

func ExampleService_Require() {
	dir, err := os.MkdirTemp("", "auth-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	s, err := Open(Config{Path: filepath.Join(dir, "auth.db")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	mux := http.NewServeMux()
	mux.Handle("POST /api/v1/login", s.LoginHandler())
	mux.Handle("POST /api/v1/logout", s.LogoutHandler())
	mux.Handle("GET /api/v1/devices", s.Require(PermDevicesRead)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := PrincipalFrom(r.Context())
		fmt.Fprintf(w, "devices visible to %s\n", p.User)
	})))
	fmt.Println("routes ready")
	// Output: routes ready
}

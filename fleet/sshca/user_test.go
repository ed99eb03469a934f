package sshca

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestSignUserAndKRL: a user certificate carries the grant and nothing
// more (OpenSSH's ssh-keygen -L reads it), and the KRL written here
// revokes it by serial or key ID for OpenSSH's ssh-keygen -Q, and only it.
func TestSignUserAndKRL(t *testing.T) {
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("ssh-keygen missing (openssh-client)")
		}
		t.Skip("ssh-keygen missing")
	}
	dir := t.TempDir()
	c := openCA(t, dir)
	u := UserCert{KeyID: "sigil-grant:g1", Serial: 42, Principals: []string{"root@dev-1"},
		ValidAfter: t0, ValidBefore: t0.Add(time.Hour), SourceAddress: "10.0.0.0/8"}
	cert, err := c.SignUser(hostKey(t), u)
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(dir, "id-cert.pub")
	if err := os.WriteFile(certFile, ssh.MarshalAuthorizedKey(cert), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(keygen, "-L", "-f", certFile).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -L: %v\n%s", err, out)
	}
	for _, want := range []string{"user certificate", `Key ID: "sigil-grant:g1"`, "Serial: 42", "root@dev-1", "source-address 10.0.0.0/8", "permit-pty"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ssh-keygen -L lacks %q:\n%s", want, out)
		}
	}
	for _, never := range []string{"permit-port-forwarding", "permit-agent-forwarding", "permit-X11-forwarding", "permit-user-rc"} {
		if strings.Contains(string(out), never) {
			t.Errorf("certificate grants %s:\n%s", never, out)
		}
	}
	query := func(krl []byte) string {
		f := filepath.Join(t.TempDir(), "krl")
		if err := os.WriteFile(f, krl, 0o600); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command(keygen, "-Q", "-f", f, certFile).CombinedOutput()
		return string(out)
	}
	cases := []struct {
		name    string
		serials []uint64
		ids     []string
		revoked bool
	}{
		{"empty", nil, nil, false},
		{"other serial", []uint64{7, 43}, nil, false},
		{"serial", []uint64{7, 42, 0}, nil, true},
		{"key ID", nil, []string{"sigil-grant:g1"}, true},
		{"other key ID", nil, []string{"sigil-grant:g2"}, false},
	}
	for _, tc := range cases {
		out := query(KRL(c.PublicKey(), tc.serials, tc.ids, 3, t0))
		if got := strings.Contains(out, "REVOKED"); got != tc.revoked || (!got && !strings.Contains(out, ": ok")) {
			t.Errorf("%s: ssh-keygen -Q says %q, want revoked=%v", tc.name, out, tc.revoked)
		}
	}
	// Another CA's KRL entry for the same serial does not revoke it.
	other := openCA(t, t.TempDir())
	if out := query(KRL(other.PublicKey(), []uint64{42}, nil, 1, t0)); strings.Contains(out, "REVOKED") {
		t.Errorf("another CA's serial revoked it: %s", out)
	}
}

// TestSignUserRefuses: what SignUser will not sign.
func TestSignUserRefuses(t *testing.T) {
	c := openCA(t, t.TempDir())
	ok := UserCert{KeyID: "g", Serial: 1, Principals: []string{"p"}, ValidAfter: t0, ValidBefore: t0.Add(time.Hour)}
	for name, mut := range map[string]func(*UserCert){
		"serial 0":      func(u *UserCert) { u.Serial = 0 },
		"no principal":  func(u *UserCert) { u.Principals = nil },
		"comma":         func(u *UserCert) { u.Principals = []string{"a,b"} },
		"backwards":     func(u *UserCert) { u.ValidBefore = t0 },
		"key ID space":  func(u *UserCert) { u.KeyID = "a b" },
		"too long":      func(u *UserCert) { u.ValidBefore = t0.Add(MaxValidity + time.Hour) },
		"source spaces": func(u *UserCert) { u.SourceAddress = "1.2.3.4 5.6.7.8" },
	} {
		u := ok
		mut(&u)
		if _, err := c.SignUser(hostKey(t), u); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
	if _, err := c.SignUser(hostKey(t), ok); err != nil {
		t.Fatal(err)
	}
}

package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/pkg/wire"
)

const (
	testHostKey  = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBAWb/8I+5Nozxg0gTPUVDgSfh9weMM+dZXw4Vr/pTooW5Ss2UfMJuDOawV9IIIFkRDXS2UyVVLR7zX3mTO0hymg= root@gw"
	testHostCert = "ecdsa-sha2-nistp256-cert-v01@openssh.com AAAAKGVjZHNhLXNoYTItbmlzdHAyNTYtY2VydC12MDFAb3BlbnNzaC5jb20= dev1"
)

func TestSSHConfig(t *testing.T) {
	c := Config{Broker: "fleet:8883", Model: "gw", SSHHostKeys: []string{"/etc/ssh/ssh_host_ecdsa_key.pub", "/etc/ssh/ssh_host_ed25519_key.pub"}}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	// By default under the state directory, which the systemd unit keeps
	// writable, not next to the key in the read-only /etc/ssh.
	if got := c.sshCertPath("/etc/ssh/ssh_host_ecdsa_key.pub"); got != "/var/lib/sigild/ssh/ssh_host_ecdsa_key-cert.pub" {
		t.Fatal(got)
	}
	if got := c.sshCertPath("/keys/host"); got != "/var/lib/sigild/ssh/host-cert.pub" {
		t.Fatal(got)
	}
	c.SSHCertDir = "/run/certs"
	if got := c.sshCertPath("/etc/ssh/ssh_host_ecdsa_key.pub"); got != "/run/certs/ssh_host_ecdsa_key-cert.pub" {
		t.Fatal(got)
	}
	for name, bad := range map[string]Config{
		"relative key": {SSHHostKeys: []string{"ssh_host_ecdsa_key.pub"}},
		"same cert":    {SSHHostKeys: []string{"/a/k.pub", "/b/k.pub"}, SSHCertDir: "/c"},
		"relative dir": {SSHHostKeys: []string{"/a/k.pub"}, SSHCertDir: "c"},
		"too many":     {SSHHostKeys: strings.Split("/1 /2 /3 /4 /5 /6 /7 /8 /9", " ")},
	} {
		bad.Broker, bad.Model = "fleet:8883", "gw"
		bad.setDefaults()
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "ssh_") {
			t.Errorf("%s: Validate() = %v", name, err)
		}
	}
}

func TestFirstKeyLine(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if got, err := firstKeyLine(write("k.pub", "# host key\n\n"+testHostKey+"\n")); err != nil || got != testHostKey {
		t.Fatalf("firstKeyLine = %q, %v", got, err)
	}
	for name, content := range map[string]string{
		"private": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ==\n",
		"empty":   "",
		"garbage": "hello world\n",
	} {
		if _, err := firstKeyLine(write(name, content)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := firstKeyLine(filepath.Join(dir, "missing.pub")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestWriteHostCerts(t *testing.T) {
	dir := t.TempDir()
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	cert := filepath.Join(dir, "ssh_host_ecdsa_key-cert.pub")
	if err := os.WriteFile(cert, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys := []sshKey{
		{pubPath: filepath.Join(dir, "ssh_host_ecdsa_key.pub"), certPath: cert, line: testHostKey},
		{pubPath: filepath.Join(dir, "ssh_host_ed25519_key.pub"), certPath: filepath.Join(dir, "ssh_host_ed25519_key-cert.pub"), line: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"},
	}
	n := a.writeHostCerts(keys, []wire.SSHCert{
		{Index: 0, Cert: testHostCert},
		{Index: 1, Cert: testHostCert}, // an ECDSA certificate for the Ed25519 key: refused
		{Index: 5, Cert: testHostCert}, // no such key
	})
	if n != 1 {
		t.Fatalf("wrote %d certificates", n)
	}
	b, err := os.ReadFile(cert)
	if err != nil || string(b) != testHostCert+"\n" {
		t.Fatalf("certificate file %q, %v", b, err)
	}
	if fi, _ := os.Stat(cert); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %o", fi.Mode().Perm())
	}
	if _, err := os.Stat(keys[1].certPath); !os.IsNotExist(err) {
		t.Fatal("a mismatched certificate was written")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

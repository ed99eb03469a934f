package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/sim/harness"
)

// requireBinary fails (CI=true) or skips when an external program is
// missing.
func requireBinary(t testing.TB, path, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(path)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("missing %s (package %s; run `make test` as root to install it)", path, pkg)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// waitFile waits until path exists and is not empty.
func waitFile(t testing.TB, path string, timeout time.Duration) {
	t.Helper()
	if !wait.Poll(timeout, func() bool {
		fi, err := os.Stat(path)
		return err == nil && fi.Size() > 0
	}) {
		t.Fatalf("timed out waiting for %s", path)
	}
}

// fingerprint is the SHA256:… field of `ssh-keygen -l -f file`.
func fingerprint(t testing.TB, file string) string {
	t.Helper()
	f := strings.Fields(mustRun(t, "ssh-keygen", "-l", "-f", file))
	if len(f) < 2 || !strings.HasPrefix(f[1], "SHA256:") {
		t.Fatalf("ssh-keygen -l -f %s: %v", file, f)
	}
	return f[1]
}

// TestSSHHostCertificate: sigild on a real swtpm, configured with an
// OpenSSH host key made by ssh-keygen, gets a host certificate from the
// fleet after it attests; OpenSSH's own ssh-keygen reads it as a host
// certificate for the device's ID and names, signed by the CA the API
// publishes. With sshd installed, an ssh client that trusts only the
// fleet's @cert-authority line (StrictHostKeyChecking=yes, nothing else
// known) accepts the device's sshd, and refuses it under another CA.
func TestSSHHostCertificate(t *testing.T) {
	requireBinary(t, "ssh-keygen", "openssh-client")
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	dir := t.TempDir()
	sshDir := filepath.Join(dir, "ssh")
	if err := os.Mkdir(sshDir, 0o755); err != nil {
		t.Fatal(err)
	}
	hostKey := filepath.Join(sshDir, "ssh_host_ecdsa_key")
	mustRun(t, "ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", hostKey)
	certFile := filepath.Join(dir, "ssh", "ssh_host_ecdsa_key-cert.pub") // ssh_cert_dir's default: next to state

	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Dir: dir, Tweak: func(c *agentConfig) {
		c.EventLog = "-"
		c.SSHHostKeys = []string{hostKey + ".pub"}
	}})
	id := waitConnected(t, d).DeviceID
	waitFile(t, certFile, 30*time.Second)
	if fi, _ := os.Stat(certFile); fi.Mode().Perm() != 0o644 {
		t.Fatalf("certificate mode %o", fi.Mode().Perm())
	}
	if dev, _ := f.Inv.Device(t.Context(), id); dev.State != inventory.StateActive || dev.Attestation != "pass" {
		t.Fatalf("certified device: %s, attestation %q", dev.State, dev.Attestation)
	}

	// The CA as the API publishes it, checked by the independent tool.
	c, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	caLine, err := c.SSHCAText(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ssh_ca.pub")
	if err := os.WriteFile(caFile, []byte(caLine), 0o644); err != nil {
		t.Fatal(err)
	}
	caFP := fingerprint(t, caFile)
	info, err := c.SSHCA(ctx)
	if err != nil || info.Fingerprint != caFP {
		t.Fatalf("API fingerprint %+v (%v), ssh-keygen says %s", info, err, caFP)
	}

	out := mustRun(t, "ssh-keygen", "-L", "-f", certFile)
	field := func(name string) string {
		m := regexp.MustCompile(`(?m)^\s*` + name + `:\s*(.*)$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("ssh-keygen -L has no %s:\n%s", name, out)
		}
		return strings.TrimSpace(m[1])
	}
	if typ := field("Type"); typ != "ecdsa-sha2-nistp256-cert-v01@openssh.com host certificate" {
		t.Fatalf("Type: %q", typ)
	}
	if ca := field("Signing CA"); !strings.Contains(ca, caFP) {
		t.Fatalf("Signing CA %q, the API's CA is %s", ca, caFP)
	}
	if pub := field("Public key"); !strings.Contains(pub, fingerprint(t, hostKey+".pub")) {
		t.Fatalf("Public key %q is not the host key", pub)
	}
	if kid := field("Key ID"); kid != `"`+id+`"` {
		t.Fatalf("Key ID %s, device %s", kid, id)
	}
	m := regexp.MustCompile(`(?m)^\s*Principals:\s*\n((?:\s{12,}\S+\n)+)`).FindStringSubmatch(out)
	if m == nil || strings.Join(strings.Fields(m[1]), " ") != id+" "+id+".sigil.local" {
		t.Fatalf("principals:\n%s", out)
	}
	valid := regexp.MustCompile(`from (\S+) to (\S+)`).FindStringSubmatch(field("Valid"))
	if valid == nil {
		t.Fatalf("Valid: %q", field("Valid"))
	}
	from, err1 := time.ParseInLocation("2006-01-02T15:04:05", valid[1], time.Local)
	to, err2 := time.ParseInLocation("2006-01-02T15:04:05", valid[2], time.Local)
	if err1 != nil || err2 != nil || to.Sub(from) != 24*time.Hour+time.Minute || time.Since(from) < 0 || time.Since(from) > 5*time.Minute {
		t.Fatalf("validity %s .. %s (%v %v), want the device certificate lifetime from now", valid[1], valid[2], err1, err2)
	}
	evs, _ := f.Inv.Events(ctx, id, 20)
	found := false
	for _, e := range evs {
		found = found || e.Kind == "ssh-certificates"
	}
	if !found {
		t.Fatalf("no ssh-certificates event in %+v", evs)
	}

	t.Run("sshd", func(t *testing.T) {
		sshd := requireBinary(t, "/usr/sbin/sshd", "openssh-server")
		requireBinary(t, "ssh", "openssh-client")
		known, err := c.SSHCAText(ctx, "known_hosts")
		if err != nil {
			t.Fatal(err)
		}
		trySSH(t, sshd, hostKey, certFile, "", id, known)
	})
}

// TestSSHTPMHostKey: with ssh_tpm_host_key the host key is born in the TPM
// and never leaves it. sigild writes its public key, gets it certified, and
// serves it over the ssh-agent protocol; a real sshd configured with
// HostKeyAgent signs with it, and an ssh client that trusts only the
// fleet's CA logs in.
func TestSSHTPMHostKey(t *testing.T) {
	requireBinary(t, "ssh-keygen", "openssh-client")
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	dir := t.TempDir()
	pubFile := filepath.Join(dir, "sigil_host_ecdsa_key.pub")
	sock := filepath.Join(dir, "ssh-agent.sock")
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Dir: dir, Tweak: func(c *agentConfig) {
		c.EventLog = "-"
		c.SSHTPMHostKey = pubFile
		c.SSHAgentSocket = sock
	}})
	id := waitConnected(t, d).DeviceID
	certFile := filepath.Join(dir, "ssh", "sigil_host_ecdsa_key-cert.pub")
	waitFile(t, certFile, 30*time.Second)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("agent socket: %v %v", fi, err)
	}
	out := mustRun(t, "ssh-keygen", "-L", "-f", certFile)
	if !strings.Contains(out, fingerprint(t, pubFile)) || !strings.Contains(out, `Key ID: "`+id+`"`) {
		t.Fatalf("certificate is not for the TPM host key:\n%s", out)
	}
	// No private key file exists anywhere in the device's directory.
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("PRIVATE KEY")) {
				t.Errorf("%s holds a private key", p)
			}
		}
		return nil
	})
	// The agent lists exactly the key in the public key file.
	listed := run0(t, []string{"SSH_AUTH_SOCK=" + sock}, "ssh-add", "-L")
	pubLine, _ := os.ReadFile(pubFile)
	if strings.Fields(listed)[1] != strings.Fields(string(pubLine))[1] {
		t.Fatalf("ssh-add -L lists %q, the public key file holds %q", listed, pubLine)
	}
	t.Run("sshd", func(t *testing.T) {
		sshd := requireBinary(t, "/usr/sbin/sshd", "openssh-server")
		requireBinary(t, "ssh", "openssh-client")
		c, _ := f.Client()
		known, err := c.SSHCAText(context.Background(), "known_hosts")
		if err != nil {
			t.Fatal(err)
		}
		trySSH(t, sshd, pubFile, certFile, "HostKeyAgent "+sock+"\n", id, known)
	})
}

// run0 runs a command with extra environment and returns its output; it
// fails the test on error.
func run0(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// trySSH runs sshd with the device's host key (HostKey value) and
// certificate on a free loopback port, with extra sshd_config lines, then
// connects with an ssh client that knows nothing but the known_hosts line.
func trySSH(t *testing.T, sshd, hostKey, hostCert, extra, id, known string) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		_ = os.MkdirAll("/run/sshd", 0o755) // sshd's privilege separation directory
	}
	work := t.TempDir()
	userKey := filepath.Join(work, "id_ecdsa")
	mustRun(t, "ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", userKey)
	pub, _ := os.ReadFile(userKey + ".pub")
	authKeys := filepath.Join(work, "authorized_keys")
	if err := os.WriteFile(authKeys, pub, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := filepath.Join(work, "sshd_config")
	conf := extra + fmt.Sprintf(`ListenAddress 127.0.0.1:%d
HostKey %s
HostCertificate %s
PidFile %s
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
`, port, hostKey, hostCert, filepath.Join(work, "sshd.pid"), authKeys)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := exec.CommandContext(ctx, sshd, "-D", "-e", "-f", cfg)
	var logs strings.Builder
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = srv.Wait() })
	var dialErr error
	if !wait.Poll(wait.Timeout, func() bool {
		var c net.Conn
		if c, dialErr = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); dialErr != nil {
			return false
		}
		return c.Close() == nil
	}) {
		t.Fatalf("sshd did not listen: %v\n%s", dialErr, logs.String())
	}

	connect := func(knownHosts string) (string, error) {
		kh := filepath.Join(t.TempDir(), "known_hosts")
		if err := os.WriteFile(kh, []byte(knownHosts), 0o600); err != nil {
			t.Fatal(err)
		}
		return run(t, "ssh", "-F", "/dev/null", "-p", fmt.Sprint(port), "-i", userKey,
			"-o", "UserKnownHostsFile="+kh, "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
			"-o", "HostKeyAlias="+id+".sigil.local", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
			"-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256-cert-v01@openssh.com", "-o", "ConnectTimeout=10",
			"-v", me.Username+"@127.0.0.1", "echo", "sigil-ssh-ok")
	}
	out, err := connect(known)
	if err != nil || !strings.Contains(out, "sigil-ssh-ok") {
		t.Fatalf("ssh trusting only the fleet CA: %v\n%s\nsshd:\n%s", err, out, logs.String())
	}
	if !strings.Contains(out, "matches the ECDSA-CERT host certificate") || !strings.Contains(out, `ID "`+id+`"`) {
		t.Fatalf("ssh did not verify the host by its certificate:\n%s", out)
	}

	// Negative control: under another CA the same sshd is refused.
	other := filepath.Join(t.TempDir(), "other_ca")
	mustRun(t, "ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", other)
	otherPub, _ := os.ReadFile(other + ".pub")
	out, err = connect("@cert-authority *.sigil.local " + string(otherPub))
	if err == nil || strings.Contains(out, "sigil-ssh-ok") || !strings.Contains(out, "Host key verification failed") {
		t.Fatalf("ssh accepted the device under another CA: %v\n%s", err, out)
	}
}

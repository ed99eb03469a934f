package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/access"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
)

// accessDevice is a sigild on swtpm keeping a real sshd's operator access
// files, and that sshd.
type accessDevice struct {
	id, dir, log string
	port         int
}

// startAccessDevice starts sigild with ssh_access_dir and ssh_access_log,
// waits for the fleet's access files, and starts sshd trusting only them
// (no authorized_keys) as docs/DEPLOY.md configures it (the principals
// through AuthorizedPrincipalsCommand, which StrictModes does not refuse
// for files sigild owns) and logging to the file sigild reads.
func startAccessDevice(t *testing.T, f *harness.Fleet, sshd string) *accessDevice {
	t.Helper()
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	d := &accessDevice{dir: filepath.Join(dir, "access"), log: filepath.Join(dir, "sshd.log")}
	if err := os.WriteFile(d.log, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dev := startDevice(t, f, newTPM(t), harness.DeviceConfig{Dir: dir, Tweak: func(c *agentConfig) {
		c.EventLog = "-"
		c.SSHAccessDir = d.dir
		c.SSHAccessLog = d.log
	}})
	d.id = waitConnected(t, dev).DeviceID
	for _, name := range []string{"user_ca.pub", "revoked_keys"} {
		waitFile(t, filepath.Join(d.dir, name), 30*time.Second)
	}
	if os.Geteuid() == 0 {
		_ = os.MkdirAll("/run/sshd", 0o755)
	}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	mustRun(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := filepath.Join(dir, "sshd_config")
	conf := fmt.Sprintf(`ListenAddress 127.0.0.1:%d
HostKey %s
PidFile %s
AuthorizedKeysFile none
TrustedUserCAKeys %s/user_ca.pub
RevokedKeys %s/revoked_keys
AuthorizedPrincipalsCommand /usr/bin/cat %s/principals/%%u
AuthorizedPrincipalsCommandUser %s
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel INFO
`, d.port, hostKey, filepath.Join(dir, "sshd.pid"), d.dir, d.dir, d.dir, me.Username)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := exec.CommandContext(ctx, sshd, "-D", "-E", d.log, "-f", cfg)
	var out strings.Builder
	srv.Stdout, srv.Stderr = &out, &out
	if err := srv.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = srv.Wait() })
	if !wait.Poll(wait.Timeout, func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", d.port), time.Second)
		return err == nil && c.Close() == nil
	}) {
		t.Fatalf("sshd did not listen: %s", out.String())
	}
	return d
}

// ssh logs in to d as login with the key and its certificate and runs
// echo; it returns the output and sshd's log.
func (d *accessDevice) ssh(t *testing.T, key, cert, login string) (out, log string, err error) {
	out, err = run(t, "ssh", "-F", "/dev/null", "-p", fmt.Sprint(d.port), "-i", key, "-o", "CertificateFile="+cert,
		"-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "ConnectTimeout=10", login+"@127.0.0.1", "echo", "sigil-jit-ok")
	b, _ := os.ReadFile(d.log)
	return out, string(b), err
}

// TestJITAccessSSH: an operator's request for SSH access to one device,
// approved by a second person (never by the requester), gives a user
// certificate for the operator's own key with which a real ssh client
// logs in to that device's real sshd — and not to another device's. The
// device reports the session from sshd's log, and the audit log ties it
// to the grant, the requester and the approver, as the device's claim.
// Revoking the grant ends new logins as soon as the device has the KRL;
// a grant past its end logs in nowhere.
func TestJITAccessSSH(t *testing.T) {
	sshd := requireBinary(t, "/usr/sbin/sshd", "openssh-server")
	requireBinary(t, "ssh", "openssh-client")
	requireBinary(t, "ssh-keygen", "openssh-client")
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	f := startFleet(t, func(c *server.Config) {
		c.EKCADir = ekCADir(t, vendorCA(t))
		c.TwoPersonRule = true
		c.Access = access.Policy{Logins: []string{me.Username}, MaxDuration: config.Duration(2 * time.Hour)}
	})
	ctx := context.Background()
	admin, _ := f.Client()
	sam := secondAdmin(t, f, admin)

	devA := startAccessDevice(t, f, sshd)
	devB := startAccessDevice(t, f, sshd)

	// The operator's own key; only its public half goes to the fleet.
	work := t.TempDir()
	key := filepath.Join(work, "id_ed25519")
	mustRun(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
	pub, _ := os.ReadFile(key + ".pub")
	certFile := key + "-cert.pub"

	why := "INC-4711: sensor gateway stuck in boot loop"
	g, err := admin.RequestAccess(ctx, access.Draft{Device: devA.id, PublicKey: string(pub), Justification: why,
		Duration: config.Duration(time.Hour), SourceAddress: "127.0.0.1"})
	if err != nil || g.State != access.StateRequested || g.Certificate != "" {
		t.Fatalf("request: %+v %v", g, err)
	}
	if _, err := admin.DecideAccess(ctx, g.ID, "approve", ""); err == nil {
		t.Fatal("the requester approved their own grant")
	}
	if _, err := admin.RequestAccess(ctx, access.Draft{Device: devA.id, PublicKey: string(pub), Justification: why, Duration: config.Duration(3 * time.Hour)}); err == nil {
		t.Fatal("a grant longer than the policy's max was filed")
	}
	g, err = sam.DecideAccess(ctx, g.ID, "approve", "checked the incident")
	if err != nil || g.State != access.StateApproved || g.Certificate == "" {
		t.Fatalf("approve: %+v %v", g, err)
	}
	if err := os.WriteFile(certFile, []byte(g.Certificate+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// OpenSSH reads it as a user certificate for the grant.
	info := mustRun(t, "ssh-keygen", "-L", "-f", certFile)
	for _, want := range []string{"user certificate", `Key ID: "sigil-grant:` + g.ID + `"`, fmt.Sprintf("Serial: %d", g.Serial),
		me.Username + "@" + devA.id, "source-address 127.0.0.1"} {
		if !strings.Contains(info, want) {
			t.Fatalf("certificate lacks %q:\n%s", want, info)
		}
	}

	// Login on the granted device works.
	out, log, err := devA.ssh(t, key, certFile, me.Username)
	if err != nil || !strings.Contains(out, "sigil-jit-ok") {
		t.Fatalf("login with the granted certificate: %v\n%s\nsshd:\n%s", err, out, log)
	}
	// On another device it does not: its sshd accepts only its own
	// principals.
	out, log, err = devB.ssh(t, key, certFile, me.Username)
	if err == nil || strings.Contains(out, "sigil-jit-ok") {
		t.Fatalf("the certificate logged in on another device:\n%s", out)
	}
	if !strings.Contains(log, "principal") {
		t.Fatalf("device B refused for another reason:\n%s", log)
	}

	// The session's start and end, as device A reported them, tie to the
	// grant in the audit log.
	entry := func(action string) *audit.Entry {
		var found *audit.Entry
		wait.Poll(wait.Timeout, func() bool {
			p, err := f.Audit.List(ctx, audit.Filter{Action: action, Target: g.ID})
			if err == nil && len(p.Entries) > 0 {
				found = &p.Entries[0]
			}
			return found != nil
		})
		return found
	}
	for _, action := range []string{"access.session.start", "access.session.end"} {
		e := entry(action)
		if e == nil {
			l, _ := os.ReadFile(devA.log)
			t.Fatalf("no %s entry for grant %s; sshd's log:\n%s", action, g.ID, l)
		}
		if e.Actor != audit.Device(devA.id) || e.Details["claim"] != "device" || e.Details["requester"] != "admin" ||
			e.Details["approvers"] != "sam" || e.Reason != why || e.Details["user"] != me.Username || e.Details["from"] != "127.0.0.1" {
			t.Fatalf("%s entry: %+v", action, e)
		}
	}
	if g, _ = admin.Access(ctx, g.ID); g.State != access.StateActive || len(g.Sessions) != 1 || g.Sessions[0].End.IsZero() {
		t.Fatalf("after the session: %+v", g)
	}

	// Revocation: once device A has the new KRL (pushed at once), the
	// certificate logs in no more.
	if _, err := sam.DecideAccess(ctx, g.ID, "revoke", "incident closed"); err != nil {
		t.Fatal(err)
	}
	if !wait.Poll(wait.Timeout, func() bool {
		out, _ := run(t, "ssh-keygen", "-Q", "-f", filepath.Join(devA.dir, "revoked_keys"), certFile)
		return strings.Contains(out, "REVOKED")
	}) {
		t.Fatal("device A never got the KRL revoking the grant")
	}
	out, log, err = devA.ssh(t, key, certFile, me.Username)
	if err == nil || strings.Contains(out, "sigil-jit-ok") || !strings.Contains(log, "revoked") {
		t.Fatalf("login after revocation: %v\n%s\nsshd:\n%s", err, out, log)
	}

	// Expiry: a grant of a few seconds, approved, used after its end.
	g2, err := admin.RequestAccess(ctx, access.Draft{Device: devA.id, PublicKey: string(pub), Justification: why, Duration: config.Duration(2 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if g2, err = sam.DecideAccess(ctx, g2.ID, "approve", ""); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, []byte(g2.Certificate+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Wait for the grant's end to pass (sshd compares with its own clock,
	// in whole seconds): the condition is the clock, not a guess.
	wait.Poll(wait.Timeout, func() bool { return time.Now().After(g2.End.Add(time.Second)) })
	out, log, err = devA.ssh(t, key, certFile, me.Username)
	if err == nil || strings.Contains(out, "sigil-jit-ok") || !strings.Contains(log, "expired") {
		t.Fatalf("login after expiry: %v\n%s\nsshd:\n%s", err, out, log)
	}
	if g2, _ = admin.Access(ctx, g2.ID); g2.State != access.StateExpired {
		t.Fatalf("expired grant: %s", g2.State)
	}
}

// TestJITAccessWithoutTwoPersonRule: a fleet without two_person_rule
// grants access over the API too (it answered 503 before): the requester
// cannot approve their own grant (403); the access policy's approvals
// (here 2) must all come from other people with access.approve before the
// certificate is signed.
func TestJITAccessWithoutTwoPersonRule(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.Access = access.Policy{Approvals: 2} })
	ctx := context.Background()
	admin, _ := f.Client()
	approver := func(name string) *api.Client {
		if _, err := f.Auth.CreateUser(ctx, name, name+"'s long password", auth.RoleSecurityAdmin); err != nil {
			t.Fatal(err)
		}
		secret, _, err := f.Auth.CreateToken(ctx, name, "approver", auth.RoleSecurityAdmin, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c := api.NewClient(f.APIURL(), secret, nil)
		c.HTTP = admin.HTTP
		return c
	}
	sam, kim := approver("sam"), approver("kim")
	requireBinary(t, "ssh-keygen", "openssh-client")
	key := filepath.Join(t.TempDir(), "id_ed25519")
	mustRun(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	g, err := admin.RequestAccess(ctx, access.Draft{Group: "kiosks", PublicKey: string(pub), Justification: "INC-99: kiosk fleet check"})
	if err != nil || g.State != access.StateRequested {
		t.Fatalf("request without two_person_rule: %+v %v", g, err)
	}
	var se *api.StatusError
	if _, err := admin.DecideAccess(ctx, g.ID, "approve", ""); !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Fatalf("the requester approved their own grant: %v", err)
	}
	if g, err = sam.DecideAccess(ctx, g.ID, "approve", "ok"); err != nil || g.State != access.StateRequested || g.Certificate != "" {
		t.Fatalf("after one of two approvals: %+v %v", g, err)
	}
	if g, err = kim.DecideAccess(ctx, g.ID, "approve", "ok"); err != nil || g.State != access.StateApproved || !strings.HasPrefix(g.Certificate, "ssh-ed25519-cert-v01@openssh.com ") {
		t.Fatalf("after two approvals: %+v %v", g, err)
	}
}

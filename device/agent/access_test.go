package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

const (
	sshdAccepted = "Dec  8 03:10:01 dev sshd[812]: Accepted publickey for root from 192.0.2.9 port 50022 ssh2: ED25519-CERT SHA256:abcDEF ID sigil-grant:0a1b2c3d (serial 7311) CA ECDSA SHA256:caFP+/x"
	sshdDisconn  = "Dec  8 03:12:44 dev sshd[812]: Disconnected from user root 192.0.2.9 port 50022"
)

// TestParseSSHDLine: certificate logins and disconnects are read from
// syslog, journal and sshd -E lines; other lines, plain-key logins and
// malformed fields are not events.
func TestParseSSHDLine(t *testing.T) {
	e, ok := ParseSSHDLine(sshdAccepted)
	want := wire.AccessSession{Event: wire.AccessSessionStart, User: "root", From: "192.0.2.9", Port: 50022, KeyID: "sigil-grant:0a1b2c3d", Serial: 7311, CA: "SHA256:caFP+/x"}
	if !ok || e != want {
		t.Fatalf("accepted: %+v %v", e, ok)
	}
	// sshd -E writes no syslog prefix.
	if e, ok := ParseSSHDLine(strings.SplitN(sshdAccepted, ": ", 2)[1]); !ok || e != want {
		t.Fatalf("sshd -E line: %+v %v", e, ok)
	}
	e, ok = ParseSSHDLine(sshdDisconn)
	if !ok || e != (wire.AccessSession{Event: wire.AccessSessionEnd, User: "root", From: "192.0.2.9", Port: 50022}) {
		t.Fatalf("disconnect: %+v %v", e, ok)
	}
	for _, bad := range []string{
		"",
		"sshd[1]: Accepted publickey for root from 192.0.2.9 port 50022 ssh2: ED25519 SHA256:abc",
		"sshd[1]: Accepted password for root from 192.0.2.9 port 50022 ssh2",
		strings.Replace(sshdAccepted, "(serial 7311)", "(serial 0)", 1),
		strings.Replace(sshdAccepted, "(serial 7311)", "(serial -1)", 1),
		strings.Replace(sshdAccepted, "port 50022", "port 99999", 1),
		strings.Replace(sshdAccepted, "for root", "for Root/../x", 1),
		strings.Replace(sshdAccepted, "CA ECDSA SHA256:caFP+/x", "CA ECDSA MD5:aa", 1),
		"sshd[1]: Disconnected from user root 192.0.2.9 port x",
		"sshd[1]: Disconnected from invalid user root 192.0.2.9 port 22",
		"sshd[1]: Failed publickey for root from 192.0.2.9 port 50022 ssh2",
	} {
		if e, ok := ParseSSHDLine(bad); ok {
			t.Errorf("%q parsed as %+v", bad, e)
		}
	}
}

// FuzzParseSSHDLine: any line parses without panicking, and what parses
// is a valid wire event.
func FuzzParseSSHDLine(f *testing.F) {
	f.Add(sshdAccepted)
	f.Add(sshdDisconn)
	f.Add("Accepted publickey for a from b port 1 ssh2: T F ID K (serial 1) CA T SHA256:")
	f.Fuzz(func(t *testing.T, line string) {
		e, ok := ParseSSHDLine(line)
		if !ok {
			return
		}
		e.Time = 1
		if err := (&wire.AccessSessions{Events: []wire.AccessSession{e}}).Validate(); err != nil {
			t.Fatalf("%q parsed as invalid %+v: %v", line, e, err)
		}
	})
}

// TestAccessLogReader: only lines written after the first read count; a
// disconnect carries the grant of the login it ends; a rotated file is
// read from its start; a partial line waits for its end.
func TestAccessLogReader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "auth.log")
	if err := os.WriteFile(path, []byte(sshdAccepted+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var s accessState
	now := time.Unix(1_800_000_000, 0)
	if err := s.read(path, now); err != nil || len(s.pending) != 0 {
		t.Fatalf("history reported: %+v %v", s.pending, err)
	}
	appendLine := func(l string) {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(l)
		f.Close()
	}
	appendLine(sshdAccepted + "\n" + "unrelated\n" + sshdDisconn[:20])
	if err := s.read(path, now); err != nil || len(s.pending) != 1 || s.pending[0].Time != now.Unix() {
		t.Fatalf("after a login: %+v %v", s.pending, err)
	}
	appendLine(sshdDisconn[20:] + "\n")
	if err := s.read(path, now); err != nil || len(s.pending) != 2 {
		t.Fatalf("after the disconnect: %+v %v", s.pending, err)
	}
	if end := s.pending[1]; end.Event != wire.AccessSessionEnd || end.Serial != 7311 || end.KeyID != "sigil-grant:0a1b2c3d" {
		t.Fatalf("end not tied to its start: %+v", end)
	}
	// Rotation: a new file with a login.
	os.Remove(path)
	if err := os.WriteFile(path, []byte(sshdAccepted+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.read(path, now); err != nil || len(s.pending) != 3 {
		t.Fatalf("after rotation: %+v %v", s.pending, err)
	}
}

// TestWriteAccessFiles: the files sshd reads, and stale principals files
// removed.
func TestWriteAccessFiles(t *testing.T) {
	dir := t.TempDir()
	tr := &wire.AccessTrust{UserCAKeys: []string{"ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTI= ca"},
		Logins:      []wire.AccessLogin{{Login: "root", Principals: []string{"root@dev-1", "root@group:k"}}, {Login: "ops", Principals: []string{"ops@dev-1"}}},
		RevokedKeys: []byte("SSHKRL\n\x00rest")}
	if err := writeAccessFiles(dir, tr); err != nil {
		t.Fatal(err)
	}
	tr.Logins = tr.Logins[:1]
	if err := writeAccessFiles(dir, tr); err != nil {
		t.Fatal(err)
	}
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return string(b)
	}
	if read("revoked_keys") != "SSHKRL\n\x00rest" || read("user_ca.pub") != tr.UserCAKeys[0]+"\n" ||
		read("principals/root") != "root@dev-1\nroot@group:k\n" {
		t.Fatalf("files: %q %q %q", read("revoked_keys"), read("user_ca.pub"), read("principals/root"))
	}
	if _, err := os.Stat(filepath.Join(dir, "principals", "ops")); !os.IsNotExist(err) {
		t.Fatalf("stale principals file: %v", err)
	}
}

// TestAccessTrustIgnoresOlder: a trust message older than the one written
// (a late redelivery) changes nothing; a malformed one neither.
func TestAccessTrustIgnoresOlder(t *testing.T) {
	dir := t.TempDir()
	a := &Agent{cfg: Config{SSHAccessDir: dir}, log: slog.New(slog.DiscardHandler)}
	send := func(gen uint64, krl string) {
		b, err := wire.Encode(wire.TypeAccessTrust, nil, time.Unix(1_800_000_000, 0), &wire.AccessTrust{
			UserCAKeys: []string{"ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTI= ca"}, RevokedKeys: []byte("SSHKRL\n\x00" + krl), Generation: gen})
		if err != nil {
			t.Fatal(err)
		}
		env, err := wire.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		a.accessTrust(env)
	}
	krl := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "revoked_keys"))
		return string(b)
	}
	send(2, "two")
	send(1, "one")
	if krl() != "SSHKRL\n\x00two" {
		t.Fatalf("an older trust replaced a newer one: %q", krl())
	}
	send(3, "three")
	if krl() != "SSHKRL\n\x00three" {
		t.Fatalf("a newer trust was not written: %q", krl())
	}
	b, _ := wire.Encode(wire.TypeAccessTrust, nil, time.Unix(1_800_000_000, 0), &wire.AccessTrust{UserCAKeys: []string{"x"}, RevokedKeys: []byte("no"), Generation: 9})
	env, _ := wire.Decode(b)
	a.accessTrust(env)
	if krl() != "SSHKRL\n\x00three" {
		t.Fatalf("a malformed trust was written: %q", krl())
	}
}

// TestJournalReader: with ssh_access_log "journal:PATH" sigild reads
// sshd's entries from journalctl's JSON (here a stand-in script that
// records its arguments): from now on at first, after the last cursor
// read on the next start.
func TestJournalReader(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "args")
	prog := filepath.Join(dir, "journalctl")
	script := "#!/bin/sh\necho \"$@\" >> " + argsFile + "\n" +
		"echo '{\"__CURSOR\":\"c1\",\"MESSAGE\":\"" + strings.SplitN(sshdAccepted, ": ", 2)[1] + "\"}'\n" +
		"echo 'not json'\n" +
		"echo '{\"__CURSOR\":\"c2\",\"MESSAGE\":[1,2,3]}'\n" +
		"echo '{\"__CURSOR\":\"c3\",\"MESSAGE\":\"" + strings.SplitN(sshdDisconn, ": ", 2)[1] + "\"}'\n"
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{SSHAccessLog: "journal:" + prog}
	if err := cfg.validateAccess(); err != nil {
		t.Fatal(err)
	}
	if err := (&Config{SSHAccessLog: "journal:journalctl"}).validateAccess(); err == nil {
		t.Fatal("a relative journalctl was accepted")
	}
	a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler), now: func() time.Time { return time.Unix(1_800_000_000, 0) }}
	run := func() {
		ctx, cancel := context.WithCancel(t.Context())
		if err := a.readJournal(ctx, prog, "--lines=0"); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	run()
	a.access.mu.Lock()
	pending, cursor := a.access.pending, a.access.cursor
	a.access.mu.Unlock()
	if len(pending) != 2 || pending[0].Serial != 7311 || pending[1].Event != wire.AccessSessionEnd || pending[1].Serial != 7311 || cursor != "c3" {
		t.Fatalf("read %+v, cursor %q", pending, cursor)
	}
	args, _ := os.ReadFile(argsFile)
	if !strings.Contains(string(args), "--follow --output=json --identifier=sshd --identifier=sshd-session --no-pager --lines=0") {
		t.Fatalf("journalctl ran with %q", args)
	}
	// followJournal starts after the cursor read before.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { a.followJournal(ctx, prog); close(done) }()
	if !wait.Poll(wait.Timeout, func() bool {
		b, _ := os.ReadFile(argsFile)
		return strings.Contains(string(b), "--after-cursor=c3")
	}) {
		t.Fatal("journalctl was not started after the cursor")
	}
	cancel()
	<-done
}

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/server"
)

// TestFirmwareOffline runs the offline firmware commands as a release
// manager would: two release keys, a trust set needing both, a manifest
// built and signed with one key and the same manifest signed with the
// other, then a rotation statement signed by both. firmware/verify, the
// device's verifier, accepts what they wrote.
func TestFirmwareOffline(t *testing.T) {
	t.Chdir(t.TempDir())
	must := func(stdin string, want *regexp.Regexp, args ...string) string {
		t.Helper()
		stdout, stderr, code := runCLI(t, stdin, args...)
		if code != exitOK || stderr != "" || !want.MatchString(stdout) {
			t.Fatalf("sigil %s: exit %d, stdout %q (want %s), stderr %q", strings.Join(args, " "), code, stdout, want, stderr)
		}
		return stdout
	}
	for _, k := range []string{"a", "b", "c"} {
		must("", regexp.MustCompile(`^release key \S+\n  private: `+k+`.key \(keep it offline\)\n  public:  `+k+`.pub\n$`),
			"firmware", "keygen", "--key", k+".key")
	}
	must("", regexp.MustCompile(`^trust set trust.json: sequence 1, 2 of 2 keys must sign\n$`),
		"firmware", "trust", "--threshold", "2", "--out", "trust.json", "a.pub", "b.pub")
	if err := os.WriteFile("gw-os.img", testImage, 0o644); err != nil {
		t.Fatal(err)
	}
	must("", regexp.MustCompile(`^manifest gw-os.img.manifest.json: gw-os 2.0.0, security version 2, 1200 bytes, sha256 [0-9a-f]{64}\nbundle a.bundle \(key \S+\)\n$`),
		"firmware", "sign", "--key", "a.key", "--image", "gw-os.img", "--name", "gw-os", "--version", "2.0.0", "--security-version", "2", "--models", "gw-1",
		"--pcr", "sha256:14="+strings.Repeat("ab", 32), "--bundle", "a.bundle")
	must("", regexp.MustCompile(`^bundle b.bundle \(key \S+\)\n$`), "firmware", "sign", "--key", "b.key", "--manifest", "gw-os.img.manifest.json", "--bundle", "b.bundle")
	trust, err := verify.ParseTrustSet(readFile(t, "trust.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify.Manifest(readFile(t, "gw-os.img.manifest.json"), [][]byte{readFile(t, "a.bundle"), readFile(t, "b.bundle")}, trust); err != nil {
		t.Errorf("the signed manifest does not verify: %v", err)
	}

	// A rotation to b and c, signed by the current set (a and b).
	statement := must("", regexp.MustCompile(`^\{.*\}\n$`), "firmware", "trust", "--sequence", "2", "b.pub", "c.pub")
	if err := os.WriteFile("next.json", []byte(statement), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b"} {
		must("", regexp.MustCompile(`^bundle next.json.`+k+`.bundle`), "firmware", "sign", "--key", k+".key", "--statement", "next.json", "--bundle", "next.json."+k+".bundle")
	}
	next, err := verify.Rotate(trust, []byte(strings.TrimSuffix(statement, "\n")), [][]byte{readFile(t, "next.json.a.bundle"), readFile(t, "next.json.b.bundle")})
	if err != nil || next.Sequence() != 2 {
		t.Errorf("the rotation statement does not verify: %v", err)
	}

	// Mistakes are usage errors (exit 2) that say what is missing.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"firmware", "trust"}, "needs the public key files"},
		{[]string{"firmware", "sign", "--image", "gw-os.img"}, "firmware sign needs --key"},
		{[]string{"firmware", "sign", "--key", "a.key"}, "needs --manifest, --statement, or --image"},
		{[]string{"firmware", "sign", "--key", "a.key", "--manifest", "m", "--statement", "s"}, "not both"},
		{[]string{"firmware", "sign", "--key", "a.key", "--image", "gw-os.img", "--name", "gw-os", "--version", "2", "--pcr", "14=ab"}, "want BANK:INDEX=HEX"},
	} {
		stdout, stderr, code := runCLI(t, "", tc.args...)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("sigil %s: exit %d, stdout %q, stderr %q (want %q)", strings.Join(tc.args, " "), code, stdout, stderr, tc.want)
		}
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAuditVerify runs `sigil audit verify` on an export of a real audit
// log: it verifies (from a file, from stdin, with the key found in
// --data-dir), and an altered export exits 6.
func TestAuditVerify(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	log, err := audit.Open(audit.Config{Path: filepath.Join(dir, audit.File), Signer: key, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, target := range []string{"dev-1", "dev-2"} {
		if err := log.Record(ctx, audit.New(audit.User("ana"), "api.devices.approve", target)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := log.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if err := log.Record(ctx, audit.New(audit.User("bo"), "api.devices.revoke", "dev-1")); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create("export.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if err := log.Export(ctx, f, 0, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	log.Close()
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(server.AuditPubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	export := string(readFile(t, "export.jsonl"))
	want := "audit log verifies: entries 1..3 (3), 1 checkpoints, last checkpoint at entry 2, head "
	for _, tc := range []struct {
		stdin string
		args  []string
	}{
		{"", []string{"audit", "verify", "export.jsonl", "--key", server.AuditPubFile}},
		{export, []string{"audit", "verify", "-", "--key", server.AuditPubFile}},
		{"", []string{"audit", "verify", "export.jsonl", "--data-dir", dir}},
	} {
		stdout, stderr, code := runCLI(t, tc.stdin, tc.args...)
		if code != exitOK || !strings.HasPrefix(stdout, want) || !strings.Contains(stdout, "warning: the last 1 entries follow the last checkpoint") || stderr != "" {
			t.Errorf("sigil %s: exit %d, stdout %q, stderr %q", strings.Join(tc.args, " "), code, stdout, stderr)
		}
	}
	altered := strings.Replace(export, `"dev-2"`, `"dev-3"`, 1)
	if altered == export {
		t.Fatal("the export does not name dev-2")
	}
	stdout, stderr, code := runCLI(t, altered, "audit", "verify", "-", "--key", server.AuditPubFile)
	if code != exitTampered || stdout != "" || !strings.HasPrefix(stderr, "sigil: audit log does NOT verify: ") {
		t.Errorf("an altered export: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, stderr, code = runCLI(t, "", "audit", "verify", "export.jsonl", "--key", "missing.pub")
	if code != exitUsage || stdout != "" || !strings.Contains(stderr, "audit public key") {
		t.Errorf("a missing key: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

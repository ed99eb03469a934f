package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

// TestBackupRestoreOffline: sigil backup writes an archive of a data
// directory to an age key, sigil restore brings it back with its identity
// file; a missing or doubled key is a usage error, an existing archive or
// a non-empty target is refused, a wrong identity restores nothing.
func TestBackupRestoreOffline(t *testing.T) {
	root := t.TempDir()
	data := filepath.Join(root, "data")
	os.MkdirAll(filepath.Join(data, "ca"), 0o700)
	os.WriteFile(filepath.Join(data, "ca", "ca.key"), []byte("key material\n"), 0o600)
	os.WriteFile(filepath.Join(data, "admin.token"), []byte("token\n"), 0o600)
	id, _ := age.GenerateX25519Identity()
	other, _ := age.GenerateX25519Identity()
	idFile, otherFile := filepath.Join(root, "backup.key"), filepath.Join(root, "other.key")
	os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600)
	os.WriteFile(otherFile, []byte(other.String()+"\n"), 0o600)
	archive := filepath.Join(root, "fleet.age")

	for _, args := range [][]string{
		{"backup", "--data-dir", data, "--out", archive},
		{"backup", "--data-dir", data, "--out", archive, "--recipient", id.Recipient().String(), "--passphrase-file", idFile},
		{"backup", "--data-dir", data, "--recipient", id.Recipient().String()},
		{"restore", archive, "--data-dir", filepath.Join(root, "x")},
		// Through the API: age public keys only, encrypted on the server.
		{"backup", "--server", "https://127.0.0.1:1", "--out", archive, "--passphrase-file", idFile},
		{"backup", "--server", "https://127.0.0.1:1", "--out", archive},
		{"backup", "--server", "https://127.0.0.1:1", "--out", archive, "--recipient", "not-a-key"},
		{"backup", "--data-dir", data, "--out", archive, "--recipient", id.Recipient().String(), "--token-file", idFile},
	} {
		if _, stderr, code := runCLI(t, "", args...); code != exitUsage {
			t.Errorf("sigil %s: exit %d, %s", strings.Join(args, " "), code, stderr)
		}
	}
	stdout, stderr, code := runCLI(t, "", "backup", "--data-dir", data, "--out", archive, "--recipient", id.Recipient().String())
	if code != exitOK || !strings.Contains(stdout, "2 files") {
		t.Fatalf("backup: exit %d\n%s%s", code, stdout, stderr)
	}
	if fi, err := os.Stat(archive); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("archive: %v %v", fi, err)
	}
	if _, _, code := runCLI(t, "", "backup", "--data-dir", data, "--out", archive, "--recipient", id.Recipient().String()); code != exitError {
		t.Fatalf("backup over an existing archive: exit %d", code)
	}
	target := filepath.Join(root, "restored")
	if _, stderr, code := runCLI(t, "", "restore", archive, "--data-dir", target, "--identity", otherFile); code != exitError || !strings.Contains(stderr, "nothing was restored") {
		t.Fatalf("restore with another identity: exit %d, %s", code, stderr)
	}
	if _, err := os.Stat(target); err == nil {
		t.Fatal("a refused restore left its target")
	}
	stdout, stderr, code = runCLI(t, "", "restore", archive, "--data-dir", target, "--identity", idFile)
	if code != exitOK || !strings.Contains(stdout, "restored 2 files") {
		t.Fatalf("restore: exit %d\n%s%s", code, stdout, stderr)
	}
	if got, _ := os.ReadFile(filepath.Join(target, "ca", "ca.key")); string(got) != "key material\n" {
		t.Fatalf("restored ca.key %q", got)
	}
	if _, stderr, code := runCLI(t, "", "restore", archive, "--data-dir", target, "--identity", idFile); code != exitError || !strings.Contains(stderr, "not empty") {
		t.Fatalf("restore over a data directory: exit %d, %s", code, stderr)
	}
}

package api

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"filippo.io/age"

	"github.com/sigil-iot/sigil/fleet/backup"
)

// TestBackupRoute: POST /api/v1/backup answers the archive of the data
// directory encrypted to the request's recipient, which sigil restore's
// code reads back; a request without a valid age public key is refused
// before any work, one without a credential too, and a server without
// live backups answers 501.
func TestBackupRoute(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secrets.key"), []byte("the key material\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := serve(t, Config{Backup: backup.NewLive(backup.LiveConfig{DataDir: dir, TrustDomain: "fleet.example"})})
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	resp, body := call(t, srv, "POST", "/api/v1/backup", "", `{"recipients": ["`+id.Recipient().String()+`"]}`)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without a token: %d %s", resp.StatusCode, body)
	}
	for _, req := range []string{`{}`, `{"recipients": []}`, `{"recipients": ["a passphrase"]}`, `{"recipients": ["` + id.String() + `"]}`} {
		resp, body = call(t, srv, "POST", "/api/v1/backup", token, req)
		wantProblem(t, resp, body, http.StatusBadRequest, "age public keys")
	}
	resp, body = call(t, srv, "POST", "/api/v1/backup", token, `{"recipients": ["`+id.Recipient().String()+`"]}`)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != MediaBackup || resp.Header.Get(BackupFilesHeader) != "1" ||
		resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
		t.Fatalf("backup: %d %v", resp.StatusCode, resp.Header)
	}
	if bytes.Contains([]byte(body), []byte("the key material")) {
		t.Fatal("the archive holds plaintext")
	}
	target := filepath.Join(t.TempDir(), "restored")
	res, err := backup.Restore(context.Background(), bytes.NewReader([]byte(body)), target, id)
	if err != nil || res.Manifest.TrustDomain != "fleet.example" {
		t.Fatalf("restore: %+v %v", res, err)
	}
	if got, _ := os.ReadFile(filepath.Join(target, "secrets.key")); string(got) != "the key material\n" {
		t.Fatalf("restored %q", got)
	}

	off := serve(t, Config{})
	resp, body = call(t, off, "POST", "/api/v1/backup", token, `{"recipients": ["`+id.Recipient().String()+`"]}`)
	wantProblem(t, resp, body, http.StatusNotImplemented, "not enabled")
}

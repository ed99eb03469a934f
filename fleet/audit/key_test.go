package audit_test

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/sigil-iot/sigil/fleet/audit"
)

// TestOpenKey: the checkpoint key is created once (0600) and kept across
// opens, and its public key is written beside it for `sigil audit verify`.
func TestOpenKey(t *testing.T) {
	dir := t.TempDir()
	key, err := audit.OpenKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, audit.KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, audit.PubFile))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(raw)
	if b == nil || b.Type != "PUBLIC KEY" {
		t.Fatalf("public key file: %q", raw)
	}
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil || !reflect.DeepEqual(pub, key.Public()) {
		t.Fatalf("the public key file is not the key's: %v", err)
	}
	again, err := audit.OpenKey(dir)
	if err != nil || !reflect.DeepEqual(again.Public(), key.Public()) {
		t.Fatalf("a second open gave another key: %v", err)
	}
}

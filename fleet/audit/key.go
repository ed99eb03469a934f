package audit

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sigil-iot/sigil/fleet/ca"
)

// KeyFile is the checkpoint key's file name in the fleet data directory.
// The key is the audit log's own (not the CA's), so that CA rotation never
// changes the key an exported log is verified with.
const KeyFile = "audit.key"

// OpenKey opens the checkpoint key in dir (KeyFile, created at first
// start, 0600) and writes its public key beside it (PubFile), which
// `sigil audit verify --key` takes.
func OpenKey(dir string) (crypto.Signer, error) {
	key, err := ca.FileSigner(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("audit: key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("audit: key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, PubFile), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		return nil, fmt.Errorf("audit: key: %w", err)
	}
	return key, nil
}

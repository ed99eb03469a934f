package auth

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/internal/fsutil"
)

// BootstrapAdmin is the name of the first admin EnsureAdmin creates.
const BootstrapAdmin = "admin"

// EnsureAdmin creates the first admin, named BootstrapAdmin, when there are
// no users at all, with a random password (24 bytes, base64url) written,
// followed by a newline, to passwordFile with mode 0600 (replacing any file
// there). It reports whether it created the user; with users present it
// changes nothing. The password is never logged.
func (s *Service) EnsureAdmin(ctx context.Context, passwordFile string) (created bool, err error) {
	s.bootstrapMu.Lock()
	defer s.bootstrapMu.Unlock()
	empty := false
	err = s.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketUsers).Cursor().First()
		empty = k == nil
		return nil
	})
	if err != nil || !empty {
		return false, err
	}
	raw := make([]byte, 24)
	if _, err := io.ReadFull(s.cfg.Rand, raw); err != nil {
		return false, fmt.Errorf("auth: password entropy: %w", err)
	}
	password := base64.RawURLEncoding.EncodeToString(raw)
	if err := writeSecretFile(passwordFile, []byte(password+"\n")); err != nil {
		return false, err
	}
	if _, err := s.CreateUser(ctx, BootstrapAdmin, password, RoleAdmin); err != nil {
		_ = os.Remove(passwordFile) // its password is not the user's
		return false, err
	}
	s.log.Info("first admin created; its password is in the file", "user", BootstrapAdmin, "file", passwordFile)
	return true, nil
}

// writeSecretFile writes data to path with mode 0600, atomically and
// durably (fsutil.WriteFileAtomic).
func writeSecretFile(path string, data []byte) error {
	if err := fsutil.WriteFileAtomic(path, data, 0o600); err != nil {
		return fmt.Errorf("auth: write %s: %w", path, err)
	}
	return nil
}

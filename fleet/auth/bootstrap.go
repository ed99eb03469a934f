package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/internal/fsutil"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
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
	err = s.db.View(ctx, func(tx kv.Tx) error {
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

// AdminTokenTTL is the lifetime of the API token EnsureAdminToken issues.
const AdminTokenTTL = 365 * 24 * time.Hour

// EnsureAdminToken returns the API token in path if it still
// authenticates, or issues a new one for BootstrapAdmin (role admin,
// AdminTokenTTL) and writes it to path, followed by a newline, with mode
// 0600: the credential the CLI and scripts on the fleet's host use. The
// token is never logged.
func (s *Service) EnsureAdminToken(ctx context.Context, path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		tok := strings.TrimSpace(string(b))
		r, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		if _, err := s.Authenticate(r); err == nil {
			return tok, nil
		}
		s.log.Warn("the admin token file no longer authenticates; issuing a new one", "file", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("auth: %w", err)
	}
	secret, _, err := s.CreateToken(ctx, BootstrapAdmin, "admin-token-file", RoleAdmin, AdminTokenTTL)
	if err != nil {
		return "", fmt.Errorf("auth: admin API token: %w", err)
	}
	if err := writeSecretFile(path, []byte(secret+"\n")); err != nil {
		return "", err
	}
	return secret, nil
}

package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/sigil-iot/sigil/fleet/audit"
)

// More errors of a live backup. Compare with errors.Is.
var (
	// ErrRecipient: the request names no recipient, too many, or one that
	// is not an age X25519 public key (age1…).
	ErrRecipient = errors.New("backup: recipients must be 1 to 16 age public keys (age1…)")
	// ErrBusy: another backup of this fleet is being written.
	ErrBusy = errors.New("backup: another backup is in progress")
)

// MaxRecipients bounds the recipients of a live backup.
const MaxRecipients = 16

// Checkpointer signs a checkpoint of the audit log (*audit.Log).
type Checkpointer interface {
	Checkpoint(ctx context.Context) (audit.Checkpoint, error)
}

var _ Checkpointer = (*audit.Log)(nil)

// LiveConfig configures NewLive.
type LiveConfig struct {
	// DataDir is the running fleet's data directory. Required.
	DataDir string
	// TrustDomain and Database are recorded in each manifest (Options).
	TrustDomain string
	Database    bool
	// Audit signs a checkpoint just before the audit log is copied; nil
	// signs none.
	Audit Checkpointer
	// Now is the clock of the manifests; nil means time.Now.
	Now func() time.Time
}

// Live backs up the running fleet it is part of (POST /api/v1/backup):
// the stores are copied through the handles the fleet holds
// (boltdb.Held), each inside one read transaction, while the fleet keeps
// serving. One backup at a time.
type Live struct {
	cfg  LiveConfig
	busy chan struct{}
}

// NewLive returns a Live for cfg.
func NewLive(cfg LiveConfig) *Live {
	return &Live{cfg: cfg, busy: make(chan struct{}, 1)}
}

// Archive is an encrypted archive spooled to a temporary file that has
// no name (removed at once): read it, then Close it.
type Archive struct {
	*os.File
	// Size is the archive's length in bytes.
	Size int64
	// Manifest describes its content.
	Manifest Manifest
}

// ParseRecipients parses age X25519 public keys (age1…), at least one and
// at most MaxRecipients (ErrRecipient).
func ParseRecipients(keys []string) ([]age.Recipient, error) {
	if len(keys) == 0 || len(keys) > MaxRecipients {
		return nil, ErrRecipient
	}
	to := make([]age.Recipient, 0, len(keys))
	for _, k := range keys {
		r, err := age.ParseX25519Recipient(strings.TrimSpace(k))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRecipient, err)
		}
		to = append(to, r)
	}
	return to, nil
}

// Snapshot writes an archive of the data directory, encrypted to the
// recipients (ParseRecipients), as Create does, and returns it spooled:
// the stores' read transactions last as long as the copy to the local
// disk, never as long as a slow client takes to download it. The spool
// lives in the data directory, removed before anything is written to it
// (nothing is left if the process dies), and holds only ciphertext. It
// fails with ErrRecipient, ErrBusy while another Snapshot runs, or the
// error of the copy.
func (l *Live) Snapshot(ctx context.Context, recipients []string) (*Archive, error) {
	to, err := ParseRecipients(recipients)
	if err != nil {
		return nil, err
	}
	select {
	case l.busy <- struct{}{}:
		defer func() { <-l.busy }()
	default:
		return nil, ErrBusy
	}
	f, err := os.CreateTemp(l.cfg.DataDir, ".backup-*.age")
	if err != nil {
		return nil, fmt.Errorf("backup: spool: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("backup: spool: %w", err)
	}
	o := Options{TrustDomain: l.cfg.TrustDomain, Database: l.cfg.Database, Now: l.cfg.Now}
	if l.cfg.Audit != nil {
		o.BeforeAudit = func(ctx context.Context) error {
			_, err := l.cfg.Audit.Checkpoint(ctx)
			if errors.Is(err, audit.ErrEmpty) || errors.Is(err, audit.ErrNoSigner) {
				return nil
			}
			return err
		}
	}
	m, err := Create(ctx, f, l.cfg.DataDir, to, o)
	var size int64
	if err == nil {
		size, err = f.Seek(0, io.SeekCurrent)
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Archive{File: f, Size: size, Manifest: m}, nil
}

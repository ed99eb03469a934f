package mqttpool

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// ErrCRL reports a CRL that must not replace the broker's: not signed by
// a CA of the broker's trust bundle, or older than the one it has.
var ErrCRL = errors.New("mqttpool: CRL refused")

// CRLSync keeps a device broker's CRL (Dir/crl.pem) the fleet's: it
// fetches the fleet's CRL, checks it against the broker's trust bundle
// (Dir/ca.pem) and that it is newer than the one in place, writes it and
// has the broker reread it (Mosquitto rereads crlfile on SIGHUP). A
// revoked certificate is then refused at its next TLS handshake; its open
// session is the fleet's to end. `sigil broker-sync` runs it beside each
// device broker.
type CRLSync struct {
	// Dir is the broker's configuration directory (Member.Dir).
	Dir string
	// Fetch returns the fleet's current CRL (DER or PEM), e.g. GET /crl.
	Fetch func(ctx context.Context) ([]byte, error)
	// Reload has the broker reread its CRL.
	Reload func() error
	// Interval between fetches (default 10s).
	Interval time.Duration
	Logger   *slog.Logger
}

// Run syncs every Interval until ctx ends; a failed round is logged and
// retried at the next.
func (s *CRLSync) Run(ctx context.Context) error {
	interval, log := s.Interval, s.Logger
	if interval <= 0 {
		interval = 10 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if changed, err := s.Once(ctx); err != nil {
			log.Warn("CRL sync failed", "err", err)
		} else if changed {
			log.Info("broker CRL updated and reloaded")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Once fetches the fleet's CRL and, when it is newer than the broker's,
// installs it and reloads the broker. It reports whether it did.
func (s *CRLSync) Once(ctx context.Context) (bool, error) {
	raw, err := s.Fetch(ctx)
	if err != nil {
		return false, fmt.Errorf("mqttpool: fetching the CRL: %w", err)
	}
	crl, err := parseCRL(raw)
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrCRL, err)
	}
	if err := s.checkSigner(crl); err != nil {
		return false, err
	}
	if !crl.NextUpdate.IsZero() && !time.Now().Before(crl.NextUpdate) {
		// Mosquitto would refuse every client with it.
		return false, fmt.Errorf("%w: expired at %s", ErrCRL, crl.NextUpdate.UTC().Format(time.RFC3339))
	}
	path := filepath.Join(s.Dir, CRLFile)
	if old, err := os.ReadFile(path); err == nil {
		if cur, err := parseCRL(old); err == nil && cur.Number != nil && crl.Number != nil {
			switch crl.Number.Cmp(cur.Number) {
			case 0:
				return false, nil // the broker has it
			case -1:
				return false, fmt.Errorf("%w: number %v is older than the broker's %v", ErrCRL, crl.Number, cur.Number)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("mqttpool: %w", err)
	}
	tmp, err := os.CreateTemp(s.Dir, ".crl-*.pem")
	if err != nil {
		return false, fmt.Errorf("mqttpool: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl.Raw}))
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return false, fmt.Errorf("mqttpool: writing the CRL: %w", err)
	}
	if err := s.Reload(); err != nil {
		return true, fmt.Errorf("mqttpool: reloading the broker: %w", err)
	}
	return true, nil
}

// checkSigner checks crl's signature against the broker's trust bundle.
func (s *CRLSync) checkSigner(crl *x509.RevocationList) error {
	b, err := os.ReadFile(filepath.Join(s.Dir, CAFile))
	if err != nil {
		return fmt.Errorf("mqttpool: %w", err)
	}
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		ca, err := x509.ParseCertificate(blk.Bytes)
		if err == nil && crl.CheckSignatureFrom(ca) == nil {
			return nil
		}
	}
	return fmt.Errorf("%w: not signed by a CA of %s", ErrCRL, CAFile)
}

// parseCRL parses a CRL in DER or PEM.
func parseCRL(b []byte) (*x509.RevocationList, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block %q, want X509 CRL", blk.Type)
		}
		b = blk.Bytes
	}
	return x509.ParseRevocationList(b)
}

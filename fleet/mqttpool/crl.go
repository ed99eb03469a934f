package mqttpool

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"sync"
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
//
// With Watch, the fleet tells it of a new CRL at once: it keeps a request
// waiting for a CRL newer than the broker's (GET /crl?after=N, which the
// fleet answers the moment a revocation is recorded), and installs what
// it gets the same way. The fetch every Interval stays, as the fallback
// when the fleet cannot be reached that way.
type CRLSync struct {
	// Dir is the broker's configuration directory (Member.Dir).
	Dir string
	// Fetch returns the fleet's current CRL (DER or PEM), e.g. GET /crl.
	Fetch func(ctx context.Context) ([]byte, error)
	// Watch, when set, waits for the fleet's CRL whose number is greater
	// than after (nil: the current one at once), e.g. GET
	// /crl?after=N, and returns it (DER or PEM), or nil when the fleet
	// held the request and none came.
	Watch func(ctx context.Context, after *big.Int) ([]byte, error)
	// Reload has the broker reread its CRL.
	Reload func() error
	// Interval between fetches (default 10s).
	Interval time.Duration
	Logger   *slog.Logger

	mu sync.Mutex // one install at a time
}

// watchRetry bounds the pause before waiting again after Watch failed or
// answered with no newer CRL (from a second, doubling).
const watchRetry = 30 * time.Second

// Run syncs every Interval, and with Watch whenever the fleet has a
// newer CRL, until ctx ends; a failed round is logged and retried.
func (s *CRLSync) Run(ctx context.Context) error {
	interval, log := s.Interval, s.Logger
	if interval <= 0 {
		interval = 10 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.Watch != nil {
		wg.Go(func() { s.watch(ctx, log) })
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

// watch keeps a Watch waiting for a CRL newer than the broker's and
// installs each one, until ctx ends. After a failure, or an answer that
// is not newer (a fleet that does not hold the request), it pauses
// before waiting again.
func (s *CRLSync) watch(ctx context.Context, log *slog.Logger) {
	pause := time.Second
	for {
		raw, err := s.Watch(ctx, s.number())
		if ctx.Err() != nil {
			return
		}
		changed := false
		switch {
		case err != nil:
			log.Warn("waiting for the fleet's next CRL failed", "err", err)
		case raw == nil: // held until the fleet's hold ended: wait again
			pause = time.Second
			continue
		default:
			if changed, err = s.install(raw); err != nil {
				log.Warn("CRL sync failed", "err", err)
			} else if changed {
				log.Info("broker CRL updated and reloaded on the fleet's word")
				pause = time.Second
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, watchRetry)
	}
}

// number is the number of the broker's CRL, nil when it has none.
func (s *CRLSync) number() *big.Int {
	b, err := os.ReadFile(filepath.Join(s.Dir, CRLFile))
	if err != nil {
		return nil
	}
	crl, err := parseCRL(b)
	if err != nil {
		return nil
	}
	return crl.Number
}

// Once fetches the fleet's CRL and, when it is newer than the broker's,
// installs it and reloads the broker. It reports whether it did.
func (s *CRLSync) Once(ctx context.Context) (bool, error) {
	raw, err := s.Fetch(ctx)
	if err != nil {
		return false, fmt.Errorf("mqttpool: fetching the CRL: %w", err)
	}
	return s.install(raw)
}

// install checks raw and, when it is newer than the broker's CRL,
// installs it and reloads the broker.
func (s *CRLSync) install(raw []byte) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
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

package mqttpool

import (
	"bytes"
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
	"slices"
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

// number is the greatest number of the broker's CRLs, nil when it has
// none.
func (s *CRLSync) number() *big.Int {
	b, err := os.ReadFile(filepath.Join(s.Dir, CRLFile))
	if err != nil {
		return nil
	}
	_, crls, err := parseSet(b)
	if err != nil {
		return nil
	}
	return maxNumber(crls)
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

// install checks raw and, when it is newer than the broker's CRLs,
// installs it and reloads the broker. raw is one CRL (DER or PEM), or a
// CRL set (GET /crl?set=generations: the fleet's trust bundle, cross
// certificates and one CRL per trusted CA generation, in PEM); with a
// set, the broker's trust bundle becomes the fleet's roots that chain to
// a root it already trusts (a new generation's through its cross
// certificate; a retired one is left out), and its CRLs those of the
// set.
func (s *CRLSync) install(raw []byte) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	certs, crls, err := parseSet(raw)
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrCRL, err)
	}
	installed, err := s.roots()
	if err != nil {
		return false, err
	}
	roots := installed
	if len(certs) > 0 {
		if roots, err = chained(installed, certs, time.Now()); err != nil {
			return false, err
		}
	}
	for _, crl := range crls {
		if !signedByOneOf(crl, roots) {
			return false, fmt.Errorf("%w: not signed by a CA of %s", ErrCRL, CAFile)
		}
		if !crl.NextUpdate.IsZero() && !time.Now().Before(crl.NextUpdate) {
			// Mosquitto would refuse every client with it.
			return false, fmt.Errorf("%w: expired at %s", ErrCRL, crl.NextUpdate.UTC().Format(time.RFC3339))
		}
	}
	sameRoots := slices.EqualFunc(roots, installed, func(a, b *x509.Certificate) bool { return a.Equal(b) })
	path := filepath.Join(s.Dir, CRLFile)
	if old, err := os.ReadFile(path); err == nil {
		if _, cur, err := parseSet(old); err == nil {
			if have, got := maxNumber(cur), maxNumber(crls); have != nil && got != nil {
				switch got.Cmp(have) {
				case 0:
					if len(cur) == len(crls) {
						if sameRoots {
							return false, nil // the broker has it
						}
						if err := s.writeRoots(roots); err != nil {
							return false, err // the CRLs are in place: nothing to reload
						}
					}
				case -1:
					return false, fmt.Errorf("%w: number %v is older than the broker's %v", ErrCRL, got, have)
				}
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("mqttpool: %w", err)
	}
	// ca.pem before crl.pem: a reload that a change of crl.pem triggers
	// (a path unit) finds both. A ca.pem the sync may not replace (a
	// sandboxed sync whose directory lets it replace crl.pem alone) does
	// not hold the CRLs back: the revocations still reach the broker for
	// the CAs it trusts, and the error says what to install by hand.
	var rootsErr error
	if !sameRoots {
		rootsErr = s.writeRoots(roots)
	}
	var b []byte
	for _, crl := range crls {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl.Raw})...)
	}
	if err := writeAtomic(path, b); err != nil {
		return false, fmt.Errorf("mqttpool: writing the CRL: %w", err)
	}
	if err := s.Reload(); err != nil {
		return true, errors.Join(rootsErr, fmt.Errorf("mqttpool: reloading the broker: %w", err))
	}
	return true, rootsErr
}

// writeRoots writes roots as the broker's trust bundle (ca.pem).
func (s *CRLSync) writeRoots(roots []*x509.Certificate) error {
	var b []byte
	for _, r := range roots {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	if err := writeAtomic(filepath.Join(s.Dir, CAFile), b); err != nil {
		return fmt.Errorf("mqttpool: writing the trust bundle %s (the CA rotation's roots): %w", CAFile, err)
	}
	return nil
}

// roots reads the broker's trust bundle.
func (s *CRLSync) roots() ([]*x509.Certificate, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("mqttpool: %w", err)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			out = append(out, c)
		}
	}
	return out, nil
}

// chained returns the roots among certs (self-signed CA certificates, in
// the fleet's order) that the broker may trust: those it already trusts,
// and those certified by one of them through a cross certificate among
// certs (same subject and key, a CA, valid at now), transitively. Roots
// it trusts that certs leave out (retired generations) are dropped. It
// fails when none is left: the set is not this broker's fleet's.
func chained(installed, certs []*x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	var roots, cross []*x509.Certificate
	for _, c := range certs {
		if c.IsCA && bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil {
			roots = append(roots, c)
		} else if c.IsCA {
			cross = append(cross, c)
		}
	}
	ok := make([]bool, len(roots))
	var trusted []*x509.Certificate
	for i, r := range roots {
		if slices.ContainsFunc(installed, r.Equal) {
			ok[i] = true
			trusted = append(trusted, r)
		}
	}
	for grew := true; grew; {
		grew = false
		for i, r := range roots {
			if ok[i] {
				continue
			}
			for _, x := range cross {
				if bytes.Equal(x.RawSubject, r.RawSubject) && bytes.Equal(x.RawSubjectPublicKeyInfo, r.RawSubjectPublicKeyInfo) &&
					!now.Before(x.NotBefore) && !now.After(x.NotAfter) && signedCertByOneOf(x, trusted) {
					ok[i], grew = true, true
					trusted = append(trusted, r)
					break
				}
			}
		}
	}
	if len(trusted) == 0 {
		return nil, fmt.Errorf("%w: none of the fleet's CAs is, or is certified by, a CA of %s", ErrCRL, CAFile)
	}
	out := make([]*x509.Certificate, 0, len(trusted))
	for i, r := range roots {
		if ok[i] {
			out = append(out, r)
		}
	}
	return out, nil
}

func signedCertByOneOf(c *x509.Certificate, cas []*x509.Certificate) bool {
	return slices.ContainsFunc(cas, func(ca *x509.Certificate) bool { return c.CheckSignatureFrom(ca) == nil })
}

func signedByOneOf(crl *x509.RevocationList, cas []*x509.Certificate) bool {
	return slices.ContainsFunc(cas, func(ca *x509.Certificate) bool { return crl.CheckSignatureFrom(ca) == nil })
}

// maxNumber is the greatest number of crls, nil when none has one.
func maxNumber(crls []*x509.RevocationList) *big.Int {
	var n *big.Int
	for _, c := range crls {
		if c.Number != nil && (n == nil || c.Number.Cmp(n) > 0) {
			n = c.Number
		}
	}
	return n
}

// writeAtomic writes b to path (mode 0644) through a synced temporary
// file renamed over it.
func writeAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".sync-*.pem")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
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
	return err
}

// maxSetBlocks bounds the PEM blocks of a CRL set.
const maxSetBlocks = 64

// parseSet parses one CRL (DER or PEM) or a CRL set in PEM: certificates
// and at least one CRL.
func parseSet(b []byte) ([]*x509.Certificate, []*x509.RevocationList, error) {
	if blk, _ := pem.Decode(b); blk == nil {
		crl, err := x509.ParseRevocationList(b)
		if err != nil {
			return nil, nil, err
		}
		return nil, []*x509.RevocationList{crl}, nil
	}
	var certs []*x509.Certificate
	var crls []*x509.RevocationList
	for n := 0; ; n++ {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		if n == maxSetBlocks {
			return nil, nil, fmt.Errorf("more than %d PEM blocks", maxSetBlocks)
		}
		switch blk.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, nil, err
			}
			certs = append(certs, c)
		case "X509 CRL":
			crl, err := x509.ParseRevocationList(blk.Bytes)
			if err != nil {
				return nil, nil, err
			}
			crls = append(crls, crl)
		default:
			return nil, nil, fmt.Errorf("PEM block %q, want CERTIFICATE or X509 CRL", blk.Type)
		}
	}
	if len(crls) == 0 {
		return nil, nil, errors.New("no CRL")
	}
	return certs, crls, nil
}

package verify

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Errors wrapped by the *wire.Error values this package returns; compare
// with errors.Is. The wire reason says the same to a device or operator.
var (
	// ErrSignature: fewer distinct trusted keys than the threshold signed
	// (ReasonFirmwareSignature).
	ErrSignature = errors.New("verify: not signed by the threshold of trusted keys")
	// ErrExpired: the release metadata expired (ReasonFirmwareExpired).
	ErrExpired = errors.New("verify: release metadata expired")
	// ErrModel: the release does not list the device's model
	// (ReasonFirmwareModel).
	ErrModel = errors.New("verify: release not built for this model")
	// ErrRollback: the security version is below the device's floor
	// (ReasonFirmwareRollback).
	ErrRollback = errors.New("verify: security version below the anti-rollback floor")
	// ErrImage: the image's size or SHA-256 differs from the manifest's
	// (ReasonFirmwareDigest).
	ErrImage = errors.New("verify: image does not match the manifest")
)

// Verified is a manifest whose signatures met the trust set's threshold.
// Only this package makes one.
type Verified struct {
	Manifest *manifest.Manifest
	Raw      []byte   // the signed manifest bytes
	Signers  []string // IDs of the trusted keys whose signatures counted, sorted
}

// Manifest checks, in this order, that raw was signed by at least
// trust.Threshold() distinct keys of trust (each bundle a sigstore bundle
// over exactly raw, see ParseBundle; a key counts once however many bundles
// it made) and that raw is a valid canonical manifest, and returns it. It
// does not look at expiry or model: the fleet uses it on upload, devices use
// Release.
//
// Errors are *wire.Error values wrapping ErrSignature
// (ReasonFirmwareSignature) or manifest.ErrInvalid (ReasonBadRequest).
func Manifest(raw []byte, bundles [][]byte, trust *TrustSet) (*Verified, error) {
	if trust == nil {
		return nil, wire.Refuse(wire.ReasonInternal, "no release trust set", errors.New("verify: nil trust set"))
	}
	if len(raw) > manifest.MaxSize {
		return nil, wire.Refuse(wire.ReasonBadRequest, "manifest too large",
			fmt.Errorf("verify: %w: %d bytes", manifest.ErrInvalid, len(raw)))
	}
	signers, err := trust.Signers(raw, bundles)
	if err != nil {
		return nil, signatureRefusal("release not signed by the required number of trusted keys", err)
	}
	m, err := manifest.Parse(raw)
	if err != nil {
		return nil, wire.Refuse(wire.ReasonBadRequest, "malformed manifest", err)
	}
	return &Verified{Manifest: m, Raw: raw, Signers: signers}, nil
}

// Release is what a device runs before it downloads anything: Manifest's
// checks, then that the metadata has not expired at now (now before
// Expires; error wraps ErrExpired, ReasonFirmwareExpired) and that the
// release lists model (ErrModel, ReasonFirmwareModel). It returns the
// verified manifest. Anti-rollback needs the device's counter: call
// CheckRollback next.
//
// A device whose clock is far behind accepts releases that expired; the
// expiry bounds a freeze attack only as well as the device knows the time.
func Release(raw []byte, bundles [][]byte, trust *TrustSet, now time.Time, model string) (*Verified, error) {
	v, err := Manifest(raw, bundles, trust)
	if err != nil {
		return nil, err
	}
	m := v.Manifest
	if m.Expired(now) {
		return nil, wire.Refuse(wire.ReasonFirmwareExpired, "release metadata expired",
			fmt.Errorf("%w: %s %s expired at %s, now %s", ErrExpired, m.Name, m.Version,
				m.Expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339)))
	}
	if !m.Compatible(model) {
		return nil, wire.Refuse(wire.ReasonFirmwareModel, "release not built for this hardware model",
			fmt.Errorf("%w: model %q not in %q", ErrModel, model, m.Models))
	}
	return v, nil
}

// CheckRollback refuses the release when its security version is below
// floor, the device's anti-rollback counter (ErrRollback,
// ReasonFirmwareRollback). Equal is allowed: reinstalling or updating
// within one security version.
func (v *Verified) CheckRollback(floor uint64) error {
	if v.Manifest.SecurityVersion < floor {
		return wire.Refuse(wire.ReasonFirmwareRollback, "release security version below the anti-rollback counter",
			fmt.Errorf("%w: security version %d, floor %d", ErrRollback, v.Manifest.SecurityVersion, floor))
	}
	return nil
}

// Image reads r to its end and checks that it is exactly the image m
// describes: m.Size bytes whose SHA-256 is m.SHA256. A short read
// (truncated download), a longer one or another digest is a *wire.Error
// wrapping ErrImage (ReasonFirmwareDigest); it reads at most m.Size+1
// bytes. A read error is returned wrapped, as is.
func Image(r io.Reader, m *manifest.Manifest) error {
	c := NewImageCheck(m)
	if _, err := io.Copy(c, io.LimitReader(r, m.Size+1)); err != nil {
		return fmt.Errorf("verify: read image: %w", err)
	}
	return c.Verify()
}

// ImageCheck hashes an image as it is written (for example tee'd from the
// download into the inactive slot) and compares it with the manifest at
// the end. Write never fails; Verify reports.
type ImageCheck struct {
	m *manifest.Manifest
	h hash.Hash
	n int64
}

// NewImageCheck returns a check for the image m describes.
func NewImageCheck(m *manifest.Manifest) *ImageCheck {
	return &ImageCheck{m: m, h: sha256.New()}
}

// Write hashes p.
func (c *ImageCheck) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

// Verify checks the bytes written so far against the manifest's size and
// digest; errors are *wire.Error values wrapping ErrImage
// (ReasonFirmwareDigest).
func (c *ImageCheck) Verify() error {
	switch {
	case c.n < c.m.Size:
		return wire.Refuse(wire.ReasonFirmwareDigest, "image shorter than the manifest says",
			fmt.Errorf("%w: %d of %d bytes (truncated)", ErrImage, c.n, c.m.Size))
	case c.n > c.m.Size:
		return wire.Refuse(wire.ReasonFirmwareDigest, "image longer than the manifest says",
			fmt.Errorf("%w: more than %d bytes", ErrImage, c.m.Size))
	}
	if subtle.ConstantTimeCompare(c.h.Sum(nil), c.m.SHA256[:]) != 1 {
		return wire.Refuse(wire.ReasonFirmwareDigest, "image digest differs from the manifest",
			fmt.Errorf("%w: SHA-256 differs", ErrImage))
	}
	return nil
}

// Package manifest is a firmware release's manifest: what the image is,
// which hardware it is for, how to recognise it (size and SHA-256), until
// when the release metadata may be trusted, its security version for
// anti-rollback, and what a device measures once it runs it.
//
// # Canonical form
//
// The manifest is the message that release keys sign, so its bytes, not a
// re-encoding, are what a signature covers. Marshal writes the one canonical
// form and Parse accepts only that form: compact JSON (no insignificant
// white space, no trailing newline), the fields in the order of Manifest
// with "type" first, optional fields left out when empty, map keys in the
// order encoding/json sorts them, the expiry as RFC 3339 in UTC with whole
// seconds, and the image digest as lowercase hex. For example:
//
//	{"type":"sigil.firmware.manifest/v1","name":"gateway-os","version":"2.4.1","security_version":7,"models":["gw-100"],"size":1048576,"sha256":"9f86…","expires":"2027-01-01T00:00:00Z"}
//
// A release may bind its software bill of materials by digest:
// "sbom":{"format":"cyclonedx+json","sha256":"…"} (see SBOM), and, last,
// the block-hash index of its image: "blocks":{"block_size":65536,"sha256":"…"}
// (see Blocks).
//
// Requiring the canonical form gives every manifest exactly one meaning:
// duplicate keys, keys that differ only in case (which encoding/json would
// otherwise fold together), unknown fields, numbers written as 1e3 or 07 and
// trailing data are all refused, so a device and the fleet can never read
// different values from the same signed bytes.
//
// The "type" field separates manifests from the other statements release
// keys sign (trust-set rotations in firmware/verify): one signed message can
// never be read as the other.
//
// This package is used on devices: it imports the standard library only.
package manifest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/firmware/blockindex"
)

// Type is the value of the "type" field of every manifest.
const Type = "sigil.firmware.manifest/v1"

// Bounds enforced by Parse and Validate.
const (
	MaxSize         = 64 << 10 // bytes of an encoded manifest
	MaxModels       = 64       // entries in Models
	MaxLabel        = 64       // bytes of the name and of each model
	MaxVersion      = 128      // bytes of the version
	MaxImageSize    = 1 << 40  // bytes of an image (1 TiB)
	MaxEventDigests = 64       // event digests per PCR
	NumPCRs         = 24       // PCR indexes 0 to NumPCRs-1
)

// ErrInvalid is wrapped by every error of Parse, Validate and Marshal.
var ErrInvalid = errors.New("manifest: invalid")

// Manifest describes one firmware release.
type Manifest struct {
	// Name of the firmware product: 1-64 characters of [a-z0-9._-], not
	// starting with '.' or '-'.
	Name string
	// Version is a Semantic Versioning 2.0.0 version without a "v" prefix,
	// e.g. "2.4.1" or "3.0.0-rc.1+build.5". For people and campaign
	// selection; anti-rollback uses SecurityVersion.
	Version string
	// SecurityVersion is the monotonic anti-rollback number. A device
	// refuses a release whose SecurityVersion is below the value of its TPM
	// counter and raises the counter to it after committing the release.
	SecurityVersion uint64
	// Models lists the hardware models the image is built for (at least
	// one; 1-64 printable ASCII characters each, no leading or trailing
	// space, no duplicates). A device installs the release only when its
	// own model is listed, byte for byte.
	Models []string
	// Size of the image in bytes, 1 to MaxImageSize.
	Size int64
	// SHA256 is the image digest.
	SHA256 [32]byte
	// Expires ends the validity of the release metadata: after it, devices
	// refuse the release, so an attacker who withholds newer releases
	// (freeze) can keep a device on an old one only until then. Re-sign
	// the same release with a later expiry to extend it. Marshal writes it
	// in UTC and drops fractions of a second.
	Expires time.Time
	// Measurements expected after the image is installed and booted; nil
	// when the release states none.
	Measurements *Measurements
	// SBOM binds the release's software bill of materials by digest, so
	// that the components the fleet lists for a release are those its
	// signers vouched for; nil when the release carries none. Devices do
	// not read it. A manifest with an SBOM is refused by devices older
	// than the field (their parser takes no unknown field); one without is
	// encoded as before, so manifests signed earlier verify unchanged.
	SBOM *SBOM
	// Blocks binds the block-hash index of the image (firmware/blockindex)
	// by the index file's digest and block size, so that a device can
	// fetch only the blocks it lacks (adaptive update) trusting each block
	// hash as much as the image digest; nil when the release has none. As
	// with SBOM, devices older than the field refuse a manifest that has
	// it (their parser takes no unknown field): sign such a release
	// without the index for them. One without is encoded as before.
	Blocks *Blocks
}

// Blocks is the binding of a release's block-hash index.
type Blocks struct {
	// BlockSize in bytes: a power of two from blockindex.MinBlockSize to
	// blockindex.MaxBlockSize, with at most blockindex.MaxBlocks blocks.
	BlockSize int64
	// SHA256 is the digest of the index file, byte for byte.
	SHA256 [32]byte
}

// SBOM formats a manifest may name.
const (
	SBOMCycloneDX = "cyclonedx+json" // CycloneDX JSON, any 1.x specification version
	SBOMSPDX      = "spdx+json"      // SPDX 2.x JSON
)

// SBOM is the digest of a release's software bill of materials file.
type SBOM struct {
	// Format is SBOMCycloneDX or SBOMSPDX.
	Format string
	// SHA256 is the digest of the SBOM file, byte for byte.
	SHA256 [32]byte
}

// Measurements are what a device running the release measures, known before
// any device runs it, so that the fleet's attestation policy for the new
// version can be prepared and an update is not mistaken for a compromise.
// Their shapes are those of fleet/policy's reference values.
type Measurements struct {
	// PCRs maps a bank ("sha1", "sha256", "sha384", "sha512") to a PCR
	// index (0-23) to the expected PCR value, lowercase hex of the bank's
	// digest size.
	PCRs map[string]map[int]string
	// EventDigests maps a PCR index (0-23) to the SHA-256 digests (lowercase
	// hex) of the measured-boot events the release brings on that PCR, e.g.
	// its kernel and boot loader images; 1 to MaxEventDigests per PCR, no
	// duplicates.
	EventDigests map[int][]string
}

// bankSize is the digest size in bytes of each PCR bank a manifest may name.
var bankSize = map[string]int{"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

// encoded is the JSON shape of a manifest; its field order is the
// canonical order.
type encoded struct {
	Type            string           `json:"type"`
	Name            string           `json:"name"`
	Version         string           `json:"version"`
	SecurityVersion uint64           `json:"security_version"`
	Models          []string         `json:"models"`
	Size            int64            `json:"size"`
	SHA256          string           `json:"sha256"`
	Expires         string           `json:"expires"`
	Measurements    *encodedMeasures `json:"measurements,omitempty"`
	SBOM            *encodedSBOM     `json:"sbom,omitempty"`
	Blocks          *encodedBlocks   `json:"blocks,omitempty"`
}

type encodedBlocks struct {
	BlockSize int64  `json:"block_size"`
	SHA256    string `json:"sha256"`
}

type encodedSBOM struct {
	Format string `json:"format"`
	SHA256 string `json:"sha256"`
}

type encodedMeasures struct {
	PCRs         map[string]map[int]string `json:"pcrs,omitempty"`
	EventDigests map[int][]string          `json:"event_digests,omitempty"`
}

// Parse decodes and validates a manifest in canonical form. Every error
// wraps ErrInvalid.
func Parse(b []byte) (*Manifest, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrInvalid, len(b), MaxSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var e encoded
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the manifest", ErrInvalid)
	}
	if e.Type != Type {
		return nil, fmt.Errorf("%w: type %q is not %q", ErrInvalid, e.Type, Type)
	}
	m := &Manifest{
		Name:            e.Name,
		Version:         e.Version,
		SecurityVersion: e.SecurityVersion,
		Models:          e.Models,
		Size:            e.Size,
	}
	var errs []error
	if d, err := hex.DecodeString(e.SHA256); err != nil || len(d) != len(m.SHA256) {
		errs = append(errs, errors.New("sha256 is not 64 hex digits"))
	} else {
		copy(m.SHA256[:], d)
	}
	if t, err := time.Parse(time.RFC3339, e.Expires); err != nil {
		errs = append(errs, fmt.Errorf("expires is not an RFC 3339 time: %q", e.Expires))
	} else {
		m.Expires = t
	}
	if e.Measurements != nil {
		m.Measurements = &Measurements{PCRs: e.Measurements.PCRs, EventDigests: e.Measurements.EventDigests}
	}
	if e.SBOM != nil {
		m.SBOM = &SBOM{Format: e.SBOM.Format}
		if d, err := hex.DecodeString(e.SBOM.SHA256); err != nil || len(d) != len(m.SBOM.SHA256) {
			errs = append(errs, errors.New("sbom: sha256 is not 64 hex digits"))
		} else {
			copy(m.SBOM.SHA256[:], d)
		}
	}
	if e.Blocks != nil {
		m.Blocks = &Blocks{BlockSize: e.Blocks.BlockSize}
		if d, err := hex.DecodeString(e.Blocks.SHA256); err != nil || len(d) != len(m.Blocks.SHA256) {
			errs = append(errs, errors.New("blocks: sha256 is not 64 hex digits"))
		} else {
			copy(m.Blocks.SHA256[:], d)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	canon, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(canon, b) {
		return nil, fmt.Errorf("%w: not in canonical form (re-encode it with Marshal before signing)", ErrInvalid)
	}
	return m, nil
}

// Marshal validates m and returns its canonical encoding: the bytes to sign.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	e := encoded{
		Type:            Type,
		Name:            m.Name,
		Version:         m.Version,
		SecurityVersion: m.SecurityVersion,
		Models:          m.Models,
		Size:            m.Size,
		SHA256:          hex.EncodeToString(m.SHA256[:]),
		Expires:         m.Expires.UTC().Format(time.RFC3339),
	}
	if ms := m.Measurements; ms != nil && (len(ms.PCRs) > 0 || len(ms.EventDigests) > 0) {
		e.Measurements = &encodedMeasures{PCRs: ms.PCRs, EventDigests: ms.EventDigests}
	}
	if m.SBOM != nil {
		e.SBOM = &encodedSBOM{Format: m.SBOM.Format, SHA256: hex.EncodeToString(m.SBOM.SHA256[:])}
	}
	if m.Blocks != nil {
		e.Blocks = &encodedBlocks{BlockSize: m.Blocks.BlockSize, SHA256: hex.EncodeToString(m.Blocks.SHA256[:])}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&e); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	out := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(out) > MaxSize {
		return nil, fmt.Errorf("%w: encoding is %d bytes, more than %d", ErrInvalid, len(out), MaxSize)
	}
	return out, nil
}

// Validate checks every field and reports all problems at once
// (errors.Join); the result wraps ErrInvalid.
func (m *Manifest) Validate() error {
	var errs []error
	if !validName(m.Name) {
		errs = append(errs, fmt.Errorf("name %q is not 1-%d characters of [a-z0-9._-] starting with a letter, digit or _", m.Name, MaxLabel))
	}
	if _, err := ParseVersion(m.Version); err != nil {
		errs = append(errs, err)
	}
	switch {
	case len(m.Models) == 0:
		errs = append(errs, errors.New("models: at least one model is required"))
	case len(m.Models) > MaxModels:
		errs = append(errs, fmt.Errorf("models: %d entries, at most %d", len(m.Models), MaxModels))
	default:
		for i, model := range m.Models {
			if !validModel(model) {
				errs = append(errs, fmt.Errorf("models[%d] %q is not 1-%d printable ASCII characters without leading or trailing space", i, model, MaxLabel))
			} else if slices.Index(m.Models, model) != i {
				errs = append(errs, fmt.Errorf("models[%d] %q is listed twice", i, model))
			}
		}
	}
	if m.Size < 1 || m.Size > MaxImageSize {
		errs = append(errs, fmt.Errorf("size %d is not between 1 and %d", m.Size, int64(MaxImageSize)))
	}
	if m.SHA256 == [32]byte{} {
		errs = append(errs, errors.New("sha256 is missing"))
	}
	if m.Expires.IsZero() {
		errs = append(errs, errors.New("expires is missing"))
	} else if y := m.Expires.UTC().Year(); y < 1970 || y > 9999 {
		errs = append(errs, fmt.Errorf("expires year %d is outside 1970-9999", y))
	}
	if m.Measurements != nil {
		errs = append(errs, m.Measurements.validate())
	}
	if m.SBOM != nil {
		if m.SBOM.Format != SBOMCycloneDX && m.SBOM.Format != SBOMSPDX {
			errs = append(errs, fmt.Errorf("sbom: format %q (want %s or %s)", m.SBOM.Format, SBOMCycloneDX, SBOMSPDX))
		}
		if m.SBOM.SHA256 == [32]byte{} {
			errs = append(errs, errors.New("sbom: sha256 is missing"))
		}
	}
	if m.Blocks != nil {
		if err := blockindex.CheckGeometry(m.Blocks.BlockSize, max(m.Size, 1)); err != nil {
			errs = append(errs, fmt.Errorf("blocks: %w", err))
		}
		if m.Blocks.SHA256 == [32]byte{} {
			errs = append(errs, errors.New("blocks: sha256 is missing"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func (ms *Measurements) validate() error {
	var errs []error
	for bank, pcrs := range ms.PCRs {
		size, ok := bankSize[bank]
		if !ok {
			errs = append(errs, fmt.Errorf("measurements: unknown PCR bank %q (want sha1, sha256, sha384 or sha512)", bank))
			continue
		}
		if len(pcrs) == 0 {
			errs = append(errs, fmt.Errorf("measurements: bank %s lists no PCR", bank))
		}
		for pcr, value := range pcrs {
			if pcr < 0 || pcr >= NumPCRs {
				errs = append(errs, fmt.Errorf("measurements: %s PCR %d is not between 0 and %d", bank, pcr, NumPCRs-1))
			}
			if !lowerHex(value, size) {
				errs = append(errs, fmt.Errorf("measurements: %s PCR %d value is not %d lowercase hex digits", bank, pcr, 2*size))
			}
		}
	}
	for pcr, digests := range ms.EventDigests {
		if pcr < 0 || pcr >= NumPCRs {
			errs = append(errs, fmt.Errorf("measurements: event digests for PCR %d, not between 0 and %d", pcr, NumPCRs-1))
		}
		if len(digests) == 0 || len(digests) > MaxEventDigests {
			errs = append(errs, fmt.Errorf("measurements: PCR %d has %d event digests, want 1 to %d", pcr, len(digests), MaxEventDigests))
		}
		for i, d := range digests {
			if !lowerHex(d, 32) {
				errs = append(errs, fmt.Errorf("measurements: PCR %d event digest %d is not 64 lowercase hex digits", pcr, i))
			} else if slices.Index(digests, d) != i {
				errs = append(errs, fmt.Errorf("measurements: PCR %d event digest %d is listed twice", pcr, i))
			}
		}
	}
	return errors.Join(errs...)
}

// Compatible reports whether the release is built for model.
func (m *Manifest) Compatible(model string) bool {
	return model != "" && slices.Contains(m.Models, model)
}

// Expired reports whether the release metadata has expired at now: now is
// at or after Expires.
func (m *Manifest) Expired(now time.Time) bool {
	return !now.Before(m.Expires)
}

// validName: 1-64 of [a-z0-9._-], not starting with '.' or '-'.
func validName(s string) bool {
	if len(s) == 0 || len(s) > MaxLabel || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validModel: 1-64 printable ASCII characters, no leading or trailing space.
func validModel(s string) bool {
	if len(s) == 0 || len(s) > MaxLabel || s[0] == ' ' || s[len(s)-1] == ' ' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// lowerHex reports whether s is exactly size bytes in lowercase hex.
func lowerHex(s string, size int) bool {
	if len(s) != 2*size {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

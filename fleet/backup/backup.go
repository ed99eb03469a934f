// Package backup writes and restores encrypted snapshots of a fleet's data
// directory: every bbolt store (each copied inside its own read
// transaction), the CA, the audit, SSH and secrets keys, the admin token
// and firmware images.
//
// An archive is a tar stream encrypted as a whole with age
// (filippo.io/age) to a recipient the operator chooses: a passphrase
// (scrypt) or an X25519 public key. Its last entry is the manifest
// (Manifest: format version, time, trust domain, each file's size and
// SHA-256). Nothing in the archive is ever written unencrypted by Create;
// Restore writes the files only into a new directory beside the target,
// checks every hash against the manifest and the audit chain, and renames
// that directory into place only when everything verified.
//
// A running fleet backs itself up with Live (POST /api/v1/backup): it
// copies each store through the handle it holds (boltdb.Held), inside one
// read transaction, and encrypts the archive to the age public keys the
// request names; the offline Create of `sigil backup` refuses a store
// another process holds (ErrRunning).
//
// With PostgreSQL (database_url) the stores that live in the database are
// not in the data directory: an archive then carries the key material and
// the remaining files, and the database is dumped with pg_dump (see
// docs/DEPLOY.md).
package backup

import (
	"errors"
	"time"
)

// Version is the archive format's version, recorded in the manifest.
const Version = 1

// ManifestName is the manifest's name in the archive: its last entry.
const ManifestName = "MANIFEST.json"

// Errors. Compare with errors.Is.
var (
	// ErrRunning: a store is held by a running fleet; stop it first.
	ErrRunning = errors.New("backup: a store is in use by a running fleet (stop it first)")
	// ErrKey: the archive is not encrypted to the identity given.
	ErrKey = errors.New("backup: the archive is not encrypted to this key or passphrase")
	// ErrCorrupt: the archive was changed, truncated or is malformed, or
	// its files do not match its manifest.
	ErrCorrupt = errors.New("backup: archive corrupt or tampered with")
	// ErrVersion: the archive's format version is not one this build reads.
	ErrVersion = errors.New("backup: unsupported archive version")
	// ErrNotEmpty: the restore target exists and is not an empty directory.
	ErrNotEmpty = errors.New("backup: restore target is not empty")
	// ErrAudit: the restored audit log does not verify.
	ErrAudit = errors.New("backup: restored audit log does not verify")
)

// Manifest describes an archive's files.
type Manifest struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	// TrustDomain is the fleet's, when the caller knew it.
	TrustDomain string `json:"trust_domain,omitempty"`
	// Database is true when the fleet kept stores in PostgreSQL: those are
	// not in the archive (pg_dump them).
	Database bool   `json:"database,omitempty"`
	Files    []File `json:"files"`
}

// File is one regular file of the archive, relative to the data directory
// (slash-separated).
type File struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // hex
}

// Limits on an archive, checked before anything is trusted.
const (
	maxFiles    = 100000
	maxPath     = 512
	maxManifest = 32 << 20
)

package backup

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"
	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
)

// Options configures Create.
type Options struct {
	// TrustDomain is recorded in the manifest ("" records none).
	TrustDomain string
	// Database records that the fleet keeps stores in PostgreSQL.
	Database bool
	// Now is the clock for Manifest.Created; nil means time.Now.
	Now func() time.Time
	// LockTimeout bounds the wait for each store's file lock; zero means
	// 1 second. A store still locked after it is ErrRunning.
	LockTimeout time.Duration
}

// Create writes an archive of dataDir to w, encrypted to the recipients
// (at least one), and returns its manifest. Each file named *.db is a
// bbolt store, copied inside one read transaction (consistent even if
// written to since); it fails with ErrRunning while a fleet holds one. On
// error what was written to w is not a valid archive (its end is
// missing): the caller discards it.
func Create(ctx context.Context, w io.Writer, dataDir string, to []age.Recipient, o Options) (Manifest, error) {
	if len(to) == 0 {
		return Manifest{}, errors.New("backup: no recipient")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	enc, err := age.Encrypt(w, to...)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: encrypt: %w", err)
	}
	tw := tar.NewWriter(enc)
	m := Manifest{Version: Version, Created: o.Now().UTC().Truncate(time.Second), TrustDomain: o.TrustDomain, Database: o.Database}
	err = filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil // directories are implied; sockets and links are not data
		}
		rel, err := filepath.Rel(dataDir, path)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if name == ManifestName {
			return fmt.Errorf("backup: %s: reserved name in the data directory", path)
		}
		f, err := addFile(tw, path, name, o)
		if err != nil {
			return err
		}
		m.Files = append(m.Files, f)
		return nil
	})
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: manifest: %w", err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: ManifestName, Mode: 0o600, Size: int64(len(raw)), ModTime: m.Created, Format: tar.FormatPAX}); err != nil {
		return Manifest{}, fmt.Errorf("backup: manifest: %w", err)
	}
	if _, err := tw.Write(raw); err != nil {
		return Manifest{}, fmt.Errorf("backup: manifest: %w", err)
	}
	if err := tw.Close(); err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	if err := enc.Close(); err != nil {
		return Manifest{}, fmt.Errorf("backup: encrypt: %w", err)
	}
	return m, nil
}

// addFile writes one file to tw: a bbolt store from a read transaction,
// any other file as it is.
func addFile(tw *tar.Writer, path, name string, o Options) (File, error) {
	h := sha256.New()
	if strings.HasSuffix(name, ".db") {
		db, err := boltdb.OpenReadOnly(path, boltdb.Options{Name: "backup", Timeout: o.LockTimeout, Locked: ErrRunning})
		if err != nil {
			return File{}, err
		}
		defer db.Close()
		var size int64
		err = db.View(func(tx *bolt.Tx) error {
			size = tx.Size()
			if err := tw.WriteHeader(header(name, size, 0o600)); err != nil {
				return err
			}
			_, err := tx.WriteTo(io.MultiWriter(tw, h))
			return err
		})
		if err != nil {
			return File{}, fmt.Errorf("%s: %w", name, err)
		}
		return file(name, size, h), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return File{}, err
	}
	if err := tw.WriteHeader(header(name, fi.Size(), fi.Mode().Perm()&0o644)); err != nil {
		return File{}, err
	}
	n, err := io.Copy(io.MultiWriter(tw, h), io.LimitReader(f, fi.Size()))
	if err != nil {
		return File{}, fmt.Errorf("%s: %w", name, err)
	}
	if n != fi.Size() {
		return File{}, fmt.Errorf("%s: changed while copied", name)
	}
	return file(name, n, h), nil
}

// header describes a regular file; mode keeps at most read bits for others
// (public certificates), never write or execute.
func header(name string, size int64, mode fs.FileMode) *tar.Header {
	return &tar.Header{Name: name, Mode: int64(mode | 0o600), Size: size, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
}

func file(name string, size int64, h hash.Hash) File {
	return File{Path: name, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}
}

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

	"github.com/sigil-iot/sigil/fleet/audit"
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
	// BeforeAudit, when set, runs just before the audit log is copied:
	// a live backup signs a checkpoint there (Live), so that the copy
	// ends with a signature over every entry recorded until then.
	BeforeAudit func(ctx context.Context) error
}

// Create writes an archive of dataDir to w, encrypted to the recipients
// (at least one), and returns its manifest. Each file named *.db is a
// bbolt store, copied inside one read transaction (consistent even if
// written to since): through the handle of this process when it holds the
// store (boltdb.Held: a running fleet backing itself up, Live), else
// opened read-only, which fails with ErrRunning while another process (a
// running fleet) holds it. The stores are copied first, the audit log
// last among them, then the other files (keys, certificates, images):
// every certificate the inventory's copy names was issued by a CA
// generation the copy of ca/ holds. Files whose name begins with a dot
// are the fleet's temporary files (written, then renamed into place) and
// are left out, as is a file removed between listing and copying. On
// error what was written to w is not a valid archive (its end is
// missing): the caller discards it.
func Create(ctx context.Context, w io.Writer, dataDir string, to []age.Recipient, o Options) (Manifest, error) {
	if len(to) == 0 {
		return Manifest{}, errors.New("backup: no recipient")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	names, err := list(ctx, dataDir)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	enc, err := age.Encrypt(w, to...)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: encrypt: %w", err)
	}
	tw := tar.NewWriter(enc)
	m := Manifest{Version: Version, Created: o.Now().UTC().Truncate(time.Second), TrustDomain: o.TrustDomain, Database: o.Database}
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return Manifest{}, fmt.Errorf("backup: %w", err)
		}
		if name == audit.File && o.BeforeAudit != nil {
			if err := o.BeforeAudit(ctx); err != nil {
				return Manifest{}, fmt.Errorf("backup: %w", err)
			}
		}
		f, err := addFile(tw, filepath.Join(dataDir, filepath.FromSlash(name)), name, o)
		if errors.Is(err, errGone) {
			continue
		}
		if err != nil {
			return Manifest{}, fmt.Errorf("backup: %w", err)
		}
		m.Files = append(m.Files, f)
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

// list returns the regular files under dataDir (slash-separated, relative)
// in the order Create copies them: the stores, the audit log, the rest.
func list(ctx context.Context, dataDir string) ([]string, error) {
	var stores, files []string
	hasAudit := false
	err := filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") && path != dataDir {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil // a temporary file, renamed into place when complete
		}
		if !d.Type().IsRegular() {
			return nil // directories are implied; sockets and links are not data
		}
		rel, err := filepath.Rel(dataDir, path)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		switch {
		case name == ManifestName:
			return fmt.Errorf("%s: reserved name in the data directory", path)
		case name == audit.File:
			hasAudit = true
		case strings.HasSuffix(name, ".db"):
			stores = append(stores, name)
		default:
			files = append(files, name)
		}
		return nil
	})
	if hasAudit {
		stores = append(stores, audit.File)
	}
	return append(stores, files...), err
}

// errGone: the file was removed after list saw it.
var errGone = errors.New("backup: file removed while backed up")

// addFile writes one file to tw: a bbolt store from a read transaction,
// any other file as it is.
func addFile(tw *tar.Writer, path, name string, o Options) (File, error) {
	h := sha256.New()
	if strings.HasSuffix(name, ".db") {
		db := boltdb.Held(path)
		if db == nil {
			ro, err := boltdb.OpenReadOnly(path, boltdb.Options{Name: "backup", Timeout: o.LockTimeout, Locked: ErrRunning})
			if errors.Is(err, fs.ErrNotExist) {
				return File{}, errGone
			}
			if err != nil {
				return File{}, err
			}
			defer ro.Close()
			db = ro
		}
		var size int64
		err := db.View(func(tx *bolt.Tx) error {
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
	if errors.Is(err, fs.ErrNotExist) {
		return File{}, errGone
	}
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

package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"filippo.io/age"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/ca"
)

// Result is what Restore restored and checked.
type Result struct {
	Manifest Manifest
	// Audit is the restored audit log's verification; AuditChecked is
	// false when the archive holds no audit log (it lives in PostgreSQL).
	Audit        audit.Report
	AuditChecked bool
}

// Restore decrypts the archive r with the identities and restores it into
// target, which must not exist or be an empty directory (ErrNotEmpty).
// Checks, in order: the archive decrypts (ErrKey) and authenticates to its
// end (ErrCorrupt: changed or truncated); each entry is a regular file
// with a clean relative name, listed once; the manifest is the last entry,
// of a known Version (ErrVersion), and lists exactly the files read with
// their sizes and SHA-256 (ErrCorrupt); the audit log, when present,
// verifies against its key (ErrAudit). The files are written into a new
// directory beside target and renamed into place only once every check
// passed: on error nothing is left.
func Restore(ctx context.Context, r io.Reader, target string, ids ...age.Identity) (res Result, err error) {
	if err := checkTarget(target); err != nil {
		return Result{}, err
	}
	parent := filepath.Dir(filepath.Clean(target))
	tmp, err := os.MkdirTemp(parent, ".sigil-restore-*")
	if err != nil {
		return Result{}, fmt.Errorf("backup: restore: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	dec, err := age.Decrypt(r, ids...)
	var nomatch *age.NoIdentityMatchError
	if errors.As(err, &nomatch) {
		return Result{}, fmt.Errorf("%w: %w", ErrKey, err)
	}
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	m, err := extract(dec, dirSink(tmp))
	if err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	res.Manifest = m
	res.Audit, res.AuditChecked, err = verifyAudit(ctx, tmp)
	if err != nil {
		return Result{}, err
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Result{}, fmt.Errorf("backup: restore: %w", err)
	}
	if err := os.Rename(tmp, target); err != nil {
		return Result{}, fmt.Errorf("backup: restore: %w", err)
	}
	return res, nil
}

// checkTarget accepts a missing path or an empty directory.
func checkTarget(target string) error {
	entries, err := os.ReadDir(target)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNotEmpty, target, err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("%w: %s", ErrNotEmpty, target)
	}
	return nil
}

// sink receives the files extract reads.
type sink interface {
	// create makes the new file name (valid, slash-separated) with mode.
	create(name string, mode fs.FileMode) (io.WriteCloser, error)
}

// dirSink writes the files under a directory, parents 0700; a name that
// exists already is an error.
type dirSink string

func (d dirSink) create(name string, mode fs.FileMode) (io.WriteCloser, error) {
	p := filepath.Join(string(d), filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	return os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
}

// extract reads the decrypted tar stream r into out (which the caller
// discards on error) and returns the verified manifest. r is untrusted:
// every name, type, size and hash is checked.
func extract(r io.Reader, out sink) (Manifest, error) {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
	tr := tar.NewReader(r)
	got := map[string]File{}
	var manifest []byte
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Manifest{}, corrupt("%v", err)
		}
		if manifest != nil {
			return Manifest{}, corrupt("an entry after the manifest")
		}
		if h.Typeflag != tar.TypeReg {
			return Manifest{}, corrupt("entry %q is not a regular file", h.Name)
		}
		if h.Name == ManifestName {
			if h.Size < 0 || h.Size > maxManifest {
				return Manifest{}, corrupt("manifest of %d bytes", h.Size)
			}
			manifest, err = io.ReadAll(tr)
			if err != nil {
				return Manifest{}, corrupt("manifest: %v", err)
			}
			continue
		}
		if !validName(h.Name) {
			return Manifest{}, corrupt("entry name %q", h.Name)
		}
		if _, dup := got[h.Name]; dup {
			return Manifest{}, corrupt("entry %q twice", h.Name)
		}
		if len(got) >= maxFiles {
			return Manifest{}, corrupt("more than %d files", maxFiles)
		}
		f, err := writeFile(out, h, tr)
		if err != nil {
			return Manifest{}, err
		}
		got[h.Name] = f
	}
	// The tar end marker came from an authenticated chunk; reading on to
	// the end makes age check that nothing was cut or appended after it.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return Manifest{}, corrupt("%v", err)
	}
	if manifest == nil {
		return Manifest{}, corrupt("no manifest")
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(manifest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, corrupt("manifest: %v", err)
	}
	if m.Version != Version {
		return Manifest{}, fmt.Errorf("%w: %d (this build reads %d)", ErrVersion, m.Version, Version)
	}
	if len(m.Files) != len(got) {
		return Manifest{}, corrupt("the manifest lists %d files, the archive holds %d", len(m.Files), len(got))
	}
	for _, want := range m.Files {
		have, ok := got[want.Path]
		if !ok {
			return Manifest{}, corrupt("%q is in the manifest, not in the archive", want.Path)
		}
		if have != want {
			return Manifest{}, corrupt("%q does not match its manifest entry", want.Path)
		}
		delete(got, want.Path) // a path listed twice is then missing
	}
	return m, nil
}

// validName accepts a clean, relative, slash-separated path.
func validName(name string) bool {
	if name == "" || len(name) > maxPath || strings.HasPrefix(name, "/") || strings.ContainsAny(name, "\\\x00") {
		return false
	}
	if path.Clean(name) != name || name == "." || name == ".." || strings.HasPrefix(name, "../") {
		return false
	}
	return filepath.IsLocal(filepath.FromSlash(name))
}

// writeFile writes one entry to out (the entry's read bits, never write
// or execute for others) and hashes it.
func writeFile(out sink, h *tar.Header, r io.Reader) (File, error) {
	mode := fs.FileMode(h.Mode)&0o644 | 0o600
	w, err := out.create(h.Name, mode)
	if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTDIR) {
		// The name collides with a directory made for another entry
		// ("a" and "a/b"): the archive is malformed.
		return File{}, fmt.Errorf("%w: %q: %v", ErrCorrupt, h.Name, err)
	}
	if err != nil {
		return File{}, fmt.Errorf("backup: restore: %w", err)
	}
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, sum), r)
	if cerr := w.Close(); err == nil && cerr != nil {
		return File{}, fmt.Errorf("backup: restore: %w", cerr)
	}
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return File{}, fmt.Errorf("backup: restore: %w", err)
		}
		return File{}, fmt.Errorf("%w: %q: %v", ErrCorrupt, h.Name, err)
	}
	return File{Path: h.Name, Size: n, SHA256: hex.EncodeToString(sum.Sum(nil))}, nil
}

// verifyAudit verifies the restored audit log against its key, when the
// archive holds one.
func verifyAudit(ctx context.Context, dir string) (audit.Report, bool, error) {
	logPath := filepath.Join(dir, audit.File)
	if _, err := os.Stat(logPath); errors.Is(err, fs.ErrNotExist) {
		return audit.Report{}, false, nil
	}
	keyPath := filepath.Join(dir, audit.KeyFile)
	if _, err := os.Stat(keyPath); err != nil {
		return audit.Report{}, false, fmt.Errorf("%w: no %s beside %s", ErrAudit, audit.KeyFile, audit.File)
	}
	key, err := ca.FileSigner(keyPath)
	if err != nil {
		return audit.Report{}, false, fmt.Errorf("%w: %w", ErrAudit, err)
	}
	l, err := audit.Open(audit.Config{Path: logPath, Signer: key})
	if err != nil {
		return audit.Report{}, false, fmt.Errorf("%w: %w", ErrAudit, err)
	}
	defer l.Close()
	rep, err := l.VerifyStore(ctx, nil)
	if err != nil {
		return audit.Report{}, false, fmt.Errorf("%w: %w", ErrAudit, err)
	}
	return rep, true, nil
}

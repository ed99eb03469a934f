package firmware

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sigil-iot/sigil/firmware/blockindex"
	"github.com/sigil-iot/sigil/firmware/manifest"
)

// ErrBlockIndex is an upload whose manifest binds a block-hash index that
// is not the index of its image, or another index than the one the store
// already serves for that image (one block size per image).
var ErrBlockIndex = errors.New("firmware: block index does not match")

// indexPath is where the block index of the image with this digest is kept.
func (s *Store) indexPath(digest string) string {
	return filepath.Join(s.dir, ImagesDir, digest+blockindex.Suffix)
}

// ensureIndex builds, checks and keeps the block-hash index that m binds,
// from the stored image: the fleet serves the index it computed itself,
// and only when its digest is the one the release's signers signed. A
// manifest without an index needs nothing.
func (s *Store) ensureIndex(m *manifest.Manifest) error {
	if m.Blocks == nil {
		return nil
	}
	digest := hex.EncodeToString(m.SHA256[:])
	if held, err := os.ReadFile(s.indexPath(digest)); err == nil {
		if sha256.Sum256(held) != m.Blocks.SHA256 {
			return fmt.Errorf("%w: the image's index is already kept with another digest or block size", ErrBlockIndex)
		}
		return nil
	}
	f, err := s.OpenImage(digest)
	if err != nil {
		return err
	}
	index, err := blockindex.Build(f, m.Blocks.BlockSize)
	f.Close()
	if err != nil {
		return fmt.Errorf("firmware: block index: %w", err)
	}
	if sha256.Sum256(index) != m.Blocks.SHA256 {
		return fmt.Errorf("%w: the manifest's index digest is not the image's", ErrBlockIndex)
	}
	tmp, err := os.CreateTemp(filepath.Join(s.dir, ImagesDir), tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("firmware: block index: %w", err)
	}
	_, err = tmp.ReadFrom(bytes.NewReader(index))
	if err == nil && !s.noSync {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), s.indexPath(digest))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("firmware: block index: %w", err)
	}
	return nil
}

// openIndex opens the kept block index of the image with this digest.
func (s *Store) openIndex(digest string) (*os.File, error) {
	if !validDigest(digest) {
		return nil, fmt.Errorf("%w: image digest %q", ErrInvalid, digest)
	}
	f, err := os.Open(s.indexPath(digest))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no block index for %s", ErrNotFound, digest)
	}
	if err != nil {
		return nil, fmt.Errorf("firmware: %w", err)
	}
	return f, nil
}

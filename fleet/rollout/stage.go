package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/fleet/firmware"
)

// errStagedDigest refuses a staged image whose SHA-256 is not the one
// named.
var errStagedDigest = fmt.Errorf("%w: the image's SHA-256 differs from the one in the URL", firmware.ErrInvalid)

// StageImage streams an image into the staging directory, checking its
// SHA-256 against digest, for an upload of its release that follows. An
// image the store already holds is not kept again.
func (s *Service) StageImage(_ context.Context, digest string, body io.Reader) (int64, error) {
	if !validHexDigest(digest) {
		return 0, fmt.Errorf("%w: image digest must be 64 lowercase hex digits", firmware.ErrInvalid)
	}
	tmp, err := os.CreateTemp(s.staging, ".tmp-*")
	if err != nil {
		return 0, fmt.Errorf("rollout: stage image: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, nothing to remove
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(body, s.maxImage+1))
	if err == nil && n > s.maxImage {
		err = fmt.Errorf("%w: more than %d bytes", firmware.ErrTooLarge, s.maxImage)
	}
	if err == nil && n == 0 {
		err = fmt.Errorf("%w: empty image", firmware.ErrInvalid)
	}
	if err == nil && hex.EncodeToString(h.Sum(nil)) != digest {
		err = errStagedDigest
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(s.staging, digest))
	}
	if err != nil {
		return n, err
	}
	s.log.Info("firmware image staged", "image", digest, "bytes", n)
	return n, nil
}

// Upload stores a release through the store (which verifies everything);
// a nil image takes the staged image of the manifest's digest, if any, and
// removes it once the release is stored.
func (s *Service) Upload(ctx context.Context, who string, manifestJSON []byte, bundles [][]byte, image io.Reader) (*firmware.Release, error) {
	staged := ""
	if image == nil {
		if m, err := manifest.Parse(manifestJSON); err == nil {
			p := filepath.Join(s.staging, hex.EncodeToString(m.SHA256[:]))
			if file, err := os.Open(p); err == nil {
				defer file.Close()
				image, staged = file, p
			}
		}
	}
	r, err := s.store.Upload(ctx, who, manifestJSON, bundles, image)
	if err == nil && staged != "" {
		if err := os.Remove(staged); err != nil {
			s.log.Warn("staged image not removed", "file", staged, "err", err)
		}
	}
	return r, err
}

// removeOldStaged removes staged images older than stagedMaxAge and
// temporary files a crash left.
func (s *Service) removeOldStaged() {
	entries, err := os.ReadDir(s.staging)
	if err != nil {
		return
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue
		}
		if strings.HasPrefix(e.Name(), ".tmp-") || s.now().Sub(info.ModTime()) > stagedMaxAge {
			_ = os.Remove(filepath.Join(s.staging, e.Name()))
		}
	}
}

func validHexDigest(s string) bool {
	return len(s) == 64 && strings.Trim(s, "0123456789abcdef") == ""
}

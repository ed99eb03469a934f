package firmware

import (
	"context"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/firmware/blockindex"
)

// DownloadPrefix is the path under which Handler serves images:
// DownloadPrefix + the image's SHA-256 in lowercase hex.
const DownloadPrefix = "/firmware/"

// AuthorizeFunc decides whether the device behind r, identified by its
// verified client certificate (r.TLS.VerifiedChains[0][0]), may download
// the image with this SHA-256 (lowercase hex); typically: the device is a
// target of a running campaign for a release with that image. A nil error
// allows the download.
type AuthorizeFunc func(r *http.Request, digest string) error

// Handler returns the device download endpoint, GET or HEAD
// DownloadPrefix{sha256}, with range requests (resume). Mount it at
// DownloadPrefix on the fleet's mTLS listener, whose tls.Config verifies
// client certificates (tls.VerifyClientCertIfGiven or stricter). A request
// is answered with:
//
//   - 401 without a client certificate verified by the TLS layer;
//   - 403 when authorize is nil or refuses the device;
//   - 404 for a malformed digest, or an image that belongs to no offerable
//     release (approved, not withdrawn, signed, not expired);
//   - 405 for other methods;
//   - 200 or 206 with the image (application/octet-stream, ETag of the
//     digest, so If-Range works).
//
// DownloadPrefix{sha256}.blocks serves the image's block-hash index
// (firmware/blockindex) the same way, to the same devices, when an upload
// of a release binding one kept it (404 otherwise).
//
// The path alone grants nothing; authorize runs before anything about the
// image is revealed.
func (s *Store) Handler(authorize AuthorizeFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
			http.Error(w, "client certificate required", http.StatusUnauthorized)
			return
		}
		device := r.TLS.VerifiedChains[0][0].Subject.CommonName
		digest, ok := strings.CutPrefix(r.URL.Path, DownloadPrefix)
		digest, index := strings.CutSuffix(digest, blockindex.Suffix)
		if !ok || !validDigest(digest) {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if authorize == nil {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if err := authorize(r, digest); err != nil {
			s.log.Info("firmware: download refused", "device_id", device, "image", digest, "err", err)
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if err := s.imageOffered(r.Context(), digest, s.now()); err != nil {
			s.log.Info("firmware: download of an image not on offer", "device_id", device, "image", digest, "err", err)
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		open := s.OpenImage
		if index {
			open = s.openIndex
		}
		f, err := open(digest)
		if err != nil && index {
			http.Error(w, "not found", http.StatusNotFound) // a release without an index
			return
		}
		if err != nil {
			s.log.Error("firmware: offered image missing", "image", digest, "err", err)
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		defer f.Close()
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		if index {
			h.Set("ETag", `"`+digest+`.blocks"`)
		} else {
			h.Set("ETag", `"`+digest+`"`)
		}
		h.Set("Cache-Control", "private, no-store")
		http.ServeContent(w, r, "", time.Time{}, f)
	})
}

// imageOffered reports whether some offerable release names the image.
func (s *Store) imageOffered(ctx context.Context, digest string, now time.Time) error {
	var d [32]byte
	if _, err := hex.Decode(d[:], []byte(digest)); err != nil {
		return ErrInvalid
	}
	rs, err := s.releasesOfImage(ctx, d)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rs {
		err := s.offerable(r, now)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return ErrNotFound
	}
	return errors.Join(errs...)
}

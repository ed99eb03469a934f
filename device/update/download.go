package update

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sigil-iot/sigil/device/fetch"
	"github.com/sigil-iot/sigil/device/state"
)

var _ Fetcher = (*fetch.Client)(nil)

// errTooLarge is a download that goes past the manifest's size.
var errTooLarge = errors.New("update: image larger than the manifest's size")

// download fetches u's image into its part file, resuming what an earlier
// attempt left there with a range request. The resume carries the
// validator (ETag or Last-Modified) of the response the part file's first
// bytes came from, kept next to it, so that a server whose image changed
// sends the whole image again rather than the tail of another one. It
// stops with errTooLarge before the first byte past the release's size.
// A nil error means the file has exactly the release's size (its digest is
// checked in verifying).
func (e *Engine) download(ctx context.Context, u *state.Update) error {
	size := u.Release.Size
	if _, err := os.Stat(e.partPath(u.ID)); u.Release.BlockSize > 0 && errors.Is(err, os.ErrNotExist) {
		// No full download begun: try the adaptive one; when it cannot go
		// on, fall back to the full download (which then has begun).
		err := e.adaptive(ctx, u)
		if err == nil || ctx.Err() != nil || !errors.Is(err, errAdaptive) {
			return err // done, or retried with the blocks kept
		}
		e.log.Warn("update: adaptive download failed; fetching the whole image", "update", u.ID, "err", err)
		if err := os.Remove(e.adaptivePath(u.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("update: %w", err)
		}
	}
	f, err := os.OpenFile(e.partPath(u.ID), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	off := fi.Size()
	if off > size {
		// Not this release's image: start over.
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("update: %w", err)
		}
		off = 0
	}
	if off == size {
		return nil
	}
	validator := ""
	if off > 0 {
		validator = e.readValidator(u.ID)
	}

	ctx, cancel := context.WithTimeout(ctx, e.cfg.DownloadTimeout)
	defer cancel()
	resp, err := e.cfg.Fetcher.Get(ctx, fetch.Request{URL: u.URL, Offset: off, Validator: validator, MaxSize: size})
	switch {
	case errors.Is(err, fetch.ErrTooLarge):
		return errTooLarge
	case errors.Is(err, fetch.ErrRangeNotSatisfiable):
		// The part file is not a prefix of the image the server has.
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("update: %w", err)
		}
		return errors.New("update: download: server refused the range; starting over")
	case err != nil:
		return fmt.Errorf("update: download: %w", err)
	}
	defer resp.Body.Close()
	if resp.Offset != off {
		// The whole image came (the server ignored the range, or the image
		// changed): take it from the start.
		e.log.Info("update: server sent the whole image; starting over", "update", u.ID, "had", off)
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("update: %w", err)
		}
		off = 0
	}
	if off == 0 {
		// Durable before the bytes it describes.
		if err := e.writeValidator(u.ID, resp.Validator); err != nil {
			return err
		}
	}
	if off+resp.Length > size {
		return errTooLarge
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	n, err := io.Copy(f, io.LimitReader(resp.Body, size-off+1))
	u.Fetched += n
	if off+n > size {
		// Keep nothing of an image that is not the announced one.
		_ = f.Truncate(0)
		return errTooLarge
	}
	if serr := f.Sync(); serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("update: download interrupted at byte %d: %w", off+n, err)
	}
	if off+n < size {
		return fmt.Errorf("update: download ended at byte %d of %d", off+n, size)
	}
	return nil
}

// validatorPath is where the validator of update id's download is kept.
func (e *Engine) validatorPath(id string) string {
	return filepath.Join(e.cfg.Dir, id+".validator")
}

// readValidator returns the kept validator of id's download; "" if none
// or if it is not a header value (torn by a crash): the resume is then
// unconditional, and the digest check follows anyway.
func (e *Engine) readValidator(id string) string {
	b, err := os.ReadFile(e.validatorPath(id))
	if err != nil || len(b) > 1024 {
		return ""
	}
	for _, c := range b {
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return ""
		}
	}
	return string(b)
}

// writeValidator keeps v, synced, as the validator of id's download; an
// empty v removes it.
func (e *Engine) writeValidator(id, v string) error {
	p := e.validatorPath(id)
	if v == "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("update: %w", err)
		}
		return nil
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	_, err = f.WriteString(v)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("update: keep download validator: %w", err)
	}
	return nil
}

package update

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/device/state"
)

// errTooLarge is a download that goes past the manifest's size.
var errTooLarge = errors.New("update: image larger than the manifest's size")

// download fetches u's image into its part file, resuming what an earlier
// attempt left there with an HTTP Range request. It stops with errTooLarge
// at the first byte past the release's size. A nil error means the file
// has exactly the release's size (its digest is checked in verifying).
func (e *Engine) download(ctx context.Context, u *state.Update) error {
	size := u.Release.Size
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

	ctx, cancel := context.WithTimeout(ctx, e.cfg.DownloadTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.URL, nil)
	if err != nil {
		return fmt.Errorf("update: download: %w", err)
	}
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
	}
	resp, err := e.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("update: download: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && off > 0:
		start, err := contentRangeStart(resp.Header.Get("Content-Range"))
		if err != nil || start != off {
			return fmt.Errorf("update: download: server answered range %q to a request from byte %d",
				resp.Header.Get("Content-Range"), off)
		}
	case resp.StatusCode == http.StatusOK:
		if off > 0 {
			// The server ignored the range: take the whole image again.
			e.log.Info("update: server does not resume downloads; starting over", "update", u.ID)
			if err := f.Truncate(0); err != nil {
				return fmt.Errorf("update: %w", err)
			}
			off = 0
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		// The part file is not a prefix of the image the server has.
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("update: %w", err)
		}
		return errors.New("update: download: server refused the range; starting over")
	default:
		return fmt.Errorf("update: download: HTTP %s", resp.Status)
	}
	if resp.ContentLength >= 0 && off+resp.ContentLength > size {
		return errTooLarge
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	n, err := io.Copy(f, io.LimitReader(resp.Body, size-off+1))
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

// contentRangeStart returns the first byte of a "bytes FIRST-LAST/SIZE"
// Content-Range.
func contentRangeStart(h string) (int64, error) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, errors.New("not a byte range")
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok || first == "" || len(first) > 18 || strings.Trim(first, "0123456789") != "" {
		return 0, errors.New("not a byte range")
	}
	return strconv.ParseInt(first, 10, 64)
}

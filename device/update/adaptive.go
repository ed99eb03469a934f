package update

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sigil-iot/sigil/device/fetch"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/firmware/blockindex"
)

// IndexSuffix is appended to an image URL to name its block-hash index
// (blockindex.Suffix).
const IndexSuffix = blockindex.Suffix

// SlotReader is implemented by backends that can read the image in a
// slot, so that an adaptive download reuses its blocks. FileBackend and a
// HookBackend with HookConfig.SlotDevices implement it.
type SlotReader interface {
	OpenSlot(ctx context.Context, slot string) (io.ReadCloser, error)
}

// Adaptive steps, passed to Config.AdaptiveStep after each is durable.
const (
	StepIndex     = "index"     // the index is fetched and verified
	StepLocal     = "local"     // blocks held locally are in place
	StepRange     = "range"     // one range of missing blocks is fetched
	StepAssembled = "assembled" // the image is complete, renamed to the part file
)

// mergeGap is the most blocks already in place fetched again to join two
// ranges of missing blocks into one request.
const mergeGap = 4

// errAdaptive is an adaptive download that cannot go on (no index, an
// index or block that does not match, a server without ranges); the
// engine falls back to the full download. Other errors (a connection lost)
// are retried as any download is, keeping the blocks on disk.
var errAdaptive = errors.New("update: adaptive download")

// fetchErr wraps an error of the Fetcher: a refusal the server will repeat
// ends the adaptive path (errAdaptive), anything else is worth a retry.
func fetchErr(what string, err error) error {
	for _, fatal := range []error{fetch.ErrNotFound, fetch.ErrForbidden, fetch.ErrRangeNotSatisfiable, fetch.ErrMalformed,
		fetch.ErrUnsupported, fetch.ErrTooLarge, fetch.ErrRedirect} {
		if errors.Is(err, fatal) {
			return fmt.Errorf("%w: %s: %w", errAdaptive, what, err)
		}
	}
	return fmt.Errorf("update: adaptive download: %s: %w", what, err)
}

// adaptivePath is where update id's image is assembled block by block.
func (e *Engine) adaptivePath(id string) string {
	return filepath.Join(e.cfg.Dir, id+".adaptive")
}

// adaptive assembles u's image in its adaptive file from blocks already
// on the device (an earlier attempt's file, then the booted slot) and
// fetches only the others by range requests, each block checked against
// the release's index, whose digest the signed manifest binds. Every step
// can be repeated: a block is kept only while its hash matches the index,
// so a block torn by a crash, or a corrupt block of the booted slot, is
// fetched again. On success the file is renamed to the part file, which
// verifying checks whole as for a full download.
func (e *Engine) adaptive(ctx context.Context, u *state.Update) error {
	rel := u.Release
	ix, err := e.fetchIndex(ctx, u)
	if err != nil {
		return err
	}
	e.adaptiveStep(StepIndex)
	f, err := os.OpenFile(e.adaptivePath(u.ID), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(rel.Size); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	buf := make([]byte, ix.BlockSize)
	// need: blocks not yet right in the file, by hash.
	need := map[[32]byte][]int{}
	missing := 0
	for i := range ix.Len() {
		off, n := ix.Block(i)
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return fmt.Errorf("update: %w", err)
		}
		if h := ix.Hash(i); sha256.Sum256(buf[:n]) != h {
			need[h] = append(need[h], i)
			missing++
		}
	}
	if sr, ok := e.cfg.Backend.(SlotReader); ok && missing > 0 {
		if missing, err = e.copyLocal(ctx, sr, u.From, f, ix, need, buf); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	e.adaptiveStep(StepLocal)
	e.log.Info("update: adaptive download", "update", u.ID, "blocks", ix.Len(), "missing", missing)
	todo := make([]bool, ix.Len())
	for _, is := range need {
		for _, i := range is {
			todo[i] = true
		}
	}
	for i := 0; i < len(todo); {
		if !todo[i] {
			i++
			continue
		}
		j := i
		for j < len(todo) && todo[j] {
			j++
			// Bridge a short gap of blocks already in place: one request
			// (a TLS handshake) costs more than a few blocks.
			if k := j + mergeGap; j < len(todo) && !todo[j] {
				for g := j; g < min(k, len(todo)); g++ {
					if todo[g] {
						j = g
						break
					}
				}
			}
		}
		if err := e.fetchBlocks(ctx, u, f, ix, i, j, buf); err != nil {
			return err
		}
		e.adaptiveStep(StepRange)
		i = j
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if err := os.Rename(e.adaptivePath(u.ID), e.partPath(u.ID)); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if err := syncDir(e.cfg.Dir); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	e.adaptiveStep(StepAssembled)
	return nil
}

// fetchIndex fetches u's block-hash index and checks it against the
// digest and geometry the verified manifest binds.
// An index kept from an earlier attempt (Dir/<id>.index) is used when it
// still has the bound digest, so a retry does not fetch it again.
func (e *Engine) fetchIndex(ctx context.Context, u *state.Update) (*blockindex.Index, error) {
	rel := u.Release
	size := blockindex.EncodedSize(rel.BlockSize, rel.Size)
	kept := filepath.Join(e.cfg.Dir, u.ID+".index")
	if raw, err := os.ReadFile(kept); err == nil && int64(len(raw)) == size {
		if sum := sha256.Sum256(raw); bytes.Equal(sum[:], rel.IndexSHA256) {
			return blockindex.Parse(raw, rel.BlockSize, rel.Size)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.DownloadTimeout)
	defer cancel()
	resp, err := e.cfg.Fetcher.Get(ctx, fetch.Request{URL: u.URL + IndexSuffix, MaxSize: size})
	if err != nil {
		return nil, fetchErr("index", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, size))
	u.Fetched += int64(len(raw))
	if err != nil {
		return nil, fetchErr("index", err)
	}
	if sum := sha256.Sum256(raw); !bytes.Equal(sum[:], rel.IndexSHA256) {
		return nil, fmt.Errorf("%w: index does not match the manifest's digest", errAdaptive)
	}
	ix, err := blockindex.Parse(raw, rel.BlockSize, rel.Size)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errAdaptive, err)
	}
	if err := os.WriteFile(kept, raw, 0o600); err != nil {
		return nil, fmt.Errorf("update: %w", err)
	}
	return ix, nil
}

// copyLocal reads the image in slot block by block and writes each block
// that some needed block has the hash of; it returns how many blocks are
// still missing. A block is hashed as it is read: a corrupt one matches
// nothing and is fetched.
func (e *Engine) copyLocal(ctx context.Context, sr SlotReader, slot string, f *os.File, ix *blockindex.Index,
	need map[[32]byte][]int, buf []byte) (int, error) {
	src, err := sr.OpenSlot(ctx, slot)
	if err != nil {
		e.log.Warn("update: cannot read the booted slot; fetching every block", "slot", slot, "err", err)
	} else {
		defer src.Close()
		for len(need) > 0 {
			n, rerr := io.ReadFull(src, buf)
			if n > 0 {
				h := sha256.Sum256(buf[:n])
				for _, i := range need[h] {
					off, _ := ix.Block(i)
					if _, err := f.WriteAt(buf[:n], off); err != nil {
						return 0, fmt.Errorf("update: %w", err)
					}
				}
				delete(need, h)
			}
			if rerr != nil {
				break // the end, or a read error: what was read counts
			}
		}
	}
	missing := 0
	for _, is := range need {
		missing += len(is)
	}
	return missing, nil
}

// fetchBlocks fetches blocks [i, j) with one range request, checks each
// against the index and writes it; it records the bytes fetched.
func (e *Engine) fetchBlocks(ctx context.Context, u *state.Update, f *os.File, ix *blockindex.Index, i, j int, buf []byte) error {
	off, _ := ix.Block(i)
	last, n := ix.Block(j - 1)
	length := last + n - off
	ctx, cancel := context.WithTimeout(ctx, e.cfg.DownloadTimeout)
	defer cancel()
	resp, err := e.cfg.Fetcher.Get(ctx, fetch.Request{URL: u.URL, Offset: off, Length: length, MaxSize: u.Release.Size})
	if err != nil {
		return fetchErr("range", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 206 || resp.Offset != off || resp.Length != length {
		return fmt.Errorf("%w: server did not send the range", errAdaptive)
	}
	for k := i; k < j; k++ {
		boff, bn := ix.Block(k)
		_, err := io.ReadFull(resp.Body, buf[:bn])
		if err != nil {
			// Keep what came: the next attempt re-hashes it.
			u.Fetched += boff - off
			if serr := f.Sync(); serr != nil {
				return fmt.Errorf("update: %w", serr)
			}
			return fetchErr("range", err)
		}
		if sha256.Sum256(buf[:bn]) != ix.Hash(k) {
			return fmt.Errorf("%w: fetched block %d does not match the index", errAdaptive, k)
		}
		if _, err := f.WriteAt(buf[:bn], boff); err != nil {
			return fmt.Errorf("update: %w", err)
		}
	}
	u.Fetched += length
	if err := f.Sync(); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	return e.save(u)
}

// adaptiveStep tells Config.AdaptiveStep.
func (e *Engine) adaptiveStep(s string) {
	if e.cfg.AdaptiveStep != nil {
		e.cfg.AdaptiveStep(s)
	}
}

package firmware_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/blockindex"
	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/fleet/firmware"
)

// TestBlockIndexServed: an upload whose manifest binds the image's block
// index keeps the index the fleet computed and serves it beside the image,
// to the devices the image is served to; a manifest binding another index
// is refused; a release without one has no index to serve.
func TestBlockIndexServed(t *testing.T) {
	f := newFixture(t, 1, 1, 1)
	p := newPKI(t)
	ctx := context.Background()
	img := image(300_000, "blocks")
	index, err := blockindex.Build(bytes.NewReader(img), 4096)
	if err != nil {
		t.Fatal(err)
	}
	upload := func(version string, blocks *manifest.Blocks) (*firmware.Release, error) {
		m := &manifest.Manifest{Name: "gateway-os", Version: version, SecurityVersion: 5, Models: []string{"gw-100"},
			Size: int64(len(img)), SHA256: sha256.Sum256(img), Expires: t0.Add(24 * time.Hour), Blocks: blocks}
		raw, bundles := signtest.Release(t, m, f.keys[0])
		return f.store.Upload(ctx, "alice", raw, bundles, bytes.NewReader(img))
	}
	other := sha256.Sum256([]byte("not the index"))
	if _, err := upload("2.0.0", &manifest.Blocks{BlockSize: 4096, SHA256: other}); !errors.Is(err, firmware.ErrBlockIndex) {
		t.Fatalf("a manifest binding another index: %v, want ErrBlockIndex", err)
	}
	srv := serve(t, p, f.store.Handler(func(*http.Request, string) error { return nil }))
	dev := p.httpClient(p.Client(t, "dev-1"))
	r, err := upload("2.0.1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Approve(ctx, "bob", r.ID); err != nil {
		t.Fatal(err)
	}
	url := srv.URL + firmware.DownloadPrefix + r.ImageDigest() + blockindex.Suffix
	if resp, _ := get(t, dev, url); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("index of a release without one: %s", resp.Status)
	}
	if _, err := upload("2.0.2", &manifest.Blocks{BlockSize: 4096, SHA256: sha256.Sum256(index)}); err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, dev, url)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, index) {
		t.Fatalf("index: %s, %d bytes", resp.Status, len(body))
	}
	resp, body = get(t, dev, url, "Range", "bytes=20-51")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, index[20:52]) {
		t.Fatalf("index range: %s", resp.Status)
	}
	if _, err := upload("2.0.3", &manifest.Blocks{BlockSize: 8192, SHA256: other}); !errors.Is(err, firmware.ErrBlockIndex) {
		t.Fatalf("a second block size for the same image: %v, want ErrBlockIndex", err)
	}
	refused := serve(t, p, f.store.Handler(func(*http.Request, string) error { return errors.New("not a target") }))
	if resp, _ := get(t, dev, refused.URL+firmware.DownloadPrefix+r.ImageDigest()+blockindex.Suffix); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("index to a device that may not have the image: %s", resp.Status)
	}
}

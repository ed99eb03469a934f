package blockindex_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/sigil-iot/sigil/firmware/blockindex"
)

func image(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/4096)
	}
	return b
}

func TestBuildParse(t *testing.T) {
	const bs = 4096
	img := image(3*bs + 100)
	raw, err := blockindex.Build(bytes.NewReader(img), bs)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(raw)) != blockindex.EncodedSize(bs, int64(len(img))) {
		t.Fatalf("index is %d bytes, EncodedSize says %d", len(raw), blockindex.EncodedSize(bs, int64(len(img))))
	}
	ix, err := blockindex.Parse(raw, bs, int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if ix.Len() != 4 {
		t.Fatalf("%d blocks, want 4", ix.Len())
	}
	for i := range ix.Len() {
		off, n := ix.Block(i)
		if ix.Hash(i) != sha256.Sum256(img[off:off+n]) {
			t.Fatalf("block %d hash differs", i)
		}
	}
	if _, n := ix.Block(3); n != 100 {
		t.Fatalf("last block %d bytes, want 100", n)
	}
}

func TestParseRefuses(t *testing.T) {
	const bs = 4096
	img := image(2 * bs)
	raw, _ := blockindex.Build(bytes.NewReader(img), bs)
	cases := map[string]struct {
		b        []byte
		bs, size int64
	}{
		"empty":            {nil, bs, 2 * bs},
		"bad magic":        {append([]byte("XGBLKIX1"), raw[8:]...), bs, 2 * bs},
		"truncated":        {raw[:len(raw)-1], bs, 2 * bs},
		"trailing byte":    {append(bytes.Clone(raw), 0), bs, 2 * bs},
		"other block size": {raw, 2 * bs, 2 * bs},
		"other image size": {raw, bs, 2*bs + 1},
	}
	for name, c := range cases {
		if _, err := blockindex.Parse(c.b, c.bs, c.size); !errors.Is(err, blockindex.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := blockindex.Build(bytes.NewReader(img), 1000); !errors.Is(err, blockindex.ErrInvalid) {
		t.Errorf("block size 1000: err = %v", err)
	}
	if _, err := blockindex.Build(bytes.NewReader(nil), bs); !errors.Is(err, blockindex.ErrInvalid) {
		t.Errorf("empty image: err = %v", err)
	}
}

// FuzzParse: no input crashes Parse, and what it accepts has exactly the
// announced geometry.
func FuzzParse(f *testing.F) {
	raw, _ := blockindex.Build(bytes.NewReader(image(9000)), 4096)
	f.Add(raw, int64(4096), int64(9000))
	f.Add([]byte(blockindex.Magic), int64(4096), int64(1))
	f.Fuzz(func(t *testing.T, b []byte, bs, size int64) {
		ix, err := blockindex.Parse(b, bs, size)
		if err != nil {
			if !errors.Is(err, blockindex.ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if ix.BlockSize != bs || ix.ImageSize != size || int64(len(b)) != blockindex.EncodedSize(bs, size) {
			t.Fatalf("accepted %d bytes for %d in %d", len(b), size, bs)
		}
		off, n := ix.Block(ix.Len() - 1)
		if off+n != size || n <= 0 {
			t.Fatalf("last block %d+%d of %d", off, n, size)
		}
	})
}

package update_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/firmware/blockindex"
	"github.com/sigil-iot/sigil/pkg/wire"
)

const testBlock = 4096

// noise returns n bytes that differ in every block (unlike image's
// repeating pattern), derived from seed.
func noise(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	h := sha256.Sum256([]byte(seed))
	for len(out) < n {
		out = append(out, h[:]...)
		h = sha256.Sum256(h[:])
	}
	return out[:n]
}

// adaptiveRelease signs a manifest for img that binds its block index, and
// returns the index too.
func adaptiveRelease(t testing.TB, version string, sv uint64, img []byte) (manifest, bundle, index []byte) {
	t.Helper()
	index, err := blockindex.Build(bytes.NewReader(img), testBlock)
	if err != nil {
		t.Fatal(err)
	}
	d, ix := sha256.Sum256(img), sha256.Sum256(index)
	manifest, bundle = sign(testManifest{Name: "gw-firmware", Version: version, SecurityVersion: sv, Size: int64(len(img)),
		SHA256: hex.EncodeToString(d[:]), Model: testModel, Expires: testNow.Add(24 * time.Hour),
		BlockSize: testBlock, IndexSHA256: hex.EncodeToString(ix[:])})
	return manifest, bundle, index
}

// adaptiveCase runs an adaptive update from v1 in slot a to v2, with the
// index served as given, and returns the final report and the Range
// headers the image server saw.
func adaptiveCase(t *testing.T, v1, v2 []byte, mutate func(e *env, index []byte) []byte) (update.Report, []string, *env) {
	t.Helper()
	e := newEnv(t)
	if err := os.WriteFile(e.fb.Image("a"), v1, 0o600); err != nil {
		t.Fatal(err)
	}
	m, b, index := adaptiveRelease(t, "2.0.0", 2, v2)
	if mutate != nil {
		index = mutate(e, index)
	}
	url := e.srv.put("/v2.img", v2)
	if index != nil {
		e.srv.put("/v2.img"+update.IndexSuffix, index)
	}
	rep := e.run(e.engine(), "u1", m, b, url)
	if rep.Phase != update.PhaseCommitted || rep.Running != "2.0.0" || rep.Slot != "b" {
		t.Fatalf("final report %+v", rep)
	}
	if got, _ := os.ReadFile(e.fb.Image("b")); !bytes.Equal(got, v2) {
		t.Fatal("slot b does not hold the new image")
	}
	if v, _ := e.counter.SecurityVersion(); v != 2 {
		t.Fatalf("anti-rollback counter %d, want 2", v)
	}
	return rep, e.srv.rangesOf("/v2.img"), e
}

// TestAdaptiveOneChangedBlock: a release that differs from the booted
// image in one block fetches the index and that block only, by one range
// request, and installs the image whose digest it verified.
func TestAdaptiveOneChangedBlock(t *testing.T) {
	v1 := noise("v1", 64*testBlock+100)
	v2 := bytes.Clone(v1)
	copy(v2[10*testBlock+7:], "one changed file")
	rep, ranges, _ := adaptiveCase(t, v1, v2, nil)
	if want := []string{"bytes=40960-45055"}; strings.Join(ranges, ",") != strings.Join(want, ",") {
		t.Fatalf("image requests %q, want %q", ranges, want)
	}
	index := blockindex.EncodedSize(testBlock, int64(len(v2)))
	if rep.Fetched != testBlock+index || rep.Size != int64(len(v2)) {
		t.Fatalf("fetched %d of %d, want one block and the index (%d)", rep.Fetched, rep.Size, testBlock+index)
	}
}

// TestAdaptiveAppended: a release with data appended fetches only the
// blocks past the old image's last full block.
func TestAdaptiveAppended(t *testing.T) {
	v1 := noise("v1", 64*testBlock)
	v2 := append(bytes.Clone(v1), noise("new file", 3*testBlock+10)...)
	_, ranges, _ := adaptiveCase(t, v1, v2, nil)
	if want := "bytes=262144-274441"; len(ranges) != 1 || ranges[0] != want {
		t.Fatalf("image requests %q, want %q", ranges, want)
	}
}

// TestAdaptiveUnrelated: nothing in common: every block is fetched in one
// range, about the image's size and never more than it plus the index.
func TestAdaptiveUnrelated(t *testing.T) {
	v1, v2 := noise("v1", 64*testBlock), noise("other", 64*testBlock)
	rep, ranges, _ := adaptiveCase(t, v1, v2, nil)
	if len(ranges) != 1 || rep.Fetched != int64(len(v2))+blockindex.EncodedSize(testBlock, int64(len(v2))) {
		t.Fatalf("image requests %q, fetched %d of %d", ranges, rep.Fetched, len(v2))
	}
}

// TestAdaptiveCorruptLocalBlock: a block of the booted slot that no longer
// has its hash is not used: it is fetched.
func TestAdaptiveCorruptLocalBlock(t *testing.T) {
	v1 := noise("v1", 64*testBlock)
	v2 := bytes.Clone(v1)
	copy(v2[10*testBlock:], "changed")
	_, ranges, _ := adaptiveCase(t, v1, v2, func(e *env, index []byte) []byte {
		bad := bytes.Clone(v1)
		bad[30*testBlock+5] ^= 1 // the booted slot rots after the release was built
		if err := os.WriteFile(e.fb.Image("a"), bad, 0o600); err != nil {
			t.Fatal(err)
		}
		return index
	})
	if want := "bytes=40960-45055,bytes=122880-126975"; strings.Join(ranges, ",") != want {
		t.Fatalf("image requests %q, want %q", ranges, want)
	}
}

// TestAdaptiveTamperedIndex: an index that is not the one the manifest
// binds is refused, and the update falls back to the full download; so
// does a release whose index the server does not have.
func TestAdaptiveTamperedIndex(t *testing.T) {
	v1 := noise("v1", 64*testBlock)
	v2 := bytes.Clone(v1)
	copy(v2[10*testBlock:], "changed")
	for name, mutate := range map[string]func(*env, []byte) []byte{
		"tampered": func(_ *env, ix []byte) []byte {
			ix = bytes.Clone(ix)
			ix[blockindex.HeaderSize+10*sha256.Size] ^= 1
			return ix
		},
		"missing": func(*env, []byte) []byte { return nil },
	} {
		t.Run(name, func(t *testing.T) {
			rep, ranges, _ := adaptiveCase(t, v1, v2, mutate)
			if len(ranges) != 1 || ranges[0] != "" {
				t.Fatalf("image requests %q, want one full download", ranges)
			}
			if rep.Fetched < int64(len(v2)) {
				t.Fatalf("fetched %d, want the whole image (%d)", rep.Fetched, len(v2))
			}
		})
	}
}

// TestAdaptiveServerBlockTampered: a served block that differs from the
// index stops the adaptive download; the full download that follows is
// refused by the image digest, nothing is installed.
func TestAdaptiveServerBlockTampered(t *testing.T) {
	e := newEnv(t)
	v1 := noise("v1", 64*testBlock)
	v2 := bytes.Clone(v1)
	copy(v2[10*testBlock:], "changed")
	if err := os.WriteFile(e.fb.Image("a"), v1, 0o600); err != nil {
		t.Fatal(err)
	}
	m, b, index := adaptiveRelease(t, "2.0.0", 2, v2)
	evil := bytes.Clone(v2)
	copy(evil[10*testBlock:], "CHANGED")
	url := e.srv.put("/v2.img", evil)
	e.srv.put("/v2.img"+update.IndexSuffix, index)
	rep := e.run(e.engine(), "u1", m, b, url)
	if rep.Phase != update.PhaseFailed || rep.Reason != wire.ReasonFirmwareDigest || rep.Running != "1.0.0" {
		t.Fatalf("final report %+v", rep)
	}
	if got := e.srv.rangesOf("/v2.img"); len(got) != 2 || got[0] != "bytes=40960-45055" || got[1] != "" {
		t.Fatalf("image requests %q, want the block then the full image", got)
	}
	if s := e.state(); s.Booted != "a" || s.Pending != "" {
		t.Fatalf("boot record %+v", s)
	}
}

// TestAdaptiveCutRangeRetried: a range response cut by the network is
// retried with the blocks that came, and the index, kept on disk: the next
// request asks only for the rest, and no full download happens.
func TestAdaptiveCutRangeRetried(t *testing.T) {
	e := newEnv(t)
	v1 := noise("v1", 64*testBlock)
	v2 := bytes.Clone(v1)
	for blk := 20; blk < 30; blk++ {
		copy(v2[blk*testBlock:], "changed")
	}
	if err := os.WriteFile(e.fb.Image("a"), v1, 0o600); err != nil {
		t.Fatal(err)
	}
	m, b, index := adaptiveRelease(t, "2.0.0", 2, v2)
	url := e.srv.put("/v2.img", v2)
	e.srv.put("/v2.img"+update.IndexSuffix, index)
	e.srv.cutNext("/v2.img", 3*testBlock+100, nil)
	rep := e.run(e.engine(), "u1", m, b, url)
	if rep.Phase != update.PhaseCommitted {
		t.Fatalf("final report %+v", rep)
	}
	if got, _ := os.ReadFile(e.fb.Image("b")); !bytes.Equal(got, v2) {
		t.Fatal("slot b does not hold the new image")
	}
	if got, want := e.srv.rangesOf("/v2.img"), []string{"bytes=81920-122879", "bytes=94208-122879"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("image requests %q, want %q", got, want)
	}
	if got := e.srv.rangesOf("/v2.img" + update.IndexSuffix); len(got) != 1 {
		t.Fatalf("index requests %q, want one: the retry uses the kept index", got)
	}
}

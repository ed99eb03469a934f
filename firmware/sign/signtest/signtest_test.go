package signtest

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/sigil-iot/sigil/firmware/verify"
)

// TestTrustFile: the trust set written holds the signer's key alone, so a
// statement it signs meets the threshold, and another key's does not.
func TestTrustFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trust.json")
	s := TrustFile(t, path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := verify.ParseTrustSet(b)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := Key(t)
	msg := []byte("a manifest")
	for name, c := range map[string]struct {
		signer interface{ Sign([]byte) ([]byte, error) }
		ok     bool
	}{"its key": {s, true}, "another key": {other, false}} {
		bundle, err := c.signer.Sign(msg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ts.Signers(msg, [][]byte{bundle}); (err == nil) != c.ok {
			t.Errorf("%s: verify %v, want ok=%v", name, err, c.ok)
		}
	}
}

// TestCosignVersionInStep: the cosign that `make test-deps` builds is the
// one Cosign looks for.
func TestCosignVersionInStep(t *testing.T) {
	b, err := os.ReadFile("../../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^COSIGN_VERSION\s*:=\s*` + regexp.QuoteMeta(CosignVersion) + `\s*$`).Match(b) {
		t.Errorf("the Makefile's COSIGN_VERSION is not signtest.CosignVersion %s", CosignVersion)
	}
}

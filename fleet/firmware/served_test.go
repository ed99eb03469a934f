package firmware_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/firmware"
)

func trustSet(t *testing.T, seq uint64, keys ...crypto.PublicKey) *verify.TrustSet {
	t.Helper()
	ts, err := verify.NewTrustSet(seq, 1, keys...)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func pubKeys(t *testing.T, n int) []crypto.PublicKey {
	t.Helper()
	var out []crypto.PublicKey
	for range n {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k.Public())
	}
	return out
}

// served returns the set recorded in dir.
func served(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, firmware.ServedTrustFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func canon(t *testing.T, ts *verify.TrustSet) []byte {
	t.Helper()
	b, err := ts.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRememberTrust: the fleet records the release trust set it serves,
// and refuses a configuration that does not lead from that set to the
// configured one through signed rotations (release_trust changed in place,
// or rotations removed), saying what to do; it accepts the same set, added
// rotations, and a configuration compacted to the set it served.
func TestRememberTrust(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "firmware") // created on first use
	k := pubKeys(t, 3)
	s1, s2 := trustSet(t, 1, k[0]), trustSet(t, 2, k[1])
	steps := []struct {
		name  string
		chain []*verify.TrustSet
	}{
		{"first start", []*verify.TrustSet{s1}},
		{"restart, same set", []*verify.TrustSet{s1}},
		{"a rotation added", []*verify.TrustSet{s1, s2}},
		{"restart, same rotation", []*verify.TrustSet{s1, s2}},
		{"compacted to the rotated set", []*verify.TrustSet{s2}},
	}
	for _, st := range steps {
		if err := firmware.RememberTrust(dir, st.chain); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got, want := served(t, dir), canon(t, st.chain[len(st.chain)-1]); !bytes.Equal(got, want) {
			t.Fatalf("%s: recorded %s, want %s", st.name, got, want)
		}
	}

	// Now the fleet served s2. A configuration that does not reach s2's
	// successor from s2 is refused, and nothing is recorded.
	inPlace := trustSet(t, 2, k[2])
	for name, chain := range map[string][]*verify.TrustSet{
		"release_trust replaced in place, same sequence": {inPlace},
		"release_trust replaced in place, next sequence": {trustSet(t, 3, k[2])},
		"rotations removed":                                {s1},
		"a chain that starts elsewhere":                    {trustSet(t, 1, k[2]), trustSet(t, 2, k[0], k[2])},
		"release_trust replaced by a set with the old key": {trustSet(t, 2, k[1], k[2])},
	} {
		err := firmware.RememberTrust(dir, chain)
		var tc *firmware.TrustChangeError
		if !errors.As(err, &tc) || !errors.Is(err, firmware.ErrTrustChanged) {
			t.Errorf("%s: %v, want a *TrustChangeError", name, err)
			continue
		}
		if !bytes.Equal(canon(t, tc.Served), canon(t, s2)) || !bytes.Equal(canon(t, tc.Configured), canon(t, chain[len(chain)-1])) {
			t.Errorf("%s: error names served %d and configured %d", name, tc.Served.Sequence(), tc.Configured.Sequence())
		}
		for _, want := range []string{"without a signed rotation", tc.File, "sigil firmware trust --sequence 3", "sigil firmware sign --statement", "release_trust_rotations"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: message lacks %q:\n%v", name, want, err)
			}
		}
		if got := served(t, dir); !bytes.Equal(got, canon(t, s2)) {
			t.Errorf("%s: the refused configuration was recorded: %s", name, got)
		}
	}

	// A record that is not a trust set stops the fleet too.
	if err := os.WriteFile(filepath.Join(dir, firmware.ServedTrustFile), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := firmware.RememberTrust(dir, []*verify.TrustSet{s2}); err == nil || !strings.Contains(err.Error(), firmware.ServedTrustFile) {
		t.Errorf("unreadable record: %v", err)
	}
	if err := firmware.RememberTrust(dir, nil); err == nil {
		t.Error("empty chain accepted")
	}
}

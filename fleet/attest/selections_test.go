package attest

import (
	"testing"

	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestSelections(t *testing.T) {
	if s, err := Selections(nil, nil); s != nil || err != nil {
		t.Fatalf("default: %v %v", s, err)
	}
	s, err := Selections([]string{"sha256", "sha1"}, []int{0, 7})
	if err != nil || len(s) != 2 || s[0].Hash != wire.AlgSHA256 || s[1].Hash != 0x0004 || len(s[1].PCRs) != 2 {
		t.Fatalf("%+v %v", s, err)
	}
	for _, bad := range [][]string{{"md5"}, {"sha256", "sha256"}} {
		if _, err := Selections(bad, nil); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if _, err := Selections(nil, []int{24}); err == nil {
		t.Error("PCR 24 accepted")
	}
}

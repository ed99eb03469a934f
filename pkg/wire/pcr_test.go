package wire_test

import (
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestDefaultSelection(t *testing.T) {
	if wire.AlgSHA256 != uint16(tpm2.TPMAlgSHA256) {
		t.Fatalf("AlgSHA256 = %#04x, TPM_ALG_SHA256 is %#04x", wire.AlgSHA256, uint16(tpm2.TPMAlgSHA256))
	}
	sel := wire.DefaultSelection()
	if err := sel.Validate(); err != nil || sel.Hash != wire.AlgSHA256 {
		t.Fatalf("%+v: %v", sel, err)
	}
	sel.PCRs[0] = 23
	if wire.DefaultPCRs()[0] != 0 || wire.DefaultSelection().PCRs[0] != 0 {
		t.Fatal("the default PCRs are shared: a caller changed them for everyone")
	}
}

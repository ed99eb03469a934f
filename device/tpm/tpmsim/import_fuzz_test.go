//go:build cgo

package tpmsim_test

import (
	"testing"

	"github.com/sigil-iot/sigil/device/tpm"
	_ "github.com/sigil-iot/sigil/device/tpm/tpmsim"
	"github.com/sigil-iot/sigil/sim/softtpm/conformance"
)

// FuzzImportSecret feeds arbitrary secret deliveries to ImportSecret and
// Unseal on the simulator (conformance.FuzzImportSecret).
func FuzzImportSecret(f *testing.F) {
	tp, err := tpm.Open("sim://")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { tp.Close() })
	conformance.FuzzImportSecret(f, tp)
}

//go:build !cgo

package tpmsim

import (
	"errors"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/sigil-iot/sigil/device/tpm"
)

// Scheme is the URI scheme this package registers: "sim://".
const Scheme = "sim"

func init() {
	tpm.Register(Scheme, func(string) (transport.TPMCloser, error) {
		return nil, errors.New("tpmsim: the TPM simulator needs cgo (this binary was built with CGO_ENABLED=0)")
	})
}

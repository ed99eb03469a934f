package softtpm_test

import (
	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// The software TPM is what the device agent takes in place of device/tpm
// (agent.WithTPM); device/agent asserts the same of *device/tpm.TPM.
var _ agent.TPM = (*softtpm.TPM)(nil)

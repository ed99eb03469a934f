package tpm

import "github.com/google/go-tpm/tpm2"

// AKTemplate returns the public-area template CreateAK gives the TPM: ECC
// P-256, restricted signing with ECDSA-SHA256,
// fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA, and an empty
// unique field (the TPM fills in the point). Other implementations of the
// device's TPM (the simulation's software TPM) use it to create keys the
// fleet cannot tell apart from these.
func AKTemplate() tpm2.TPMTPublic { return eccSigningTemplate(true) }

// TransportKeyTemplate returns the public-area template CreateTransportKey
// gives the TPM: as AKTemplate, but unrestricted.
func TransportKeyTemplate() tpm2.TPMTPublic { return eccSigningTemplate(false) }

// Package secrets is the fleet's half of sealed secrets: it keeps named
// secrets encrypted at rest (Store), wraps a secret to one device's TPM
// (Wrap) so that only that TPM can import it and, optionally, only while
// chosen PCRs hold the values the fleet expects, and delivers them to the
// devices they target (Service, with its records in a DeliveryStore).
//
// # The wrapped object
//
// Wrap builds a TPM sealed data object (TPM_ALG_KEYEDHASH, no scheme) whose
// sensitive data is the secret (at most MaxValue bytes, the size of a
// TPM2B_SENSITIVE_DATA) and duplicates it to the device's endorsement key
// with an outer wrapper only (TPM 2.0 Part 1, "Duplication"): a random seed
// is encrypted to the EK (RSA-OAEP with label "DUPLICATE" for an RSA EK,
// ECDH for an ECC EK), and the seed keys the AES-CFB encryption and the HMAC
// of the sensitive area. Only the TPM holding the EK's private key recovers
// the seed, so a blob made for one device cannot be imported by another.
// device/tpm's ImportSecret and Unseal are the other half.
//
// The object's attributes: fixedTPM and fixedParent clear (TPM2_Import
// requires it), userWithAuth clear (it can be used only through its
// policy), noDA set, and an empty authValue. Its authPolicy is
//
//	[TPM2_PolicyPCR(selection, H(values))]  (only when PCR-bound)
//	TPM2_PolicyCommandCode(TPM_CC_Unseal)
//
// computed with SHA-256, the object's nameAlg. The command-code term makes
// the policy good for TPM2_Unseal and nothing else: in particular it can
// never satisfy the DUP role, so software on the device cannot re-duplicate
// the imported object out of its TPM. The PCR term binds unsealing to the PCR
// values the fleet passed to Wrap: after a PCR changes, TPM2_Unseal fails
// with a policy error until the PCR holds that value again (for example
// after a reboot into the expected software). H is SHA-256 over the values
// in ascending PCR order, as TPM2_PolicyPCR computes it, and the selection
// is marshaled with a three-byte bitmap (PCRs 0-23), as device/tpm sends it.
//
// # Storage
//
// Store keeps every version of every named secret in a bbolt file,
// encrypted with AES-256-GCM under a key kept in a separate file created at
// first start with mode 0600. The name and version are the additional
// authenticated data, so a ciphertext copied to another record does not
// decrypt. Values never appear in List, in errors or in logs.
//
// # Delivery
//
// Service sends each targeted active device the latest version of each
// secret it has not acknowledged, once the device's attestation is current
// (a pass in its present session), and records what was sent, acknowledged
// or failed per device (DeliveryStore, a bbolt file of its own). What it
// needs of the rest of the fleet it names in small interfaces: Devices (the
// inventory), Attestations (the verdict history PCR-bound secrets are
// sealed to) and a Send function (the broker).
package secrets

// Package softtpm is a software TPM 2.0 for simulated devices, and for
// simulation only: it lets one process run tens of thousands of devices
// through the real device agent code, where each swtpm process would cost
// about 6 MB and 0.65 s to manufacture. It must never reach sigild (the
// dependency fence in cmd/sigild forbids it), and a fleet must never trust
// its manufacturer CA in production: its secrets live in ordinary memory.
//
// # What it simulates
//
// A *TPM offers exactly the operations sigild performs through
// *device/tpm.TPM, with the same signatures and the same device/tpm types
// (tpm.KeyBlob, tpm.EK, tpm.SealedBlob, wire.Quote), so the device agent can
// be given either. What crosses to the fleet is a genuine TPM 2.0 structure,
// made with go-tpm's types and marshaling, that the fleet verifies with its
// unchanged code (fleet/verifier, fleet/enroll, fleet/attest,
// fleet/secrets):
//
//   - the EK: ECC P-256 from the TCG default template (TPMT_PUBLIC as
//     TPM2_CreatePrimary returns it), derived from the TPM's primary seed;
//     optionally RSA-2048 from a key the caller generated (WithRSAEK). Its
//     certificate comes from a simulated manufacturer CA (CA), with the
//     traits of real EK certificates (critical directoryName SAN, TCG EK
//     extended key usage), and sits in NV as the TCG profile places it;
//   - AK and transport key: ECC P-256 from device/tpm's own templates
//     (tpm.AKTemplate, tpm.TransportKeyTemplate); names are nameAlg ||
//     SHA-256(TPMT_PUBLIC), qualified names chain up to a storage root key
//     derived from the TCG ECC SRK template in the owner hierarchy;
//   - TPM2_Certify and TPM2_Quote: TPMS_ATTEST (magic, type, qualified
//     signer, extra data, clock info, firmware version, attested info)
//     signed with TPMT_SIGNATURE ECDSA-SHA256; reset and restart counters
//     and the firmware version obfuscated per signing key as a TPM does for
//     keys outside the endorsement and platform hierarchies; one SHA-256
//     PCR bank of 24 PCRs with the PC Client reset values (17-22 all ones,
//     and not extendable at locality 0);
//   - TPM2_ActivateCredential: the seed recovered with the EK (RSA-OAEP
//     with label "IDENTITY" for an RSA EK, ECDH and KDFe for an ECC EK),
//     the integrity HMAC (KDFa "INTEGRITY") over the credential and the
//     AK's name checked, the credential decrypted (KDFa "STORAGE",
//     AES-128-CFB);
//   - TPM2_Import of the sealed secrets fleet/secrets.Wrap makes (the outer
//     duplication wrapper of tpm2.CreateDuplicate, label "DUPLICATE", with
//     its HMAC, TPM2B_SENSITIVE and the public/sensitive binding checked),
//     and TPM2_Unseal through the policy device/tpm runs: PolicyPCR against
//     the current PCR values, then PolicyCommandCode(TPM2_Unseal), compared
//     with the object's authPolicy;
//   - key blobs: the public area, and the private area (TPMT_SENSITIVE)
//     protected under a storage seed derived from the primary seed, in the
//     layout of TPM protected storage (integrity HMAC, IV, AES-CFB). A blob
//     loads only on a TPM with the same seed; imported secrets likewise,
//     under a separate endorsement storage seed;
//   - NV counters for anti-rollback with device/tpm's rules (they never go
//     backwards), TPM2_Shutdown, and Reboot, an orderly power cycle (PCRs
//     reset, reset counter up, keys and NV kept).
//
// Errors that a TPM reports as response codes are tpm2.TPMRC values with
// the parameter, handle or session a TPM would name, so errors.Is(err,
// tpm2.TPMRCPolicyFail) and the like hold as they do on swtpm. The
// conformance suite (package conformance) runs the same checks, with the
// fleet's verification code, against swtpm and this package, and compares
// their response codes; a cgo test has the TCG reference TPM make
// credentials and duplicates for this package's ECC and RSA EKs.
//
// # What it does not simulate
//
// No command interface (there are no TPM command bytes, handles or
// transient objects), no sessions (authorization is implicit: the EK's
// PolicySecret and the sealed object's policy are evaluated, passwords are
// not), no dictionary-attack lockout, no hierarchies to clear or
// authorize, no NV indexes other than the EK certificate and the counters,
// one PCR bank, no event log, and none of a TPM's resistance to physical or
// software attack.
//
// # Cost
//
// A TPM is a few kilobytes: its seed, its EK and certificate, 24 PCRs and
// its counters; keys live in the blobs its user stores. Manufacturing one
// (EK and certificate) and creating its AK and transport key take well
// under a millisecond; docs/BENCHMARKS.md ("Software TPM") has the figures.
//
// # Identity across restarts
//
// WithSeed makes the TPM deterministic: the same seed gives the same EK,
// the same EK certificate from the same CA, and loads the blobs an earlier
// TPM of that seed made. State and WithState carry the counters, reset
// count and clock across a restart of the simulation, so that the fleet
// sees the device's TPM counters move forward as they would on a real one.
package softtpm

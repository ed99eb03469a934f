// Package tpm is the device's single owner of its TPM 2.0: it opens the TPM,
// reads the endorsement key, creates and uses the device's keys, quotes PCRs
// and activates credentials. Every other package on the device goes through a
// *TPM; nothing else talks to the TPM.
//
// # Backends
//
// Open takes a URI: a device path ("" means /dev/tpmrm0, the kernel's
// resource-managed TPM), "swtpm://HOST:PORT" for a software TPM (swtpm) over
// TCP, or a scheme registered with Register. The in-process simulator
// registers "sim" from package tpmsim, which needs cgo and must never reach
// the device binary; without it, "sim://" fails with a clear error.
//
// # Key hierarchy
//
//   - EK, endorsement key: the TPM's identity, certified by its manufacturer.
//     The RSA-2048 EK is preferred: its certificate is read from NV 0x01c00002
//     and its key from persistent handle 0x81010001, or recreated from the
//     TCG template in the endorsement hierarchy (deterministic: same seed,
//     same key) when not persisted. Without an RSA EK certificate, the ECC
//     EK certificates are tried (P-256 at 0x01c0000a, P-384 at 0x01c00016 as
//     swtpm writes it, with its key at 0x81010016). The EK only decrypts: it
//     is used for credential activation, never to sign.
//   - SRK, storage root key: an ECC P-256 storage primary key in the owner
//     hierarchy (TCG template), persisted at 0x81000001 when that handle is
//     free. If 0x81000001 holds an ECC P-256 restricted decryption key it is
//     used as is; if it holds anything else (for example an RSA SRK made by
//     other software), 0x81000002 is used the same way. Owner authorization
//     is assumed empty.
//   - AK, attestation key: ECC P-256, restricted signing (ECDSA-SHA256),
//     child of the SRK. It signs only TPM-generated structures: quotes and
//     TPM2_Certify of other keys. The fleet binds it to the EK by credential
//     activation.
//   - TK, transport key: ECC P-256, unrestricted signing (ECDSA-SHA256),
//     child of the SRK. It is the mTLS private key and signs the CSR; the AK
//     certifies it (TPM2_Certify) so the fleet knows it lives in this TPM.
//
// Keys are created fixedTPM|fixedParent|sensitiveDataOrigin: there is no
// code path that asks the TPM for a duplicable key, and no private key ever
// leaves the TPM. A KeyBlob is the TPM-wrapped key (public area plus private
// area encrypted by the SRK), safe to store on disk; it is loaded again for
// every operation, so it survives reboots and TPM restarts. Device keys are
// noDA: a power loss must not count towards dictionary-attack lockout.
//
// # Transient objects
//
// Every transient object (a loaded key, a recreated EK) and every session an
// operation creates is flushed before the operation returns, also on error.
// swtpm has no resource manager: transient objects outlive a connection, and
// it has only three slots, so leftovers would make the next load fail. For the
// same reason transient objects and sessions left over by other clients are
// flushed on open (on every connection, for swtpm).
//
// swtpm serves one TCP connection at a time, so for "swtpm://" a *TPM
// connects for each operation and disconnects after it: other clients
// (tpm2-tools in tests, a second *TPM) can use the same swtpm between
// operations. Device paths and the simulator stay open until Close.
//
// All TPM commands go through one mutex per *TPM: concurrent callers (TLS
// handshakes signing with the transport key, quotes) are serialized.
package tpm

// Package verifier checks TPM evidence on the fleet side: endorsement keys
// and their certificates, attestation and transport key public areas,
// TPM2_Certify and TPM2_Quote structures, and the answer to a credential
// activation challenge. It never talks to a TPM.
//
// Every Verify function takes bytes from the network and returns the
// verified value (*EK, *AK, *TransportKey, *CertifiedKey, *VerifiedQuote);
// there is no boolean beside unverified data. Each documents the checks it
// makes, in order. A refusal is a *wire.Error whose Reason is the code the
// enrollment service sends to the device, whose Message is public, and whose
// wrapped cause (errors.Unwrap) carries the internal detail for logs.
//
// The order of use during enrollment:
//
//	ek, err := trust.VerifyEK(req.EKPublic, req.EKCert, req.EKChain) // trust path decided by the caller
//	ak, err := verifier.VerifyAK(req.AKPublic)
//	tk, err := verifier.VerifyTransportKeyPublic(req.TKPublic)
//	blob, encSecret, err := verifier.MakeCredential(rand, ek, ak, secret)
//	// ... challenge sent, proof received ...
//	err = verifier.CheckActivation(secret, session, nonce, proof.Activation)
//	ck, err := verifier.VerifyCertify(ak, tk, nonce, proof.CertifyInfo, proof.CertifySig)
//	csr, err := verifier.VerifyCSR(req.CSR, ck)
//	q, err := verifier.VerifyQuote(ak, nonce, sel, &proof.Quote)
//
// and for each attestation, one quote per bank, then the measured-boot log:
//
//	vq, err := verifier.VerifyQuote(ak, nonce, sel, &evidence.Quotes[i])
//	log, err := verifier.VerifyEventLog(evidence.EventLog, vqs...)
//
// TPM structures (TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE) are decoded by
// small hand-written parsers for exactly the forms the fleet accepts, and
// must be canonical: the bytes must be exactly the encoding of the decoded
// value, so trailing data is refused and the name computed from a public
// area is the name the TPM computed. Differential fuzz tests hold the
// parsers to go-tpm's decoder (Unmarshal, then Marshal back to the same
// bytes) on what each accepts and on every decoded field.
//
// The UEFI signature databases (PK, KEK, db, dbx) that Secure Boot events
// carry are read by a strict parser of the same kind (efisig.go), and
// go-attestation's reading of them is trusted only where it agrees
// (secureboot.go): go-attestation has GO-2026-5298, with no fixed version,
// and reads signatures the firmware does not hold from inconsistent lists.
// A differential fuzz test holds the parser to go-attestation's reader.
package verifier

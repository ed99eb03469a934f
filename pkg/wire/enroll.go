package wire

import (
	"errors"
	"fmt"
)

// Limits on enrollment fields, checked by Validate.
const (
	maxTPMStruct = 2048 // a TPMT_PUBLIC, TPMS_ATTEST or TPMT_SIGNATURE
	maxCertDER   = 8192
	maxChain     = 8
	maxLabel     = 128
)

// EnrollRequest opens enrollment. All TPM structures are in TPM wire format
// (big-endian, as marshaled by the TPM).
type EnrollRequest struct {
	EKPublic []byte   `cbor:"1,keyasint"`           // TPMT_PUBLIC of the endorsement key
	EKCert   []byte   `cbor:"2,keyasint,omitempty"` // DER, from the TPM's NV when present
	EKChain  [][]byte `cbor:"3,keyasint,omitempty"` // DER intermediates the device knows, optional
	AKPublic []byte   `cbor:"4,keyasint"`           // TPMT_PUBLIC of the attestation key
	TKPublic []byte   `cbor:"5,keyasint"`           // TPMT_PUBLIC of the transport (mTLS) key
	CSR      []byte   `cbor:"6,keyasint"`           // DER PKCS#10 signed by the transport key
	Model    string   `cbor:"7,keyasint"`
	Firmware string   `cbor:"8,keyasint"`
	Serial   string   `cbor:"9,keyasint,omitempty"`  // the identity the device claims (hardware serial)
	Token    string   `cbor:"10,keyasint,omitempty"` // enrollment token, when enrolling by token
}

// Validate checks presence and sizes; cryptographic checks are the fleet's.
func (r *EnrollRequest) Validate() error {
	var errs []error
	need := func(name string, b []byte, max int) {
		if len(b) == 0 {
			errs = append(errs, fmt.Errorf("%s missing", name))
		} else if len(b) > max {
			errs = append(errs, fmt.Errorf("%s too large", name))
		}
	}
	need("ek_public", r.EKPublic, maxTPMStruct)
	need("ak_public", r.AKPublic, maxTPMStruct)
	need("tk_public", r.TKPublic, maxTPMStruct)
	need("csr", r.CSR, maxCertDER)
	if len(r.EKCert) > maxCertDER {
		errs = append(errs, errors.New("ek_cert too large"))
	}
	if len(r.EKChain) > maxChain {
		errs = append(errs, errors.New("ek_chain too long"))
	}
	for _, c := range r.EKChain {
		if len(c) == 0 || len(c) > maxCertDER {
			errs = append(errs, errors.New("ek_chain entry size"))
			break
		}
	}
	if err := label("model", r.Model, true); err != nil {
		errs = append(errs, err)
	}
	if err := label("firmware", r.Firmware, false); err != nil {
		errs = append(errs, err)
	}
	if err := label("serial", r.Serial, false); err != nil {
		errs = append(errs, err)
	}
	if len(r.Token) > maxLabel {
		errs = append(errs, errors.New("token too long"))
	}
	return errors.Join(errs...)
}

// label checks a short printable string.
func label(name, s string, required bool) error {
	if s == "" {
		if required {
			return fmt.Errorf("%s missing", name)
		}
		return nil
	}
	if len(s) > maxLabel {
		return fmt.Errorf("%s too long", name)
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("%s has control characters", name)
		}
	}
	return nil
}

// PCRSelection names a PCR bank and indexes.
type PCRSelection struct {
	Hash uint16 `cbor:"1,keyasint"` // TPM_ALG_ID of the bank, e.g. AlgSHA256
	PCRs []int  `cbor:"2,keyasint"`
}

// AlgSHA256 is TPM_ALG_SHA256, the TPM algorithm ID of the SHA-256 PCR
// bank (PCRSelection.Hash, Quote.Hash).
const AlgSHA256 uint16 = 0x000B

// DefaultPCRs returns the PCRs the fleet quotes, and binds PCR-bound
// secrets to, when its configuration names none (attest_pcrs): 0 to 9, the
// platform firmware and boot chain, and 14, where the device measures the
// firmware image it boots.
func DefaultPCRs() []int { return []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14} }

// DefaultSelection returns DefaultPCRs in the SHA-256 bank: what the fleet
// asks a device to quote when configured with no selection.
func DefaultSelection() PCRSelection { return PCRSelection{Hash: AlgSHA256, PCRs: DefaultPCRs()} }

// Validate bounds the selection.
func (s *PCRSelection) Validate() error {
	if len(s.PCRs) == 0 || len(s.PCRs) > 24 {
		return errors.New("pcr selection size")
	}
	seen := map[int]bool{}
	for _, p := range s.PCRs {
		if p < 0 || p > 23 || seen[p] {
			return errors.New("pcr index")
		}
		seen[p] = true
	}
	return nil
}

// EnrollChallenge answers a request whose EK and keys passed the first
// checks: a credential to activate with the EK (bound to the AK's name) and a
// nonce to quote and certify with.
type EnrollChallenge struct {
	Session         []byte       `cbor:"1,keyasint"` // 16 bytes, names this enrollment
	CredentialBlob  []byte       `cbor:"2,keyasint"` // TPM2B_ID_OBJECT contents
	EncryptedSecret []byte       `cbor:"3,keyasint"` // TPM2B_ENCRYPTED_SECRET contents
	Nonce           []byte       `cbor:"4,keyasint"` // 32 bytes; qualifying data of the quote and the certify
	Selection       PCRSelection `cbor:"5,keyasint"`
	Expires         int64        `cbor:"6,keyasint"` // Unix milliseconds
	// EventLog asks for the measured-boot event log with the proof: the
	// reference policy that judges the first quote has event rules.
	// Absent (false) otherwise, so that older devices decode the challenge.
	EventLog bool `cbor:"7,keyasint,omitempty"`
}

// Validate checks sizes.
func (c *EnrollChallenge) Validate() error {
	if len(c.Session) != 16 || len(c.Nonce) != 32 {
		return errors.New("session or nonce size")
	}
	if len(c.CredentialBlob) == 0 || len(c.CredentialBlob) > maxTPMStruct ||
		len(c.EncryptedSecret) == 0 || len(c.EncryptedSecret) > maxTPMStruct {
		return errors.New("credential size")
	}
	return c.Selection.Validate()
}

// Quote is a TPM2_Quote with the PCR values it covers.
type Quote struct {
	Attest    []byte   `cbor:"1,keyasint"` // TPMS_ATTEST as signed
	Signature []byte   `cbor:"2,keyasint"` // TPMT_SIGNATURE
	Hash      uint16   `cbor:"3,keyasint"` // bank of Values
	PCRs      []int    `cbor:"4,keyasint"` // indexes of Values, ascending
	Values    [][]byte `cbor:"5,keyasint"` // PCR values in PCRs order
}

// Validate checks sizes and shape.
func (q *Quote) Validate() error {
	if len(q.Attest) == 0 || len(q.Attest) > maxTPMStruct || len(q.Signature) == 0 || len(q.Signature) > maxTPMStruct {
		return errors.New("quote size")
	}
	if len(q.PCRs) != len(q.Values) || len(q.PCRs) > 24 {
		return errors.New("quote pcr values")
	}
	for _, v := range q.Values {
		if len(v) == 0 || len(v) > 64 {
			return errors.New("quote pcr value size")
		}
	}
	return nil
}

// EnrollProof answers a challenge.
type EnrollProof struct {
	Session     []byte `cbor:"1,keyasint"`
	Activation  []byte `cbor:"2,keyasint"` // HMAC-SHA256(activated secret, session || nonce)
	CertifyInfo []byte `cbor:"3,keyasint"` // TPMS_ATTEST of TPM2_Certify(TK by AK, nonce)
	CertifySig  []byte `cbor:"4,keyasint"` // TPMT_SIGNATURE by the AK
	Quote       Quote  `cbor:"5,keyasint"`
	// EventLog is the measured-boot event log (TCG PC Client format), sent
	// only when the challenge asks for it and the device has one.
	EventLog []byte `cbor:"6,keyasint,omitempty"`
}

// Validate checks sizes.
func (p *EnrollProof) Validate() error {
	if len(p.Session) != 16 || len(p.Activation) != 32 {
		return errors.New("session or activation size")
	}
	if len(p.CertifyInfo) == 0 || len(p.CertifyInfo) > maxTPMStruct || len(p.CertifySig) == 0 || len(p.CertifySig) > maxTPMStruct {
		return errors.New("certify size")
	}
	if len(p.EventLog) > MaxEventLog {
		return errors.New("event log too large")
	}
	return p.Quote.Validate()
}

// Enrollment statuses in EnrollResult.
const (
	StatusActive  = "active"
	StatusPending = "pending"
	StatusRefused = "refused"
)

// EnrollResult ends an enrollment attempt.
type EnrollResult struct {
	Status      string   `cbor:"1,keyasint"`
	Reason      Reason   `cbor:"2,keyasint"`
	Message     string   `cbor:"3,keyasint,omitempty"` // public explanation
	DeviceID    string   `cbor:"4,keyasint,omitempty"`
	Certificate []byte   `cbor:"5,keyasint,omitempty"` // DER, the device certificate
	Chain       [][]byte `cbor:"6,keyasint,omitempty"` // DER intermediates, leaf first excluded
	TrustBundle [][]byte `cbor:"7,keyasint,omitempty"` // DER roots the device trusts for the fleet
	RetryAfter  int      `cbor:"8,keyasint,omitempty"` // seconds, for pending and temporary refusals
	Session     []byte   `cbor:"9,keyasint,omitempty"`
	// FirmwareTrust is the fleet's release trust set
	// (firmware/verify.TrustSet.Marshal), when the fleet has one: the keys
	// and threshold the device requires on firmware releases (version 4).
	// A device without a release trust set takes it (trust on first
	// enrollment); a device that holds one never takes it as is, it
	// applies FirmwareRotations as it does those of FirmwareTrust
	// messages.
	FirmwareTrust []byte `cbor:"10,keyasint,omitempty"`
	// FirmwareRotations are the signed rotations of the release trust set
	// that lead to FirmwareTrust, in sequence order, as in
	// FirmwareTrust.Rotations (version 5). Absent when the fleet has made
	// none.
	FirmwareRotations []TrustRotation `cbor:"11,keyasint,omitempty"`
}

// Validate checks the status and sizes.
func (r *EnrollResult) Validate() error {
	switch r.Status {
	case StatusActive:
		if len(r.Certificate) == 0 || len(r.TrustBundle) == 0 || !ValidID(r.DeviceID) {
			return errors.New("active result without certificate, trust bundle or device ID")
		}
	case StatusPending, StatusRefused:
	default:
		return fmt.Errorf("status %q", r.Status)
	}
	if len(r.Certificate) > maxCertDER || len(r.Chain) > maxChain || len(r.TrustBundle) > maxChain {
		return errors.New("certificate sizes")
	}
	for _, c := range append(append([][]byte{}, r.Chain...), r.TrustBundle...) {
		if len(c) == 0 || len(c) > maxCertDER {
			return errors.New("certificate sizes")
		}
	}
	if len(r.Message) > 512 {
		return errors.New("message too long")
	}
	if len(r.FirmwareTrust) > MaxFirmwareTrust {
		return errors.New("firmware trust set too large")
	}
	if err := validRotations(r.FirmwareRotations); err != nil {
		return fmt.Errorf("firmware rotations: %w", err)
	}
	return nil
}

// Retry asks a pending device to send its request again now (it was approved).
type Retry struct{}

// Validate accepts the empty body.
func (*Retry) Validate() error { return nil }

// Hello is the first message of an enrolled device on each connection.
type Hello struct {
	Model    string `cbor:"1,keyasint"`
	Firmware string `cbor:"2,keyasint"`
	Agent    string `cbor:"3,keyasint"` // sigild version
}

// Validate checks the labels.
func (h *Hello) Validate() error {
	return errors.Join(label("model", h.Model, false), label("firmware", h.Firmware, false), label("agent", h.Agent, false))
}

package wire

import "errors"

// Credential lifecycle message types (protocol version 3).
const (
	TypeRenewRequest  = "cert.renew"     // device -> fleet (up "renew"): RenewRequest
	TypeRenewResult   = "cert.result"    // fleet -> device (down "cert"): RenewResult
	TypeRotate        = "cert.rotate"    // fleet -> device (down "cert"): Rotate — renew now
	TypeSecretDeliver = "secret.deliver" // fleet -> device (down "secret"): SecretDeliver
	TypeSecretAck     = "secret.ack"     // device -> fleet (up "secret"): SecretAck
	TypeTrustBundle   = "trust.bundle"   // fleet -> device (down "trust"): TrustBundle (version 4)
)

// TrustBundle replaces the roots a device trusts for the fleet, during a CA
// rotation: the fleet sends it when a new generation is prepared, activated
// or an old one retired, and after each hello while a rotation is under
// way. It arrives only over the device's authenticated session on a topic
// only the fleet may publish to. Roots are DER certificates, the signing
// generation first.
type TrustBundle struct {
	Roots [][]byte `cbor:"1,keyasint"`
}

// Validate checks sizes.
func (b *TrustBundle) Validate() error {
	if len(b.Roots) == 0 || len(b.Roots) > maxChain {
		return errors.New("roots: want 1 to 8")
	}
	for _, c := range b.Roots {
		if len(c) == 0 || len(c) > maxCertDER {
			return errors.New("certificate sizes")
		}
	}
	return nil
}

// RenewRequest asks for a certificate for a new transport key. The device
// first asks for an attestation challenge (AttestRequest reason "renew");
// Nonce is that challenge's nonce, which the quotes in Evidence, the
// certify of the new key and this request all carry.
type RenewRequest struct {
	Nonce       []byte         `cbor:"1,keyasint"`
	TKPublic    []byte         `cbor:"2,keyasint"` // TPMT_PUBLIC of the new transport key
	CertifyInfo []byte         `cbor:"3,keyasint"` // TPMS_ATTEST of TPM2_Certify(new TK by AK, Nonce)
	CertifySig  []byte         `cbor:"4,keyasint"`
	CSR         []byte         `cbor:"5,keyasint"` // signed by the new transport key
	Evidence    AttestEvidence `cbor:"6,keyasint"`
}

// Validate checks sizes.
func (r *RenewRequest) Validate() error {
	if len(r.Nonce) != 32 {
		return errors.New("nonce size")
	}
	if len(r.TKPublic) == 0 || len(r.TKPublic) > maxTPMStruct || len(r.CertifyInfo) == 0 || len(r.CertifyInfo) > maxTPMStruct ||
		len(r.CertifySig) == 0 || len(r.CertifySig) > maxTPMStruct || len(r.CSR) == 0 || len(r.CSR) > maxCertDER {
		return errors.New("field sizes")
	}
	return r.Evidence.Validate()
}

// RenewResult answers a RenewRequest. Status is StatusActive with the new
// certificate, or StatusRefused with the reason.
type RenewResult struct {
	Status      string   `cbor:"1,keyasint"`
	Reason      Reason   `cbor:"2,keyasint"`
	Message     string   `cbor:"3,keyasint,omitempty"`
	Certificate []byte   `cbor:"4,keyasint,omitempty"`
	Chain       [][]byte `cbor:"5,keyasint,omitempty"`
	TrustBundle [][]byte `cbor:"6,keyasint,omitempty"`
	RetryAfter  int      `cbor:"7,keyasint,omitempty"` // seconds
}

// Validate checks the status and sizes.
func (r *RenewResult) Validate() error {
	switch r.Status {
	case StatusActive:
		if len(r.Certificate) == 0 || len(r.TrustBundle) == 0 {
			return errors.New("renewal without certificate or trust bundle")
		}
	case StatusRefused:
	default:
		return errors.New("status")
	}
	if len(r.Certificate) > maxCertDER || len(r.Chain) > maxChain || len(r.TrustBundle) > maxChain || len(r.Message) > 512 {
		return errors.New("sizes")
	}
	for _, c := range append(append([][]byte{}, r.Chain...), r.TrustBundle...) {
		if len(c) == 0 || len(c) > maxCertDER {
			return errors.New("certificate sizes")
		}
	}
	return nil
}

// Rotate tells a device to renew now (forced rotation).
type Rotate struct {
	Reason string `cbor:"1,keyasint,omitempty"`
	Job    string `cbor:"2,keyasint,omitempty"` // rotation job ID, for progress
}

// Validate checks the labels.
func (r *Rotate) Validate() error {
	return errors.Join(label("reason", r.Reason, false), label("job", r.Job, false))
}

// SecretDeliver carries a secret wrapped to the device's EK: only that TPM
// can import it, and, when PCRs is set, unseal it only while those PCRs
// hold the values the fleet bound it to.
type SecretDeliver struct {
	Name      string        `cbor:"1,keyasint"`
	Version   int           `cbor:"2,keyasint"`
	Public    []byte        `cbor:"3,keyasint"` // TPMT_PUBLIC of the sealed object
	Duplicate []byte        `cbor:"4,keyasint"` // TPM2B_PRIVATE contents: the object wrapped to the EK
	Seed      []byte        `cbor:"5,keyasint"` // TPM2B_ENCRYPTED_SECRET contents: the wrapping seed encrypted to the EK
	PCRs      *PCRSelection `cbor:"6,keyasint,omitempty"`
	// Grace is how long, in seconds, the device keeps the version this
	// one replaces available to local consumers (version 4); 0: not at
	// all.
	Grace uint32 `cbor:"7,keyasint,omitempty"`
}

// MaxSecretGrace bounds SecretDeliver.Grace: 30 days.
const MaxSecretGrace = 30 * 24 * 3600

// Validate checks the name and sizes.
func (s *SecretDeliver) Validate() error {
	if s.Grace > MaxSecretGrace {
		return errors.New("grace longer than 30 days")
	}
	if !ValidID(s.Name) || s.Version < 1 {
		return errors.New("name or version")
	}
	if len(s.Public) == 0 || len(s.Public) > maxTPMStruct || len(s.Duplicate) == 0 || len(s.Duplicate) > maxTPMStruct ||
		len(s.Seed) == 0 || len(s.Seed) > maxTPMStruct {
		return errors.New("blob sizes")
	}
	if s.PCRs != nil {
		return s.PCRs.Validate()
	}
	return nil
}

// SecretAck reports whether a delivered secret was imported.
type SecretAck struct {
	Name    string `cbor:"1,keyasint"`
	Version int    `cbor:"2,keyasint"`
	OK      bool   `cbor:"3,keyasint"`
	Error   string `cbor:"4,keyasint,omitempty"`
}

// Validate checks the fields.
func (a *SecretAck) Validate() error {
	if !ValidID(a.Name) || a.Version < 1 || len(a.Error) > 512 {
		return errors.New("fields")
	}
	return nil
}

package wire

import (
	"errors"
	"fmt"
)

// Attestation message types (protocol version 2).
const (
	TypeAttestRequest   = "attest.request"   // device -> fleet: AttestRequest (asks for a nonce for a scheduled quote)
	TypeAttestChallenge = "attest.challenge" // fleet -> device: AttestChallenge
	TypeAttestEvidence  = "attest.evidence"  // device -> fleet: AttestEvidence
	TypeAttestVerdict   = "attest.verdict"   // fleet -> device: AttestVerdict (informational)
)

// Limits on evidence.
const (
	MaxEventLog = 512 << 10 // measured-boot event log
	MaxIMALog   = 256 << 10 // IMA runtime measurement log (ASCII)
)

// PurposeRenew is the AttestRequest reason and AttestChallenge purpose of a
// renewal.
const PurposeRenew = "renew"

// AttestRequest asks the fleet for a challenge; the device sends it on its
// own schedule so that every quote still carries a fleet-issued nonce.
type AttestRequest struct {
	Reason string `cbor:"1,keyasint,omitempty"` // "schedule", "boot", "retry"
}

// Validate checks the label.
func (r *AttestRequest) Validate() error { return label("reason", r.Reason, false) }

// AttestChallenge asks the device for a quote over Selections with Nonce.
type AttestChallenge struct {
	Nonce      []byte         `cbor:"1,keyasint"` // 32 bytes, single use
	Selections []PCRSelection `cbor:"2,keyasint"` // one per bank
	Expires    int64          `cbor:"3,keyasint"` // Unix milliseconds
	EventLog   bool           `cbor:"4,keyasint,omitempty"`
	IMALog     bool           `cbor:"5,keyasint,omitempty"`
	// Purpose echoes AttestRequest.Reason "renew": the nonce is for a
	// RenewRequest (version 3), not plain evidence.
	Purpose string `cbor:"6,keyasint,omitempty"`
}

// Validate checks sizes.
func (c *AttestChallenge) Validate() error {
	if len(c.Nonce) != 32 {
		return errors.New("nonce size")
	}
	if len(c.Selections) == 0 || len(c.Selections) > 4 {
		return errors.New("selections")
	}
	if c.Purpose != "" && c.Purpose != PurposeRenew {
		return errors.New("purpose")
	}
	for i := range c.Selections {
		if err := c.Selections[i].Validate(); err != nil {
			return err
		}
	}
	return nil
}

// AttestEvidence answers a challenge: one quote per requested bank (all
// signed over the same nonce), the logs the platform has, and what the
// device says it runs.
type AttestEvidence struct {
	Nonce    []byte  `cbor:"1,keyasint"`
	Quotes   []Quote `cbor:"2,keyasint"`
	EventLog []byte  `cbor:"3,keyasint,omitempty"` // binary_bios_measurements (TCG PC Client format)
	IMALog   []byte  `cbor:"4,keyasint,omitempty"` // ascii_runtime_measurements
	Firmware string  `cbor:"5,keyasint,omitempty"`
	Error    string  `cbor:"6,keyasint,omitempty"` // why the device could not quote (then Quotes is empty)
}

// Validate checks sizes.
func (e *AttestEvidence) Validate() error {
	if len(e.Nonce) != 32 {
		return errors.New("nonce size")
	}
	if len(e.Quotes) > 4 || (len(e.Quotes) == 0 && e.Error == "") {
		return errors.New("quotes")
	}
	for i := range e.Quotes {
		if err := e.Quotes[i].Validate(); err != nil {
			return fmt.Errorf("quote %d: %w", i, err)
		}
	}
	if len(e.EventLog) > MaxEventLog || len(e.IMALog) > MaxIMALog {
		return errors.New("log too large")
	}
	if len(e.Error) > 512 {
		return errors.New("error too long")
	}
	return label("firmware", e.Firmware, false)
}

// Verdict results.
const (
	VerdictPass = "pass"
	VerdictFail = "fail"
)

// AttestVerdict tells the device how its evidence was judged.
type AttestVerdict struct {
	Result  string `cbor:"1,keyasint"`
	Reason  Reason `cbor:"2,keyasint"`
	Message string `cbor:"3,keyasint,omitempty"`
}

// Validate checks the result.
func (v *AttestVerdict) Validate() error {
	if v.Result != VerdictPass && v.Result != VerdictFail {
		return fmt.Errorf("result %q", v.Result)
	}
	if len(v.Message) > 512 {
		return errors.New("message too long")
	}
	return nil
}

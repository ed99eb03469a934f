package wire

import (
	"errors"
	"fmt"
	"strings"
)

// Workload identity message types (the "6" entry of the version history:
// registered at Version until the lead's bump). The device asks on its up
// "workload" topic, the fleet answers on the down one with Corr set to
// the request's ID.
const (
	TypeWorkloadRequest = "workload.request" // device -> fleet (up "workload"): WorkloadRequest
	TypeWorkloadAnswer  = "workload.answer"  // fleet -> device (down "workload"): WorkloadAnswer
)

// KindWorkload is the topic kind of the workload identity messages.
const KindWorkload = "workload"

// Operations of a WorkloadRequest.
const (
	// WorkloadEntries asks for the registrations that apply to the device.
	WorkloadEntries = 1
	// WorkloadX509 asks for an X.509-SVID for CSR, whose key the device made.
	WorkloadX509 = 2
	// WorkloadJWT asks for a JWT-SVID for Audience.
	WorkloadJWT = 3
)

// Limits on workload messages.
const (
	MaxWorkloadName      = 64
	MaxWorkloadEntries   = 256
	MaxWorkloadAudiences = 8
	MaxWorkloadAudience  = 256
	MaxWorkloadCSR       = 4096
	MaxWorkloadJWT       = 8192
	MaxWorkloadPath      = 1024
	MaxWorkloadChain     = 4
	MaxWorkloadCert      = 8192
)

// ValidWorkloadName reports whether s is a workload registration name: 1
// to 64 of [a-z0-9._-], not starting with '.' or '-' (the last segment of
// the SPIFFE ID spiffe://<td>/device/<id>/workload/<name>).
func ValidWorkloadName(s string) bool { return len(s) <= MaxWorkloadName && ValidID(s) }

// WorkloadRequest asks the fleet for the device's workload registrations
// or for an SVID of one of them. Name is the registration; the fleet
// checks that it applies to the device. The workload's private key never
// leaves the device (CSR).
type WorkloadRequest struct {
	Op       int      `cbor:"1,keyasint"`
	Name     string   `cbor:"2,keyasint,omitempty"`
	CSR      []byte   `cbor:"3,keyasint,omitempty"` // DER PKCS#10, WorkloadX509
	Audience []string `cbor:"4,keyasint,omitempty"` // WorkloadJWT
}

// Validate checks the operation and bounds the fields it carries.
func (r *WorkloadRequest) Validate() error {
	switch r.Op {
	case WorkloadEntries:
		if r.Name != "" || len(r.CSR) != 0 || len(r.Audience) != 0 {
			return errors.New("entries request with a name, CSR or audience")
		}
		return nil
	case WorkloadX509:
		if len(r.CSR) == 0 || len(r.CSR) > MaxWorkloadCSR || len(r.Audience) != 0 {
			return errors.New("X.509-SVID request needs a CSR of at most 4096 bytes and no audience")
		}
	case WorkloadJWT:
		if len(r.CSR) != 0 || len(r.Audience) == 0 || len(r.Audience) > MaxWorkloadAudiences {
			return errors.New("JWT-SVID request needs 1 to 8 audiences and no CSR")
		}
		for _, a := range r.Audience {
			if a == "" || len(a) > MaxWorkloadAudience || !printable(a) {
				return errors.New("audience empty, too long or not printable ASCII")
			}
		}
	default:
		return fmt.Errorf("operation %d", r.Op)
	}
	if !ValidWorkloadName(r.Name) {
		return errors.New("workload name")
	}
	return nil
}

// WorkloadEntry is one registration as the device needs it: the name and
// SPIFFE ID, and the selectors a calling process must all match (unset
// ones match anything). UID and GID are set when HasUID and HasGID are.
type WorkloadEntry struct {
	Name      string `cbor:"1,keyasint"`
	SPIFFEID  string `cbor:"2,keyasint"`
	HasUID    bool   `cbor:"3,keyasint,omitempty"`
	UID       uint32 `cbor:"4,keyasint,omitempty"`
	HasGID    bool   `cbor:"5,keyasint,omitempty"`
	GID       uint32 `cbor:"6,keyasint,omitempty"`
	ExePath   string `cbor:"7,keyasint,omitempty"`
	ExeSHA256 []byte `cbor:"8,keyasint,omitempty"`
}

// Validate checks the name, the SPIFFE ID's shape and the selectors; an
// entry must select on at least one of them.
func (e *WorkloadEntry) Validate() error {
	if !ValidWorkloadName(e.Name) {
		return errors.New("workload name")
	}
	if !strings.HasPrefix(e.SPIFFEID, "spiffe://") || !strings.HasSuffix(e.SPIFFEID, "/workload/"+e.Name) || len(e.SPIFFEID) > 2048 {
		return errors.New("workload SPIFFE ID")
	}
	if len(e.ExePath) > MaxWorkloadPath || (e.ExePath != "" && e.ExePath[0] != '/') {
		return errors.New("executable path")
	}
	if len(e.ExeSHA256) != 0 && len(e.ExeSHA256) != 32 {
		return errors.New("executable SHA-256")
	}
	if !e.HasUID && !e.HasGID && e.ExePath == "" && len(e.ExeSHA256) == 0 {
		return errors.New("entry without a selector")
	}
	return nil
}

// WorkloadAnswer answers a WorkloadRequest. Status is StatusActive with
// what was asked for, or StatusRefused with the reason
// (ReasonQuarantined, ReasonAttestationFailed: ask again after the next
// passing attestation; ReasonBadRequest: no such registration for this
// device).
type WorkloadAnswer struct {
	Status  string          `cbor:"1,keyasint"`
	Reason  Reason          `cbor:"2,keyasint"`
	Message string          `cbor:"3,keyasint,omitempty"`
	Entries []WorkloadEntry `cbor:"4,keyasint,omitempty"` // WorkloadEntries
	// Chain is the X.509-SVID, leaf first (DER); Bundle the trust
	// domain's X.509 roots (DER).
	Chain  [][]byte `cbor:"5,keyasint,omitempty"`
	Bundle [][]byte `cbor:"6,keyasint,omitempty"`
	JWT    string   `cbor:"7,keyasint,omitempty"` // WorkloadJWT: compact JWS
	// Validity is the SVID's lifetime in seconds: the device asks again
	// before it ends, on its own clock.
	Validity int64 `cbor:"8,keyasint,omitempty"`
	// JWKS is the JWT bundle of the trust domain (RFC 7517 JSON), with
	// WorkloadJWT and WorkloadEntries answers.
	JWKS []byte `cbor:"9,keyasint,omitempty"`
}

// Validate checks the status and bounds the fields.
func (a *WorkloadAnswer) Validate() error {
	switch a.Status {
	case StatusActive:
	case StatusRefused:
		if len(a.Entries) != 0 || len(a.Chain) != 0 || a.JWT != "" {
			return errors.New("refusal with credentials")
		}
	default:
		return errors.New("status")
	}
	if len(a.Message) > 512 || a.Validity < 0 || len(a.Entries) > MaxWorkloadEntries || len(a.Chain) > MaxWorkloadChain ||
		len(a.Bundle) > MaxWorkloadChain || len(a.JWT) > MaxWorkloadJWT || len(a.JWKS) > 64<<10 {
		return errors.New("sizes")
	}
	for _, c := range append(append([][]byte(nil), a.Chain...), a.Bundle...) {
		if len(c) == 0 || len(c) > MaxWorkloadCert {
			return errors.New("certificate size")
		}
	}
	if a.JWT != "" && (strings.Count(a.JWT, ".") != 2 || !printable(a.JWT)) {
		return errors.New("JWT is not a compact JWS")
	}
	var errs []error
	for i := range a.Entries {
		if err := a.Entries[i].Validate(); err != nil {
			errs = append(errs, fmt.Errorf("entry %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

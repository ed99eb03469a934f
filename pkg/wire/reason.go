package wire

import "fmt"

// Reason is a machine-readable outcome code carried in results. Codes are
// stable across versions; new codes are only ever added.
type Reason uint16

// Reason codes.
const (
	ReasonOK                 Reason = 0  // success
	ReasonPending            Reason = 1  // waiting for an operator's approval
	ReasonBadRequest         Reason = 10 // malformed or invalid message
	ReasonUnsupportedVersion Reason = 11 // protocol version newer than the fleet's
	ReasonReplay             Reason = 12 // message ID or session already used, or stale timestamp
	ReasonRateLimited        Reason = 13 // too many requests; retry later
	ReasonUntrustedEK        Reason = 20 // EK certificate does not chain to a trusted manufacturer CA
	ReasonUnknownEK          Reason = 21 // EK not trusted by any configured path and no token
	ReasonEKMismatch         Reason = 22 // EK certificate key differs from the EK public area
	ReasonTokenInvalid       Reason = 30 // enrollment token unknown
	ReasonTokenExpired       Reason = 31 // enrollment token expired
	ReasonTokenUsed          Reason = 32 // enrollment token already used
	ReasonTokenBinding       Reason = 33 // token bound to another model
	ReasonAKAttributes       Reason = 40 // AK is not a restricted fixedTPM signing key of the required type
	ReasonTKAttributes       Reason = 41 // transport key attributes are not those of a non-exportable signing key
	ReasonCertifyInvalid     Reason = 42 // TPM2_Certify does not prove the transport key
	ReasonCSRInvalid         Reason = 43 // CSR malformed or its signature is bad
	ReasonCSRKeyMismatch     Reason = 44 // CSR key is not the certified transport key
	ReasonActivationFailed   Reason = 45 // credential activation answer is wrong
	ReasonQuoteInvalid       Reason = 46 // quote signature, nonce, selection or digest is wrong
	ReasonChallengeExpired   Reason = 47 // enrollment session unknown or expired
	ReasonClone              Reason = 50 // EK already enrolled under another identity
	ReasonDecommissioned     Reason = 51 // device decommissioned; enrollment refused
	ReasonNonceInvalid       Reason = 60 // attestation nonce unknown, reused or expired
	ReasonEventLogInvalid    Reason = 61 // event log does not replay to the quoted PCRs
	ReasonPolicyViolation    Reason = 62 // evidence verified but breaks the reference policy
	ReasonCounterRollback    Reason = 63 // TPM reset/restart counters went backwards
	ReasonNoPolicy           Reason = 64 // no reference policy applies; judged by quote only
	ReasonQuarantined        Reason = 65 // device is quarantined
	ReasonRevoked            Reason = 66 // certificate revoked
	ReasonAttestationFailed  Reason = 67 // renewal refused: the attestation in it did not pass
	ReasonFirmwareSignature  Reason = 70 // release lacks the threshold of valid signatures from the trusted set
	ReasonFirmwareExpired    Reason = 71 // release metadata expired
	ReasonFirmwareModel      Reason = 72 // release not built for this hardware model
	ReasonFirmwareRollback   Reason = 73 // security version below the device's anti-rollback counter
	ReasonFirmwareDigest     Reason = 74 // downloaded image does not match the manifest's size or digest
	ReasonFirmwareDownload   Reason = 75 // image could not be downloaded
	ReasonFirmwareInstall    Reason = 76 // writing the inactive slot or switching to it failed
	ReasonFirmwareHealth     Reason = 77 // the new image failed its health check; rolled back
	ReasonFirmwareTimeout    Reason = 78 // the device did not report within the campaign's per-device timeout
	ReasonTelemetryDropped   Reason = 80 // telemetry points dropped by the device's bounded outbox
	ReasonInternal           Reason = 90 // fleet-side failure; retry later
)

var reasonName = map[Reason]string{
	ReasonOK:                 "ok",
	ReasonPending:            "pending",
	ReasonBadRequest:         "bad_request",
	ReasonUnsupportedVersion: "unsupported_version",
	ReasonReplay:             "replay",
	ReasonRateLimited:        "rate_limited",
	ReasonUntrustedEK:        "untrusted_ek",
	ReasonUnknownEK:          "unknown_ek",
	ReasonEKMismatch:         "ek_mismatch",
	ReasonTokenInvalid:       "token_invalid",
	ReasonTokenExpired:       "token_expired",
	ReasonTokenUsed:          "token_used",
	ReasonTokenBinding:       "token_binding",
	ReasonAKAttributes:       "ak_attributes",
	ReasonTKAttributes:       "tk_attributes",
	ReasonCertifyInvalid:     "certify_invalid",
	ReasonCSRInvalid:         "csr_invalid",
	ReasonCSRKeyMismatch:     "csr_key_mismatch",
	ReasonActivationFailed:   "activation_failed",
	ReasonQuoteInvalid:       "quote_invalid",
	ReasonChallengeExpired:   "challenge_expired",
	ReasonClone:              "clone",
	ReasonDecommissioned:     "decommissioned",
	ReasonNonceInvalid:       "nonce_invalid",
	ReasonEventLogInvalid:    "eventlog_invalid",
	ReasonPolicyViolation:    "policy_violation",
	ReasonCounterRollback:    "counter_rollback",
	ReasonNoPolicy:           "no_policy",
	ReasonQuarantined:        "quarantined",
	ReasonRevoked:            "revoked",
	ReasonAttestationFailed:  "attestation_failed",
	ReasonFirmwareSignature:  "firmware_signature",
	ReasonFirmwareExpired:    "firmware_expired",
	ReasonFirmwareModel:      "firmware_model",
	ReasonFirmwareRollback:   "firmware_rollback",
	ReasonFirmwareDigest:     "firmware_digest",
	ReasonFirmwareDownload:   "firmware_download",
	ReasonFirmwareInstall:    "firmware_install",
	ReasonFirmwareHealth:     "firmware_health",
	ReasonFirmwareTimeout:    "firmware_timeout",
	ReasonTelemetryDropped:   "telemetry_dropped",
	ReasonInternal:           "internal",
}

var reasonText = map[Reason]string{
	ReasonOK:                 "ok",
	ReasonPending:            "pending operator approval",
	ReasonBadRequest:         "bad request",
	ReasonUnsupportedVersion: "unsupported protocol version",
	ReasonReplay:             "replayed message",
	ReasonRateLimited:        "rate limited",
	ReasonUntrustedEK:        "EK certificate not issued by a trusted manufacturer CA",
	ReasonUnknownEK:          "unknown EK and no enrollment token",
	ReasonEKMismatch:         "EK certificate does not match the EK",
	ReasonTokenInvalid:       "invalid enrollment token",
	ReasonTokenExpired:       "enrollment token expired",
	ReasonTokenUsed:          "enrollment token already used",
	ReasonTokenBinding:       "enrollment token bound to another model",
	ReasonAKAttributes:       "attestation key attributes not acceptable",
	ReasonTKAttributes:       "transport key attributes not acceptable",
	ReasonCertifyInvalid:     "transport key certification invalid",
	ReasonCSRInvalid:         "certificate request invalid",
	ReasonCSRKeyMismatch:     "certificate request key is not the certified key",
	ReasonActivationFailed:   "credential activation failed",
	ReasonQuoteInvalid:       "quote invalid",
	ReasonChallengeExpired:   "enrollment session unknown or expired",
	ReasonClone:              "EK already enrolled under another identity",
	ReasonDecommissioned:     "device decommissioned",
	ReasonNonceInvalid:       "attestation nonce unknown, reused or expired",
	ReasonEventLogInvalid:    "event log does not match the quoted PCRs",
	ReasonPolicyViolation:    "evidence breaks the reference policy",
	ReasonCounterRollback:    "TPM reset or restart counter went backwards",
	ReasonNoPolicy:           "no reference policy applies",
	ReasonQuarantined:        "device quarantined",
	ReasonRevoked:            "certificate revoked",
	ReasonAttestationFailed:  "attestation did not pass",
	ReasonFirmwareSignature:  "release not signed by the required number of trusted keys",
	ReasonFirmwareExpired:    "release metadata expired",
	ReasonFirmwareModel:      "release not built for this hardware model",
	ReasonFirmwareRollback:   "release security version below the anti-rollback counter",
	ReasonFirmwareDigest:     "image does not match the manifest",
	ReasonFirmwareDownload:   "image download failed",
	ReasonFirmwareInstall:    "installation failed",
	ReasonFirmwareHealth:     "health check failed; rolled back",
	ReasonFirmwareTimeout:    "device did not report in time",
	ReasonTelemetryDropped:   "telemetry dropped by the bounded outbox",
	ReasonInternal:           "internal error",
}

// String returns the reason's stable name, e.g. "unknown_ek".
func (r Reason) String() string {
	if s, ok := reasonName[r]; ok {
		return s
	}
	return fmt.Sprintf("reason_%d", uint16(r))
}

// Description returns a sentence for people.
func (r Reason) Description() string {
	if s, ok := reasonText[r]; ok {
		return s
	}
	return r.String()
}

// Temporary reports whether the device should retry the same request later.
func (r Reason) Temporary() bool {
	return r == ReasonRateLimited || r == ReasonInternal || r == ReasonChallengeExpired || r == ReasonPending
}

// Error is a refusal with its reason code. The message is public: it is sent
// to the device and must not carry internal details.
type Error struct {
	Reason  Reason
	Message string
	Err     error // internal cause, never sent
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("%s: %s", e.Reason, e.Message)
	}
	return e.Reason.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Refuse returns an *Error with a public message and an internal cause.
func Refuse(r Reason, public string, cause error) *Error {
	return &Error{Reason: r, Message: public, Err: cause}
}

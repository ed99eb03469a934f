package wire

import "slices"

// Topic kinds: the last level of a topic, naming what travels on it
// (KindTelemetry and KindFirmware are with their messages).
const (
	KindEnroll    = "enroll"    // enroll up: EnrollRequest, EnrollProof
	KindChallenge = "challenge" // enroll down: EnrollChallenge
	KindResult    = "result"    // enroll down: EnrollResult
	KindRetry     = "retry"     // enroll down: Retry
	KindHello     = "hello"     // dev up: Hello
	KindAttest    = "attest"    // dev up: AttestRequest, AttestEvidence; dev down: AttestChallenge
	KindVerdict   = "verdict"   // dev down: AttestVerdict
	KindRenew     = "renew"     // dev up: RenewRequest
	KindCert      = "cert"      // dev down: RenewResult, Rotate
	KindSecret    = "secret"    // dev down: SecretDeliver; dev up: SecretAck
	KindTrust     = "trust"     // dev down: TrustBundle
	KindSSH       = "ssh"       // dev up: SSHRequest; dev down: SSHCerts
	KindAccess    = "access"    // dev up: AccessSessions; dev down: AccessTrust
)

// Message describes one message type: the envelope type, the topic it
// travels on and the Go type of its body.
type Message struct {
	Type    string // envelope type, e.g. TypeHello
	Segment string // SegEnroll (a bootstrap client) or SegDevice (an enrolled device)
	Dir     string // Up (device -> fleet) or Down (fleet -> device)
	Kind    string // the topic kind it travels on
	Since   int    // the protocol version that introduced it
	// New returns a pointer to a new zero body, ready for DecodeBody.
	// Every body implements Validator.
	New func() any
}

// messages is the registry. It is read only: Messages hands out copies.
var messages = [...]Message{
	{TypeEnrollRequest, SegEnroll, Up, KindEnroll, 1, body[EnrollRequest]},
	{TypeEnrollChallenge, SegEnroll, Down, KindChallenge, 1, body[EnrollChallenge]},
	{TypeEnrollProof, SegEnroll, Up, KindEnroll, 1, body[EnrollProof]},
	{TypeEnrollResult, SegEnroll, Down, KindResult, 1, body[EnrollResult]},
	{TypeEnrollRetry, SegEnroll, Down, KindRetry, 1, body[Retry]},
	{TypeHello, SegDevice, Up, KindHello, 1, body[Hello]},
	{TypeAttestRequest, SegDevice, Up, KindAttest, 2, body[AttestRequest]},
	{TypeAttestChallenge, SegDevice, Down, KindAttest, 2, body[AttestChallenge]},
	{TypeAttestEvidence, SegDevice, Up, KindAttest, 2, body[AttestEvidence]},
	{TypeAttestVerdict, SegDevice, Down, KindVerdict, 2, body[AttestVerdict]},
	{TypeRenewRequest, SegDevice, Up, KindRenew, 3, body[RenewRequest]},
	{TypeRenewResult, SegDevice, Down, KindCert, 3, body[RenewResult]},
	{TypeRotate, SegDevice, Down, KindCert, 3, body[Rotate]},
	{TypeSecretDeliver, SegDevice, Down, KindSecret, 3, body[SecretDeliver]},
	{TypeSecretAck, SegDevice, Up, KindSecret, 3, body[SecretAck]},
	{TypeSSHRequest, SegDevice, Up, KindSSH, 3, body[SSHRequest]},
	{TypeSSHCerts, SegDevice, Down, KindSSH, 3, body[SSHCerts]},
	{TypeTrustBundle, SegDevice, Down, KindTrust, 4, body[TrustBundle]},
	{TypeFirmwareAnnounce, SegDevice, Down, KindFirmware, 4, body[FirmwareAnnounce]},
	{TypeFirmwareReport, SegDevice, Up, KindFirmware, 4, body[FirmwareReport]},
	{TypeFirmwareTrust, SegDevice, Down, KindFirmware, 4, body[FirmwareTrust]},
	{TypeTelemetryBatch, SegDevice, Up, KindTelemetry, 4, body[TelemetryBatch]},
	{TypeTelemetryAck, SegDevice, Down, KindTelemetry, 4, body[TelemetryAck]},
	{TypeWorkloadRequest, SegDevice, Up, KindWorkload, Version, body[WorkloadRequest]},
	{TypeWorkloadAnswer, SegDevice, Down, KindWorkload, Version, body[WorkloadAnswer]},
	{TypeAccessTrust, SegDevice, Down, KindAccess, Version, body[AccessTrust]},
	{TypeAccessSessions, SegDevice, Up, KindAccess, Version, body[AccessSessions]},
}

func body[T any]() any { return new(T) }

// Messages returns every message type of the protocol, in the order of the
// version history. Decoding by type, the fuzz tests and the pinned vectors
// (package wiretest) iterate this list, so a message type is covered by
// all of them as soon as it is registered here; a test fails for a Type
// constant that is not.
func Messages() []Message { return slices.Clone(messages[:]) }

// Lookup returns the registered message of a type.
func Lookup(typ string) (Message, bool) {
	for _, m := range messages {
		if m.Type == typ {
			return m, true
		}
	}
	return Message{}, false
}

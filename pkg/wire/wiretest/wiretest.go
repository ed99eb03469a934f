// Package wiretest holds the pinned test vectors of the device protocol
// (package wire): for every message type, the exact CBOR a body encodes to,
// and an envelope. A change to a field number or an encoding option breaks
// devices in the field, so every vector must stay byte-identical; a change
// is deliberate and comes with a new protocol version.
//
// Other implementations of the protocol can check themselves against the
// same vectors: vectors.json in this directory holds them as JSON (name,
// type, hex, whether the body validates, the decoded value); the package's
// tests keep it in step with Bodies and Envelopes (go test -update
// rewrites it).
package wiretest

import (
	"bytes"
	"encoding/hex"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Vector is the encoding of one message body.
type Vector struct {
	Name string // unique; the message type, then what varies
	Type string // the message type whose body Value is
	Note string // what the vector pins, when not obvious
	// Value is a pointer to the body, of the type wire.Lookup(Type).New
	// returns.
	Value any
	Hex   string // the CBOR encoding of Value (wire.Marshal), lowercase hex
	// Valid reports whether Value passes its Validate. Vectors with
	// fields shortened to stay readable (a one-byte session) do not: a
	// receiver decodes them, then refuses them.
	Valid bool
}

// Bytes returns the encoding the vector pins.
func (v Vector) Bytes() []byte { return mustHex(v.Hex) }

// EnvelopeVector is the encoding of a whole message: the envelope around a
// body.
type EnvelopeVector struct {
	Name     string
	Envelope wire.Envelope
	Hex      string // the CBOR encoding of Envelope, lowercase hex
}

// Bytes returns the encoding the vector pins.
func (v EnvelopeVector) Bytes() []byte { return mustHex(v.Hex) }

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic("wiretest: vector hex: " + err.Error())
	}
	return b
}

// Envelopes returns the envelope vectors.
func Envelopes() []EnvelopeVector {
	return []EnvelopeVector{{
		Name: "hello",
		Envelope: wire.Envelope{V: 1, Type: wire.TypeHello, ID: bytes.Repeat([]byte{0xab}, 16), Time: 1_700_000_000_000,
			Body: mustHex("a301616d026166036161")},
		Hex: "a50101026568656c6c6f0350abababababababababababababababab051b0000018bcfe5680006a301616d026166036161",
	}}
}

// Sample values the vectors share.
const (
	sshHostKey  = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@gw"
	sshHostCert = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29t dev-1"
)

// nonce is a 32-byte fleet nonce.
func nonce() []byte { return bytes.Repeat([]byte{0x11}, 32) }

// quote is a one-PCR SHA-256 quote with shortened TPM structures.
func quote() wire.Quote {
	return wire.Quote{Attest: []byte{1}, Signature: []byte{2}, Hash: wire.AlgSHA256, PCRs: []int{0}, Values: [][]byte{{3}}}
}

// Bodies returns the body vectors: at least one for every registered
// message type, in the order of wire.Messages. Each call returns new
// values.
func Bodies() []Vector {
	point := wire.TelemetryPoint{Time: 1_700_000_000_000}
	point.SetMetric("cpu.busy", 0.5)
	point.SetMembers("listen.tcp", []string{"22"})
	point.SetInfo("boot_id", "b")
	return []Vector{
		{Name: "enroll.request", Type: wire.TypeEnrollRequest, Valid: true,
			Value: &wire.EnrollRequest{EKPublic: []byte{1}, EKCert: []byte{2}, AKPublic: []byte{3}, TKPublic: []byte{4}, CSR: []byte{5},
				Model: "gw-1", Firmware: "1.0.0", Serial: "SN1", Token: "sgt_x"},
			Hex: "a9014101024102044103054104064105076467772d310865312e302e300963534e310a657367745f78"},
		{Name: "enroll.challenge/event-log", Type: wire.TypeEnrollChallenge,
			Note: "asks for the event log (field 7, version 5)",
			Value: &wire.EnrollChallenge{Session: []byte{1}, CredentialBlob: []byte{2}, EncryptedSecret: []byte{3}, Nonce: []byte{4},
				Selection: wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: []int{0}}, Expires: 5, EventLog: true},
			Hex: "a7014101024102034103044104" + "05a2010b028100" + "0605" + "07f5"},
		{Name: "enroll.challenge", Type: wire.TypeEnrollChallenge,
			Note: "without the event log, field 7 is absent: older devices decode the challenge",
			Value: &wire.EnrollChallenge{Session: []byte{1}, CredentialBlob: []byte{2}, EncryptedSecret: []byte{3}, Nonce: []byte{4},
				Selection: wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: []int{0}}, Expires: 5},
			Hex: "a6014101024102034103044104" + "05a2010b028100" + "0605"},
		{Name: "enroll.proof/event-log", Type: wire.TypeEnrollProof,
			Note: "carries the event log (field 6, version 5); absent when not asked for",
			Value: &wire.EnrollProof{Session: []byte{1}, Activation: []byte{2}, CertifyInfo: []byte{3}, CertifySig: []byte{4},
				Quote: wire.Quote{Attest: []byte{5}, Signature: []byte{6}, Hash: wire.AlgSHA256, PCRs: []int{0}, Values: [][]byte{{7}}}, EventLog: []byte{8}},
			Hex: "a6014101024102034103044104" + "05a5014105024106030b048100058141" + "07" + "064108"},
		{Name: "enroll.result/active", Type: wire.TypeEnrollResult, Valid: true,
			Value: &wire.EnrollResult{Status: wire.StatusActive, DeviceID: "dev-1", Certificate: []byte{1}, Chain: [][]byte{{2}},
				TrustBundle: [][]byte{{3}}, Session: bytes.Repeat([]byte{0x22}, 16), FirmwareTrust: []byte("{}")},
			Hex: "a80166616374697665020004656465762d3105410106814102078141030950222222222222222222222222222222220a427b7d"},
		{Name: "enroll.result/refused", Type: wire.TypeEnrollResult, Valid: true,
			Value: &wire.EnrollResult{Status: wire.StatusRefused, Reason: wire.ReasonUnknownEK, Message: "EK not trusted", RetryAfter: 60},
			Hex:   "a40167726566757365640215036e454b206e6f74207472757374656408183c"},
		{Name: "enroll.result/rotations", Type: wire.TypeEnrollResult, Valid: true,
			Note:  "the release trust rotations are field 11 (version 5), encoded as FirmwareTrust.Rotations",
			Value: &wire.EnrollResult{Status: wire.StatusRefused, FirmwareRotations: []wire.TrustRotation{{Statement: []byte("s"), Bundles: [][]byte{{1}}}}},
			Hex:   "a30167726566757365640200" + "0b81a2014173028141" + "01"},
		{Name: "enroll.retry", Type: wire.TypeEnrollRetry, Valid: true, Note: "an empty map",
			Value: &wire.Retry{}, Hex: "a0"},
		{Name: "hello", Type: wire.TypeHello, Valid: true,
			Value: &wire.Hello{Model: "m", Firmware: "f", Agent: "a"}, Hex: "a301616d026166036161"},
		{Name: "attest.request", Type: wire.TypeAttestRequest, Valid: true,
			Value: &wire.AttestRequest{Reason: "schedule"}, Hex: "a101687363686564756c65"},
		{Name: "attest.challenge", Type: wire.TypeAttestChallenge, Valid: true,
			Value: &wire.AttestChallenge{Nonce: nonce(), Selections: []wire.PCRSelection{{Hash: wire.AlgSHA256, PCRs: []int{0, 7}}, {Hash: 4, PCRs: []int{0, 7}}},
				Expires: 1_700_000_060_000, EventLog: true, IMALog: true},
			Hex: "a501582011111111111111111111111111111111111111111111111111111111111111110282a2010b02820007a2010402820007031b0000018bcfe6526004f505f5"},
		{Name: "attest.challenge/renew", Type: wire.TypeAttestChallenge, Valid: true, Note: "a nonce for a renewal (version 3)",
			Value: &wire.AttestChallenge{Nonce: nonce(), Selections: []wire.PCRSelection{{Hash: wire.AlgSHA256, PCRs: []int{0}}}, Expires: 1_700_000_060_000,
				Purpose: wire.PurposeRenew},
			Hex: "a401582011111111111111111111111111111111111111111111111111111111111111110281a2010b028100031b0000018bcfe65260066572656e6577"},
		{Name: "attest.evidence", Type: wire.TypeAttestEvidence, Valid: true,
			Value: &wire.AttestEvidence{Nonce: nonce(), Quotes: []wire.Quote{quote()}, EventLog: []byte{4}, IMALog: []byte("10 ab ima-ng\n"), Firmware: "1.0.0"},
			Hex:   "a501582011111111111111111111111111111111111111111111111111111111111111110281a5014101024102030b04810005814103034104044d313020616220696d612d6e670a0565312e302e30"},
		{Name: "attest.evidence/error", Type: wire.TypeAttestEvidence, Valid: true, Note: "a device that could not quote says why",
			Value: &wire.AttestEvidence{Nonce: nonce(), Error: "tpm: quote failed"},
			Hex:   "a3015820111111111111111111111111111111111111111111111111111111111111111102f6067174706d3a2071756f7465206661696c6564"},
		{Name: "attest.verdict", Type: wire.TypeAttestVerdict, Valid: true,
			Value: &wire.AttestVerdict{Result: wire.VerdictFail, Reason: wire.ReasonPolicyViolation, Message: "PCR 9 differs"},
			Hex:   "a301646661696c02183e036d50435220392064696666657273"},
		{Name: "cert.renew", Type: wire.TypeRenewRequest, Valid: true,
			Value: &wire.RenewRequest{Nonce: nonce(), TKPublic: []byte{1}, CertifyInfo: []byte{2}, CertifySig: []byte{3}, CSR: []byte{4},
				Evidence: wire.AttestEvidence{Nonce: nonce(), Quotes: []wire.Quote{quote()}}},
			Hex: "a6015820111111111111111111111111111111111111111111111111111111111111111102410103410204410305410406a201582011111111111111111111111111111111111111111111111111111111111111110281a5014101024102030b04810005814103"},
		{Name: "cert.result/active", Type: wire.TypeRenewResult, Valid: true,
			Value: &wire.RenewResult{Status: wire.StatusActive, Certificate: []byte{1}, Chain: [][]byte{{2}}, TrustBundle: [][]byte{{3}}},
			Hex:   "a5016661637469766502000441010581410206814103"},
		{Name: "cert.result/refused", Type: wire.TypeRenewResult, Valid: true,
			Value: &wire.RenewResult{Status: wire.StatusRefused, Reason: wire.ReasonAttestationFailed, Message: "attestation failed", RetryAfter: 30},
			Hex:   "a401677265667573656402184303726174746573746174696f6e206661696c656407181e"},
		{Name: "cert.rotate", Type: wire.TypeRotate, Valid: true,
			Value: &wire.Rotate{Reason: "operator", Job: "job-1"}, Hex: "a201686f70657261746f7202656a6f622d31"},
		{Name: "secret.deliver", Type: wire.TypeSecretDeliver, Valid: true, Note: "bound to PCR 7, with a grace period (field 7, version 4)",
			Value: &wire.SecretDeliver{Name: "disk-key", Version: 2, Public: []byte{1}, Duplicate: []byte{2}, Seed: []byte{3},
				PCRs: &wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: []int{7}}, Grace: 3600},
			Hex: "a701686469736b2d6b6579020203410104410205410306a2010b02810707190e10"},
		{Name: "secret.ack", Type: wire.TypeSecretAck, Valid: true,
			Value: &wire.SecretAck{Name: "disk-key", Version: 2, OK: true}, Hex: "a301686469736b2d6b6579020203f5"},
		{Name: "secret.ack/failed", Type: wire.TypeSecretAck, Valid: true,
			Value: &wire.SecretAck{Name: "disk-key", Version: 2, Error: "import: policy check failed"}, Hex: "a401686469736b2d6b6579020203f404781b696d706f72743a20706f6c69637920636865636b206661696c6564"},
		{Name: "ssh.request", Type: wire.TypeSSHRequest, Valid: true,
			Value: &wire.SSHRequest{HostKeys: []string{sshHostKey}}, Hex: "a1018178587373682d65643235353139204141414143334e7a6143316c5a4449314e54453541414141494f4d71716e6b567a726d3053644736554f6f714b4c73616267483543396f6b5769306468326c39474b4a6c20726f6f74406777"},
		{Name: "ssh.certs", Type: wire.TypeSSHCerts, Valid: true,
			Value: &wire.SSHCerts{Status: wire.StatusActive, Message: "key 1: type not allowed", Certs: []wire.SSHCert{{Index: 0, Cert: sshHostCert}}, Validity: 86400},
			Hex:   "a50166616374697665020003776b657920313a2074797065206e6f7420616c6c6f7765640481a201000278577373682d656432353531392d636572742d763031406f70656e7373682e636f6d204141414149484e7a6143316c5a4449314e5445354c574e6c636e5174646a4178514739775a57357a6332677559323974206465762d31051a00015180"},
		{Name: "ssh.certs/refused", Type: wire.TypeSSHCerts, Valid: true,
			Value: &wire.SSHCerts{Status: wire.StatusRefused, Reason: wire.ReasonQuarantined}, Hex: "a2016772656675736564021841"},
		{Name: "trust.bundle", Type: wire.TypeTrustBundle, Valid: true,
			Value: &wire.TrustBundle{Roots: [][]byte{{0x30, 0x03, 0x02, 0x01, 0x01}}}, Hex: "a10181453003020101"},
		{Name: "firmware.announce", Type: wire.TypeFirmwareAnnounce, Valid: true,
			Value: &wire.FirmwareAnnounce{Campaign: "c", Update: "u", Manifest: []byte{1}, Bundles: [][]byte{{2}}, Path: "/p"},
			Hex:   "a50161630261750341010481410205622f70"},
		{Name: "firmware.report", Type: wire.TypeFirmwareReport, Valid: true,
			Value: &wire.FirmwareReport{Update: "u", Campaign: "c", Phase: "failed", Final: true, Reason: wire.ReasonFirmwareRollback,
				Message: "m", Version: "2", Running: "1", Slot: "a"},
			Hex: "a901617502616303666661696c656404f505184906616d076132086131096161"},
		{Name: "firmware.report/fetched", Type: wire.TypeFirmwareReport, Valid: true,
			Value: &wire.FirmwareReport{Update: "u", Campaign: "c", Phase: "failed", Final: true, Reason: wire.ReasonFirmwareRollback,
				Message: "m", Version: "2", Running: "1", Slot: "a", Fetched: 1000},
			Hex: "aa01617502616303666661696c656404f505184906616d0761320861310961610a1903e8"},
		{Name: "firmware.trust", Type: wire.TypeFirmwareTrust, Valid: true,
			Value: &wire.FirmwareTrust{Trust: []byte{1}, Rotations: []wire.TrustRotation{{Statement: []byte{2}, Bundles: [][]byte{{3}}}}},
			Hex:   "a20141010281a201410202814103"},
		{Name: "telemetry.batch", Type: wire.TypeTelemetryBatch, Valid: true,
			Value: &wire.TelemetryBatch{Stream: bytes.Repeat([]byte{1}, wire.TelemetryStreamLen), First: 3, Points: []wire.TelemetryPoint{point}, Acked: 2, Dropped: 1},
			Hex: "a5015001010101010101010101010101010101020303" +
				"81a4011b0000018bcfe5680002a1686370752e627573" + "79f93800" + "03a16a6c697374656e2e74637081623232" +
				"04a167626f6f745f69646162" + "0402" + "0501"},
		{Name: "telemetry.ack", Type: wire.TypeTelemetryAck, Valid: true,
			Value: &wire.TelemetryAck{Stream: bytes.Repeat([]byte{2}, wire.TelemetryStreamLen), Through: 9, Reason: wire.ReasonTelemetryDropped, Dropped: 4},
			Hex:   "a401500202020202020202020202020202020202090318500404"},
		{Name: "workload.request/entries", Type: wire.TypeWorkloadRequest, Valid: true,
			Value: &wire.WorkloadRequest{Op: wire.WorkloadEntries}, Hex: "a10101"},
		{Name: "workload.request/x509", Type: wire.TypeWorkloadRequest, Valid: true,
			Value: &wire.WorkloadRequest{Op: wire.WorkloadX509, Name: "web", CSR: []byte{1}}, Hex: "a301020263776562034101"},
		{Name: "workload.request/jwt", Type: wire.TypeWorkloadRequest, Valid: true,
			Value: &wire.WorkloadRequest{Op: wire.WorkloadJWT, Name: "web", Audience: []string{"sts.amazonaws.com"}}, Hex: "a3010302637765620481717374732e616d617a6f6e6177732e636f6d"},
		{Name: "workload.answer/entries", Type: wire.TypeWorkloadAnswer, Valid: true, Note: "uid 0 is carried: HasUID says it is set",
			Value: &wire.WorkloadAnswer{Status: wire.StatusActive, Entries: []wire.WorkloadEntry{{Name: "web", SPIFFEID: "spiffe://td/device/d/workload/web",
				HasUID: true, UID: 0, ExePath: "/usr/bin/web", ExeSHA256: bytes.Repeat([]byte{7}, 32)}}}, Hex: "a3016661637469766502000481a501637765620278217370696666653a2f2f74642f6465766963652f642f776f726b6c6f61642f77656203f5076c2f7573722f62696e2f7765620858200707070707070707070707070707070707070707070707070707070707070707"},
		{Name: "workload.answer/x509", Type: wire.TypeWorkloadAnswer, Valid: true,
			Value: &wire.WorkloadAnswer{Status: wire.StatusActive, Chain: [][]byte{{1}}, Bundle: [][]byte{{2}}, Validity: 3600}, Hex: "a501666163746976650200058141010681410208190e10"},
		{Name: "workload.answer/jwt", Type: wire.TypeWorkloadAnswer, Valid: true,
			Value: &wire.WorkloadAnswer{Status: wire.StatusActive, JWT: "a.b.c", JWKS: []byte("{}"), Validity: 300}, Hex: "a5016661637469766502000765612e622e630819012c09427b7d"},
		{Name: "workload.answer/refused", Type: wire.TypeWorkloadAnswer, Valid: true,
			Value: &wire.WorkloadAnswer{Status: wire.StatusRefused, Reason: wire.ReasonQuarantined}, Hex: "a2016772656675736564021841"},
		{Name: "access.trust", Type: wire.TypeAccessTrust, Valid: true,
			Value: &wire.AccessTrust{UserCAKeys: []string{"ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTI= ca"},
				Logins: []wire.AccessLogin{{Login: "root", Principals: []string{"root@dev-1"}}}, RevokedKeys: []byte("SSHKRL\n\x00"), Generation: 2},
			Hex: "a40181782b65636473612d736861322d6e6973747032353620414141414532566a5a484e684c584e6f5954493d2063610281a20164726f6f7402816a726f6f74406465762d3103485353484b524c0a000402"},
		{Name: "access.sessions/request", Type: wire.TypeAccessSessions, Valid: true,
			Note:  "no events: asks for access.trust",
			Value: &wire.AccessSessions{}, Hex: "a101f6"},
		{Name: "access.sessions", Type: wire.TypeAccessSessions, Valid: true,
			Value: &wire.AccessSessions{Events: []wire.AccessSession{{Event: wire.AccessSessionStart, Time: 1700000000, User: "root", From: "10.0.0.5", Port: 50022,
				KeyID: "sigil-grant:g1", Serial: 7, CA: "SHA256:x"}}},
			Hex: "a10181a801657374617274021a6553f1000364726f6f74046831302e302e302e350519c366066e736967696c2d6772616e743a6731070708685348413235363a78"},
	}
}

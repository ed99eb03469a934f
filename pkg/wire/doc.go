// Package wire is Sigil's device protocol: MQTT topics, the CBOR envelope,
// message bodies, reason codes and the protocol version.
//
// Both sides import it; it imports neither. Every decoder here accepts bytes
// from the network and is fuzzed: malformed input yields an error, never a
// panic, and sizes are bounded before anything is allocated. Messages lists
// every message type with its topic and body; the fuzzer and the pinned
// vectors (package wiretest) iterate it, so a new type is covered by both
// as soon as it is registered.
//
// Peers of different versions: the fleet speaks every version from
// OldestVersion (the previous release's) to Version, each device in the
// one it speaks (Negotiate, EncodeFor, Downgrade), and refuses, never
// trims, a message the device's version cannot carry (Needs,
// ErrNeedsVersion). A receiver refuses an envelope above its own version.
//
// Protocol version history (one increasing integer, see Version):
//
//	1 (2026-11-22) enrollment: request, challenge, proof, result, retry; hello.
//	2 (2026-11-22) attestation: request, challenge, evidence, verdict.
//	3 (2026-11-22) credential lifecycle: renew, result, rotate; sealed secrets;
//	  SSH host certificates (ssh.request, ssh.certs).
//	4 (2026-11-22) CA rotation: trust.bundle; firmware updates; telemetry.
//	5 (2026-12-07) security fixes (issue 11): enroll.result carries the
//	  signed release trust rotations (EnrollResult.FirmwareRotations, field
//	  11); enroll.challenge may ask for the event log (field 7) and
//	  enroll.proof carries it (field 6), so the first quote is judged by
//	  policies with event rules too; firmware.report phase advancing_floor
//	  (committed only once the TPM anti-rollback counter holds the
//	  release's security version); a release trust rotation's statement
//	  (TrustRotation.Statement) may end in one newline: the bytes as its
//	  signers signed the file.
//	6 (unreleased) workload identities: workload.request, workload.answer;
//	  just-in-time operator access: access.trust (user CA, logins and
//	  principals, KRL) and access.sessions (sshd logins seen). Registered
//	  at Version until the version moves to 6. firmware.report carries the
//	  bytes the device fetched for the update (FirmwareReport.Fetched,
//	  field 10; adaptive updates).
package wire

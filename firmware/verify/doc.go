// Package verify decides whether a firmware release may be installed: it
// checks sigstore signature bundles over a release manifest against a set
// of trusted release keys with a threshold, the manifest's expiry and
// hardware models, the anti-rollback floor, and finally the downloaded
// image's size and digest. Every check returns the verified value or a
// *wire.Error whose reason a device reports (pkg/wire's ReasonFirmware*).
//
// It runs on devices, so it uses the standard library's crypto and JSON
// only: no sigstore-go, no protobuf, no network.
//
// # Signatures
//
// A signature is a sigstore bundle as `cosign sign-blob --key K
// --new-bundle-format --bundle B` writes it (media type MediaTypeV03, or
// MediaTypeV02): verificationMaterial.publicKey.hint names the key and
// messageSignature holds the digest of the signed message and the
// signature. firmware/sign writes the same format. A bundle counts for a
// key of the trust set when
//
//   - its messageDigest is the SHA-256 (or the SHA-384/SHA-512 it names)
//     of exactly the manifest bytes, and
//   - its signature verifies over the manifest bytes with that key, the way
//     sigstore's default verifiers do: ECDSA P-256 with SHA-256, ECDSA
//     P-384 with SHA-384, pure Ed25519.
//
// The hint (the key ID, see KeyID) only picks which key to try first.
// Certificate-based (keyless) bundles and DSSE envelopes are refused, and
// so are bundles in cosign's old format (`cosign sign-blob --bundle`
// without --new-bundle-format: ErrLegacyBundle), with a public message
// that names the expected format (LegacyBundleHint).
// Transparency-log entries and signed timestamps in a bundle are ignored:
// trust comes from the keys the device was given, with no clock or log
// needed, and the manifest's own expiry bounds how long a signed release
// stays acceptable.
//
// Because the manifest binds the image's size and SHA-256, a signature over
// one release's manifest never validates another image (mix-and-match).
//
// # Trust sets
//
// A TrustSet is 1 to MaxKeys release keys, a threshold M (default 1; e.g.
// 2 of 3 in production) and a sequence number. A release needs valid
// signatures from M distinct keys of the set; the same key signing twice
// counts once. A device receives its set at its first enrollment (trust on
// first enrollment: it has nothing to check the fleet's set against) and
// changes it only through Rotate, at a later enrollment too: a statement,
// the new set's canonical encoding (a statement file's one trailing
// newline allowed: the signatures cover the bytes as they were signed),
// signed by the current threshold of the current keys and by the new
// threshold of the new keys, whose sequence number is the current one plus
// one.
//
// Ed25519 keys of small order (the identity and the seven other points
// whose order divides 8) and non-canonical encodings are refused wherever a
// key is loaded (ParsePublicKey, NewTrustSet, ParseTrustSet and so Rotate)
// with ErrWeakKey: such a key "verifies" signatures nobody made, which
// would let M-1 keys satisfy a threshold of M.
//
// # Order of the checks
//
// Release checks signatures before it interprets the manifest, then
// expiry, then model; the device then checks the rollback floor
// (Verified.CheckRollback), downloads, and checks the image (Image or
// ImageCheck) before installing it.
package verify

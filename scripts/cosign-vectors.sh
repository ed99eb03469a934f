#!/bin/sh
# Regenerates the firmware signature test vectors with the real cosign CLI
# (v2.6.5: GOFLAGS= go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5)
# and openssl. The tests in firmware/verify read whatever this writes; none of
# them hard-codes a key or a signature.
#
# Usage: scripts/cosign-vectors.sh [output directory]
#   default output: firmware/verify/testdata/cosign
#   SIGIL names the sigil binary (go build ./cmd/sigil), for the trust
#   statement; default: sigil on the PATH.
#
# Everything here is test material: the private keys are TEST KEYS with an
# empty password, committed on purpose, and must never sign a real release.
set -eu

out=${1:-firmware/verify/testdata/cosign}
COSIGN=${COSIGN:-cosign}
SIGIL=${SIGIL:-sigil}
command -v "$COSIGN" >/dev/null || { echo "cosign not found (set COSIGN=/path/to/cosign)" >&2; exit 1; }
command -v "$SIGIL" >/dev/null || { echo "sigil not found (set SIGIL=/path/to/sigil)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl not found" >&2; exit 1; }

mkdir -p "$out"
rm -f "$out"/*
cd "$out"

# An empty password for every key (cosign asks for one otherwise).
export COSIGN_PASSWORD=""

# Release keys: three ECDSA P-256 keys as cosign makes them, one ECDSA P-384
# key imported from openssl, and a key that is not in any trust set.
for k in a b c untrusted; do
	"$COSIGN" generate-key-pair --output-key-prefix "test-$k" >/dev/null
done
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out p384-plain.pem 2>/dev/null
"$COSIGN" import-key-pair --key p384-plain.pem --output-key-prefix test-p384 >/dev/null
rm -f p384-plain.pem

# Two images and their manifests, in the canonical form of firmware/manifest
# (compact JSON, fields in this order, no trailing newline).
yes "sigil test firmware image 1.4.0" | head -c 16384 >image.bin
yes "sigil other firmware image 9.9.9" | head -c 16384 >other-image.bin

manifest() { # name version secver image
	sum=$(sha256sum "$4" | cut -d' ' -f1)
	size=$(wc -c <"$4" | tr -d ' ')
	printf '{"type":"sigil.firmware.manifest/v1","name":"%s","version":"%s","security_version":%s,"models":["sigil-sim","sigil-sim-b"],"size":%s,"sha256":"%s","expires":"2036-01-01T00:00:00Z","measurements":{"pcrs":{"sha256":{"9":"%s"}}}}' \
		"$1" "$2" "$3" "$size" "$sum" "$(printf 'pcr9 after %s' "$2" | sha256sum | cut -d' ' -f1)"
}
manifest sim-os 1.4.0 3 image.bin >manifest.json
manifest sim-os 9.9.9 3 other-image.bin >other-manifest.json

# Signatures: cosign sign-blob with the new bundle format, no transparency
# log (offline), one bundle per key.
sign() { # key blob bundle
	"$COSIGN" sign-blob --yes --key "$1" --new-bundle-format --tlog-upload=false --bundle "$3" "$2" >/dev/null 2>&1
}
for k in a b c p384 untrusted; do
	sign "test-$k.key" manifest.json "manifest.$k.bundle.json"
done
sign test-a.key other-manifest.json other-manifest.a.bundle.json

# A release trust rotation from {test-a} (sequence 1) to {test-b}: the
# statement as `sigil firmware trust` prints it (ending in a newline), signed
# as the file is by the current key and the new one.
"$SIGIL" firmware trust --sequence 2 --threshold 1 test-b.pub >rotation.json
sign test-a.key rotation.json rotation.a.bundle.json
sign test-b.key rotation.json rotation.b.bundle.json

# cosign's old bundle format (sign-blob --bundle without
# --new-bundle-format), which verify refuses with ErrLegacyBundle.
"$COSIGN" sign-blob --yes --key test-a.key --tlog-upload=false --bundle manifest.a.legacy-bundle.json manifest.json >/dev/null 2>&1

# cosign's own check of what it wrote (offline: an empty trusted root and
# no transparency log). P-384 signatures are over SHA-384.
echo '{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}' >trusted-root.json
for k in a b c untrusted; do
	"$COSIGN" verify-blob --key "test-$k.pub" --bundle "manifest.$k.bundle.json" --new-bundle-format \
		--insecure-ignore-tlog=true --trusted-root trusted-root.json manifest.json >/dev/null 2>&1
done
for k in a b; do
	"$COSIGN" verify-blob --key "test-$k.pub" --bundle "rotation.$k.bundle.json" --new-bundle-format \
		--insecure-ignore-tlog=true --trusted-root trusted-root.json rotation.json >/dev/null 2>&1
done
"$COSIGN" verify-blob --key test-p384.pub --bundle manifest.p384.bundle.json --new-bundle-format \
	--insecure-ignore-tlog=true --trusted-root trusted-root.json --signature-digest-algorithm sha384 manifest.json >/dev/null 2>&1

"$COSIGN" version 2>/dev/null | grep -E '^GitVersion' >COSIGN_VERSION
echo "vectors written to $out"

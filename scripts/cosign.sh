#!/usr/bin/env bash
# Builds the real cosign CLI that the signing tests run (firmware/sign,
# cmd/sigil: cosign verifies Sigil's bundles, signs through the test key
# service) from the Go module proxy, outside go.mod, once per version, into
# the user's cache directory, where signtest.Cosign finds it:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/sigil-tools/cosign-$COSIGN_VERSION/cosign
#
# COSIGN_VERSION (default v2.6.5, the Makefile's) names the release. The
# first build takes minutes (10 to 17 on two busy cores); later runs find it.
set -euo pipefail
version=${COSIGN_VERSION:-v2.6.5}
dir="${XDG_CACHE_HOME:-$HOME/.cache}/sigil-tools/cosign-$version"
[ -x "$dir/cosign" ] && exit 0
mkdir -p "$dir"
echo "building cosign $version into $dir (once; this takes minutes)"
tmp=$(mktemp -d "$dir/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
GOFLAGS= GOBIN="$tmp" go install "github.com/sigstore/cosign/v2/cmd/cosign@$version"
mv "$tmp/cosign" "$dir/cosign"

#!/usr/bin/env bash
# Builds Sigil's Debian packages with nfpm (docs/DEPLOY.md, "Packages"):
# sigild for amd64, arm64 and armhf, sigil for amd64 and arm64, from the
# binaries `make cross` and `make cross-sigil` left in bin/.
#
#   scripts/package.sh DIST [PACKAGE ARCH]...
#
# writes DIST/<package>_<version>_<arch>.deb for every pair named (all five
# without one). DEB_VERSION sets the version (default: from git describe:
# 0.1.0+git12.gabcdef0 twelve commits after v0.1.0); NFPM_VERSION the
# nfpm release, built once from the Go module proxy into bin/.nfpm.
set -euo pipefail
cd "$(dirname "$0")/.."
dist=${1:?usage: scripts/package.sh DIST [PACKAGE ARCH]...}
shift
nfpm_version=${NFPM_VERSION:-v2.48.0}

version=${DEB_VERSION:-}
if [ -z "$version" ]; then
  # A Debian version must start with a digit and grow with every commit:
  # the last release tag, then the commits since it and the commit.
  if d=$(git describe --tags --match 'v[0-9]*' --long 2>/dev/null); then
    tag=${d%-*-g*}; rest=${d#"$tag"-}; n=${rest%%-*}; sha=${rest#*-}
    version=${tag#v}
    [ "$n" = 0 ] || version="$version+git$n.$sha"
  else
    version="0.0.0+git$(git rev-list --count HEAD 2>/dev/null || echo 0).g$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  fi
fi

pairs=("$@")
[ ${#pairs[@]} -gt 0 ] || pairs=(sigild amd64 sigild arm64 sigild armhf sigil amd64 sigil arm64)
[ $((${#pairs[@]} % 2)) -eq 0 ] || { echo "package.sh: PACKAGE ARCH pairs expected" >&2; exit 2; }

mkdir -p "$dist"
nfpm="bin/.nfpm/nfpm-$nfpm_version"
if [ ! -x "$nfpm" ]; then
  mkdir -p bin/.nfpm
  GOBIN=$(cd bin/.nfpm && pwd) go install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$nfpm_version"
  mv bin/.nfpm/nfpm "$nfpm"
fi

# The manual pages, compressed as Debian wants them.
man="$dist/.man"
mkdir -p "$man"
for p in sigild sigil; do
  gzip -9n <"deploy/package/$p.1" >"$man/$p.1.gz"
done

for ((i = 0; i < ${#pairs[@]}; i += 2)); do
  pkg=${pairs[i]}; arch=${pairs[i+1]}
  # The binary `make cross` (sigild) or `make cross-sigil` (sigil) built.
  case "$arch" in
    amd64) goarch=amd64 nfpm_arch=amd64 ;;
    arm64) goarch=arm64 nfpm_arch=arm64 ;;
    armhf) goarch=armv7 nfpm_arch=arm7 ;;
    *) echo "package.sh: unknown architecture $arch" >&2; exit 2 ;;
  esac
  bin="bin/$pkg-linux-$goarch"
  [ -f "$bin" ] || { echo "package.sh: $bin missing (make cross cross-sigil)" >&2; exit 1; }
  # Reproducible: every file's time is the commit's.
  SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)} \
  SIGIL_BINARY="$bin" SIGIL_MAN="$man" SIGIL_ARCH="$nfpm_arch" SIGIL_VERSION="$version" \
    "$nfpm" package --config "deploy/package/$pkg.yaml" --packager deb --target "$dist/" >/dev/null
  echo "$dist/${pkg}_${version}-1_${arch}.deb"
done

#!/usr/bin/env bash
# Installs (as root) or checks the system packages Sigil's tests and demo use.
# With CI=true a missing dependency is an error, never a skip.
set -euo pipefail
want=${1:-test}
declare -A pkg_of=(
  [swtpm]=swtpm [swtpm_setup]=swtpm-tools [swtpm_ioctl]=swtpm-tools
  [tpm2_readpublic]=tpm2-tools [tpm2_pcrextend]=tpm2-tools
  [mosquitto]=mosquitto [mosquitto_sub]=mosquitto-clients [mosquitto_pub]=mosquitto-clients
  [openssl]=openssl [gcc]=gcc
  [ssh-keygen]=openssh-client [ssh]=openssh-client [ssh-add]=openssh-client [sshd]=openssh-server
  [argon2]=argon2 [rsyslogd]=rsyslog
  [chromium]=chromium [node]=nodejs [npm]=npm
  [initdb]=postgresql
  [lintian]=lintian [systemd-analyze]=systemd [dpkg-deb]=dpkg [unshare]=util-linux
)
bins=(swtpm swtpm_setup swtpm_ioctl openssl)
if [ "$want" = test ]; then
  bins+=(tpm2_readpublic tpm2_pcrextend mosquitto mosquitto_sub mosquitto_pub gcc ssh-keygen ssh ssh-add sshd argon2 rsyslogd chromium node npm)
  # The packages' tests (deploy/): lint, install into a throwaway root,
  # rate the systemd units.
  bins+=(lintian systemd-analyze dpkg-deb unshare)
fi
missing=()
# sshd lives in /usr/sbin, which a non-root PATH may not name.
for b in "${bins[@]}"; do command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b"); done
# PostgreSQL's server binaries (the storage conformance suites start their
# own server) live in /usr/lib/postgresql/N/bin on Debian, off PATH.
if [ "$want" = test ] && ! command -v initdb >/dev/null 2>&1 && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  missing+=(initdb)
fi
# The cgo TPM simulator links OpenSSL's libcrypto.
libs=()
if [ "$want" = test ] && ! { [ -e /usr/include/openssl/evp.h ] || dpkg -s libssl-dev >/dev/null 2>&1; }; then libs+=(libssl-dev); fi
# sigild's package depends on tpm-udev (the tss group owns /dev/tpmrm0):
# its install test needs it installed to satisfy dpkg.
if [ "$want" = test ] && ! dpkg -s tpm-udev >/dev/null 2>&1; then libs+=(tpm-udev); fi
[ ${#missing[@]} -eq 0 ] && [ ${#libs[@]} -eq 0 ] && exit 0

pkgs=("${libs[@]}")
for b in "${missing[@]}"; do pkgs+=("${pkg_of[$b]}"); done
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing: ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  # Installing mosquitto starts a system broker on 1883; the tests start their own.
  systemctl disable --now mosquitto >/dev/null 2>&1 || true
  # Likewise sshd (openssh-server): the SSH test runs its own on a free port.
  systemctl disable --now ssh >/dev/null 2>&1 || true
  # And rsyslog: the sink test starts its own rsyslogd on a free port.
  systemctl disable --now rsyslog >/dev/null 2>&1 || true
  # And PostgreSQL's cluster on 5432: the tests start their own (pgtest).
  systemctl disable --now postgresql >/dev/null 2>&1 || true
  exit 0
fi
echo "missing: ${missing[*]:-} ${libs[*]:-}" >&2
echo "install them with: sudo apt-get install ${pkgs[*]}" >&2
echo "(or run 'make $want' as root to install them automatically)" >&2
exit 1

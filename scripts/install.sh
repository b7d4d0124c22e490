#!/usr/bin/env bash
# Install what ztna needs on Debian/Ubuntu: system tools, a virtualenv at .venv,
# and the project itself (editable).  Safe to run again: it only adds what is missing.
#   scripts/install.sh            the tools the agent, gateway, lab and tests use
#   scripts/install.sh --bench    also the tools the benchmarks compare against
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo scripts/install.sh): it installs Debian packages" >&2
  exit 1
fi

pkgs=(iproute2 nftables tcpdump iperf3 bind9-dnsutils curl procps openssl ca-certificates chromium chromium-driver libnss3-tools dbus iputils-ping)
if [ "${1:-}" = "--bench" ]; then
  pkgs+=(openvpn dnsperf dnsmasq unbound squid-openssl nginx-light wireguard-go wireguard-tools)
fi
py=${PYTHON:-python3}
if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  pkgs+=(python3-venv python3-pip)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install.sh: ztna needs Python 3.11 or newer; $py is $("$py" --version 2>&1). Set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

# Recreate the venv when the project metadata changed, so a stale install never hides a missing dependency.
stamp=$(sha256sum setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.ztna-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "install.sh: creating .venv and installing ztna"
  rm -rf .venv
  "$py" -m venv .venv
  # (the filter hides only pip's notes about find-links folders this machine's pip config names but lacks)
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2> >(grep -v "^WARNING: Location 'file:" >&2)
  echo "$stamp" > .venv/.ztna-stamp
fi
# The lab's systemd-resolved (tests/lab/test_*resolved.py): Debian's own, unpacked and never installed.
root=${ZTNA_RESOLVED_ROOT:-/var/cache/ztna-lab/systemd-resolved}
if [ ! -x "$root/lib/systemd/systemd-resolved" ] || [ ! -x "$root/usr/bin/resolvectl" ]; then
  scripts/fetch-resolved.sh
fi
echo "install.sh: ready ($(.venv/bin/ztna --version))"

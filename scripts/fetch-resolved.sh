#!/usr/bin/env bash
# Unpack Debian's systemd-resolved for the lab (tests/lab/test_resolved.py, netns/resolved.py).
#
#   scripts/fetch-resolved.sh            # into $ZTNA_RESOLVED_ROOT (default /var/cache/ztna-lab/systemd-resolved)
#
# The package is downloaded with apt-get and unpacked with dpkg-deb -x, never installed:
# installing it would run its postinst, which turns this machine's /etc/resolv.conf into
# a link to resolved's stub.  The version is the installed systemd's, so resolved loads the
# libsystemd-shared that is already here.  Remove the folder to undo.
set -euo pipefail
root=${ZTNA_RESOLVED_ROOT:-/var/cache/ztna-lab/systemd-resolved}
ver=$(dpkg-query -W -f='${Version}' systemd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "systemd-resolved=$ver")
mkdir -p "$root"
dpkg-deb -x "$tmp"/systemd-resolved_*.deb "$root"
echo "systemd-resolved $ver unpacked in $root"

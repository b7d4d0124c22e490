#!/usr/bin/env bash
# Install the systemd units of packaging/systemd/ (ztna-agent, -gateway, -dns, -proxy, -roaming).
#
#   sudo scripts/install-units.sh                        # into /etc/systemd/system, then daemon-reload
#   scripts/install-units.sh --dest /tmp/units --no-reload   # render only (what the tests do)
#
# Options: --dest DIR (default /etc/systemd/system), --ztna PATH (default: this checkout's
# .venv/bin/ztna, else `command -v ztna`), --conf DIR (the roles' TOML files, default /etc/ztna),
# --no-reload (do not run systemctl daemon-reload).  It enables and starts nothing: each
# machine runs only its roles (`systemctl enable --now ztna-dns`).
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
dest=/etc/systemd/system
conf=/etc/ztna
ztna=""
reload=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest=$2; shift 2 ;;
    --ztna) ztna=$2; shift 2 ;;
    --conf) conf=$2; shift 2 ;;
    --no-reload) reload=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install-units.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$ztna" ]; then
  if [ -x "$here/.venv/bin/ztna" ]; then ztna="$here/.venv/bin/ztna"; else ztna=$(command -v ztna || true); fi
fi
if [ -z "$ztna" ] || [ ! -x "$ztna" ]; then
  echo "install-units.sh: no ztna executable found; run scripts/install.sh first or give --ztna PATH" >&2
  exit 1
fi
case "$ztna$conf" in
  *[[:space:]@\|]*) echo "install-units.sh: paths with spaces, '@' or '|' are not supported: $ztna $conf" >&2; exit 1 ;;
esac
mkdir -p "$dest"
for unit in packaging/systemd/*.service; do
  out="$dest/$(basename "$unit")"
  sed -e "s|@ZTNA@|$ztna|g" -e "s|@CONF@|$conf|g" -e "s|@DOCS@|$here/docs|g" "$unit" > "$out.tmp"
  chmod 0644 "$out.tmp"
  mv "$out.tmp" "$out"
  echo "installed $out"
done
if [ "$reload" = 1 ] && [ "$dest" = /etc/systemd/system ]; then
  systemctl daemon-reload
fi
echo "configs are read from $conf/ROLE.toml; start a role with: systemctl enable --now ztna-ROLE"

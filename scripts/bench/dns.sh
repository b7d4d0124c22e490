#!/usr/bin/env bash
# DNS security resolver vs dnsmasq vs unbound, in sealed lab namespaces:
# same 10,000-name block list, same upstream, half blocked / half allowed queries.
#   sudo scripts/bench.sh dns [--seconds 10] [--rounds 2] [--warmup-qps 4000] [--clients 4] [--outstanding 200] [--only ztna,dnsmasq]
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench dns: run as root (it builds network namespaces): sudo scripts/bench.sh dns" >&2
  exit 1
fi
exec timeout 600 .venv/bin/python scripts/bench/dns_bench.py "$@"

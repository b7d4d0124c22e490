#!/usr/bin/env bash
# The PoP's rule-matching cost: lookups/s in the rules core at 10,000 rules and 100,000 DNS map entries,
# and the kernel memory of an nft timeout set of 100,000 elements in a lab namespace.
#   sudo scripts/bench.sh backhaul-rules [--rules N] [--entries N] [--seconds S] [--json] [--no-nft]
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench backhaul-rules: run as root (the nft part builds a network namespace), or add --no-nft" >&2
  exit 1
fi
exec timeout 600 .venv/bin/python scripts/bench/backhaul_rules.py "$@"

#!/usr/bin/env bash
# iperf3 and ping branch user -> internet through the HQ gateway site's WAN1 vs through the PoP's egress, one lab.
#   sudo scripts/bench.sh backhaul [--seconds N] [--json]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python scripts/bench/backhaul_bench.py "$@"

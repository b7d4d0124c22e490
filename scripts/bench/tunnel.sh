#!/usr/bin/env bash
# iperf3 and ping through the ZTNA tunnel vs the plain path, wireguard-go and OpenVPN (UDP, TCP), clean and at 2 % loss.
#   sudo scripts/bench.sh tunnel [--seconds N] [--repeat N] [--paths a,b] [--json]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python scripts/bench/tunnel_bench.py "$@"

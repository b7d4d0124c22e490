#!/usr/bin/env bash
# iperf3 through the ZTNA tunnel vs the plain routed path vs OpenVPN (TCP, mTLS), in the sealed lab.
#   sudo scripts/bench.sh tunnel [--seconds N] [--json]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python scripts/bench/tunnel_bench.py "$@"

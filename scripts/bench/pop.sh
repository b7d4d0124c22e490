#!/usr/bin/env bash
# iperf3, ping and curl client -> app through the cloud PoP vs the direct agent -> gateway tunnel, in the sealed lab.
#   sudo scripts/bench.sh pop [--seconds N] [--repeat N] [--json]   (ZTNA_POP_PROFILE=FILE: a cProfile of the PoP)
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python scripts/bench/pop_bench.py "$@"

#!/usr/bin/env bash
# Latency the roaming stub adds, internal and external, in the sealed lab.
#   sudo scripts/bench.sh roaming [N]      (N sequential queries per path, default 300)
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python scripts/bench/roaming.py "$@"

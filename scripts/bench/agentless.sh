#!/usr/bin/env bash
# Agentless reverse-proxy benchmark in the sealed lab: the ztna gateway (sign-in cookie,
# policy, rewritten headers, access log) vs nginx (one worker, TLS reverse proxy) vs
# mitmproxy (reverse mode), each in front of the same app, captures off.
#   flock /tmp/ztna-bench.lock scripts/bench.sh agentless   (never two benches at once)
# Set ZTNA_NS_PREFIX / ZTNA_LAB_DIR when other labs run on the same machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
  echo "agentless.sh: run as root (it builds network namespaces)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || scripts/install.sh
if [ ! -x .venv-bench/bin/mitmdump ]; then
  echo "agentless.sh: installing mitmproxy into .venv-bench"
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q --disable-pip-version-check mitmproxy
fi
# Bounded: the whole run is stopped after 15 minutes whatever happens (the lab is torn down on SIGTERM).
exec timeout --signal=TERM 900 .venv/bin/python scripts/bench/agentless_bench.py

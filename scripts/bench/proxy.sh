#!/usr/bin/env bash
# Forward-proxy benchmark in the sealed lab: ztna (splice, decrypt) vs Squid (CONNECT
# tunnel) vs mitmproxy (ignore_hosts splice, decrypt), with a no-proxy baseline.
# All contenders run at once on their own ports and are warmed up; then BENCH_REPEATS rounds
# (default 5), each of 6 downloads of 100 MB (BENCH_DOWNLOADS) over HTTPS and 500 small HTTPS requests on new
# connections per contender, taken round-robin (the requests in slices of 100).  Prints the
# medians, the CPU per MB and per request (proxy, curl, origin), and the ratios against the
# goals of issue 5: the median of adjacent turns' ratios with a 95 % interval.
#   sudo scripts/bench.sh proxy        (installs squid-openssl; mitmproxy goes in .venv-bench)
# Set ZTNA_NS_PREFIX / ZTNA_LAB_DIR when other labs run on the same machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
  echo "proxy.sh: run as root (it builds network namespaces)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || scripts/install.sh
if [ ! -x .venv-bench/bin/mitmdump ]; then
  echo "proxy.sh: installing mitmproxy into .venv-bench"
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q --disable-pip-version-check mitmproxy
fi
# Bounded: the whole run is stopped after 15 minutes whatever happens (the lab is torn down on SIGTERM).
exec timeout --signal=TERM 900 .venv/bin/python scripts/bench/proxy_bench.py

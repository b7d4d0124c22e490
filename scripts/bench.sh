#!/usr/bin/env bash
# Benchmarks, each in the sealed lab: scripts/bench.sh NAME  (NAME: a file in scripts/bench/).
# Without NAME, lists them.  Bench-only tools are installed by scripts/install.sh --bench.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  echo "usage: sudo scripts/bench.sh NAME   where NAME is one of:"
  for f in scripts/bench/*.sh; do [ -e "$f" ] && echo "  $(basename "$f" .sh)"; done
  exit 2
fi
name=$1; shift
if [ ! -f "scripts/bench/$name.sh" ]; then
  echo "bench.sh: no benchmark '$name' (see scripts/bench/)" >&2
  exit 2
fi
scripts/install.sh --bench
exec bash "scripts/bench/$name.sh" "$@"

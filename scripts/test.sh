#!/usr/bin/env bash
# Install what is missing, then run the whole test suite: unit tests (no root)
# and lab tests (root; they build sealed network namespaces and remove them).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -k leases
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
# pyflakes-level checks first: undefined or shadowed names are bugs the tests may not reach.
.venv/bin/ruff check --select F --quiet agent backhaul gateway netns pop ztna tests scripts
args=("$@")
[ "${#args[@]}" -gt 0 ] || args=(tests)
exec .venv/bin/python -m pytest -q -ra "${args[@]}"

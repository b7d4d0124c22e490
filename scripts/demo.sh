#!/usr/bin/env bash
# The main demo: install what is missing, then run the ZTNA agent flow in the
# sealed lab and show each of its nine steps with the packets that prove it.
#   sudo scripts/demo.sh            the agent flow
#   sudo scripts/demo.sh NAME       another scenario (see: .venv/bin/ztna lab list)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/ztna lab run "${1:-agent}" --open-report

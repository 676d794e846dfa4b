#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# scripts/demo.sh — set up (scripts/setup.sh, fast when already done), then run
# the bundled leaky demo under TrackLeak:
#
#   .venv/bin/trackleak run examples/leaky_demo.py [extra args...]
#
# Extra arguments follow the script path, so they reach the demo
# (e.g. `scripts/demo.sh --seconds 10`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

echo "[demo] .venv/bin/trackleak run examples/leaky_demo.py $*"
exec .venv/bin/trackleak run examples/leaky_demo.py "$@"

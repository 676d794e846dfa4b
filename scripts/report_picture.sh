#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# scripts/report_picture.sh — the README's picture of the HTML report (docs/report.png):
# `trackleak run --json` on examples/leaky_demo.py, `trackleak report --html`, and a screenshot
# of the page by headless Chromium (apt: chromium; scripts/setup.sh installs it).
#
# Usage: scripts/report_picture.sh [OUT.png]   (default docs/report.png)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$(realpath -m "${1:-docs/report.png}")"

bash scripts/setup.sh >/dev/null
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

.venv/bin/trackleak run -q --json "$tmp/demo.json" examples/leaky_demo.py >/dev/null
.venv/bin/trackleak report "$tmp/demo.json" --top 10 --html "$tmp/report.html"
# --no-sandbox: Chromium refuses to run as root otherwise.
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --window-size=1480,1060 --screenshot="$OUT" "file://$tmp/report.html" 2>/dev/null
echo "[picture] wrote $OUT"

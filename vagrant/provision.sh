#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Vagrant provisioner: everything is done by the repo's own set-up script.
set -euo pipefail
cd /trackleak
bash scripts/setup.sh
echo "[provision] done: 'vagrant ssh', then: cd /trackleak && bash scripts/demo.sh  (or sudo bash scripts/test.sh)"

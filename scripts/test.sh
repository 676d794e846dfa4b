#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# scripts/test.sh — set up (scripts/setup.sh, fast when already done), then run
# the test suite with the project's .venv:
#
#   .venv/bin/python -m pytest tests -ra [extra pytest args...]
#
# (with paths among the args, only those: scripts/test.sh tests/unit -x)
#
# BCC_KERNEL_SOURCE is taken from .cache/bcc_kernel_source (written by setup.sh)
# unless it is already exported. pytest's exit code is passed on, except that
# "no tests collected" (5) is turned into a failure: a run that tests nothing
# must not look green.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

if [[ -z "${BCC_KERNEL_SOURCE:-}" && -s .cache/bcc_kernel_source ]]; then
    BCC_KERNEL_SOURCE="$(head -n1 .cache/bcc_kernel_source)"
    export BCC_KERNEL_SOURCE
    echo "[test] BCC_KERNEL_SOURCE=$BCC_KERNEL_SOURCE"
fi

if [[ ! -d tests ]]; then
    echo "[test] FAILED: no tests/ directory in $ROOT" >&2
    exit 1
fi

# Paths among the arguments narrow the run to them; otherwise the whole of tests/.
targets=(tests)
for arg in "$@"; do
    if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
        targets=()
        break
    fi
done
echo "[test] .venv/bin/python -m pytest ${targets[*]} -ra $*"
rc=0
.venv/bin/python -m pytest "${targets[@]}" -ra "$@" || rc=$?

if [[ $rc -eq 5 ]]; then
    echo "[test] FAILED: pytest collected no tests (exit code 5); a run that tests nothing counts as a failure" >&2
    exit 1
fi
exit "$rc"

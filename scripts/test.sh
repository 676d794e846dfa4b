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
# The interpreters of scripts/roots.sh (Debian roots with CPython 3.13, 3.14, 3.15; the free-threaded
# builds 3.13t and 3.14t) are made first, cached in /var/cache/trackleak/roots (a minute each root
# the first time, each free-threaded build 4-10 minutes; nothing when cached). A root that cannot be
# made (the mirror or the Go module proxy unreachable, no root privileges) is said loudly here and
# written to TRACKLEAK_ROOTS_FAILED, and the tests parametrized over interpreters fail with that
# reason for it (tests/conftest.py).
#
# BCC_KERNEL_SOURCE is taken from .cache/bcc_kernel_source (written by setup.sh)
# unless it is already exported. A real Elasticsearch (scripts/es.sh) is started
# before pytest when the run includes a test file that uses its fixtures
# (imports tests/integration/es_support.py: test_es_*.py, test_fleet_es.py), its URL
# exported as TRACKLEAK_TEST_ES_URL, and stopped afterwards (also on failure or
# Ctrl-C); one already running (scripts/es.sh start by hand) is used and left
# running, and an exported TRACKLEAK_TEST_ES_URL is used as it is. pytest's exit code is passed on, except that
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

# The roots' interpreters (see the top).
mkdir -p .cache
ROOTS_FAILED="$ROOT/.cache/roots_failed"
: >"$ROOTS_FAILED"
export TRACKLEAK_ROOTS_FAILED="$ROOTS_FAILED"
for name in trixie sid ft3.13 ft3.14; do
    t0=$SECONDS
    if out="$(bash scripts/roots.sh ensure "$name" 2>&1)"; then
        ((SECONDS - t0 > 5)) && printf '%s\n' "$out" | sed 's/^/[test] /'
        continue
    fi
    why="$(printf '%s\n' "$out" | grep -m1 'FAILED' | sed 's/^\[roots\] FAILED: //')"
    printf '%s\n' "$out" | sed 's/^/[test]   | /' >&2
    echo "[test] ERROR: interpreter root $name is missing: $why" >&2
    echo "[test] ERROR: the tests parametrized over interpreters will FAIL for it (missing-$name)" >&2
    printf '%s: %s\n' "$name" "${why:-roots.sh ensure $name failed}" >>"$ROOTS_FAILED"
done

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
# Does the run include a test file that mentions WORD? (the whole of tests/ always does)
run_needs() {
    local word=$1 arg path
    shift
    ((${#targets[@]})) && return 0  # the whole of tests/
    for arg in "$@"; do
        path="${arg%%::*}"
        [[ $arg == -* || ! -e $path ]] && continue
        if [[ -d $path ]]; then
            grep -rlq --include='test_*.py' -e "$word" "$path" && return 0
        elif [[ $path == *test_*.py ]] && grep -q -e "$word" "$path"; then
            return 0
        fi
    done
    return 1
}
# Elasticsearch, when the run may include its integration tests.
needs_es() { run_needs es_support "$@"; }
ES_STOP=0
# shellcheck disable=SC2317  # called by the EXIT trap
stop_es() {
    if ((ES_STOP)); then
        bash scripts/es.sh stop || true
    fi
}
trap stop_es EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [[ -z "${TRACKLEAK_TEST_ES_URL:-}" ]] && needs_es "$@"; then
    if url="$(bash scripts/es.sh status 2>/dev/null)"; then
        echo "[test] Elasticsearch already running at $url (left running)"
    else
        t0=$SECONDS
        if url="$(bash scripts/es.sh start)"; then
            ES_STOP=1
            echo "[test] Elasticsearch started at $url in $((SECONDS - t0)) s (stopped at the end)"
        else
            url=""
            echo "[test] WARNING: Elasticsearch did not start (above); its tests will fail with the reason" >&2
        fi
    fi
    if [[ -n $url ]]; then
        export TRACKLEAK_TEST_ES_URL="$url"
    fi
fi

# (The Debian roots and the free-threaded builds were made above, before Elasticsearch.)

echo "[test] .venv/bin/python -m pytest ${targets[*]} -ra $*"
rc=0
.venv/bin/python -m pytest "${targets[@]}" -ra "$@" || rc=$?

if [[ $rc -eq 5 ]]; then
    echo "[test] FAILED: pytest collected no tests (exit code 5); a run that tests nothing counts as a failure" >&2
    exit 1
fi
exit "$rc"

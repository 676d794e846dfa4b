# SPDX-License-Identifier: MIT
"""Settings: nonsense values give one clear warning and the default, never a crash;
TRACKLEAK_STARTUP_DELAY=0 means now (the original silently turned 0 into 10 s).
"""

from __future__ import annotations

import re

import pytest
from helpers import FIXTURES, assert_consistent, describe_row, find_row, line_of, run_preloaded

pytestmark = pytest.mark.integration

HELLO = FIXTURES / "hello.py"
HELLO_OUT = "hello from python\n"

# (variable, nonsense value, the original's default the shim must fall back to)
BAD_VALUES = [
    ("TRACKLEAK_SAMPLE_RATE", "abc", 50),
    ("TRACKLEAK_SAMPLE_RATE", "-5", 50),
    ("TRACKLEAK_SAMPLE_RATE", "0", 50),
    ("TRACKLEAK_MIN_SIZE", "1e9x", 500),
    ("TRACKLEAK_DUMP_INTERVAL", "", 300),
    ("TRACKLEAK_STARTUP_DELAY", "-1", 10),
]
# where the dump header shows the value in force
DUMP_FIELD = {"TRACKLEAK_SAMPLE_RATE": "sample_rate", "TRACKLEAK_MIN_SIZE": "min_size"}


@pytest.mark.parametrize(
    ("name", "value", "default"),
    BAD_VALUES,
    ids=[f"{n[len('TRACKLEAK_') :]}={v!r}" for n, v, _ in BAD_VALUES],
)
def test_nonsense_setting_warns_and_uses_default(cpython, shim, log_dir, name, value, default):
    # GIVEN one setting with a nonsense value (every other setting valid)
    result = run_preloaded(cpython, HELLO, shim=shim, log_dir=log_dir, env={name: value})
    # THEN the program runs normally
    assert result.returncode == 0, result.describe()
    assert result.stdout == HELLO_OUT, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    # AND stderr has exactly one warning naming the variable and the default in force
    naming = [line for line in result.stderr.splitlines() if name in line]
    assert len(naming) == 1, f"expected one warning naming {name}, got {naming}; " + result.describe()
    assert re.search(rf"(?<![\d.]){default}(?![\d.])", naming[0]), (
        f"warning does not state the default {default}: {naming[0]!r}"
    )
    # AND where the dump shows the setting, it is the default
    if name in DUMP_FIELD:
        assert_consistent(result.dumps)
        dump = result.exit_dump()
        assert dump[DUMP_FIELD[name]] == default, (
            f"{DUMP_FIELD[name]}={dump[DUMP_FIELD[name]]!r}, want {default}"
        )


def test_startup_delay_zero_tracks_from_the_start(cpython, shim, log_dir):
    # GIVEN TRACKLEAK_STARTUP_DELAY=0 and a program that allocates at once and exits within a second
    result = run_preloaded(cpython, HELLO, shim=shim, log_dir=log_dir, env={"TRACKLEAK_STARTUP_DELAY": "0"})
    assert result.returncode == 0 and result.stdout == HELLO_OUT, result.describe()
    assert result.seconds < 10, f"took {result.seconds:.1f}s"
    # THEN its first allocations are in the exit dump (the original waited 10 s and saw nothing)
    assert_consistent(result.dumps)
    row = find_row(
        result.rows(), function="<module>", file_endswith="/hello.py", line=line_of(HELLO, "hello_alloc")
    )
    assert row.count >= 200, describe_row(row)
    assert row.retention_pct is not None and row.retention_pct >= 80.0, describe_row(row)

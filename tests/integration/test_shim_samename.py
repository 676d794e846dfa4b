# SPDX-License-Identifier: MIT
"""Functions with one name in different files are different sites.

The original keyed sites by function name alone: work() in two modules became one row.
GIVEN three modules each defining work(): mod_a.py, mod_b.py (another line) and other/mod_a.py
(same file name, same line as mod_a.py, another directory)
WHEN each is called a different number of times under the shim
THEN three rows, each at its own file and line, each with its own count.
"""

from __future__ import annotations

import pytest
from helpers import (
    FIXTURES,
    assert_consistent,
    describe_row,
    find_row,
    find_rows,
    format_rows,
    line_of,
    run_preloaded,
)

pytestmark = pytest.mark.integration

SAMENAME = FIXTURES / "samename"
COUNTS = {"work_a": 300, "work_b": 500, "work_other_a": 700}
FILES = {
    "work_a": SAMENAME / "mod_a.py",
    "work_b": SAMENAME / "mod_b.py",
    "work_other_a": SAMENAME / "other" / "mod_a.py",
}


def test_same_function_name_in_two_files_gives_separate_rows(cpython, shim, log_dir):
    result = run_preloaded(
        cpython,
        SAMENAME / "main.py",
        args=[COUNTS["work_a"], COUNTS["work_b"], COUNTS["work_other_a"]],
        shim=shim,
        log_dir=log_dir,
        env={
            "TRACKLEAK_SMALL_OBJECTS": "0"
        },  # allocator blocks only (3.13+ objects: test_shim_small_objects)
    )
    assert result.returncode == 0 and "samename-ok" in result.stdout, result.describe()
    assert_consistent(result.dumps)
    rows = result.rows()
    for marker, n in COUNTS.items():
        path = FILES[marker]
        suffix = "/" + "/".join(path.parts[-2:])  # samename/mod_a.py, samename/mod_b.py, other/mod_a.py
        row = find_row(rows, function="work", file_endswith=suffix, line=line_of(path, marker))
        # n bytes objects plus a few list resizes; never another module's allocations
        assert n <= row.count <= n + 60, describe_row(row)
        assert row.retention_pct is not None and row.retention_pct >= 80.0, describe_row(row)
    work_rows = [r for r in find_rows(rows, function="work") if r.total_bytes >= 300 * 3000]
    assert len(work_rows) == 3, format_rows(find_rows(rows, function="work"))

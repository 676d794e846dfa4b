# SPDX-License-Identifier: MIT
"""A C extension built in the test, for each interpreter, leaking below Python.

GIVEN tests/fixtures/leakers/tl_testext.c compiled against the interpreter's own headers
WHEN tests/fixtures/ext_driver.py calls leak/churn (and the GIL-releasing variants) under the shim
THEN the Python line that called ext.leak(...) is flagged (>= 80 %), the ext.churn(...) line is not
(<= 20 %): the malloc inside C is charged to the calling Python line, GIL held or not.
"""

from __future__ import annotations

import pytest
from helpers import (
    FIXTURES,
    assert_consistent,
    build_extension,
    describe_row,
    find_row,
    line_of,
    run_preloaded,
)

pytestmark = pytest.mark.integration

DRIVER = FIXTURES / "ext_driver.py"
SOURCE = FIXTURES / "leakers" / "tl_testext.c"
N = 500

CASES = {
    # marker: (function, leak?)
    "ext_leak": ("call_leak", True),
    "ext_churn": ("call_churn", False),
    "ext_leak_nogil": ("call_leak_nogil", True),
    "ext_churn_nogil": ("call_churn_nogil", False),
}


@pytest.fixture(scope="session")
def ext_run(cpython, shim, cc, tmp_path_factory):
    build_dir = tmp_path_factory.mktemp(f"ext-{cpython.id}")
    build_extension(cpython, SOURCE, build_dir, "tl_testext")
    return run_preloaded(
        cpython, DRIVER, args=[build_dir, N], shim=shim, log_dir=build_dir / "logs", sample_rate=1, min_size=0
    )


@pytest.mark.parametrize("marker", sorted(CASES))
def test_extension_malloc_charged_to_calling_line(cpython, ext_run, marker):
    assert ext_run.returncode == 0 and "ext-ok" in ext_run.stdout, ext_run.describe()
    assert_consistent(ext_run.dumps)
    function, leaks = CASES[marker]
    row = find_row(
        ext_run.rows(), function=function, file_endswith="/ext_driver.py", line=line_of(DRIVER, marker)
    )
    assert row.count >= N, describe_row(row)
    assert row.retention_pct is not None, describe_row(row)
    if leaks:
        assert row.retention_pct >= 80.0, describe_row(row)
        size = 6144 if marker.endswith("nogil") else 4096
        assert row.sample_total_bytes - row.sample_free_bytes >= N * size * 0.9, describe_row(row)
    else:
        assert row.retention_pct <= 20.0, describe_row(row)

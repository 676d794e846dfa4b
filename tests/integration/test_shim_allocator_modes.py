"""The shim wraps whatever allocators the interpreter runs with: debug hooks, plain malloc,
tracemalloc's hooks (installed before ours, and restarted after), -X dev.

Our wrappers keep the wrapped allocator's ctx (the debug hooks and tracemalloc need theirs), so
each of these must run unchanged and still put the leak on its line.
"""

from __future__ import annotations

import os

import pytest
from helpers import assert_consistent, final_rows, find_row, line_of, run_command

pytestmark = pytest.mark.integration

SCRIPT = """
import sys, tracemalloc
keep = []
def leak():
    for i in range(500):
        keep.append(b"x" * (700 + i % 2))  # ALLOC: leak
leak()
if tracemalloc.is_tracing():
    tracemalloc.stop()      # restores the allocators it wrapped (ours)
    tracemalloc.start()     # and wraps them again
    tmp = [bytes(600) for _ in range(100)]
    tracemalloc.stop()
print("ok")
"""


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["-X", "dev"], {"PYTHONMALLOC": "debug"}),
        ([], {"PYTHONMALLOC": "malloc"}),
        ([], {"PYTHONMALLOC": "pymalloc_debug"}),
        (["-X", "tracemalloc"], {}),
    ],
    ids=["debug-dev", "malloc", "pymalloc_debug", "tracemalloc"],
)
def test_allocator_modes(cpython, shim, tmp_path, flags, env):
    if cpython.free_threaded and env.get("PYTHONMALLOC") in ("malloc", "pymalloc_debug"):
        # a free-threaded build has mimalloc only ("PYTHONMALLOC: unknown allocator")
        env = {
            "PYTHONMALLOC": {"malloc": "mimalloc", "pymalloc_debug": "mimalloc_debug"}[env["PYTHONMALLOC"]]
        }
    script = tmp_path / "modes.py"
    script.write_text(SCRIPT)
    result = run_command([os.fspath(cpython), *flags, str(script)], shim=shim, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.describe()
    row = find_row(final_rows(result.dumps), function="leak", line=line_of(script, "leak"))
    assert row.count >= 500 and row.retention_pct >= 80
    assert_consistent(result.dumps)

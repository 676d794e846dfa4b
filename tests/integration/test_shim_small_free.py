"""Small-object mode on CPython 3.9-3.12 (TRACKLEAK_SMALL_OBJECTS=1): the free path's filter.

Every PyObject_Free of the program goes through the shim's hook, whose unsampled path is one load
of the counting filter (both live sets' counters of a bucket at once, tl_maybe_sampled_any) and a
tail call: only a non-zero bucket looks the block up. Two things must never go wrong:

- a sampled block's free is never missed (a miss is a phantom leak at a healthy line): dense
  sampling of a line that builds and drops millions of small objects must leave it with next to
  nothing live, in the main thread and in another thread;
- the block kept pending for its type check (objects.c, tl_small_pend) is cleared by its free,
  which the filter sends to the slow path: when its arena is then given back (munmap), the next
  sample must not read it (a crash), also after a fork, and when the live set is full (dropped
  samples are never pending).
"""

from __future__ import annotations

import pytest
from helpers import find_row, line_of, run_preloaded

pytestmark = [pytest.mark.integration, pytest.mark.cpythons(gil=True, max_version=(3, 12))]

CHURN = """
import sys, threading
keep = []
def churn(n):
    for i in range(n):
        x = {{"k": i, "v": [i, str(i)], "f": i * 0.5}}  # ALLOC: churn
def leak(n):
    for i in range(n):
        keep.append(f"kept-{{i}}")  # ALLOC: leak
def main():
    churn(60_000)
    leak(20_000)
    churn(60_000)
if {thread}:
    t = threading.Thread(target=main)
    t.start()
    t.join()
else:
    main()
"""


@pytest.mark.parametrize("thread", [False, True], ids=["main", "thread"])
def test_sampled_frees_are_never_missed(cpython, shim, tmp_path, thread):
    # GIVEN a line that builds and drops 120 000 dicts (with a list, a str, a float each) next to
    # a leak of 20 000 strs, sampled densely (a point every 256 bytes on average)
    script = tmp_path / "churn.py"
    script.write_text(CHURN.format(thread=thread))
    env = {"TRACKLEAK_SMALL_OBJECTS": "1", "TRACKLEAK_SAMPLE_BYTES": "256"}
    result = run_preloaded(cpython, script, shim=shim, sample_rate=None, min_size=None, env=env, timeout=120)
    assert result.returncode == 0, result.describe()
    rows = result.rows()
    churn = find_row(rows, function="churn", file_endswith="churn.py", line=line_of(script, "churn"))
    leak = find_row(rows, function="leak", file_endswith="churn.py", line=line_of(script, "leak"))
    # THEN the churning line was sampled thousands of times and has (almost) nothing live: what
    # the freelists keep and the last dict (a missed free would leave its sample live: with tens
    # of thousands of samples taken, even 1 in 100 missed would be over 60 KiB)
    assert churn.sample_count >= 10_000, churn
    assert churn.live_bytes <= 48 * 1024, churn
    # AND the leak is there, about its size (20 000 strs of ~60 bytes)
    assert 0.6 * 20_000 * 56 <= leak.live_bytes <= 1.6 * 20_000 * 64, leak
    assert result.exit_dump().get("dropped", {}).get("samples", 0) == 0, result.exit_dump().get("dropped")


ARENAS = """
import os
def burst(n):
    x = [f"s{{i}}-" + "x" * (i % 200) for i in range(n)]  # ALLOC: burst
    del x  # many arenas of small strs, all freed: pymalloc gives the empty arenas back (munmap)
def after():
    return [str(i) * 3 for i in range(20_000)]  # more samples: the pending check runs
for r in range(4):
    burst(150_000)
    after()
    if {fork} and r == 1:
        pid = os.fork()
        if pid == 0:
            burst(150_000)
            after()
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
print("done")
"""


@pytest.mark.parametrize(
    "mode",
    ["dense", "exhaustive", "fork"],
)
def test_pending_block_freed_and_unmapped(cpython, shim, tmp_path, mode):
    # GIVEN bursts of small strs that fill arenas and free them all (pymalloc unmaps the empty
    # arenas), with samples taken throughout: the last sampled block of a burst (pending for its
    # type check) is freed and its memory unmapped before the next sample;
    # exhaustive: every block sampled, more live ones than the live set holds (dropped samples)
    script = tmp_path / "arenas.py"
    script.write_text(ARENAS.format(fork=mode == "fork"))
    env = {"TRACKLEAK_SMALL_OBJECTS": "1"}
    if mode == "exhaustive":
        sample_rate = 1
    else:
        sample_rate = None
        env["TRACKLEAK_SAMPLE_BYTES"] = "4096"
    result = run_preloaded(
        cpython, script, shim=shim, sample_rate=sample_rate, min_size=None, env=env, timeout=180
    )
    # THEN the program runs to its end (no read of unmapped memory) and its exit table is written
    assert result.returncode == 0, result.describe()
    assert "done" in result.stdout
    burst = [r for r in result.rows() if r.function == "burst" and r.line == line_of(script, "burst")]
    if burst:  # (every burst's strs were freed: nothing should stay live there)
        assert burst[0].live_bytes <= 0.05 * max(burst[0].total_bytes, 1), burst[0]

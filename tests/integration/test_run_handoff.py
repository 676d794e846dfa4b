"""`trackleak run` keeps the table of every process, however it ends (the handoff socket).

Each preloaded process hands its table's memfd to `trackleak run` when it makes it (at start-up,
after fork, after exec), so a worker that dies by SIGTERM or SIGKILL, or before the first poll,
still has its rows in the final table. The real CLI, the real shim, every local CPython.

Assertions are on what a user reads: the `--json` rows (count and total bytes are exact: every
allocation is counted; `--sample-rate 1` samples every one, so kept bytes are exact too).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from helpers import line_of
from helpers import run_trackleak as trackleak

MIB = 1 << 20


def run_json(script: Path, python: str, *extra: str, timeout: float = 120) -> tuple[dict, object]:
    out = script.with_suffix(".json")
    res = trackleak(
        "run",
        "--sample-rate",
        "1",
        "--json",
        str(out),
        *extra,
        "--python",
        python,
        str(script),
        cwd=script.parent,
        timeout=timeout,
        env={
            "TRACKLEAK_SMALL_OBJECTS": "0"
        },  # allocator blocks only (3.13+ objects: test_shim_small_objects)
    )
    assert out.exists(), f"no JSON written\nstdout: {res.stdout[-3000:]}\nstderr: {res.stderr[-3000:]}"
    return json.loads(out.read_text()), res


def rows_at(data: dict, script: Path, marker: str) -> list[dict]:
    line = line_of(script, marker)
    return [s for s in data["sites"] if s["file"] == str(script) and s["line"] == line]


def kept(row: dict) -> int:
    return row["sample_total_bytes"] - row["sample_free_bytes"]


def describe(data: dict, res) -> str:
    mine = [s for s in data["sites"] if s["file"].endswith(".py") and "/lib/" not in s["file"]]
    return f"rows: {mine[:20]}\nmeta: {data['meta']}\nstderr: {res.stderr[-2000:]}"


POOL = """\
import multiprocessing as mp, os, time
keep = []
def init(b, q):
    global barrier, done
    barrier, done = b, q
def work(_):
    keep.extend([bytearray(1 << 20) for _ in range(18)])  # ALLOC: worker
    barrier.wait(60)  # three tasks, three workers: none can take two
    done.put(os.getpid())
    time.sleep(60)  # still busy when the pool is terminated
if __name__ == "__main__":
    ctx = mp.get_context("fork")
    done = ctx.Queue()
    with ctx.Pool(3, initializer=init, initargs=(ctx.Barrier(3), done)) as pool:
        pool.map_async(work, range(3), chunksize=1)
        print(len({done.get(timeout=60) for _ in range(3)}), flush=True)
    # leaving the with block terminates the busy workers (SIGTERM): none writes an exit dump
"""


def test_terminated_pool_workers_all_count(cpython, tmp_path):
    # GIVEN a Pool(3) of forked workers, each leaking 18 MiB at one line, then terminated
    script = tmp_path / "pool.py"
    script.write_text(POOL)
    # WHEN it runs under trackleak run
    data, res = run_json(script, cpython.path)
    assert res.returncode == 0 and res.stdout.split()[0] == "3", res.stderr
    # THEN the final table's row for that line holds all three workers' 54 MiB, kept
    rows = rows_at(data, script, "worker")
    pids = {r["pid"] for r in rows}
    assert len(pids) >= 3, describe(data, res)
    assert pids <= set(data["meta"]["pids"])
    assert sum(r["count"] for r in rows) >= 54, describe(data, res)
    assert sum(r["total_bytes"] for r in rows) >= 54 * MIB, describe(data, res)
    assert sum(kept(r) for r in rows) >= 54 * MIB, describe(data, res)
    # AND the printed table shows the line once, merged over the workers
    assert f"pool.py:{line_of(script, 'worker')}" in res.stdout


SIGKILLED = """\
import os, signal, sys
pid = os.fork()
if pid == 0:
    keep = [bytearray(1 << 20) for _ in range(8)]  # ALLOC: killed
    os.kill(os.getpid(), signal.SIGKILL)
_, status = os.waitpid(pid, 0)
print(pid, os.WIFSIGNALED(status) and os.WTERMSIG(status), flush=True)
"""


def test_sigkilled_child_keeps_its_rows(cpython, tmp_path):
    # GIVEN a child that leaks 8 MiB and is killed by SIGKILL at once (no exit dump, no poll)
    script = tmp_path / "killed.py"
    script.write_text(SIGKILLED)
    data, res = run_json(script, cpython.path)
    assert res.returncode == 0, res.stderr
    child, sig = map(int, res.stdout.split()[:2])
    assert sig == 9
    # THEN its rows are in the final table, under its pid, exact
    rows = [r for r in rows_at(data, script, "killed") if r["pid"] == child]
    assert rows, describe(data, res)
    assert sum(r["count"] for r in rows) == 8, describe(data, res)
    assert sum(kept(r) for r in rows) >= 8 * MIB
    assert child in data["meta"]["pids"]


OS_EXIT = """\
import os
pid = os.fork()
if pid == 0:
    keep = [bytearray(256 << 10) for _ in range(40)]  # ALLOC: quits
    os._exit(0)
os.waitpid(pid, 0)
print(pid, flush=True)
"""


def test_child_leaving_with_os_exit_counts_once(cpython, tmp_path):
    # GIVEN a child that leaks 10 MiB in 40 blocks and leaves with os._exit (it writes an exit
    # dump and it handed off its table: the same data twice)
    script = tmp_path / "quits.py"
    script.write_text(OS_EXIT)
    data, res = run_json(script, cpython.path)
    assert res.returncode == 0, res.stderr
    child = int(res.stdout.split()[0])
    # THEN its rows count once, exactly
    rows = [r for r in rows_at(data, script, "quits") if r["pid"] == child]
    assert sum(r["count"] for r in rows) == 40, describe(data, res)
    assert sum(r["total_bytes"] for r in rows) >= 10 * MIB


BEFORE_FIRST_POLL = """\
import os, signal, time
pid = os.fork()
if pid == 0:
    keep = [bytearray(1 << 20) for _ in range(6)]  # ALLOC: early
    time.sleep(30)
    os._exit(0)
time.sleep(0.3)
os.kill(pid, signal.SIGTERM)
os.waitpid(pid, 0)
time.sleep(0.7)
print(pid, flush=True)
"""


def test_worker_dying_before_the_first_poll_counts(cpython, tmp_path):
    # GIVEN a worker that leaks and is terminated 0.3 s in, under a 5 s poll interval (the whole
    # script takes 1 s: no poll ever happens)
    script = tmp_path / "early.py"
    script.write_text(BEFORE_FIRST_POLL)
    started = time.monotonic()
    data, res = run_json(script, cpython.path, "--interval", "5")
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - started < 5 + 10
    child = int(res.stdout.split()[0])
    # THEN its table was still there to read at the end
    rows = [r for r in rows_at(data, script, "early") if r["pid"] == child]
    assert sum(r["count"] for r in rows) == 6, describe(data, res)
    assert sum(kept(r) for r in rows) >= 6 * MIB


EXEC = """\
import os, sys
if len(sys.argv) == 1:
    first = [bytearray(512 << 10) for _ in range(10)]  # ALLOC: before-exec
    print(os.getpid(), flush=True)
    os.execv(sys.executable, [sys.executable, __file__, "again"])
second = [bytearray(512 << 10) for _ in range(7)]  # ALLOC: after-exec
print(os.getpid(), flush=True)
"""


def test_both_incarnations_of_an_exec_count(interpreters, tmp_path):
    # GIVEN a process that leaks, then exec's a new program (same pid, a new table) that leaks too
    script = tmp_path / "reexec.py"
    script.write_text(EXEC)
    data, res = run_json(script, interpreters[-1].path)
    assert res.returncode == 0, res.stderr
    first, second = map(int, res.stdout.split()[:2])
    assert first == second
    # THEN both tables count, each once, under the one pid
    before = rows_at(data, script, "before-exec")
    after = rows_at(data, script, "after-exec")
    assert [r["pid"] for r in before] == [first] and sum(r["count"] for r in before) == 10, describe(
        data, res
    )
    assert [r["pid"] for r in after] == [first] and sum(r["count"] for r in after) == 7, describe(data, res)


MANY = """\
import os, signal, time
n = 0
for i in range(250):
    pid = os.fork()
    if pid == 0:
        keep = [bytearray(8192) for _ in range(2)]  # ALLOC: request
        time.sleep(0.004)  # a request's work
        if i % 2:
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)
    os.waitpid(pid, 0)
    n += 1
print(n, flush=True)
"""


def test_fork_per_request_children_all_count(interpreters, tmp_path):
    # GIVEN a server that forks 250 short-lived children, half of them killed by SIGKILL
    script = tmp_path / "many.py"
    script.write_text(MANY)
    data, res = run_json(script, interpreters[-1].path, "--interval", "0.2")
    assert res.returncode == 0, res.stderr
    # THEN every child's two allocations are in the final table, none twice
    rows = rows_at(data, script, "request")
    assert sum(r["count"] for r in rows) == 500, describe(data, res)
    assert len(data["meta"]["pids"]) >= 251

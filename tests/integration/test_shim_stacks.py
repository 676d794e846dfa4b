# SPDX-License-Identifier: MIT
"""Call stacks in the shim route (issue 9), on every local CPython.

GIVEN a library function that keeps a 4 KiB buffer per call, reached through two callers (caller A
keeps 3 buffers for every 1 caller B keeps), through recursion deeper than the stack depth, from a
forked child, from two threads, and from more call paths than the stack table holds
WHEN it runs under the shim (exhaustive: exact; default sampling: within the sampling error)
THEN the library's row carries both paths with the right split of its live bytes, in the shim's
dumps, in `trackleak run --json` and in the collapsed view made from it; a deeper stack says
`truncated`; a full table counts its drops and the views still add up to the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from helpers import describe_row, line_of, run_preloaded, run_trackleak

from trackleak.stacks import complete, parse_stacks

pytestmark = pytest.mark.integration

N = 1500  # buffers caller B keeps (caller A keeps 3 N)
SIZE = 4096
LIB = """\
def keep(store, i, n):
    store[i] = bytearray(n)  # ALLOC: keep

def keep_small(store, i):
    store[i] = bytes(100 + i % 2)  # ALLOC: keep_small
"""
APP = """\
import os, sys, threading
import lib
MODE, N, SIZE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = [None] * (8 * N)  # made once: the lib line's only kept blocks are the buffers

def caller_a(i):
    lib.keep(store, i, SIZE)  # ALLOC: call_a

def caller_b(i):
    lib.keep(store, i, SIZE)  # ALLOC: call_b

def split():
    for i in range(N):
        caller_a(4 * i)
        caller_a(4 * i + 1)
        caller_a(4 * i + 2)
        caller_b(4 * i + 3)

def deep(k, i):
    if k:
        return deep(k - 1, i)
    lib.keep(store, i, SIZE)

def truncation():
    for i in range(N):
        deep(40, i)

def forked():
    for i in range(N):
        caller_a(i)
    pid = os.fork()
    if pid == 0:
        for i in range(N):
            caller_b(N + i)
        os._exit(0)
    os.waitpid(pid, 0)

def threads():
    ta = threading.Thread(target=lambda: [caller_a(i) for i in range(3 * N)])
    tb = threading.Thread(target=lambda: [caller_b(3 * N + i) for i in range(N)])
    ta.start(); tb.start(); ta.join(); tb.join()

def many():
    # 64 distinct callers of lib.keep: more paths than a 16-path table holds
    callers = []
    for k in range(64):
        ns = {"lib": lib, "store": store}
        exec(f"def caller_{k}(i):\\n    lib.keep(store, i, {SIZE})\\n", ns)
        callers.append(ns[f"caller_{k}"])
    for i in range(N):
        callers[i % 64](i)

def small():
    def small_a(i):
        lib.keep_small(store, i)
    def small_b(i):
        lib.keep_small(store, i)
    for i in range(N):
        small_a(4 * i)
        small_a(4 * i + 1)
        small_a(4 * i + 2)
        small_b(4 * i + 3)

MODES = {"small": small, "split": split, "truncation": truncation, "forked": forked, "threads": threads}
MODES["many"] = many
MODES[MODE]()
print("stacks-ok")
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("stacks-app")
    (work / "lib.py").write_text(LIB)
    (work / "app.py").write_text(APP)
    return work / "app.py"


def run(cpython, shim, app, tmp_path, mode, *, sample_rate=1, env=None, n=N):
    env = {"TRACKLEAK_SMALL_OBJECTS": "0", **(env or {})}
    res = run_preloaded(
        cpython,
        app,
        args=[mode, n, SIZE],
        shim=shim,
        log_dir=tmp_path,
        sample_rate=sample_rate,
        min_size=1000,
        timeout=120,
        # exhaustive: the allocator's samples only (3.13+'s tracer would sample every object too)
        env=env,
    )
    assert res.returncode == 0 and "stacks-ok" in res.stdout, res.describe()
    return res


def keep_row(rows, app):
    lib_line = line_of(app.parent / "lib.py", "keep")
    found = [r for r in rows if r.file.endswith("/lib.py") and r.line == lib_line]
    assert len(found) == 1, [describe_row(r) for r in rows[:20]]
    return found[0]


def dump_row(res, app, pid=None):
    """The keep row of PID's exit dump, its stacks validated as every reader does."""
    dump = res.exit_dump(pid)
    lib_line = line_of(app.parent / "lib.py", "keep")
    (site,) = [s for s in dump["sites"] if s["file"].endswith("/lib.py") and s["line"] == lib_line]
    row = keep_row(res.rows(pid), app)
    row.stacks = parse_stacks(site.get("stacks"), row)
    return dump, row


def by_caller(stacks, app):
    """{caller function: its paths added up} for paths whose frame above keep is in app.py (split
    calls caller_a from three lines: three paths)."""
    out = {}
    for s in stacks:
        assert s.frames[-1][0] == "keep", s.frames
        caller = s.frames[-2]
        if caller[1].endswith("/app.py"):
            if caller[0] in out:
                out[caller[0]].add(dataclasses.replace(s, frames=out[caller[0]].frames))
            else:
                out[caller[0]] = dataclasses.replace(s)
    return out


def test_two_callers_split_exactly(cpython, shim, app, tmp_path):
    res = run(cpython, shim, app, tmp_path, "split")
    dump, row = dump_row(res, app)
    assert dump["stack_depth"] == 32 and dump["dropped"]["stacks"] == 0, dump["dropped"]
    paths = by_caller(row.stacks, app)
    a, b = paths["caller_a"], paths["caller_b"]
    # each path: <module> -> split -> caller_X -> keep, the call lines of this file
    assert [f[0] for f in a.frames[-3:]] == ["split", "caller_a", "keep"], a.frames
    assert len(row.stacks) == 4  # caller_a from three lines of split, caller_b from one
    assert a.frames[-2][2] == line_of(app, "call_a") and b.frames[-2][2] == line_of(app, "call_b")
    assert a.frames[0][0] == "<module>" and not a.truncated
    assert (a.live_count, b.live_count) == (3 * N, N), (a, b)
    assert a.live_bytes == 3 * b.live_bytes and a.live_bytes + b.live_bytes == row.live_bytes, (a, b, row)
    assert sum(s.live_bytes for s in row.stacks) == row.live_bytes


@pytest.mark.cpythons(gil=True)  # (small objects do not apply to a free-threaded build)
def test_small_objects_split(cpython, shim, app, tmp_path):
    """Small objects (3.13+: the reference tracer, whose var-sized objects are recorded at the next
    event with the path read at their creation; 3.9-3.12: small-object mode's sampled blocks)."""
    res = run(
        cpython,
        shim,
        app,
        tmp_path,
        "small",
        sample_rate=None,
        env={"TRACKLEAK_SMALL_OBJECTS": "1", "TRACKLEAK_SAMPLE_BYTES": "512"},
        n=3000,
    )
    dump = res.exit_dump()
    lib_line = line_of(app.parent / "lib.py", "keep_small")
    (site,) = [s for s in dump["sites"] if s["file"].endswith("/lib.py") and s["line"] == lib_line]
    (row,) = [r for r in res.rows() if r.file.endswith("/lib.py") and r.line == lib_line]
    row.stacks = parse_stacks(site.get("stacks"), row)
    through = {}
    for s in row.stacks:
        through[s.frames[-2][0]] = through.get(s.frames[-2][0], 0) + s.live_bytes
    a, b = (
        through.get("small.<locals>.small_a", through.get("small_a")),
        through.get("small.<locals>.small_b", through.get("small_b")),
    )
    assert a and b, through
    # ~12 000 objects of ~140 bytes at R = 512: 3.13+ samples a bytes object on its header
    # (~40 bytes, its size comes later) with weights s/p(40), so the share's standard error is
    # ~0.014; 0.075 is over 5 of them
    assert abs(a / (a + b) - 0.75) < 0.075, (a, b)
    assert a + b == row.live_bytes, (a, b, describe_row(row))  # every sample got its path


def test_depth_truncates_innermost_kept(cpython, shim, app, tmp_path):
    res = run(cpython, shim, app, tmp_path, "truncation", env={"TRACKLEAK_STACK_DEPTH": "8"})
    dump, row = dump_row(res, app)
    assert dump["stack_depth"] == 8
    (stack,) = [s for s in row.stacks if s.live_count]
    assert stack.truncated and len(stack.frames) == 8, stack
    assert [f[0] for f in stack.frames] == ["deep"] * 7 + ["keep"]
    assert stack.live_bytes == row.live_bytes and stack.live_count == N


def test_depth_zero_records_no_stacks(cpython, shim, app, tmp_path):
    res = run(cpython, shim, app, tmp_path, "split", env={"TRACKLEAK_STACK_DEPTH": "0"})
    dump = res.exit_dump()
    assert dump["stack_depth"] == 0
    assert not any("stacks" in s for s in dump["sites"])


def test_full_stack_table_counts_drops_and_views_add_up(cpython, shim, app, tmp_path):
    res = run(cpython, shim, app, tmp_path, "many", env={"TRACKLEAK_MAX_STACKS": "16"})
    dump, row = dump_row(res, app)
    assert dump["dropped"]["stacks"] > 0, dump["dropped"]
    assert len(row.stacks) <= 16  # (start-up's own samples may have filled it already: exhaustive)
    covered = sum(s.live_bytes for s in row.stacks)
    assert covered < row.live_bytes  # what the dropped paths held stays on the row
    filled = complete(row, row.stacks)
    assert sum(s.live_bytes for s in filled) == row.live_bytes
    assert sum(s.live_count for s in filled) == row.live_count == N


def test_fork_child_keeps_its_own_paths(cpython, shim, app, tmp_path):
    res = run(cpython, shim, app, tmp_path, "forked")
    parent = res.exit_dump()["pid"]
    children = {d["pid"] for d in res.dumps} - {parent}
    assert len(children) == 1, [(d["pid"], d["reason"]) for d in res.dumps]
    _, prow = dump_row(res, app, parent)
    _, crow = dump_row(res, app, children.pop())
    pa = by_caller(prow.stacks, app)
    ca = by_caller(crow.stacks, app)
    # the parent kept N through A before the fork; the child only its own N through B
    assert set(pa) == {"caller_a"} and pa["caller_a"].live_count == N, pa
    assert set(ca) == {"caller_b"} and ca["caller_b"].live_count == N, ca
    assert ca["caller_b"].live_bytes == crow.live_bytes


def test_threads_keep_their_paths(cpython, shim, app, tmp_path):
    res = run(cpython, shim, app, tmp_path, "threads")
    _, row = dump_row(res, app)
    paths = by_caller(row.stacks, app)
    a, b = paths["caller_a"], paths["caller_b"]
    assert (a.live_count, b.live_count) == (3 * N, N), (a, b)
    assert a.live_bytes == 3 * b.live_bytes and a.live_bytes + b.live_bytes == row.live_bytes
    # the thread's own outer frames: threading's bootstrap, not the main thread's
    assert any("threading" in f[1] for f in a.frames[:-2]), a.frames


def test_sampled_split_in_run_json_and_collapsed(cpython, app, tmp_path):
    """Default sampling (50 KiB), through `trackleak run --json` and `trackleak report --collapsed`:
    both paths, each within 5 standard errors of its true live bytes."""
    out = tmp_path / "out.json"
    res = run_trackleak(
        "run",
        "--json",
        str(out),
        "--python",
        cpython.path,
        str(app),
        "split",
        str(N),
        str(SIZE),
        cwd=app.parent,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    lib_line = line_of(app.parent / "lib.py", "keep")
    rows = [s for s in doc["sites"] if s["file"].endswith("/lib.py") and s["line"] == lib_line]
    assert len(rows) == 1, rows
    stacks = {}
    for s in rows[0]["stacks"]:  # caller_a: three paths (three call lines in split)
        have = stacks.setdefault(s["frames"][-2][0], {"live_bytes": 0})
        have["live_bytes"] += s["live_bytes"]
    a, b = stacks["caller_a"], stacks["caller_b"]
    blk = SIZE + 1  # bytearray(n) asks for n + 1 bytes
    r = 50 * 1024
    p = 1 - math.exp(-blk / r)
    for got, n in ((a["live_bytes"], 3 * N), (b["live_bytes"], N)):
        truth = n * blk
        sd = math.sqrt(n * blk * blk * (1 - p) / p)
        # (+3 %: on 3.13+ the buffers' object headers are sampled at the same line too)
        assert abs(got - truth) <= 5 * sd + 0.03 * truth, (got, truth, sd)
    # the collapsed view made from that file: the same two paths, the same bytes
    col = run_trackleak("report", "--collapsed", "-", str(out), cwd=tmp_path)
    assert col.returncode == 0, col.stderr
    lines = [
        ln for ln in col.stdout.splitlines() if ln.split(" ")[-1].isdigit() and f"lib.py:{lib_line})" in ln
    ]
    through = {}
    for ln in lines:
        frames, value = ln.rsplit(" ", 1)
        caller = frames.split(";")[-2].split(" (")[0]
        through[caller] = through.get(caller, 0) + int(value)
    assert through.get("caller_a") == a["live_bytes"] and through.get("caller_b") == b["live_bytes"], (
        col.stdout[:2000]
    )


@pytest.mark.parametrize(
    "value, depth, said",
    [
        ("200", 128, "TRACKLEAK_STACK_DEPTH=200 is more than 128 frames; using 128"),
        ("deep", 32, 'ignoring TRACKLEAK_STACK_DEPTH="deep": expected a whole number'),
        ("-1", 32, 'ignoring TRACKLEAK_STACK_DEPTH="-1"'),
        ("5", 5, None),
    ],
)
def test_stack_depth_variable(cpython, shim, app, tmp_path, value, depth, said):
    res = run(cpython, shim, app, tmp_path, "split", env={"TRACKLEAK_STACK_DEPTH": value}, n=10)
    assert res.exit_dump()["stack_depth"] == depth
    lines = [ln for ln in res.stderr.splitlines() if "TRACKLEAK_STACK_DEPTH" in ln]
    if said is None:
        assert lines == [], res.stderr
    else:
        assert len(lines) == 1 and said in lines[0] and lines[0].startswith("[trackleak] "), res.stderr

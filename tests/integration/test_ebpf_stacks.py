# SPDX-License-Identifier: MIT
"""Call paths in the eBPF route (issue 9), on every local CPython, with real BPF.

A library function (``lib_keep``) leaks a 4 KiB malloc per call; caller A calls it 3 times for
each call of caller B. Every allocation is sampled (sample rate 1: R = 0, weights 1), so the
split of live bytes between the two paths under the library function's row is exact. Then: a
path deeper than the depth says ``truncated``; a path map too small counts what it drops.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from ebpf_support import AGENT_CMD, BPF_SKIP, Target
from helpers import line_of

pytestmark = [pytest.mark.integration, pytest.mark.bpf]

UNIT = 4096
ROUNDS = 400

STACK_TARGET = r"""
import ctypes, os, sys, time

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]  # else a C int: a PIE's heap address is cut (SIGSEGV)
kept = [0] * 100000  # preallocated: the leaking line allocates nothing but its block
held = [0]


def lib_keep(n):
    kept[held[0]] = libc.malloc(n); held[0] += 1  # ALLOC: lib


def caller_a():
    lib_keep(4096)  # ALLOC: call_a


def caller_b():
    lib_keep(4096)  # ALLOC: call_b


def deep(k):
    if k:
        return deep(k - 1)  # ALLOC: recurse
    lib_keep(4096)  # ALLOC: deep_call


def lib_churn(n):
    libc.free(libc.malloc(n))  # ALLOC: churn


def churn(k):
    if k:
        return churn(k - 1)
    lib_churn(2048)


def work(rounds, mode):
    for _ in range(rounds):
        if mode == "split":
            caller_a()
            caller_a()
            caller_a()
            caller_b()
        elif mode == "deep":
            deep(10)
        else:  # "many": paths of every depth from 0 to 39
            for k in range(40):
                deep(k)
        time.sleep(0.0002)


rounds, mode = int(sys.argv[1]), sys.argv[2]
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
if mode == "phases":  # 40 healthy paths, then (after "go") one of them again and the leak
    for times, paths in ((rounds, 40), (5, 1)):
        for _ in range(times):
            for k in range(paths):
                churn(k)  # the same line in both phases: the same paths
        if paths == 40:
            print("done", flush=True)
            sys.stdin.readline()
    work(rounds, "split")
else:
    work(rounds, mode)
print("done", flush=True)
sys.stdin.readline()
"""


def _script(tmp_path: Path) -> Path:
    script = tmp_path / "stack_target.py"
    script.write_text(STACK_TARGET)
    return script


def _session(pids, **tunables):
    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    return EbpfSession(pids, Tunables(sample_rate=1, min_size=1000, arenas=False, **tunables))


def _lib_row(rows, cpython, script):
    line = line_of(script, "lib")
    found = [r for r in rows if r.file.endswith(script.name) and r.line == line and not r.native]
    assert len(found) == 1, [(r.function, r.file, r.line) for r in rows]
    assert found[0].function == cpython.func("lib_keep")
    return found[0]


def _run(cpython, tmp_path, mode, rounds, **tunables):
    script = _script(tmp_path)
    target = Target([cpython.path, str(script), str(rounds), mode])
    session = _session([target.pid], **tunables)
    session.start()
    try:
        target.say("go")
        target.wait_done()
        rows = session.poll().merged()
    finally:
        session.stop()
        target.finish()
    return session, script, rows


@BPF_SKIP
def test_two_callers_split_live_bytes_exactly(cpython, tmp_path):
    # GIVEN a library function leaking through two callers, A three times as often as B
    # WHEN the agent samples every allocation with the default depth
    session, script, rows = _run(cpython, tmp_path, "split", ROUNDS)
    # THEN the library function's row has both paths, each ending at the row's site, with the
    # exact live bytes of its caller (every allocation sampled: weights 1)
    row = _lib_row(rows, cpython, script)
    assert row.stacks, row
    site = (row.function, row.file, row.line)
    by_caller = {}
    for stack in row.stacks:
        assert stack.frames[-1] == site
        assert not stack.truncated
        if len(stack.frames) >= 2:
            by_caller.setdefault(stack.frames[-2], []).append(stack)
    call_a = (cpython.func("caller_a"), str(script), line_of(script, "call_a"))
    call_b = (cpython.func("caller_b"), str(script), line_of(script, "call_b"))
    assert call_a in by_caller and call_b in by_caller, list(by_caller)
    live_a = sum(s.live_bytes for s in by_caller[call_a])
    live_b = sum(s.live_bytes for s in by_caller[call_b])
    assert live_a == 3 * ROUNDS * UNIT, (live_a, row.stacks)
    assert live_b == ROUNDS * UNIT, (live_b, row.stacks)
    assert sum(s.count for s in by_caller[call_a]) == 3 * ROUNDS
    # the paths cover the row (nothing dropped)
    assert sum(s.live_bytes for s in row.stacks) == row.live_bytes
    assert session.counters["paths_full"] == 0
    # outermost first: caller_a's caller is the work loop
    a_stack = by_caller[call_a][0]
    assert a_stack.frames[-3][0] == cpython.func("work"), a_stack.frames


@BPF_SKIP
def test_agent_json_carries_both_paths(interpreters, tmp_path):
    # GIVEN the same workload on one interpreter (the newest), the agent run from its CLI
    cpython = interpreters[-1]
    script = _script(tmp_path)
    target = Target([cpython.path, str(script), str(ROUNDS), "split"])
    out = tmp_path / "agent.json"
    env = dict(os.environ, TRACKLEAK_EBPF_ARENAS="0")
    agent = subprocess.Popen(
        [
            *AGENT_CMD,
            "--pid",
            str(target.pid),
            "--json",
            str(out),
            "--sample-rate",
            "1",
            "--min-size",
            "1000",
            "--interval",
            "0.5",
            "--no-live",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # once it has attached (it says so on stderr; compiling takes a while on a busy machine)
        said = []
        for line in iter(agent.stderr.readline, ""):
            said.append(line)
            if "attached to" in line:
                break
        assert said and "attached to" in said[-1], said
        target.say("go")
        target.wait_done()
        time.sleep(1.5)
        target.finish()
        agent.wait(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        target.finish()
    stdout, stderr = agent.communicate()
    doc = json.loads(out.read_text())
    line = line_of(script, "lib")
    rows = [r for r in doc["sites"] if r["file"].endswith(script.name) and r["line"] == line]
    assert rows, (stdout, stderr)
    stacks = rows[0]["stacks"]
    callers: dict[int, int] = {}  # caller's line -> live bytes (caller_a is called from 3 lines of work)
    for s in stacks:
        if len(s["frames"]) >= 2:
            callers[s["frames"][-2][2]] = callers.get(s["frames"][-2][2], 0) + s["live_bytes"]
    assert callers.get(line_of(script, "call_a")) == 3 * ROUNDS * UNIT, stacks
    assert callers.get(line_of(script, "call_b")) == ROUNDS * UNIT, stacks
    assert doc["meta"]["stack_depth"] == 32


@BPF_SKIP
def test_deeper_than_the_depth_is_truncated(interpreters, tmp_path):
    # GIVEN a recursion 11 frames deep under work and the module, and a depth of 4
    cpython = interpreters[-1]
    _, script, rows = _run(cpython, tmp_path, "deep", 200, stack_depth=4)
    row = _lib_row(rows, cpython, script)
    # WHEN the agent keeps 4 frames a path
    # THEN its one path keeps the innermost 4 frames and says it was cut
    assert row.stacks and len(row.stacks) == 1, row.stacks
    stack = row.stacks[0]
    assert stack.truncated
    assert len(stack.frames) == 4
    recurse, call = line_of(script, "recurse"), line_of(script, "deep_call")
    assert [f[2] for f in stack.frames[:-1]] == [recurse, recurse, call]
    assert [f[0] for f in stack.frames[:-1]] == [cpython.func("deep")] * 3
    assert stack.live_bytes == 200 * UNIT


@BPF_SKIP
def test_full_path_map_counts_drops(interpreters, tmp_path):
    # GIVEN 40 distinct paths into the library function and room for 8 in the map
    cpython = interpreters[-1]
    session, script, rows = _run(cpython, tmp_path, "many", 20, limits={"TL_MAX_PATHS": 8})
    row = _lib_row(rows, cpython, script)
    # THEN what had no room is counted and shown as dropped, and the paths kept are right
    assert session.counters["paths_full"] > 0
    assert session.dropped()["paths_full"] == session.counters["paths_full"]
    assert 0 < len(row.stacks or []) <= 8
    assert sum(s.live_bytes for s in row.stacks) < row.live_bytes
    for stack in row.stacks:
        assert stack.live_bytes % UNIT == 0


@BPF_SKIP
def test_idle_paths_make_room_and_keep_their_totals(interpreters, tmp_path):
    # GIVEN room for 16 paths and a target that churns through 40 healthy paths
    cpython = interpreters[-1]
    script = _script(tmp_path)
    target = Target([cpython.path, str(script), "20", "phases"])
    session = _session([target.pid], limits={"TL_MAX_PATHS": 16})
    session.start()
    try:
        target.say("go")
        target.wait_done()
        # WHEN the agent polls while they are idle (the second poll evicts them)...
        session.poll()
        session.poll()
        # ... and the target then leaks through two callers (and churns its first path again)
        target.say("go")
        target.wait_done()
        rows = session.poll().merged()
    finally:
        session.stop()
        target.finish()
    # THEN idle paths were evicted, and the leak's paths found room: the exact split
    assert session.evicted_paths >= 10
    assert session.counters["paths_full"] > 0  # the first phase did not fit
    row = _lib_row(rows, cpython, script)
    by_line: dict[int, int] = {}
    for stack in row.stacks:
        by_line[stack.frames[-2][2]] = by_line.get(stack.frames[-2][2], 0) + stack.live_bytes
    assert by_line[line_of(script, "call_a")] == 3 * 20 * UNIT
    assert by_line[line_of(script, "call_b")] == 20 * UNIT
    # ... and the first churn path (first in every round: always stored), evicted and back,
    # continues from its carried totals: 20 calls, then 5
    churn_row = next(r for r in rows if r.line == line_of(script, "churn") and r.file.endswith(script.name))
    shortest = min(churn_row.stacks, key=lambda s: len(s.frames))
    assert shortest.count == 25 and shortest.live_bytes == 0, shortest
    assert session.meta()["evicted_paths"] == session.evicted_paths


@BPF_SKIP
def test_native_rows_carry_their_native_call_paths(tmp_path):
    from ebpf_support import build_leaker, find, run_attached

    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    # GIVEN the native leaker (frame pointers) and user stacks for every native site
    leaker = build_leaker(tmp_path)
    target = Target([str(leaker), "300", "200"])
    session = EbpfSession([target.pid], Tunables(sample_rate=1, min_size=500, native_stacks=2))
    # WHEN it leaks in leak_here (called from main)
    rows = run_attached(session, target)
    # THEN its row's paths end at leak_here, called from main, and cover the row exactly
    leak = find(rows, "leak_here", file_endswith="leaker")
    assert leak.stacks, leak
    for stack in leak.stacks:
        assert stack.frames[-1] == (leak.function, leak.file, 0)
        assert stack.frames[-2][0] == "main", stack.frames
    assert sum(s.live_bytes for s in leak.stacks) == leak.live_bytes
    assert sum(s.count for s in leak.stacks) == leak.count == 8 * 300


@BPF_SKIP
def test_depth_zero_records_no_paths(interpreters, tmp_path):
    # GIVEN --stack-depth 0: the program is built without the path walk and map
    cpython = interpreters[-1]
    session, script, rows = _run(cpython, tmp_path, "split", 50, stack_depth=0)
    # THEN the rows are as before, without stacks
    row = _lib_row(rows, cpython, script)
    assert row.stacks is None and row.live_bytes == 4 * 50 * UNIT
    assert session.meta()["stack_depth"] == 0 and session.evicted_paths == 0


CHURN_FROM_THE_START = r"""
import sys, time
def churn():
    x = bytearray(8192)  # ALLOC: churn
    del x
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        churn()
    time.sleep(0.005)
"""


@BPF_SKIP
def test_a_healthy_line_busy_while_the_agent_attaches_stays_clean(tmp_path):
    """GIVEN a process that allocates and frees all the time WHEN the agent attaches at the
    largest stack depth, every allocation sampled THEN its line shows no retention: the free probe
    is attached before any allocation can be sampled. (Programs were verified probe by probe: at
    depth 128 the allocation probes ran for seconds before the free probe existed, and the line
    showed 25 % retention.)"""
    import sys

    script = tmp_path / "churn.py"
    script.write_text(CHURN_FROM_THE_START)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TRACKLEAK_"))}
    proc = subprocess.Popen([sys.executable, str(script), "120"], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().startswith("ready")
    out = tmp_path / "agent.json"
    try:
        r = subprocess.run(
            [
                *(*AGENT_CMD, "--pid", str(proc.pid), "--duration", "3", "--sample-rate", "1"),
                *("--stack-depth", "128", "--quiet", "--json", str(out)),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 0, r.stderr
    (row,) = [s for s in json.loads(out.read_text())["sites"] if s["line"] == line_of(script, "churn")]
    assert row["count"] > 1000, row
    # at most the block between bytearray() and del when the table was read
    assert row["live_bytes"] <= 2 * 8225 and row["retention_pct"] < 1, row

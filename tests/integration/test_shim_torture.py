# SPDX-License-Identifier: MIT
"""Torture tests: the shim must never crash, hang or corrupt the host, and keep reporting right.

Threads, fork in a loop, exec (subprocess and os.execv), interpreter shutdown with live daemon
threads, a signal handler that allocates. Scenarios live in tests/fixtures/torture.py.
"""

from __future__ import annotations

import pytest
from helpers import (
    FIXTURES,
    assert_consistent,
    describe_row,
    exit_dump,
    final_rows,
    find_row,
    find_rows,
    format_rows,
    line_of,
    rows_of,
    run_preloaded,
)

pytestmark = pytest.mark.integration

TORTURE = FIXTURES / "torture.py"
EXEC_CHILD_LINE = 4  # torture.EXEC_CHILD: the append line of the -c program


def _ok(result, token):
    assert result.returncode == 0, result.describe()
    assert token in result.stdout, result.describe()
    assert "Fatal Python error" not in result.stderr and "Segmentation" not in result.stderr, (
        result.describe()
    )


def test_eight_threads_allocating_and_freeing(cpython, shim, log_dir):
    # GIVEN 8 threads allocating and freeing (also inside C with the GIL released, and freeing
    # blocks other threads allocated) for 2.5 s
    result = run_preloaded(cpython, TORTURE, args=["threads", 2.5], shim=shim, log_dir=log_dir, timeout=90)
    # THEN the process exits 0 and the exit dump is consistent
    _ok(result, "threads-ok")
    assert_consistent(result.dumps)
    rows = result.rows()
    row = find_row(
        rows, function="churn_worker", file_endswith="/torture.py", line=line_of(TORTURE, "thread_churn")
    )
    # every bytearray was freed by the end, many of them by another thread than the allocator
    assert row.count >= 1000, describe_row(row)
    assert row.retention_pct is not None and row.retention_pct <= 20.0, describe_row(row)


def test_fork_in_a_loop(cpython, shim, log_dir):
    # GIVEN a parent that forks 50 times; each child allocates 20 blocks and leaves with os._exit(0)
    n = 50
    result = run_preloaded(cpython, TORTURE, args=["fork", n], shim=shim, log_dir=log_dir, timeout=120)
    # THEN the parent exits 0
    _ok(result, "fork-ok")
    assert_consistent(result.dumps)
    parent = result.pid
    child_pids = [int(p) for p in result.stdout.split("fork-ok", 1)[1].split()[1:]]
    assert len(child_pids) == n, result.stdout
    # AND every child wrote its own exit dump with its own pid and the parent as ppid
    by_pid = {}
    for dump in result.dumps:
        by_pid.setdefault(dump["pid"], []).append(dump)
    missing = [p for p in child_pids if p not in by_pid]
    assert not missing, (
        f"{len(missing)} of {n} children wrote no dump (e.g. {missing[:5]}); " + result.describe()
    )
    child_line = line_of(TORTURE, "fork_child")
    for pid in child_pids:
        dump = exit_dump(result.dumps, pid)
        assert dump["ppid"] == parent, f"child {pid}: ppid {dump['ppid']} != parent {parent}"
        row = find_row(
            rows_of(dump), function="fork_child_work", file_endswith="/torture.py", line=child_line
        )
        assert row.count >= 20, f"child {pid}\n" + describe_row(row)
        assert row.retention_pct is not None and row.retention_pct >= 80.0, f"child {pid}\n" + describe_row(
            row
        )
    strangers = sorted(set(by_pid) - set(child_pids) - {parent})
    assert not strangers, f"dumps from unknown pids {strangers}"
    # AND the parent's table holds its own allocations, not its children's
    rows = result.rows(parent)
    row = find_row(
        rows, function="fork_parent_work", file_endswith="/torture.py", line=line_of(TORTURE, "fork_parent")
    )
    assert row.count >= n and row.retention_pct is not None and row.retention_pct >= 80.0, describe_row(row)
    leaked_in = find_rows(rows, function="fork_child_work")
    assert not leaked_in, "children's allocations in the parent's table:\n" + format_rows(leaked_in)


def test_child_started_by_subprocess_reports(cpython, shim, log_dir):
    # GIVEN a Python process that runs subprocess.run([sys.executable, "-c", ...]) (fork/vfork + exec)
    result = run_preloaded(cpython, TORTURE, args=["subprocess"], shim=shim, log_dir=log_dir)
    # THEN both work and the exec'd child reports under its own pid, with the parent as ppid
    _ok(result, "subprocess-ok")
    assert "exec-child-ok" in result.stdout, result.describe()
    assert_consistent(result.dumps)
    children = sorted({d["pid"] for d in result.dumps if d["pid"] != result.pid})
    assert len(children) == 1, f"expected one child's dumps, got pids {children}; " + result.describe()
    child_dump = exit_dump(result.dumps, children[0])
    assert child_dump["ppid"] == result.pid
    assert child_dump["python"] == cpython.version
    row = find_row(rows_of(child_dump), function="<module>", file_endswith="<string>", line=EXEC_CHILD_LINE)
    assert row.count >= 300 and row.retention_pct is not None and row.retention_pct >= 80.0, describe_row(row)
    result.exit_dump()  # the parent's own exit dump is there too


def test_execv_program_still_works_and_reports(cpython, shim, log_dir):
    # GIVEN a Python process that replaces itself with os.execv(sys.executable, [..., "-c", ...])
    result = run_preloaded(cpython, TORTURE, args=["execv"], shim=shim, log_dir=log_dir)
    # THEN the new image runs to the end, and its exit dump (same pid) shows its own allocations
    _ok(result, "exec-child-ok")
    assert "execv-before" in result.stdout, result.describe()
    assert_consistent(result.dumps)
    dump = result.exit_dump()
    row = find_row(rows_of(dump), function="<module>", file_endswith="<string>", line=EXEC_CHILD_LINE)
    assert row.count >= 300 and row.retention_pct is not None and row.retention_pct >= 80.0, describe_row(row)


# CPython 3.10 crashes by itself at exit in the daemon scenario (daemon threads inside ctypes calls
# while the interpreter finalizes): 1 run in 100 without the shim (100 runs of `python3.10
# tests/fixtures/torture.py daemon 0.3`; 0 in 100 on 3.9, 3.11 and 3.12). There, one SIGSEGV after
# the scenario's last line is forgiven and the attempt made again; a second one fails the test.
CPYTHON_CRASHES_AT_EXIT = {(3, 10)}


def test_shutdown_with_live_daemon_threads(cpython, shim, tmp_path):
    # GIVEN daemon threads still allocating (in Python, and in C with the GIL released) when the
    # main thread returns; repeated, since shutdown races are timing-dependent
    forgivable = 1 if cpython.version_info[:2] in CPYTHON_CRASHES_AT_EXIT else 0
    passed = attempt = 0
    while passed < 3:
        attempt += 1
        log_dir = tmp_path / f"logs{attempt}"
        log_dir.mkdir()
        result = run_preloaded(cpython, TORTURE, args=["daemon", 0.3], shim=shim, log_dir=log_dir)
        if forgivable and result.returncode == -11 and "daemon-ok" in result.stdout:
            forgivable -= 1
            continue
        # THEN exit 0, no crash, and the exit dump is written
        _ok(result, "daemon-ok")
        assert_consistent(result.dumps)
        dump = result.exit_dump()
        assert dump["reason"] == "exit"
        rows = rows_of(dump)
        row = find_row(
            rows, function="daemon_python", file_endswith="/torture.py", line=line_of(TORTURE, "daemon_alloc")
        )
        assert row.count > 0, describe_row(row)
        passed += 1


def test_signal_handler_that_allocates(cpython, shim, log_dir):
    # GIVEN a SIGALRM handler (setitimer, every 2 ms) that allocates while the main thread allocates
    result = run_preloaded(cpython, TORTURE, args=["signal", 1.0], shim=shim, log_dir=log_dir)
    # THEN exit 0, and both the handler's line and the main loop's line are sites
    _ok(result, "signal-ok")
    assert_consistent(result.dumps)
    calls = int(result.stdout.split("signal-ok", 1)[1].split()[0])
    assert calls >= 10, result.stdout
    rows = result.rows()
    handler = find_row(
        rows, function="on_alarm", file_endswith="/torture.py", line=line_of(TORTURE, "signal_handler")
    )
    assert handler.count >= calls, f"{calls} handler calls\n" + describe_row(handler)
    assert handler.retention_pct is not None and handler.retention_pct >= 80.0, describe_row(handler)
    main = find_row(
        rows, function="scenario_signal", file_endswith="/torture.py", line=line_of(TORTURE, "signal_main")
    )
    assert main.count >= 1000, describe_row(main)


SMALL_STACK = """
import os, threading
keep = []
def worker():
    for i in range(2000):
        keep.append(bytes(1000 + i % 2))  # ALLOC: small_stack
    os._exit(7)  # the exit dump runs on this 32 KiB stack
try:
    threading.stack_size(32 * 1024)
except ValueError:  # 3.14 with glibc 2.42: "size must be at least 53248 bytes"; its least, then
    threading.stack_size(64 * 1024)
t = threading.Thread(target=worker)
t.start()
t.join()
"""


def test_small_thread_stack_allocates_and_dumps(cpython, shim, log_dir, tmp_path):
    # GIVEN a thread with a 32 KiB stack (the original kept a 512 KiB buffer on the stack)
    script = tmp_path / "small_stack.py"
    script.write_text(SMALL_STACK)
    # WHEN it allocates and then ends the process with os._exit from that thread
    result = run_preloaded(cpython, script, shim=shim, log_dir=log_dir)
    # THEN nothing crashes, the status is the program's, and the exit dump was written from there
    assert result.returncode == 7, result.describe()
    row = find_row(final_rows(result.dumps), function="worker", line=line_of(script, "small_stack"))
    assert row.count >= 2000 and row.retention_pct >= 80


FAILED_EXEC = """
import subprocess
keep = []
for i in range(50):
    try:
        subprocess.run(["/nonexistent/program"])  # vfork child whose exec fails calls _exit
    except FileNotFoundError:
        pass
    keep.append(bytes(1500 + i % 2))  # ALLOC: after_spawn
print("survived")
"""


def test_failed_exec_in_a_vfork_child_leaves_the_parent_intact(cpython, shim, log_dir, tmp_path):
    # GIVEN a program whose subprocess launches fail at exec (CPython uses vfork where it can:
    # the child shares the parent's memory until it calls _exit, which the shim hooks)
    script = tmp_path / "failed_exec.py"
    script.write_text(FAILED_EXEC)
    result = run_preloaded(cpython, script, shim=shim, log_dir=log_dir)
    # THEN the parent carries on and its table is whole: the vfork children wrote nothing
    assert result.returncode == 0 and result.stdout.strip() == "survived", result.describe()
    row = find_row(final_rows(result.dumps), line=line_of(script, "after_spawn"))
    assert row.count >= 50 and row.retention_pct >= 80
    assert result.exit_dump()["reason"] == "exit"
    assert_consistent(result.dumps)


BLOCKED_MAIN = """
import threading, time
keep = []
def worker():
    t0 = time.time()
    while time.time() - t0 < 4.5:
        keep.append(bytes(1000 + len(keep) % 2))  # ALLOC: worker
        time.sleep(0.0005)
t = threading.Thread(target=worker)
t.start()
t.join()  # the main thread runs no bytecode until the end
"""


def test_interval_dumps_while_the_main_thread_is_blocked(cpython, shim, log_dir, tmp_path):
    # GIVEN a service shape: the main thread blocked in join() while a worker allocates, and a
    # dump interval of 1 s (interval dumps normally run between the main thread's bytecodes)
    script = tmp_path / "blocked_main.py"
    script.write_text(BLOCKED_MAIN)
    result = run_preloaded(cpython, script, shim=shim, log_dir=log_dir, env={"TRACKLEAK_DUMP_INTERVAL": "1"})
    assert result.returncode == 0, result.describe()
    # THEN interval dumps still appear while it runs (the dump thread takes over), growing
    intervals = [d for d in result.dumps if d["reason"] == "interval" and d["pid"] == result.pid]
    assert len(intervals) >= 2, result.describe()
    counts = [
        sum(s["count"] for s in d["sites"] if s["line"] == line_of(script, "worker")) for d in intervals
    ]
    assert counts == sorted(counts) and counts[-1] > counts[0], counts
    assert_consistent(result.dumps)

# SPDX-License-Identifier: MIT
"""The eBPF agent on every local CPython (3.9+, shared and static): Python lines from BPF.

For each interpreter a script leaks through Python objects, through ctypes malloc and through a
C extension that allocates with the GIL released, each beside a healthy twin. The agent, attached
to the running script, must flag each leaking line (>= 80% retention) and keep each twin clean
(<= 20%), with the allocating line, not the function's first line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ebpf_support import (
    BPF_SKIP,
    PY_TARGET,
    Target,
    build_extension,
    find,
    interpreter_include,
    run_attached,
)
from helpers import line_of

pytestmark = [pytest.mark.integration, pytest.mark.bpf]

SITES = [
    # (leaking function, its marker, twin function, twin marker)
    ("leak_objects", "objects_leak", "objects_twin", "objects_twin"),
    ("leak_ctypes", "ctypes_leak", "ctypes_twin", "ctypes_twin"),
    ("leak_extension", "ext_leak", "extension_twin", "ext_twin"),
]


def _script(tmp_path: Path) -> Path:
    script = tmp_path / "py_target.py"
    script.write_text(PY_TARGET)
    return script


def _start(cpython, tmp_path: Path, rounds: int, warmup: float = 0.0) -> tuple[Target, Path]:
    ext_dir = build_extension(
        tmp_path / "ext", interpreter_include(cpython.include, cpython.version_info), cpython.ext_suffix
    )
    script = _script(tmp_path)
    target = Target([cpython.path, str(script), str(rounds), str(warmup)], env={"GILFREE_DIR": str(ext_dir)})
    return target, script


def _session(pids, sample_rate=5, **kw):
    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    return EbpfSession(pids, Tunables(sample_rate=sample_rate, min_size=500), **kw)


@BPF_SKIP
def test_python_lines_flagged_per_interpreter(cpython, tmp_path):
    # GIVEN a script on this interpreter, and the agent attached before it works
    target, script = _start(cpython, tmp_path, rounds=1500)
    session = _session([target.pid])
    session.start()
    try:
        info = session.targets[target.pid]
        assert info.python is not None, info.note
        assert info.python.full_version.startswith("{}.{}".format(*cpython.version_info[:2]))
        # WHEN it leaks and churns through objects, ctypes and a GIL-free extension
        target.say("go")
        target.wait_done()
        rows = session.poll().merged()
    finally:
        session.stop()
        target.finish()
    # THEN every leaking line is flagged and every twin line is clean (a free-threaded build
    # serves Python objects from mimalloc, which the libc probes cannot see: its C sites only)
    for leak_fn, leak_marker, twin_fn, twin_marker in SITES[1:] if cpython.free_threaded else SITES:
        leak = find(rows, cpython.func(leak_fn), file_endswith=script.name, line=line_of(script, leak_marker))
        twin = find(rows, cpython.func(twin_fn), file_endswith=script.name, line=line_of(script, twin_marker))
        assert not leak.native and leak.source == "ebpf"
        assert leak.count >= 1500, leak
        assert leak.retention_pct is not None and leak.retention_pct >= 80.0, leak
        assert twin.retention_pct is not None and twin.retention_pct <= 20.0, twin
    assert session.counters["python_no_frame"] < 50, session.counters


@BPF_SKIP
def test_attach_to_a_script_running_for_a_while(cpython, tmp_path):
    # GIVEN a script that has been allocating for a while (frames deep in its loop)
    target, script = _start(cpython, tmp_path, rounds=800, warmup=1.0)
    session = _session([target.pid], sample_rate=2)
    rows = run_attached(session, target)
    leak = find(
        rows, cpython.func("leak_ctypes"), file_endswith=script.name, line=line_of(script, "ctypes_leak")
    )
    assert leak.retention_pct >= 80.0


@BPF_SKIP
def test_unsupported_version_falls_back_to_native(tmp_path, monkeypatch, interpreters):
    # GIVEN an offsets table that knows no interpreter version
    empty = tmp_path / "cpython.json"
    empty.write_text(json.dumps({"_comment": "none"}))
    monkeypatch.setenv("TRACKLEAK_CPYTHON_OFFSETS", str(empty))
    cpython = interpreters[-1]
    target, _script_path = _start(cpython, tmp_path, rounds=300)
    notes: list[str] = []
    session = _session([target.pid], on_note=notes.append)
    rows = run_attached(session, target)
    # THEN the agent says so in one sentence and still attributes natively
    assert any("not supported" in n and "native" in n for n in notes), notes
    assert rows and all(r.native for r in rows)


def test_debug_offsets_agree_with_the_table(interpreters, tmp_path):
    """3.13+: the interpreter's own _Py_DebugOffsets and bpf/offsets/cpython.json must agree."""
    import subprocess

    from trackleak.ebpf.python import (
        apply_debug_offsets,
        find_python,
        offsets_table,
        read_debug_header,
        table_key,
    )
    from trackleak.symbolize.elf import read_maps
    from trackleak.symbolize.pycode import ProcessMemory

    newer = [i for i in interpreters if i.version_info[:2] >= (3, 13)]
    if not newer:
        pytest.skip("no CPython >= 3.13 here")
    for interp in newer:
        # GIVEN a running interpreter
        proc = subprocess.Popen(
            [interp.path, "-c", "import sys; print('ready', flush=True); sys.stdin.readline()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline().startswith("ready")
            # WHEN its debug offsets are read from its memory, where the table says they are
            py = find_python(proc.pid, read_maps(proc.pid))
            assert py is not None
            mem = ProcessMemory(proc.pid)
            header = read_debug_header(mem, py.runtime)
            assert header is not None, f"{interp.path}: no _Py_DebugOffsets (cookie xdebugpy) at _PyRuntime"
            table = offsets_table()[table_key(py.version, header.free_threaded)]
            applied = apply_debug_offsets(mem, py.runtime, table)
        finally:
            proc.communicate("x\n", timeout=30)
        # THEN every field the agent takes from them matches the generated table
        diffs = {k: (table[k], applied[k]) for k in table if table[k] != applied[k]}
        assert not diffs, f"{interp.path}: table vs _Py_DebugOffsets: {diffs}"


THREADS_TARGET = r"""
import ctypes, sys, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
kept = []
def leak_in_thread():
    kept.append(libc.malloc(20000))  # ALLOC: thread_leak
def twin_in_thread():
    libc.free(libc.malloc(20000))  # ALLOC: thread_twin
def worker(n):
    for i in range(n):
        leak_in_thread()
        twin_in_thread()
print("ready", flush=True)
sys.stdin.readline()
threads = [threading.Thread(target=worker, args=(int(sys.argv[1]),)) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("done", flush=True)
sys.stdin.readline()
"""


@BPF_SKIP
@pytest.mark.cpythons(min_version=(3, 14))
def test_python_lines_in_threads(cpython, tmp_path):
    # GIVEN threads leaking and churning libc blocks at two lines: on a free-threaded 3.14 every
    # thread but the first runs its own copy of the bytecode (thread-local bytecode, co_tlbc), so
    # the frame's instruction pointer is an offset into that copy, not into co_code_adaptive
    script = tmp_path / "threads.py"
    script.write_text(THREADS_TARGET)
    target = Target([cpython.path, str(script), "1000"])
    session = _session([target.pid], sample_rate=1)
    session.start()
    try:
        assert session.targets[target.pid].python is not None, session.targets[target.pid].note
        # WHEN the threads run with the agent attached
        target.say("go")
        target.wait_done()
        rows = session.poll().merged()
    finally:
        session.stop()
        target.finish()
    # THEN every allocation is at its own line (a wrong bytecode base lands on the def line); the
    # leak's line also grows the list (libc's realloc in GIL builds: a few dozen blocks more)
    leak = find(
        rows, cpython.func("leak_in_thread"), file_endswith=script.name, line=line_of(script, "thread_leak")
    )
    twin = find(
        rows, cpython.func("twin_in_thread"), file_endswith=script.name, line=line_of(script, "thread_twin")
    )
    assert 3000 <= leak.count <= 3100 and leak.live_count >= 3000, leak
    assert twin.count == 3000 and twin.live_count == 0, twin

"""Small-object leaks at the right line (issue 10), at default settings.

The commonest Python leak keeps small objects (a dict, a tuple, a short str per iteration) next
to a healthy twin that builds and drops the same object. CPython's freelists hand an object freed
at one line to the next line that needs one without calling the allocator, so watching only the
allocator charges the healthy line with the memory the leaking line keeps.

- CPython 3.13+: the shim's reference tracer (objects.c) charges each sampled object to the line
  that created it, whatever the freelists do: every pattern here passes exactly, at the default
  settings (TRACKLEAK_SMALL_OBJECTS=auto, min size 500, 50 KiB sampling).
- CPython 3.9-3.12 (TRACKLEAK_SMALL_OBJECTS=1: pymalloc wrapped, sampled): no tracer exists.
  Types without a freelist (str, int, set) and separate loops pass; a freelist type (dict, tuple,
  float) alternating with its twin cannot be put on the right line by watching the allocator
  (the leaking line never allocates): those are xfail, and what the shim does instead is tested:
  the row that holds the memory says it may be misattributed.
"""

from __future__ import annotations

import pytest
from helpers import find_rows, line_of, run_preloaded

from trackleak.table import sorted_rows

# Small objects are off in a free-threaded build (no GIL orders the reference tracer's events; the
# banner says so): nothing here applies to one.
pytestmark = [pytest.mark.integration, pytest.mark.cpythons(gil=True)]

N = 100_000

# kind -> (leaking statement, the healthy twin's statement, the least bytes one kept object takes)
PATTERNS = {
    "dict": ('keep.append({"k": i})', 'x = {"k": i}', 64),
    "tuple": ("keep.append((i, -i))", "x = (i, -i)", 56),
    "str": ('keep.append(f"item-{i}")', 'x = f"item-{i}"', 48),
    "int": ("keep.append(i * 7919)", "x = i * 7919", 32),
    "float": ("keep.append(i * 0.5)", "x = i * 0.5", 24),
    "set": ("seen.add(i * 7919)", "x = {i * 7919, i}", 32),
}
# Types CPython 3.9-3.12 recycle through a freelist (and that the patterns above make).
FREELIST_KINDS = {"dict", "tuple", "float"}

SCRIPT = """
keep = []
seen = set()
def leak(i):
    {leak}  # ALLOC: leak
def healthy(i):
    {healthy}  # ALLOC: healthy
    return None
def main():
    if {alternating}:
        for i in range({n}):
            leak(i)
            healthy(i)
    else:
        for i in range({n}):
            leak(i)
        for i in range({n}):
            healthy(i)
{run}
"""
RUN_MAIN = "main()"
RUN_THREAD = """import threading
t = threading.Thread(target=main)
t.start()
t.join()"""


def _has_tracer(cpython) -> bool:
    return cpython.version_info[:2] >= (3, 13)


def _run(cpython, shim, tmp_path, kind: str, *, alternating: bool, thread: bool = False):
    leak_stmt, healthy_stmt, least = PATTERNS[kind]
    script = tmp_path / f"small_{kind}.py"
    script.write_text(
        SCRIPT.format(
            leak=leak_stmt,
            healthy=healthy_stmt,
            alternating=alternating,
            n=N,
            run=RUN_THREAD if thread else RUN_MAIN,
        )
    )
    # Default settings (min size 500, 50 KiB sampling); before 3.13 small objects are tracked
    # only on request.
    env = {} if _has_tracer(cpython) else {"TRACKLEAK_SMALL_OBJECTS": "1"}
    result = run_preloaded(cpython, script, shim=shim, sample_rate=None, min_size=None, env=env, timeout=120)
    assert result.returncode == 0, result.describe()
    return script, result, least


def _site(rows, script, marker):
    hits = find_rows(rows, file_endswith=script.name, line=line_of(script, marker))
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def _check_leak_and_twin(cpython, script, result, least):
    rows = result.rows()
    leak = _site(rows, script, "leak")
    healthy = _site(rows, script, "healthy")
    ordered = sorted_rows(rows)
    assert leak is not None, f"no row at the leaking line\n{result.describe()}"
    # THEN the leak is at its line, holds about what it keeps (its objects, the list's storage;
    # not twice: RET% is no criterion, the list's storage grows by realloc), and is first.
    # Before 3.13 the blocks of the object domain are counted, a dict's keys table too.
    most = 3 if _has_tracer(cpython) else 6
    assert 0.6 * N * least <= leak.live_bytes <= most * N * (least + 16), (leak, N * least)
    assert ordered[0].key == leak.key, [(r.function, r.line, r.live_bytes) for r in ordered[:5]]
    # AND the healthy twin is clean
    if healthy is not None:
        assert healthy.live_bytes <= 0.05 * leak.live_bytes, (healthy, leak)


def _expect_freelist_limit(request, cpython, kind, alternating):
    if alternating and kind in FREELIST_KINDS and not _has_tracer(cpython):
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason=f"CPython {cpython.version} has no reference tracer: a {kind} freed by the healthy "
                "twin goes to its freelist and is reused by the leaking line without any allocator "
                "call, so the allocator sees the twin allocate what the leak keeps (the row is "
                "flagged misattributed instead: test_freelist_rows_are_flagged)",
            )
        )


@pytest.mark.parametrize("alternating", [True, False], ids=["one-loop", "separate-loops"])
@pytest.mark.parametrize("kind", sorted(PATTERNS))
def test_small_leak_and_its_healthy_twin(request, cpython, shim, tmp_path, kind, alternating):
    # GIVEN a loop that keeps one small object per iteration and a twin that makes and drops it
    _expect_freelist_limit(request, cpython, kind, alternating)
    # WHEN it runs under the shim at default settings
    script, result, least = _run(cpython, shim, tmp_path, kind, alternating=alternating)
    # THEN the leak is first, at its line; the twin holds nothing
    _check_leak_and_twin(cpython, script, result, least)


@pytest.mark.parametrize("kind", ["str", "tuple"])
def test_small_leak_in_a_thread(request, cpython, shim, tmp_path, kind):
    # GIVEN the alternating pattern run by a second thread
    _expect_freelist_limit(request, cpython, kind, True)
    script, result, least = _run(cpython, shim, tmp_path, kind, alternating=True, thread=True)
    # THEN the same: the leak at its line and first, the twin clean
    _check_leak_and_twin(cpython, script, result, least)


@pytest.mark.parametrize("kind", sorted(FREELIST_KINDS))
def test_freelist_rows_are_flagged(cpython, shim, tmp_path, kind):
    # GIVEN a freelist type's leak alternating with its twin
    script, result, _ = _run(cpython, shim, tmp_path, kind, alternating=True)
    rows = result.rows()
    leak = _site(rows, script, "leak")
    healthy = _site(rows, script, "healthy")
    if _has_tracer(cpython):
        # THEN with the tracer nothing is flagged (objects are charged where they are made)
        assert not any(r.misattributed for r in rows), [r for r in rows if r.misattributed]
    else:
        # THEN before 3.13 the twin's row, which the allocator charges with the kept memory,
        # says it may be misattributed
        assert healthy is not None and healthy.misattributed, (healthy, leak)
        assert healthy.live_bytes > 0


def test_type_object_offsets(cpython, tmp_path):
    """pyframe.c reads tp_basicsize (32), tp_itemsize (40) and tp_flags (168) of PyTypeObject
    with fixed offsets: hold them to the real interpreters."""
    code = (
        "import ctypes\n"
        "for t in (dict, tuple, str, float, int, set, list, bytes, type('C', (), {})):\n"
        "    a = id(t)\n"
        "    assert ctypes.c_ssize_t.from_address(a + 32).value == t.__basicsize__, t\n"
        "    assert ctypes.c_ssize_t.from_address(a + 40).value == t.__itemsize__, t\n"
        "    assert ctypes.c_ulong.from_address(a + 168).value == t.__flags__, t\n"
        "print('ok')\n"
    )
    import subprocess

    out = subprocess.run([cpython.path, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


TRACEMALLOC_SCRIPT = """
import time, tracemalloc
held = []
def healthy():
    return [{"k": i} for i in range(20000)]  # ALLOC: healthy
keep = []
def leak():
    keep.append({"k": None})  # ALLOC: leak
held = healthy()  # sampled while the shim's tracer is the one
tracemalloc.start()  # takes CPython's reference tracer (3.13+), without chaining to ours
for _ in range(40):  # the program goes on: its next samples see the tracer gone
    buf = bytearray(64 * 1024)
    time.sleep(0.005)
held = None  # destroyed after tracemalloc took the tracer: must be credited all the same
for _ in range(100000):
    leak()
current, _ = tracemalloc.get_traced_memory()
assert current > 0, "tracemalloc stopped working"
print("traced", current)
"""


@pytest.mark.cpythons(gil=True, min_version=(3, 13))
def test_tracemalloc_started_by_the_program_does_not_leave_false_leaks(cpython, shim, tmp_path):
    """GIVEN a program that calls tracemalloc.start() while it runs (CPython 3.13+ has one reference
    tracer, and tracemalloc takes it without chaining) WHEN it drops objects sampled before and
    then leaks small dicts THEN the healthy line is clean, the leak is at its line, and tracemalloc
    still works."""
    script = tmp_path / "with_tracemalloc.py"
    script.write_text(TRACEMALLOC_SCRIPT)
    rows, leak = _run_dict_leak(cpython, shim, script, "traced")
    assert sorted_rows(rows)[0].key == leak.key, [
        (r.function, r.line, r.live_bytes, r.count) for r in sorted_rows(rows)[:4]
    ]


def _run_dict_leak(cpython, shim, script, token):
    """Run SCRIPT (100 000 small dicts kept at its leak line, a healthy line beside) at the
    defaults; it must end well and print TOKEN. The leak holds its dicts, the healthy line little.
    Returns (rows, the leak's row)."""
    result = run_preloaded(cpython, script, shim=shim, sample_rate=None, min_size=None, timeout=120)
    assert result.returncode == 0 and token in result.stdout, result.describe()
    rows = result.rows()
    leak, healthy = _site(rows, script, "leak"), _site(rows, script, "healthy")
    assert leak is not None and leak.live_bytes >= 0.6 * 100000 * 64, result.describe()
    assert healthy is None or healthy.live_bytes <= 0.05 * leak.live_bytes, (healthy, leak)
    return rows, leak


CHAIN_TRACER_C = r"""
#include <Python.h>
/* A well-behaved foreign reference tracer: it passes every event on to the tracer it found. */
static PyRefTracer prev;
static void *prev_data;
static unsigned long long seen;
static int chain(PyObject *op, PyRefTracerEvent event, void *data)
{
    (void)data;
    seen++;
    return prev ? prev(op, event, prev_data) : 0;
}
static PyObject *install(PyObject *self, PyObject *args)
{
    prev = PyRefTracer_GetTracer(&prev_data);
    if (PyRefTracer_SetTracer(chain, NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}
static PyObject *events(PyObject *self, PyObject *args) { return PyLong_FromUnsignedLongLong(seen); }
static PyMethodDef methods[] = {
    {"install", install, METH_NOARGS, ""}, {"events", events, METH_NOARGS, ""}, {0}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "chaintracer", NULL, -1, methods};
PyMODINIT_FUNC PyInit_chaintracer(void) { return PyModule_Create(&mod); }
"""

CHAIN_SCRIPT = """
import sys, threading, time
sys.path.insert(0, {ext_dir!r})
import chaintracer
chaintracer.install()  # after the shim's: it chains back to ours, which puts itself in front again
for _ in range(40):  # the next samples see the tracer changed: the shim puts its own in front
    buf = bytearray(64 * 1024)
    time.sleep(0.005)
keep = []
def leak():
    keep.append({{"k": None}})  # ALLOC: leak
def healthy():
    return [{{"k": i}} for i in range(20000)]  # ALLOC: healthy
for _ in range(100000):
    leak()
healthy()
if {subinterpreters}:  # their objects reach the tracers from threads beside the main one
    from concurrent import interpreters
    src = "x = [{{'k': i}} for i in range(200000)]"
    subs = [interpreters.create() for _ in range(2)]
    threads = [threading.Thread(target=s.exec, args=(src,)) for s in subs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
assert chaintracer.events() > 0, "the foreign tracer stopped seeing events"
print("chained", chaintracer.events())
"""


@pytest.mark.cpythons(gil=True, min_version=(3, 13))
def test_a_foreign_tracer_that_chains_back_to_ours(cpython, shim, tmp_path):
    """GIVEN an extension that installs its own reference tracer chained to the one it found (the
    shim's), so that the shim, back in front, calls it and it calls the shim again WHEN the program
    leaks small dicts, and on 3.14+ runs subinterpreters with their own GIL THEN nothing loops or
    crashes, the foreign tracer keeps seeing events, and the leak is at its line."""
    from helpers import build_extension

    ext_dir = tmp_path / "ext"
    ext_dir.mkdir()
    src = ext_dir / "chaintracer.c"
    src.write_text(CHAIN_TRACER_C)
    build_extension(cpython, src, ext_dir, "chaintracer")
    script = tmp_path / "chained.py"
    subinterpreters = cpython.version_info[:2] >= (3, 14)
    script.write_text(CHAIN_SCRIPT.format(ext_dir=str(ext_dir), subinterpreters=subinterpreters))
    _run_dict_leak(cpython, shim, script, "chained")

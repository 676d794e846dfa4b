# SPDX-License-Identifier: MIT
"""Allocator functions looked up through a library handle (the shim's dlsym/dlvsym hook).

GIVEN tests/fixtures/dlsym_driver.py allocating through ``ctypes.CDLL("libc.so.6")``,
``CDLL(find_library("c"))`` and cffi's ``ffi.dlopen("c")`` / ``ffi.dlopen("libc.so.6")``
THEN each leak through a handle is found at its Python line (>= 80 %, every block unfreed) and its
healthy twin that frees through the same handle is clean (<= 5 %), ``free(strdup(...))`` included
(strdup's malloc is seen through glibc's PLT; without the hook its free was not: a false leak).
Also: an interposer preloaded after the shim still gets glibc's functions from dlsym(RTLD_NEXT)
(the hook forwards with a jump), and a library's own function named malloc, looked up through
its handle, is that library's.

Exhaustive mode (sample rate 1, min size 0): exact, whatever the sampling scheme.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    FIXTURES,
    REPO_ROOT,
    assert_consistent,
    compile_c,
    describe_row,
    find_row,
    line_of,
    run_preloaded,
)

pytestmark = pytest.mark.integration

DRIVER = FIXTURES / "dlsym_driver.py"
C_DIR = FIXTURES / "dlsym"
N = 300
SIZE = 4096

CTYPES_CASES = {
    # marker: leaks?
    "malloc_leak": True,
    "malloc_healthy": False,
    "calloc_leak": True,
    "calloc_healthy": False,
    "realloc_leak": True,
    "realloc_healthy": False,
    "aligned_leak": True,
    "aligned_healthy": False,
    "strdup_leak": True,
    "strdup_healthy": False,
    "found_leak": True,  # CDLL(find_library("c"))
    "found_healthy": False,
}
CFFI_CASES = {
    "cffi_leak": True,  # ffi.dlopen("c")
    "cffi_healthy": False,
    "cffi_strdup_healthy": False,
    "cffi_soname_leak": True,  # ffi.dlopen("libc.so.6")
    "cffi_soname_healthy": False,
}


def _function_of(marker: str) -> str:
    """The driver's function holding the marker: the line just above the nearest def."""
    lines = DRIVER.read_text().splitlines()
    for number in range(line_of(DRIVER, marker) - 1, -1, -1):
        if lines[number].startswith("def "):
            return lines[number][4:].split("(", 1)[0]
    raise AssertionError(f"no def above marker {marker}")


def _check(run, marker: str, leaks: bool) -> None:
    assert_consistent(run.dumps)
    row = find_row(
        run.rows(),
        function=_function_of(marker),
        file_endswith="/dlsym_driver.py",
        line=line_of(DRIVER, marker),
    )
    assert row.count >= N, describe_row(row)
    assert row.retention_pct is not None, describe_row(row)
    if leaks:
        assert row.retention_pct >= 80.0, describe_row(row)
        assert row.sample_total_bytes - row.sample_free_bytes >= N * (SIZE - 1), describe_row(row)
    else:
        assert row.sample_total_bytes >= N * (SIZE - 1), describe_row(row)
        assert row.retention_pct <= 5.0, describe_row(row)


# --------------------------------------------------------------------------- ctypes


@pytest.fixture(scope="session")
def ctypes_run(cpython, shim, tmp_path_factory):
    logs = tmp_path_factory.mktemp(f"dlsym-ctypes-{cpython.id}")
    return run_preloaded(
        cpython, DRIVER, args=["ctypes", N], shim=shim, log_dir=logs, sample_rate=1, min_size=0
    )


def test_ctypes_handle_gives_the_shims_allocator(cpython, ctypes_run):
    # every allocator function found through CDLL("libc.so.6") / CDLL(find_library("c")) is the
    # one the global scope finds (the shim's); strdup and fopen are glibc's, untouched
    assert ctypes_run.returncode == 0 and "dlsym-ctypes-ok" in ctypes_run.stdout, ctypes_run.describe()
    assert "addresses: ok" in ctypes_run.stdout, ctypes_run.stdout


@pytest.mark.parametrize("marker", sorted(CTYPES_CASES))
def test_ctypes_handle(cpython, ctypes_run, marker):
    assert ctypes_run.returncode == 0, ctypes_run.describe()
    _check(ctypes_run, marker, CTYPES_CASES[marker])


# --------------------------------------------------------------------------- cffi


def _cffi_path(cpython, cache_root: Path) -> str | None:
    """A PYTHONPATH entry holding cffi for this interpreter ("" if it has its own), None if none.

    The test interpreters are not the venv's; cffi (the ``test`` extra) is fetched once per
    Python ABI with the venv's pip into .cache/test-cffi/cpXY (binary wheels only).
    """
    probe = subprocess.run([cpython.path, "-c", "import cffi"], capture_output=True, timeout=60)
    if probe.returncode == 0:
        return ""
    major, minor = cpython.version_info[:2]
    tag = f"cp{major}{minor}" + ("t" if cpython.free_threaded else "")  # 3.13t: its own ABI
    target = cache_root / tag
    if not (target / "cffi").is_dir():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--target",
            str(target),
            "--python-version",
            f"{major}.{minor}",
            "--implementation",
            "cp",
            "--abi",
            tag,
            "--platform",
            "manylinux2014_x86_64",
            "--only-binary=:all:",
            "cffi",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return None
    check = subprocess.run(
        [cpython.path, "-c", "import cffi"],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    return str(target) if check.returncode == 0 else None


@pytest.fixture(scope="session")
def cffi_run(cpython, shim, tmp_path_factory):
    path = _cffi_path(cpython, REPO_ROOT / ".cache" / "test-cffi")
    if path is None:
        pytest.skip(f"cffi cannot be installed for {cpython} (pip install --target failed or no wheel)")
    logs = tmp_path_factory.mktemp(f"dlsym-cffi-{cpython.id}")
    env = {"PYTHONPATH": path} if path else None
    return run_preloaded(
        cpython, DRIVER, args=["cffi", N], env=env, shim=shim, log_dir=logs, sample_rate=1, min_size=0
    )


@pytest.mark.parametrize("marker", sorted(CFFI_CASES))
def test_cffi_dlopen(cpython, cffi_run, marker):
    assert cffi_run.returncode == 0 and "dlsym-cffi-ok" in cffi_run.stdout, cffi_run.describe()
    _check(cffi_run, marker, CFFI_CASES[marker])


# --------------------------------------------------------------------------- other libraries


@pytest.fixture(scope="session")
def c_libs(cc, tmp_path_factory):
    out = tmp_path_factory.mktemp("dlsym-libs")
    flags = ("-shared", "-fPIC", "-O2", "-fno-builtin")
    return {
        "next": compile_c([C_DIR / "next_interposer.c"], out / "next_interposer.so", *flags),
        "pool": compile_c([C_DIR / "private_pool.c"], out / "private_pool.so", *flags),
    }


NEXT_SCRIPT = """\
import ctypes
g = ctypes.CDLL(None)
g.malloc.restype, g.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
g.fopen.restype, g.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
g.fclose.argtypes = [ctypes.c_void_p]
keep = []


def chain_leak(n):
    for _ in range(n):
        keep.append(g.malloc(4096))  # ALLOC: chain_leak


chain_leak(%d)
g.fclose(g.fopen(b"/dev/null", b"r"))
report = g.tl_next_report
report.restype = ctypes.c_char_p
print("report:", report().decode())
"""


def test_rtld_next_from_a_later_preload(cpython, shim, c_libs, tmp_path, log_dir):
    # GIVEN LD_PRELOAD="trackleak.so next_interposer.so": an interposer of malloc, free and fopen
    # after the shim, finding what it wraps with dlsym(RTLD_NEXT) (which the shim's hook answers)
    script = tmp_path / "chain.py"
    script.write_text(NEXT_SCRIPT % N)
    result = run_preloaded(
        cpython,
        script,
        shim=shim,
        log_dir=log_dir,
        timeout=60,
        env={"LD_PRELOAD": f"{shim} {c_libs['next']}"},
    )
    # THEN no recursion: it runs, and every RTLD_NEXT lookup got glibc's function, not its own
    assert result.returncode == 0, result.describe()
    report = [line for line in result.stdout.splitlines() if line.startswith("report:")]
    assert report and report[0].split()[1] == "ok", result.stdout
    # the chain shim -> interposer -> glibc carries the calls (its counters moved) ...
    calls = report[0].split()[2].split("=")[1].split("/")
    assert int(calls[0]) >= N and int(calls[2]) >= 1, report[0]
    # ... and the shim still finds the leak at its line
    assert_consistent(result.dumps)
    row = find_row(
        result.rows(), function="chain_leak", file_endswith="/chain.py", line=line_of(script, "chain_leak")
    )
    assert row.count >= N and row.retention_pct is not None and row.retention_pct >= 80.0, describe_row(row)


POOL_SCRIPT = """\
import ctypes
addr = lambda f: ctypes.cast(f, ctypes.c_void_p).value
glob, libc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")
pool = ctypes.CDLL(%r)  # RTLD_LOCAL: ctypes' default mode
pool.malloc.restype, pool.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
pool.pool_owns.argtypes = [ctypes.c_void_p]
pool.free.argtypes = [ctypes.c_void_p]
pool.pool_frees.restype = ctypes.c_ulong
print("distinct:", addr(pool.malloc) != addr(glob.malloc) and addr(pool.malloc) != addr(libc.malloc))
p = pool.malloc(4096)
print("owned:", pool.pool_owns(p) == 1)
pool.free(p)
print("own-free:", pool.pool_frees() == 1)
# dlvsym through libc's handle is redirected like dlsym
glob.dlvsym.restype = ctypes.c_void_p
glob.dlvsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
print("dlvsym:", glob.dlvsym(libc._handle, b"malloc", b"GLIBC_2.2.5") == addr(glob.malloc))
print("pool-dlvsym-none:", glob.dlvsym(pool._handle, b"malloc", b"GLIBC_2.2.5") in (None, addr(pool.malloc)))
"""


def test_private_allocator_through_its_handle_is_untouched(cpython, shim, c_libs, tmp_path, log_dir):
    # GIVEN a library with its own function named malloc, dlopened RTLD_LOCAL and looked up by handle
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT % str(c_libs["pool"]))
    result = run_preloaded(cpython, script, shim=shim, log_dir=log_dir, timeout=60)
    assert result.returncode == 0, result.describe()
    # THEN it gets that library's malloc (blocks from its pool), not the shim's nor glibc's
    for key in ("distinct", "owned", "own-free", "dlvsym", "pool-dlvsym-none"):
        assert f"{key}: True" in result.stdout, result.stdout

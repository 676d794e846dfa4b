# SPDX-License-Identifier: MIT
"""Interpreters the table does not know, and interpreters that do not describe themselves.

Made from the Debian roots' real interpreters (scripts/roots.sh), copied and patched:
- no ``_Py_DebugOffsets`` (its cookie overwritten) on a known minor: the shim says it uses the
  built-in table and still finds Python lines;
- no ``_Py_DebugOffsets`` and a version no table has (``Py_Version`` says 3.99): one clear message
  from each route, native rows only, the program unharmed;
- a free-threaded build of a minor the table has no "t" layout for (3.13t claiming 3.99): the
  shim's and the agent's message names it as free-threaded;
and the container form: the shim inside ``chroot ROOT /usr/bin/python3.14``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from ebpf_support import BPF_SKIP, Target, run_attached
from helpers import find_row, line_of, run_command

from trackleak.symbolize.elf import elf_info

pytestmark = pytest.mark.integration

ROOTS = Path(os.environ.get("TRACKLEAK_ROOTS", "/var/cache/trackleak/roots"))
SID = ROOTS / "sid"
FT313 = ROOTS / "ft3.13" / "bin" / "python3.13t"
FT314 = ROOTS / "ft3.14" / "bin" / "python3.14t"
LEAK = r"""
import sys
keep = []
def leaky():
    for i in range(300):
        keep.append(bytearray(20000))  # ALLOC: leak
def healthy():
    for i in range(300):
        buf = bytearray(20000)  # ALLOC: twin
leaky()
healthy()
print("versions-ok", flush=True)
if len(sys.argv) > 1:
    sys.stdin.readline()
"""


def _need(path: Path) -> None:
    if not path.exists():
        pytest.fail(
            f"{path} is missing: run `bash scripts/roots.sh ensure` (scripts/test.sh does)", pytrace=False
        )


def _patch(src: Path, dst: Path, version_hex: int | None, cookie: bool) -> Path:
    """A copy of the ELF executable src with Py_Version and/or the debug offsets' cookie changed."""
    shutil.copy2(src, dst)
    info = elf_info(str(src))
    data = bytearray(dst.read_bytes())

    def at(symbol: str, delta: int = 0) -> int:
        sym = info.symbol(symbol)
        assert sym is not None, f"{src}: no {symbol}"
        off = info.vaddr_to_offset(sym[0] + delta)
        assert off is not None, f"{src}: {symbol} has no file bytes"
        return off

    if version_hex is not None:
        off = at("Py_Version")
        data[off : off + 4] = struct.pack("<I", version_hex)
    if not cookie:
        off = at("_PyRuntime")
        assert data[off : off + 8] == b"xdebugpy", bytes(data[off : off + 8])
        data[off : off + 8] = b"nodebug\0"
    elif version_hex is not None:  # keep the header consistent with Py_Version
        off = at("_PyRuntime", 8)
        data[off : off + 8] = struct.pack("<Q", version_hex)
    dst.write_bytes(bytes(data))
    return dst


def _sid_argv(binary: Path) -> list:
    """Run a sid executable through sid's own loader and libraries (as the roots.sh launchers)."""
    return [
        str(SID / "lib64" / "ld-linux-x86-64.so.2"),
        "--library-path",
        f"{SID}/lib/x86_64-linux-gnu:{SID}/usr/lib/x86_64-linux-gnu",
        "--argv0",
        str(binary),
        str(binary),
    ]


def _run(argv, script: Path, shim, log_dir, env=None):
    return run_command(
        [*argv, str(script)], shim=shim, log_dir=log_dir, env={"TRACKLEAK_QUIET": "0", **(env or {})}
    )


def _script(tmp_path: Path) -> Path:
    script = tmp_path / "versions_leak.py"
    script.write_text(LEAK)
    return script


def test_shim_without_debug_offsets_uses_the_table(shim, tmp_path):
    # GIVEN sid's 3.14 without its _Py_DebugOffsets (a minor the table knows)
    _need(SID / "usr/bin/python3.14")
    binary = _patch(SID / "usr/bin/python3.14", tmp_path / "python3.14", None, cookie=False)
    script = _script(tmp_path)
    # WHEN a leaking script runs under the shim
    result = _run(_sid_argv(binary), script, shim, tmp_path / "logs", env={"PYTHONHOME": f"{SID}/usr"})
    # THEN it says so once and still finds the Python lines from the table
    assert result.returncode == 0 and "versions-ok" in result.stdout, result.describe()
    assert result.stderr.count("no _Py_DebugOffsets found; using the built-in table") == 1, result.stderr
    leak = find_row(result.rows(), function="leaky", file_endswith=script.name, line=line_of(script, "leak"))
    assert leak.count >= 300


@pytest.mark.parametrize("free_threaded", [False, True], ids=["gil", "free-threaded"])
def test_shim_unknown_version_native_rows_and_one_message(shim, tmp_path, free_threaded):
    # GIVEN an interpreter claiming 3.99 (no table entry), without debug offsets (GIL build) or
    # with a consistent header (free-threaded 3.13t claiming 3.99t)
    if free_threaded:
        _need(FT313)
        binary = _patch(FT313, tmp_path / "python3.99t", 0x036300F0, cookie=True)
        argv, env = [str(binary)], {"PYTHONHOME": str(FT313.parents[1])}
        want = "(free-threaded) is not supported"
    else:
        _need(SID / "usr/bin/python3.15")
        binary = _patch(SID / "usr/bin/python3.15", tmp_path / "python3.99", 0x036300F0, cookie=False)
        argv, env = _sid_argv(binary), {"PYTHONHOME": f"{SID}/usr"}
        want = "describes none itself (no _Py_DebugOffsets)"
    script = _script(tmp_path)
    # WHEN a leaking script runs under the shim
    result = _run(argv, script, shim, tmp_path / "logs", env=env)
    # THEN the program is unharmed, one message says why, and every row is native
    assert result.returncode == 0 and "versions-ok" in result.stdout, result.describe()
    lines = [ln for ln in result.stderr.splitlines() if "3.99" in ln and "not to Python lines" in ln]
    assert len(lines) == 1 and want in lines[0], result.stderr
    rows = result.rows()
    assert rows and all(r.native and r.line == 0 for r in rows), [r for r in rows if r.line][:3]


@BPF_SKIP
def test_agent_unknown_version_native_rows_and_one_note(tmp_path):
    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    # GIVEN sid's 3.15 claiming 3.99, without debug offsets, running a leaking script
    _need(SID / "usr/bin/python3.15")
    binary = _patch(SID / "usr/bin/python3.15", tmp_path / "python3.99", 0x036300F0, cookie=False)
    script = tmp_path / "agent_target.py"
    body = LEAK.replace('print("versions-ok", flush=True)', 'print("done", flush=True)')
    script.write_text(
        "import sys\nprint('ready', flush=True)\nsys.stdin.readline()\n" + body.replace("sys.argv", "[0, 0]")
    )
    target = Target([*_sid_argv(binary), str(script)], env={"PYTHONHOME": f"{SID}/usr"})
    notes: list = []
    # WHEN the agent attaches
    session = EbpfSession([target.pid], Tunables(sample_rate=1, min_size=500), on_note=notes.append)
    rows = run_attached(session, target)
    # THEN one note names the version and the missing self-description; the rows are native
    assert len(notes) == 1 and "3.99" in notes[0] and "no _Py_DebugOffsets" in notes[0], notes
    assert rows and all(r.native for r in rows)


def test_shim_in_a_chroot_on_314(shim, tmp_path):
    # GIVEN the sid root (its own glibc 2.42 and CPython 3.14) with the shim and a script inside
    _need(SID / "usr/bin/python3.14")
    work = Path(tempfile.mkdtemp(prefix="trackleak-test-", dir=SID / "tmp"))
    try:
        shutil.copy2(shim, work / "trackleak.so")
        (work / "logs").mkdir()
        (work / "leak.py").write_text(LEAK)
        inside = "/" + str(work.relative_to(SID))
        # WHEN it runs as `chroot ROOT /usr/bin/python3.14` with the shim preloaded (inside paths)
        result = run_command(
            ["chroot", str(SID), "/usr/bin/python3.14", f"{inside}/leak.py"],
            shim=f"{inside}/trackleak.so",
            log_dir=work / "logs",
            env={"TRACKLEAK_LOG_DIR": f"{inside}/logs"},
        )
        # THEN the leak is at its line and the twin is clean
        assert result.returncode == 0 and "versions-ok" in result.stdout, result.describe()
        rows = result.rows()
        leak = find_row(
            rows, function="leaky", file_endswith=f"{inside}/leak.py", line=line_of(work / "leak.py", "leak")
        )
        twin = find_row(
            rows,
            function="healthy",
            file_endswith=f"{inside}/leak.py",
            line=line_of(work / "leak.py", "twin"),
        )
        assert leak.retention_pct >= 80 and twin.retention_pct <= 20, (leak, twin)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_doctor_says_what_each_route_does(tmp_path):
    from trackleak.ebpf.doctor import OK, WARN, check_interpreter

    # GIVEN the roots' interpreters and a 3.99 without debug offsets
    _need(SID / "usr/bin/python3.15")
    unknown = _patch(SID / "usr/bin/python3.15", tmp_path / "python3.99", 0x036300F0, cookie=False)
    # WHEN the doctor reads their files
    c314 = check_interpreter(str(SID / "usr/bin/python3.14"))
    c315 = check_interpreter(str(SID / "usr/bin/python3.15"))
    c399 = check_interpreter(str(unknown))
    # THEN each line says, per route, Python lines or native rows and where the layout comes from
    assert c314.status == OK and "shim: Python lines (_Py_DebugOffsets + table 3.14)" in c314.detail, c314
    assert "eBPF: Python lines (_Py_DebugOffsets + table 3.14" in c314.detail, c314
    assert c315.status == OK and "static thread-local" in c315.detail, c315
    assert c399.status == WARN and "no _Py_DebugOffsets" in c399.detail and "native rows" in c399.detail, c399
    for ft, key in ((FT313, "3.13t"), (FT314, "3.14t")):
        _need(ft)
        cft = check_interpreter(str(ft))
        assert cft.status == OK, cft
        assert f"shim: Python lines (_Py_DebugOffsets + table {key})" in cft.detail, cft
        assert f"eBPF: Python lines (_Py_DebugOffsets + table {key}" in cft.detail, cft
        assert "mimalloc" in cft.detail, cft


CONTAINER_WORK = r"""
import sys, time
keep = []
def leaky():
    keep.append(bytearray(20000))  # ALLOC: leak
def healthy():
    buf = bytearray(20000)  # ALLOC: twin
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    leaky()
    healthy()
    time.sleep(0.002)
"""


@BPF_SKIP
@pytest.mark.parametrize("python", ["/usr/bin/python3.14", "/usr/bin/python3.15"])
def test_agent_in_sid_root_and_namespaces(tmp_path, python):
    from ebpf_support import AGENT_CMD

    # GIVEN sid's CPython in its own root, pid and mount namespaces (`unshare ... chroot`)
    _need(SID / python.lstrip("/"))
    work = Path(tempfile.mkdtemp(prefix="trackleak-test-", dir=SID / "tmp"))
    (work / "work.py").write_text(CONTAINER_WORK)
    inside = "/" + str(work.relative_to(SID))
    cmd = ["unshare", "--pid", "--mount", "--fork", "chroot", str(SID), python, f"{inside}/work.py", "30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "agent.json"
    try:
        assert proc.stdout.readline().startswith("ready"), (
            proc.stderr.read() if proc.poll() is not None else ""
        )
        (pid,) = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        # WHEN the agent attaches by host pid
        r = subprocess.run(
            [*AGENT_CMD, "--pid", pid, "--duration", "4", "--interval", "1", "--quiet", "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # the namespace's init: ends the namespace
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    # THEN the leak is at its line, growing, and its healthy twin is clean
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["sites"]
    lines = {
        name: i + 1
        for i, t in enumerate(CONTAINER_WORK.splitlines())
        for name in ("leak", "twin")
        if f"ALLOC: {name}" in t
    }
    leak = [x for x in rows if x["function"] == "leaky" and x["line"] == lines["leak"]]
    twin = [x for x in rows if x["function"] == "healthy" and x["line"] == lines["twin"]]
    assert len(leak) == 1 and len(twin) == 1, [(x["function"], x["line"]) for x in rows][:10]
    assert leak[0]["retention_pct"] >= 80 and twin[0]["retention_pct"] <= 20, (leak, twin)
    assert leak[0]["file"] == f"{inside}/work.py"

# SPDX-License-Identifier: MIT
"""Shared pieces of the eBPF agent's integration tests (tests/integration/test_ebpf_*.py).

- ``BPF_SKIP``: one skip marker with the reason (not root / bcc missing / no kernel headers /
  no uprobe support). When root and bcc are present the tests run for real; they are never
  skipped silently.
- ``Target``: a process that prints "ready", waits for "go", works, prints "done" and waits for a
  last line before exiting (so the agent attaches before the work, and symbolizes while it lives).
- ``build_leaker`` / ``build_extension``: the native fixtures, compiled into tmp per test session.
- ``PY_TARGET``: the Python workload (Python objects, ctypes malloc, a GIL-free C extension), each
  leaking site beside a healthy twin, lines marked ``# ALLOC: name``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
NATIVE = TESTS_DIR / "fixtures" / "native"
AGENT_CMD = [sys.executable, "-c", "from trackleak.cli.commands.agent import main; main()"]


def _bpf_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "eBPF tests need root (uprobes + BPF); run them as root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (apt-get install python3-bpfcc; venv needs --system-site-packages)"
    from trackleak.ebpf.headers import find_kernel_headers

    if find_kernel_headers() is None:
        return "no kernel headers (linux-headers-$(uname -r) or the generic linux-headers-amd64)"
    if not os.path.exists("/sys/bus/event_source/devices/uprobe/type") and not os.path.exists(
        "/sys/kernel/tracing/uprobe_events"
    ):
        return "this kernel offers no uprobes (no uprobe PMU, no tracefs uprobe_events)"
    return None


BPF_REASON = _bpf_skip_reason()
BPF_SKIP = pytest.mark.skipif(BPF_REASON is not None, reason=BPF_REASON or "")


def build_leaker(out_dir: Path) -> Path:
    exe = out_dir / "leaker"
    if not exe.exists():
        subprocess.run(
            ["cc", "-O0", "-g", "-fno-omit-frame-pointer", "-o", str(exe), str(NATIVE / "leaker.c")],
            check=True,
        )
    return exe


CC_SHARED = ("cc", "-shared", "-fPIC", "-O1")


def build_extension(out_dir: Path, include: str, ext_suffix: str) -> Path:
    """gilfree_ext for one interpreter, in its own directory (added to the target's sys.path)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    so = out_dir / f"gilfree_ext{ext_suffix}"
    if not so.exists():
        if not os.path.exists(os.path.join(include, "Python.h")):
            raise FileNotFoundError(f"no Python.h in {include}")
        subprocess.run(
            # the include root too: Debian's pyconfig.h includes <x86_64-linux-gnu/python3.X/...>,
            # which for a root's interpreter (scripts/roots.sh) is not under the host's /usr/include
            [
                *CC_SHARED,
                "-I",
                include,
                "-I",
                os.path.dirname(include),
                "-o",
                str(so),
                str(NATIVE / "gilfree_ext.c"),
            ],
            check=True,
        )
    return out_dir


class Target:
    """A workload process driven over stdin/stdout: ready -> go -> done -> (last line) exit."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "TRACKLEAK_")) and k != "LD_PRELOAD"
        }
        clean.update(env or {})
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("ready"):
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            raise AssertionError(f"target {argv} did not start: {line!r} {err}")
        self.pid = self.proc.pid

    def say(self, text: str = "go") -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait_done(self, timeout: float = 60) -> str:
        line = self.proc.stdout.readline().strip()
        assert line.startswith("done"), f"target said {line!r}"
        self.done = True
        return line

    def finish(self) -> int:
        """End the target: its last line when it is done, else a SIGTERM."""
        if self.proc.poll() is None:
            try:
                if getattr(self, "done", False):
                    self.say("exit")
                else:
                    self.proc.terminate()
            except (BrokenPipeError, OSError):
                pass
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


PY_TARGET = r"""
import ctypes, os, sys, time
sys.path.insert(0, os.environ["GILFREE_DIR"])
import gilfree_ext

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
kept = []


def leak_objects():
    kept.append(bytearray(4096))  # ALLOC: objects_leak


def objects_twin():
    buf = bytearray(4096)  # ALLOC: objects_twin
    del buf


def leak_ctypes():
    kept.append(libc.malloc(4096))  # ALLOC: ctypes_leak


def ctypes_twin():
    libc.free(libc.malloc(4096))  # ALLOC: ctypes_twin


def leak_extension():
    gilfree_ext.keep(4096)  # ALLOC: ext_leak


def extension_twin():
    gilfree_ext.churn(4096)  # ALLOC: ext_twin


def work(rounds):
    for _ in range(rounds):
        leak_objects()
        objects_twin()
        leak_ctypes()
        ctypes_twin()
        leak_extension()
        extension_twin()
        time.sleep(0.0002)


rounds = int(sys.argv[1])
warmup = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
if warmup:                      # run for a while before the agent attaches
    end = time.time() + warmup
    while time.time() < end:
        work(10)
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
work(rounds)
print("done", flush=True)
sys.stdin.readline()
"""


def find(rows, function: str, file_endswith: str | None = None, line: int | None = None):
    for row in rows:
        if (
            row.function == function
            and (file_endswith is None or row.file.endswith(file_endswith))
            and (line is None or row.line == line)
        ):
            return row
    shown = "\n  ".join(f"{r.function} {r.file}:{r.line} count={r.count} ret={r.retention_pct}" for r in rows)
    raise AssertionError(f"no row {function} {file_endswith}:{line}; rows:\n  {shown}")


def uprobe_perf_events(pid: int) -> list[str]:
    """This process's uprobe perf events, per bpftool (empty when bpftool is missing)."""
    tool = shutil.which("bpftool") or ("/usr/sbin/bpftool" if os.path.exists("/usr/sbin/bpftool") else None)
    if tool is None:
        return []
    out = subprocess.run([tool, "perf", "list"], capture_output=True, text=True).stdout
    return [
        line
        for line in out.splitlines()
        if line.startswith(f"pid {pid} ") and ("uprobe" in line or "uretprobe" in line)
    ]


def tracefs_events() -> list[str]:
    for path in ("/sys/kernel/tracing/uprobe_events", "/sys/kernel/debug/tracing/uprobe_events"):
        try:
            with open(path) as f:
                return [line for line in f if "tl_" in line]
        except OSError:
            continue
    return []


def interpreter_include(include: str, version_info: tuple) -> str:
    """Headers for building the extension (a same-minor pyenv's when the interpreter has none)."""
    if os.path.exists(os.path.join(include, "Python.h")):
        return include
    minor = "{}.{}".format(*version_info[:2])
    for cand in sorted(Path.home().glob(f".pyenv/versions/{minor}.*/include/python{minor}")):
        if (cand / "Python.h").exists():
            return str(cand)
    return sysconfig.get_paths()["include"]


def run_attached(session, target):
    """Attach, let the target run its rounds ("go"), and return the merged rows; always detach."""
    session.start()
    try:
        target.say("go")
        target.wait_done()
        return session.poll().merged()
    finally:
        session.stop()
        target.finish()

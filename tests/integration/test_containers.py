# SPDX-License-Identifier: MIT
"""Processes in containers: another root with its own glibc and CPython (Debian trixie, made by
scripts/roots.sh), in their own pid and mount namespaces (`unshare --pid --mount --fork chroot`).

- `trackleak-agent --pid HOSTPID` attaches through eBPF: the probes go on the root's libc (not
  the host's file at the same path), the interpreter and the script exist only inside the root,
  rows say the container and the JSON meta the pid inside it (1).
- the host agent finds a preloaded and a plain process in such roots at once: the shim's table
  is read from outside (rows carry the host pid, not the namespace's), the other by eBPF; both
  named by container.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from ebpf_support import AGENT_CMD, BPF_SKIP, REPO_ROOT

pytestmark = [pytest.mark.integration, BPF_SKIP]

WORK = """
import sys, time
kept = []
def leak():
    kept.append(bytearray(8192))  # ALLOC: leak
def churn():
    x = bytearray(8192)  # ALLOC: churn
    del x
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        leak()
        churn()
    time.sleep(0.01)
"""
LINES = {
    name: i + 1
    for i, text in enumerate(WORK.splitlines())
    for name in ("leak", "churn")
    if f"ALLOC: {name}" in text
}
ROOT_NAME = "trixie"
PYTHON = "/usr/bin/python3.13"


@pytest.fixture(scope="module")
def root() -> Path:
    """Debian trixie's root (scripts/test.sh builds it: bash scripts/roots.sh ensure)."""
    r = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "roots.sh"), "path", ROOT_NAME], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.fail(f"the {ROOT_NAME} root is not built: run `bash scripts/roots.sh ensure` (as root)")
    path = Path(r.stdout.strip())
    assert (path / PYTHON.lstrip("/")).exists() and not Path(PYTHON).exists(), (
        "the test wants a Python only the root has"
    )
    return path


@pytest.fixture
def app(root: Path):
    """A directory inside the root only (/app-<tag>), removed afterwards."""
    tag = f"app-{uuid.uuid4().hex[:10]}"
    (root / tag).mkdir()
    (root / tag / "work.py").write_text(WORK)
    yield tag
    shutil.rmtree(root / tag, ignore_errors=True)


def start(root: Path, app: str, *, env: dict | None = None, seconds: int = 60) -> subprocess.Popen:
    """A process in its own pid and mount namespaces and root; returns the host-side Popen of
    unshare (whose child is the Python, pid 1 inside)."""
    cmd = ["unshare", "--pid", "--mount", "--fork", "chroot", str(root), "/usr/bin/env", "-i"]
    cmd += [f"{k}={v}" for k, v in (env or {}).items()]
    cmd += [PYTHON, f"/{app}/work.py", str(seconds), app]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("ready"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def python_pid(proc: subprocess.Popen) -> int:
    """The host pid of unshare's child (the Python)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)  # the namespace's init: SIGKILL ends the whole namespace
        p.wait(timeout=30)


def site(rows: list[dict], name: str) -> dict:
    found = [r for r in rows if r["function"] == name and r["line"] == LINES[name]]
    assert len(found) == 1, [(r["function"], r["file"], r["line"]) for r in rows][:12]
    return found[0]


def test_attach_by_host_pid_to_a_process_in_another_root_and_namespaces(tmp_path, root, app):
    proc = start(root, app)
    pid = python_pid(proc)
    out = tmp_path / "agent.json"
    try:
        r = subprocess.run(
            [
                *AGENT_CMD,
                "--pid",
                str(pid),
                "--duration",
                "4",
                "--interval",
                "1",
                # every allocation sampled: this test is about namespaces and roots, not sampling. At
                # the default R = 50 KiB the leak's RET% (truly ~99 %) is an estimate from ~1100
                # samples of 8 KiB (p = 15 %, 3 % standard error; seen: 91.6), and "> 90" failed by
                # chance in ~0.05 % of runs at the ~7500 allocations of a quiet machine's 4 s, 0.3-1.6 %
                # at the 5000-3000 of a loaded one.
                # Exact, the churn's "< 10" still catches a free probe attached after the allocation
                # probes (every block freed before it stays live: more of them, not fewer)
                "--sample-rate",
                "1",
                "--quiet",
                "--json",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        stop(proc)
    assert r.returncode == 0, r.stderr
    assert f"in root:{root} as pid 1" in r.stderr, r.stderr
    doc = json.loads(out.read_text())
    (target,) = doc["meta"]["targets"]
    assert (
        target["ns_pid"] == 1
        and target["container"] == f"root:{root}"
        and target["python"].startswith("3.13")
    )
    rows = [s for s in doc["sites"] if not s["native"]]
    leak, churn = site(rows, "leak"), site(rows, "churn")
    # the file as the process sees it (it exists only inside the root)
    assert leak["file"] == f"/{app}/work.py" and not Path(leak["file"]).exists()
    assert {s["container"] for s in doc["sites"]} == {f"root:{root}"}
    assert {s["pid"] for s in doc["sites"]} == {pid}
    # the leak at its line and first, its healthy twin clean
    assert rows[0]["function"] == "leak", [(s["function"], s["line"]) for s in rows[:4]]
    assert leak["live_bytes"] > 4 << 20 and leak["retention_pct"] > 90
    assert churn["retention_pct"] < 10 and churn["count"] > 0.5 * leak["count"]


def test_host_agent_reads_a_shim_inside_a_container_and_attaches_to_another(tmp_path, root, app, shim):
    # GIVEN the shim inside the root (as an image carrying it would have it), one process
    # preloading it and one plain, each in its own namespaces
    inside = root / app / "trackleak.so"
    shutil.copy2(shim, inside)
    pre = start(
        root,
        app,
        env={
            "LD_PRELOAD": f"/{app}/trackleak.so",
            "TRACKLEAK_STARTUP_DELAY": "0",
            "TRACKLEAK_QUIET": "1",
            "TRACKLEAK_LOG_DIR": f"/{app}",
        },
    )
    plain = start(root, app)
    pre_pid, plain_pid = python_pid(pre), python_pid(plain)
    out = tmp_path / "host.json"
    try:
        # WHEN the host agent looks once, filtering on the tag both command lines carry
        r = subprocess.run(
            [*AGENT_CMD, "--once", "--interval", "3", "--cmdline", app, "--json", str(out), "--quiet"],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        stop(pre, plain)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    procs = doc["meta"]["processes"]
    # THEN both are found by their host pids, each by its route, named by their root
    assert {int(p) for p in procs} == {pre_pid, plain_pid}, procs
    assert procs[str(pre_pid)]["source"] == "preload" and procs[str(plain_pid)]["source"] == "ebpf"
    for pid in (pre_pid, plain_pid):
        assert procs[str(pid)]["container"] == f"root:{root}" and procs[str(pid)]["ns_pid"] == 1
        rows = [s for s in doc["sites"] if s["pid"] == pid and not s["native"]]
        leak = site(rows, "leak")
        assert leak["container"] == f"root:{root}" and leak["file"] == f"/{app}/work.py"
        assert leak["live_bytes"] > 1 << 20, leak
    # the shim's rows carry the host pid, never the namespace's 1
    assert not [s for s in doc["sites"] if s["pid"] == 1]

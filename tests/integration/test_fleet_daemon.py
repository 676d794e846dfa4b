# SPDX-License-Identifier: MIT
"""The host agent (`trackleak-agent` without --pid) with real processes and real BPF (root).

Workloads are tagged with a unique marker in their command line, and every agent run filters on
it (--cmdline), so other processes of the machine (other tests, other sessions) are never watched.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from ebpf_support import AGENT_CMD, BPF_SKIP

pytestmark = [pytest.mark.integration]

WORK = r"""
import sys, time
kept = []
def leak():
    kept.append(bytearray(8192))  # ALLOC: leak
def churn():
    b = bytearray(8192)  # ALLOC: churn
    del b
mode = sys.argv[1]
print("ready", flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    for _ in range(50):
        leak() if mode == "leak" else churn()
    time.sleep(0.01)
"""


@pytest.fixture
def tag(tmp_path: Path) -> str:
    return f"fleettag{uuid.uuid4().hex[:10]}"


def _start(tmp_path, python, tag, mode="leak", seconds=60, shim=None, env_extra=None):
    script = tmp_path / f"{tag}_{mode}.py"
    script.write_text(WORK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKLEAK_") and k != "LD_PRELOAD"}
    if shim is not None:
        env.update(
            LD_PRELOAD=str(shim),
            TRACKLEAK_STARTUP_DELAY="0",
            TRACKLEAK_QUIET="1",
            TRACKLEAK_LOG_DIR=str(tmp_path / "logs"),
        )
    env.update(env_extra or {})
    proc = subprocess.Popen(
        [python, str(script), mode, str(seconds), tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().startswith("ready")
    return proc


def _agent(args, timeout=120, **kw):
    return subprocess.run(AGENT_CMD + args, capture_output=True, text=True, timeout=timeout, **kw)


def _stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _sites(path: Path):
    doc = json.loads(path.read_text())
    return doc["meta"], doc["sites"]


LEAK_LINE = WORK.splitlines().index("    kept.append(bytearray(8192))  # ALLOC: leak") + 1


def _leak_rows(sites, pid):
    return [s for s in sites if s["pid"] == pid and s["function"].endswith("leak") and s["line"] == LEAK_LINE]


@BPF_SKIP
def test_once_finds_preloaded_and_plain_process_each_by_one_route(tmp_path, tag, shim):
    pre = _start(
        tmp_path,
        sys.executable,
        tag,
        shim=shim,
        env_extra={
            "ELASTICSEARCH_INDEX": "svc-index",
            "NOMAD_JOB_NAME": "svc-job",
            "ELASTICSEARCH_PASSWORD": "hunter2",
            "ENABLE_ELASTICSEARCH": "1",
        },
    )
    plain = _start(tmp_path, sys.executable, tag)
    out = tmp_path / "once.json"
    try:
        r = _agent(["--once", "--interval", "3", "--cmdline", tag, "--json", str(out), "--host-name", "h1"])
    finally:
        _stop(pre, plain)
    assert r.returncode == 0, r.stderr
    meta, sites = _sites(out)
    assert {s["source"] for s in sites if s["pid"] == pre.pid} == {"preload"}
    assert {s["source"] for s in sites if s["pid"] == plain.pid} == {"ebpf"}
    assert set(meta["processes"]) == {str(pre.pid), str(plain.pid)}
    for pid in (pre.pid, plain.pid):
        (row,) = _leak_rows(sites, pid)
        assert row["live_bytes"] > 100_000 and row["host"] == "h1" and tag in row["command"]
    es = meta["processes"][str(pre.pid)]["elasticsearch"]
    assert es == {
        "ELASTICSEARCH_INDEX": "svc-index",
        "NOMAD_JOB_NAME": "svc-job",
        "ENABLE_ELASTICSEARCH": "1",
    }
    assert "hunter2" not in out.read_text()
    assert "PID" in r.stdout and "SOURCE" in r.stdout


@BPF_SKIP
def test_filters_and_exclude_never_attached(tmp_path, tag, shim):
    a = _start(tmp_path, sys.executable, tag, mode="churn")
    b = _start(tmp_path, sys.executable, tag + "x", mode="churn")
    out = tmp_path / "f.json"
    try:
        r = _agent(
            [
                "--once",
                "--interval",
                "2",
                "--cmdline",
                tag,
                "--exclude-cmdline",
                tag + "x",
                "--json",
                str(out),
            ]
        )
    finally:
        _stop(a, b)
    assert r.returncode == 0, r.stderr
    meta, sites = _sites(out)
    assert set(meta["processes"]) == {str(a.pid)}
    assert all(s["pid"] == a.pid for s in sites)
    assert str(b.pid) not in r.stderr  # never attached, never mentioned


def test_bad_input_is_a_clear_error(tmp_path):
    for args, words in (
        (["--cmdline", "("], "not a valid regular expression"),
        (["--user", "no-such-user-xyz"], "no such user"),
        (["--any-process"], "include filter"),
        (["--pid", "1", "--once"], "only for the host agent"),
    ):
        r = _agent(args, timeout=30)
        assert r.returncode == 2, (args, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr, r.stderr


@BPF_SKIP
def test_process_started_after_the_agent_is_picked_up_and_sigterm_detaches(tmp_path, tag):
    out = tmp_path / "late.json"
    agent = subprocess.Popen(
        [
            *AGENT_CMD,
            *("--interval", "1", "--cmdline", tag, "--ebpf-window", "60", "--ebpf-period", "60"),
            *("--json", str(out), "--no-live"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    late = _start(tmp_path, sys.executable, tag)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if out.exists() and _leak_rows(_sites(out)[1], late.pid):
                break
            time.sleep(0.5)
        agent.terminate()
        _stdout, stderr = agent.communicate(timeout=60)
    finally:
        _stop(late)
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, stderr
    meta, sites = _sites(out)
    assert meta["final"] and meta["stopped_by"] == "SIGTERM"
    assert _leak_rows(sites, late.pid) and {s["source"] for s in sites} == {"ebpf"}
    probes = Path("/sys/kernel/tracing/uprobe_events")
    if probes.exists():
        assert f"_{late.pid}_" not in probes.read_text()


@BPF_SKIP
def test_duty_cycle_healthy_churn_shows_no_retention_and_a_leak_grows(tmp_path, tag):
    leak = _start(tmp_path, sys.executable, tag, mode="leak", seconds=120)
    churn = _start(tmp_path, sys.executable, tag, mode="churn", seconds=120)
    out = tmp_path / "duty.json"
    try:
        rss0, t0 = _rss(leak.pid), time.monotonic()
        r = _agent(
            [
                "--interval",
                "1",
                "--cmdline",
                tag,
                "--ebpf-window",
                "3",
                "--ebpf-period",
                "6",
                # 50 s: the first window opens after the agent's start-up (5-10 s loaded), and each
                # lasts W plus ~1.5 s per target to detach (the kernel waits ~0.1 s per probe): ~7-9 s
                # here with two targets, longer than P, so every other period is skipped (windows
                # 12 s apart). At 33 s a run had 3 windows about one time in three; at 42, a 10 s
                # start-up and 8 s windows still give 3 (at 11, 24 and 36 s); at 50, 4.
                "--duration",
                "50",
                "--json",
                str(out),
                "--no-live",
                "-q",
            ],
            timeout=180,
        )
        true_rate = (_rss(leak.pid) - rss0) / (time.monotonic() - t0)
    finally:
        _stop(leak, churn)
    assert r.returncode == 0, r.stderr
    meta, sites = _sites(out)
    assert meta["ebpf"]["windows"] >= 4, meta["ebpf"]
    churned = [s for s in sites if s["pid"] == churn.pid and s["function"].endswith("churn")]
    assert churned and churned[0]["count"] > 0
    # ~ 50 x 8 KiB per 10 ms while attached; none of it is held for 1.5 s
    assert churned[0]["live_bytes"] < 512 * 1024, churned
    assert not churned[0]["growing"]
    (leaked,) = _leak_rows(sites, leak.pid)
    assert leaked["growing"], leaked
    # It leaks ~ 40 MiB/s (50 x 8 KiB per ~10 ms), as its RSS shows. Windows are scaled by the
    # cycle they stand for (routes.py: closing one takes ~1.5 s per target, so periods are skipped;
    # scaled by the period instead, the estimate was 0.6-0.8 of this).
    rate = leaked["growth_bytes_per_s"]
    assert 0.75 * true_rate < rate < 1.33 * true_rate, (rate / 2**20, true_rate / 2**20, leaked, meta)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_not_root_watches_shim_processes_only(tmp_path, tag, shim):
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop privileges for real")
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="trackleak-fleet-"))  # pytest's tmp is root-only (0700)
    os.chmod(tmp_path, 0o755)
    (tmp_path / "logs").mkdir()
    os.chown(tmp_path / "logs", pwd.getpwnam("nobody").pw_uid, -1)
    drop = [setpriv, "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKLEAK_") and k != "LD_PRELOAD"}
    env.update(TRACKLEAK_STARTUP_DELAY="0", TRACKLEAK_QUIET="1", TRACKLEAK_LOG_DIR=str(tmp_path / "logs"))
    script = tmp_path / "w.py"
    script.write_text(WORK)
    # The shim goes on the Python process only (env after setpriv): setpriv itself preloaded
    # aborts now and then (seen with main's shim too; reported, not this test's subject).
    pre = subprocess.Popen(
        [*drop, "env", f"LD_PRELOAD={shim}", sys.executable, str(script), "leak", "60", tag],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    plain = subprocess.Popen(
        [*drop, sys.executable, str(script), "leak", "60", tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    for p in (pre, plain):
        line = p.stdout.readline()
        assert line.startswith("ready"), (line, p.wait(), p.args)
    try:
        import trackleak

        agent_env = dict(os.environ, HOME="/tmp", PYTHONPATH=str(Path(trackleak.__file__).parents[1]))
        r = subprocess.run(
            drop + AGENT_CMD + ["--once", "--interval", "1", "--cmdline", tag],
            capture_output=True,
            text=True,
            timeout=60,
            env=agent_env,
        )
    finally:
        _stop(pre, plain)
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("not watched") == 1, r.stderr
    assert "root" in r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip().startswith(str(pre.pid))]
    assert lines and all(" preload " in ln for ln in lines)
    assert not [ln for ln in r.stdout.splitlines() if ln.strip().startswith(str(plain.pid))]


@BPF_SKIP
def test_every_cpython_is_discovered_by_both_routes(tmp_path, tag, shim, cpython):
    """The discovery rule (interpreter name or libpython) and both routes, on each interpreter
    (static Debian builds and pyenv's shared ones)."""
    pre = _start(tmp_path, cpython.path, tag, shim=shim)
    plain = _start(tmp_path, cpython.path, tag)
    out = tmp_path / "py.json"
    try:
        r = _agent(["--once", "--interval", "2", "--cmdline", tag, "--json", str(out)])
    finally:
        _stop(pre, plain)
    assert r.returncode == 0, r.stderr
    meta, sites = _sites(out)
    assert meta["processes"][str(pre.pid)]["source"] == "preload"
    assert meta["processes"][str(plain.pid)]["source"] == "ebpf"
    for pid, source in ((pre.pid, "preload"), (plain.pid, "ebpf")):
        if source == "ebpf" and cpython.free_threaded:
            continue  # its Python objects come from mimalloc: the libc probes cannot see the leak
        rows = _leak_rows(sites, pid)
        assert rows and rows[0]["source"] == source, (pid, source, r.stderr)


TWO_CALLERS = r"""
import sys, time
kept = []
def store(keep):
    b = bytearray(8192)  # ALLOC: store
    if keep:
        kept.append(b)
def uploads():
    store(True)
def pings():
    store(False)
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(25):
        uploads()
        pings()
    time.sleep(0.01)
"""


@BPF_SKIP
def test_duty_cycle_rows_carry_their_call_paths(tmp_path, tag):
    """Under the host agent's duty cycle (attached 3 s of every 6) a row still says which caller
    keeps its memory: the library line's path through uploads holds the live bytes, the one
    through pings none, and both allocated."""
    script = tmp_path / f"{tag}_callers.py"
    script.write_text(TWO_CALLERS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKLEAK_") and k != "LD_PRELOAD"}
    proc = subprocess.Popen(
        [sys.executable, str(script), "120", tag], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().startswith("ready")
    out = tmp_path / "duty_paths.json"
    try:
        r = _agent(
            [
                *("--interval", "1", "--cmdline", tag, "--ebpf-window", "3", "--ebpf-period", "6"),
                *("--duration", "20", "--json", str(out), "--no-live", "-q"),
            ],
            timeout=180,
        )
    finally:
        _stop(proc)
    assert r.returncode == 0, r.stderr
    _, sites = _sites(out)
    line = TWO_CALLERS.splitlines().index("    b = bytearray(8192)  # ALLOC: store") + 1
    (row,) = [s for s in sites if s["pid"] == proc.pid and s["function"] == "store" and s["line"] == line]
    by_caller = {s["frames"][-2][0]: s for s in row["stacks"]}
    assert set(by_caller) == {"uploads", "pings"}, row["stacks"]
    assert all(s["frames"][-1][:2] == ["store", str(script)] for s in row["stacks"])
    up, ping = by_caller["uploads"], by_caller["pings"]
    # pings holds nothing but, now and then, a pymalloc arena (1 MiB, scaled by P / (W - H) = 4):
    # the bytearray objects pings frees are reused by uploads, so pings takes the fresh memory;
    # measured 0-0.5 %. (The 6 % CI saw, and 9-18 % here, were no estimate noise: free was
    # detached first, ~1.5 s before the allocation probes, so blocks pings made and freed meanwhile
    # were counted held. Fixed in the loader's detach order; 5 % catches that again.)
    assert up["live_bytes"] > 0.8 * row["live_bytes"] > 0 and ping["live_bytes"] <= 0.05 * row["live_bytes"]
    assert up["total_bytes"] > 0 and ping["total_bytes"] > 0
    assert "call paths of store" in r.stdout

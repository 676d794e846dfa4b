# SPDX-License-Identifier: MIT
"""The eBPF agent on native processes: real uprobes on the target's libc (root + bcc).

A C program leaks in leak_here() and frees everything in healthy_twin() (every allocator of the
family). The agent must name the leaking function, keep the twin clean, survive targets that
exit, serve two targets at once, leave no probe behind, and fail with one clear line on bad input.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from ebpf_support import (
    AGENT_CMD,
    BPF_SKIP,
    Target,
    build_leaker,
    find,
    run_attached,
    tracefs_events,
    uprobe_perf_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.bpf]


@pytest.fixture(scope="module")
def leaker(tmp_path_factory) -> str:
    return str(build_leaker(tmp_path_factory.mktemp("native")))


def _session(pids, sample_rate=1, min_size=500, **kw):
    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    return EbpfSession(pids, Tunables(sample_rate=sample_rate, min_size=min_size), **kw)


@BPF_SKIP
def test_native_leak_named_and_twin_clean(leaker):
    # GIVEN a C program waiting to leak, and the agent attached to it
    target = Target([leaker, "400", "200"])
    session = _session([target.pid])
    # WHEN it runs its leaking and its healthy rounds
    rows = run_attached(session, target)
    # THEN the leaking function is flagged and its twin is not
    leak = find(rows, "leak_here", file_endswith="leaker")
    twin = find(rows, "healthy_twin", file_endswith="leaker")
    assert leak.native and leak.line == 0 and leak.source == "ebpf" and leak.pid == target.pid
    # 8 allocator calls a round (malloc, calloc, malloc+realloc, posix_memalign, aligned_alloc,
    # realloc(NULL), memalign(16)): glibc's internal relays must not be counted twice.
    assert leak.count == twin.count == 8 * 400
    assert leak.retention_pct >= 80.0
    assert twin.retention_pct <= 20.0
    assert leak.peak_single == 8192


@BPF_SKIP
def test_sampling_keeps_every_count(leaker):
    # GIVEN byte-weighted sampling with a 20 KiB interval (trackleak.sampling)
    from trackleak import sampling

    target = Target([leaker, "500", "100"])
    session = _session([target.pid], sample_rate=20)
    rows = run_attached(session, target)
    # THEN counts are exact, samples follow p(s) = 1 - exp(-s/R) (a round: seven 4 KiB blocks and
    # one 8 KiB realloc; binomial, 5 standard deviations), and retention still separates the two
    leak, twin = find(rows, "leak_here"), find(rows, "healthy_twin")
    assert leak.count == 8 * 500
    p4, p8 = (sampling.probability(s, session.interval) for s in (4096, 8192))
    mean = 500 * (7 * p4 + p8)
    var = 500 * (7 * p4 * (1 - p4) + p8 * (1 - p8))
    assert abs(leak.sample_count - mean) <= 5 * var**0.5, (leak.sample_count, mean)
    assert leak.retention_pct >= 80.0 and twin.retention_pct <= 20.0
    # AND the live-bytes estimate of the leak is about what it keeps: every block but the one its
    # realloc moved (a freed sample takes back exactly what it added: no variance)
    kept = 500 * (6 * 4096 + 8192)
    var_bytes = 500 * (6 * 4096**2 * (1 - p4) / p4 + 8192**2 * (1 - p8) / p8)
    assert abs(leak.live_bytes - kept) <= 5 * var_bytes**0.5, (leak.live_bytes, kept)
    assert twin.live_bytes == 0


@BPF_SKIP
def test_attach_to_long_running_target_and_it_exits_mid_attach(leaker, tmp_path):
    # GIVEN a target that has already done work before the agent attaches
    # ~20 s of work (4000 rounds, 5 ms apart): still running when the agent attaches, which takes
    # ~3 s here (compiling and verifying the BPF program); with 1.5 ms apart (~7 s of work) a machine
    # twice as slow would let the target finish first (no leak_here row: KeyError below). Not
    # longer for the test: the target is ended 0.5 s after the attach, whatever it has left to do.
    target = Target([leaker, "4000", "5000"])
    target.say("go")
    time.sleep(0.5)
    out = tmp_path / "out.json"
    # WHEN the agent (the real command) attaches and the target exits while attached
    agent = subprocess.Popen(
        [
            *AGENT_CMD,
            "--pid",
            str(target.pid),
            "--json",
            str(out),
            "-q",
            "--interval",
            "0.3",
            "--sample-rate",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # once it has attached (its first line; compiling takes a while on a busy machine)
    attached = agent.stderr.readline()
    assert "attached to" in attached, attached
    time.sleep(0.5)
    target.finish()  # "exit" after "done" (or kill): the process goes away
    __stdout, stderr = agent.communicate(timeout=60)
    # THEN the agent ends by itself, cleanly, with the rows it had
    assert agent.returncode == 0, stderr
    doc = json.loads(out.read_text())
    assert doc["meta"]["source"] == "ebpf"
    assert doc["meta"]["targets"][0]["exited"] is True
    sites = {s["function"]: s for s in doc["sites"]}
    assert sites["leak_here"]["retention_pct"] >= 80.0
    assert set(sites["leak_here"]) >= {
        "function",
        "file",
        "line",
        "count",
        "total_bytes",
        "sample_count",
        "sample_total_bytes",
        "sample_free_bytes",
        "retention_pct",
        "peak_single",
        "avg_size",
        "source",
        "pid",
        "native",
    }
    assert "exited" in stderr


@BPF_SKIP
def test_two_targets_and_detach_leaves_no_probe(leaker):
    # GIVEN two leakers and one session on both
    a, b = Target([leaker, "200", "100"]), Target([leaker, "200", "100"])
    session = _session([a.pid, b.pid])
    session.start()
    try:
        assert len(uprobe_perf_events(os.getpid())) in (0, len(session.loader.probes))
        a.say("go")
        b.say("go")
        a.wait_done()
        b.wait_done()
        table = session.poll()
    finally:
        session.stop()
        a.finish()
        b.finish()
    # THEN each pid has its own leak row
    by_pid = {(r.pid, r.function): r for r in table}
    for t in (a, b):
        assert by_pid[(t.pid, "leak_here")].retention_pct >= 80.0
        assert by_pid[(t.pid, "healthy_twin")].retention_pct <= 20.0
    # AND after the session nothing of ours stays attached
    assert session.loader.probes == []
    assert uprobe_perf_events(os.getpid()) == []
    assert tracefs_events() == []


@BPF_SKIP
def test_attach_is_deterministic(leaker):
    # GIVEN bcc 0.26's short bpf_attach_uprobe prototype, which fails at random: ours must not
    target = Target([leaker, "1", "0"])
    try:
        for _ in range(5):
            session = _session([target.pid])
            session.start()
            assert len(session.loader.probes) >= 13
            session.stop()
    finally:
        target.finish()


@BPF_SKIP
def test_a_probe_that_cannot_attach_leaves_no_event_behind(leaker):
    # GIVEN a target that ends between finding its libc and attaching: libbcc's tracefs fallback
    # creates the uprobe event, then fails to open it for the gone pid
    from trackleak.ebpf.loader import AttachError, Loader
    from trackleak.ebpf.procinfo import find_libc, probe_points, process_maps

    target = Target([leaker, "1", "0"])
    try:
        point = probe_points(target.pid, find_libc(target.pid, process_maps(target.pid)))["free"]
    finally:
        target.finish()
    loader = Loader()
    loader.load()
    try:
        # WHEN the probe is attached to the pid that is gone
        with pytest.raises(AttachError, match=f"no such process: {target.pid}"):
            loader.attach("free", point.path, point.offset, target.pid)
    finally:
        loader.close()
    # THEN no event of ours is left in tracefs
    assert tracefs_events() == []


def _agent(*args, user=None):
    cmd = [*AGENT_CMD, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"),) if p))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pid", "999999999"], "no such process: 999999999"),
        (["--pid", "2"], "kernel thread"),  # kthreadd: no user memory
    ],
)
@BPF_SKIP
def test_bad_pids_give_one_line_and_exit_2(args, message):
    res = _agent(*args)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_not_root_gives_one_line_and_exit_2(leaker):
    target = Target([leaker, "1", "0"])
    try:
        res = _agent("--pid", str(target.pid), user=65534)
    finally:
        target.finish()
    if "No module named" in res.stderr or ("Permission denied" in res.stderr and "python" in res.stderr):
        pytest.skip(f"the package is not readable by an unprivileged user here: {res.stderr.strip()[:200]}")
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs root" in lines[0], res.stderr


@BPF_SKIP
def test_doctor_says_ready_and_lists_interpreters(interpreters):
    from typer.testing import CliRunner

    from trackleak.cli.app import app

    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0, res.output
    assert "ready to attach" in res.output
    for interp in interpreters:
        minor = "{}.{}".format(*interp.version_info[:2])
        assert any(minor in line and "eBPF: Python lines" in line for line in res.output.splitlines()), (
            minor,
            res.output,
        )

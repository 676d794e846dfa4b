# SPDX-License-Identifier: MIT
"""The agent's sampling and estimates on every local CPython, with real BPF (root + bcc).

Byte-weighted sampling (trackleak.sampling): an allocation of s bytes is sampled with
p = 1 - exp(-s/R), independently of every other, so

- a site making n allocations of s bytes gets Binomial(n, p) samples, whatever else runs in the
  same loop: mean n p, variance n p (1 - p);
- its Horvitz-Thompson live count (each kept sample counts 1/p) has mean n and variance
  n (1 - p) / p; its live bytes s times that.

Every statistical check allows SIGMAS standard deviations (5: a false alarm about once in two
million checks under the normal approximation; these tests make a few hundred), derived from the
variances above, not guessed. Big allocations (s >> R) have p = 1 and are exact.
Workloads: tests/fixtures/ebpf_estimates.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from ebpf_support import BPF_REASON, BPF_SKIP, Target, find
from helpers import line_of

from trackleak import sampling
from trackleak.table import sorted_rows

# These workloads are Python objects: a free-threaded build takes them from mimalloc, which the
# libc probes cannot see (the agent says so; test_ebpf_python checks its C sites).
pytestmark = [pytest.mark.integration, pytest.mark.bpf, pytest.mark.cpythons(gil=True)]

WORKLOAD = Path(__file__).resolve().parents[1] / "fixtures" / "ebpf_estimates.py"
SIGMAS = 5.0


def _session(pids, sample_rate=50, **kw):
    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    limits = kw.pop("limits", {})
    return EbpfSession(pids, Tunables(sample_rate=sample_rate, min_size=500, limits=limits), **kw)


def _within(value: float, mean: float, var: float, what: str, slack: float = 1.0) -> None:
    tol = SIGMAS * math.sqrt(max(var, 0.0)) + slack
    assert abs(value - mean) <= tol, f"{what}: {value} vs expected {mean:.1f} +- {tol:.1f}"


def _row(rows, cpython, marker, script=WORKLOAD, function=None):
    """The row of the line marked ``# ALLOC: MARKER`` (in function MARKER unless FUNCTION)."""
    return find(
        rows, cpython.func(function or marker), file_endswith=Path(script).name, line=line_of(script, marker)
    )


def _attach_and_run(session, target, poll_every: float | None = None) -> tuple[list, str]:
    """Attach, "go", poll every POLL_EVERY seconds while it works (history), final poll."""
    session.start()
    try:
        target.say("go")
        if poll_every is None:
            done = target.wait_done()
        else:
            import select

            while not select.select([target.proc.stdout], [], [], poll_every)[0]:
                session.poll()
            done = target.wait_done()
        session.poll()
        return session.merged_rows(), done
    finally:
        session.stop()
        target.finish()


ROUNDS, BIG_ROUNDS, GROW_APPENDS = 300, 61, 128


@pytest.fixture(scope="module")
def attached_run(cpython):
    """One target per interpreter running the three workloads below in turn (interleaved sites,
    a realloc-grown buffer, big buffers), one session polled every 0.25 s: (rows, done line, R)."""
    if BPF_REASON is not None:
        pytest.skip(BPF_REASON)
    target = Target([cpython.path, str(WORKLOAD), "all", str(ROUNDS), str(BIG_ROUNDS), str(GROW_APPENDS)])
    session = _session([target.pid], sample_rate=5)
    rows, done = _attach_and_run(session, target, poll_every=0.25)
    return rows, done, session.interval


@BPF_SKIP
def test_interleaved_sites_each_get_their_share(cpython, attached_run):
    # GIVEN groups of 2, 3, 5 and 10 sites of different sizes, called in turn in one loop
    rows, _, interval = attached_run
    # THEN every site is counted exactly and sampled with p(s), whatever its neighbours:
    # samples ~ Binomial(n, p); the live count and bytes (all kept) estimate n and n s
    for group in (2, 3, 5, 10):
        for j in range(group):
            row = _row(rows, cpython, f"g{group}_{j}")
            n, s = row.count, row.avg_size
            assert n == ROUNDS and row.peak_single == s, row
            p = sampling.probability(s, interval)
            where = f"g{group}_{j} (s={s}, p={p:.3f})"
            _within(row.sample_count, n * p, n * p * (1 - p), f"{where} samples")
            _within(row.live_count, n, n * (1 - p) / p, f"{where} live count")
            _within(row.live_bytes, n * s, n * s * s * (1 - p) / p, f"{where} live bytes", slack=s)
            # every sampled block kept; RET% = live / total, so within the live-bytes error
            assert row.sample_free_bytes == 0, row
            assert row.retention_pct == round(
                100.0 * min(row.live_bytes, row.total_bytes) / row.total_bytes, 1
            )


@BPF_SKIP
def test_big_buffers_leak_found_every_run_and_twin_clean(cpython, attached_run):
    # GIVEN 61 buffers of 4 MiB kept, next to a twin that allocates the same and drops it
    # (a "1 in 50" count sampler would keep about one of the 61)
    rows, _, interval = attached_run
    leak, twin = _row(rows, cpython, "big_leak"), _row(rows, cpython, "big_twin")
    s = leak.avg_size
    assert s >= 4 << 20 and sampling.probability(s, interval) == 1.0
    assert sampling.probability(s, sampling.interval_bytes(sampling.DEFAULT_SAMPLE_RATE)) == 1.0
    # THEN every buffer is sampled (p = 1): the live bytes are the truth, exactly
    assert leak.count == twin.count == BIG_ROUNDS
    assert leak.sample_count == twin.sample_count == BIG_ROUNDS
    assert leak.live_bytes == BIG_ROUNDS * s and leak.live_count == BIG_ROUNDS
    # AND the twin is sampled and clean
    assert twin.live_bytes == 0 and twin.live_count == 0 and twin.retention_pct == 0.0
    # AND the leak keeps growing (observed at every poll) and ranks first; the twin does not grow
    assert leak.growing and leak.growth_bytes_per_s > 0, leak
    assert not twin.growing
    assert sorted_rows(rows)[0].key == leak.key


@BPF_SKIP
def test_realloc_grown_buffer_shows_its_current_size(cpython, attached_run):
    # GIVEN a bytearray grown by 128 appends of 64 KiB (realloc) and kept, and a twin dropped
    rows, done, _ = attached_run
    allocated = int(done.split()[1])  # the kept buffer's bytearray.__alloc__()
    leak, twin = _row(rows, cpython, "grow_leak"), _row(rows, cpython, "grow_twin")
    # THEN each realloc freed the old block and allocated the new one: the leak's live bytes are
    # the buffer's current size (the last block, >> R: sampled with p = 1), the twin's nothing
    assert leak.count >= 10 and twin.count >= 10  # fewer reallocs than appends: over-allocation
    assert leak.live_bytes == allocated, (leak, allocated)
    assert twin.live_bytes == 0, twin
    # retention counts every block the buffer went through: well below 100 % for the leak
    assert leak.retention_pct is not None and leak.retention_pct < 90.0


SITES_TARGET_HEAD = """
import os, sys
KEEP = [None] * 200
def leak(i):
    KEEP[i] = bytes(20000)  # ALLOC: overflow_leak
"""


def _sites_script(tmp_path: Path, n_sites: int) -> Path:
    """N_SITES distinct healthy sites (one function each), then a leak at one line."""
    lines = [SITES_TARGET_HEAD]
    for i in range(n_sites):
        lines.append(f"def site{i}():\n    b = bytes(1000)  # ALLOC: site{i}\n    del b\n")
    lines.append(
        "SITES = [" + ", ".join(f"site{i}" for i in range(n_sites)) + "]\n"
        "print('ready', os.getpid(), flush=True)\n"
        "sys.stdin.readline()\n"
        "for f in SITES:\n    for _ in range(3):\n        f()\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
        "for _ in range(3):\n    site0()\n"
        "for i in range(200):\n    leak(i)\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    script = tmp_path / "many_sites.py"
    script.write_text("".join(lines))
    return script


@BPF_SKIP
def test_full_sites_map_makes_room_for_a_new_leak(cpython, tmp_path):
    # GIVEN a sites map of 64 entries and a target touching 300 distinct healthy sites
    script = _sites_script(tmp_path, 300)
    target = Target([cpython.path, str(script)])
    session = _session([target.pid], sample_rate=5, limits={"TL_MAX_SITES": 64})
    session.start()
    try:
        target.say("go")
        target.wait_done()
        # WHEN the agent polls while they are idle (the second poll evicts them)...
        session.poll()
        session.poll()
        # ... and the target then leaks at one new line (and calls its first site again)
        target.say("go")
        target.wait_done()
        session.poll()
        rows = session.merged_rows()
    finally:
        session.stop()
        target.finish()
    # THEN what could not be counted while the map was full is counted and said...
    dropped = session.dropped()
    assert dropped["sites_full"] > 0, session.counters
    assert session.meta()["dropped"] == dropped
    # ... the leak got an entry (idle sites were evicted): in the table, first, counted exactly,
    # its live bytes estimated
    leak = _row(rows, cpython, "overflow_leak", script, function="leak")
    assert sorted_rows(rows)[0].key == leak.key
    assert session.evicted >= 50
    assert leak.count == 200
    s, p = leak.avg_size, sampling.probability(leak.avg_size, session.interval)
    _within(leak.live_bytes, 200 * s, 200 * s * s * (1 - p) / p, "leak live bytes", slack=s)
    # ... and an evicted site that came back continues from its carried totals
    first = _row(rows, cpython, "site0", script)
    assert first.count == 6, first


@BPF_SKIP
def test_agent_command_ranks_a_growing_leak_and_writes_its_series(interpreters, tmp_path):
    import json
    import subprocess

    from ebpf_support import AGENT_CMD

    # GIVEN a script that keeps 256 KiB every 20 ms, and the agent command attached to it
    # (Python objects: not a free-threaded build, whose objects the probes cannot see)
    cpython = [i for i in interpreters if not i.free_threaded][-1]
    target = Target([cpython.path, str(WORKLOAD), "steady"])
    out = tmp_path / "agent.json"
    try:
        res = subprocess.run(
            [
                *AGENT_CMD,
                "--pid",
                str(target.pid),
                "--duration",
                "2.5",
                "--interval",
                "0.25",
                "--json",
                str(out),
                "--sort",
                "live",
                "--no-live",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        target.say("stop")
        target.finish()
    assert res.returncode == 0, res.stderr
    # THEN the summary lines and the final head line say what was dropped (nothing) and the order
    lines = res.stderr.splitlines()
    assert any("growing=1" in line and "dropped=0" in line for line in lines), res.stderr
    head = next(line for line in lines if "process(es)" in line)
    assert "nothing dropped" in head and "by live" in head and "exp(-s / 50.0 KiB)" in head, head
    assert res.stdout.splitlines()[2].startswith(cpython.func("steady_leak")), res.stdout
    # AND the JSON document has the growing row, its live-bytes series and the drop counters
    doc = json.loads(out.read_text())
    assert doc["meta"]["dropped"] == {"sites_full": 0, "live_full": 0, "pending_full": 0, "paths_full": 0}
    assert doc["meta"]["sample_interval_bytes"] == 50 * 1024
    leak = next(s for s in doc["sites"] if s["function"] == cpython.func("steady_leak"))
    assert leak["growing"] is True and leak["growth_bytes_per_s"] > 1 << 20, leak
    assert leak["live_bytes"] > 4 << 20
    series = next(h for h in doc["history"] if h["function"] == leak["function"])
    assert len(series["points"]) >= 5 and series["points"][-1][1] > series["points"][0][1]

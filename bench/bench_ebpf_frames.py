# SPDX-License-Identifier: MIT
"""Cost of the eBPF allocation probe per call, by interpreter (a benchmark, not a test; root, bcc).

The kernel's own accounting (``kernel.bpf_stats_enabled``: run_time_ns / run_cnt of each program,
read from the loader's program fd in /proc/self/fdinfo) while a target allocates 4 KiB blocks
three Python frames deep, so the number is what the probe costs, frame walk included, without the
noise of wall-clock timing. Interpreters are measured in turn, ``--rounds`` times, and the median
per interpreter is printed with the share of calls that found no Python frame.

    sudo .venv/bin/python bench/bench_ebpf_frames.py --python PY [--python PY ...] [--seconds 4]
        [--rounds 3] [--sample-rate 50]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")

TARGET = r"""
import sys, time
def leaf():
    return bytearray(4096)
def middle():
    return leaf()
def outer(n):
    for _ in range(n):
        middle()
print("ready", flush=True)
sys.stdin.readline()
end = time.time() + float(sys.argv[1])
while time.time() < end:
    outer(1000)
"""


def fdinfo(fd: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("run_time_ns", "run_cnt"):
            out[key] = int(value.strip())
    return out


def measure(python: str, seconds: float, sample_rate: int) -> tuple[float, int, int]:
    """(ns per tl_malloc_enter call, calls, calls without a Python frame)."""
    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    proc = subprocess.Popen(
        [python, "-c", TARGET, str(seconds + 30)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().startswith("ready")
        session = EbpfSession([proc.pid], Tunables(sample_rate=sample_rate, min_size=500))
        session.start()
        try:
            import bcc  # type: ignore[import-not-found]

            fn = session.loader.bpf.load_func(b"tl_malloc_enter", bcc.BPF.KPROBE)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            time.sleep(0.5)
            session.poll()
            before, no_frame0 = fdinfo(fn.fd), session.counters.get("python_no_frame", 0)
            time.sleep(seconds)
            session.poll()
            after, no_frame1 = fdinfo(fn.fd), session.counters.get("python_no_frame", 0)
        finally:
            session.stop()
    finally:
        proc.kill()
        proc.wait()
    calls = after["run_cnt"] - before["run_cnt"]
    ns = (after["run_time_ns"] - before["run_time_ns"]) / max(calls, 1)
    return ns, calls, no_frame1 - no_frame0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", required=True)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sample-rate", type=int, default=50)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    old = STATS.read_text().strip()
    STATS.write_text("1")
    results: dict[str, list[tuple[float, int, int]]] = {p: [] for p in args.python}
    try:
        for _ in range(args.rounds):
            for python in args.python:
                results[python].append(measure(python, args.seconds, args.sample_rate))
    finally:
        with contextlib.suppress(OSError):
            STATS.write_text(old)
    print(f"tl_malloc_enter, ns per call (median of {args.rounds}; 4 KiB blocks 3 frames deep)")
    for python, runs in results.items():
        ns = statistics.median(r[0] for r in runs)
        calls = sum(r[1] for r in runs)
        no_frame = sum(r[2] for r in runs)
        print(
            f"  {python:70} {ns:7.0f} ns   runs: {', '.join(f'{r[0]:.0f}' for r in runs)}"
            f"   calls {calls}, without a Python frame {no_frame}"
        )


if __name__ == "__main__":
    main()

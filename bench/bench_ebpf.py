# SPDX-License-Identifier: MIT
"""Overhead of the eBPF agent (a benchmark, not a test; needs root and bcc).

Two measurements, runs interleaved (off, trackleak, memleak, off, ...) to share machine noise:

1. ``pair``: ns per malloc(1024)/free pair of a C loop (bench/malloc_loop.c), unattached, with
   trackleak's probes, and with bcc's memleak on the same process. The difference is the probe
   cost per pair.
2. ``python``: wall time of an allocation-heavy Python workload (the slowdown factor against the
   same run unattached), with trackleak (Python frames on) and with memleak.
3. ``arenas`` (issue 10): the same workload, and one that allocates and frees pymalloc arenas
   all the time (lists of small tuples built and dropped: the arena probes' worst case), unattached,
   attached without arena probes and attached with them (off, no-arenas, arenas, off, ...).

    sudo .venv/bin/python bench/bench_ebpf.py [--rounds 3] [--pairs 300000] [--python PATH]
        [--sample-rate 50] [--min-size 500] [--no-memleak] [--entry-free] [--only pair|python|arenas]

``--entry-free`` probes free at its first instruction instead of the emulated branch after it,
to show what that choice saves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

# The same allocation-heavy workload as bench/run.py (bench/workload.py), started
# first and run on a signal so that attaching is not part of the measured time.
PY_WORKLOAD = r"""
import sys, time
sys.path.insert(0, BENCH_DIR)
from workload import work
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
work(int(sys.argv[1]))
print("seconds %.4f" % (time.perf_counter() - t0), flush=True)
sys.stdin.readline()
""".replace("BENCH_DIR", repr(str(HERE)))

# Arena churn: each round builds ~25 MiB of small tuples and strs and drops them, so pymalloc
# mmaps and munmaps arenas all the time (every one hits the arena probes).
PY_ARENA_CHURN = r"""
import sys, time
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
for r in range(int(sys.argv[1])):
    held = [(i, str(i)) for i in range(150000)]
    del held
print("seconds %.4f" % (time.perf_counter() - t0), flush=True)
sys.stdin.readline()
"""


class Proc:
    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().startswith("ready")
        self.pid = self.p.pid

    def run(self) -> float:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return float(self.p.stdout.readline().split()[1])

    def close(self):
        try:
            self.p.stdin.write("x\n")
            self.p.stdin.flush()
        except OSError:
            pass
        self.p.wait(timeout=300)


def with_trackleak(argv, args, arenas: bool = True) -> float:
    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    proc = Proc(argv)
    session = EbpfSession(
        [proc.pid],
        Tunables(args.sample_rate, args.min_size, arenas=arenas),
        move_free_probe=not args.entry_free,
    )
    session.start()
    try:
        return proc.run()
    finally:
        session.stop()
        proc.close()


def with_memleak(argv, args) -> float | None:
    tool = shutil.which("memleak-bpfcc") or "/usr/sbin/memleak-bpfcc"
    if args.no_memleak or not os.path.exists(tool):
        return None
    proc = Proc(argv)
    ml = subprocess.Popen(
        [tool, "-p", str(proc.pid), "-z", str(args.min_size), "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = ml.stdout.readline()  # "Attaching to pid N, Ctrl+C to quit."
    if "Attaching" not in line:
        ml.kill()
        proc.close()
        raise RuntimeError(f"memleak did not attach: {line}")
    # It prints that line before compiling: wait until its uprobes are in (bpftool perf list).
    from ebpf_support import uprobe_perf_events

    deadline, last, stable = time.time() + 30, -1, 0
    while time.time() < deadline and stable < 3:
        n = len(uprobe_perf_events(ml.pid))
        stable = stable + 1 if n and n == last else 0
        last = n
        time.sleep(0.2)
    if not last:
        ml.kill()
        proc.close()
        raise RuntimeError("memleak attached no uprobe")
    try:
        return proc.run()
    finally:
        ml.terminate()
        ml.wait(timeout=30)
        proc.close()


def unattached(argv, _args) -> float:
    proc = Proc(argv)
    try:
        return proc.run()
    finally:
        proc.close()


def measure_arenas(name, argv, args):
    """off / attached without arena probes / attached with them, interleaved."""
    results = {"off": [], "no-arenas": [], "arenas": []}
    for _ in range(args.rounds):
        results["off"].append(unattached(argv, args))
        results["no-arenas"].append(with_trackleak(argv, args, arenas=False))
        results["arenas"].append(with_trackleak(argv, args, arenas=True))
    base = statistics.median(results["off"])
    print(f"\n{name}: {' '.join(argv[-2:])} (median of {args.rounds}, interleaved)")
    for k, vals in results.items():
        med = statistics.median(vals)
        extra = f"  x{med / base:.3f}" if k != "off" else ""
        print(f"  {k:10s} {med:10.3f}{extra}   runs: {', '.join(f'{v:.3f}' for v in vals)}")
    ratios = [a / n for a, n in zip(results["arenas"], results["no-arenas"])]
    print(
        f"  arenas / no-arenas: median x{statistics.median(ratios):.3f} "
        f"(per round: {', '.join(f'{r:.3f}' for r in ratios)})"
    )
    return results


def measure(name, argv, args):
    results = {"off": [], "trackleak": [], "memleak": []}
    for _ in range(args.rounds):
        results["off"].append(unattached(argv, args))
        results["trackleak"].append(with_trackleak(argv, args))
        m = with_memleak(argv, args)
        if m is not None:
            results["memleak"].append(m)
    base = statistics.median(results["off"])
    print(f"\n{name}: {' '.join(argv[-2:])} (median of {args.rounds}, interleaved)")
    for k, vals in results.items():
        if not vals:
            continue
        med = statistics.median(vals)
        extra = f"  x{med / base:.2f}" if k != "off" else ""
        print(f"  {k:10s} {med:10.2f}{extra}   runs: {', '.join(f'{v:.2f}' for v in vals)}")
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=300000)
    ap.add_argument("--iterations", type=int, default=300, help="rounds of bench/workload.py")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--sample-rate", type=int, default=50)
    ap.add_argument("--min-size", type=int, default=500)
    ap.add_argument("--no-memleak", action="store_true")
    ap.add_argument("--entry-free", action="store_true", help="probe free at offset 0 (for comparison)")
    ap.add_argument("--only", choices=("pair", "python", "arenas"))
    ap.add_argument("--churn-rounds", type=int, default=40, help="rounds of the arena-churn workload")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_ebpf: needs root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
        if args.only in (None, "pair"):
            exe = Path(tmp) / "malloc_loop"
            subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "malloc_loop.c")], check=True)
            r = measure("pair: ns per malloc(1024)+free", [str(exe), str(args.pairs), "1024"], args)
            base = statistics.median(r["off"])
            print(
                f"  probe cost per pair: trackleak {statistics.median(r['trackleak']) - base:.0f} ns"
                + (f", memleak {statistics.median(r['memleak']) - base:.0f} ns" if r["memleak"] else "")
            )
        if args.only in (None, "python"):
            script = Path(tmp) / "workload.py"
            script.write_text(PY_WORKLOAD)
            measure("python: seconds of the workload", [args.python, str(script), str(args.iterations)], args)
        if args.only == "arenas":
            script = Path(tmp) / "workload.py"
            script.write_text(PY_WORKLOAD)
            measure_arenas(
                "arenas: seconds of bench/workload.py", [args.python, str(script), str(args.iterations)], args
            )
            churn = Path(tmp) / "arena_churn.py"
            churn.write_text(PY_ARENA_CHURN)
            measure_arenas(
                "arenas: seconds of the arena churn", [args.python, str(churn), str(args.churn_rounds)], args
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

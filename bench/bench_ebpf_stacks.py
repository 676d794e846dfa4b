# SPDX-License-Identifier: MIT
"""Cost of call paths in the eBPF route (issue 9; a benchmark, not a test; root, bcc).

1. ``cost``: the kernel's own accounting (``kernel.bpf_stats_enabled``: run_time_ns / run_cnt of
   tl_malloc_enter, from the loader's program fd) while a target allocates 4 KiB blocks with
   ``--frames`` Python frames above the allocating line, for each ``--depth`` in turn, the depths
   interleaved round by round (the machine is shared). The path walk runs only for sampled
   allocations; at ``--sample-rate 1`` every allocation pays it (the cost per sample).
2. ``wall``: wall time of bench/workload.py (the allocation-heavy workload of bench/run.py and
   bench_ebpf.py) unattached and attached at each depth, interleaved.
3. ``memory``: the memory of tl_paths (``memlock`` of the map's fdinfo: for a map that is not
   preallocated the kernel counts its elements) with ``--paths`` distinct paths stored, per depth,
   and what the agent's poll costs in time to read and resolve them.

    sudo .venv/bin/python bench/bench_ebpf_stacks.py --python PY [--depth 0 --depth 32 --depth 128]
        [--frames 150] [--seconds 3] [--rounds 3] [--sample-rate 50] [--only cost|wall|memory]
        [--paths 10000] [--iterations 300]
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

COST_TARGET = r"""
import sys, time
def nest(k):
    if k:
        return nest(k - 1)
    end = time.time() + 0.05
    while time.time() < end:
        for _ in range(200):
            bytearray(4096)
def outer(frames):
    while True:
        nest(frames)
print("ready", flush=True)
sys.stdin.readline()
outer(int(sys.argv[1]))
"""

# 100 callers x 100 middle functions: 10 000 distinct paths (5 frames) into one leaking line
PATHS_TARGET = (
    r"""
import ctypes, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
kept = [0] * 20000
n = [0]
def leaf():
    kept[n[0]] = libc.malloc(2048); n[0] += 1
"""
    + "".join(f"def mid{i}():\n    leaf()\n" for i in range(100))
    + "".join(f"def caller{i}(m):\n    m()\n" for i in range(100))
    + r"""
CALLERS = ["""
    + ", ".join(f"caller{i}" for i in range(100))
    + r"""]
MIDS = ["""
    + ", ".join(f"mid{i}" for i in range(100))
    + r"""]
print("ready", flush=True)
sys.stdin.readline()
paths = int(sys.argv[1])
for i in range(paths):
    CALLERS[i % 100](MIDS[(i // 100) % 100])
print("done", flush=True)
sys.stdin.readline()
"""
)


def fdinfo(fd: int, keys=("run_time_ns", "run_cnt")) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.strip())
    return out


def cost(python: str, depth: int, args) -> tuple[float, int]:
    """(ns per tl_malloc_enter call, calls)."""
    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    proc = subprocess.Popen(
        [python, "-c", COST_TARGET, str(args.frames)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith("ready")
        session = EbpfSession(
            [proc.pid], Tunables(sample_rate=args.sample_rate, min_size=500, arenas=False, stack_depth=depth)
        )
        session.start()
        try:
            import bcc  # type: ignore[import-not-found]

            fn = session.loader.bpf.load_func(b"tl_malloc_enter", bcc.BPF.KPROBE)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            time.sleep(0.5)
            before = fdinfo(fn.fd)
            time.sleep(args.seconds)
            after = fdinfo(fn.fd)
        finally:
            session.stop()
    finally:
        proc.kill()
        proc.wait()
    calls = after["run_cnt"] - before["run_cnt"]
    return (after["run_time_ns"] - before["run_time_ns"]) / max(calls, 1), calls


def memory(python: str, depth: int, args) -> tuple[int, int, float, int]:
    """(memlock bytes of tl_paths, entries, seconds of one poll, paths in the rows)."""
    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    proc = subprocess.Popen(
        [python, "-c", PATHS_TARGET, str(args.paths)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith("ready")
        session = EbpfSession(
            [proc.pid], Tunables(sample_rate=1, min_size=1000, arenas=False, stack_depth=depth)
        )
        session.start()
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().startswith("done")
            table = session.loader.table("tl_paths")
            memlock = fdinfo(table.map_fd, ("memlock",))["memlock"]
            entries = len(list(table.keys()))
            t0 = time.perf_counter()
            if args.profile:
                import cProfile

                cProfile.runctx("session.poll()", globals(), locals(), sort="cumtime")
            rows = session.poll()
            poll_s = time.perf_counter() - t0
            paths = sum(len(r.stacks or ()) for r in rows)
        finally:
            session.stop()
    finally:
        proc.kill()
        proc.wait()
    return memlock, entries, poll_s, paths


def wall(python: str, depth: int | None, args) -> float:
    """Seconds of bench/workload.py, unattached (depth None) or attached at DEPTH."""
    from bench_ebpf import PY_WORKLOAD, Proc

    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    script = Path(args.tmp) / "workload.py"
    script.write_text(PY_WORKLOAD)
    proc = Proc([python, str(script), str(args.iterations)])
    session = None
    try:
        if depth is not None:
            session = EbpfSession(
                [proc.pid], Tunables(sample_rate=args.sample_rate, min_size=500, stack_depth=depth)
            )
            session.start()
        return proc.run()
    finally:
        if session is not None:
            session.stop()
        proc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", required=True)
    ap.add_argument("--depth", type=int, action="append")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sample-rate", type=int, default=50)
    ap.add_argument("--paths", type=int, default=10000)
    ap.add_argument("--only", choices=("cost", "wall", "memory"))
    ap.add_argument("--iterations", type=int, default=300, help="rounds of bench/workload.py (wall)")
    ap.add_argument("--profile", action="store_true", help="profile the agent's poll (memory)")
    args = ap.parse_args()
    depths = args.depth or [0, 32, 128]
    sys.path.insert(0, str(HERE.parent))
    if args.only in (None, "cost"):
        old = STATS.read_text().strip()
        STATS.write_text("1")
        results: dict[int, list[tuple[float, int]]] = {d: [] for d in depths}
        try:
            for _ in range(args.rounds):
                for d in depths:
                    results[d].append(cost(args.python, d, args))
        finally:
            with contextlib.suppress(OSError):
                STATS.write_text(old)
        print(
            f"tl_malloc_enter, ns per call (median of {args.rounds}, depths interleaved; 4 KiB blocks "
            f"{args.frames} frames deep; sample rate {args.sample_rate})"
        )
        base = statistics.median(r[0] for r in results[depths[0]])
        for d, runs in results.items():
            ns = statistics.median(r[0] for r in runs)
            print(
                f"  depth {d:4d}: {ns:7.0f} ns (x{ns / base:.2f})   "
                f"runs: {', '.join(f'{r[0]:.0f}' for r in runs)}"
                f"   calls {sum(r[1] for r in runs)}"
            )
    if args.only in (None, "wall"):
        import tempfile

        sys.path.insert(0, str(HERE))
        runs: dict[str, list[float]] = {"off": [], **{f"depth {d}": [] for d in depths}}
        with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
            args.tmp = tmp
            for _ in range(args.rounds):
                runs["off"].append(wall(args.python, None, args))
                for d in depths:
                    runs[f"depth {d}"].append(wall(args.python, d, args))
        base = statistics.median(runs["off"])
        print(f"bench/workload.py x{args.iterations}, seconds (median of {args.rounds}, interleaved)")
        for name, vals in runs.items():
            med = statistics.median(vals)
            print(f"  {name:10s} {med:8.3f} x{med / base:.3f}   runs: {', '.join(f'{v:.3f}' for v in vals)}")
    if args.only in (None, "memory"):
        print(f"tl_paths with {args.paths} distinct paths (every allocation sampled)")
        for d in depths:
            if d == 0:
                continue
            memlock, entries, poll_s, paths = memory(args.python, d, args)
            print(
                f"  depth {d:4d}: {entries} entries, memlock {memlock / 2**20:.1f} MiB "
                f"({memlock / max(entries, 1):.0f} B each); one poll {poll_s:.2f} s, "
                f"{paths} paths in the rows"
            )


if __name__ == "__main__":
    main()

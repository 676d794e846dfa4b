#!/usr/bin/env python3
"""Overhead of the preload shim against plain Python and the tools people use instead.

    python bench/run.py [--python PY [--python PY2 ...]] [--workload mixed|small] [--rounds N]
                        [--repeat K] [--long] [--baseline-shim SO] [--no-others] [--pymalloc]

Every configuration runs the same allocation-heavy workload (bench/workload.py: JSON,
dicts, strings, bytearrays; or, --workload small, bench/workload_small.py: small dicts, tuples,
strs kept next to healthy twins, issue 10); runs are interleaved (plain, shim, tracemalloc, memray, ...
then again) so a noisy neighbour slows all of them alike. The workload times itself, so
interpreter start-up is not counted. Prints the median seconds and the ratio to plain.
--measure cpu takes each run's CPU time (user + system, minus a 0-round run of the same
configuration: start-up out) instead of the workload's own wall clock: steadier on a shared
machine. --measure instructions counts instructions under valgrind (callgrind; deterministic,
but blind to cache misses and to what a PGO build loses when an allocator is wrapped; use few
--rounds, --repeat 1). memray under valgrind is skipped.
--long also runs 4x the rounds in exhaustive mode: its ratio must not grow with run length.
Several --python: every configuration of every interpreter in one interleaved loop (a GIL build
against a free-threaded one of the same minor, say), each against its own plain.
--baseline-shim SO adds the same two shim configurations with another build (say, the last
release's: `git worktree add /tmp/old v1 && cc ...`) to compare before/after in one interleaved run.
Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = {"mixed": HERE / "workload.py", "small": HERE / "workload_small.py"}
WORKLOAD = WORKLOADS["mixed"]


def shim_path() -> str:
    env = os.environ.get("TRACKLEAK_SO")
    if env:
        return env
    sys.path.insert(0, str(HERE.parent))
    from trackleak.shim import shim_path as find  # type: ignore

    return str(find())


def configs(
    py: str,
    shim: str,
    logdir: str,
    baseline: str | None = None,
    others: bool = True,
    pymalloc: bool = False,
) -> dict[str, tuple[list[str], dict[str, str]]]:
    base = {"TRACKLEAK_QUIET": "1", "TRACKLEAK_LOG_DIR": logdir, "TRACKLEAK_STARTUP_DELAY": "0"}
    pre = {"LD_PRELOAD": shim, **base}
    exhaustive = {"TRACKLEAK_SAMPLE_RATE": "1", "TRACKLEAK_MIN_SIZE": "0"}
    out = {
        "plain": ([py], {}),
        "trackleak (defaults)": ([py], pre),
        # 3.13+: what the defaults do already; 3.9-3.12: pymalloc wrapped and sampled (objects.c)
        "trackleak TRACKLEAK_SMALL_OBJECTS=1": ([py], {**pre, "TRACKLEAK_SMALL_OBJECTS": "1"}),
        "trackleak TRACKLEAK_SMALL_OBJECTS=0": ([py], {**pre, "TRACKLEAK_SMALL_OBJECTS": "0"}),
        "trackleak exhaustive": ([py], {**pre, **exhaustive}),
    }
    if pymalloc:
        # the mem/object domains wrapped too: what a free-threaded build always gets (mimalloc
        # serves them at every size), so its cost can be set against a GIL build's
        out["trackleak pymalloc wrapped"] = ([py], {**pre, "TRACKLEAK_PYMALLOC": "1"})
    if baseline:
        old = {"LD_PRELOAD": baseline, **base}
        out["baseline shim (defaults)"] = ([py], old)
        out["baseline shim exhaustive"] = ([py], {**old, **exhaustive})
    if not others:
        return out
    out["tracemalloc"] = ([py, "-X", "tracemalloc"], {})
    has_memray = subprocess.run([py, "-c", "import memray"], capture_output=True).returncode == 0
    if has_memray:
        out["memray run"] = ([py, "-m", "memray", "run", "-q", "-f", "-o", os.path.join(logdir, "m.bin")], {})
        mbin = os.path.join(logdir, "m.bin")
        out["memray run --trace-python-allocators"] = (
            [py, "-m", "memray", "run", "-q", "-f", "--trace-python-allocators", "-o", mbin],
            {},
        )
        out["memray --native --trace-python-allocators"] = (
            [
                py,
                "-m",
                "memray",
                "run",
                "-q",
                "-f",
                "--native",
                "--trace-python-allocators",
                "-o",
                os.path.join(logdir, "m.bin"),
            ],
            {},
        )
    else:
        print(f"(memray is not installed for {py}: pip install memray to compare)", file=sys.stderr)
    return out


MEASURE = "wall"


def _run(argv: list[str], env: dict[str, str], rounds: int) -> float:
    full_env = {**os.environ, **env}
    if "LD_PRELOAD" not in env:
        full_env.pop("LD_PRELOAD", None)
    cmd = [*argv, str(WORKLOAD), str(rounds)]
    if MEASURE == "instructions":
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd]
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    # (the child is reaped by communicate; its CPU time is in RUSAGE_CHILDREN: take the delta)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err[-2000:]}")
    if MEASURE == "instructions":
        return float(err.split("Collected : ")[1].split()[0])
    return float(out.strip().splitlines()[-1])


def run_once(argv: list[str], env: dict[str, str], rounds: int) -> float:
    if MEASURE != "cpu":
        if MEASURE == "instructions":
            return _run(argv, env, rounds) - _run(argv, env, 0)
        return _run(argv, env, rounds)

    def cpu(n: int) -> float:
        before = os.times()
        _run(argv, env, n)
        after = os.times()
        return (after.children_user - before.children_user) + (after.children_system - before.children_system)

    return cpu(rounds) - cpu(0)


def measure(cfgs, rounds: int, repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in cfgs}
    for _ in range(repeat):
        for name, (argv, env) in cfgs.items():
            if MEASURE == "instructions" and "memray" in name:
                continue
            times[name].append(run_once(argv, env, rounds))
    return {name: statistics.median(v) for name, v in times.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--python",
        action="append",
        help="interpreter to measure (default: this one); several: measured in one interleaved loop",
    )
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="mixed")
    ap.add_argument("--measure", choices=("wall", "cpu", "instructions"), default="wall")
    ap.add_argument("--rounds", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--long", action="store_true", help="also run exhaustive mode at 4x the rounds")
    ap.add_argument("--baseline-shim", help="another trackleak.so to compare against, interleaved")
    ap.add_argument("--no-others", action="store_true", help="skip tracemalloc and memray")
    ap.add_argument(
        "--pymalloc", action="store_true", help="also with TRACKLEAK_PYMALLOC=1 (mem/object domains wrapped)"
    )
    args = ap.parse_args()
    global WORKLOAD, MEASURE
    WORKLOAD = WORKLOADS[args.workload]
    MEASURE = args.measure
    shim = shim_path()
    logdir = tempfile.mkdtemp(prefix="trackleak-bench-")
    try:
        pythons = args.python or [sys.executable]
        cfgs = {}  # "PY\tconfiguration" -> (argv, env): all interpreters in one loop
        for py in pythons:
            for name, cfg in configs(
                py, shim, logdir, args.baseline_shim, not args.no_others, args.pymalloc
            ).items():
                cfgs[f"{py}\t{name}"] = cfg
        med = measure(cfgs, args.rounds, args.repeat)
        for py in pythons:
            plain = med[f"{py}\tplain"]
            print(
                f"python: {py}  workload: {args.workload}  rounds: {args.rounds}  "
                f"repeat: {args.repeat} (interleaved, median; {args.measure})"
            )
            unit = "instr." if args.measure == "instructions" else "seconds"
            print(f"{'configuration':45s} {unit:>8s} {'x plain':>8s}")
            for key, t in med.items():
                owner, name = key.split("\t", 1)
                if owner != py:
                    continue
                value = f"{t / 1e6:7.0f}M" if args.measure == "instructions" else f"{t:8.3f}"
                print(f"{name:45s} {value} {t / plain:8.3f}")
        if args.long:
            for py in pythons:
                long_cfgs = {k: cfgs[f"{py}\t{k}"] for k in ("plain", "trackleak exhaustive")}
                lmed = measure(long_cfgs, args.rounds * 4, max(3, args.repeat // 2))
                ratio = lmed["trackleak exhaustive"] / lmed["plain"]
                short = med[f"{py}\ttrackleak exhaustive"] / med[f"{py}\tplain"]
                print(
                    f"{py}: exhaustive at {args.rounds * 4} rounds: {ratio:.2f} x plain "
                    f"(vs {short:.2f} at {args.rounds})"
                )

    finally:
        shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    main()

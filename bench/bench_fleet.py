# SPDX-License-Identifier: MIT
"""Host agent cost (a benchmark, not a test): agent CPU % and RSS with N watched processes (half
started with the shim, half plain: eBPF), and the targets' slowdown under the duty cycle.

    sudo .venv/bin/python bench/bench_fleet.py [--procs 20] [--seconds 120] [--window 10 --period 60]

Each target runs an allocation-bound loop (bytearray(1024..8192), freed at once, a few kept) and
counts its iterations. Phase 1: the targets alone for SECONDS; phase 2: the same with
`trackleak-agent` (host agent, --cmdline filter on the bench's tag) running. Slowdown = ops/s
alone / ops/s watched, per route, averaged over the targets (so it includes the attached windows
and the detached rest of each period). Agent CPU % = its CPU seconds / wall seconds (of one core).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

TARGET = r"""
import sys, time
out, seconds = sys.argv[1], float(sys.argv[2])
kept = []
n = 0
print("ready", flush=True)
sys.stdin.readline()
end = time.time() + seconds
while time.time() < end:
    for i in range(1000):
        b = bytearray(1024 + (i % 8) * 1024)
        if i == 0 and len(kept) < 2000:
            kept.append(b)
    n += 1000
open(out, "w").write(str(n / seconds))
"""


def run_targets(tmp: Path, n: int, seconds: float, shim: str, tag: str, agent_args: list[str] | None):
    script = tmp / f"{tag}.py"
    script.write_text(TARGET)
    procs = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRACKLEAK_") and k != "LD_PRELOAD"}
    for i in range(n):
        env = dict(base)
        if i % 2 == 0:
            env.update(
                LD_PRELOAD=shim, TRACKLEAK_STARTUP_DELAY="0", TRACKLEAK_QUIET="1", TRACKLEAK_LOG_DIR=str(tmp)
            )
        out = tmp / f"{tag}-{i}.out"
        p = subprocess.Popen(
            [sys.executable, str(script), str(out), str(seconds), tag],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert p.stdout.readline().startswith("ready")
        procs.append((p, out, "preload" if i % 2 == 0 else "ebpf"))
    agent = cpu = rss = None
    if agent_args is not None:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from trackleak.cli.commands.agent import main; main()",
                "--cmdline",
                tag,
                "--no-live",
                "-q",
                *agent_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ap = psutil.Process(agent.pid)
        time.sleep(8)  # discovery + BPF compile before the clock starts
        c0 = sum(ap.cpu_times()[:2])
    t0 = time.time()
    for p, _, _ in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    rss = 0
    while any(p.poll() is None for p, _, _ in procs):
        if agent is not None:
            rss = max(rss, ap.memory_info().rss)
        time.sleep(0.5)
    wall = time.time() - t0
    if agent is not None:
        cpu = (sum(ap.cpu_times()[:2]) - c0) / wall * 100
        agent.terminate()
        agent.wait(timeout=60)
    rates = {"preload": [], "ebpf": []}
    for _p, out, route in procs:
        rates[route].append(float(out.read_text()))
    return rates, cpu, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--period", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=5.0)
    args = ap.parse_args()
    shim = subprocess.run(
        [sys.executable, "-c", "from trackleak.shim import shim_path; print(shim_path())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tag = f"benchfleet{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        alone, _, _ = run_targets(tmp, args.procs, args.seconds, shim, tag, None)
        watched, cpu, rss = run_targets(
            tmp,
            args.procs,
            args.seconds,
            shim,
            tag,
            [
                "--interval",
                str(args.interval),
                "--ebpf-window",
                str(args.window),
                "--ebpf-period",
                str(args.period),
            ],
        )
    print(
        f"{args.procs} targets ({args.procs // 2} shim, {args.procs - args.procs // 2} eBPF), "
        f"{args.seconds:g}s, duty cycle {args.window:g}s/{args.period:g}s, interval {args.interval:g}s"
    )
    print(f"agent: CPU {cpu:.1f} % of one core, max RSS {rss / 2**20:.1f} MiB")
    for route in ("preload", "ebpf"):
        a, w = statistics.mean(alone[route]), statistics.mean(watched[route])
        print(f"{route:8s} targets: {a:,.0f} ops/s alone, {w:,.0f} watched: slowdown x{a / w:.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Memory the shim's call stacks take with many distinct call paths (issue 9).

    python bench/stack_memory.py [--python PY] [--paths 10000] [--depth 32]

Runs a program under the shim (every allocation sampled, so each path is recorded) whose
PATHS generated functions each keep one 4 KiB buffer through one library function, then reads its
table (trackleak.sources.shm) and /proc/PID/smaps: the frame and path records in use, their
bytes by the layout, and the resident bytes of the shared segment against a run with
TRACKLEAK_STACK_DEPTH=0. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROGRAM = r"""
import json, os, sys
sys.path.insert(0, {repo!r})
KEPT = []
def keep(n):
    KEPT.append(bytearray(n))
def outer(f):
    f()
fns = []
for k in range({paths}):
    ns = {{"keep": keep}}
    exec(f"def caller_{{k}}():\n    keep(4096)\n", ns)
    fns.append(ns[f"caller_{{k}}"])
for f in fns:
    outer(f)
from trackleak.sources import shm
snap = shm.read_snapshot(os.getpid())
h = snap.header
rss = 0
with open("/proc/self/smaps") as fh:
    inside = False
    for line in fh:
        if "-" in line.split(" ")[0] and len(line.split()) >= 5:
            inside = "memfd:trackleak" in line
        elif inside and line.startswith("Rss:"):
            rss += int(line.split()[1]) * 1024
print(json.dumps({{"frames": h.frame_count, "stacks": h.stack_count, "frame_capacity": h.frame_capacity,
                  "stack_capacity": h.stack_capacity, "stack_size": h.stack_size,
                  "dropped": h.dropped_stacks, "segment_rss": rss,
                  "paths_in_rows": sum(len(r.stacks or []) for r in snap.rows)}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--paths", type=int, default=10000)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--max-stacks", type=int, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from trackleak import layout as L
    from trackleak.shim import shim_path

    so = os.environ.get("TRACKLEAK_SO") or str(shim_path())
    with tempfile.TemporaryDirectory() as tmp:
        prog = Path(tmp) / "paths.py"
        prog.write_text(PROGRAM.format(repo=str(HERE.parent.parent), paths=args.paths))
        results = {}
        for depth in (0, args.depth):
            env = {
                **os.environ,
                "LD_PRELOAD": so,
                "TRACKLEAK_QUIET": "1",
                "TRACKLEAK_LOG_DIR": tmp,
                "TRACKLEAK_STARTUP_DELAY": "0",
                "TRACKLEAK_SAMPLE_RATE": "1",
                "TRACKLEAK_STACK_DEPTH": str(depth),
            }
            if args.max_stacks:
                env["TRACKLEAK_MAX_STACKS"] = str(args.max_stacks)
            out = subprocess.run(
                [args.python, str(prog)], env=env, capture_output=True, text=True, check=True
            )
            results[depth] = json.loads(out.stdout.strip().splitlines()[-1])
    on, off = results[args.depth], results[0]
    used = on["frames"] * L.FRAME_SIZE + on["stacks"] * on["stack_size"]
    reserved = on["frame_capacity"] * L.FRAME_SIZE + on["stack_capacity"] * on["stack_size"]
    print(f"python {args.python}, {args.paths} generated call paths, depth {args.depth}")
    print(
        f"frame records {on['frames']} of {on['frame_capacity']} ({L.FRAME_SIZE} B each), "
        f"path records {on['stacks']} of {on['stack_capacity']} ({on['stack_size']} B each), "
        f"dropped {on['dropped']}, paths on rows {on['paths_in_rows']}"
    )
    print(
        f"records in use: {used / 2**20:.2f} MiB; "
        f"reserved (memfd size, untouched pages free): {reserved / 2**20:.2f} MiB"
    )
    print(
        f"segment resident: {on['segment_rss'] / 2**20:.2f} MiB with stacks, "
        f"{off['segment_rss'] / 2**20:.2f} MiB at depth 0 "
        f"(+{(on['segment_rss'] - off['segment_rss']) / 2**20:.2f} MiB)"
    )


if __name__ == "__main__":
    main()

# SPDX-License-Identifier: MIT
"""What the attach route's arena method finds against the shim with --min-size 0 (issue 10).

The workloads are tests/integration/test_ebpf_arenas.py's (each pattern in five chunks, each leak
keeping >= 50 MiB of small objects beside its healthy twin). For every pattern and line: the live
MiB the shim (`trackleak run --min-size 0`, pymalloc wrapped, default sampling) and the eBPF agent
(arena probes, default sampling) put there, and the line's rank among the Python rows.

    sudo .venv/bin/python bench/compare_arenas.py [--python PATH ...] [--patterns sep_dict,alt_dict]
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
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE.parent / "tests"))

from helpers import line_of  # noqa: E402
from test_ebpf_arenas import CHUNKS, PATTERNS, WORKLOAD  # noqa: E402

from trackleak.table import Row, leak_order  # noqa: E402

MIB = 1 << 20


def shim_rows(python: str, script: Path, pattern: str, n: int, tmp: Path) -> list[Row]:
    out = tmp / f"shim-{pattern}.json"
    subprocess.run(
        [str(HERE.parent / ".venv" / "bin" / "trackleak"), "run", "--min-size", "0", "-q", "--json", str(out),
         "--python", python, str(script), pattern, str(n)],
        input="go\n" * CHUNKS, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    sites = json.loads(out.read_text())["sites"]
    fields = set(Row.__dataclass_fields__)
    return [Row(**{k: v for k, v in s.items() if k in fields}) for s in sites]


def ebpf_rows(python: str, script: Path, pattern: str, n: int) -> list[Row]:
    from ebpf_support import Target

    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    target = Target([python, str(script), pattern, str(n)])
    session = EbpfSession([target.pid], Tunables(sample_rate=50, min_size=500))
    session.start()
    try:
        for _ in range(CHUNKS):
            target.say("go")
            target.wait_done()
            session.poll()
        return list(session.pid_rows())
    finally:
        session.stop()
        target.finish()


def at(rows: list[Row], script: Path, line: int) -> tuple[float, str]:
    python_rows = [r for r in sorted(rows, key=leak_order) if not r.native]
    for rank, r in enumerate(python_rows, 1):
        if r.file.endswith(script.name) and r.line == line:
            return r.live_bytes / MIB, f"#{rank}"
    return 0.0, "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", help="interpreter (repeatable; default: this one)")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("compare_arenas: needs root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tl-arenas-") as tmp_s:
        tmp = Path(tmp_s)
        script = tmp / "arena_workload.py"
        script.write_text(WORKLOAD)
        for python in args.python or [sys.executable]:
            print(
                f"\n{python}: live MiB at the line (rank among Python rows), shim --min-size 0 | eBPF arenas"
            )
            print(f"  {'pattern':11s} {'line':16s} {'shim':>14s} {'arenas':>14s}")
            for pattern in args.patterns.split(","):
                n, pairs = PATTERNS[pattern]
                shim = shim_rows(python, script, pattern, n, tmp)
                ebpf = ebpf_rows(python, script, pattern, n)
                for leak, twin in pairs:
                    for marker in (leak, twin):
                        if marker is None:
                            continue
                        line = line_of(script, marker)
                        s_mib, s_rank = at(shim, script, line)
                        e_mib, e_rank = at(ebpf, script, line)
                        shim_col, ebpf_col = f"{s_mib:8.1f} {s_rank:>5s}", f"{e_mib:8.1f} {e_rank:>5s}"
                        print(f"  {pattern:11s} {marker:16s} {shim_col} {ebpf_col}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

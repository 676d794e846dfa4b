# SPDX-License-Identifier: MIT
"""What closing a duty-cycle window costs: the time to detach (and attach again) one target's
uprobes (a benchmark, not a test; root, bcc).

The host agent's duty cycle detaches every target at the end of each window
(trackleak.fleet.routes). The kernel removes a perf-event uprobe under a global mutex and waits for
a grace period each time, so the time grows with the number of probes and of targets. Printed:
the median over ``--rounds`` of one target's detach and attach, in seconds, with the probe count.

    sudo .venv/bin/python bench/bench_ebpf_detach.py [--python PY] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TARGET = "import time\nwhile True:\n    x = [bytearray(1000) for _ in range(100)]\n    time.sleep(0.001)\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="the target's interpreter")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from trackleak.ebpf.loader import Tunables
    from trackleak.ebpf.session import EbpfSession

    target = subprocess.Popen([args.python, "-c", TARGET])
    try:
        time.sleep(0.5)
        session = EbpfSession([target.pid], Tunables())
        session.start()
        detach, attach, probes = [], [], 0
        try:
            for _ in range(args.rounds):
                probes = len(session.loader.probes)
                t0 = time.monotonic()
                session.loader.detach_pid(target.pid)
                detach.append(time.monotonic() - t0)
                t0 = time.monotonic()
                session.attach_probes(target.pid)
                attach.append(time.monotonic() - t0)
        finally:
            session.stop()
    finally:
        target.kill()
        target.wait()
    d, a = statistics.median(detach), statistics.median(attach)
    print(f"{probes} probes: detach {d:.3f} s ({d / probes * 1000:.0f} ms a probe), attach {a:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

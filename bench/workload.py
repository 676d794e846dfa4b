"""Allocation-heavy Python workload for overhead benchmarks: JSON, dicts, strings, bytearrays.

Deterministic; prints the elapsed seconds of the measured part on stdout.
"""

import json
import sys
import time


def work(rounds: int) -> int:
    total = 0
    keep = []
    for r in range(rounds):
        doc = {
            f"key{i}": {"id": i, "name": f"user-{i}-{r}", "tags": [str(i), "x" * (i % 40)]}
            for i in range(200)
        }
        text = json.dumps(doc)
        back = json.loads(text)
        total += len(back)
        parts = [f"{k}={v['id']}" for k, v in back.items()]
        total += len(",".join(parts))
        buf = bytearray()
        for i in range(100):
            buf.extend(b"abcdefgh" * (i % 16 + 1))
        total += len(buf)
        if r % 50 == 0:
            keep.append(text[:1000])
    return total + len(keep)


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    t0 = time.perf_counter()
    work(rounds)
    print(f"{time.perf_counter() - t0:.4f}")

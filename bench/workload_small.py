"""Small-object workload for overhead benchmarks (issue 10): the commonest leak, a global list that
keeps one small dict in ten, next to healthy twins that build and drop small dicts, tuples, strs,
ints and floats (all well under pymalloc's 512 bytes, so freelists and pymalloc serve them).

Deterministic; prints the elapsed seconds of the measured part on stdout.
"""

import sys
import time

KEEP = []


def work(rounds: int) -> int:
    total = 0
    for r in range(rounds):
        for i in range(1000):
            d = {"id": i, "round": r}  # healthy twin: built and dropped
            t = (i, r, i * 0.5)
            s = f"item-{i}-{r}"
            total += len(d) + len(t) + len(s) + (i * 7919) % 13
            if i % 10 == 0:
                KEEP.append({"id": i, "round": r})  # the leak
    return total + len(KEEP)


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    t0 = time.perf_counter()
    work(rounds)
    print(f"{time.perf_counter() - t0:.4f}")

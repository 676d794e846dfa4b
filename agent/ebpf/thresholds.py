# SPDX-License-Identifier: MIT
"""p(s) for the BPF program: trackleak.sampling's byte-weighted sampling in integer arithmetic.

BPF has no floating point, so the agent computes, before attaching, a table the program indexes by
the allocation's size in units of R/STEPS (R: the sampling interval, trackleak.sampling):

    i     = (s * MULT) >> 32                      MULT = floor(STEPS * 2^32 / R): i ~ s / R * STEPS
    thr   = (s * SLOPE[i] + 2^(SHIFT-1)) >> SHIFT SLOPE[i] = g(x_i) / R * 2^(32 + SHIFT)
    sampled  iff  bpf_get_prandom_u32() < thr     so P(sampled) = thr / 2^32

with g(x) = p(x R) / x = (1 - e^-x) / x taken at the middle of bucket i. The table holds the
*slope* p(s)/s rather than p(s) itself: g is smooth and near 1 for small x, so the small-s regime is
exactly linear (p ~ s/R, no step at all) and the relative error of p is at most about
1 / (4 STEPS) everywhere (0.1 % with STEPS = 256; checked by tests/unit/test_ebpf_thresholds.py).
Sizes of at least MAX_X * R (1 - e^-23 rounds to 1 in 32 bits) are always sampled, with no lookup.
R = 0 (``TRACKLEAK_SAMPLE_RATE=1``) compiles the table away: every allocation is sampled.

The weights a sample carries (Horvitz-Thompson, trackleak.sampling) are computed by the program
from the threshold it actually used, so the estimate is unbiased for the probability applied, not
only for the ideal p(s):

    w_count = (COUNT_ONE * 2^32 + thr / 2) / thr  (allocations, in COUNT_ONE units, rounded)
    w_bytes = s * 2^32 / thr                      (bytes; exact long division)

``ThresholdTable.threshold`` and ``weights`` are this arithmetic in Python, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trackleak.sampling import COUNT_ONE

STEPS = 256  # buckets per interval R
MAX_X = 23  # s >= MAX_X * R: always sampled (p = 1 - 1e-10)
SHIFT = 24  # fixed point of the slopes
ONE = 1 << 32  # probability 1 as a threshold


def _g(x: float) -> float:
    """p(x R) / x: 1 at x = 0, then down like 1/x."""
    return 1.0 if x == 0 else -math.expm1(-x) / x


@dataclass(frozen=True)
class ThresholdTable:
    interval: int  # R in bytes; 0: every allocation sampled
    mult: int = 0
    max_bytes: int = 0
    slopes: tuple[int, ...] = ()

    @classmethod
    def build(cls, interval: int) -> ThresholdTable:
        if interval <= 0:
            return cls(0)
        mult = (STEPS << 32) // interval
        scale = float(1 << (32 + SHIFT)) / interval
        slopes = tuple(round(_g((i + 0.5) / STEPS) * scale) for i in range(MAX_X * STEPS))
        return cls(interval, mult, MAX_X * interval, slopes)

    @property
    def sample_all(self) -> bool:
        return self.interval <= 0

    def index(self, size: int) -> int:
        return (size * self.mult) >> 32

    def threshold(self, size: int) -> int:
        """The program's threshold for SIZE: sampled when a random u32 is below it."""
        if self.sample_all or size >= self.max_bytes:
            return ONE
        i = self.index(size)
        if i >= len(self.slopes):  # cannot happen (size < max_bytes); the program checks too
            return ONE
        return min(ONE, (size * self.slopes[i] + (1 << (SHIFT - 1))) >> SHIFT)

    def probability(self, size: int) -> float:
        return self.threshold(size) / ONE

    def weights(self, size: int) -> tuple[int, int]:
        """(count weight in COUNT_ONE units, byte weight) of a sample of SIZE, as the program
        computes them; (0, 0) when SIZE is never sampled."""
        thr = self.threshold(size)
        if thr >= ONE:
            return COUNT_ONE, size
        if thr == 0:
            return 0, 0
        return ((COUNT_ONE << 32) + thr // 2) // thr, ((size // thr) << 32) + (((size % thr) << 32) // thr)

    def cflags(self) -> list[str]:
        """The -D flags of bpf/alloc_probes.bpf.c; the slopes go into the tl_pslope map."""
        if self.sample_all:
            return ["-DTL_SAMPLE_ALL=1", "-DTL_P_LEN=1"]
        return [
            "-DTL_SAMPLE_ALL=0",
            f"-DTL_P_LEN={len(self.slopes)}",
            f"-DTL_P_MULT={self.mult}ULL",
            f"-DTL_P_MAX_BYTES={self.max_bytes}ULL",
            f"-DTL_P_SHIFT={SHIFT}",
            f"-DTL_COUNT_ONE={COUNT_ONE}",
        ]

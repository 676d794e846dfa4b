# SPDX-License-Identifier: MIT
"""How both routes sample allocations, and how a row's estimates follow from its samples.

One meaning in both routes (the shim in preload/src/recorder.c, the BPF program in
bpf/alloc_probes.bpf.c): **byte-weighted Poisson sampling**. Allocated bytes are a stream; sample
points fall on it at random with exponential gaps of mean ``R`` bytes (the *sampling interval*). An
allocation of ``s`` bytes is sampled when a sample point falls inside it, which happens with
probability

    p(s) = 1 - exp(-s / R)

whatever came before it (the exponential distribution has no memory): no pattern of interleaved
sites can starve one of samples, and an allocation much larger than R is sampled almost surely.
The shim draws the gaps per thread (one subtraction and a branch per allocation); the BPF program
draws each allocation independently with ``bpf_get_prandom_u32`` against the same p(s). Both give
every allocation the same chance, so their estimates mean the same.

``R`` comes from ``TRACKLEAK_SAMPLE_RATE`` (N, default 50): R = N KiB, i.e. a 1 KiB allocation is
sampled about 1 time in N, as the original's "1 in N" did for the typical tracked allocation, and
``N = 1`` means exhaustive (R = 0: every allocation sampled, weight 1). ``TRACKLEAK_SAMPLE_BYTES``
sets R directly.

Estimator (Horvitz-Thompson): a sampled allocation of s bytes stands for 1/p(s) allocations and
s/p(s) bytes. A site's live bytes (``live_bytes``) are the sum of s/p(s) over its samples not yet
freed; ``live_count`` the sum of 1/p(s). Both are unbiased; the variance of ``live_bytes`` is
sum(s^2 (1 - p) / p^2) over the live samples, about ``R * live_bytes`` when allocations are small
next to R, so the relative standard error is about sqrt(R / live_bytes): 7 % at 10 MiB live and
the default R = 50 KiB, 2 % at 100 MiB; allocations larger than a few R are known exactly.
``count`` and ``total_bytes`` are not estimated: every tracked allocation is counted.
"""

from __future__ import annotations

import math

KIB = 1024
DEFAULT_SAMPLE_RATE = 50
DEFAULT_MIN_SIZE = 500
# Count weights are stored in fixed point (1/p(s) is fractional): this many units per allocation.
COUNT_ONE = 1024


def interval_bytes(sample_rate: int, sample_bytes: int | None = None) -> int:
    """The mean sampling interval R in bytes; 0 means every allocation is sampled."""
    if sample_bytes is not None and sample_bytes > 0:
        return int(sample_bytes)
    if sample_rate <= 1:
        return 0
    return int(sample_rate) * KIB


def probability(size: int, interval: int) -> float:
    """p(s): the chance that an allocation of SIZE bytes is sampled."""
    if interval <= 0:
        return 1.0
    if size <= 0:
        return 0.0
    return -math.expm1(-size / interval)


def byte_weight(size: int, interval: int) -> float:
    """Bytes one sampled allocation of SIZE stands for: s / p(s)."""
    p = probability(size, interval)
    return size / p if p > 0 else 0.0


def count_weight(size: int, interval: int) -> float:
    """Allocations one sampled allocation of SIZE stands for: 1 / p(s)."""
    p = probability(size, interval)
    return 1.0 / p if p > 0 else 0.0


def live_bytes_stderr(live_bytes: float, interval: int) -> float:
    """About one standard error of a live-bytes estimate made of small allocations."""
    if interval <= 0 or live_bytes <= 0:
        return 0.0
    return math.sqrt(interval * live_bytes)

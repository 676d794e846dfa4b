# SPDX-License-Identifier: MIT
"""The BPF program's p(s) (agent/ebpf/thresholds.py) against trackleak.sampling (no root needed)."""

from __future__ import annotations

import random

import pytest

from trackleak import sampling
from trackleak.ebpf.thresholds import MAX_X, ONE, SHIFT, STEPS, ThresholdTable

INTERVALS = (1, 7, 5 * 1024, 50 * 1024, 1 << 20, 64 << 20)
REL_ERROR = 1.0 / (4 * STEPS)  # the documented bound: half a bucket of a slope that moves <= x/2


def _sizes(interval: int, n: int = 4000) -> list[int]:
    rng = random.Random(interval)
    small = list(range(1, min(interval, 2000)))  # the linear regime, every size
    spread = [rng.randrange(1, MAX_X * interval + 2) for _ in range(n)]
    log = [int(interval * 2 ** rng.uniform(-12, 5)) + 1 for _ in range(n)]
    return small + spread + log


@pytest.mark.parametrize("interval", INTERVALS)
def test_probability_matches_sampling_within_the_bound(interval):
    table = ThresholdTable.build(interval)
    for s in _sizes(interval):
        p, q = sampling.probability(s, interval), table.probability(s)
        # rounding a threshold to an integer is worth 0.5 / 2^32 more
        assert abs(q - p) <= p * REL_ERROR + 0.5 / ONE + 1e-15, (interval, s, p, q)


@pytest.mark.parametrize("interval", [i for i in INTERVALS if i >= 1024])
def test_linear_regime_has_no_steps(interval):
    # GIVEN sizes far below R: p(s) ~ s / R, so a threshold is in proportion to the size, within
    # the rounding of one threshold (a table of p itself would give one value per bucket)
    table = ThresholdTable.build(interval)
    for s in range(1, interval // 1000):
        assert abs(table.threshold(2 * s) - 2 * table.threshold(s)) <= 2 + table.threshold(s) * REL_ERROR
        assert (
            abs(table.threshold(s + 1) - table.threshold(s) - ONE / interval)
            <= 1 + ONE / interval * REL_ERROR
        )


@pytest.mark.parametrize("interval", INTERVALS)
def test_big_allocations_are_always_sampled(interval):
    table = ThresholdTable.build(interval)
    assert table.max_bytes == MAX_X * interval
    for s in (table.max_bytes, table.max_bytes + 1, 10 * table.max_bytes):
        assert table.threshold(s) == ONE and table.weights(s) == (sampling.COUNT_ONE, s)
    # just below, p is 1 within the table's bound: no gap at the switch
    assert table.threshold(table.max_bytes - 1) >= ONE * (1 - REL_ERROR)


@pytest.mark.parametrize("interval", INTERVALS)
def test_weights_are_the_inverse_of_the_probability_applied(interval):
    # Horvitz-Thompson: E[weight x sampled] = weight x thr / 2^32 must be one allocation and s bytes
    table = ThresholdTable.build(interval)
    for s in _sizes(interval, 500):
        thr = table.threshold(s)
        w_count, w_bytes = table.weights(s)
        if thr == 0:
            assert (w_count, w_bytes) == (0, 0)
            continue
        assert w_bytes == s * ONE // thr  # exact long division, whatever the size
        assert abs(w_count * thr / ONE - sampling.COUNT_ONE) <= thr / ONE
        assert abs(w_bytes * thr / ONE - s) <= thr / ONE
        # and close to trackleak.sampling's weights (the ideal p)
        ideal = sampling.byte_weight(s, interval)
        assert abs(w_bytes - ideal) <= ideal * (REL_ERROR + 1 / thr) + 1


def test_integer_ranges_fit_the_program():
    # The program computes (s * MULT) >> 32 and s * slope + 2^(SHIFT-1) in u64 for s < max_bytes.
    for interval in (*INTERVALS, 1 << 40):
        table = ThresholdTable.build(interval)
        top = table.max_bytes - 1
        assert top * table.mult < 1 << 64
        assert top * max(table.slopes) + (1 << (SHIFT - 1)) < 1 << 64
        assert table.index(top) < len(table.slopes)  # never past the map
        assert ((sampling.COUNT_ONE << 32) + ONE) < 1 << 64


def test_exhaustive_mode_compiles_the_table_away():
    table = ThresholdTable.build(sampling.interval_bytes(1))
    assert table.sample_all and table.slopes == ()
    assert "-DTL_SAMPLE_ALL=1" in table.cflags()
    assert table.probability(500) == 1.0 and table.weights(777) == (sampling.COUNT_ONE, 777)


def test_cflags_describe_the_table():
    table = ThresholdTable.build(50 * 1024)
    flags = table.cflags()
    assert "-DTL_SAMPLE_ALL=0" in flags
    assert f"-DTL_P_LEN={MAX_X * STEPS}" in flags
    assert f"-DTL_P_MULT={table.mult}ULL" in flags and f"-DTL_P_MAX_BYTES={table.max_bytes}ULL" in flags
    assert f"-DTL_COUNT_ONE={sampling.COUNT_ONE}" in flags


def test_tunables_pass_thresholds_and_limits(monkeypatch):
    from trackleak.ebpf import btf
    from trackleak.ebpf.loader import AttachError, Tunables

    monkeypatch.setattr(btf, "task_fsbase_offset", lambda: 1234)
    flags = Tunables(sample_rate=50, min_size=500, limits={"TL_MAX_SITES": 64}).cflags()
    assert "-DTL_MAX_SITES=64" in flags and "-DTL_SAMPLE_ALL=0" in flags and "-DTL_MIN_SIZE=500" in flags
    assert Tunables(sample_rate=50, sample_bytes=4096).interval == 4096
    assert "-DTL_SAMPLE_ALL=1" in Tunables(sample_rate=1).cflags()
    with pytest.raises(AttachError):
        Tunables(limits={"TL_MAX_NONSENSE": 1}).cflags()

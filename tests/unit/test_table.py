# SPDX-License-Identifier: MIT
"""The retention math and merging (agent/table.py): one definition used by every source and sink."""

from __future__ import annotations

import pytest

from trackleak.table import FIELDS, RetentionTable, Row, retention_pct, sorted_rows


def row(**kw) -> Row:
    base = dict(
        function="f",
        file="a.py",
        line=1,
        count=1,
        total_bytes=1000,
        sample_count=1,
        sample_total_bytes=1000,
        sample_free_bytes=0,
        peak_single=1000,
        pid=1,
    )
    base.update(kw)
    if "live_bytes" not in kw:  # consistent with the samples: total x sampled share kept
        st, sf = base["sample_total_bytes"], base["sample_free_bytes"]
        base["live_bytes"] = base["total_bytes"] * (st - min(sf, st)) // st if st else 0
    return Row(**base)


def test_retention_is_none_without_samples():
    # The original printed 0% here, which reads as healthy.
    assert retention_pct(0, 0, 0) is None
    assert row(sample_count=0, sample_total_bytes=0).retention_pct is None
    assert retention_pct(100, 0, 0) is None


@pytest.mark.parametrize(
    ("total", "freed", "expected"),
    [(1000, 0, 100.0), (1000, 1000, 0.0), (1000, 250, 75.0), (1000, 5000, 0.0), (3, 1, 66.7)],
)
def test_retention_is_clamped_and_rounded(total, freed, expected):
    assert retention_pct(total, freed, 1) == expected


def test_avg_size_and_dict_fields():
    r = row(count=3, total_bytes=1000)
    assert r.avg_size == 333
    d = r.to_dict()
    assert tuple(d) == FIELDS
    assert d["retention_pct"] == 100.0 and d["source"] == "preload"
    assert row(count=0, total_bytes=0).avg_size == 0


def test_from_dict_validates_and_overrides_pid_source():
    r = Row.from_dict({"function": "g", "file": "b.py", "line": 2, "count": 1}, source="ebpf", pid=9)
    assert (r.source, r.pid, r.line) == ("ebpf", 9, 2)
    for bad in ({"count": -1}, {"line": "3"}, {"function": 1}, {"count": True}):
        with pytest.raises(ValueError):
            Row.from_dict({"function": "g", "file": "b.py", **bad})


def test_merge_same_site_same_pid_adds_and_takes_max_peak():
    tab = RetentionTable()
    tab.add(row(count=1, total_bytes=100, peak_single=100, live_bytes=100))
    tab.add(row(count=2, total_bytes=300, peak_single=200, sample_free_bytes=500, live_bytes=200))
    (only,) = list(tab)
    assert (only.count, only.total_bytes, only.peak_single) == (3, 400, 200)
    assert only.sample_total_bytes == 2000 and only.sample_free_bytes == 500
    assert only.live_bytes == 300 and only.retention_pct == 75.0


def test_retention_is_the_share_of_allocated_bytes_still_live():
    # Byte-weighted sampling over-represents big blocks in the raw samples (here the freed 64 KiB
    # list-growth blocks): RET% comes from the unbiased live-bytes estimate instead.
    r = row(
        total_bytes=21_000_000, sample_total_bytes=1_170_000, sample_free_bytes=360_000, live_bytes=20_000_000
    )
    assert retention_pct(r.sample_total_bytes, r.sample_free_bytes, r.sample_count) == 69.2
    assert r.retention_pct == 95.2
    assert row(live_bytes=5_000, total_bytes=1_000).retention_pct == 100.0  # estimate above total: clamped


def test_different_line_file_or_native_are_different_sites():
    tab = RetentionTable()
    tab.add(row())
    tab.add(row(line=2))
    tab.add(row(file="other.py"))
    tab.add(row(native=True))
    assert len(tab) == 4


def test_merged_folds_pids_and_marks_pid_zero():
    tab = RetentionTable()
    tab.add(row(pid=1))
    tab.add(row(pid=2))
    tab.add(row(pid=3, function="solo"))
    merged = {r.function: r for r in tab.merged()}
    assert merged["f"].pid == 0 and merged["f"].count == 2
    assert merged["solo"].pid == 3


def test_replace_pid_swaps_a_snapshot():
    tab = RetentionTable()
    tab.add(row(pid=1, count=1))
    tab.add(row(pid=2, count=1))
    tab.replace_pid(1, [row(pid=1, count=5)])
    assert sorted((r.pid, r.count) for r in tab) == [(1, 5), (2, 1)]


def test_growing_sites_first_fastest_first_then_by_live_bytes():
    # GIVEN import-time noise kept at 100 %, a leak with temporaries (50 %) and a growing buffer (0 %)
    noise = row(function="noise", total_bytes=130_000, live_bytes=130_000)
    leak = row(
        function="leak",
        total_bytes=60 << 20,
        sample_free_bytes=500,
        live_bytes=30 << 20,
        growth_bytes_per_s=1e6,
        growing=True,
    )
    buf = row(
        function="buf",
        total_bytes=70 << 20,
        sample_free_bytes=1000,
        live_bytes=20 << 20,
        growth_bytes_per_s=2e6,
        growing=True,
    )
    held = row(function="held", total_bytes=50 << 20, live_bytes=40 << 20, growth_bytes_per_s=0.0)
    # WHEN sorted by default THEN growth first (fastest first), then what the others hold now
    assert [r.function for r in sorted_rows([noise, held, leak, buf])] == ["buf", "leak", "held", "noise"]
    assert [r.function for r in sorted_rows([noise, held, leak, buf], by="live")] == [
        "held",
        "leak",
        "buf",
        "noise",
    ]
    assert [r.function for r in sorted_rows([noise, held, leak, buf], by="bytes")] == [
        "buf",
        "leak",
        "held",
        "noise",
    ]


def test_without_growth_the_biggest_holder_leads():
    # A short script watched too briefly for a trend: its leak still holds the most.
    noise = [row(function=f"import{i}", total_bytes=4000, live_bytes=4000) for i in range(11)]
    leak = row(function="leak", total_bytes=60 << 20, sample_free_bytes=500, live_bytes=30 << 20)
    assert sorted_rows([*noise, leak])[0].function == "leak"


def test_rows_written_before_live_bytes_existed_estimate_them_from_retention():
    old = {
        k: v
        for k, v in row(total_bytes=1000, sample_total_bytes=100, sample_free_bytes=25).to_dict().items()
        if k not in ("live_bytes", "live_count", "growth_bytes_per_s", "growing")
    }
    assert Row.from_dict(old).live_bytes == 750


def test_growth_must_be_a_finite_number():
    with pytest.raises(ValueError, match="growth_bytes_per_s"):
        Row.from_dict({**row().to_dict(), "growth_bytes_per_s": "fast"})
    with pytest.raises(ValueError, match="growth_bytes_per_s"):
        Row.from_dict({**row().to_dict(), "growth_bytes_per_s": float("nan")})


def test_a_rows_stacks_merge_and_reach_its_json():
    from trackleak.stacks import Stack

    frames = (("main", "/app/m.py", 3), ("f", "/app/a.py", 1))
    a = Row(
        function="f", file="/app/a.py", line=1, live_bytes=10, stacks=[Stack(frames=frames, live_bytes=10)]
    )
    b = Row(function="f", file="/app/a.py", line=1, live_bytes=5, stacks=[Stack(frames=frames, live_bytes=5)])
    table = RetentionTable()
    table.add(a)
    table.add(b)
    (merged,) = table.rows.values()
    assert [s.live_bytes for s in merged.stacks] == [15] and a.stacks[0].live_bytes == 10  # a copy
    doc = merged.to_json()
    assert doc["stacks"] == [
        {"frames": [list(f) for f in frames], "live_bytes": 15, "live_count": 0, "total_bytes": 0, "count": 0}
    ]
    assert "stacks" not in Row(function="g", file="x", line=1).to_json()  # no route recorded any

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
    tab.add(row(count=1, total_bytes=100, peak_single=100))
    tab.add(row(count=2, total_bytes=300, peak_single=200, sample_free_bytes=500))
    (only,) = list(tab)
    assert (only.count, only.total_bytes, only.peak_single) == (3, 400, 200)
    assert only.sample_total_bytes == 2000 and only.sample_free_bytes == 500
    assert only.retention_pct == 75.0


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


def test_leaks_first_then_bytes():
    leak = row(function="leak", total_bytes=10, sample_total_bytes=100, sample_free_bytes=0)
    big = row(function="big", total_bytes=10**9, sample_total_bytes=100, sample_free_bytes=100)
    unknown = row(function="unknown", total_bytes=10**6, sample_count=0, sample_total_bytes=0)
    assert sorted_rows([big, unknown, leak])[0].function == "leak"
    assert [r.function for r in sorted_rows([big, unknown, leak], by="bytes")] == ["big", "unknown", "leak"]


def test_a_big_leak_outranks_many_tiny_single_sample_ones():
    # GIVEN an 82% site holding megabytes and a 100% site seen once
    big = row(function="big", count=8000, total_bytes=8 << 20, sample_total_bytes=1000, sample_free_bytes=180)
    tiny = row(function="tiny", count=1, total_bytes=960, sample_total_bytes=960)
    # WHEN sorted leaks first THEN the one that holds the most comes first
    assert [r.function for r in sorted_rows([tiny, big])] == ["big", "tiny"]


def test_unsampled_sites_rank_as_if_they_kept_everything():
    healthy = row(function="healthy", total_bytes=10**6, sample_free_bytes=1000)
    unknown = row(function="unknown", total_bytes=10**5, sample_count=0, sample_total_bytes=0)
    assert [r.function for r in sorted_rows([healthy, unknown])] == ["unknown", "healthy"]

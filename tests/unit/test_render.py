# SPDX-License-Identifier: MIT
"""Terminal and plain-text rendering of rows."""

from __future__ import annotations

import io

from rich.console import Console

from trackleak import render
from trackleak.table import Row


def row(**kw) -> Row:
    base = dict(
        function="leaky",
        file="/app/x.py",
        line=12,
        count=4,
        total_bytes=4096,
        sample_count=2,
        sample_total_bytes=2048,
        sample_free_bytes=0,
        peak_single=2048,
        pid=1,
    )
    base.update(kw)
    if "live_bytes" not in kw:  # consistent with the samples: total x sampled share kept
        st, sf = base["sample_total_bytes"], base["sample_free_bytes"]
        base["live_bytes"] = base["total_bytes"] * (st - min(sf, st)) // st if st else 0
    return Row(**base)


def test_human_bytes():
    assert render.human_bytes(0) == "0 B"
    assert render.human_bytes(1023) == "1023 B"
    assert render.human_bytes(1536) == "1.5 KiB"
    assert render.human_bytes(5 * 1024**3) == "5.0 GiB"
    assert render.human_bytes(1024**6) == "1024.0 PiB"


def test_plain_table_columns_and_na():
    text = render.plain_table(
        [row(), row(function="nosamples", line=3, sample_count=0, sample_total_bytes=0)]
    )
    lines = text.splitlines()
    assert lines[0].split() == [
        "FUNCTION",
        "FILE:LINE",
        "LIVE",
        "GROWTH",
        "COUNT",
        "TOTAL",
        "SAMPLES",
        "SAMPLED",
        "FREED",
        "RET%",
        "PEAK",
        "AVG",
    ]
    assert "/app/x.py:12" in lines[2] and "100.0%" in lines[2]
    assert "n/a" in lines[3] and "0.0%" not in lines[3]


def test_native_rows_show_the_object_without_line():
    assert render.location(row(native=True, line=0, file="/lib/libc.so.6")) == "/lib/libc.so.6"


def test_leak_highlight_rule():
    # Red means "live bytes keep growing", whatever the retention.
    assert render.is_leak(row(growing=True, growth_bytes_per_s=1e3))
    assert render.is_leak(row(growing=True, sample_free_bytes=2048))
    assert not render.is_leak(row())  # 100 % but not growing: start-up state, not a leak
    assert not render.is_leak(row(sample_count=0, sample_total_bytes=0))


def test_growth_format():
    assert render.fmt_growth(None) == "-"
    assert render.fmt_growth(0.0) == "0 B/s"
    assert render.fmt_growth(1536.0) == "+1.5 KiB/s"
    assert render.fmt_growth(-2048.0) == "-2.0 KiB/s"


def test_rich_table_renders():
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(
        render.rich_table([row(), row(function="ok", sample_free_bytes=2048)])
    )
    text = out.getvalue()
    assert "leaky" in text and "/app/x.py:12" in text and "RET%" in text


def test_summary_line():
    line = render.summary_line(
        [row(live_bytes=4096, growing=True, growth_bytes_per_s=1024.0)], elapsed=3.2, pids=[5, 4]
    )
    assert line.startswith("trackleak: 3s pids=4,5 sites=1")
    assert (
        "growing=1" in line and "top=leaky (/app/x.py:12) live=4.0 KiB growth=+1.0 KiB/s ret=100.0%" in line
    )


def test_compact_table_is_one_line_per_row_within_the_width():
    rows = [row(file="/very/long/path/" + "x" * 120 + "/module.py", function="f" * 80), row()]
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(render.rich_table(rows, compact=True, width=100))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 + len(rows)  # header, rule, rows (no caption given)
    assert all(len(line) <= 100 for line in lines)
    assert "module.py:12" in lines[2]  # paths keep their tail
    assert "100.0%" in lines[2]  # numbers are never cut


def test_cut_left_and_display_path(monkeypatch, tmp_path):
    assert render.cut_left("abcdef", 4) == "\u2026def"
    assert render.cut_left("abc", 4) == "abc"
    monkeypatch.chdir(tmp_path)
    assert render.display_path(str(tmp_path / "app.py")) == "app.py"
    assert render.display_path("<frozen importlib._bootstrap>") == "<frozen importlib._bootstrap>"
    monkeypatch.setenv("HOME", "/home/someone")
    assert render.display_path("/home/someone/proj/x.py") == "~/proj/x.py"


def test_misattributed_rows_are_marked_and_explained_once():
    # GIVEN two rows, one that may hold objects another line allocated
    rows = [row(misattributed=True), row(function="fine", line=13)]
    # THEN its function carries the marker, in the plain table too, and one note explains it
    text = render.plain_table(rows)
    assert "leaky (?)" in text and "fine (?)" not in text
    notes = render.footnotes(rows)
    assert notes == [render.MISATTRIBUTED_NOTE]
    # AND the not-tracked sentence comes only when asked, with the minimum size
    assert render.footnotes([row()]) == []
    notes = render.footnotes([row()], small_objects_untracked=True, min_size=500)
    assert notes[0].startswith(
        "objects under the minimum size (500 B) are not tracked on this Python (before"
    )
    assert "--small-objects 1" in notes[0] and len(notes) == 1
    # on a free-threaded build (no reference tracer) that advice would do nothing: another one
    (note,) = render.footnotes([row()], small_objects_untracked=render.SMALL_NO_TRACER, min_size=500)
    assert "--min-size 0" in note and "--small-objects 1" not in note
    assert render.footnotes([row()], small_objects_untracked=True, min_size=0) == []


def test_misattributed_round_trips_through_json():
    r = row(misattributed=True)
    assert Row.from_dict(r.to_dict()).misattributed
    assert not Row.from_dict({k: v for k, v in r.to_dict().items() if k != "misattributed"}).misattributed


def test_call_paths_under_the_table_name_the_callers_by_live_bytes():
    from trackleak.stacks import Stack

    site = ("append", "/app/lib.py", 7)
    r = row(function="append", file="/app/lib.py", line=7, live_bytes=4 << 20)
    r.stacks = [
        Stack(frames=(("main", "/app/run.py", 40), ("cron", "/app/jobs.py", 9), site), live_bytes=1 << 20),
        Stack(
            frames=(("main", "/app/run.py", 40), ("handle", "/app/web.py", 12), site),
            live_bytes=3 << 20,
            growth_bytes_per_s=2048.0,
        ),
        Stack(frames=(site,), live_bytes=0),
    ]
    deep = row(function="g", file="/app/g.py", line=2)
    deep.stacks = [
        Stack(
            frames=(*tuple((f"f{i}", "/app/g.py", i + 10) for i in range(9)), ("g", "/app/g.py", 2)),
            live_bytes=5,
            truncated=True,
        )
    ]
    lines = render.call_paths([r, row(function="nostacks"), deep])
    assert lines[0] == "call paths of append (/app/lib.py:7), by live bytes:"
    assert lines[1].split() == [
        "75.0%",
        "3.0",
        "MiB",
        "+2.0",
        "KiB/s",
        "main",
        "(run.py:40)",
        ">",
        "handle",
        "(web.py:12)",
        ">",
        "append",
    ]
    assert lines[2].split()[:3] == ["25.0%", "1.0", "MiB"] and "cron (jobs.py:9) > append" in lines[2]
    assert lines[3].startswith("call paths of g") and "… > f5 (g.py:15) > f6" in lines[4]
    assert len(lines) == 5  # the one-frame path and the row without stacks print nothing
    assert render.call_paths([row()]) == []

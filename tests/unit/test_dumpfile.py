# SPDX-License-Identifier: MIT
"""The shim's JSON-lines dumps: bad lines skipped and counted, each pid's final word."""

from __future__ import annotations

import json

import pytest

from trackleak.sources import dumpfile
from trackleak.sources.dumpfile import jsonl_name, load, parse_lines


def site(function="leaky", line=12, **kw):
    row = {
        "function": function,
        "file": "/app/leaky.py",
        "line": line,
        "count": 10,
        "total_bytes": 10_000,
        "sample_count": 2,
        "sample_total_bytes": 2_000,
        "sample_free_bytes": 0,
        "retention_pct": 100.0,
        "peak_single": 1_000,
        "avg_size": 1_000,
        "native": False,
    }
    row.update(kw)
    return row


def dump(pid=100, reason="interval", sites=None, ts=1_700_000_000, **kw):
    doc = {
        "format": "trackleak-dump",
        "version": 1,
        "pid": pid,
        "ppid": 1,
        "timestamp": ts,
        "reason": reason,
        "elapsed_seconds": 1.5,
        "sample_rate": 50,
        "min_size": 500,
        "python": "3.11.7",
        "dropped": {"samples": 0, "sites": 0, "events": 0},
        "sites": [site()] if sites is None else sites,
    }
    doc.update(kw)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("profiler.json", "profiler.jsonl"),
        ("stats", "stats.jsonl"),
        ("a.txt", "a.txt.jsonl"),
        (".json", ".json.jsonl"),
    ],
)
def test_jsonl_name_follows_the_shim(name, expected):
    assert jsonl_name(name) == expected


def test_bad_lines_are_counted_and_skipped():
    lines = [
        dump(pid=1) + "\n",
        "not json at all\n",
        "[1, 2, 3]\n",
        json.dumps({"format": "something-else", "version": 1}) + "\n",
        dump(pid=2, version=2) + "\n",
        dump(pid=0) + "\n",
        dump(pid=3, sites="nope") + "\n",
        "\n",
        b"\xff\xfe garbage bytes\n",
        dump(pid=4) + "\n",
    ]
    log = parse_lines(lines, "x.jsonl")
    assert log.pids() == [1, 4]
    assert log.bad_lines == 7
    assert any("version 2 is not supported: this trackleak reads version 1" in e for e in log.errors)
    assert log.errors[0].startswith("x.jsonl:2:")


def test_bad_rows_inside_a_good_dump_are_dropped_alone():
    sites = [site(), site(function=5), site(count=-1), "row", site(function="ok", line=3)]
    log = parse_lines([dump(sites=sites) + "\n"])
    assert log.bad_lines == 0 and log.bad_rows == 3
    assert [r.function for r in log.dumps[0].rows] == ["leaky", "ok"]


def test_retention_is_recomputed_not_trusted():
    log = parse_lines([dump(sites=[site(retention_pct=0.0, sample_free_bytes=0)]) + "\n"])
    assert log.dumps[0].rows[0].retention_pct == 100.0


def test_exit_dump_is_the_final_word_else_the_last_dump():
    lines = [
        dump(pid=1, reason="interval", sites=[site(count=1)]),
        dump(pid=1, reason="exit", sites=[site(count=2)]),
        dump(pid=1, reason="interval", sites=[site(count=3)]),  # pid reused? an exit was said: keep it
        dump(pid=2, reason="interval", sites=[site(count=5)]),
        dump(pid=2, reason="interval", sites=[site(count=6)]),  # killed by a signal: last interval
    ]
    final = parse_lines([x + "\n" for x in lines]).final()
    assert final[1].reason == "exit" and final[1].rows[0].count == 2
    assert final[2].rows[0].count == 6


def test_table_per_pid_and_source():
    log = parse_lines([dump(pid=7) + "\n", dump(pid=8) + "\n"])
    tab = log.table()
    assert len(tab) == 2
    assert {(r.pid, r.source) for r in tab} == {(7, "preload"), (8, "preload")}
    merged = tab.merged()
    assert len(merged) == 1 and merged[0].count == 20 and merged[0].pid == 0
    assert len(log.table(pids=[7])) == 1


def test_last_line_being_written_is_not_an_error():
    whole = dump(pid=1) + "\n"
    partial = dump(pid=2)[:40]
    log = parse_lines([whole, partial])
    assert log.pids() == [1] and log.bad_lines == 0 and log.incomplete_lines == 1
    # a complete last line without its newline still counts
    assert parse_lines([whole, dump(pid=3)]).pids() == [1, 3]


def test_load_reads_files_and_skips_missing_ones(tmp_path):
    a = tmp_path / "profiler.jsonl"
    a.write_text(dump(pid=1) + "\n" + "{broken\n")
    log = load([a, tmp_path / "missing.jsonl"])
    assert log.pids() == [1] and log.bad_lines == 1


def test_native_rows_keep_native_flag():
    log = parse_lines(
        [dump(sites=[site(function="memcpy", file="/lib/libc.so.6", line=0, native=True)]) + "\n"]
    )
    assert log.dumps[0].rows[0].native is True


def test_version_field_checked_for_type():
    log = parse_lines([dump(version="1") + "\n"])
    assert log.bad_lines == 1 and dumpfile.VERSION == 1

# SPDX-License-Identifier: MIT
"""The report views without a browser or Go: the stacks format, the protobuf and pprof encoders,
folded stacks, the flame-graph tree and HTML page, the snapshot loader's errors, diff, and the CLI.

The pprof profile is read back by a small protobuf decoder written here from the wire-format
specification (independent of the encoder); tests/integration/test_report_outputs.py reads it with
the real `go tool pprof` and opens the HTML in Chromium.
"""

from __future__ import annotations

import gzip
import json
import re

import pytest
from typer.testing import CliRunner

from trackleak.cli.app import app
from trackleak.stacks import MAX_FRAMES, Stack, complete, merge, parse_stacks
from trackleak.table import Row
from trackleak.views import collapsed, diff, html, pprof, protobuf, snapshot

# --------------------------------------------------------------------------- a reference decoder


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode(buf: bytes) -> dict[int, list]:
    """field number -> values (ints for varints, bytes for length-delimited)."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def packed(buf: bytes) -> list[int]:
    values, pos = [], 0
    while pos < len(buf):
        v, pos = read_varint(buf, pos)
        values.append(v)
    return values


def one(msg: dict[int, list], number: int, default: int = 0):
    return msg.get(number, [default])[-1]


def read_profile(data: bytes) -> dict:
    """The parts of profile.proto the views write, as plain Python."""
    p = decode(data)
    strings = [s.decode() for s in p[6]]
    functions = {}
    for raw in p.get(5, []):
        f = decode(raw)
        functions[one(f, 1)] = (strings[one(f, 2)], strings[one(f, 3)], strings[one(f, 4)])
    locations = {}
    for raw in p.get(4, []):
        loc = decode(raw)
        (line_raw,) = loc[4]
        line = decode(line_raw)
        locations[one(loc, 1)] = (functions[one(line, 1)], one(line, 2), one(loc, 2))
    samples = []
    for raw in p.get(2, []):
        s = decode(raw)
        ids = packed(s[1][0])
        samples.append(([locations[i] for i in ids], packed(s[2][0])))
    types = []
    for raw in p[1]:
        vt = decode(raw)
        types.append((strings[one(vt, 1)], strings[one(vt, 2)]))
    period_type = decode(p[11][0])
    return {
        "strings": strings,
        "types": types,
        "samples": samples,
        "default": strings[one(p, 14)],
        "period": one(p, 12),
        "period_type": (strings[one(period_type, 1)], strings[one(period_type, 2)]),
        "mappings": [decode(m) for m in p.get(3, [])],
        "time_nanos": one(p, 9),
        "comments": [strings[i] for i in packed(p[13][0])] if 13 in p else [],
    }


# --------------------------------------------------------------------------- protobuf


@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (150, "9601"),  # the example of protobuf.dev's encoding guide
        (300, "ac02"),
        (2**63 - 1, "ffffffffffffffff7f"),
        (-1, "ffffffffffffffffff01"),  # int64 -1: ten bytes, two's complement on 64 bits
        (-2, "feffffffffffffffff01"),
    ],
)
def test_varint(value, encoded):
    assert protobuf.varint(value).hex() == encoded
    if value >= 0:
        assert read_varint(protobuf.varint(value), 0) == (value, len(encoded) // 2)


def test_message_fields():
    # GIVEN a message with a varint, a string, an empty default, a packed list and a nested message
    inner = protobuf.Message().number(1, 5)
    msg = (
        protobuf.Message()
        .number(1, 150)
        .number(2, 0)  # default: left out
        .string(3, "hé")
        .string(4, "", keep_empty=True)
        .packed(5, [1, 300])
        .message(6, inner)
        .message(7, protobuf.Message())
    )
    data = bytes(msg)
    # THEN the bytes are the wire format: key (1<<3|0)=08, 96 01; key 1a, length 3, utf-8 ...
    assert data.startswith(bytes.fromhex("089601") + b"\x1a\x03" + "hé".encode())
    fields = decode(data)
    assert fields[1] == [150] and 2 not in fields
    assert fields[3] == ["hé".encode()] and fields[4] == [b""]
    assert packed(fields[5][0]) == [1, 300]
    assert decode(fields[6][0]) == {1: [5]} and fields[7] == [b""]


# --------------------------------------------------------------------------- the stacks format


def site_row(**kw) -> Row:
    base = dict(
        function="append",
        file="/app/lib.py",
        line=7,
        count=100,
        total_bytes=100_000,
        sample_count=10,
        live_bytes=60_000,
        live_count=60,
    )
    base.update(kw)
    return Row(**base)


def stack_json(*frames, live=0, count=0, total=0, live_count=0, **extra):
    return {
        "frames": [list(f) for f in frames],
        "live_bytes": live,
        "live_count": live_count,
        "total_bytes": total,
        "count": count,
        **extra,
    }


MAIN_A = ("main", "/app/run.py", 40)
MAIN_B = ("other", "/app/run.py", 50)
SITE = ("append", "/app/lib.py", 7)


def test_parse_stacks_valid_and_completed():
    row = site_row()
    value = [
        stack_json(MAIN_A, SITE, live=40_000, live_count=40, total=50_000, count=50),
        stack_json(
            MAIN_B,
            SITE,
            live=15_000,
            live_count=15,
            total=30_000,
            count=30,
            truncated=True,
            growth_bytes_per_s=12.5,
        ),
    ]
    stacks = parse_stacks(value, row)
    assert [s.frames for s in stacks] == [(MAIN_A, SITE), (MAIN_B, SITE)]
    assert stacks[1].truncated and stacks[1].growth_bytes_per_s == 12.5
    assert stacks[1].to_json() == value[1]
    # what no stack covers is the site's own one-frame path: the counters add up to the row's
    done = complete(row, stacks)
    assert done[-1].frames == (SITE,)
    assert (done[-1].live_bytes, done[-1].live_count, done[-1].total_bytes, done[-1].count) == (
        5000,
        5,
        20_000,
        20,
    )
    for name in ("live_bytes", "live_count", "total_bytes", "count"):
        assert sum(getattr(s, name) for s in done) == getattr(row, name)


def test_row_without_stacks_is_its_own_one_frame_stack():
    row = site_row(growth_bytes_per_s=99.0)
    (only,) = complete(row, parse_stacks(None, row))
    assert only.frames == (SITE,) and only.live_bytes == 60_000 and only.count == 100
    assert only.growth_bytes_per_s == 99.0


def test_stacks_above_the_row_are_scaled_to_it():
    # GIVEN paths whose estimated counts add up to more than the row's exact ones
    row = site_row(count=100, total_bytes=100_000, live_bytes=60_000)
    value = [
        stack_json(MAIN_A, SITE, live=45_000, live_count=30, count=90, total=90_000),
        stack_json(MAIN_B, SITE, live=30_000, live_count=30, count=30, total=10_000),
    ]
    stacks = parse_stacks(value, row)
    # THEN they are scaled down to the row (the table is what the views add up to)
    assert [(s.live_bytes, s.count, s.total_bytes) for s in stacks] == [
        (36_000, 75, 90_000),
        (24_000, 25, 10_000),
    ]
    assert complete(row, stacks) == stacks  # nothing left to cover


def test_the_row_name_wins_for_the_last_frame():
    row = site_row(function="demangled::append")
    (s,) = parse_stacks([stack_json(MAIN_A, ("_Z6appendv", "/app/lib.py", 7), live=1)], row)
    assert s.frames[-1] == ("demangled::append", "/app/lib.py", 7)


@pytest.mark.parametrize(
    "value, why",
    [
        ({"frames": []}, "must be a list"),
        ([stack_json(MAIN_A, ("append", "/app/lib.py", 8), live=1)], "not the row's site"),
        ([stack_json(MAIN_A, SITE, live=1), stack_json(MAIN_A, SITE, live=2)], "same frames"),
        ([stack_json(MAIN_A, SITE, live=-1)], "non-negative"),
        ([stack_json(MAIN_A, SITE, live=True)], "non-negative"),
        ([{"frames": [["main", "/app/run.py"]], "live_bytes": 1}], "a frame is"),
        ([{"frames": [["main", 3, 1], list(SITE)]}], "strings"),
        ([{"frames": [[*MAIN_A[:2], -1], list(SITE)]}], "non-negative integer"),
        ([{"frames": []}], "non-empty"),
        ([stack_json(*([MAIN_A] * MAX_FRAMES), SITE)], "more than"),
        ([stack_json(MAIN_A, SITE, truncated="yes")], "true or false"),
        ([stack_json(MAIN_A, SITE, growth_bytes_per_s=float("nan"))], "number or null"),
        (["x"], "is an object"),
    ],
)
def test_parse_stacks_refuses(value, why):
    with pytest.raises(ValueError, match=why):
        parse_stacks(value, site_row())


def test_merge_adds_the_same_path():
    a = [Stack(frames=(MAIN_A, SITE), live_bytes=1, count=1), Stack(frames=(SITE,), live_bytes=5)]
    b = [Stack(frames=(MAIN_A, SITE), live_bytes=2, count=3, truncated=True)]
    merged = {s.frames: s for s in merge([a, b])}
    assert merged[(MAIN_A, SITE)].live_bytes == 3 and merged[(MAIN_A, SITE)].count == 4
    assert merged[(MAIN_A, SITE)].truncated
    assert a[0].live_bytes == 1  # inputs untouched


# --------------------------------------------------------------------------- pprof


def test_pprof_profile_reads_back():
    stacks = [
        Stack(frames=(MAIN_A, SITE), live_bytes=40_000, live_count=40, total_bytes=50_000, count=50),
        Stack(frames=(MAIN_B, SITE), live_bytes=15_000, live_count=15, total_bytes=30_000, count=30),
        Stack(frames=(("<module>", "/app/x.py", 3),), live_bytes=7, live_count=1, total_bytes=7, count=1),
        Stack(frames=(SITE,)),  # nothing at all: no sample
    ]
    prof = read_profile(pprof.build(stacks, period=51200, time_nanos=123, comments=["hello"]))
    assert prof["strings"][0] == ""
    assert prof["types"] == [
        ("inuse_space", "bytes"),
        ("inuse_objects", "count"),
        ("alloc_space", "bytes"),
        ("alloc_objects", "count"),
    ]
    assert prof["default"] == "inuse_space"
    assert prof["period"] == 51200 and prof["period_type"] == ("space", "bytes")
    assert prof["time_nanos"] == 123 and prof["comments"] == ["hello"]
    assert len(prof["samples"]) == 3
    locs, values = prof["samples"][0]
    # leaf first; function (name, system name, file); line; the one mapping
    assert locs == [(("append", "append", "/app/lib.py"), 7, 1), (("main", "main", "/app/run.py"), 40, 1)]
    assert values == [40_000, 40, 50_000, 50]
    assert prof["samples"][1][0][0] == prof["samples"][0][0][0]  # one location per frame, shared
    # pprof would shorten "<module>" to nothing (C++ templates): the name gets square brackets
    assert prof["samples"][2][0][0][0] == ("[module]", "<module>", "/app/x.py")
    (mapping,) = prof["mappings"]
    assert one(mapping, 1) == 1 and one(mapping, 7) == one(mapping, 8) == one(mapping, 9) == 1


def test_pprof_write_is_gzip(tmp_path):
    out = tmp_path / "p.pb.gz"
    pprof.write(out, [Stack(frames=(SITE,), live_bytes=1)])
    data = out.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert read_profile(gzip.decompress(data))["samples"][0][1][0] == 1


# --------------------------------------------------------------------------- folded stacks


def test_collapsed_lines():
    stacks = [
        Stack(frames=(MAIN_A, SITE), live_bytes=10),
        Stack(frames=(("a;b", "/x.py", 1), ("nat", "libc.so.6", 0)), live_bytes=30),
        Stack(frames=(SITE,), live_bytes=0, total_bytes=5),
    ]
    assert collapsed.lines(stacks) == [
        "a,b (/x.py:1);nat (libc.so.6) 30",
        "main (/app/run.py:40);append (/app/lib.py:7) 10",
    ]
    assert collapsed.text([]) == ""
    # the format flamegraph.pl reads: frames without ';' inside, a space, an integer
    for line in collapsed.lines(stacks):
        assert re.fullmatch(r"[^;\n]+(;[^;\n]+)* \d+", line)


# --------------------------------------------------------------------------- snapshots


def run_doc(sites, history=None, **meta):
    doc = {
        "meta": {
            "format": "trackleak-run",
            "version": 1,
            "pids": [1],
            "sample_interval": 51200,
            "started": 1000.0,
            "ended": 1010.0,
            **meta,
        },
        "sites": sites,
    }
    if history is not None:
        doc["history"] = history
    return doc


def site(function, line, live, count, pid=1, file="/app/lib.py", growing=False, **extra):
    return {
        "function": function,
        "file": file,
        "line": line,
        "count": count,
        "total_bytes": live * 2,
        "sample_count": count,
        "sample_total_bytes": live,
        "sample_free_bytes": 0,
        "peak_single": 100,
        "source": "preload",
        "pid": pid,
        "native": False,
        "live_bytes": live,
        "live_count": count,
        "growth_bytes_per_s": 1000.0 if growing else 0.0,
        "growing": growing,
        **extra,
    }


def write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_snapshot_stacks_history_and_bad_stacks(tmp_path):
    good = site(
        "append",
        7,
        60_000,
        60,
        growing=True,
        stacks=[stack_json(MAIN_A, SITE, live=40_000, live_count=40, total=50_000, count=50)],
    )
    bad = site("other", 9, 100, 1, stacks=[stack_json(MAIN_A, ("other", "/app/lib.py", 10), live=1)])
    other_pid = site("append", 7, 1_000, 1, pid=2)
    path = write(
        tmp_path,
        "run.json",
        run_doc(
            [good, bad, other_pid],
            history=[
                {
                    "function": "append",
                    "file": "/app/lib.py",
                    "line": 7,
                    "native": False,
                    "points": [[0.5, 10], [1.5, 20]],
                },
                {"function": "x", "file": "/a", "line": 1, "points": "nope"},
            ],
        ),
    )
    snap = snapshot.load(path)
    assert snap.bad_stacks == 1 and any("not the row's site" in e for e in snap.errors)
    assert [s.points for s in snap.history] == [[(0.5, 10), (1.5, 20)]]
    (merged,) = [r for r in snap.rows() if r.function == "append"]
    paths = {s.frames: s.live_bytes for s in snap.stacks_of(merged)}
    # pid 1: 40 000 through main, 20 000 uncovered; pid 2: its whole row
    assert paths == {(MAIN_A, SITE): 40_000, (SITE,): 21_000}
    (other,) = [r for r in snap.rows() if r.function == "other"]
    assert {s.frames for s in snap.stacks_of(other)} == {(("other", "/app/lib.py", 9),)}
    assert sum(s.live_bytes for s in snap.all_stacks()) == 61_100
    assert snap.ended == 1010.0


def test_snapshot_of_shim_dumps_keeps_stacks(tmp_path):
    dump = {
        "format": "trackleak-dump",
        "version": 1,
        "pid": 5,
        "ppid": 1,
        "timestamp": 77.0,
        "reason": "exit",
        "sites": [
            site(
                "append",
                7,
                60_000,
                60,
                stacks=[stack_json(MAIN_B, SITE, live=60_000, live_count=60, total=120_000, count=60)],
            )
        ],
    }
    path = write(
        tmp_path,
        "profiler.jsonl",
        json.dumps({**dump, "reason": "interval", "timestamp": 1.0, "sites": []})
        + "\n"
        + json.dumps(dump)
        + "\n",
    )
    snap = snapshot.load(path)
    assert snap.kind == "dumps" and snap.ended == 77.0
    (row,) = snap.rows()
    assert [s.frames for s in snap.stacks_of(row)] == [(MAIN_B, SITE)]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("hello\n", "neither a `trackleak run --json` file nor"),
        (
            '{"meta": {"format": "trackleak-run", "version": 9}, "sites": []}',
            "trackleak-run version 9 is not supported: this trackleak reads version 1",
        ),
        (
            '{"meta": {"format": "trackleak-agent", "version": "1"}, "sites": []}',
            "version '1' is not supported",
        ),
        ('{"meta": {"format": "something-else", "version": 1}, "sites": []}', "is not a TrackLeak table"),
        ('{"meta": {"format": "trackleak-diff", "version": 1}, "sites": []}', "output of `trackleak diff`"),
        ('{"meta": 3, "sites": []}', "'meta' is not an object"),
        ('{"sites": 3}', "'sites' is not a list"),
        (
            '{"format": "trackleak-dump", "version": 2, "pid": 3, "sites": []}\n',
            "dump version 2 is not supported",
        ),
    ],
)
def test_snapshot_errors(tmp_path, content, message):
    path = tmp_path / "x.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(Exception) as info:
        snapshot.load(path)
    assert type(info.value).__name__ == "UserError"
    assert message in str(info.value)


def test_document_versions_are_the_writers():
    from trackleak import runner
    from trackleak.ebpf import agent
    from trackleak.fleet import daemon

    assert snapshot.DOCUMENT_VERSIONS == {
        runner.RUN_FORMAT: runner.RUN_VERSION,
        agent.AGENT_FORMAT: agent.AGENT_VERSION,
        daemon.FLEET_FORMAT: daemon.FLEET_VERSION,
    }


# --------------------------------------------------------------------------- HTML


def test_flame_tree():
    stacks = [
        Stack(frames=(MAIN_A, SITE), live_bytes=40, total_bytes=50),
        Stack(frames=(MAIN_B, SITE), live_bytes=15, total_bytes=30),
        Stack(frames=(("tiny", "/t.py", 1),), live_bytes=0, total_bytes=9),
    ]
    tree = html.flame_tree(stacks, growing={SITE})
    assert (tree["n"], tree["v"], tree["t"]) == ("all", 55, 89)
    assert [(k["n"], k["v"]) for k in tree["c"]] == [("main", 40), ("other", 15)]  # "tiny" holds nothing
    assert tree["c"][0]["c"][0] == {"n": "append", "f": "/app/lib.py", "l": 7, "v": 40, "t": 50, "g": 1}
    assert "g" not in tree["c"][0]
    # frames below MIN_SHARE of the root are left out, and counted
    many = [Stack(frames=(("big", "/b.py", 1),), live_bytes=10**6)] + [
        Stack(frames=((f"f{i}", "/b.py", i),), live_bytes=1) for i in range(3)
    ]
    small = html.flame_tree(many)
    assert [k["n"] for k in small["c"]] == ["big"] and small["omitted"] == 3


def test_html_page_is_self_contained_and_escapes(tmp_path):
    hostile = "</script><script>alert(1)</script>"
    path = write(
        tmp_path,
        "run.json",
        run_doc(
            [
                site("append", 7, 60_000, 60, growing=True),
                site(hostile, 3, 10, 1, file="/x<y>.py"),
            ],
            history=[{"function": hostile, "file": "/x<y>.py", "line": 3, "points": [[0, 1]]}],
        ),
    )
    snap = snapshot.load(path)
    rows = snap.rows()
    from trackleak import render

    ordered = render.top_rows(rows, top=0)
    page = html.render_html(snap, ordered, ordered)
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data and the code only
    assert "alert(1)" in page and "<script>alert" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched when viewed
    body = page.split("<tbody>")[1]
    first = re.search(r"<tr([^>]*)><td[^>]*>([^<]*)</td>", body)
    assert first.group(2) == "append" and 'class="leak"' in first.group(1)
    data = json.loads(
        re.search(r'<script type="application/json" id="trackleak-data">(.*?)</script>', page, re.S).group(1)
    )
    assert data["flame"]["v"] == 60_010 and data["series"][0]["name"] == hostile


# --------------------------------------------------------------------------- diff


def test_diff_growers_first(tmp_path):
    before = write(
        tmp_path,
        "a.json",
        run_doc(
            [
                site("leak", 1, 1_000, 10),
                site("steady", 2, 5_000, 5),
                site("shrinks", 3, 9_000, 9),
                site("gone", 4, 100, 1),
            ],
            ended=1000.0,
        ),
    )
    after = write(
        tmp_path,
        "b.json",
        run_doc(
            [
                site("leak", 1, 51_000, 60, pid=7),
                site("steady", 2, 5_000, 5, pid=7),
                site("shrinks", 3, 1_000, 9, pid=7),
                site("new", 5, 2_000, 2, pid=7),
            ],
            ended=1030.0,
        ),
    )
    snap_a, snap_b = snapshot.load(before), snapshot.load(after)
    changes = diff.diff(snap_a, snap_b)
    assert [(c.row.function, c.status, c.delta("live_bytes"), c.delta("count")) for c in changes] == [
        ("leak", "both", 50_000, 50),
        ("new", "new", 2_000, 2),
        ("steady", "both", 0, 0),
        ("gone", "gone", -100, -1),
        ("shrinks", "both", -8_000, 0),
    ]
    doc = diff.to_json(snap_a, snap_b, changes)
    assert doc["meta"]["format"] == "trackleak-diff" and doc["meta"]["seconds"] == 30.0
    first = doc["sites"][0]
    assert first["live_bytes"] == 51_000 and first["before"]["live_bytes"] == 1_000
    assert first["live_bytes_delta"] == 50_000 and first["count_delta"] == 50
    assert doc["sites"][3]["live_bytes"] == 0 and doc["sites"][3]["status"] == "gone"
    text = diff.plain_table(changes)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["FUNCTION", "FILE:LINE", "LIVE", "DELTA", "COUNT", "DELTA"]
    assert lines[2].split()[:4] == ["leak", "/app/lib.py:1", "+48.8", "KiB"] and "+50" in lines[2].split()
    assert lines[3].startswith("new (new)")


# --------------------------------------------------------------------------- the CLI


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def stderr_of(result) -> str:
    try:
        return result.stderr
    except ValueError:
        return result.output


def test_cli_report_views(tmp_path):
    path = write(
        tmp_path,
        "run.json",
        run_doc(
            [
                site(
                    "append",
                    7,
                    60_000,
                    60,
                    growing=True,
                    stacks=[stack_json(MAIN_A, SITE, live=40_000, live_count=40, total=50_000, count=50)],
                ),
                site("other", 9, 100, 1),
            ]
        ),
    )
    folded = invoke("report", str(path), "--collapsed", "-")
    assert folded.exit_code == 0, folded.output
    assert folded.stdout.splitlines() == [
        "main (/app/run.py:40);append (/app/lib.py:7) 40000",
        "append (/app/lib.py:7) 20000",
        "other (/app/lib.py:9) 100",
    ]
    out = tmp_path / "out"
    result = invoke(
        "report",
        str(path),
        "--html",
        f"{out}.html",
        "--pprof",
        f"{out}.pb.gz",
        "--collapsed",
        f"{out}.folded",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # no table when views are written
    assert '<svg id="flame"' in (tmp_path / "out.html").read_text()
    prof = read_profile(gzip.decompress((tmp_path / "out.pb.gz").read_bytes()))
    assert sum(v[0] for _, v in prof["samples"]) == 60_100 and prof["period"] == 51200
    assert prof["time_nanos"] == 1000 * 10**9
    assert (tmp_path / "out.folded").read_text().count("\n") == 3
    bad = invoke("report", str(path), "--html", str(tmp_path / "no" / "such" / "dir.html"))
    assert bad.exit_code == 2 and "cannot write" in stderr_of(bad) and "Traceback" not in bad.output


def test_cli_diff(tmp_path):
    before = write(tmp_path, "a.json", run_doc([site("leak", 1, 1_000, 10)]))
    after = write(tmp_path, "b.json", run_doc([site("leak", 1, 9_000, 20)]))
    result = invoke("diff", str(before), str(after), "--json", "-")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["sites"][0]["live_bytes_delta"] == 8_000 and doc["sites"][0]["count_delta"] == 10
    table = invoke("diff", str(before), str(after))
    assert table.exit_code == 0 and "+7.8 KiB" in table.stdout and "+10" in table.stdout
    written = invoke("diff", str(before), str(after), "--json", str(tmp_path / "d.json"))
    assert written.exit_code == 0 and json.loads((tmp_path / "d.json").read_text())["sites"]
    # a diff's own output is not a table
    again = invoke("diff", str(tmp_path / "d.json"), str(after))
    assert again.exit_code == 2 and "output of `trackleak diff`" in stderr_of(again)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("[1, 2]\n", "neither a `trackleak run --json` file nor"),
        ('{"meta": {"format": "trackleak-run", "version": 2}, "sites": []}', "version 2 is not supported"),
    ],
)
def test_cli_diff_errors(tmp_path, content, message):
    good = write(tmp_path, "good.json", run_doc([site("leak", 1, 1_000, 10)]))
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    for args in ((bad, good), (good, bad)):
        result = invoke("diff", *map(str, args))
        assert result.exit_code == 2, result.output
        assert message in stderr_of(result) and "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)

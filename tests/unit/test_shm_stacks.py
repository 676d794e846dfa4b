# SPDX-License-Identifier: MIT
"""The call paths of a shim's table (trackleak_shm.h v5: frame and path records after the sites),
read as hostile input.

GIVEN segments built in bytes from the ctypes mirror, some forged or half-written
WHEN trackleak.sources.shm parses them
THEN each Python row gets the paths that end at it (outermost frame first, counters from the
path's Horvitz-Thompson weights), anything inconsistent is refused (the path, or the whole stack
tables when the header is wrong) and the rows themselves always stay.
"""

from __future__ import annotations

import ctypes
import json

import pytest
from fakeseg import FakeSite, segment

from trackleak import layout as L
from trackleak.sources import dumpfile, shm
from trackleak.stacks import complete

ONE = L.TL_COUNT_ONE
SITE = FakeSite(function=b"keep", file=b"/app/lib.py", line=3, count=40, total_bytes=40_000)
FRAMES = [  # (function, file, line)
    (b"keep", b"/app/lib.py", 3),  # 0: the site's own frame
    (b"caller_a", b"/app/app.py", 5),  # 1
    (b"caller_b", b"/app/app.py", 7),  # 2
    (b"main", b"/app/app.py", 10),  # 3
]


def frame_bytes(function: bytes, file: bytes, line: int, state: int = L.TL_SITE_READY) -> bytes:
    rec = L.TlFrame()
    rec.state, rec.line = state, line
    raw = bytearray(bytes(rec))
    f, p = L.TlFrame.function.offset, L.TlFrame.file.offset
    raw[f : f + L.TL_FUNC_MAX] = function[: L.TL_FUNC_MAX].ljust(L.TL_FUNC_MAX, b"\0")
    raw[p : p + L.TL_FILE_MAX] = file[: L.TL_FILE_MAX].ljust(L.TL_FILE_MAX, b"\0")
    return bytes(raw)


def path_bytes(ids, depth_cap, *, est=(0, 0, 0, 0), flags=0, state=L.TL_SITE_READY, depth=None) -> bytes:
    rec = L.TlStack()
    rec.state, rec.flags = state, flags
    rec.depth = len(ids) if depth is None else depth
    for name, value in zip(("est_count", "est_bytes", "est_free_count", "est_free_bytes"), est):
        setattr(rec.c[0], name, value // 2)  # split over the two copies: readers add them
        setattr(rec.c[1], name, value - value // 2)
    frames = (ctypes.c_uint32 * depth_cap)(*ids)
    raw = bytes(rec) + bytes(frames)
    return raw.ljust(L.stack_record_size(depth_cap), b"\0")


def stacked_segment(
    paths, *, frames=FRAMES, depth=4, sites=(SITE,), frame_cap=8, stack_cap=8, raw_frames=None, **hdr
) -> bytes:
    base = bytearray(segment(list(sites)))
    h = L.TlShmHeader.from_buffer(base)
    h.frames_offset = len(base)
    h.frame_size = L.FRAME_SIZE
    h.frame_capacity, h.frame_count = frame_cap, len(frames)
    h.stack_depth, h.stack_size = depth, L.stack_record_size(depth)
    h.stacks_offset = h.frames_offset + frame_cap * L.FRAME_SIZE
    h.stack_capacity, h.stack_count = stack_cap, len(paths)
    h.dropped_stacks = 7
    for name, value in hdr.items():
        setattr(h, name, value)
    fr = raw_frames if raw_frames is not None else b"".join(frame_bytes(*f) for f in frames)
    fr = fr.ljust(frame_cap * L.FRAME_SIZE, b"\0")
    st = b"".join(paths).ljust(stack_cap * L.stack_record_size(depth), b"\0")
    del h
    return bytes(base) + fr + st


def row_of(snap):
    (row,) = [r for r in snap.rows if r.function == "keep"]
    return row


def two_paths(depth=4):
    return [
        path_bytes([0, 1, 3], depth, est=(30 * ONE, 30_000, 0, 0)),
        path_bytes([0, 2, 3], depth, est=(10 * ONE, 10_000, 2 * ONE, 2_000)),
    ]


def test_paths_land_on_their_row_outermost_first():
    snap = shm.parse_segment(stacked_segment(two_paths()))
    assert snap.header.has_stacks and snap.header.dropped_stacks == 7 and snap.bad_stacks == 0
    stacks = {s.frames[1][0]: s for s in row_of(snap).stacks}
    a, b = stacks["caller_a"], stacks["caller_b"]
    assert a.frames == (
        ("main", "/app/app.py", 10),
        ("caller_a", "/app/app.py", 5),
        ("keep", "/app/lib.py", 3),
    )
    assert (a.live_bytes, a.live_count, a.total_bytes, a.count) == (30_000, 30, 30_000, 30)
    assert (b.live_bytes, b.live_count, b.total_bytes, b.count) == (8_000, 8, 10_000, 10)
    assert not a.truncated


def test_a_table_without_stacks_gives_rows_without_stacks():
    snap = shm.parse_segment(segment([SITE]))
    assert not snap.header.has_stacks and row_of(snap).stacks is None


def test_a_row_no_path_reached_has_an_empty_list():
    snap = shm.parse_segment(stacked_segment([]))
    assert row_of(snap).stacks == []


def test_duplicate_paths_merge_and_truncated_survives():
    paths = [
        path_bytes([0, 1], 4, est=(ONE, 100, 0, 0), flags=L.TL_STACK_F_TRUNCATED),
        path_bytes([0, 1], 4, est=(ONE, 100, 0, 0)),  # a race's second record of the same path
    ]
    (stack,) = row_of(shm.parse_segment(stacked_segment(paths))).stacks
    assert stack.live_bytes == 200 and stack.count == 2 and stack.truncated


@pytest.mark.parametrize(
    "bad",
    [
        path_bytes([0, 1, 99], 4, est=(ONE, 1, 0, 0)),  # frame number past frame_count
        path_bytes([0, 1], 4, est=(ONE, 1, 0, 0), depth=0),  # empty
        path_bytes([0, 1], 4, est=(ONE, 1, 0, 0), depth=5),  # deeper than stack_depth
        path_bytes([0, 1], 4, est=(ONE, 1, 0, 0), depth=0xFFFFFFFF),
        path_bytes([0, 1], 4, est=(ONE, 1, 0, 0), flags=0x80),  # unknown flag
    ],
)
def test_a_bad_path_is_refused_alone(bad):
    snap = shm.parse_segment(stacked_segment([*two_paths(), bad]))
    assert snap.bad_stacks == 1
    assert len(row_of(snap).stacks) == 2


def test_unpublished_paths_and_frames_are_skipped_not_bad():
    frames = [*FRAMES, (b"half", b"/app/x.py", 1)]
    raw = b"".join(frame_bytes(*f) for f in FRAMES) + frame_bytes(b"half", b"/x", 1, state=L.TL_SITE_RESERVED)
    paths = [
        *two_paths(),
        path_bytes([0, 1], 4, est=(ONE, 1, 0, 0), state=L.TL_SITE_RESERVED),  # being filled
        path_bytes([0, 1], 4, est=(ONE, 1, 0, 0), state=L.TL_SITE_FREE),  # a lost race's record
        path_bytes([0, 4], 4, est=(ONE, 1, 0, 0)),  # through a frame not published yet
    ]
    snap = shm.parse_segment(stacked_segment(paths, frames=frames, raw_frames=raw))
    assert len(row_of(snap).stacks) == 2
    assert snap.bad_stacks == 1  # (only the path through the unpublished frame)


def test_a_frame_without_nul_refuses_the_paths_through_it():
    raw = bytearray(b"".join(frame_bytes(*f) for f in FRAMES))
    off = 2 * L.FRAME_SIZE + L.TlFrame.function.offset
    raw[off : off + L.TL_FUNC_MAX] = b"x" * L.TL_FUNC_MAX  # caller_b's name runs over
    snap = shm.parse_segment(stacked_segment(two_paths(), raw_frames=bytes(raw)))
    assert [s.frames[1][0] for s in row_of(snap).stacks] == ["caller_a"]
    assert snap.bad_stacks == 2  # the frame and the path


def test_freed_more_than_taken_is_zero_not_negative():
    paths = [path_bytes([0, 1], 4, est=(ONE, 100, 5 * ONE, 900))]
    (stack,) = row_of(shm.parse_segment(stacked_segment(paths))).stacks
    assert stack.live_bytes == 0 and stack.live_count == 0


def test_paths_of_no_row_are_ignored_and_counts_are_clamped():
    paths = [path_bytes([1, 3], 4, est=(ONE, 100, 0, 0)), *two_paths()]  # ends at caller_a: no row
    data = stacked_segment(paths, stack_count=1 << 31, frame_count=1 << 31)
    snap = shm.parse_segment(data)
    assert snap.header.stack_count == 8 and snap.header.frame_count == 8  # the capacities
    assert len(row_of(snap).stacks) == 2


@pytest.mark.parametrize(
    "hdr, reason",
    [
        ({"stack_size": 12}, "stack_size"),
        ({"frame_size": 100}, "frame_size"),
        ({"stack_depth": 0}, "stack_depth"),
        ({"stack_depth": 129}, "stack_depth"),
        ({"frames_offset": L.HEADER_SIZE}, "overlaps the sites"),
        ({"frames_offset": L.HEADER_SIZE + L.SITE_SIZE + 4}, "overlaps the sites"),
        ({"stacks_offset": L.HEADER_SIZE + L.SITE_SIZE}, "overlaps the frames"),
        ({"stack_capacity": 1 << 30}, "need"),
        ({"frame_capacity": 1 << 30}, "overlaps the frames"),
    ],
)
def test_a_bad_stack_header_loses_the_stacks_not_the_rows(hdr, reason):
    snap = shm.parse_segment(stacked_segment(two_paths(), **hdr))
    assert reason in snap.header.stacks_error, snap.header.stacks_error
    row = row_of(snap)
    assert row.stacks is None and row.count == SITE.count


def test_reader_reads_only_what_the_header_says():
    data = stacked_segment(two_paths())
    asked = []

    def read(offset, size):
        asked.append((offset, size))
        return data[offset : offset + size]

    h = shm.parse_header(data)
    shm.parse_segment(data[: L.HEADER_SIZE + L.SITE_SIZE], mapping_size=len(data), read=read)
    assert asked == [(h.frames_offset, 4 * L.FRAME_SIZE), (h.stacks_offset, 2 * h.stack_size)]


def test_a_short_read_gives_no_paths():
    data = stacked_segment(two_paths())
    snap = shm.parse_segment(data, read=lambda offset, size: data[offset : offset + size // 2])
    assert row_of(snap).stacks == []


def test_views_add_up_with_paths_missing():
    # the site's own one-frame stack holds what no path covers (a dropped path)
    snap = shm.parse_segment(stacked_segment(two_paths()[:1]))
    row = row_of(snap)
    row.live_bytes = 35_000
    filled = complete(row, row.stacks)
    assert sum(s.live_bytes for s in filled) == row.live_bytes


def test_dump_rows_with_bad_stacks_keep_the_row():
    site = {
        "function": "keep",
        "file": "/app/lib.py",
        "line": 3,
        "count": 4,
        "total_bytes": 400,
        "live_bytes": 400,
        "live_count": 4,
        "sample_count": 4,
        "sample_total_bytes": 400,
    }
    good = {
        "frames": [["main", "/app/app.py", 10], ["keep", "/app/lib.py", 3]],
        "live_bytes": 400,
        "live_count": 4,
        "total_bytes": 400,
        "count": 4,
    }
    bad = dict(good, frames=[["main", "/app/app.py", 10], ["other", "/app/lib.py", 9]])
    line = {
        "format": "trackleak-dump",
        "version": 1,
        "pid": 5,
        "dropped": {"stacks": 3},
        "sites": [dict(site, stacks=[good]), dict(site, line=4, stacks=[bad]), dict(site, line=5)],
    }
    log = dumpfile.parse_lines([json.dumps(line)])
    (dump,) = log.dumps
    rows = {r.line: r for r in dump.rows}
    assert len(rows[3].stacks) == 1 and rows[4].stacks is None and rows[5].stacks is None
    assert dump.bad_stacks == 1 and dump.dropped["stacks"] == 3

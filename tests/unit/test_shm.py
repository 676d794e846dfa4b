# SPDX-License-Identifier: MIT
"""The shared-memory reader: decoding, hostile input, and a real /proc/PID/mem read of a memfd.

The segments are built in bytes from the ctypes mirror (fakeseg.py); the last tests map one into
this very process as a memfd named "trackleak", which is what a preloaded process looks like.
"""

from __future__ import annotations

import mmap
import os
import sys

import pytest
from fakeseg import FakeSite, segment

from trackleak import layout as L
from trackleak.sources import shm
from trackleak.sources.shm import ShmError, parse_maps, parse_segment


def test_parses_header_and_rows():
    data = segment([FakeSite(), FakeSite(function=b"ok", line=20, sample_free_bytes=2_000)], capacity=4)
    snap = parse_segment(data, pid=99)
    h = snap.header
    assert (h.version, h.site_capacity, h.site_count, h.pid, h.ppid) == (L.TL_SHM_VERSION, 4, 2, 1234, 1)
    assert h.python == "3.11.7"
    assert h.flag_names == ["python", "active"]
    assert snap.pid == 99
    rows = {r.function: r for r in snap.rows}
    assert rows["leaky"].line == 12 and rows["leaky"].file == "/app/leaky.py"
    assert rows["leaky"].retention_pct == 100.0
    assert rows["ok"].retention_pct == 0.0
    assert all(r.source == "preload" and r.pid == 99 and not r.native for r in snap.rows)


def test_same_site_merges_and_native_rows_have_line_zero():
    # GIVEN two records for one line (two code objects / instruction offsets) and a native record
    a = FakeSite(count=1, total_bytes=100, peak_single=100, key_aux=2)
    b = FakeSite(count=2, total_bytes=300, peak_single=200, key_aux=8)
    n = FakeSite(kind=L.TL_KIND_NATIVE, function=b"", file=b"/usr/lib/libfoo.so", line=77, key_addr=0xABC)
    # WHEN parsed
    rows = parse_segment(segment([a, b, n])).rows
    # THEN one Python row with the counts added, the peak the max; the native row keyed by object
    py = [r for r in rows if not r.native]
    assert len(py) == 1 and (py[0].count, py[0].total_bytes, py[0].peak_single) == (3, 400, 200)
    nat = [r for r in rows if r.native]
    assert len(nat) == 1 and nat[0].line == 0 and nat[0].function == "0xabc"


def test_only_ready_records_count():
    sites = [FakeSite(), FakeSite(state=L.TL_SITE_RESERVED), FakeSite(state=L.TL_SITE_EMPTY)]
    snap = parse_segment(segment(sites))
    assert len(snap.records) == 1 and snap.not_ready == 2


def test_names_without_nul_are_refused_not_guessed():
    long_func = b"f" * L.TL_FUNC_MAX  # fills the field: no terminator
    long_file = b"p" * L.TL_FILE_MAX
    snap = parse_segment(segment([FakeSite(function=long_func), FakeSite(file=long_file), FakeSite()]))
    assert len(snap.records) == 1 and snap.bad_records == 2


def test_invalid_utf8_is_replaced():
    snap = parse_segment(segment([FakeSite(function=b"caf\xe9\xff", file=b"/x/\xc3.py")]))
    assert snap.rows[0].function == "caf\ufffd\ufffd"
    assert "\ufffd" in snap.rows[0].file


def test_unknown_kind_is_refused():
    snap = parse_segment(segment([FakeSite(kind=7)]))
    assert snap.records == [] and snap.bad_records == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"magic": b"NOTLEAK\0"}, "not a trackleak segment"),
        ({"version": 99}, f"version 99 is not supported: this trackleak reads version {L.TL_SHM_VERSION}"),
        ({"version": 0xFFFFFFFF}, "version 4294967295"),
        ({"header_size": L.HEADER_SIZE + 8}, "header_size"),
        ({"site_size": L.SITE_SIZE - 8}, "site_size"),
        ({"site_count": 5, "capacity": 2}, "site_count 5 exceeds site_capacity 2"),
        ({"capacity": 0xFFFFFFFF, "pad_to_capacity": False}, "site_capacity 4294967295 needs"),
    ],
)
def test_hostile_headers_are_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ShmError, match=message.replace("(", r"\(")):
        parse_segment(segment([FakeSite(), FakeSite()], **kwargs))


def test_huge_site_count_within_capacity_but_not_in_the_bytes():
    # A forged capacity that the mapping claims to hold, but a buffer that stops early.
    data = segment([FakeSite()], capacity=1000, site_count=1000, pad_to_capacity=False)
    with pytest.raises(ShmError, match="truncated"):
        parse_segment(data, mapping_size=L.HEADER_SIZE + 1000 * L.SITE_SIZE)


def test_short_buffers():
    with pytest.raises(ShmError, match="too short"):
        parse_segment(b"TRK")
    with pytest.raises(ShmError, match="too short"):
        parse_segment(segment([])[:40])


def test_empty_table_is_fine():
    snap = parse_segment(segment([], capacity=8))
    assert snap.rows == [] and snap.header.site_count == 0


def test_parse_maps_finds_only_the_trackleak_memfd():
    text = (
        "55d0c0000000-55d0c0021000 r--p 00000000 08:01 123 /usr/bin/python3.11\n"
        "7f0000000000-7f0000100000 rw-s 00000000 00:01 4567 /memfd:trackleak (deleted)\n"
        "7f0000200000-7f0000300000 rw-s 00000000 00:01 4568 /memfd:other (deleted)\n"
        "7f0000400000-7f0000500000 rw-s 00001000 00:01 4569 /memfd:trackleak (deleted)\n"
        "7f0000600000-7f0000700000 ---s 00000000 00:01 4570 /memfd:trackleak (deleted)\n"
        "garbage line\n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n"
    )
    segs = parse_maps(text)
    assert [(s.start, s.end) for s in segs] == [(0x7F0000000000, 0x7F0000100000)]
    assert segs[0].size == 0x100000


@pytest.fixture
def own_segment():
    """Map a fake segment into this process as a memfd named trackleak (what the shim does)."""
    data = segment([FakeSite(), FakeSite(function=b"healthy", line=30, sample_free_bytes=2_000)], capacity=16)
    fd = os.memfd_create(L.TL_SHM_MEMFD_NAME)
    try:
        os.ftruncate(fd, len(data))
        mm = mmap.mmap(fd, len(data), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    mm[: len(data)] = data
    yield mm
    mm.close()


def test_reads_a_real_mapping_through_proc_pid_mem(own_segment):
    # GIVEN this process maps a trackleak memfd
    pid = os.getpid()
    seg = shm.find_segment(pid)
    assert seg is not None and seg.pathname == "/memfd:trackleak (deleted)"
    # WHEN it is read like any other process's
    snap = shm.read_snapshot(pid)
    # THEN the rows come back, with our pid
    assert {r.function for r in snap.rows} == {"leaky", "healthy"}
    assert all(r.pid == pid for r in snap.rows)


def test_sees_records_published_after_the_first_read(own_segment):
    pid = os.getpid()
    assert len(shm.read_snapshot(pid).rows) == 2
    # a writer bumps site_count: the next read includes the new record (third slot is zeroed -> not ready)
    count_off = L.TlShmHeader.site_count.offset
    own_segment[count_off : count_off + 4] = (3).to_bytes(4, sys.byteorder)
    snap = shm.read_snapshot(pid)
    assert len(snap.rows) == 2 and snap.not_ready == 1


def test_process_without_segment_and_missing_process():
    with pytest.raises(ShmError, match="no trackleak segment"):
        shm.read_snapshot(os.getpid())  # no fixture: nothing mapped
    with pytest.raises(ShmError, match="no process"):
        shm.read_snapshot(2**22 + 12345)


def test_retired_records_count_free_ones_are_skipped_and_other_sites_has_one_name():
    # GIVEN a retired record (out of the shim's index, still counting), a free one (folded) and
    # record 0, "other sites", whatever names a hostile segment gives it
    data = segment(
        [
            FakeSite(function=b"whatever", file=b"/evil", kind=L.TL_KIND_OTHER, count=7, total_bytes=7000),
            FakeSite(function=b"old", state=L.TL_SITE_RETIRED),
            FakeSite(function=b"gone", state=L.TL_SITE_FREE),
            FakeSite(function=b"never", count=0, total_bytes=0, sample_count=0, sample_bytes=0),
        ],
        capacity=8,
    )
    snap = parse_segment(data, pid=5)
    rows = {r.function: r for r in snap.rows}
    # THEN the retired site counts, the free one and the never-used one are not rows
    assert set(rows) == {"old", shm.OTHER_SITES}
    assert snap.free == 1
    other = rows[shm.OTHER_SITES]
    assert (other.file, other.line, other.count) == (shm.OTHER_SITES_FILE, 0, 7)


def test_site_flags_and_small_object_flags():
    # GIVEN a record flagged TL_SITE_F_FREELIST and one not, in a Python process whose small
    # objects were not tracked (neither OBJECTS nor SMALL_BLOCKS in the header)
    data = segment(
        [FakeSite(flags=L.TL_SITE_F_FREELIST), FakeSite(function=b"other", line=30)],
        flags=L.TL_FLAG_PYTHON | L.TL_FLAG_ACTIVE | L.TL_FLAG_PYMEM_HOOKED,
    )
    snap = parse_segment(data, pid=5)
    rows = {r.function: r for r in snap.rows}
    # THEN the flag is the row's misattributed, and the header says small objects were untracked
    assert rows["leaky"].misattributed and not rows["other"].misattributed
    assert snap.header.small_objects_untracked
    # AND with the tracer (3.13+) or small-object mode they were tracked
    for bit in (L.TL_FLAG_OBJECTS, L.TL_FLAG_SMALL_BLOCKS):
        tracked = segment([FakeSite()], flags=L.TL_FLAG_PYTHON | L.TL_FLAG_PYMEM_HOOKED | bit)
        assert not parse_segment(tracked, pid=5).header.small_objects_untracked
        assert L.flag_names(bit) == [
            {L.TL_FLAG_OBJECTS: "objects", L.TL_FLAG_SMALL_BLOCKS: "small-blocks"}[bit]
        ]

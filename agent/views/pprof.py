# SPDX-License-Identifier: MIT
"""`trackleak report --pprof OUT`: the table as a pprof profile (gzip-compressed profile.proto).

Read by ``go tool pprof``, Pyroscope, Grafana, speedscope. One sample per call path
(trackleak.stacks; a row without stacks is the one-frame path of its site) with four values, in
this order (``sample_type``):

    inuse_space/bytes     live_bytes    estimated bytes allocated there and not freed (default)
    inuse_objects/count   live_count
    alloc_space/bytes     total_bytes   every tracked allocation
    alloc_objects/count   count

A location per distinct frame (function, file, line), with one ``Line``; a function per (name,
file). ``period_type`` space/bytes, ``period`` the sampling interval R. Field numbers from
github.com/google/pprof proto/profile.proto.
"""

from __future__ import annotations

import gzip
from typing import Sequence

from ..stacks import Stack
from .protobuf import Message

SAMPLE_TYPES = (
    ("inuse_space", "bytes", "live_bytes"),
    ("inuse_objects", "count", "live_count"),
    ("alloc_space", "bytes", "total_bytes"),
    ("alloc_objects", "count", "count"),
)
DEFAULT_SAMPLE_TYPE = "inuse_space"

# profile.proto field numbers
_P_SAMPLE_TYPE, _P_SAMPLE, _P_MAPPING, _P_LOCATION, _P_FUNCTION, _P_STRINGS = 1, 2, 3, 4, 5, 6
_P_TIME_NANOS, _P_DURATION_NANOS, _P_PERIOD_TYPE, _P_PERIOD, _P_COMMENT, _P_DEFAULT_TYPE = (
    9,
    10,
    11,
    12,
    13,
    14,
)


def display_name(name: str) -> str:
    """pprof shortens C++-looking names by dropping what is between angle brackets, which would
    leave nothing of ``<module>``, ``<lambda>`` or ``<listcomp>``: those get square brackets in
    ``name`` (``system_name`` keeps the original)."""
    if not name:
        return "?"
    return name.replace("<", "[").replace(">", "]")


class _Strings:
    def __init__(self) -> None:
        self.index: dict[str, int] = {"": 0}  # string_table[0] must be ""

    def __call__(self, text: str) -> int:
        n = self.index.get(text)
        if n is None:
            n = self.index[text] = len(self.index)
        return n


def _value_type(strings: _Strings, type_: str, unit: str) -> Message:
    return Message().number(1, strings(type_)).number(2, strings(unit))


def build(
    stacks: Sequence[Stack],
    *,
    period: int = 0,
    time_nanos: int = 0,
    duration_nanos: int = 0,
    comments: Sequence[str] = (),
) -> bytes:
    """The uncompressed profile.proto bytes of STACKS."""
    strings = _Strings()
    profile = Message()
    for type_, unit, _ in SAMPLE_TYPES:
        profile.message(_P_SAMPLE_TYPE, _value_type(strings, type_, unit))

    functions: dict[tuple[str, str], int] = {}
    locations: dict[tuple, int] = {}
    function_msgs: list[Message] = []
    location_msgs: list[Message] = []

    def location_id(frame: tuple) -> int:
        have = locations.get(frame)
        if have is not None:
            return have
        name, file, line = frame
        fid = functions.get((name, file))
        if fid is None:
            fid = functions[(name, file)] = len(functions) + 1
            function_msgs.append(
                Message()
                .number(1, fid)
                .number(2, strings(display_name(name)))
                .number(3, strings(name or "?"))
                .number(4, strings(file))
            )
        lid = locations[frame] = len(locations) + 1
        location_msgs.append(
            Message()
            .number(1, lid)
            .number(2, 1)  # the one mapping below
            .message(4, Message().number(1, fid).number(2, line))
        )
        return lid

    for stack in stacks:
        values = [getattr(stack, attr) for _, _, attr in SAMPLE_TYPES]
        if not any(values):
            continue
        ids = [location_id(f) for f in reversed(stack.frames)]  # pprof: the leaf first
        profile.message(_P_SAMPLE, Message().packed(1, ids).packed(2, values))

    # One mapping that says every location is already symbolized: no reader tries to find the
    # binary (id, filename, has_functions, has_filenames, has_line_numbers).
    profile.message(
        _P_MAPPING,
        Message().number(1, 1).number(5, strings("python")).number(7, 1).number(8, 1).number(9, 1),
    )
    for msg in location_msgs:
        profile.message(_P_LOCATION, msg)
    for msg in function_msgs:
        profile.message(_P_FUNCTION, msg)
    comment_ids = [strings(c) for c in comments]
    period_type = _value_type(strings, "space", "bytes")
    default_type = strings(DEFAULT_SAMPLE_TYPE)
    for text in sorted(strings.index, key=strings.index.__getitem__):
        profile.string(_P_STRINGS, text, keep_empty=True)
    profile.number(_P_TIME_NANOS, time_nanos).number(_P_DURATION_NANOS, duration_nanos)
    profile.message(_P_PERIOD_TYPE, period_type).number(_P_PERIOD, period)
    profile.packed(_P_COMMENT, comment_ids)
    profile.number(_P_DEFAULT_TYPE, default_type)
    return bytes(profile)


def write(path, stacks: Sequence[Stack], **kwargs) -> None:
    """Write the gzip-compressed profile (what pprof tools expect) to PATH."""
    data = gzip.compress(build(stacks, **kwargs), mtime=0)
    with open(path, "wb") as fh:
        fh.write(data)

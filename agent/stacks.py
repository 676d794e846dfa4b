# SPDX-License-Identifier: MIT
"""Call stacks of a row: **the** JSON form both routes write and every view reads (issue 9).

A row (trackleak.table.Row, one site) may carry ``stacks``: the call paths that led to its
allocations, each with its own share of the row's counters::

    "stacks": [
      {"frames": [["main", "/app/run.py", 40], ["handle", "/app/web.py", 12], ["append", "/app/lib.py", 7]],
       "live_bytes": 1048576, "live_count": 1024, "total_bytes": 2097152, "count": 2048,
       "truncated": false,              # optional: the outermost frames were cut (deeper than the depth)
       "growth_bytes_per_s": 5120.0}    # optional: a reader that watched this path (trackleak.history)
    ]

- ``frames``: outermost first; each ``[function, file, line]`` with the meaning of a row's site
  (a native frame has line 0 and the ELF object as file). The **last frame is the row's own site**
  (same function, file and line); a reader checks file and line and shows the row's name.
  At most ``MAX_FRAMES`` frames: a deeper stack keeps its innermost ``MAX_FRAMES`` and says
  ``truncated``.
- ``live_bytes``, ``live_count``, ``total_bytes``, ``count``: the row's counters restricted to the
  allocations made through this path, estimated the same way as the row's (trackleak.sampling: a
  sampled allocation adds its Horvitz-Thompson weights to the stack it was sampled on; ``count``
  and ``total_bytes`` are estimates too, since only sampled allocations record a stack). Two
  stacks of one row never have the same frames.
- Sums over a row's stacks should not exceed the row's counters; where they do (``count`` and
  ``total_bytes`` of paths are estimates next to the row's exact counts; a table read while its
  process runs may be a few allocations apart from its paths) readers scale the paths down to
  the row. What no stack covers (a stack that could not be recorded: its table was full, counted
  in the dump's ``dropped``) is shown by the readers as the one-frame stack of the site itself;
  so is a whole row without ``stacks`` (rows written before stacks existed, or by a route that
  records none). No byte is lost in a view, and none is added: a view adds up to the table.
- At most ``MAX_STACKS`` stacks per row.

Readers treat the input as hostile: ``parse_stacks`` validates everything and refuses the whole
list of a row with a reason (the row itself stays).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .table import Row

MAX_FRAMES = 256  # frames per stack (writers cut deeper stacks at the outermost end)
MAX_STACKS = 65536  # stacks per row
COUNTERS = ("live_bytes", "live_count", "total_bytes", "count")

Frame = tuple  # (function: str, file: str, line: int)


@dataclass
class Stack:
    frames: tuple  # tuple of Frame, outermost first; the last is the row's site
    live_bytes: int = 0
    live_count: int = 0
    total_bytes: int = 0
    count: int = 0
    truncated: bool = False
    growth_bytes_per_s: float | None = None

    def add(self, other: Stack) -> None:
        """Merge the same path of another process (counters add)."""
        self.live_bytes += other.live_bytes
        self.live_count += other.live_count
        self.total_bytes += other.total_bytes
        self.count += other.count
        self.truncated = self.truncated or other.truncated
        if other.growth_bytes_per_s is not None:
            self.growth_bytes_per_s = (self.growth_bytes_per_s or 0.0) + other.growth_bytes_per_s

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"frames": [list(f) for f in self.frames]}
        for name in COUNTERS:
            out[name] = getattr(self, name)
        if self.truncated:
            out["truncated"] = True
        if self.growth_bytes_per_s is not None:
            out["growth_bytes_per_s"] = self.growth_bytes_per_s
        return out


def site_frame(row: Row) -> Frame:
    return (row.function, row.file, row.line)


def _frame(value: Any) -> Frame:
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError("a frame is [function, file, line]")
    function, file, line = value
    if not isinstance(function, str) or not isinstance(file, str):
        raise ValueError("a frame's function and file are strings")
    if isinstance(line, bool) or not isinstance(line, int) or line < 0:
        raise ValueError("a frame's line is a non-negative integer")
    return (function, file, line)


def _counter(obj: dict, name: str) -> int:
    value = obj.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name!r} must be a non-negative integer, got {value!r}")
    return value


def parse_stack(obj: Any) -> Stack:
    if not isinstance(obj, dict):
        raise ValueError("a stack is an object")
    frames = obj.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError("'frames' must be a non-empty list")
    if len(frames) > MAX_FRAMES:
        raise ValueError(f"{len(frames)} frames, more than {MAX_FRAMES}")
    growth = obj.get("growth_bytes_per_s")
    if growth is not None and (
        isinstance(growth, bool) or not isinstance(growth, (int, float)) or not math.isfinite(growth)
    ):
        raise ValueError("'growth_bytes_per_s' must be a number or null")
    truncated = obj.get("truncated", False)
    if not isinstance(truncated, bool):
        raise ValueError("'truncated' must be true or false")
    return Stack(
        frames=tuple(_frame(f) for f in frames),
        live_bytes=_counter(obj, "live_bytes"),
        live_count=_counter(obj, "live_count"),
        total_bytes=_counter(obj, "total_bytes"),
        count=_counter(obj, "count"),
        truncated=truncated,
        growth_bytes_per_s=None if growth is None else float(growth),
    )


def parse_stacks(value: Any, row: Row) -> list[Stack]:
    """The validated ``stacks`` of one row (``[]`` when absent); ValueError refuses them all."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("'stacks' must be a list")
    if len(value) > MAX_STACKS:
        raise ValueError(f"{len(value)} stacks, more than {MAX_STACKS}")
    out: dict[tuple, Stack] = {}
    for n, obj in enumerate(value):
        try:
            stack = parse_stack(obj)
        except ValueError as exc:
            raise ValueError(f"stack {n}: {exc}") from None
        _, file, line = stack.frames[-1]
        if (file, line) != (row.file, row.line):
            raise ValueError(f"stack {n}: its last frame {file}:{line} is not the row's site")
        # The row's name wins (a reader may have renamed a native symbol).
        stack.frames = (*stack.frames[:-1], site_frame(row))
        if stack.frames in out:
            raise ValueError(f"stack {n}: the same frames as another stack of the row")
        out[stack.frames] = stack
    stacks = list(out.values())
    for name in COUNTERS:
        total, have = sum(getattr(s, name) for s in stacks), getattr(row, name)
        if total > have:
            # Paths' count and total_bytes are estimates next to the row's exact ones, and a table
            # read while its process runs can be a few allocations apart from its paths: the row
            # is what the table shows, the paths are scaled to it.
            for stack in stacks:
                setattr(stack, name, getattr(stack, name) * have // total)
    return stacks


def complete(row: Row, stacks: Sequence[Stack]) -> list[Stack]:
    """ROW's stacks plus the one-frame stack of the site holding what they do not cover (the whole
    row when it has no stacks): the counters of the result add up to the row's."""
    out = list(stacks)
    rest = {name: max(getattr(row, name) - sum(getattr(s, name) for s in stacks), 0) for name in COUNTERS}
    if any(rest.values()) or not out:
        own = (site_frame(row),)
        have = next((s for s in out if s.frames == own), None)
        extra = Stack(frames=own, **rest)
        if have is None:
            if not stacks:
                extra.growth_bytes_per_s = row.growth_bytes_per_s
            out.append(extra)
        else:
            have.add(extra)
    return out


def merge(groups: Iterable[Iterable[Stack]]) -> list[Stack]:
    """Stacks of several processes (or rows) merged by their frames."""
    out: dict[tuple, Stack] = {}
    for stacks in groups:
        for stack in stacks:
            have = out.get(stack.frames)
            if have is None:
                out[stack.frames] = dataclasses.replace(stack)
            else:
                have.add(stack)
    return list(out.values())

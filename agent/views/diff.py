# SPDX-License-Identifier: MIT
"""`trackleak diff BEFORE AFTER`: what grew between two snapshots ("take two and compare").

Per site (function, file, line, native), merged over processes (two runs have different pids):
the AFTER row (a zero row for a site that is gone) and the change since BEFORE. Growers first:
by live-bytes change, biggest first, then by the change in allocations; sites that shrank come
last. JSON (``--json``)::

    {"meta": {"format": "trackleak-diff", "version": 1, "before": {...}, "after": {...},
              "seconds": 12.5 | null},
     "sites": [{<the AFTER row's fields, trackleak.table.FIELDS>, "status": "new"|"gone"|"both",
                "before": {"live_bytes", "live_count", "count", "total_bytes"},
                "live_bytes_delta", "live_count_delta", "count_delta", "total_bytes_delta"}, ...]}

``seconds`` is the time between the two tables when both files say when they were taken.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from .. import render
from ..table import Row, leak_order
from .snapshot import DIFF_FORMAT, Snapshot

DIFF_VERSION = 1
DELTAS = ("live_bytes", "live_count", "count", "total_bytes")


@dataclass
class Change:
    row: Row  # the AFTER row (a zero row with the site's names when the site is gone)
    before: Row | None
    after: Row | None

    @property
    def status(self) -> str:
        return "new" if self.before is None else ("gone" if self.after is None else "both")

    def delta(self, name: str) -> int:
        now = getattr(self.after, name) if self.after is not None else 0
        then = getattr(self.before, name) if self.before is not None else 0
        return now - then

    def to_dict(self) -> dict[str, Any]:
        out = self.row.to_dict()
        out["status"] = self.status
        out["before"] = {n: (getattr(self.before, n) if self.before is not None else 0) for n in DELTAS}
        for name in DELTAS:
            out[f"{name}_delta"] = self.delta(name)
        return out


def order(change: Change) -> tuple:
    return (-change.delta("live_bytes"), -change.delta("count"), leak_order(change.row))


def diff(before: Snapshot, after: Snapshot) -> list[Change]:
    """Every site of either table, growers first."""
    old = {r.key: r for r in before.table.merged()}
    new = {r.key: r for r in after.table.merged()}
    changes = []
    for key in list(new) + [k for k in old if k not in new]:
        b, a = old.get(key), new.get(key)
        if a is not None:
            row = a
        else:
            assert b is not None
            row = Row(
                function=b.function, file=b.file, line=b.line, native=b.native, source=b.source, pid=b.pid
            )
        changes.append(Change(row=dataclasses.replace(row), before=b, after=a))
    return sorted(changes, key=order)


def seconds_between(before: Snapshot, after: Snapshot) -> float | None:
    if before.ended is None or after.ended is None:
        return None
    return round(after.ended - before.ended, 3)


def _side(snap: Snapshot) -> dict[str, Any]:
    meta = snap.meta
    return {
        "path": str(snap.path),
        "format": meta.get("format") or ("trackleak-dump" if snap.kind == "dumps" else None),
        "taken": snap.ended,
        "pids": meta.get("pids") or [],
        "command": meta.get("command"),
    }


def to_json(before: Snapshot, after: Snapshot, changes: Sequence[Change]) -> dict[str, Any]:
    return {
        "meta": {
            "format": DIFF_FORMAT,
            "version": DIFF_VERSION,
            "before": _side(before),
            "after": _side(after),
            "seconds": seconds_between(before, after),
        },
        "sites": [c.to_dict() for c in changes],
    }


# The table: the change first, then the AFTER row's usual columns.
COLUMNS = ("FUNCTION", "FILE:LINE", "LIVE DELTA", "COUNT DELTA", *render.COLUMNS[2:])
_RIGHT = {"LIVE DELTA", "COUNT DELTA"} | set(render._RIGHT)


def signed_bytes(n: int) -> str:
    if n == 0:
        return "0 B"
    return ("+" if n > 0 else "-") + render.human_bytes(abs(n))


def signed(n: int) -> str:
    return f"+{n}" if n > 0 else str(n)


def cells(change: Change) -> list[str]:
    base = render.cells(change.row, short=True)
    status = {"new": " (new)", "gone": " (gone)"}.get(change.status, "")
    return [
        base[0] + status,
        base[1],
        signed_bytes(change.delta("live_bytes")),
        signed(change.delta("count")),
        *base[2:],
    ]


def plain_table(changes: Sequence[Change]) -> str:
    body = [cells(c) for c in changes]
    widths = [len(c) for c in COLUMNS]
    for line in body:
        widths = [max(w, len(c)) for w, c in zip(widths, line)]

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if name in _RIGHT else v.ljust(w) for name, w, v in zip(COLUMNS, widths, values)
        ).rstrip()

    lines = [fmt(COLUMNS), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    return "\n".join(lines) + "\n"


def rich_table(changes: Sequence[Change]):
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in _RIGHT else "left", no_wrap=True)
    for change in changes:
        grew = change.delta("live_bytes") > 0
        table.add_row(
            *cells(change), style="red" if grew and change.row.growing else ("yellow" if grew else None)
        )
    return table

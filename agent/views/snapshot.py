# SPDX-License-Identifier: MIT
"""A saved table with everything the views need: rows, their call stacks, the live-bytes series.

Reads what ``trackleak run --json``, ``trackleak-agent --json`` (one process or the host agent) and
the shim's JSON-lines dumps write. The rows come from ``trackleak.report.load_report`` (one rule
for reading a table); this module adds, from the same file, each row's ``stacks``
(trackleak.stacks) and the document's ``history``, and refuses what is not a TrackLeak table or is
of a version this trackleak does not read, with a message (``UserError``), never a traceback.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..report import load_report
from ..sources import dumpfile
from ..stacks import Stack, complete, merge, parse_stacks
from ..table import RetentionTable, Row, SiteKey

# The JSON documents with a "sites" list, by meta.format, and the version each is read at. Written
# by trackleak.runner (RUN_*), trackleak.ebpf.agent (AGENT_*), trackleak.fleet.daemon (FLEET_*);
# tests/unit/test_report_views.py holds these to the writers' constants.
DOCUMENT_VERSIONS = {
    "trackleak-run": 1,
    "trackleak-agent": 1,
    "trackleak-host-agent": 1,
}
DIFF_FORMAT = "trackleak-diff"  # trackleak.views.diff writes it; not a table


@dataclass
class Series:
    """One site's live bytes over time (``history`` in a run's JSON), t in seconds."""

    key: SiteKey
    pid: int | None
    points: list[tuple[float, int]]


@dataclass
class Snapshot:
    path: Path
    kind: str  # "run" (a JSON document, whichever writer) or "dumps" (a shim JSON-lines log)
    meta: dict[str, Any]
    table: RetentionTable
    stacks: dict[tuple[int, SiteKey], list[Stack]] = field(default_factory=dict)  # as written
    history: list[Series] = field(default_factory=list)
    bad_lines: int = 0
    bad_rows: int = 0
    bad_stacks: int = 0
    errors: list[str] = field(default_factory=list)

    def rows(self, *, per_pid: bool = False) -> list[Row]:
        return list(self.table) if per_pid else self.table.merged()

    def stacks_of(self, row: Row, *, per_pid: bool = False) -> list[Stack]:
        """ROW's call paths, completed (trackleak.stacks.complete): they add up to the row. A merged
        row gets the paths of every process that has the site."""
        if per_pid:
            return complete(row, self.stacks.get((row.pid, row.key), []))
        parts = [r for r in self.table if r.key == row.key] if row.pid == 0 else [row]
        groups = [complete(r, self.stacks.get((r.pid, r.key), [])) for r in parts] if parts else []
        return merge(groups) if groups else complete(row, [])

    def all_stacks(self, rows: list[Row] | None = None) -> list[Stack]:
        """Every path of every site (of ROWS, default all, merged over processes)."""
        by_key: dict[SiteKey, list[Row]] = {}
        for r in self.table:
            by_key.setdefault(r.key, []).append(r)
        keys = [r.key for r in rows] if rows is not None else list(by_key)
        groups = []
        for key in keys:
            for r in by_key.get(key, []):
                groups.append(complete(r, self.stacks.get((r.pid, r.key), [])))
        return merge(groups)

    @property
    def ended(self) -> float | None:
        """When the table was taken (seconds since the epoch), if the file says."""
        value = self.meta.get("ended", self.meta.get("timestamp"))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None


def _check_document(doc: dict[str, Any], path: Path) -> None:
    meta = doc.get("meta")
    if meta is None:
        return  # a bare {"sites": [...]}: read as a run's document, as `trackleak report` always did
    if not isinstance(meta, dict):
        raise UserError(f"{path}: 'meta' is not an object: not a TrackLeak table")
    fmt = meta.get("format")
    if fmt is None:
        return
    if fmt == DIFF_FORMAT:
        raise UserError(f"{path}: this is the output of `trackleak diff`, not a table")
    if fmt not in DOCUMENT_VERSIONS:
        raise UserError(f"{path}: format {fmt!r} is not a TrackLeak table")
    version, want = meta.get("version"), DOCUMENT_VERSIONS[fmt]
    if version != want:
        raise UserError(
            f"{path}: {fmt} version {version!r} is not supported: this trackleak reads version {want}"
        )


def _series(value: Any) -> Series:
    if not isinstance(value, dict):
        raise ValueError("not an object")
    function, file, line = value.get("function"), value.get("file"), value.get("line", 0)
    if not isinstance(function, str) or not isinstance(file, str):
        raise ValueError("function and file must be strings")
    if isinstance(line, bool) or not isinstance(line, int) or line < 0:
        raise ValueError("line must be a non-negative integer")
    pid = value.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
        raise ValueError("pid must be an integer")
    points = value.get("points")
    if not isinstance(points, list):
        raise ValueError("points must be a list")
    out = []
    for p in points:
        if (
            not isinstance(p, list)
            or len(p) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in p)
            or not all(math.isfinite(v) for v in p)
        ):
            raise ValueError("a point is [seconds, live bytes]")
        out.append((float(p[0]), int(p[1])))
    return Series(key=(function, file, line, bool(value.get("native", False))), pid=pid, points=out)


def _add_stacks(snap: Snapshot, rows: list[tuple[Row, Any]], where: str) -> None:
    for row, value in rows:
        if value is None:
            continue
        try:
            stacks = parse_stacks(value, row)
        except ValueError as exc:
            snap.bad_stacks += 1
            if len(snap.errors) < dumpfile.MAX_ERRORS_KEPT:
                snap.errors.append(f"{where}: {row.function} {row.file}:{row.line}: stacks: {exc}")
            continue
        have = snap.stacks.setdefault((row.pid, row.key), [])
        snap.stacks[(row.pid, row.key)] = merge([have, stacks])


def _sites_with_stacks(sites: Any, **pinned: Any) -> list[tuple[Row, Any]]:
    out = []
    if not isinstance(sites, list):
        return out
    for site in sites:
        if isinstance(site, dict) and "stacks" in site:
            try:
                out.append((Row.from_dict(site, **pinned), site["stacks"]))
            except ValueError:
                continue  # counted as a bad row by load_report
    return out


def load(path: str | Path) -> Snapshot:
    """Load PATH (a JSON document or a shim JSON-lines log); UserError says what is wrong."""
    path = Path(path).expanduser()
    rep = load_report(path)  # the table, and the errors for missing or unreadable files
    raw = path.read_bytes()
    snap = Snapshot(
        path=path,
        kind=rep.kind,
        meta=dict(rep.meta),
        table=rep.table,
        bad_lines=rep.bad_lines,
        bad_rows=rep.bad_rows,
        errors=list(rep.errors),
    )
    if rep.kind == "run":
        doc = json.loads(raw)
        _check_document(doc, path)
        _add_stacks(snap, _sites_with_stacks(doc["sites"]), str(path))
        history = doc.get("history") or []
        for n, value in enumerate(history if isinstance(history, list) else []):
            try:
                snap.history.append(_series(value))
            except ValueError as exc:
                if len(snap.errors) < dumpfile.MAX_ERRORS_KEPT:
                    snap.errors.append(f"{path}: history {n}: {exc}")
        return snap
    # Shim dumps: the stacks of the dumps the table was made of (the last one of each process).
    log = dumpfile.parse_lines(raw.splitlines(keepends=True), str(path))
    lines = raw.splitlines()
    stamps = []
    for dump in log.final().values():
        stamps.append(dump.timestamp)
        try:
            obj = json.loads(lines[dump.line_no - 1])
        except (IndexError, ValueError):
            continue
        named = [(r, v) for r, v in _sites_with_stacks(obj.get("sites"), source="preload", pid=dump.pid)]
        # The dump reader renames native symbols; match the rows it kept by file and line.
        kept = {(r.file, r.line, r.native): r for r in snap.table if r.pid == dump.pid}
        named = [(kept.get((r.file, r.line, r.native), r), v) for r, v in named]
        _add_stacks(snap, named, f"{path}:{dump.line_no}")
    if stamps:
        snap.meta.setdefault("timestamp", max(stamps))
    return snap

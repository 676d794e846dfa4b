# SPDX-License-Identifier: MIT
"""Read the shim's JSON-lines dumps (``$TRACKLEAK_LOG_DIR/profiler.jsonl`` by default).

One object per line and per dump::

    {"format": "trackleak-dump", "version": 1, "pid": ..., "ppid": ..., "timestamp": <unix s>,
     "reason": "interval" | "exit", "elapsed_seconds": ..., "sample_rate": ..., "sample_interval": ...,
     "min_size": ..., "python": "3.11.7" | null,
     "dropped": {"samples": ..., "sites": ..., "events": ..., "recycled_sites": ..., "stacks": ...},
     "sites": [{function, file, line, count, total_bytes, sample_count, sample_total_bytes,
                sample_free_bytes, retention_pct, peak_single, avg_size, native}, ...]}

Each process (forked children too) appends its own lines. The last ``exit`` dump of a pid is its
final word; a process killed by a signal only has interval dumps, and then its last one counts.

The file is input we do not control (other processes, truncation, a crash mid-line): a bad line is
skipped and counted, never fatal. Retention is recomputed from the counters, never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..stacks import parse_stacks
from ..symbolize.native import native_name
from ..table import RetentionTable, Row

FORMAT = "trackleak-dump"
VERSION = 1
DEFAULT_JSON_LOG = "profiler.json"
MAX_ERRORS_KEPT = 10


def jsonl_name(json_log: str = DEFAULT_JSON_LOG) -> str:
    """The JSON-lines file name the shim derives from TRACKLEAK_JSON_LOG (.json -> .jsonl)."""
    name = json_log or DEFAULT_JSON_LOG
    if len(name) > 5 and name.endswith(
        ".json"
    ):  # as preload/src/config.c: ".json" alone gets ".jsonl" appended
        return name + "l"
    return name + ".jsonl"


def jsonl_path(log_dir: str | Path, json_log: str | None = None) -> Path:
    return Path(log_dir) / jsonl_name(json_log or DEFAULT_JSON_LOG)


@dataclass
class Dump:
    pid: int
    ppid: int
    timestamp: float
    reason: str
    elapsed_seconds: float
    sample_rate: int | None
    min_size: int | None
    python: str | None
    dropped: dict[str, int]
    rows: list[Row]
    bad_rows: int = 0
    path: str = ""
    sample_interval: int | None = None  # mean bytes between samples; absent before layout v3
    line_no: int = 0
    bad_stacks: int = 0  # rows whose "stacks" were refused (trackleak.stacks.parse_stacks)

    @property
    def is_exit(self) -> bool:
        return self.reason == "exit"


@dataclass
class DumpLog:
    dumps: list[Dump] = field(default_factory=list)
    bad_lines: int = 0
    incomplete_lines: int = 0  # a last line without newline: being written right now
    bad_rows: int = 0
    errors: list[str] = field(default_factory=list)  # the first few reasons, for --verbose

    def _bad(self, where: str, why: str) -> None:
        self.bad_lines += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(f"{where}: {why}")

    def extend(self, other: DumpLog) -> None:
        self.dumps.extend(other.dumps)
        self.bad_lines += other.bad_lines
        self.incomplete_lines += other.incomplete_lines
        self.bad_rows += other.bad_rows
        self.errors.extend(other.errors[: max(0, MAX_ERRORS_KEPT - len(self.errors))])

    def pids(self) -> list[int]:
        return sorted({d.pid for d in self.dumps})

    def final(self) -> dict[int, Dump]:
        """Per pid: its last exit dump if it has one, else its last dump."""
        last: dict[int, Dump] = {}
        last_exit: dict[int, Dump] = {}
        for dump in self.dumps:  # in file order: each file is append-only
            last[dump.pid] = dump
            if dump.is_exit:
                last_exit[dump.pid] = dump
        return {pid: last_exit.get(pid, d) for pid, d in last.items()}

    def table(self, pids: Iterable[int] | None = None) -> RetentionTable:
        """The retention table of the final dumps (of PIDS only, when given)."""
        want = None if pids is None else set(pids)
        tab = RetentionTable()
        for pid, dump in sorted(self.final().items()):
            if want is None or pid in want:
                tab.replace_pid(pid, dump.rows)
        return tab


def _num(obj: dict[str, Any], name: str, default: float | None = None) -> float | None:
    value = obj.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name!r} must be a number")
    return value


def _int(obj: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = obj.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name!r} must be an integer")
    return value


def parse_dump(obj: Any) -> Dump:
    """Validate one decoded line; ValueError says why it is refused."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if obj.get("format") != FORMAT:
        raise ValueError(f"format is {obj.get('format')!r}, not {FORMAT!r}")
    version = obj.get("version")
    if version != VERSION:
        raise ValueError(f"dump version {version!r} is not supported: this trackleak reads version {VERSION}")
    pid = _int(obj, "pid")
    if pid is None or pid <= 0:
        raise ValueError("'pid' must be a positive integer")
    sites = obj.get("sites", [])
    if not isinstance(sites, list):
        raise ValueError("'sites' must be a list")
    reason = obj.get("reason", "interval")
    if not isinstance(reason, str):
        raise ValueError("'reason' must be a string")
    python = obj.get("python")
    if python is not None and not isinstance(python, str):
        raise ValueError("'python' must be a string or null")
    dropped_in = obj.get("dropped") or {}
    if not isinstance(dropped_in, dict):
        raise ValueError("'dropped' must be an object")
    dropped = {
        k: v for k, v in dropped_in.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0
    }
    rows = []
    bad_rows = bad_stacks = 0
    for site in sites:
        try:
            if not isinstance(site, dict):
                raise ValueError("site is not an object")
            row = Row.from_dict(site, source="preload", pid=pid)
            if row.native:
                row.function = native_name(row.function, row.file)
            if "stacks" in site:
                try:
                    row.stacks = parse_stacks(site["stacks"], row)
                except ValueError:
                    bad_stacks += 1  # the row stays, shown as its own site
            rows.append(row)
        except ValueError:
            bad_rows += 1
    return Dump(
        pid=pid,
        ppid=_int(obj, "ppid", 0) or 0,
        timestamp=float(_num(obj, "timestamp", 0.0) or 0.0),
        reason=reason,
        elapsed_seconds=float(_num(obj, "elapsed_seconds", 0.0) or 0.0),
        sample_rate=_int(obj, "sample_rate"),
        min_size=_int(obj, "min_size"),
        python=python,
        dropped=dropped,
        rows=rows,
        bad_rows=bad_rows,
        sample_interval=_int(obj, "sample_interval"),
        bad_stacks=bad_stacks,
    )


def parse_lines(lines: Iterable[bytes | str], path: str = "") -> DumpLog:
    """Parse JSON lines; bad ones are counted in the result, never raised."""
    log = DumpLog()
    pending: tuple[int, bytes | str] | None = None
    for line_no, line in enumerate(lines, 1):
        if pending is not None:
            _parse_one(log, *pending, path=path)
        pending = (line_no, line)
    if pending is not None:
        line_no, line = pending
        ends = line.endswith(b"\n") if isinstance(line, bytes) else line.endswith("\n")
        if not ends and line.strip():
            # Possibly being appended right now. If it parses it is complete, else not an error.
            try:
                obj = json.loads(line)
            except ValueError:
                log.incomplete_lines += 1
                return log
            _add(log, obj, line_no, path)
            return log
        _parse_one(log, line_no, line, path=path)
    return log


def _parse_one(log: DumpLog, line_no: int, line: bytes | str, *, path: str) -> None:
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    if not line.strip():
        return
    try:
        obj = json.loads(line)
    except ValueError as exc:
        log._bad(f"{path}:{line_no}", f"not JSON ({exc.msg})")
        return
    _add(log, obj, line_no, path)


def _add(log: DumpLog, obj: Any, line_no: int, path: str) -> None:
    try:
        dump = parse_dump(obj)
    except ValueError as exc:
        log._bad(f"{path}:{line_no}", str(exc))
        return
    dump.path, dump.line_no = path, line_no
    log.bad_rows += dump.bad_rows
    log.dumps.append(dump)


def load(paths: Iterable[str | Path]) -> DumpLog:
    """Parse every file that exists among PATHS (missing ones are skipped: no dump yet)."""
    log = DumpLog()
    for path in paths:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                log.extend(parse_lines(fh, str(p)))
        except FileNotFoundError:
            continue
        except (IsADirectoryError, PermissionError) as exc:
            log._bad(str(p), exc.strerror or str(exc))
    return log

# SPDX-License-Identifier: MIT
"""Load a saved table for `trackleak report`: a `trackleak run --json` file or a shim .jsonl log."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .sources import dumpfile
from .table import RetentionTable, Row


@dataclass
class Report:
    kind: str  # "run" (a --json file) or "dumps" (a shim JSON-lines log)
    table: RetentionTable
    meta: dict[str, Any] = field(default_factory=dict)
    bad_lines: int = 0
    bad_rows: int = 0
    errors: list[str] = field(default_factory=list)


def _run_doc(doc: dict[str, Any], path: Path) -> Report:
    sites = doc.get("sites")
    if not isinstance(sites, list):
        raise UserError(f"{path}: 'sites' is not a list")
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    report = Report(kind="run", table=RetentionTable(), meta=meta)
    for n, site in enumerate(sites):
        try:
            if not isinstance(site, dict):
                raise ValueError("not an object")
            report.table.add(Row.from_dict(site))
        except ValueError as exc:
            report.bad_rows += 1
            if len(report.errors) < dumpfile.MAX_ERRORS_KEPT:
                report.errors.append(f"{path}: site {n}: {exc}")
    return report


def load_report(path: str | Path) -> Report:
    """Detect the format and load it; UserError when PATH is neither."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory") from None
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None  # JSON lines (or garbage): decided below
    except RecursionError:
        raise UserError(f"{path}: nesting too deep to be a trackleak table") from None
    if isinstance(doc, dict) and "sites" in doc and doc.get("format") != dumpfile.FORMAT:
        return _run_doc(doc, path)
    log = dumpfile.parse_lines(raw.splitlines(keepends=True), str(path))
    if not log.dumps:
        why = f" ({log.errors[0]})" if log.errors else ""
        raise UserError(f"{path}: neither a `trackleak run --json` file nor a shim JSON-lines log{why}")
    final = log.final()
    meta: dict[str, Any] = {"pids": sorted(final)}
    first = next(iter(final.values()))
    meta["sample_rate"], meta["min_size"] = first.sample_rate, first.min_size
    return Report(
        kind="dumps",
        table=log.table(),
        meta=meta,
        bad_lines=log.bad_lines,
        bad_rows=log.bad_rows,
        errors=list(log.errors),
    )

# SPDX-License-Identifier: MIT
"""Show retention rows: a rich table for terminals, fixed-width plain text for pipes and files.

Columns: FUNCTION, FILE:LINE, LIVE, GROWTH, COUNT, TOTAL, SAMPLES, SAMPLED, FREED, RET%, PEAK, AVG.
LIVE is the estimated bytes allocated at the site and still live; GROWTH their trend (per second,
"-" until the site was watched long enough). A site whose live bytes keep growing is a likely leak:
ranked first and shown in red. RET% is "n/a" when nothing was sampled (unknown is not healthy).
A FUNCTION ending in MISATTRIBUTED_MARK may hold memory another line allocated (``Row.misattributed``;
``footnotes`` says so once under the table).
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from .table import Row, is_leak, sorted_rows

COLUMNS = (
    "FUNCTION",
    "FILE:LINE",
    "LIVE",
    "GROWTH",
    "COUNT",
    "TOTAL",
    "SAMPLES",
    "SAMPLED",
    "FREED",
    "RET%",
    "PEAK",
    "AVG",
)
COMPACT_COLUMNS = ("FUNCTION", "FILE:LINE", "LIVE", "GROWTH", "TOTAL", "SAMPLES", "RET%")
_RIGHT = {"LIVE", "GROWTH", "COUNT", "TOTAL", "SAMPLES", "SAMPLED", "FREED", "RET%", "PEAK", "AVG"}


def human_bytes(n: int) -> str:
    """1023 -> "1023 B", 1536 -> "1.5 KiB", binary units."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def fmt_growth(bytes_per_s: float | None) -> str:
    """ "+1.5 MiB/s", "-2.0 KiB/s", "0 B/s"; "-" when unknown."""
    if bytes_per_s is None:
        return "-"
    sign = "+" if bytes_per_s > 0.5 else ("-" if bytes_per_s < -0.5 else "")
    return f"{sign}{human_bytes(round(abs(bytes_per_s)))}/s"


def fmt_retention(pct: float | None) -> str:
    return "n/a" if pct is None else f"{pct:.1f}%"


def location(row: Row, *, short: bool = False) -> str:
    path = display_path(row.file) if short else row.file
    if row.native or not row.line:
        return path or "?"
    return f"{path or '?'}:{row.line}"


def display_path(path: str) -> str:
    """For the terminal only: relative to the current directory when under it, ~ for home."""
    if not path.startswith("/"):
        return path  # "<frozen ...>", "<string>", a bare ELF name
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""
    if cwd and cwd != "/" and path.startswith(cwd + "/"):
        return path[len(cwd) + 1 :]
    home = os.path.expanduser("~")
    if home not in ("", "/") and path.startswith(home + "/"):
        return "~" + path[len(home) :]
    return path


MISATTRIBUTED_MARK = " (?)"
MISATTRIBUTED_NOTE = (
    "(?) objects CPython recycles through freelists (dict, tuple, list, float) were sampled at this "
    "line while only the allocator was watched (CPython before 3.13): the line that allocated them "
    "may not be the line that keeps them"
)
SMALL_OBJECTS_NOTE = "objects under the minimum size ({min_size} B) are not tracked{why}"
# What to do about it, by why (the sources pass one of these as small_objects_untracked):
SMALL_BEFORE_313 = (
    " on this Python (before 3.13): TRACKLEAK_SMALL_OBJECTS=1 (trackleak run --small-objects 1) "
    "tracks them (sampled; costs more)"
)
SMALL_NO_TRACER = (
    ": this interpreter gives no reference tracer (a free-threaded build, or --small-objects 0); "
    "--min-size 0 counts them at the allocator"
)
SMALL_NO_ARENAS = ": --arenas (the default) charges pymalloc's arenas to the lines that make them"


def footnotes(
    rows: Iterable[Row], *, small_objects_untracked: bool | str = False, min_size: int = 500
) -> list[str]:
    """Lines to print once under a table: what the marker means (when a shown row has it), and
    that small objects were not tracked (``small_objects_untracked``: what to do about it, one
    of the SMALL_* texts; True: SMALL_BEFORE_313)."""
    out = []
    if any(r.misattributed for r in rows):
        out.append(MISATTRIBUTED_NOTE)
    if small_objects_untracked and min_size > 0:
        why = small_objects_untracked if isinstance(small_objects_untracked, str) else SMALL_BEFORE_313
        out.append(SMALL_OBJECTS_NOTE.format(min_size=min_size, why=why))
    return out


def cells(row: Row, *, short: bool = False) -> list[str]:
    return [
        (row.function or "?") + (MISATTRIBUTED_MARK if row.misattributed else ""),
        location(row, short=short),
        human_bytes(row.live_bytes),
        fmt_growth(row.growth_bytes_per_s),
        str(row.count),
        human_bytes(row.total_bytes),
        str(row.sample_count),
        human_bytes(row.sample_total_bytes),
        human_bytes(row.sample_free_bytes),
        fmt_retention(row.retention_pct),
        human_bytes(row.peak_single),
        human_bytes(row.avg_size),
    ]


def top_rows(rows: Iterable[Row], *, top: int | None = 20, sort: str = "leak") -> list[Row]:
    ordered = sorted_rows(rows, by=sort)
    return ordered if not top or top <= 0 else ordered[:top]


# Columns the host agent puts before the others (trackleak.fleet): process, route, command.
PROCESS_COLUMNS = ("PID", "SOURCE", "COMMAND")


def process_cells(row: Row) -> list[str]:
    command = row.command or "?"
    return [str(row.pid), row.source, f"[{row.container}] {command}" if row.container else command]


def plain_table(rows: Sequence[Row], *, processes: bool = False) -> str:
    """Fixed-width text (no colour, nothing cut): good for logs, grep and diff. PROCESSES: the
    PID, SOURCE and COMMAND columns first (the host agent's table)."""
    columns = (PROCESS_COLUMNS + COLUMNS) if processes else COLUMNS
    body = [(process_cells(r) if processes else []) + cells(r) for r in rows]
    widths = [len(c) for c in columns]
    for line in body:
        widths = [max(w, len(c)) for w, c in zip(widths, line)]

    def fmt(values: Sequence[str]) -> str:
        out = []
        for name, width, value in zip(columns, widths, values):
            out.append(value.rjust(width) if name in _RIGHT else value.ljust(width))
        return "  ".join(out).rstrip()

    lines = [fmt(columns), fmt(["-" * w for w in widths])]
    lines += [fmt(line) for line in body]
    return "\n".join(lines) + "\n"


def rich_table(
    rows: Sequence[Row],
    *,
    title: str | None = None,
    caption: str | None = None,
    compact: bool = False,
    width: int | None = None,
    processes: bool = False,
):
    """A rich.table.Table of ROWS (import of rich deferred: plain output does not need it).

    compact: no outer border, one line under the header, one line per row (len(rows) + 3 lines
    with a caption) within WIDTH columns: the live view pinned to the bottom of the terminal.
    """
    from rich import box
    from rich.table import Table

    table = Table(
        title=title,
        caption=caption,
        header_style="bold",
        expand=False,
        pad_edge=False,
        box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
        show_edge=not compact,
        caption_justify="left" if compact else "center",
    )
    columns = COMPACT_COLUMNS if compact else COLUMNS
    pick = [COLUMNS.index(name) for name in columns]
    body = [[line[i] for i in pick] for line in (cells(row, short=True) for row in rows)]
    widths = [max([len(name)] + [len(line[i]) for line in body]) for i, name in enumerate(columns)]
    # Numbers are never cut: FUNCTION and FILE:LINE give way when the terminal is narrow. In the
    # compact view they are cut to what is left, so that every row is one line: names keep their
    # head, paths their tail (the file name and line).
    numbers = sum(w for w, name in zip(widths, columns) if name in _RIGHT)
    spare = (width or 200) - numbers - 3 * len(columns)  # padding and column separators
    text_max = {"FUNCTION": max(8, spare * 2 // 5), "FILE:LINE": max(8, spare - spare * 2 // 5)}
    if compact:
        at = columns.index("FILE:LINE")
        for line in body:
            line[at] = cut_left(line[at], text_max["FILE:LINE"])
    if processes:  # the host agent: which process, by which route, before the site columns
        table.add_column("PID", justify="right", no_wrap=True)
        table.add_column("SOURCE", no_wrap=True)
        table.add_column("COMMAND", no_wrap=True, overflow="ellipsis", max_width=40)
        body = [process_cells(row) + line for row, line in zip(rows, body)]
    for index, name in enumerate(columns):
        if name in _RIGHT:
            table.add_column(name, justify="right", no_wrap=True, min_width=widths[index])
        elif compact:
            table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=text_max[name])
        else:
            table.add_column(name, overflow="fold")
    for row, line in zip(rows, body):
        table.add_row(*line, style="bold red" if is_leak(row) else None)
    return table


PATHS_ROWS = 3  # rows of a final table whose call paths are printed under it
PATHS_PER_ROW = 3  # paths printed per row (the ones holding most live bytes)
PATH_FRAMES = 4  # callers printed per path (the innermost ones)


def _frame_text(frame: tuple) -> str:
    function, file, line = frame
    name = os.path.basename(file) if file else "?"
    return f"{function} ({name}:{line})" if line else f"{function} ({name})"


def call_paths(
    rows: Sequence[Row], *, rows_limit: int = PATHS_ROWS, per_row: int = PATHS_PER_ROW
) -> list[str]:
    """Lines to print under a table: for its first ROWS_LIMIT rows that know more than one call
    path, or a caller (Row.stacks), the paths holding the most live bytes, innermost callers
    last ("main (app.py:40) > handle (web.py:12) > append"), with their share of the row's live
    bytes. Empty when no row has paths."""
    out: list[str] = []
    shown = 0
    for row in rows:
        if shown >= rows_limit:
            break
        paths = [s for s in row.stacks or () if len(s.frames) > 1]
        if not paths:
            continue
        shown += 1
        paths.sort(key=lambda s: (-s.live_bytes, -s.total_bytes))
        out.append(f"call paths of {row.function} ({location(row, short=True)}), by live bytes:")
        whole = max(row.live_bytes, sum(s.live_bytes for s in row.stacks or ()), 1)
        for stack in paths[:per_row]:
            callers = [_frame_text(f) for f in stack.frames[:-1]]
            cut = len(callers) > PATH_FRAMES or stack.truncated
            text = " > ".join(callers[-PATH_FRAMES:]) + " > " + row.function
            share = 100.0 * min(stack.live_bytes, whole) / whole
            growth = (
                f"  {fmt_growth(stack.growth_bytes_per_s)}" if stack.growth_bytes_per_s is not None else ""
            )
            out.append(
                f"  {share:5.1f}%  {human_bytes(stack.live_bytes):>10}{growth}  {'… > ' if cut else ''}{text}"
            )
        if len(paths) > per_row:
            out.append(f"  … {len(paths) - per_row} more path(s): trackleak report --html shows them all")
    return out


def cut_left(text: str, width: int) -> str:
    """Keep the end of TEXT (a path's file name and line) within WIDTH characters."""
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1 :]


def summary_line(rows: Sequence[Row], *, elapsed: float | None = None, pids: Iterable[int] = ()) -> str:
    """One line for a non-terminal progress report: totals and the top site."""
    pids = sorted(set(pids))
    total = sum(r.total_bytes for r in rows)
    leaks = [r for r in rows if is_leak(r)]
    parts = []
    if elapsed is not None:
        parts.append(f"{elapsed:.0f}s")
    parts.append(f"pids={','.join(map(str, pids)) or '-'}")
    parts.append(f"sites={len(rows)}")
    parts.append(f"tracked={human_bytes(total)}")
    parts.append(f"live={human_bytes(sum(r.live_bytes for r in rows))}")
    parts.append(f"growing={len(leaks)}")
    if rows:
        top = top_rows(rows, top=1)[0]
        parts.append(
            f"top={top.function} ({location(top)}) live={human_bytes(top.live_bytes)} "
            f"growth={fmt_growth(top.growth_bytes_per_s)} ret={fmt_retention(top.retention_pct)} "
            f"total={human_bytes(top.total_bytes)}"
        )
    return "trackleak: " + " ".join(parts)

# SPDX-License-Identifier: MIT
"""`trackleak inspect PID`: decode a live process's shared-memory segment (the parse/debug command).

It reads exactly what `trackleak run` and the agent read, and shows what the reader refused.
"""

import json
import time
from typing import Annotated

import typer

from trackleak import layout, render
from trackleak.cli._common import stdout_is_terminal, user_errors
from trackleak.errors import UserError
from trackleak.sources.shm import find_segments, read_segment, struct_layout


def _when(ns: int) -> str:
    if not ns:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def inspect(
    pid: Annotated[int, typer.Argument(help="Process id of a preloaded process.", min=1)],
    raw: Annotated[bool, typer.Option("--raw", help="Every READY record as stored (not merged).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    top: Annotated[int, typer.Option(min=0, help="Rows to show (0: all).")] = 0,
) -> None:
    """Dump a live segment's header and rows."""
    with user_errors():
        segs = find_segments(pid)
        if not segs:
            raise UserError(f"process {pid} has no trackleak segment (not started with the shim?)")
        seg = segs[0]
        snap = read_segment(pid, seg)
    h = snap.header
    if as_json:
        doc = {
            "pid": pid,
            "mapping": {"start": seg.start, "end": seg.end, "perms": seg.perms, "path": seg.pathname},
            "header": {**h.__dict__, "flag_names": h.flag_names, "python": h.python},
            "not_ready": snap.not_ready,
            "bad_records": snap.bad_records,
            "layout": struct_layout(),
        }
        if raw:
            doc["records"] = [r.__dict__ for r in snap.records]
        else:
            doc["sites"] = [r.to_dict() for r in render.top_rows(snap.rows, top=top)]
        typer.echo(json.dumps(doc, indent=1))
        return
    out = [
        f"segment   {seg.start:#x}-{seg.end:#x} {seg.perms} {seg.pathname} ({seg.size} bytes)",
        f"version   {h.version} (header {h.header_size} B, site {h.site_size} B)",
        f"owner     pid {h.pid} ppid {h.ppid}" + (f" (read from pid {pid})" if h.pid != pid else ""),
        f"flags     {h.flags:#x} {' '.join(h.flag_names) or '-'}",
        f"python    {h.python or '-'}",
        f"started   {_when(h.start_time_ns)}   last dump {_when(h.update_time_ns)}",
        f"sampling  1/{h.sample_rate}, min size {h.min_size} B, live samples {h.live_samples}",
        f"sites     {h.site_count}/{h.site_capacity} "
        f"(not ready {snap.not_ready}, refused {snap.bad_records})",
        f"stacks    depth {h.stack_depth}, paths {h.stack_count}/{h.stack_capacity}, "
        f"frames {h.frame_count}/{h.frame_capacity} (refused {snap.bad_stacks})"
        + (f" UNREADABLE: {h.stacks_error}" if h.stacks_error else ""),
        f"dropped   samples {h.dropped_samples}, sites {h.dropped_sites}, events {h.dropped_events}, "
        f"stacks {h.dropped_stacks}",
    ]
    typer.echo("\n".join(out), err=True)
    if raw:
        for r in snap.records:
            kind = "py" if r.kind == layout.TL_KIND_PYTHON else "native"
            typer.echo(
                f"#{r.index} {kind} key={r.key_addr:#x}+{r.key_aux} line={r.line} count={r.count} "
                f"total={r.total_bytes} samples={r.sample_count}/{r.sample_bytes}B "
                f"freed={r.sample_free_count}/{r.sample_free_bytes}B peak={r.peak_single} "
                f"{r.function!r} {r.file!r}"
            )
        return
    rows = render.top_rows(snap.rows, top=top)
    if stdout_is_terminal():
        from rich.console import Console

        Console().print(render.rich_table(rows))
    else:
        typer.echo(render.plain_table(rows), nl=False)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)

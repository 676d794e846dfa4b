# SPDX-License-Identifier: MIT
"""`trackleak report PATH`: show a saved table again (a `trackleak run --json` file or a shim .jsonl)."""

from pathlib import Path
from typing import Annotated

import typer

from trackleak import render
from trackleak.cli._common import SORT_HELP, SortBy, stdout_is_terminal, user_errors
from trackleak.report import load_report


def report(
    path: Annotated[Path, typer.Argument(help="A `trackleak run --json` file or the shim's profiler.jsonl.")],
    top: Annotated[int, typer.Option(min=0, help="Rows to show (0: all).")] = 20,
    sort: Annotated[SortBy, typer.Option(help=SORT_HELP)] = SortBy.leak,
    per_pid: Annotated[
        bool, typer.Option("--per-pid", help="One row per process and site (default: merged).")
    ] = False,
) -> None:
    """Render a saved retention table."""
    with user_errors():
        rep = load_report(path)
    rows = list(rep.table) if per_pid else rep.table.merged()
    rows = render.top_rows(rows, top=top, sort=sort.value)
    meta = rep.meta
    pids = meta.get("pids") or []
    head = f"trackleak: {path}: {len(rep.table.merged())} sites from {len(pids)} process(es)"
    if meta.get("command"):
        head += f"; command: {' '.join(map(str, meta['command']))}"
    if meta.get("exit_code") is not None:
        head += f"; exit status {meta['exit_code']}"
    typer.echo(head, err=True)
    if rep.bad_lines or rep.bad_rows:
        typer.echo(f"trackleak: skipped {rep.bad_lines} bad line(s) and {rep.bad_rows} bad row(s)", err=True)
    if not rows:
        typer.echo("trackleak: the table is empty", err=True)
        return
    if stdout_is_terminal():
        from rich.console import Console

        Console().print(render.rich_table(rows))
    else:
        typer.echo(render.plain_table(rows), nl=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report)

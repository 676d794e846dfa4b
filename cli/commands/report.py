# SPDX-License-Identifier: MIT
"""`trackleak report PATH`: show a saved table again (a `trackleak run --json` file, an agent's
--json, or a shim .jsonl), or write it as an HTML page, a pprof profile, folded stacks."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from trackleak import config, render
from trackleak.cli._common import SORT_HELP, SortBy, stdout_is_terminal, user_errors
from trackleak.errors import UserError
from trackleak.views import collapsed as collapsed_view
from trackleak.views import snapshot as snapshot_view

STDOUT = "-"


def _write_views(snap, rows, all_rows, *, html: Optional[Path], pprof: Optional[Path], collapsed) -> None:
    """Each view asked for; a file that cannot be written is a UserError (exit 2)."""
    from trackleak.views import html as html_view
    from trackleak.views import pprof as pprof_view

    def _guard(path, write) -> None:
        try:
            write()
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        typer.echo(f"trackleak: wrote {path}", err=True)

    if html is not None:
        _guard(html, lambda: html_view.write(html, snap, rows, all_rows))
    if pprof is not None:
        stacks = snap.all_stacks(all_rows)
        ended = snap.ended
        started = snap.meta.get("started")
        kwargs = {
            "period": snap.meta.get("sample_interval") or 0,
            "time_nanos": int((started if isinstance(started, (int, float)) else ended or 0) * 1e9),
            "comments": [f"trackleak report {snap.path.name}"],
        }
        if isinstance(started, (int, float)) and ended:
            kwargs["duration_nanos"] = max(int((ended - started) * 1e9), 0)
        _guard(pprof, lambda: pprof_view.write(pprof, stacks, **kwargs))
    if collapsed is not None:
        text = collapsed_view.text(snap.all_stacks(all_rows))
        if str(collapsed) == STDOUT:
            typer.echo(text, nl=False)
        else:
            _guard(collapsed, lambda: Path(collapsed).write_text(text, encoding="utf-8"))


def report(
    path: Annotated[
        Path,
        typer.Argument(
            help="A `trackleak run --json` or `trackleak-agent --json` file, or the shim's profiler.jsonl."
        ),
    ],
    top: Annotated[
        int, typer.Option(min=0, help="Rows to show (0: all); the HTML table too.")
    ] = config.default("top"),
    sort: Annotated[SortBy, typer.Option(help=SORT_HELP)] = SortBy.leak,
    per_pid: Annotated[
        bool, typer.Option("--per-pid", help="One row per process and site (default: merged).")
    ] = False,
    html: Annotated[
        Optional[Path],
        typer.Option(
            "--html",
            metavar="OUT",
            help="Write one self-contained HTML page: the table, live bytes over time, a flame graph.",
        ),
    ] = None,
    pprof: Annotated[
        Optional[Path],
        typer.Option(
            "--pprof",
            metavar="OUT",
            help="Write a pprof profile (gzipped profile.proto: inuse_space/objects, alloc_space/objects).",
        ),
    ] = None,
    collapsed: Annotated[
        Optional[str],
        typer.Option(
            "--collapsed",
            metavar="OUT",
            help="Write folded stacks of live bytes (flamegraph.pl, speedscope); '-' for stdout.",
        ),
    ] = None,
) -> None:
    """Render a saved retention table, or write it as HTML, pprof or folded stacks."""
    with user_errors():
        snap = snapshot_view.load(path)
        all_rows = snap.rows(per_pid=per_pid)
        rows = render.top_rows(all_rows, top=top, sort=sort.value)
        all_sorted = render.top_rows(all_rows, top=0, sort=sort.value)
        views = html is not None or pprof is not None or collapsed is not None
        meta = snap.meta
        pids = meta.get("pids") or []
        head = f"trackleak: {path}: {len(snap.table.merged())} sites from {len(pids)} process(es)"
        if meta.get("command"):
            head += f"; command: {' '.join(map(str, meta['command']))}"
        if meta.get("exit_code") is not None:
            head += f"; exit status {meta['exit_code']}"
        typer.echo(head, err=True)
        if snap.bad_lines or snap.bad_rows:
            typer.echo(
                f"trackleak: skipped {snap.bad_lines} bad line(s) and {snap.bad_rows} bad row(s)", err=True
            )
        if snap.bad_stacks:
            typer.echo(
                f"trackleak: {snap.bad_stacks} row(s) with unreadable stacks shown as their own site "
                f"(first: {next((e for e in snap.errors if 'stacks:' in e), '?')})",
                err=True,
            )
        if views:
            _write_views(snap, rows, all_sorted, html=html, pprof=pprof, collapsed=collapsed)
            return
    if not rows:
        typer.echo("trackleak: the table is empty", err=True)
        return
    for row in rows:
        row.stacks = snap.stacks_of(row, per_pid=per_pid)
    if stdout_is_terminal():
        from rich.console import Console

        Console().print(render.rich_table(rows))
    else:
        typer.echo(render.plain_table(rows), nl=False)
    paths = render.call_paths(rows)
    if paths:
        typer.echo("\n" + "\n".join(paths))


def register(app: typer.Typer) -> None:
    app.command("report")(report)

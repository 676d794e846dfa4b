# SPDX-License-Identifier: MIT
"""`trackleak diff BEFORE AFTER`: what grew between two saved tables (logic: trackleak.views.diff)."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from trackleak import config
from trackleak.cli._common import stdout_is_terminal, user_errors
from trackleak.errors import UserError
from trackleak.views import diff as diff_view
from trackleak.views import snapshot as snapshot_view


def diff(
    before: Annotated[Path, typer.Argument(help="The earlier table (any file `trackleak report` reads).")],
    after: Annotated[Path, typer.Argument(help="The later table.")],
    top: Annotated[int, typer.Option(min=0, help="Rows to show (0: all).")] = config.default("top"),
    json_out: Annotated[
        Optional[str],
        typer.Option(
            "--json", metavar="OUT", help="Write the change as JSON to OUT ('-': stdout, no table)."
        ),
    ] = None,
) -> None:
    """Per site, what grew between two snapshots: live bytes and allocations, growers first."""
    with user_errors():
        old = snapshot_view.load(before)
        new = snapshot_view.load(after)
        changes = diff_view.diff(old, new)
        span = diff_view.seconds_between(old, new)
        grew = sum(1 for c in changes if c.delta("live_bytes") > 0)
        total = sum(c.delta("live_bytes") for c in changes)
        head = (
            f"trackleak: {before} -> {after}: {len(changes)} sites, {grew} grew; live bytes "
            f"{diff_view.signed_bytes(total)}" + (f" in {span:g} s" if span is not None else "")
        )
        typer.echo(head, err=True)
        for snap in (old, new):
            if snap.bad_lines or snap.bad_rows:
                typer.echo(
                    f"trackleak: {snap.path}: skipped {snap.bad_lines} bad line(s) and "
                    f"{snap.bad_rows} bad row(s)",
                    err=True,
                )
        if json_out is not None:
            doc = diff_view.to_json(old, new, changes)
            text = json.dumps(doc, indent=1) + "\n"
            if json_out == "-":
                typer.echo(text, nl=False)
                return
            try:
                Path(json_out).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise UserError(f"cannot write {json_out}: {exc.strerror or exc}") from None
            typer.echo(f"trackleak: wrote {json_out}", err=True)
    shown = changes if not top else changes[:top]
    if not shown:
        typer.echo("trackleak: both tables are empty", err=True)
        return
    if stdout_is_terminal():
        from rich.console import Console

        Console().print(diff_view.rich_table(shown))
    else:
        typer.echo(diff_view.plain_table(shown), nl=False)


def register(app: typer.Typer) -> None:
    app.command("diff")(diff)

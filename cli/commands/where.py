# SPDX-License-Identifier: MIT
"""`trackleak where`: the path of the installed shim, for `LD_PRELOAD=$(trackleak where) python3 app.py`."""

import typer

from trackleak.cli._common import user_errors
from trackleak.shim import shim_path


def where() -> None:
    """Print the path of the preload shim (trackleak.so); TRACKLEAK_SO overrides it."""
    with user_errors():
        typer.echo(str(shim_path()))


def register(app: typer.Typer) -> None:
    app.command("where")(where)

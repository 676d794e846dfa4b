# SPDX-License-Identifier: MIT
"""`trackleak`: the root Typer app. One module per subcommand in cli/commands/ (each has register())."""

import importlib
from typing import Annotated, Optional

import typer

from trackleak import __version__
from trackleak.cli.commands import report, run, shm, where

app = typer.Typer(
    name="trackleak",
    help="Find the Python line that leaks memory (LD_PRELOAD shim; eBPF agent: trackleak-agent).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"trackleak {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Find the Python line that leaks memory."""


for _module in (run, report, where, shm):
    _module.register(app)


def _optional(name: str) -> None:
    """Register cli/commands/NAME.py if it exists (written by another part of the project)."""
    full = f"trackleak.cli.commands.{name}"
    try:
        module = importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name == full:
            return
        raise
    if hasattr(module, "register"):
        module.register(app)
    else:
        app.command(name)(getattr(module, name))


_optional("doctor")
_optional("es")
_optional("diff")


def main() -> None:
    app(prog_name="trackleak")


if __name__ == "__main__":
    main()

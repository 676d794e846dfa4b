# SPDX-License-Identifier: MIT
"""`trackleak run`: start a script, a module or any command with the shim preloaded.

    trackleak run [OPTIONS] script.py [ARGS]...
    trackleak run [OPTIONS] -m module [ARGS]...
    trackleak run [OPTIONS] -- COMMAND [ARGS]...

Options go before the script: everything after the script (or after ``--``) is the child's, so
``trackleak run app.py --verbose`` passes ``--verbose`` to app.py. The logic is trackleak.runner.
"""

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperCommand

from trackleak import runner
from trackleak.cli._common import SORT_HELP, SortBy, user_errors

HELP = """Run a Python script, a module (-m) or any command (after --) with the shim preloaded.

trackleak run [OPTIONS] script.py [ARGS]... | -m MODULE [ARGS]... | -- COMMAND [ARGS]...

Shows the top allocation sites while it runs and the final retention table at exit (stdout).
The child's exit status is passed through. Options must come before the script.
"""


class RunCommand(TyperCommand):
    """Remembers whether `--` came before the first positional: `-- CMD` runs CMD as a program,
    while a bare first positional is a Python script (click drops the `--` itself)."""

    def parse_args(self, ctx, args):
        raw = list(args)
        rest = super().parse_args(ctx, args)
        argv = list(ctx.params.get("argv") or ())
        n = len(argv)
        ctx.meta["trackleak.command_form"] = bool(
            n and len(raw) > n and raw[-n - 1] == "--" and raw[-n:] == argv
        )
        return rest


def target_from(argv: List[str], module: Optional[str], command_form: bool) -> runner.Target:
    if module is not None:
        return runner.Target("module", module, tuple(argv))
    if not argv:
        raise typer.BadParameter("name a script, -m MODULE, or -- COMMAND", param_hint="SCRIPT")
    kind = "command" if command_form else "script"
    return runner.Target(kind, argv[0], tuple(argv[1:]))


def run(
    ctx: typer.Context,
    argv: Annotated[
        Optional[List[str]],
        typer.Argument(
            metavar="SCRIPT [ARGS]",
            help="The script and its arguments, or after -- any program and its arguments.",
            show_default=False,
        ),
    ] = None,
    module: Annotated[
        Optional[str],
        typer.Option(
            "--module", "-m", help="Run a library module as a script (python3 -m MODULE).", show_default=False
        ),
    ] = None,
    python: Annotated[
        Optional[str],
        typer.Option(
            "--python",
            envvar="TRACKLEAK_PYTHON",
            help="Interpreter for a script or -m (default: python3 on PATH).",
            show_default=False,
        ),
    ] = None,
    sample_rate: Annotated[
        Optional[int],
        typer.Option(
            envvar="TRACKLEAK_SAMPLE_RATE",
            min=1,
            help="Sample by bytes, one sample per N KiB allocated on average (shim default: 50); "
            "1 samples every allocation.",
            show_default=False,
        ),
    ] = None,
    sample_bytes: Annotated[
        Optional[int],
        typer.Option(
            envvar="TRACKLEAK_SAMPLE_BYTES",
            min=1,
            help="Mean bytes between samples, set directly (default: the sample rate in KiB).",
            show_default=False,
        ),
    ] = None,
    min_size: Annotated[
        Optional[int],
        typer.Option(
            envvar="TRACKLEAK_MIN_SIZE",
            min=0,
            help="Track allocations of at least N bytes (shim default: 500).",
            show_default=False,
        ),
    ] = None,
    dump_interval: Annotated[
        Optional[int],
        typer.Option(
            envvar="TRACKLEAK_DUMP_INTERVAL",
            min=1,
            help="Seconds between the shim's log dumps (shim default: 300).",
            show_default=False,
        ),
    ] = None,
    startup_delay: Annotated[
        Optional[int],
        typer.Option(
            envvar="TRACKLEAK_STARTUP_DELAY",
            min=0,
            help="Seconds before tracking starts (run default: 0).",
            show_default=False,
        ),
    ] = None,
    log_dir: Annotated[
        Optional[Path],
        typer.Option(
            envvar="TRACKLEAK_LOG_DIR",
            help="Keep the shim's logs here (run default: a private temporary directory, removed at exit).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    json_path: Annotated[
        Optional[Path],
        typer.Option(
            "--json",
            help="Write the final table and run metadata as JSON to this file.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between live updates.")] = 1.0,
    top: Annotated[int, typer.Option(min=0, help="Rows to show (0: all).")] = 20,
    sort: Annotated[SortBy, typer.Option(help=SORT_HELP)] = SortBy.leak,
    live: Annotated[
        Optional[bool],
        typer.Option(
            "--live/--no-live",
            help="Live view on stderr (default: when stdout is a terminal).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live view or progress lines; only the final table.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the shim's banner and what is run.")
    ] = False,
) -> None:
    with user_errors():
        target = target_from(list(argv or ()), module, ctx.meta.get("trackleak.command_form", False))
        opts = runner.RunOptions(
            target=target,
            python=python,
            sample_rate=sample_rate,
            sample_bytes=sample_bytes,
            min_size=min_size,
            dump_interval=dump_interval,
            startup_delay=startup_delay,
            log_dir=log_dir,
            json_path=json_path,
            interval=interval,
            top=top,
            sort=sort.value,
            verbose=verbose,
            live=live,
            progress=not quiet,
        )
        status = runner.run(opts)
    raise typer.Exit(status)


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        cls=RunCommand,
        help=HELP,
        context_settings={"allow_interspersed_args": False},
    )(run)

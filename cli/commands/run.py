# SPDX-License-Identifier: MIT
"""`trackleak run`: start a script, a module or any command with the shim preloaded.

    trackleak run [OPTIONS] script.py [ARGS]...
    trackleak run [OPTIONS] -m module [ARGS]...
    trackleak run [OPTIONS] -- COMMAND [ARGS]...

Options go before the script: everything after the script (or after ``--``) is the child's, so
``trackleak run app.py --verbose`` passes ``--verbose`` to app.py. The logic is trackleak.runner.
"""

import enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperCommand

from trackleak import config, runner
from trackleak.cli import options
from trackleak.cli._common import SortBy, user_errors

HELP = """Run a Python script, a module (-m) or any command (after --) with the shim preloaded.

trackleak run [OPTIONS] script.py [ARGS]... | -m MODULE [ARGS]... | -- COMMAND [ARGS]...

Shows the top allocation sites while it runs and the final retention table at exit (stdout).
The child's exit status is passed through. Options must come before the script.
"""


class SmallObjects(str, enum.Enum):
    auto = "auto"
    on = "1"
    off = "0"


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
    sample_rate: options.SampleRate = None,
    sample_bytes: options.SampleBytes = None,
    min_size: options.MinSize = None,
    stack_depth: options.StackDepth = None,
    small_objects: Annotated[
        Optional[SmallObjects],
        typer.Option(
            "--small-objects",
            envvar="TRACKLEAK_SMALL_OBJECTS",
            show_default=False,
            help="Python objects of 512 bytes or less: auto (default) tracks them through CPython's "
            "reference tracer from 3.13 on (the line that made each object, whatever the freelists "
            "do) and leaves them out before 3.13 (the table says so); 1 also tracks them before "
            "3.13, by wrapping pymalloc (about 1.1-1.2x; rows a freelist may have moved are marked "
            "(?)); 0: never.",
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
    json_path: options.JsonPath = None,
    interval: Annotated[
        Optional[float],
        typer.Option(
            min=0.1,
            show_default=False,
            help=f"Seconds between live updates. Default {config.default('interval')}.",
        ),
    ] = None,
    top: options.Top = None,
    sort: options.Sort = None,
    live: options.Live = None,
    quiet: options.Quiet = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the shim's banner and what is run.")
    ] = False,
    config_file: options.config_option("run") = None,
) -> None:
    with user_errors():
        target = target_from(list(argv or ()), module, ctx.meta.get("trackleak.command_form", False))
        opts = runner.RunOptions(
            target=target,
            python=python,
            sample_rate=sample_rate,
            sample_bytes=sample_bytes,
            min_size=min_size,
            stack_depth=stack_depth,
            small_objects=small_objects.value if small_objects is not None else None,
            dump_interval=dump_interval,
            startup_delay=startup_delay,
            log_dir=log_dir,
            json_path=json_path,
            interval=options.pick(interval, "interval", "run"),
            top=options.pick(top, "top", "run"),
            sort=SortBy(options.pick(sort, "sort", "run")).value,
            verbose=verbose,
            live=live,
            progress=not quiet,
        )
        cfg = options.loaded_config(ctx)
        for note in cfg.notes:
            typer.echo(f"trackleak: {note}", err=True)
        status = runner.run(opts, es_environ=cfg.es)
    raise typer.Exit(status)


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        cls=RunCommand,
        help=HELP,
        context_settings={"allow_interspersed_args": False},
    )(run)

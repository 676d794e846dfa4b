# SPDX-License-Identifier: MIT
"""The options `trackleak run` and `trackleak-agent` share, declared once, and --config.

Each is an ``Annotated`` type; a command declares ``top: options.Top = None``. Defaults are
``None`` here and resolved by the command from trackleak.config (the one place they are written),
so that "not given" is known and a configuration file can fill it: the order is click's, for
every option, flag > environment variable > configuration file (click's default_map) > default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from trackleak import config
from trackleak.cli._common import SORT_HELP, SortBy
from trackleak.errors import UserError

CONFIG_HELP = (
    "TOML configuration file (default: $TRACKLEAK_CONFIG, else /etc/trackleak/trackleak.toml when it "
    "exists). Order: flags > environment variables > this file > defaults."
)
META_KEY = "trackleak.config"


def _load_config(section: str):
    def callback(ctx: typer.Context, _param: typer.CallbackParam, value: Optional[Path]):
        try:
            cfg = config.load(config.find(value))
        except UserError as exc:
            raise typer.BadParameter(str(exc), ctx=ctx, param_hint="'--config'") from None
        ctx.meta[META_KEY] = cfg
        if cfg.path is not None:
            ctx.default_map = {**(ctx.default_map or {}), **cfg.default_map(section)}
        return value

    return callback


def config_option(section: str):
    """--config FILE for SECTION ("run" or "agent"): eager, so that it fills the defaults of the
    options parsed after it."""
    return Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            help=CONFIG_HELP,
            callback=_load_config(section),
            is_eager=True,
            dir_okay=False,
            show_default=False,
        ),
    ]


def loaded_config(ctx: typer.Context) -> config.Config:
    return ctx.meta.get(META_KEY) or config.Config()


SampleRate = Annotated[
    Optional[int],
    typer.Option(
        envvar="TRACKLEAK_SAMPLE_RATE",
        min=1,
        show_default=False,
        help=f"Sample by bytes: one sample per N KiB allocated on average (an allocation of s bytes "
        f"with p = 1 - exp(-s / N KiB)); 1: every allocation. Default {config.default('sample_rate')}.",
    ),
]
SampleBytes = Annotated[
    Optional[int],
    typer.Option(
        envvar="TRACKLEAK_SAMPLE_BYTES",
        min=1,
        show_default=False,
        help="Mean bytes between samples, set directly (overrides --sample-rate).",
    ),
]
MinSize = Annotated[
    Optional[int],
    typer.Option(
        envvar="TRACKLEAK_MIN_SIZE",
        min=0,
        show_default=False,
        help=f"Track allocations of at least N bytes. Default {config.default('min_size')}.",
    ),
]
StackDepth = Annotated[
    Optional[int],
    typer.Option(
        envvar="TRACKLEAK_STACK_DEPTH",
        min=0,
        max=config.MAX_STACK_DEPTH,
        show_default=False,
        help=f"Python frames kept for each sampled allocation's call stack (the rows keep their "
        f"line; --json, `trackleak report --html/--pprof/--collapsed` show the paths); 0: no stacks. "
        f"Only sampled allocations walk their stack. Default {config.default('stack_depth')}, "
        f"at most {config.MAX_STACK_DEPTH}.",
    ),
]
JsonPath = Annotated[
    Optional[Path],
    typer.Option(
        "--json",
        dir_okay=False,
        show_default=False,
        help="Write the final table as JSON ({meta, sites, history}) to this file.",
    ),
]
Top = Annotated[
    Optional[int],
    typer.Option(min=0, show_default=False, help=f"Rows to show (0: all). Default {config.default('top')}."),
]
Sort = Annotated[Optional[SortBy], typer.Option(show_default=False, help=SORT_HELP + " Default leak.")]
Live = Annotated[
    Optional[bool],
    typer.Option(
        "--live/--no-live",
        show_default=False,
        help="Live view pinned to the bottom of the terminal (default: when stdout is a terminal).",
    ),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No live view or progress lines; only the final table.")
]


def pick(value, name: str, command: str):
    """VALUE, or the default of option NAME for COMMAND when it was not given anywhere."""
    return config.default(name, command) if value is None else value

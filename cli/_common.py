# SPDX-License-Identifier: MIT
"""What every command shares: turning a UserError into one line on stderr and exit status 2."""

from __future__ import annotations

import contextlib
import enum
import sys
from typing import Iterator

import typer

from trackleak.errors import UserError

EXIT_USAGE = 2


class SortBy(str, enum.Enum):
    """Orders of the table (trackleak.table.sorted_rows)."""

    leak = "leak"
    live = "live"
    bytes = "bytes"
    retention = "retention"


SORT_HELP = (
    "Order: leak (live bytes that keep growing first, fastest first, then by live bytes), "
    "live (live bytes), bytes (bytes allocated) or retention (RET%)."
)


def fail(message: str) -> typer.Exit:
    """Print MESSAGE as trackleak's one error line; return the Exit to raise."""
    typer.echo(f"trackleak: error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """No traceback for anything the user can fix; Ctrl-C ends quietly with 130."""
    try:
        yield
    except UserError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False

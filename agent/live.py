# SPDX-License-Identifier: MIT
"""The live view of `trackleak run`: a table pinned to the bottom of the terminal.

The child shares our terminal and writes to it whenever it likes, so a redrawing region that moves
the cursor (rich.live) would erase the child's lines. Instead, like apt's progress bar, we narrow
the terminal's scrolling region (DECSTBM) to the top part: the child's output scrolls there,
untouched, and the table is redrawn in the rows below it, each redraw one write() that saves and
restores the cursor. stop() gives the whole screen back (always: it runs in a finally).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import threading
from typing import IO, Any, Iterator

ESC = "\x1b"
SAVE, RESTORE = f"{ESC}7", f"{ESC}8"
MIN_TERMINAL_ROWS = 12  # below that the view would crowd out the child's output: no view
TABLE_OVERHEAD = 4  # table header, rules and a caption around the rows


def supported(stream: IO[str]) -> bool:
    """A real terminal that understands scrolling regions."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    if os.environ.get("TERM", "dumb") in ("", "dumb"):
        return False
    return _size(stream)[1] >= MIN_TERMINAL_ROWS


def _size(stream: IO[str]) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns, size.lines
    except (OSError, ValueError, AttributeError):
        fallback = shutil.get_terminal_size()
        return fallback.columns, fallback.lines


class PinnedView:
    """Reserve the bottom rows of the terminal for a rich renderable, redrawn on update()."""

    def __init__(self, stream: IO[str], rows_wanted: int) -> None:
        self.stream = stream
        self.rows_wanted = max(3, rows_wanted)
        self.reserved = 0
        self.size = (0, 0)
        from rich.console import Console

        self._color_system = Console(file=stream).color_system

    # rows and columns the table may use (callers size their table to these)
    @property
    def rows(self) -> int:
        return self.reserved

    @property
    def width(self) -> int:
        return self.size[0]

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _setup(self) -> None:
        cols, lines = _size(self.stream)
        self.size = (cols, lines)
        self.reserved = min(self.rows_wanted, lines // 2)
        top = lines - self.reserved
        # Make room (scrolls existing output up), then limit scrolling to rows 1..top and put the
        # cursor back where the child expects it, `reserved` rows higher.
        self._write("\n" * self.reserved + SAVE + f"{ESC}[1;{top}r" + RESTORE + f"{ESC}[{self.reserved}A")

    def start(self) -> PinnedView:
        self._setup()
        return self

    def update(self, renderable: Any) -> None:
        if self.reserved == 0:
            return
        if _size(self.stream) != self.size:  # resized: set the region up again
            self._clear_reserved()
            self._write(f"{SAVE}{ESC}[r{RESTORE}")
            self._setup()
        cols, lines = self.size
        from rich.console import Console

        console = Console(
            file=io.StringIO(),
            width=cols,
            force_terminal=True,
            color_system=self._color_system,
            legacy_windows=False,
        )
        with console.capture() as cap:
            console.print(renderable, crop=True, overflow="crop")
        rendered = cap.get().splitlines()[: self.reserved]
        top = lines - self.reserved
        out = [SAVE]
        for i in range(self.reserved):
            out.append(f"{ESC}[{top + 1 + i};1H{ESC}[2K")
            if i < len(rendered):
                out.append(rendered[i])
        out.append(RESTORE)
        self._write("".join(out))

    def _clear_reserved(self) -> None:
        top = self.size[1] - self.reserved
        self._write(SAVE + "".join(f"{ESC}[{top + 1 + i};1H{ESC}[2K" for i in range(self.reserved)) + RESTORE)

    def stop(self) -> None:
        if self.reserved == 0:
            return
        self._clear_reserved()
        self._write(f"{SAVE}{ESC}[r{RESTORE}")  # the whole screen scrolls again
        self.reserved = 0

    def __enter__(self) -> PinnedView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rich_live(stderr: IO[str]):
    """A rich.live.Live on STDERR (the agents' views: nothing else writes to their terminal)."""
    from rich.console import Console
    from rich.live import Live

    return Live(console=Console(file=stderr, stderr=True), refresh_per_second=4, transient=True)


@contextlib.contextmanager
def stop_on_signals(owner: Any) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP set OWNER.reason (the signal's name) and OWNER.stop_event while
    the block runs (main thread only); the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        owner.reason = signal.Signals(signum).name
        owner.stop_event.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

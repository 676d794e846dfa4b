# SPDX-License-Identifier: MIT
"""`trackleak report --collapsed`: folded stacks for flamegraph.pl, speedscope, inferno.

One line per call path: its frames, outermost first, joined by ``;``, a space, and its live bytes
(``main (app.py:40);handle (web.py:12);append (lib.py:7) 1048576``). A frame is ``function
(file:line)`` (``function (file)`` for a native frame), the file as the terminal shows it. Paths
that hold nothing are left out; the biggest come first.
"""

from __future__ import annotations

from typing import Sequence

from .. import render
from ..stacks import Stack


def frame_label(frame: tuple) -> str:
    function, file, line = frame
    where = render.display_path(file) if file else "?"
    if line:
        where = f"{where}:{line}"
    text = f"{function or '?'} ({where})"
    # ";" separates frames and a newline ends the line: neither may appear inside one.
    return text.replace(";", ",").replace("\n", " ").replace("\r", " ")


def lines(stacks: Sequence[Stack], *, value: str = "live_bytes") -> list[str]:
    out = []
    for stack in sorted(stacks, key=lambda s: (-getattr(s, value), s.frames)):
        amount = getattr(stack, value)
        if amount <= 0:
            continue
        out.append(";".join(frame_label(f) for f in stack.frames) + f" {amount}")
    return out


def text(stacks: Sequence[Stack], *, value: str = "live_bytes") -> str:
    body = lines(stacks, value=value)
    return "\n".join(body) + ("\n" if body else "")

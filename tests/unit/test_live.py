# SPDX-License-Identifier: MIT
"""The live view pinned to the bottom of a terminal (escape sequences, the region given back)."""

from __future__ import annotations

import io

from rich.text import Text

from trackleak import live


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_reserves_draws_and_gives_the_screen_back(monkeypatch):
    monkeypatch.setattr(live, "_size", lambda _stream: (80, 24))
    tty = FakeTTY()
    # GIVEN a 24-row terminal and a view that wants 8 rows
    with live.PinnedView(tty, 8) as view:
        setup = tty.getvalue()
        # THEN scrolling is limited to rows 1..16 and the cursor put back
        assert "\x1b[1;16r" in setup and setup.startswith("\n" * 8)
        assert (view.rows, view.width) == (8, 80)
        # WHEN something is drawn THEN it goes to rows 17.. with the cursor saved and restored
        view.update(Text("hello"))
        drawn = tty.getvalue()[len(setup) :]
        assert drawn.startswith("\x1b7") and drawn.endswith("\x1b8")
        assert "\x1b[17;1H\x1b[2Khello" in drawn
    # AND at the end the whole screen scrolls again
    assert tty.getvalue().endswith("\x1b7\x1b[r\x1b8")


def test_never_more_than_half_the_screen(monkeypatch):
    monkeypatch.setattr(live, "_size", lambda _stream: (80, 20))
    with live.PinnedView(FakeTTY(), 50) as view:
        assert view.rows == 10


def test_supported_only_on_a_real_terminal(monkeypatch):
    assert not live.supported(io.StringIO())
    monkeypatch.setattr(live, "_size", lambda _stream: (80, 40))
    monkeypatch.setenv("TERM", "dumb")
    assert not live.supported(FakeTTY())
    monkeypatch.setenv("TERM", "xterm-256color")
    assert live.supported(FakeTTY())
    monkeypatch.setattr(live, "_size", lambda _stream: (80, 8))
    assert not live.supported(FakeTTY())

"""`trackleak-agent --pid ...` without Typer: attach, show, detach, write the table.

Ctrl-C, SIGTERM, SIGHUP or --duration end the session cleanly (every probe detached, the target
runs on). A target that exits ends its part of the report; when all have exited the agent ends.

Every poll feeds the session's history (live bytes per site over time), so the live view, the
summary lines, the final table and the JSON document rank by growth like `trackleak run`; the
JSON document is written by trackleak.runner.write_json (with the live-bytes series). What could
not be tracked (maps full) is said once when it starts, then on every summary line, the final
table's head line and in the JSON meta ("dropped").
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from trackleak import live as liveview
from trackleak.ebpf.loader import Tunables
from trackleak.ebpf.session import DROPPED, EbpfSession
from trackleak.errors import UserError

AGENT_FORMAT = "trackleak-agent"
AGENT_VERSION = 1


@dataclass
class AgentOptions:
    pids: list[int]
    duration: float | None = None
    interval: float = 1.0
    json_path: Path | None = None
    sample_rate: int = 50
    min_size: int = 500
    sample_bytes: int | None = None  # TRACKLEAK_SAMPLE_BYTES: the sampling interval R directly
    top: int = 20
    sort: str = "leak"
    live: bool | None = None  # None: when stdout and stderr are terminals
    progress: bool = True
    python_frames: bool = True
    native_stacks: int = 1


@dataclass
class Agent:
    opts: AgentOptions
    stdout: IO[str] = field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)
    session_factory: Callable[..., EbpfSession] = EbpfSession

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.session: EbpfSession | None = None
        self.started = 0.0
        self.ended = 0.0
        self.reason = ""

    def run(self) -> int:
        if self.opts.json_path is not None:
            parent = Path(self.opts.json_path).expanduser().resolve().parent
            if not parent.is_dir():
                raise UserError(f"--json: directory does not exist: {parent}")
        tun = Tunables(
            self.opts.sample_rate,
            self.opts.min_size,
            self.opts.native_stacks,
            sample_bytes=self.opts.sample_bytes,
        )
        self.session = self.session_factory(
            self.opts.pids, tun, python_frames=self.opts.python_frames, on_note=self._say
        )
        with liveview.stop_on_signals(self):
            self.session.start()
            self.started = time.time()  # --duration counts from the attach, not the compile
            try:
                self._say(self._attached_line())
                self._loop()
            finally:
                self.session.stop()
        self.ended = time.time()
        return self.finish()

    def _attached_line(self) -> str:
        assert self.session is not None
        parts = []
        for t in self.session.targets.values():
            what = f"CPython {t.python.full_version}" if t.python else "native"
            parts.append(f"{t.pid} ({what})")
        n = len(self.session.loader.probes)
        return (
            f"trackleak-agent: attached to {', '.join(parts)}: {n} probes, "
            f"{sampling_text(self.session.interval)}, min size {self.opts.min_size} B"
        )

    def _loop(self) -> None:
        assert self.session is not None
        live_view = (
            self.opts.live if self.opts.live is not None else (_isatty(self.stdout) and _isatty(self.stderr))
        )
        live_view = live_view and self.opts.progress
        deadline = self.started + self.opts.duration if self.opts.duration else None
        with self._live(live_view) as live:
            while True:
                wait = self.opts.interval
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - time.time()))
                if self.stop_event.wait(wait):
                    break
                self.session.poll()
                if live is not None:
                    live.update(self._renderable())
                elif self.opts.progress and len(self.session.table):
                    from trackleak import render

                    line = render.summary_line(
                        self.session.merged_rows(), elapsed=time.time() - self.started, pids=self.session.pids
                    )
                    self._say(f"{line} {dropped_text(self.session.dropped(), short=True)}")
                if not any(t.alive for t in self.session.targets.values()):
                    self.reason = "every target exited"
                    break
                if deadline is not None and time.time() >= deadline:
                    self.reason = "duration reached"
                    break

    def _renderable(self):
        from trackleak import render

        assert self.session is not None
        rows = render.top_rows(self.session.merged_rows(), top=self.opts.top, sort=self.opts.sort)
        caption = (
            f"{time.time() - self.started:.0f}s  pids {', '.join(map(str, self.session.pids))}  "
            f"{len(self.session.table)} sites  {dropped_text(self.session.dropped(), short=True)}  "
            "(Ctrl-C: detach and print the final table)"
        )
        return render.rich_table(rows, title=f"trackleak-agent: live, by {self.opts.sort}", caption=caption)

    @contextlib.contextmanager
    def _live(self, enabled: bool):
        if not enabled:
            yield None
            return
        with liveview.rich_live(self.stderr) as view:
            yield view

    def meta(self) -> dict:
        assert self.session is not None
        meta = {"format": AGENT_FORMAT, "version": AGENT_VERSION}
        meta.update(self.session.meta())
        meta.update(
            started=round(self.started, 3),
            ended=round(self.ended, 3),
            stopped_by=self.reason or "stopped",
            host=socket.gethostname(),
        )
        return meta

    def finish(self) -> int:
        from trackleak import render

        assert self.session is not None
        # The session's last poll (in stop()) is the last point of every series.
        rows = self.session.merged_rows()
        table = self.session.pid_rows()
        dropped = dropped_text(self.session.dropped())
        if rows:
            shown = render.top_rows(rows, top=self.opts.top, sort=self.opts.sort)
            pids = ", ".join(map(str, self.session.pids))
            self._say(
                f"trackleak-agent: {len(self.session.pids)} process(es) ({pids}), "
                f"{sampling_text(self.session.interval)}, min size {self.opts.min_size} B, "
                f"{self.ended - self.started:.1f}s attached ({self.reason or 'stopped'}); {dropped}; "
                f"top {len(shown)} by {self.opts.sort}"
            )
            try:
                if _isatty(self.stdout):
                    from rich.console import Console

                    Console(file=self.stdout).print(render.rich_table(shown))
                else:
                    self.stdout.write(render.plain_table(shown))
                self.stdout.flush()
            except OSError:
                pass
        else:
            self._say(
                f"trackleak-agent: no allocation of at least {self.opts.min_size} B was seen "
                f"in {self.ended - self.started:.1f}s; {dropped}"
            )
        if self.opts.json_path is not None:
            from trackleak.runner import write_json

            try:
                write_json(self.opts.json_path, table, self.meta(), self.session.history, rows)
            except OSError as exc:
                raise UserError(f"cannot write {self.opts.json_path}: {exc.strerror or exc}") from None
            self._say(f"trackleak-agent: table written to {self.opts.json_path}")
        return 0

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(text, file=self.stderr, flush=True)


def sampling_text(interval: int) -> str:
    """How allocations are sampled, in words (trackleak.sampling)."""
    from trackleak.render import human_bytes

    if interval <= 0:
        return "every allocation sampled"
    return f"sampling p(s) = 1 - exp(-s / {human_bytes(interval)})"


def dropped_text(dropped: dict[str, int], *, short: bool = False) -> str:
    """What could not be tracked: "nothing dropped", or each non-zero counter with its meaning."""
    lost = {name: n for name, n in dropped.items() if n}
    if not lost:
        return "dropped=0" if short else "nothing dropped (maps never full)"
    if short:
        return "dropped=" + ",".join(f"{name}:{n}" for name, n in lost.items())
    return "dropped: " + ", ".join(f"{n} {DROPPED[name]}" for name, n in lost.items())


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def run_agent(opts: AgentOptions, **kwargs) -> int:
    return Agent(opts, **kwargs).run()

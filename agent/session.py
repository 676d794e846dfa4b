# SPDX-License-Identifier: MIT
"""One profiling session, whatever feeds it: the loop, the live view, the sinks, the final table.

`trackleak run`, `trackleak-agent --pid` and the host agent are three ways of choosing a *source*:

- ``trackleak.runner.LaunchSource``: a child started with the shim; its tables handed off to us
  or read through /proc, its dump files at the end; ends when the child exits.
- ``trackleak.ebpf.agent.PidSource``: processes given by pid, through eBPF (or through their
  shim table when they carry the shim); ends when every one has exited.
- ``trackleak.fleet.daemon.HostSource``: the processes of the host that match the filters, each
  by its route, found again at every interval; ends on a signal, --duration or --once.

``Session`` does the rest, once for all three: every ``interval`` seconds it asks the source to
read (``poll``), hands the rows to every *sink* (Elasticsearch: ``sink(rows, meta)``, never
blocking) and to the live view (a table pinned to the bottom of the terminal,
``trackleak.live.PinnedView``) or a one-line summary; it ends on what the source says
(``ended``), on --duration, or on a signal (the source decides what signals mean: the agents
stop, ``trackleak run`` forwards them to its child); then it prints the source's final table,
gives it to the sinks, writes ``--json`` and closes the sinks (they flush there).

A source only reads and describes: it never prints a table, writes JSON or ships. What can go
wrong in one interval (a process that vanishes mid-read, a sink that fails) is said once and the
session goes on: the target must never be abandoned because its observer stumbled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, ContextManager, Iterator

from . import config, live, render
from .errors import UserError
from .history import History
from .table import RetentionTable, Row

Sink = Callable[[list, dict], None]  # sink(rows, meta); optional close()


@dataclass
class ViewOptions:
    """What every session shows and writes, whatever the source (the shared options)."""

    interval: float = config.default("interval")
    duration: float | None = None
    top: int = config.default("top")
    sort: str = config.default("sort")
    live: bool | None = None  # None: a live view when stdout and stderr are terminals
    progress: bool = True  # False: no live view and no periodic lines (final table only)
    json_path: Path | None = None

    @classmethod
    def of(cls, opts: Any, **override: Any) -> ViewOptions:
        """The view options found on a command's options (RunOptions, AgentOptions, ...)."""
        names = [f.name for f in dataclasses.fields(cls)]
        given = {name: getattr(opts, name) for name in names if hasattr(opts, name)}
        return cls(**{**given, **override})


@dataclass
class Final:
    """What a source says at the end."""

    rows: list[Row]  # one per site (merged over processes unless ``processes``), annotated
    table: RetentionTable  # per process: the JSON document's "sites"
    meta: dict  # the JSON document's "meta"
    head: list[str] = field(default_factory=list)  # said before the table
    empty: str = ""  # said instead of the table when there is no row
    history: History | None = None  # the series written into the JSON document
    status: int = 0  # the session's exit status
    sink_rows: list[Row] | None = None  # per process, for the sinks (default: table's rows)
    sink_meta: dict | None = None  # for the sinks (default: source.meta(final=True))
    # say once under the table that they were not tracked: True, or what would track them
    # (render.SMALL_*)
    small_objects_untracked: bool | str = False
    min_size: int = 0  # the size limit that note names


class Source:
    """What a session reads from. Subclasses override what they need."""

    prefix = "trackleak"  # the start of every line the session says for this source
    processes = False  # the table has PID, SOURCE and COMMAND columns (several processes)
    first_read_at_start = False  # read at once (the host agent finds its processes first)
    json_every_interval = False  # --json rewritten at every interval, not only at the end
    title = "live"

    def signals(self, session: Session) -> ContextManager[None]:
        """While the session runs: SIGINT/TERM/HUP end it (the agents). `run` forwards them."""
        return live.stop_on_signals(session)

    def start(self, session: Session) -> None:
        """Attach, spawn, listen: anything that must happen before the first interval."""

    def events(self) -> list[float]:
        """Monotonic times at which ``on_time`` must run besides the intervals (duty cycles)."""
        return []

    def on_time(self, now: float) -> None:
        pass

    def poll(self) -> None:
        """Read every table now."""

    def rows(self) -> list[Row]:
        """The current rows, one per process and site, annotated with growth (for the sinks)."""
        return []

    def view_rows(self) -> list[Row]:
        """The current rows of the live view and the summary line."""
        return self.rows()

    def pids(self) -> list[int]:
        return sorted({r.pid for r in self.rows()})

    def caption(self, rows: list[Row], elapsed: float) -> str:
        return f"{self.prefix} {self.title}, {elapsed:.0f}s, {len(rows)} sites"

    def summary(self, rows: list[Row], elapsed: float) -> str:
        return render.summary_line(rows, elapsed=elapsed, pids=self.pids())

    def meta(self, *, final: bool = False) -> dict:
        """What the sinks get with every batch of rows."""
        return {"final": final, "time": round(time.time(), 3)}

    def snapshot(self) -> tuple[RetentionTable, dict] | None:
        """The table and meta written to --json at every interval (``json_every_interval``)."""
        return None

    def ended(self) -> str | None:
        """Why the session should end now (the child exited...), or None."""
        return None

    def stop(self) -> None:
        """Detach (always called once the loop ends, before ``final``)."""

    def final(self, session: Session) -> Final:
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``start`` took (always called, last)."""


class Session:
    def __init__(
        self,
        source: Source,
        opts: ViewOptions,
        *,
        sinks: list[Sink] | None = None,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.opts = opts
        self.sinks: list[Sink] = list(sinks or [])
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.clock = clock
        self.stop_event = threading.Event()  # a signal, or the source waking us (child exited)
        self.reason = ""
        self.started = 0.0
        self.ended = 0.0
        self._said: set[str] = set()
        self._sink_failed: set[int] = set()
        self._closed_sinks: set[int] = set()

    # ------------------------------------------------------------------ the whole session

    def run(self) -> int:
        if self.opts.json_path is not None:
            parent = Path(self.opts.json_path).expanduser().resolve().parent
            if not parent.is_dir():
                raise UserError(f"--json: directory does not exist: {parent}")
        try:
            with self.source.signals(self):
                try:
                    self.started = self.clock()
                    self.source.start(self)
                    self.started = self.clock()  # --duration counts from the attach, not the set-up
                    self._loop()
                finally:
                    self.ended = self.clock()
                    self.source.stop()
            return self.finish()
        finally:
            self._close_sinks()
            self.source.close()

    def wake(self) -> None:
        """Wake the loop now (the source has something to say through ``ended``)."""
        self.stop_event.set()

    def elapsed(self) -> float:
        return max(0.0, self.clock() - self.started)

    def _loop(self) -> None:
        interval = self.opts.interval
        start = time.monotonic()
        deadline = start + self.opts.duration if self.opts.duration else None
        next_read = start if self.source.first_read_at_start else start + interval
        with self._view() as view:
            while True:
                reason = self.source.ended()
                if reason:
                    self.reason = self.reason or reason
                    return
                events = [next_read, *self.source.events()]
                if deadline is not None:
                    events.append(deadline)
                wait = max(0.0, min(events) - time.monotonic())
                if wait and self.stop_event.wait(wait):
                    reason = self.source.ended()
                    if reason or self.reason:  # the source's news, or a signal
                        self.reason = self.reason or reason
                        return
                    self.stop_event.clear()
                    continue
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.reason = "duration reached"
                    return
                self.source.on_time(now)
                if now >= next_read:
                    next_read += interval
                    if next_read <= now:
                        next_read = now + interval
                    self._interval(view)

    def _interval(self, view: live.PinnedView | None) -> None:
        """One read, shipped and shown. Best effort: nothing here may end the session."""
        try:
            self.source.poll()
            rows = self.source.rows()
            self._emit(rows, self.source.meta(final=False))
            if self.source.json_every_interval and self.opts.json_path is not None:
                snap = self.source.snapshot()
                if snap is not None:
                    self._write_json(*snap, None, None)
            shown = self.source.view_rows()
            if not shown:
                return
            if view is not None:
                view.update(self._renderable(shown, view.rows - live.TABLE_OVERHEAD, view.width))
            elif self.opts.progress:
                self.say(self.source.summary(shown, self.elapsed()))
        except UserError as exc:
            self.say_once(f"interval:{exc}", f"{self.source.prefix}: {exc}")
        except Exception as exc:  # reported once, the session goes on
            self.say_once(
                "interval", f"{self.source.prefix}: a read failed ({type(exc).__name__}: {exc}); going on"
            )

    def _renderable(self, rows: list[Row], max_rows: int, width: int | None):
        top = min(self.opts.top or max_rows, max_rows)
        shown = render.top_rows(rows, top=max(1, top), sort=self.opts.sort)
        caption = f"{self.source.caption(rows, self.elapsed())}; by {self.opts.sort}; final table at the end"
        return render.rich_table(
            shown, caption=caption, compact=True, width=width, processes=self.source.processes
        )

    @contextlib.contextmanager
    def _view(self) -> Iterator[live.PinnedView | None]:
        enabled = self.opts.live if self.opts.live is not None else _isatty(self.stdout)
        if not (enabled and self.opts.progress and live.supported(self.stderr)):
            yield None
            return
        with live.PinnedView(self.stderr, (self.opts.top or 20) + live.TABLE_OVERHEAD) as view:
            yield view

    # ------------------------------------------------------------------ the end

    def finish(self) -> int:
        final = self.source.final(self)
        sink_rows = final.sink_rows if final.sink_rows is not None else list(final.table)
        sink_meta = final.sink_meta if final.sink_meta is not None else self.source.meta(final=True)
        self._emit(sink_rows, sink_meta)
        for line in final.head:
            self.say(line)
        if final.rows:
            shown = self.print_table(final.rows)
            for note in render.footnotes(
                shown, small_objects_untracked=final.small_objects_untracked, min_size=final.min_size
            ):
                self.say(f"{self.source.prefix}: {note}")
        elif final.empty:
            self.say(final.empty)
        if self.opts.json_path is not None:
            try:
                self._write_json(final.table, final.meta, final.history, final.rows)
            except OSError as exc:
                self.say(
                    f"{self.source.prefix}: error: cannot write {self.opts.json_path}: {exc.strerror or exc}"
                )
                return final.status or 2
            self.say(f"{self.source.prefix}: table written to {self.opts.json_path}")
        return final.status

    def print_table(self, rows: list[Row]) -> list[Row]:
        """The top rows on stdout (rich on a terminal, plain text otherwise); the rows shown."""
        shown = render.top_rows(rows, top=self.opts.top, sort=self.opts.sort)
        try:
            if _isatty(self.stdout):
                from rich.console import Console

                Console(file=self.stdout).print(render.rich_table(shown, processes=self.source.processes))
            else:
                self.stdout.write(render.plain_table(shown, processes=self.source.processes))
            paths = render.call_paths(shown)
            if paths:
                self.stdout.write("\n" + "\n".join(paths) + "\n")
            self.stdout.flush()
        except OSError:  # the terminal went away (SIGHUP): nothing useful to do
            pass
        return shown

    def _write_json(self, table: RetentionTable, meta: dict, history: History | None, merged) -> None:
        from .runner import write_json

        write_json(self.opts.json_path, table, meta, history, merged)

    # ------------------------------------------------------------------ sinks

    def _emit(self, rows: list[Row], meta: dict) -> None:
        for sink in self.sinks:
            try:
                sink(rows, meta)
            except Exception as exc:  # a sink must never stop the session
                if id(sink) not in self._sink_failed:
                    self._sink_failed.add(id(sink))
                    self.say(f"{self.source.prefix}: sink {getattr(sink, '__name__', sink)!r} failed: {exc}")

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if not callable(close) or id(sink) in self._closed_sinks:
                continue
            self._closed_sinks.add(id(sink))
            try:
                close()
            except Exception as exc:
                self.say(
                    f"{self.source.prefix}: sink {getattr(sink, '__name__', sink)!r} failed at close: {exc}"
                )

    # ------------------------------------------------------------------ saying things

    def say(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(text, file=self.stderr, flush=True)

    def say_once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.say(text)


def _isatty(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

# SPDX-License-Identifier: MIT
"""`trackleak-agent` without --pid: the host daemon.

Every ``interval`` seconds: discover the processes to watch (trackleak.fleet.discovery), start
watching new ones by their route (shim table, or eBPF), end the ones that exited or changed
route, read every shim table, and hand the merged rows (one per process and site, with
``source``, ``pid``, ``host``, ``command``) to the live view or a summary line, to ``--json``
and to every *sink*. eBPF targets follow the duty cycle (trackleak.fleet.routes).

**Sinks** (the hook for shippers such as Elasticsearch): callables ``sink(rows, meta)`` in
``FleetDaemon.sinks``, called once per interval (and once more with the final rows, with
``meta["final"] = True``). ``rows`` are ``trackleak.table.Row`` (``Row.to_dict()`` gives the
documented fields); ``meta`` holds ``host``, ``time``, ``elapsed_seconds``, ``interval``,
``duty_cycle`` and ``processes``: pid (a string) -> {pid, source, command, user, python,
exited, elasticsearch: {ENABLE_ELASTICSEARCH, ELASTICSEARCH_INDEX, NOMAD_JOB_NAME} as read
from that process's environment, only those names}. A sink that raises is reported once and
keeps being called; it must not block (queue and ship on its own thread). A sink with a
``close()`` method has it called once when the agent ends, after the final table is printed
(``trackleak.fleet.es.FleetShipping`` flushes there). Each process's meta also has ``started``
(its start time, epoch seconds).

``--once``: one discovery, every eBPF target attached for one interval (no duty cycle), one read,
the table, exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from .. import live as liveview
from ..ebpf.loader import Tunables
from ..errors import UserError
from ..history import History, pid_site_key
from ..table import RetentionTable, Row
from . import procfs
from .discovery import ROUTE_EBPF, ROUTE_PRELOAD, Discovery, Filters, ProcInfo, scan_maps
from .routes import DutyCycle, EbpfRoute, ShimWatch

FLEET_FORMAT = "trackleak-host-agent"
FLEET_VERSION = 1
Sink = Callable[[list, dict], None]


@dataclass
class FleetOptions:
    filters: Filters = field(default_factory=Filters)
    interval: float = 5.0
    duration: float | None = None
    once: bool = False
    duty: DutyCycle = field(default_factory=DutyCycle)
    ebpf: bool = True
    json_path: Path | None = None
    host: str = field(default_factory=socket.gethostname)
    sample_rate: int = 50
    sample_bytes: int | None = None
    min_size: int = 500
    python_frames: bool = True
    top: int = 20
    sort: str = "leak"
    live: bool | None = None
    progress: bool = True


class FleetDaemon:
    def __init__(
        self,
        opts: FleetOptions,
        *,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        sinks: list[Sink] | None = None,
    ):
        self.opts = opts
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.sinks: list[Sink] = list(sinks or [])
        self.stop_event = threading.Event()
        self.discovery = Discovery(opts.filters)
        self.shims: dict[int, ShimWatch] = {}
        self.shim_final: list[Row] = []
        self.shim_history = History(key=pid_site_key)
        self.procs: dict[int, ProcInfo] = {}  # every process watched (alive or not), by pid
        self.exited: set[int] = set()
        duty = DutyCycle(opts.interval, opts.interval) if opts.once else opts.duty
        self.ebpf: EbpfRoute | None = None
        if opts.ebpf:
            self.ebpf = EbpfRoute(
                Tunables(opts.sample_rate, opts.min_size, sample_bytes=opts.sample_bytes),
                duty,
                python_frames=opts.python_frames,
                on_note=self._say,
            )
        self.started = time.time()
        self.reason = ""
        self._said: set[str] = set()
        self._sink_failed: set[int] = set()
        self._closed_sinks: set[int] = set()
        self._unwatched: set[int] = set()

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        if self.opts.json_path is not None:
            parent = Path(self.opts.json_path).expanduser().resolve().parent
            if not parent.is_dir():
                raise UserError(f"--json: directory does not exist: {parent}")
        self.started = time.time()
        try:
            with liveview.stop_on_signals(self):
                try:
                    self._say(self._banner())
                    if self.opts.once:
                        self._once()
                    else:
                        self._loop()
                finally:
                    if self.ebpf is not None:
                        self.ebpf.stop()
            return self.finish()
        finally:
            self._close_sinks()

    def _banner(self) -> str:
        d = self.opts.duty
        if self.opts.once:
            how = f"--once: one discovery, eBPF targets attached for {self.opts.interval:g}s"
        elif not self.opts.ebpf:
            how = "shim processes only (--no-ebpf)"
        elif d.continuous:
            how = "eBPF targets attached all the time"
        else:
            how = f"eBPF duty cycle {d.window:g}s every {d.period:g}s"
        return f"trackleak-agent: host agent on {self.opts.host}, every {self.opts.interval:g}s; {how}"

    def _once(self) -> None:
        self.scan()
        if self.ebpf is not None and self.ebpf.procs:
            self.stop_event.wait(self.opts.interval)
        elif self.shims:
            self.stop_event.wait(min(self.opts.interval, 1.0))
        self.read()
        self.reason = "--once"

    def _loop(self) -> None:
        start = time.monotonic()
        deadline = start + self.opts.duration if self.opts.duration else None
        next_tick = start  # the first scan at once
        duty = self.ebpf.duty if self.ebpf is not None else None
        next_window = start
        with self._live_view() as live:
            while True:
                now = time.monotonic()
                events = [next_tick]
                if duty is not None and not duty.continuous and self.ebpf.available is not False:
                    events.append(
                        self.ebpf.window_open + duty.window
                        if self.ebpf.window_open is not None
                        else next_window
                    )
                if deadline is not None:
                    events.append(deadline)
                wait = max(0.0, min(events) - now)
                if wait and self.stop_event.wait(wait):
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.reason = "duration reached"
                    break
                if duty is not None and not duty.continuous and self.ebpf.available:
                    if self.ebpf.window_open is not None and now >= self.ebpf.window_open + duty.window:
                        self.ebpf.close_window(self._still_ebpf)
                        next_window += duty.period
                        while next_window <= now:
                            next_window += duty.period
                    elif self.ebpf.window_open is None and now >= next_window and self.ebpf.procs:
                        self.ebpf.open_window()
                    elif self.ebpf.window_open is None and now >= next_window:
                        next_window = now + min(self.opts.interval, duty.period)  # nobody to watch yet
                if now >= next_tick:
                    next_tick += self.opts.interval
                    if next_tick <= now:
                        next_tick = now + self.opts.interval
                    self.scan()
                    self.read()
                    rows = self.rows()
                    self._emit(rows)
                    if live is not None:
                        live.update(self._renderable(rows))
                    elif self.opts.progress and rows:
                        from .. import render

                        self._say(
                            render.summary_line(
                                rows,
                                elapsed=time.time() - self.started,
                                pids=[p for p in self.procs if p not in self.exited],
                            )
                        )

    # ------------------------------------------------------------------ discovery and reading

    def _still_ebpf(self, pid: int) -> bool:
        maps = procfs.read_text(f"/proc/{pid}/maps", procfs.MAPS_LIMIT)
        return maps is None or not scan_maps(maps)[1]

    def scan(self) -> None:
        found = self.discovery.scan()
        # Gone: processes we watched that are not found any more (exited, or now filtered out).
        for pid in [p for p in self.procs if p not in self.exited and p not in found]:
            self._end(
                pid, "exited" if not os.path.exists(f"/proc/{pid}") else "no longer matches the filters"
            )
        for pid, info in found.items():
            have = self.procs.get(pid)
            if have is not None and pid not in self.exited and have.create_time == info.create_time:
                if info.route != self._route_of(pid):  # exec'd into a preloaded program
                    self._say(
                        f"trackleak-agent: pid {pid} now carries the shim: read from its table, eBPF detached"
                    )
                    if self.ebpf is not None:
                        self.ebpf.remove(pid, discard_window=True)
                    self._watch(info)
                continue
            if have is not None and pid not in self.exited:
                self._end(pid, "exited")  # a reused pid: the old incarnation ended
            if pid in self._unwatched and have is not None and have.create_time == info.create_time:
                continue
            self._watch(info)

    def _route_of(self, pid: int) -> str:
        if pid in self.shims and self.shims[pid].alive:
            return ROUTE_PRELOAD
        return ROUTE_EBPF

    def _watch(self, info: ProcInfo) -> None:
        info.es = procfs.es_environment(info.pid)
        self.procs[info.pid] = info
        self.exited.discard(info.pid)
        self._unwatched.discard(info.pid)
        if info.route == ROUTE_PRELOAD:
            watch = ShimWatch(info)
            self.shims[info.pid] = watch
            if watch.read():
                self._say(
                    f"trackleak-agent: watching pid {info.pid} through its shim table: {info.command[:80]}"
                )
            return
        if self.ebpf is None or not self.ebpf.ensure_loaded():
            self._unwatched.add(info.pid)
            reason = "--no-ebpf" if self.ebpf is None else self.ebpf.reason
            self._once_say(
                "no-ebpf",
                f"trackleak-agent: processes without the shim are not watched: {reason}. "
                "Watching only processes started with the shim (LD_PRELOAD).",
            )
            return
        if self.ebpf.add(info):
            self._say(f"trackleak-agent: watching pid {info.pid} through eBPF: {info.command[:80]}")
        else:
            self._unwatched.add(info.pid)

    def _end(self, pid: int, why: str) -> None:
        self.exited.add(pid)
        watch = self.shims.get(pid)
        if watch is not None and pid in self.shims:
            if watch.alive:
                watch.read()
            self.shim_final += self.shim_history.annotate([dataclasses.replace(r) for r in watch.rows])
            del self.shims[pid]
        if self.ebpf is not None:
            self.ebpf.exited(pid)
        if pid not in self._unwatched:
            self._say(f"trackleak-agent: pid {pid} {why}; its rows are final")
        self._unwatched.discard(pid)

    def read(self) -> None:
        t = time.time() - self.started
        for watch in self.shims.values():
            if watch.alive and watch.read():
                self.shim_history.observe(t, watch.rows, interval=watch.interval)
        if self.ebpf is not None:
            self.ebpf.poll()

    def rows(self) -> list[Row]:
        """Every row of every process watched so far: one per process, route and site."""
        rows = self.shim_history.annotate(
            [dataclasses.replace(r) for w in self.shims.values() for r in w.rows]
        )
        rows += [dataclasses.replace(r) for r in self.shim_final]
        if self.ebpf is not None:
            rows += self.ebpf.rows()
        for row in rows:
            info = self.procs.get(row.pid)
            row.host = self.opts.host
            row.command = info.command if info is not None else ""
        return rows

    # ------------------------------------------------------------------ outputs

    def meta(self, *, final: bool = False) -> dict:
        d = self.ebpf.duty if self.ebpf is not None else self.opts.duty
        procs = {}
        for pid, info in self.procs.items():
            python = None
            if pid in self.shims:
                python = self.shims[pid].python
            elif self.ebpf is not None:
                python = self.ebpf.python_of(pid)
            route = ROUTE_PRELOAD if info.shim else ROUTE_EBPF
            procs[str(pid)] = {
                "pid": pid,
                "source": route,
                "watched": pid not in self._unwatched,
                "command": info.command,
                "user": info.user,
                "python": python,
                "cgroups": info.cgroups[:4],
                "exited": pid in self.exited,
                "started": round(info.create_time, 3),
                "elasticsearch": dict(info.es),
            }
        ebpf = {
            "available": bool(self.ebpf and self.ebpf.available),
            "reason": (self.ebpf.reason if self.ebpf else "--no-ebpf") or None,
        }
        if self.ebpf is not None and self.ebpf.available:
            ebpf.update(
                dropped=self.ebpf.session.dropped(),
                windows=self.ebpf.windows,
                attached_seconds=round(self.ebpf.attached_seconds, 3),
            )
        return {
            "format": FLEET_FORMAT,
            "version": FLEET_VERSION,
            "host": self.opts.host,
            "time": round(time.time(), 3),
            "started": round(self.started, 3),
            "elapsed_seconds": round(time.time() - self.started, 3),
            "interval": self.opts.interval,
            "duty_cycle": {
                "window": d.window,
                "period": d.period,
                "hold": d.hold,
                "continuous": d.continuous,
            },
            "sample_rate": self.opts.sample_rate,
            "min_size": self.opts.min_size,
            "ebpf": ebpf,
            "processes": procs,
            "final": final,
            "stopped_by": self.reason or None,
        }

    def _emit(self, rows: list[Row], *, final: bool = False) -> None:
        if not self.sinks and self.opts.json_path is None:
            return
        meta = self.meta(final=final)
        for sink in self.sinks:
            try:
                sink(rows, meta)
            except Exception as exc:  # a sink must never stop the agent
                if id(sink) not in self._sink_failed:
                    self._sink_failed.add(id(sink))
                    self._say(f"trackleak-agent: sink {getattr(sink, '__name__', sink)!r} failed: {exc}")
        if self.opts.json_path is not None and not final:
            self._write_json(rows, meta)

    def _write_json(self, rows: list[Row], meta: dict) -> None:
        from ..runner import write_json

        table = RetentionTable()
        for row in rows:
            table.rows[(row.pid, row.source, row.key)] = row  # both routes of one pid stay apart
        try:
            write_json(self.opts.json_path, table, meta, None)
        except OSError as exc:
            raise UserError(f"cannot write {self.opts.json_path}: {exc.strerror or exc}") from None

    def _close_sinks(self) -> None:
        """After the final rows: sinks with a ``close()`` (shippers) flush, once."""
        sinks = [s for s in self.sinks if callable(getattr(s, "close", None))]
        for sink in sinks:
            if id(sink) in self._closed_sinks:
                continue
            self._closed_sinks.add(id(sink))
            try:
                sink.close()
            except Exception as exc:
                self._say(f"trackleak-agent: sink {getattr(sink, '__name__', sink)!r} failed at close: {exc}")

    def _renderable(self, rows: list[Row]):
        from .. import render

        shown = render.top_rows(rows, top=self.opts.top, sort=self.opts.sort)
        alive = [p for p in self.procs if p not in self.exited and p not in self._unwatched]
        caption = (
            f"{time.time() - self.started:.0f}s  {self.opts.host}  {len(alive)} processes  "
            f"{len(rows)} rows  (Ctrl-C: detach and print the final table)"
        )
        return render.rich_table(
            shown, title=f"trackleak-agent: host, by {self.opts.sort}", caption=caption, processes=True
        )

    def finish(self) -> int:
        from .. import render

        rows = self.rows()
        self._emit(rows, final=True)
        if self.opts.json_path is not None:
            self._write_json(rows, self.meta(final=True))
        watched = [p for p in self.procs if p not in self._unwatched]
        shown = render.top_rows(rows, top=self.opts.top, sort=self.opts.sort)
        self._say(
            f"trackleak-agent: {len(watched)} process(es) watched on {self.opts.host} "
            f"({sum(1 for p in watched if self.procs[p].shim)} through the shim, "
            f"{sum(1 for p in watched if not self.procs[p].shim)} through eBPF), "
            f"{time.time() - self.started:.1f}s ({self.reason or 'stopped'}); "
            f"top {len(shown)} by {self.opts.sort}"
        )
        if shown:
            try:
                if _isatty(self.stdout):
                    from rich.console import Console

                    Console(file=self.stdout).print(render.rich_table(shown, processes=True))
                else:
                    self.stdout.write(render.plain_table(shown, processes=True))
                self.stdout.flush()
            except OSError:
                pass
        if self.opts.json_path is not None:
            self._say(f"trackleak-agent: table written to {self.opts.json_path}")
        return 0

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _live_view(self):
        enabled = (
            self.opts.live if self.opts.live is not None else (_isatty(self.stdout) and _isatty(self.stderr))
        )
        if not (enabled and self.opts.progress):
            yield None
            return
        with liveview.rich_live(self.stderr) as view:
            yield view

    def _once_say(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self._say(text)

    def _say(self, text: str) -> None:
        if not self.opts.progress and not text.startswith("trackleak-agent: processes without"):
            return
        with contextlib.suppress(OSError, ValueError):
            print(text, file=self.stderr, flush=True)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def run_fleet(opts: FleetOptions, **kwargs) -> int:
    return FleetDaemon(opts, **kwargs).run()

# SPDX-License-Identifier: MIT
"""`trackleak-agent` without --pid: the host daemon.

``HostSource``, a source of trackleak.session (which owns the loop, the live view, the sinks,
the final table and --json). Every ``interval`` seconds: discover the processes to watch
(trackleak.fleet.discovery), start watching new ones by their route (shim table, or eBPF), end
the ones that exited or changed route, read every shim table, and hand the merged rows (one per
process and site, with ``source``, ``pid``, ``host``, ``command``) to the session. eBPF targets
follow the duty cycle (trackleak.fleet.routes): ``events``/``on_time`` open and close windows.

**Sinks** (the hook for shippers such as Elasticsearch): callables ``sink(rows, meta)`` in
the session's ``sinks``, called once per interval (and once more with the final rows, with
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .. import config, containers
from ..ebpf.loader import Tunables
from ..history import History, pid_site_key
from ..session import Final, Session, Sink, Source, ViewOptions
from ..table import RetentionTable, Row
from . import procfs
from .discovery import ROUTE_EBPF, ROUTE_PRELOAD, Discovery, Filters, ProcInfo, scan_maps
from .routes import DutyCycle, EbpfRoute, ShimWatch

FLEET_FORMAT = "trackleak-host-agent"
FLEET_VERSION = 1


@dataclass
class FleetOptions:
    filters: Filters = field(default_factory=Filters)
    interval: float = config.default("interval", "host")
    duration: float | None = None
    once: bool = False
    duty: DutyCycle = field(default_factory=DutyCycle)
    ebpf: bool = True
    json_path: Path | None = None
    host: str = field(default_factory=socket.gethostname)
    sample_rate: int = config.default("sample_rate")
    sample_bytes: int | None = None
    min_size: int = config.default("min_size")
    python_frames: bool = True
    arenas: bool | None = None  # pymalloc arena probes (None: TRACKLEAK_EBPF_ARENAS, default on)
    stack_depth: int = config.default("stack_depth")  # Python frames per sampled call stack (0: none)
    top: int = config.default("top")
    sort: str = config.default("sort")
    live: bool | None = None
    progress: bool = True


class HostSource(Source):
    """The processes of this host that match the filters, each by its route (trackleak.session)."""

    prefix = "trackleak-agent"
    processes = True
    first_read_at_start = True  # the first discovery at once
    json_every_interval = True

    def __init__(self, opts: FleetOptions) -> None:
        self.opts = opts
        self.owner: Session | None = None
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
                Tunables(
                    opts.sample_rate,
                    opts.min_size,
                    sample_bytes=opts.sample_bytes,
                    **({} if opts.arenas is None else {"arenas": opts.arenas}),
                    stack_depth=opts.stack_depth,
                ),
                duty,
                python_frames=opts.python_frames,
                on_note=self._say,
            )
        self.started = time.time()
        self._said: set[str] = set()
        self._unwatched: set[int] = set()
        self._once_done = False
        self._next_window = 0.0

    # ------------------------------------------------------------------ the session's calls

    def start(self, session: Session) -> None:
        self.owner = session
        self.started = time.time()
        self._next_window = time.monotonic()
        self._say(self._banner())
        if self.opts.once:
            # One discovery, every eBPF target attached for one interval (no duty cycle), one read.
            self.scan()
            if self.ebpf is not None and self.ebpf.procs:
                session.stop_event.wait(self.opts.interval)
            elif self.shims:
                session.stop_event.wait(min(self.opts.interval, 1.0))
            self.read()
            self._once_done = True

    def ended(self) -> str | None:
        return "--once" if self._once_done else None

    def stop(self) -> None:
        if self.ebpf is not None:
            self.ebpf.stop()

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

    def _duty(self) -> DutyCycle | None:
        if self.ebpf is None or self.ebpf.duty.continuous or self.ebpf.available is False:
            return None
        return self.ebpf.duty

    def events(self) -> list[float]:
        duty = self._duty()
        if duty is None:
            return []
        assert self.ebpf is not None
        if self.ebpf.window_open is not None:
            return [self.ebpf.window_open + duty.window]
        return [self._next_window]

    def on_time(self, now: float) -> None:
        """The duty cycle: close a window that has lasted long enough, open one when it is time."""
        duty = self._duty()
        if duty is None or not self.ebpf.available:
            return
        if self.ebpf.window_open is not None and now >= self.ebpf.window_open + duty.window:
            self.ebpf.close_window(self._still_ebpf)
            self._next_window += duty.period
            while self._next_window <= now:
                self._next_window += duty.period
        elif self.ebpf.window_open is None and now >= self._next_window and self.ebpf.procs:
            self.ebpf.open_window()
        elif self.ebpf.window_open is None and now >= self._next_window:
            self._next_window = now + min(self.opts.interval, duty.period)  # nobody to watch yet

    def poll(self) -> None:
        self.scan()
        self.read()

    def pids(self) -> list[int]:
        return [p for p in self.procs if p not in self.exited]

    def caption(self, rows: list[Row], elapsed: float) -> str:
        alive = [p for p in self.procs if p not in self.exited and p not in self._unwatched]
        return f"trackleak-agent: {elapsed:.0f}s, {self.opts.host}, {len(alive)} processes, {len(rows)} rows"

    def snapshot(self) -> tuple[RetentionTable, dict]:
        return self._table(self.rows()), self.meta()

    def final(self, session: Session) -> Final:
        from .. import render

        rows = self.rows()
        meta = self.meta(final=True)
        watched = [p for p in self.procs if p not in self._unwatched]
        shown = render.top_rows(rows, top=self.opts.top, sort=self.opts.sort)
        head = [
            f"trackleak-agent: {len(watched)} process(es) watched on {self.opts.host} "
            f"({sum(1 for p in watched if self.procs[p].shim)} through the shim, "
            f"{sum(1 for p in watched if not self.procs[p].shim)} through eBPF), "
            f"{time.time() - self.started:.1f}s ({session.reason or 'stopped'}); "
            f"top {len(shown)} by {self.opts.sort}"
        ]
        untracked = [w.min_size for w in self.shims.values() if w.small_untracked]
        advice = next((w.small_untracked for w in self.shims.values() if w.small_untracked), None)
        if self.ebpf is not None and self.ebpf.procs and not self.ebpf.session.tunables.arenas:
            untracked.append(self.opts.min_size)
            advice = advice or render.SMALL_NO_ARENAS
        return Final(
            rows=rows,
            table=self._table(rows),
            meta=meta,
            head=head,
            sink_rows=rows,
            sink_meta=meta,
            small_objects_untracked=(advice or False) if untracked else False,
            min_size=max(untracked, default=0),
        )

    @staticmethod
    def _table(rows: list[Row]) -> RetentionTable:
        table = RetentionTable()
        for row in rows:
            table.rows[(row.pid, row.source, row.key)] = row  # both routes of one pid stay apart
        return table

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
        where = containers.describe(info.pid)
        info.container, info.ns_pid = where.name, where.ns_pid
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
            row.container = info.container if info is not None else ""
        return rows

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
                "container": info.container or None,
                "ns_pid": info.ns_pid,
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
            "stopped_by": (self.owner.reason if self.owner is not None else "") or None,
        }

    # ------------------------------------------------------------------ plumbing

    def _once_say(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self._say(text)

    def _say(self, text: str) -> None:
        if not self.opts.progress and not text.startswith("trackleak-agent: processes without"):
            return
        if self.owner is not None:
            self.owner.say(text)
        else:
            with contextlib.suppress(OSError, ValueError):
                print(text, file=sys.stderr, flush=True)


def host_session(
    opts: FleetOptions,
    *,
    sinks: list[Sink] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> Session:
    """The session of the host agent: call .run()."""
    view = ViewOptions.of(opts, duration=None if opts.once else opts.duration)
    return Session(HostSource(opts), view, sinks=sinks, stdout=stdout, stderr=stderr)


def run_fleet(opts: FleetOptions, **kwargs) -> int:
    return host_session(opts, **kwargs).run()

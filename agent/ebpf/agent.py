"""`trackleak-agent --pid ...`: processes given by pid, watched through eBPF (a trackleak.session
source).

Ctrl-C, SIGTERM, SIGHUP or --duration end the session cleanly (every probe detached, the target
runs on). A target that exits ends its part of the report; when all have exited the session ends.

Every poll feeds the eBPF session's history (live bytes per site over time), so the live view, the
summary lines, the final table and the JSON document rank by growth like `trackleak run`. What
could not be tracked (maps full) is said once when it starts, then on every summary line, the
final table's head line and in the JSON meta ("dropped"). The sinks (Elasticsearch) get each
interval's rows with the host agent's meta (``processes``: the command, Python version and the
Elasticsearch variables read from each target's environment), so one shipper serves both.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from trackleak import config, containers, render
from trackleak.ebpf.loader import Tunables
from trackleak.ebpf.session import DROPPED, EbpfSession
from trackleak.fleet import procfs
from trackleak.fleet.discovery import read_argv
from trackleak.session import Final, Session, Source, ViewOptions
from trackleak.table import Row

AGENT_FORMAT = "trackleak-agent"
AGENT_VERSION = 1


@dataclass
class AgentOptions:
    pids: list[int]
    duration: float | None = None
    interval: float = config.default("interval", "agent")
    json_path: Path | None = None
    sample_rate: int = config.default("sample_rate")
    min_size: int = config.default("min_size")
    sample_bytes: int | None = None  # TRACKLEAK_SAMPLE_BYTES: the sampling interval R directly
    top: int = config.default("top")
    sort: str = config.default("sort")
    live: bool | None = None  # None: when stdout and stderr are terminals
    progress: bool = True
    python_frames: bool = True
    native_stacks: int = 1
    arenas: bool | None = None  # pymalloc arena probes (None: TRACKLEAK_EBPF_ARENAS, default on)
    stack_depth: int = config.default("stack_depth")  # Python frames per sampled call stack (0: none)


class PidSource(Source):
    """Processes given by pid, through one eBPF session (trackleak.session's source)."""

    prefix = "trackleak-agent"

    def __init__(
        self,
        opts: AgentOptions,
        *,
        session_factory: Callable[..., EbpfSession] = EbpfSession,
        host: str | None = None,
    ) -> None:
        self.opts = opts
        self.session_factory = session_factory
        self.host = host or socket.gethostname()
        self.ebpf: EbpfSession | None = None
        self.owner: Session | None = None
        self.procs: dict[int, dict] = {}  # pid -> what the sinks are told about it

    def start(self, session: Session) -> None:
        self.owner = session
        tun = Tunables(
            self.opts.sample_rate,
            self.opts.min_size,
            self.opts.native_stacks,
            sample_bytes=self.opts.sample_bytes,
            **({} if self.opts.arenas is None else {"arenas": self.opts.arenas}),
            stack_depth=self.opts.stack_depth,
        )
        self.ebpf = self.session_factory(
            self.opts.pids, tun, python_frames=self.opts.python_frames, on_note=session.say
        )
        self.ebpf.start()
        for pid in self.ebpf.pids:
            argv = read_argv(pid)
            where = containers.describe(pid)
            self.procs[pid] = {
                "pid": pid,
                "container": where.name or None,
                "ns_pid": where.ns_pid,
                "source": "ebpf",
                "watched": True,
                "command": procfs.command_text(argv),
                "started": round(_start_time(pid) or time.time(), 3),
                "elasticsearch": procfs.es_environment(pid),
            }
        session.say(self._attached_line())

    def _attached_line(self) -> str:
        assert self.ebpf is not None
        parts = []
        for t in self.ebpf.targets.values():
            what = (
                f"CPython {t.python.full_version}{'t' if t.python.free_threaded else ''}"
                if t.python
                else "native"
            )
            proc = self.procs.get(t.pid) or {}
            if proc.get("container"):
                what += f", in {proc['container']} as pid {proc.get('ns_pid') or '?'}"
            parts.append(f"{t.pid} ({what})")
        n = len(self.ebpf.loader.probes)
        return (
            f"trackleak-agent: attached to {', '.join(parts)}: {n} probes, "
            f"{sampling_text(self.ebpf.interval)}, min size {self.opts.min_size} B"
        )

    def poll(self) -> None:
        assert self.ebpf is not None
        self.ebpf.poll()

    def _stamp(self, rows: list[Row]) -> list[Row]:
        for row in rows:
            row.host = self.host
            proc = self.procs.get(row.pid) or {}
            row.command = proc.get("command", "")
            row.container = proc.get("container") or ""
        return rows

    def rows(self) -> list[Row]:
        assert self.ebpf is not None
        return self._stamp([dataclasses.replace(r) for r in self.ebpf.pid_rows()])

    def view_rows(self) -> list[Row]:
        assert self.ebpf is not None
        return self.ebpf.merged_rows() if len(self.ebpf.table) else []

    def pids(self) -> list[int]:
        return list(self.ebpf.pids) if self.ebpf is not None else []

    def caption(self, rows: list[Row], elapsed: float) -> str:
        assert self.ebpf is not None
        return (
            f"trackleak-agent: {elapsed:.0f}s, pids {', '.join(map(str, self.ebpf.pids))}, "
            f"{len(self.ebpf.table)} sites, {dropped_text(self.ebpf.dropped(), short=True)}"
        )

    def summary(self, rows: list[Row], elapsed: float) -> str:
        assert self.ebpf is not None
        line = render.summary_line(rows, elapsed=elapsed, pids=self.ebpf.pids)
        return f"{line} {dropped_text(self.ebpf.dropped(), short=True)}"

    def ended(self) -> str | None:
        if (
            self.ebpf is not None
            and self.ebpf.targets
            and not any(t.alive for t in self.ebpf.targets.values())
        ):
            return "every target exited"
        return None

    def stop(self) -> None:
        if self.ebpf is not None:
            self.ebpf.stop()  # the session's last poll: the last point of every series

    def meta(self, *, final: bool = False) -> dict:
        """For the sinks: the host agent's form (trackleak.fleet.es.FleetShipping reads it)."""
        now = time.time()
        procs = {}
        for pid, proc in self.procs.items():
            target = self.ebpf.targets.get(pid) if self.ebpf is not None else None
            procs[str(pid)] = dict(
                proc,
                python=target.python.full_version if target is not None and target.python else None,
                exited=bool(target is not None and not target.alive),
            )
        started = self.owner.started if self.owner is not None else now
        return {
            "host": self.host,
            "time": round(now, 3),
            "elapsed_seconds": round(now - started, 3),
            "processes": procs,
            "final": final,
        }

    def json_meta(self, session: Session) -> dict:
        assert self.ebpf is not None
        meta = {"format": AGENT_FORMAT, "version": AGENT_VERSION}
        meta.update(self.ebpf.meta())
        for target in meta.get("targets", []):
            proc = self.procs.get(target.get("pid")) or {}
            target.update(container=proc.get("container"), ns_pid=proc.get("ns_pid"))
        meta.update(
            started=round(session.started, 3),
            ended=round(session.ended, 3),
            stopped_by=session.reason or "stopped",
            host=self.host,
        )
        return meta

    def final(self, session: Session) -> Final:
        assert self.ebpf is not None
        rows = self.ebpf.merged_rows()
        table = self.ebpf.pid_rows()
        self._stamp(list(table))
        dropped = dropped_text(self.ebpf.dropped())
        attached = session.ended - session.started
        if rows:
            shown = len(render.top_rows(rows, top=self.opts.top, sort=self.opts.sort))
            pids = ", ".join(map(str, self.ebpf.pids))
            head = [
                f"trackleak-agent: {len(self.ebpf.pids)} process(es) ({pids}), "
                f"{sampling_text(self.ebpf.interval)}, min size {self.opts.min_size} B, "
                f"{attached:.1f}s attached ({session.reason or 'stopped'}); {dropped}; "
                f"top {shown} by {self.opts.sort}"
            ]
        else:
            head = []
        return Final(
            rows=rows,
            table=table,
            meta=self.json_meta(session),
            head=head,
            empty=(
                f"trackleak-agent: no allocation of at least {self.opts.min_size} B was seen "
                f"in {attached:.1f}s; {dropped}"
            ),
            history=self.ebpf.history,
            # Python's small objects live in pymalloc arenas: seen through the arena probes only
            small_objects_untracked=(
                not self.ebpf.tunables.arenas and any(t.python for t in self.ebpf.targets.values())
            )
            and render.SMALL_NO_ARENAS,
            min_size=self.opts.min_size,
        )


def pid_session(
    opts: AgentOptions,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    sinks: list | None = None,
    session_factory: Callable[..., EbpfSession] = EbpfSession,
    host: str | None = None,
) -> Session:
    """The session of `trackleak-agent --pid`: call .run()."""
    view = ViewOptions.of(opts)
    source = PidSource(opts, session_factory=session_factory, host=host)
    return Session(source, view, sinks=sinks, stdout=stdout, stderr=stderr)


def _start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


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


def run_agent(opts: AgentOptions, **kwargs) -> int:
    return pid_session(opts, **kwargs).run()

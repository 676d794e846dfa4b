# SPDX-License-Identifier: MIT
"""The two routes of the host agent: the shim's shared-memory table, and eBPF with a duty cycle.

**Shim route** (``ShimWatch``): the process maps ``/memfd:trackleak``; every interval its table is
read through /proc/PID/mem (trackleak.sources.shm, hostile input). No BPF, no root for the user's
own processes. When the process exits its last rows stay.

**eBPF route** (``EbpfRoute``): one loaded BPF program (trackleak.ebpf.session.EbpfSession) for
every target. Uprobes make each allocator call of a target trap, so by default targets are
attached for a *window* of W seconds out of every *period* of P seconds (``DutyCycle``; W >= P:
attached all the time, the session's own accounting). Under the duty cycle:

- At the start of a window the target's map entries (sites, live samples, pending calls) are
  cleared: nothing allocated before the window can have its free observed, so nothing allocated
  before it is estimated live.
- At the end of the window (probes detached first) every live sample of the target carries its
  allocation time (``tl_live_val.t_ns``). A sample still live and at least H = W/2 seconds old was
  *held* H seconds: it counts as retained. Younger survivors are forgotten (a block freed while
  we are detached would never be seen freed: counting them would manufacture retention).
- The retained samples were allocated in the first W - H seconds of the window, a time sample of
  (W - H) / C of the process's life, C the cycle: their Horvitz-Thompson bytes are scaled by
  C / (W - H) (as a byte sample of probability p is scaled by 1/p). Counts and totals of the
  window are scaled by C / W. C is the time from the target's previous window's opening to this
  one's (P for its first): P, or a multiple of it when closing a window took so long (~0.13 s a
  probe to detach, ~2 s a target: bench/bench_ebpf_detach.py) that the next period's opening had
  passed and was skipped. Raw sample columns stay raw. A site's ``live_bytes`` is the sum over
  windows: an estimate of the bytes allocated while watched that were still held H seconds later.
  Growth is the slope of that sum over the windows (trackleak.history, a window of at least 4
  periods). A row's call paths (tl_paths) are read at the same moment and scaled the same way, so
  they add up to it.
- So a workload whose blocks live less than H seconds shows no retention, and a leak grows by its
  rate per second. What it cannot tell apart: a cache whose entries live longer than H and are
  freed while detached looks like retention (attach continuously, or preload, to see those frees).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import config, sampling
from ..ebpf import AttachError
from ..ebpf.loader import Tunables
from ..ebpf.session import EbpfSession, Stats, _key
from ..history import WINDOW_S, History, pid_site_key
from ..sources.shm import ShmError, read_snapshot
from ..stacks import Stack
from ..table import Row
from .discovery import ProcInfo


@dataclass
class ShimWatch:
    info: ProcInfo
    rows: list[Row] = field(default_factory=list)
    python: str | None = None
    interval: int = 0
    alive: bool = True
    error: str = ""
    small_untracked: str | None = None  # its objects under the size limit are not tracked: the advice
    min_size: int = 0

    def read(self) -> bool:
        """Read the table now; False when the process is gone (its last rows stay)."""
        try:
            snap = read_snapshot(self.info.pid)
        except ShmError as exc:
            self.alive = False
            self.error = str(exc)
            return False
        if snap.header.start_time_ns and self.python is None:
            self.python = snap.header.python
        self.interval = snap.header.sample_interval
        self.small_untracked = snap.header.small_objects_advice
        self.min_size = snap.header.min_size
        self.rows = snap.rows
        return True


@dataclass(frozen=True)
class DutyCycle:
    window: float = config.default("ebpf_window", "host")
    period: float = config.default("ebpf_period", "host")

    @property
    def continuous(self) -> bool:
        return self.window >= self.period

    @property
    def hold(self) -> float:
        """How long a sample must stay live within its window to count as retained."""
        return self.window / 2.0

    def fraction(self) -> float:
        return 1.0 if self.continuous else self.window / self.period


@dataclass
class _Scaled:
    """Estimates summed over windows, each scaled to its cycle as the module docstring says: a
    window's count and bytes by F_TOTAL = C/W, its held samples by F_LIVE = C/(W-H)."""

    count: float = 0.0
    total_bytes: float = 0.0
    live_bytes: float = 0.0
    live_count: float = 0.0

    def add_window(self, count: float, total_bytes: float, f_total: float) -> None:
        self.count += count * f_total
        self.total_bytes += total_bytes * f_total

    def add_held(self, held: list[int] | None, f_live: float) -> None:
        """HELD: [Horvitz-Thompson bytes, count in COUNT_ONE units] of the samples held H seconds."""
        if held is not None:
            self.live_bytes += held[0] * f_live
            self.live_count += held[1] / sampling.COUNT_ONE * f_live


@dataclass
class _Acc(_Scaled):
    """One BPF site of one target (its raw sample columns stay raw)."""

    sample_count: int = 0
    sample_total_bytes: int = 0
    sample_free_bytes: int = 0
    peak_single: int = 0


@dataclass
class _PathAcc(_Scaled):
    """One call path of one target's row, scaled as its row is."""

    truncated: bool = False


class EbpfRoute:
    def __init__(
        self,
        tunables: Tunables,
        duty: DutyCycle,
        *,
        python_frames: bool = True,
        on_note: Callable[[str], None] | None = None,
        session_factory: Callable[..., EbpfSession] = EbpfSession,
    ):
        self.duty = duty
        self.on_note = on_note or (lambda msg: None)
        self.session = session_factory(
            [], tunables, python_frames=python_frames, on_note=self.on_note, allow_empty=True
        )
        self.available: bool | None = None  # None: not tried yet
        self.reason = ""
        self.procs: dict[int, ProcInfo] = {}  # targets being watched
        self.ended: dict[int, ProcInfo] = {}
        self.attached: dict[int, float] = {}  # pid -> monotonic attach time (duty cycle)
        self.window_open: float | None = None
        # pid -> C of its current window: from its previous window's opening to this one's
        self.cycles: dict[int, float] = {}
        self.opened: dict[int, float] = {}  # pid -> when its last window opened (monotonic)
        self.windows = 0
        self.attached_seconds = 0.0
        self.acc: dict[int, dict[tuple, _Acc]] = {}
        # pid -> (row site, frames) -> a call path of that row, summed over windows like acc
        self.path_acc: dict[int, dict[tuple, _PathAcc]] = {}
        self.sites: dict[int, dict[tuple, tuple]] = {}  # pid -> BPF key -> row site
        self.final_rows: list[Row] = []  # rows of incarnations that ended
        window_s = WINDOW_S if duty.continuous else max(WINDOW_S, 4 * duty.period)
        self.history = History(key=pid_site_key, window_s=window_s)

    # ------------------------------------------------------------------ set-up

    def ensure_loaded(self) -> bool:
        if self.available is None:
            try:
                self.session.load()
                self.available = True
            except AttachError as exc:
                self.available = False
                self.reason = str(exc)
        return bool(self.available)

    def add(self, info: ProcInfo) -> bool:
        """Start watching a process (continuous: attached now; duty: from the next window)."""
        try:
            self.session.add_target(info.pid)
        except (AttachError, OSError) as exc:
            self.on_note(f"pid {info.pid} ({info.command[:60]}): not attached: {exc}")
            return False
        if not self.duty.continuous:
            self.session.detach_probes(info.pid)
            self.acc.setdefault(info.pid, {})
        self.procs[info.pid] = info
        return True

    def remove(self, pid: int, *, discard_window: bool = False) -> None:
        """Stop watching PID (exited, or exec'd into a preloaded program). Its rows so far stay;
        with DISCARD_WINDOW the open window's counts are dropped (they may overlap the shim's)."""
        info = self.procs.pop(pid, None)
        if info is None:
            return
        if pid in self.attached:
            started = self.attached.pop(pid)
            self.session.detach_probes(pid)
            if not discard_window:
                self._account(pid, time.monotonic() - started, time.monotonic_ns())
        if self.duty.continuous:
            if not discard_window:
                self.session.poll()
            self.final_rows += [r for r in self.session.table if r.pid == pid]
        else:
            self.final_rows += self.history.annotate(self._rows_of(pid))
        self.session.remove_target(pid)
        self.session.table.replace_pid(pid, [])
        self.acc.pop(pid, None)
        self.path_acc.pop(pid, None)
        self.sites.pop(pid, None)
        self.cycles.pop(pid, None)
        self.opened.pop(pid, None)
        self.ended[pid] = info

    # ------------------------------------------------------------------ duty cycle

    def _clear_maps(self, pid: int) -> None:
        loader = self.session.loader
        for name in ("tl_sites", "tl_live"):
            table = loader.table(name)
            for k in [k for k in table if k.pid == pid]:
                with contextlib.suppress(KeyError):
                    del table[k]
        if self.session.tunables.stack_depth > 0:
            paths = loader.table("tl_paths")
            for k, v in list(paths.items()):
                if int(v.pid) == pid:
                    with contextlib.suppress(KeyError):
                        del paths[k]
                    self.session.path_ids.pop(int(getattr(k, "value", k)), None)
        pending = loader.table("tl_pending")
        for k in [k for k in pending if (int(k.value) >> 32) == pid]:
            with contextlib.suppress(KeyError):
                del pending[k]

    def open_window(self) -> None:
        now = self.window_open = time.monotonic()
        for pid in list(self.procs):
            self._clear_maps(pid)
            try:
                self.session.attach_probes(pid)
            except (AttachError, OSError) as exc:
                self.on_note(f"pid {pid}: cannot attach ({exc}); no longer watched")
                self.remove(pid, discard_window=True)
                continue
            self.attached[pid] = time.monotonic()
            # a target's first window stands for one period; a later one for the time since its
            # previous window opened (longer when periods were skipped)
            prev = self.opened.get(pid)
            self.cycles[pid] = self.duty.period if prev is None else max(self.duty.period, now - prev)
            self.opened[pid] = now

    def close_window(self, still_ebpf: Callable[[int], bool] | None = None) -> None:
        """Detach every target and account the window (see the module docstring)."""
        stopped = {}
        for pid, started in list(self.attached.items()):
            self.session.detach_probes(pid)
            stopped[pid] = (time.monotonic() - started, time.monotonic_ns())
        self.attached.clear()
        if self.window_open is not None:
            self.windows += 1
            self.attached_seconds += time.monotonic() - self.window_open
        self.window_open = None
        now = time.time()
        for pid, (seconds, detached_ns) in stopped.items():
            if still_ebpf is not None and not still_ebpf(pid):
                # It exec'd into a preloaded program during the window: some of its counts may
                # be the shim's too. The window is dropped, the route changes.
                self._clear_maps(pid)
                self.remove(pid, discard_window=True)
                continue
            self._account(pid, seconds, detached_ns)
            rows = self._rows_of(pid)
            self.history.observe(now - self.session.started, rows, interval=self._noise_interval(pid))

    def _noise_interval(self, pid: int) -> int:
        # A sample stands for C / (W - H) times more bytes: the estimate's variance grows with it.
        r = self.session.interval
        d = self.duty
        return int(r * self._cycle(pid) / max(d.window - d.hold, 1e-9)) if r else 0

    def _cycle(self, pid: int) -> float:
        return self.cycles.get(pid, self.duty.period)

    def _account(self, pid: int, attached_s: float, detached_ns: int) -> None:
        target = self.session.targets.get(pid)
        loader = self.session.loader
        if target is None or loader.bpf is None:
            return
        d = self.duty
        cycle = self._cycle(pid)
        f_total = cycle / attached_s if attached_s > 0 else 0.0
        useful = attached_s - d.hold
        f_live = cycle / useful if useful > 0 else 0.0
        hold_ns = int(d.hold * 1e9)
        held: dict[tuple, list[int]] = {}
        held_paths: dict[int, list[int]] = {}  # tl_paths id -> the same, per call path
        live = loader.table("tl_live")
        for k, v in list(live.items()):
            if k.pid != pid:
                continue
            if detached_ns - int(v.t_ns) >= hold_ns:
                s = v.site
                key = (int(s.pid), int(s.kind), int(s.code), int(s.offset), int(s.stack_id))
                h = held.setdefault(key, [0, 0])
                h[0] += int(v.w_bytes)
                h[1] += int(v.w_count)
                if int(v.path):
                    h = held_paths.setdefault(int(v.path), [0, 0])
                    h[0] += int(v.w_bytes)
                    h[1] += int(v.w_count)
        window: dict[tuple, Stats] = {}
        sites = loader.table("tl_sites")
        for k, v in list(sites.items()):
            if k.pid == pid:
                window[_key(k)] = Stats.of(v)
        if self.session.tunables.stack_depth > 0 and target.alive:
            self._account_paths(target, held_paths, f_total, f_live)
        self._clear_maps(pid)
        acc = self.acc.setdefault(pid, {})
        names = self.sites.setdefault(pid, {})
        for key in set(window) | set(held):
            if key not in names:
                site = self.session._site(target, key) if target.alive else None
                if site is None:
                    continue  # its code object is gone: not attributable
                names[key] = site
            a = acc.setdefault(key, _Acc())
            st = window.get(key)
            if st is not None:
                a.add_window(st.count, st.total_bytes, f_total)
                a.sample_count += st.sample_count
                a.sample_total_bytes += st.sample_total_bytes
                a.sample_free_bytes += st.sample_free_bytes
                a.peak_single = max(a.peak_single, st.peak_single)
            a.add_held(held.get(key), f_live)

    def _account_paths(self, target, held: dict[int, list[int]], f_total: float, f_live: float) -> None:
        """The window's call paths of TARGET (tl_paths, resolved to frames while its code objects
        are alive), scaled as the rows are, into path_acc under the row of their innermost frame."""
        acc = self.path_acc.setdefault(target.pid, {})
        for id_, (_k, st, content) in self.session._read_paths().items():
            if content is None or content[0] != target.pid or target.code is None:
                continue
            frames = self.session._resolve_path(target, content)
            if frames is None:
                continue  # its own frame unreadable: the row keeps these bytes as its own
            a = acc.setdefault(((*frames[-1], False), frames), _PathAcc())
            a.truncated = a.truncated or content[1]
            a.add_window(st.est_count / sampling.COUNT_ONE, st.est_bytes, f_total)
            a.add_held(held.get(id_), f_live)

    def _rows_of(self, pid: int) -> list[Row]:
        merged: dict[tuple, Row] = {}
        names = self.sites.get(pid, {})
        for key, a in self.acc.get(pid, {}).items():
            site = names.get(key)
            if site is None:
                continue
            row = Row(
                function=site[0],
                file=site[1],
                line=site[2],
                native=site[3],
                source="ebpf",
                pid=pid,
                count=round(a.count),
                total_bytes=round(a.total_bytes),
                sample_count=a.sample_count,
                sample_total_bytes=a.sample_total_bytes,
                sample_free_bytes=a.sample_free_bytes,
                peak_single=a.peak_single,
                live_bytes=round(a.live_bytes),
                live_count=round(a.live_count),
            )
            have = merged.get(row.key)
            if have is None:
                merged[row.key] = row
            else:
                have.add(row)
        for (site, frames), a in self.path_acc.get(pid, {}).items():
            row = merged.get(site)
            if row is None:
                continue
            stack = Stack(
                frames,
                live_bytes=round(a.live_bytes),
                live_count=round(a.live_count),
                total_bytes=round(a.total_bytes),
                count=round(a.count),
                truncated=a.truncated,
            )
            row.stacks = [*(row.stacks or ()), stack]
        return list(merged.values())

    # ------------------------------------------------------------------ continuous

    def poll(self) -> None:
        """Continuous mode: read the maps (the session's accounting and history)."""
        if self.duty.continuous and self.available:
            self.session.poll()
            for pid in [p for p, t in self.session.targets.items() if not t.alive and p in self.procs]:
                info = self.procs.pop(pid)
                self.final_rows += [r for r in self.session.table if r.pid == pid]
                self.session.table.replace_pid(pid, [])
                self.ended[pid] = info

    def exited(self, pid: int) -> None:
        """Discovery no longer sees PID (exited): its rows become final."""
        if pid in self.procs:
            self.remove(pid)

    def rows(self) -> list[Row]:
        """Current rows of every target watched so far (growth annotated)."""
        if self.duty.continuous:
            live = list(self.session.pid_rows()) if self.available else []
        else:
            live = [r for pid in self.procs for r in self._rows_of(pid)]
            self.history.annotate(live)
        return live + [dataclasses.replace(r) for r in self.final_rows]

    def stop(self) -> None:
        if self.window_open is not None:
            self.close_window()
        if self.available and self.session.loader.bpf is not None:
            with contextlib.suppress(Exception):
                if self.duty.continuous:
                    self.session.poll()
            for pid in list(self.session.targets):
                with contextlib.suppress(Exception):
                    self.session.detach_probes(pid)
            self.session.loader.close()

    def python_of(self, pid: int) -> str | None:
        t = self.session.targets.get(pid)
        return t.python.full_version if t is not None and t.python else None

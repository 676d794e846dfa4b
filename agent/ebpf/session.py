"""One attach session: several target pids -> one RetentionTable (rows with source "ebpf").

    session = EbpfSession([pid], Tunables(sample_rate=50, min_size=500))
    session.start()            # compile, attach (errors: AttachError, one line)
    table = session.poll()     # read the BPF maps, symbolize new sites, rebuild rows, observe
    rows = session.merged_rows()   # one row per site, with growth (trackleak.history)
    session.stop()             # final poll, detach every probe

Rows: ``live_bytes`` / ``live_count`` are the Horvitz-Thompson sums of the samples not freed
(est_* - est_free_* of struct tl_site_stats); every poll adds a point to ``history`` (per site)
and ``pid_history`` (per pid and site), whose fit gives ``growth_bytes_per_s`` and ``growing``.

Room in tl_sites: at every poll an entry that holds nothing live (every sample freed) and whose
count did not move since the previous poll is deleted from the map, its totals carried here; a
row is carry + map value, so a site that comes back continues from its totals, and a new site
(a new leak) always finds room. What still could not be tracked is in ``dropped()``.

A target that exits while attached keeps the rows it had (its code objects were read while it
ran, at each poll), its probes are detached and its map entries removed; the others go on.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, fields
from typing import Callable

from trackleak import sampling
from trackleak.ebpf import AttachError, procinfo
from trackleak.ebpf.loader import (
    ARENA_PROGRAMS,
    ARENA_RETURN_PROGRAM,
    ENTRY_PROGRAMS,
    Loader,
    Tunables,
    check_privileges,
)
from trackleak.ebpf.python import PythonInfo, UnsupportedPython, find_python, resolve_offsets, target_fields
from trackleak.history import History, pid_site_key
from trackleak.stacks import MAX_FRAMES, Stack
from trackleak.symbolize.elf import NativeSymbolizer, elf_info, proc_path
from trackleak.symbolize.pycode import CodeReader, ProcessMemory
from trackleak.table import RetentionTable, Row

TL_TARGET_PYTHON = 1  # bpf/trackleak.h
# tl_target fields whose "none" is 0
_ZERO_DEFAULT = {
    "flags",
    "code_tag_mask",
    "tstate_tls",
    "wrap_lo",
    "wrap_hi",
    "arena_size",
    "arena_lo",
    "arena_hi",
}
TL_SITE_PYTHON = 1
TL_SITE_ARENA = 2  # a pymalloc arena at a Python line: shown in that line's row
COUNTER_NAMES = (
    "sites_full",
    "live_full",
    "pending_full",
    "python_no_frame",
    "frees_matched",
    "arenas",
    "arena_frees",
    "paths_full",
    "path_collisions",
)
# What could not be tracked (bpf/trackleak.h TL_CNT_*): counter -> what it counts, for people.
DROPPED = {
    "sites_full": "allocations not counted (sites map full)",
    "live_full": "samples lost (live-set map full)",
    "pending_full": "samples lost (pending map full)",
    "paths_full": "samples without a call path (paths map full)",
}
TL_PATH_TRUNCATED = 1  # struct tl_path.flags
UNKNOWN_FRAME = ("[unknown]", "[unknown]", 0)  # a caller whose code object cannot be read (now)
MAX_FRAME_CACHE = 1 << 18  # resolved (code, offset) pairs kept per target (then started again)


@dataclass
class Stats:
    """struct tl_site_stats in Python: a map value, a carry, or their sum."""

    count: int = 0
    total_bytes: int = 0
    sample_count: int = 0
    sample_total_bytes: int = 0
    sample_free_count: int = 0
    sample_free_bytes: int = 0
    peak_single: int = 0
    est_count: int = 0
    est_bytes: int = 0
    est_free_count: int = 0
    est_free_bytes: int = 0

    @classmethod
    def of(cls, value) -> Stats:
        return cls(*(int(getattr(value, name)) for name in STATS_FIELDS))

    def plus(self, other: Stats | None) -> Stats:
        if other is None:
            return self
        out = Stats(*(getattr(self, n) + getattr(other, n) for n in STATS_FIELDS))
        out.peak_single = max(self.peak_single, other.peak_single)
        return out

    @property
    def holds_nothing(self) -> bool:
        """Every sample freed: deleting the entry loses no free to come."""
        return self.sample_free_count >= self.sample_count and self.est_free_count >= self.est_count

    @property
    def live_bytes(self) -> int:
        return max(0, self.est_bytes - self.est_free_bytes)

    @property
    def live_count(self) -> int:
        return max(0, round((self.est_count - self.est_free_count) / sampling.COUNT_ONE))


STATS_FIELDS = tuple(f.name for f in fields(Stats))  # struct tl_site_stats, in order


@dataclass
class PathStats:
    """struct tl_path_stats in Python: one call path's Horvitz-Thompson sums (a map entry, a carry,
    or their sum)."""

    sample_count: int = 0
    sample_free_count: int = 0
    est_count: int = 0
    est_bytes: int = 0
    est_free_count: int = 0
    est_free_bytes: int = 0

    @classmethod
    def of(cls, value) -> PathStats:
        return cls(*(int(getattr(value, name)) for name in PATH_STATS_FIELDS))

    def plus(self, other: PathStats | None) -> PathStats:
        if other is None:
            return self
        return PathStats(*(getattr(self, n) + getattr(other, n) for n in PATH_STATS_FIELDS))

    @property
    def holds_nothing(self) -> bool:
        return self.sample_free_count >= self.sample_count and self.est_free_count >= self.est_count

    def stack(self, frames: tuple, truncated: bool) -> Stack:
        return Stack(
            frames=frames,
            live_bytes=max(0, self.est_bytes - self.est_free_bytes),
            live_count=max(0, round((self.est_count - self.est_free_count) / sampling.COUNT_ONE)),
            total_bytes=self.est_bytes,
            count=round(self.est_count / sampling.COUNT_ONE),
            truncated=truncated,
        )


PATH_STATS_FIELDS = tuple(f.name for f in fields(PathStats))  # struct tl_path_stats, in order
# A path as BPF recorded it: (pid, truncated, ((code, offset), ...) innermost first)
PathContent = tuple


def _key(k) -> tuple:
    """A tl_sites key as a tuple: (pid, kind, code, offset, stack_id)."""
    return (int(k.pid), int(k.kind), int(k.code), int(k.offset), int(k.stack_id))


# Frames in these objects are the allocator's own wrappers: a native site is the first caller
# outside them (strdup -> its caller; operator new -> its caller).
_WRAPPER_OBJECTS = ("/libc.so", "/libc-", "/ld-linux", "/libstdc++.so", "/libgcc_s.so")


def _is_wrapper(path: str) -> bool:
    return any(w in path for w in _WRAPPER_OBJECTS)


@dataclass
class Target:
    pid: int
    exe: str
    libc: str
    python: PythonInfo | None = None
    note: str = ""  # one sentence shown to the user (e.g. unsupported interpreter)
    alive: bool = True
    started: float = field(default_factory=time.time)
    ended: float | None = None
    mem: ProcessMemory | None = None
    code: CodeReader | None = None
    native: NativeSymbolizer | None = None
    sites: dict[tuple, tuple] = field(default_factory=dict)  # BPF site key -> row site key
    rows: list[Row] = field(default_factory=list)
    arena_size: int = 0  # pymalloc arenas watched (bytes each); 0: not watched
    frames: dict[tuple, tuple] = field(default_factory=dict)  # (code, offset) -> path frame
    native_paths: dict[tuple, tuple] = field(default_factory=dict)  # native key -> (frames, truncated)


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "?"


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class EbpfSession:
    def __init__(
        self,
        pids: list[int],
        tunables: Tunables | None = None,
        *,
        python_frames: bool = True,
        move_free_probe: bool = True,
        on_note: Callable[[str], None] | None = None,
        allow_empty: bool = False,  # the host agent adds targets later (add_target)
    ):
        if not pids and not allow_empty:
            raise AttachError("no target: give at least one --pid")
        self.pids = list(dict.fromkeys(pids))
        self.tunables = tunables or Tunables()
        self.want_python = python_frames
        self.move_free_probe = move_free_probe
        self.on_note = on_note or (lambda msg: None)
        self.loader = Loader(self.tunables)
        self.targets: dict[int, Target] = {}
        self.table = RetentionTable()
        self.started = time.time()
        self.counters: dict[str, int] = {}
        # Live bytes over time: per site (live view, final ranking) and per pid (JSON rows).
        self.history = History()
        self.pid_history = History(key=pid_site_key)
        self.carry: dict[tuple, Stats] = {}  # totals of entries deleted from tl_sites
        self.evicted = 0  # entries deleted to make room (a site can come back and go again)
        self._last_count: dict[tuple, int] = {}  # count of each map entry at the previous poll
        self._warned: set[str] = set()
        # Call paths (tl_paths): id -> its contents (a stub entry, depth 0, has only its id), the
        # totals of deleted entries by contents, and each entry's sample counts at the last poll.
        self.path_ids: dict[int, PathContent] = {}
        self.path_carry: dict[PathContent, PathStats] = {}
        self.evicted_paths = 0
        self._path_last: dict[int, tuple[int, int]] = {}
        self._path_frames: dict[PathContent, tuple] = {}  # resolved frames, outermost first

    @property
    def interval(self) -> int:
        """The sampling interval R in bytes (trackleak.sampling); 0: every allocation sampled."""
        return self.tunables.interval

    # ------------------------------------------------------------------ attach / detach

    def start(self) -> None:
        for pid in self.pids:  # every pid checked before anything is loaded
            procinfo.check_exists(pid)
        check_privileges()
        for pid in self.pids:
            procinfo.check_pid(pid)
        self.loader.load()
        try:
            for pid in self.pids:
                self._attach(pid)
        except BaseException:
            self.loader.close()
            raise

    def _attach(self, pid: int) -> None:
        maps = procinfo.process_maps(pid)
        libc = procinfo.find_libc(pid, maps)
        target = Target(pid=pid, exe=_exe(pid), libc=libc)
        libc_elf = elf_info(proc_path(pid, libc))
        fields = {"flags": 0}
        text = [m for m in maps if m.path == libc and "x" in m.perms]
        if text:
            fields.update(wrap_lo=min(m.start for m in text), wrap_hi=max(m.end for m in text))
        if self.want_python:
            try:
                py = find_python(pid, maps)
                if py is not None:
                    target.mem = ProcessMemory(pid)
                    resolve_offsets(py, target.mem)
                    if not self.loader.python_frames:
                        raise UnsupportedPython("the kernel has no BTF to find thread pointers")
                    layout = procinfo.glibc_layout(libc_elf)
                    fields.update(target_fields(py))
                    fields.update(
                        flags=TL_TARGET_PYTHON,
                        pthread_specific=layout.specific,
                        pthread_l2=layout.second_level,
                        key_data_size=layout.key_data_size,
                        key_data_data=layout.key_data_data,
                    )
                    target.python = py
                    target.code = CodeReader(target.mem, py.offsets)
                    if py.free_threaded:
                        self.on_note(
                            f"pid {pid}: CPython {py.full_version}t is free-threaded: its objects come "
                            "from mimalloc, not from libc, so the probes see only libc allocations "
                            "(C extensions, ctypes...); `trackleak run` sees both"
                        )
                    fields.update(self._arena_fields(target, py, maps))
            except UnsupportedPython as e:
                target.note = f"{e}; attributing to native functions only."
                self.on_note(f"pid {pid}: {target.note}")
        target.native = NativeSymbolizer(pid)
        self._set_target(pid, fields)
        self.targets[pid] = target
        self.attach_probes(pid)

    def _arena_fields(self, target: Target, py: PythonInfo, maps) -> dict[str, int]:
        """struct tl_target's arena fields: the arena size of this CPython (cpython.json) and the
        interpreter's text, the only place an arena mmap comes from. {} = arenas not watched."""
        size = int(py.offsets.get("obmalloc.arena_size", -1))
        text = [m for m in maps if m.path == py.path and "x" in m.perms]
        if not self.tunables.arenas or size <= 0 or not text:
            return {}
        target.arena_size = size
        return {
            "arena_size": size,
            "arena_lo": min(m.start for m in text),
            "arena_hi": max(m.end for m in text),
        }

    def attach_probes(self, pid: int) -> None:
        """(Re)attach the allocator probes of a known target (the host agent's duty cycle detaches
        and reattaches them; the target's configuration and symbol caches stay)."""
        target = self.targets[pid]
        # point.path is the libc as the target sees it: libbcc resolves a uprobe's path in the
        # mount namespace of the pid it is given, so a container's own libc gets the probes, not
        # the host's file at the same path (tests/integration/test_containers.py).
        try:
            points = procinfo.probe_points(pid, target.libc, move_free=self.move_free_probe).values()
            # free (and realloc, which frees too) first: from the moment an allocation can be
            # sampled its free must be seen (a sample freed before the free probe stays live).
            for point in sorted(points, key=lambda p: {"free": 0, "realloc": 1}.get(p.func, 2)):
                if point.func not in ENTRY_PROGRAMS:
                    continue
                self.loader.attach(point.func, point.path, point.offset, pid)
                if point.func != "free":
                    # at the same (possibly moved) address: one breakpoint, and the skipped
                    # instructions only set flags, so [sp] is still the return address
                    self.loader.attach(point.func, point.path, point.offset, pid, retprobe=True)
            if target.arena_size:
                points = procinfo.arena_probe_points(pid, target.libc)
                if not points:
                    target.arena_size = 0
                    self.on_note(f"pid {pid}: no mmap/munmap symbols in {target.libc}; arenas not watched.")
                for point in sorted(points.values(), key=lambda p: p.func != "munmap"):
                    self.loader.attach(
                        point.func, point.path, point.offset, pid, program=ARENA_PROGRAMS[point.func]
                    )
                    if point.func == "mmap":
                        self.loader.attach(
                            point.func,
                            point.path,
                            point.offset,
                            pid,
                            retprobe=True,
                            program=ARENA_RETURN_PROGRAM,
                        )
        except BaseException:
            self.loader.detach_pid(pid)
            raise

    def detach_probes(self, pid: int) -> None:
        """Detach a target's probes, keeping its configuration, symbol caches and map entries."""
        self.loader.detach_pid(pid)

    # The host agent (trackleak.fleet) adds targets as it discovers them, on a loaded program.

    def load(self) -> None:
        """Compile and load the BPF program without attaching (AttachError says why not)."""
        check_privileges()
        if self.loader.bpf is None:
            self.loader.load()

    def add_target(self, pid: int) -> Target:
        """Configure and attach one more process on the loaded program."""
        procinfo.check_pid(pid)
        try:
            self._attach(pid)
        except BaseException:
            self.loader.detach_pid(pid)
            self.targets.pop(pid, None)
            with contextlib.suppress(KeyError, Exception):
                del self.loader.table("tl_targets")[self.loader.table("tl_targets").Key(pid)]
            raise
        if pid not in self.pids:
            self.pids.append(pid)
        return self.targets[pid]

    def remove_target(self, pid: int) -> None:
        """Stop watching PID (exited, or exec'd into another route): probes detached, its map
        entries deleted; its rows stay in the table as they were."""
        target = self.targets.get(pid)
        if target is None:
            return
        if target.alive:
            target.alive = False
            target.ended = time.time()
            self.loader.detach_pid(pid)
            with contextlib.suppress(KeyError):
                del self.loader.table("tl_targets")[self.loader.table("tl_targets").Key(pid)]
            if target.mem is not None:
                target.mem.close()
        self._forget_pid(pid)

    def _set_target(self, pid: int, fields: dict[str, int]) -> None:
        table = self.loader.table("tl_targets")
        key, value = table.Key(pid), table.Leaf()
        for name, _ctype in value._fields_:
            setattr(value, name, fields.get(name, 0 if name in _ZERO_DEFAULT else -1))
        table[key] = value

    def _end_target(self, target: Target) -> None:
        if not target.alive:
            return
        target.alive = False
        target.ended = time.time()
        self.loader.detach_pid(target.pid)
        with contextlib.suppress(KeyError):
            del self.loader.table("tl_targets")[self.loader.table("tl_targets").Key(target.pid)]
        if target.mem is not None:
            target.mem.close()
        self.on_note(f"pid {target.pid} exited; its rows are final.")

    def stop(self) -> None:
        try:
            self.poll()
        finally:
            for target in self.targets.values():
                if target.alive:
                    self.loader.detach_pid(target.pid)
                    if target.mem is not None:
                        target.mem.close()
            self.loader.close()

    # ------------------------------------------------------------------ reading

    def poll(self) -> RetentionTable:
        if self.loader.bpf is None:
            return self.table
        gone = [t for t in self.targets.values() if t.alive and not process_alive(t.pid)]
        sites = self.loader.table("tl_sites")
        current: dict[tuple, tuple] = {}  # key tuple -> (map key, Stats)
        for k, v in sites.items():
            current[_key(k)] = (k, Stats.of(v))
        per_pid: dict[int, dict[tuple, Row]] = {pid: {} for pid, t in self.targets.items() if t.alive}
        keys = set(current) | {key for key in self.carry if key[0] in per_pid}
        for key in keys:
            target = self.targets.get(key[0])
            if target is None or not target.alive:
                continue
            site = self._site(target, key)
            if site is None:
                continue
            now = current.get(key)
            stats = (now[1] if now else Stats()).plus(self.carry.get(key))
            row = self._row(key[0], site, stats)
            have = per_pid[key[0]].get(site)
            if have is None:
                per_pid[key[0]][site] = have = row
            else:
                have.add(row)
            native = target.native_paths.get(key[1:]) if self.tunables.stack_depth > 0 else None
            if native is not None:  # a native site's user stack (tl_stacks): its path, exactly
                frames, truncated = native
                stack = Stack(
                    frames, stats.live_bytes, stats.live_count, stats.total_bytes, stats.count, truncated
                )
                same = next((s for s in have.stacks or () if s.frames == frames), None)
                if same is not None:
                    same.add(stack)
                else:
                    have.stacks = [*(have.stacks or ()), stack]
        paths = self._read_paths() if self.tunables.stack_depth > 0 else {}
        if paths:
            self._attach_stacks(per_pid, paths)
        for pid, rows in per_pid.items():
            self.targets[pid].rows = list(rows.values())
            self.table.replace_pid(pid, self.targets[pid].rows)
        self._make_room(current)
        if paths:
            self._make_room_paths(paths)
        for target in gone:
            self._end_target(target)
            self._forget_pid(target.pid)
        self._read_counters()
        self._observe()
        return self.table

    @staticmethod
    def _row(pid: int, site: tuple, st: Stats) -> Row:
        return Row(
            function=site[0],
            file=site[1],
            line=site[2],
            count=st.count,
            total_bytes=st.total_bytes,
            sample_count=st.sample_count,
            sample_total_bytes=st.sample_total_bytes,
            sample_free_bytes=st.sample_free_bytes,
            peak_single=st.peak_single,
            source="ebpf",
            pid=pid,
            native=site[3],
            live_bytes=st.live_bytes,
            live_count=st.live_count,
        )

    def _make_room(self, current: dict[tuple, tuple]) -> None:
        """Delete the entries that hold nothing live and were idle since the previous poll (count
        unchanged), carrying their totals: the map keeps room for new sites."""
        last, self._last_count = self._last_count, {}
        for key, (k, st) in current.items():
            target = self.targets.get(key[0])
            idle = last.get(key) == st.count
            symbolized = target is not None and key[1:] in target.sites
            if not (idle and symbolized and st.plus(self.carry.get(key)).holds_nothing):
                self._last_count[key] = st.count
                continue
            self._evict(key, k, st)

    def _evict(self, key: tuple, k, seen: Stats) -> None:
        value = self.loader.lookup_and_delete("tl_sites", k)
        if value is not None:
            final = Stats.of(value)
        else:  # no atomic lookup-and-delete: what we read (an update in between is lost)
            with contextlib.suppress(KeyError):
                del self.loader.table("tl_sites")[k]
            final = seen
        self.carry[key] = final.plus(self.carry.get(key))
        self.evicted += 1

    # ------------------------------------------------------------------ call paths

    def _read_paths(self) -> dict[int, tuple]:
        """tl_paths now: id -> (map key, PathStats, contents or None for a stub of unknown id)."""
        table = self.loader.table("tl_paths")
        try:
            items = list(table.items_lookup_batch())
        except Exception:  # no batch operations on this kernel (or an empty map): one by one
            items = list(table.items())
        out: dict[int, tuple] = {}
        for k, v in items:
            id_ = int(getattr(k, "value", k))  # the batch lookup gives ints
            depth = min(int(v.depth), len(v.code))
            if depth > 0:
                frames = tuple((int(v.code[i]), int(v.offset[i])) for i in range(depth))
                content = (int(v.pid), bool(int(v.flags) & TL_PATH_TRUNCATED), frames)
                self.path_ids[id_] = content
            else:  # a stub: a free that found its path deleted (a race with _make_room_paths)
                content = self.path_ids.get(id_)
            out[id_] = (table.Key(id_), PathStats.of(v.st), content)
        return out

    def _attach_stacks(self, per_pid: dict[int, dict[tuple, Row]], paths: dict[int, tuple]) -> None:
        """Row.stacks of every row that has call paths: map entries + carried totals, by contents,
        resolved to frames and grouped by the row of their innermost frame."""
        totals: dict[PathContent, PathStats] = {}
        for _k, st, content in paths.values():
            if content is not None:
                totals[content] = st.plus(totals.get(content))
        for content, st in self.path_carry.items():
            totals[content] = st.plus(totals.get(content))
        stacks: dict[tuple, dict[tuple, Stack]] = {}  # (pid, row site) -> frames -> Stack
        for content, st in totals.items():
            pid, truncated, _raw = content
            rows = per_pid.get(pid)
            target = self.targets.get(pid)
            if rows is None or target is None or target.code is None:
                continue
            frames = self._resolve_path(target, content)
            if frames is None:
                continue  # its own site unreadable now: retried at the next poll
            site = (*frames[-1], False)
            if site not in rows:
                continue
            stack = st.stack(frames, truncated)
            have = stacks.setdefault((pid, site), {}).get(frames)
            if have is None:
                stacks[(pid, site)][frames] = stack
            else:  # two offsets of one line, or a stub's path
                have.add(stack)
        for (pid, site), by_frames in stacks.items():
            per_pid[pid][site].stacks = list(by_frames.values())

    def _resolve_path(self, target: Target, content: PathContent) -> tuple | None:
        """Frames of a path, outermost first ((function, file, line) each, the row's site last);
        None when the innermost code object cannot be read now. Code objects are read from the
        target's memory (hostile: every read checked, CodeReader validates the objects)."""
        have = self._path_frames.get(content)
        if have is not None:
            return have
        assert target.code is not None
        frames = []
        complete = True
        cache = target.frames
        if len(cache) > MAX_FRAME_CACHE:
            cache.clear()
        for code, offset in content[2][:MAX_FRAMES]:
            frame = cache.get((code, offset))
            if frame is None:
                info = target.code.code(code)
                if info is not None:
                    try:
                        frame = cache[(code, offset)] = (info.function, info.file, int(info.line(offset)))
                    except (IndexError, ValueError):  # a line table that does not parse
                        frame = None
            if frame is None:
                if not frames:
                    return None
                complete = False
                frame = UNKNOWN_FRAME
            frames.append(frame)
        out = tuple(reversed(frames))
        if complete:
            self._path_frames[content] = out
        return out

    def _make_room_paths(self, paths: dict[int, tuple]) -> None:
        """Delete the tl_paths entries whose path holds nothing live and that did not move since
        the previous poll, carrying their totals by contents (as _make_room does for sites)."""
        totals: dict[PathContent, PathStats] = {}
        for _k, st, content in paths.values():
            if content is not None:
                totals[content] = st.plus(totals.get(content))
        last, self._path_last = self._path_last, {}
        for id_, (k, st, content) in paths.items():
            now = (st.sample_count, st.sample_free_count)
            if content is None or content[0] not in self.targets:
                self._path_last[id_] = now
                continue
            held = totals[content].plus(self.path_carry.get(content))
            if last.get(id_) != now or not held.holds_nothing:
                self._path_last[id_] = now
                continue
            value = self.loader.lookup_and_delete("tl_paths", k)
            if value is not None:
                final = PathStats.of(value.st)
            else:
                with contextlib.suppress(KeyError):
                    del self.loader.table("tl_paths")[k]
                final = st
            self.path_carry[content] = final.plus(self.path_carry.get(content))
            self.evicted_paths += 1

    def _forget_pid(self, pid: int) -> None:
        """A target that exited: its rows are final; free its map entries for the others."""
        for name in ("tl_sites", "tl_live"):
            table = self.loader.table(name)
            for k in [k for k in table if k.pid == pid]:
                with contextlib.suppress(KeyError):
                    del table[k]
        pending = self.loader.table("tl_arena_pending")  # keyed by pid << 32 | tid
        for k in [k for k in pending if (int(k.value) >> 32) == pid]:
            with contextlib.suppress(KeyError):
                del pending[k]
        self._last_count = {k: v for k, v in self._last_count.items() if k[0] != pid}
        self.carry = {k: v for k, v in self.carry.items() if k[0] != pid}
        if self.tunables.stack_depth > 0:
            paths = self.loader.table("tl_paths")
            ids = {i for i, content in self.path_ids.items() if content[0] == pid}
            for k in list(paths.keys()):
                if int(getattr(k, "value", k)) in ids:
                    with contextlib.suppress(KeyError):
                        del paths[k]
            for i in ids:
                del self.path_ids[i]
                self._path_last.pop(i, None)
            self.path_carry = {c: v for c, v in self.path_carry.items() if c[0] != pid}
            self._path_frames = {c: v for c, v in self._path_frames.items() if c[0] != pid}

    def _observe(self) -> None:
        now = time.time() - self.started
        self.history.observe(now, self.table.merged(), interval=self.interval)
        self.pid_history.observe(now, self.table, interval=self.interval)

    def merged_rows(self) -> list[Row]:
        """One row per site over every pid, with growth_bytes_per_s and growing."""
        return self.history.annotate(self.table.merged())

    def pid_rows(self) -> RetentionTable:
        """The per-pid table, its rows annotated with growth (in place)."""
        self.pid_history.annotate(self.table)
        return self.table

    def dropped(self) -> dict[str, int]:
        """What could not be tracked so far (DROPPED: counter -> meaning)."""
        return {name: self.counters.get(name, 0) for name in DROPPED}

    def _read_counters(self) -> None:
        table = self.loader.table("tl_counters")
        out = {}
        for i, name in enumerate(COUNTER_NAMES):
            try:
                out[name] = int(sum(table[table.Key(i)]))
            except (KeyError, TypeError):
                out[name] = 0
        self.counters = out
        for name, what in DROPPED.items():
            if out[name] and name not in self._warned:
                self._warned.add(name)
                self.on_note(f"{out[name]} {what} so far; counted and shown with the table")

    def _site(self, target: Target, key: tuple) -> tuple | None:
        """Row site of a tl_sites key tuple (pid, kind, code, offset, stack_id)."""
        bkey = key[1:]
        site = target.sites.get(bkey)
        if site is not None:
            return site
        _pid, kind, code, offset, stack_id = key
        if kind in (TL_SITE_PYTHON, TL_SITE_ARENA) and target.code is not None:
            info = target.code.code(code)
            if info is None:
                return None  # unreadable now: retried at the next poll
            site = (info.function, info.file, info.line(offset), False)
        else:
            site = self._native_site(target, code, stack_id, bkey)
        target.sites[bkey] = site
        return site

    def _native_site(self, target: Target, code: int, stack_id: int, bkey: tuple = ()) -> tuple:
        assert target.native is not None
        frames = [code]
        if stack_id >= 0:
            try:
                stack = list(self.loader.table("tl_stacks").walk(stack_id))
                frames += stack[1:]  # stack[0] is the allocator itself; its fp chain skips the caller
            except KeyError:
                pass
        first = None
        for n, addr in enumerate(frames):
            if not addr:
                continue
            function, path = target.native.resolve(addr - 1)  # inside the call instruction
            if first is None:
                first = (function, path)
            if not _is_wrapper(path):
                if stack_id >= 0 and bkey:
                    self._native_path(target, bkey, (function, path, 0), frames[n + 1 :])
                return (function, path, 0, True)
        function, path = first or ("[unknown]", "[unknown]")
        return (function, path, 0, True)

    def _native_path(self, target: Target, bkey: tuple, site: tuple, callers: list[int]) -> None:
        """The call path of a native site with a user stack: its callers resolved (outermost
        first, the site last), cut to the stack depth."""
        assert target.native is not None
        depth = min(self.tunables.stack_depth, MAX_FRAMES)
        if depth <= 0:
            return
        frames = [site]
        for addr in callers:
            if not addr:
                continue
            if len(frames) >= depth:
                target.native_paths[bkey] = (tuple(reversed(frames)), True)
                return
            function, path = target.native.resolve(addr - 1)
            frames.append((function, path, 0))
        target.native_paths[bkey] = (tuple(reversed(frames)), False)

    # ------------------------------------------------------------------ reporting

    def rows(self) -> list[Row]:
        return list(self.table)

    def meta(self) -> dict:
        targets = []
        for t in self.targets.values():
            targets.append(
                {
                    "pid": t.pid,
                    "exe": t.exe,
                    "libc": t.libc,
                    "python": t.python.full_version if t.python else None,
                    "python_offsets": t.python.source if t.python else None,
                    "note": t.note or None,
                    "exited": not t.alive,
                    "arena_size": t.arena_size or None,
                }
            )
        return {
            "source": "ebpf",
            "pids": self.pids,
            "sample_rate": self.tunables.sample_rate,
            "sample_interval_bytes": self.interval,
            "min_size": self.tunables.min_size,
            "started": self.started,
            "elapsed_seconds": round(time.time() - self.started, 3),
            "kernel_headers": self.loader.headers_how,
            "targets": targets,
            "counters": self.counters,
            "dropped": self.dropped(),
            "evicted_sites": self.evicted,
            "stack_depth": self.tunables.stack_depth,
            "evicted_paths": self.evicted_paths,
        }

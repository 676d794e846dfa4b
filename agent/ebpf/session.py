"""One attach session: several target pids -> one RetentionTable (rows with source "ebpf").

    session = EbpfSession([pid], Tunables(sample_rate=50, min_size=500))
    session.start()            # compile, attach (errors: AttachError, one line)
    table = session.poll()     # read the BPF maps, symbolize new sites, rebuild rows
    session.stop()             # final poll, detach every probe

A target that exits while attached keeps the rows it had (its code objects were read while it
ran, at each poll) and its probes are detached; the others go on.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from trackleak.ebpf import AttachError, procinfo
from trackleak.ebpf.loader import ENTRY_PROGRAMS, Loader, Tunables, check_privileges
from trackleak.ebpf.python import PythonInfo, UnsupportedPython, find_python, resolve_offsets, target_fields
from trackleak.symbolize.elf import NativeSymbolizer, elf_info, proc_path
from trackleak.symbolize.pycode import CodeReader, ProcessMemory
from trackleak.table import RetentionTable, Row, retention_pct

TL_TARGET_PYTHON = 1  # bpf/trackleak.h
_ZERO_DEFAULT = {"flags", "code_tag_mask", "wrap_lo", "wrap_hi"}  # tl_target fields whose "none" is 0
TL_SITE_PYTHON = 1
COUNTER_NAMES = ("sites_full", "live_full", "pending_full", "python_no_frame", "frees_matched")

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
    ):
        if not pids:
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
            except UnsupportedPython as e:
                target.note = f"{e}; attributing to native functions only."
                self.on_note(f"pid {pid}: {target.note}")
        target.native = NativeSymbolizer(pid)
        self._set_target(pid, fields)
        self.targets[pid] = target
        for point in procinfo.probe_points(pid, libc, move_free=self.move_free_probe).values():
            if point.func not in ENTRY_PROGRAMS:
                continue
            self.loader.attach(point.func, point.path, point.offset, pid)
            if point.func != "free":
                self.loader.attach(
                    point.func, point.path, point.offset - point.insn_offset, pid, retprobe=True
                )

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
        per_pid: dict[int, dict[tuple, Row]] = {pid: {} for pid, t in self.targets.items() if t.alive}
        for k, v in self.loader.table("tl_sites").items():
            target = self.targets.get(k.pid)
            if target is None or not target.alive:
                continue
            site = self._site(target, k)
            if site is None:
                continue
            row = Row(
                function=site[0],
                file=site[1],
                line=site[2],
                count=v.count,
                total_bytes=v.total_bytes,
                sample_count=v.sample_count,
                sample_total_bytes=v.sample_total_bytes,
                sample_free_bytes=v.sample_free_bytes,
                peak_single=v.peak_single,
                source="ebpf",
                pid=k.pid,
                native=site[3],
            )
            # Interim, until the BPF program keeps sampling weights: 1-in-N sampling is uniform,
            # so the sampled share kept estimates the live share.
            ret = retention_pct(v.sample_total_bytes, v.sample_free_bytes, v.sample_count)
            row.live_bytes = int(v.total_bytes * ret / 100.0) if ret is not None else 0
            row.live_count = int(v.count * ret / 100.0) if ret is not None else 0
            have = per_pid[k.pid].get(site)
            if have is None:
                per_pid[k.pid][site] = row
            else:
                have.add(row)
        for pid, rows in per_pid.items():
            self.targets[pid].rows = list(rows.values())
            self.table.replace_pid(pid, self.targets[pid].rows)
        for target in gone:
            self._end_target(target)
        self._read_counters()
        return self.table

    def _read_counters(self) -> None:
        table = self.loader.table("tl_counters")
        out = {}
        for i, name in enumerate(COUNTER_NAMES):
            try:
                out[name] = int(sum(table[table.Key(i)]))
            except (KeyError, TypeError):
                out[name] = 0
        self.counters = out

    def _site(self, target: Target, k) -> tuple | None:
        bkey = (k.kind, k.code, k.offset, k.stack_id)
        site = target.sites.get(bkey)
        if site is not None:
            return site
        if k.kind == TL_SITE_PYTHON and target.code is not None:
            info = target.code.code(k.code)
            if info is None:
                return None  # unreadable now: retried at the next poll
            site = (info.function, info.file, info.line(k.offset), False)
        else:
            site = self._native_site(target, k)
        target.sites[bkey] = site
        return site

    def _native_site(self, target: Target, k) -> tuple:
        assert target.native is not None
        frames = [k.code]
        if k.stack_id >= 0:
            try:
                stack = list(self.loader.table("tl_stacks").walk(k.stack_id))
                frames += stack[1:]  # stack[0] is the allocator itself; its fp chain skips the caller
            except KeyError:
                pass
        first = None
        for addr in frames:
            if not addr:
                continue
            function, path = target.native.resolve(addr - 1)  # inside the call instruction
            if first is None:
                first = (function, path)
            if not _is_wrapper(path):
                return (function, path, 0, True)
        function, path = first or ("[unknown]", "[unknown]")
        return (function, path, 0, True)

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
                }
            )
        return {
            "source": "ebpf",
            "pids": self.pids,
            "sample_rate": self.tunables.sample_rate,
            "min_size": self.tunables.min_size,
            "started": self.started,
            "elapsed_seconds": round(time.time() - self.started, 3),
            "kernel_headers": self.loader.headers_how,
            "targets": targets,
            "counters": self.counters,
        }

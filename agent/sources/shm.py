# SPDX-License-Identifier: MIT
"""Read the live table of a preloaded process from its shared-memory segment.

Every preloaded process maps a memfd named ``trackleak`` (``/proc/PID/maps`` shows
``/memfd:trackleak (deleted)``) holding ``struct tl_shm_header`` and then ``site_capacity``
``struct tl_site`` records (preload/include/trackleak_shm.h, mirrored in ``trackleak.layout``).
We read it through ``/proc/PID/mem`` without stopping the target.

The segment is hostile input: it may belong to any process, be half-written, or be forged. The
parser (``parse_segment``, which takes bytes so that tests can feed it anything) checks magic and
version (naming both versions when they differ), the two struct sizes, the record count against the
capacity and the bytes actually there, keeps only READY records whose names are NUL-terminated, and
decodes names with ``errors="replace"``. Everything it rejects raises ShmError with a clear message.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass, field

from .. import layout as L
from ..errors import UserError
from ..symbolize.native import native_name
from ..table import Row

# The row of the sites folded to make room (trackleak_shm.h, record 0): the names the shim writes.
OTHER_SITES = "[other sites]"
OTHER_SITES_FILE = "[idle sites folded to make room]"
MEMFD_PATHNAMES = (f"/memfd:{L.TL_SHM_MEMFD_NAME} (deleted)", f"/memfd:{L.TL_SHM_MEMFD_NAME}")

# Upper bound of what we are willing to read from one process (a forged capacity must not make us
# allocate gigabytes). 1 GiB is far above any real table (65536 sites are ~30 MiB).
MAX_SEGMENT_BYTES = 1 << 30

_F_FUNCTION = L.TlSite.function.offset
_F_FILE = L.TlSite.file.offset


class ShmError(UserError):
    """The segment is missing, unreadable or not something we can trust."""


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    perms: str
    pathname: str

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    version: int
    header_size: int
    site_size: int
    site_capacity: int
    site_count: int
    flags: int
    pid: int
    ppid: int
    start_time_ns: int
    update_time_ns: int
    sample_rate: int
    min_size: int
    py_version_hex: int
    live_samples: int
    dropped_samples: int
    dropped_sites: int
    dropped_events: int
    sample_interval: int = 0  # mean bytes between samples (trackleak.sampling); 0: every allocation
    recycled_sites: int = 0  # idle site records folded into "[other sites]" to make room

    @property
    def flag_names(self) -> list[str]:
        return L.flag_names(self.flags)

    @property
    def small_objects_advice(self) -> str | None:
        """When small objects were not tracked, what would track them (render.SMALL_*)."""
        if not self.small_objects_untracked:
            return None
        from ..render import SMALL_BEFORE_313, SMALL_NO_TRACER

        return SMALL_NO_TRACER if self.py_version_hex >= 0x030D0000 else SMALL_BEFORE_313

    @property
    def small_objects_untracked(self) -> bool:
        """A Python process whose objects under min_size were not tracked (CPython before 3.13
        without TRACKLEAK_SMALL_OBJECTS=1): a table of it says so once (render.footnotes)."""
        return bool(
            self.flags & L.TL_FLAG_PYMEM_HOOKED
            and not self.flags & (L.TL_FLAG_OBJECTS | L.TL_FLAG_SMALL_BLOCKS)
            and self.min_size > 0
        )

    @property
    def python(self) -> str | None:
        return L.py_version_str(self.py_version_hex)


@dataclass(frozen=True)
class Record:
    """One READY site record as stored (before merging), for `trackleak inspect --raw`."""

    index: int
    kind: int
    line: int
    key_addr: int
    key_aux: int
    count: int
    total_bytes: int
    sample_count: int
    sample_bytes: int
    sample_free_count: int
    sample_free_bytes: int
    peak_single: int
    function: str
    file: str
    est_count: int = 0  # sampling weights (trackleak_shm.h): live = est - est_free
    est_bytes: int = 0
    est_free_count: int = 0
    est_free_bytes: int = 0
    exhaustive: bool = False  # sample_interval 0: weights are 1 and size, est_* are not kept
    flags: int = 0  # TL_SITE_F_*

    @property
    def live_bytes(self) -> int:
        if self.exhaustive:
            return max(0, self.sample_bytes - self.sample_free_bytes)
        return max(0, self.est_bytes - self.est_free_bytes)

    @property
    def live_count(self) -> int:
        if self.exhaustive:
            return max(0, self.sample_count - self.sample_free_count)
        return max(0, (self.est_count - self.est_free_count + L.TL_COUNT_ONE // 2) // L.TL_COUNT_ONE)

    @property
    def native(self) -> bool:
        return self.kind == L.TL_KIND_NATIVE

    def to_row(self, pid: int) -> Row:
        function = self.function
        if self.kind == L.TL_KIND_OTHER:
            function = OTHER_SITES  # whatever the segment says: one fixed name for one meaning
        elif self.native and not function:
            function = f"0x{self.key_addr:x}"  # no symbol: the return address is all we have
        elif self.native:
            function = native_name(function, self.file)
        return Row(
            function=function,
            file=OTHER_SITES_FILE if self.kind == L.TL_KIND_OTHER else self.file,
            line=0 if self.kind != L.TL_KIND_PYTHON else self.line,
            count=self.count,
            total_bytes=self.total_bytes,
            sample_count=self.sample_count,
            sample_total_bytes=self.sample_bytes,
            sample_free_bytes=self.sample_free_bytes,
            peak_single=self.peak_single,
            source="preload",
            pid=pid,
            native=self.native,
            live_bytes=self.live_bytes,
            live_count=self.live_count,
            misattributed=bool(self.flags & L.TL_SITE_F_FREELIST),
        )


@dataclass
class Snapshot:
    pid: int  # the process we read (the header's pid can lag in a freshly forked child)
    header: Header
    records: list[Record] = field(default_factory=list)
    not_ready: int = 0  # records handed out but not yet published (normal, transient)
    free: int = 0  # records given back (their totals are in "[other sites]")
    bad_records: int = 0  # READY records we refused (unknown kind, names without NUL)

    @property
    def rows(self) -> list[Row]:
        """One row per site (same function, file, line, native merge)."""
        merged: dict[tuple, Row] = {}
        for rec in self.records:
            if not rec.count:
                continue  # a record that never counted (lost a race, or "other sites" still empty)
            row = rec.to_row(self.pid)
            have = merged.get(row.key)
            if have is None:
                merged[row.key] = row
            else:
                have.add(row)
        return list(merged.values())


# --------------------------------------------------------------------------- /proc/PID/maps


def parse_maps(text: str) -> list[Segment]:
    """The trackleak memfd mappings in the text of a /proc/PID/maps file."""
    found = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        addrs, perms, offset, _dev, _inode, pathname = parts
        if pathname.strip() not in MEMFD_PATHNAMES:
            continue
        try:
            lo, hi = (int(x, 16) for x in addrs.split("-", 1))
            off = int(offset, 16)
        except ValueError:
            continue
        if hi <= lo or off != 0 or not perms.startswith("r"):
            continue
        found.append(Segment(lo, hi, perms, pathname.strip()))
    return found


def find_segments(pid: int) -> list[Segment]:
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
            return parse_maps(fh.read())
    except FileNotFoundError:
        raise ShmError(f"no process with pid {pid}") from None
    except PermissionError:
        raise ShmError(f"cannot read /proc/{pid}/maps: permission denied") from None
    except ProcessLookupError:
        raise ShmError(f"process {pid} exited") from None


def find_segment(pid: int) -> Segment | None:
    """The first trackleak segment mapped by PID, or None if it has none (not preloaded)."""
    segs = find_segments(pid)
    return segs[0] if segs else None


# --------------------------------------------------------------------------- parsing


def parse_header(data: bytes, *, mapping_size: int | None = None) -> Header:
    """Validate and decode the header at the start of DATA; ShmError says what is wrong."""
    size = len(data) if mapping_size is None else mapping_size
    if len(data) < 12:
        raise ShmError(f"segment too short for a header ({len(data)} bytes)")
    magic = bytes(data[:8])
    if magic != L.TL_SHM_MAGIC:
        raise ShmError(f"not a trackleak segment (magic {magic!r}, expected {L.TL_SHM_MAGIC!r})")
    version = ctypes.c_uint32.from_buffer_copy(bytes(data[8:12])).value  # native order
    if version != L.TL_SHM_VERSION:
        raise ShmError(
            f"segment layout version {version} is not supported: this trackleak reads version "
            f"{L.TL_SHM_VERSION} (use a trackleak and a shim from the same release)"
        )
    if len(data) < L.HEADER_SIZE:
        raise ShmError(f"segment too short for a header ({len(data)} < {L.HEADER_SIZE} bytes)")
    h = L.TlShmHeader.from_buffer_copy(data[: L.HEADER_SIZE])
    if h.header_size != L.HEADER_SIZE:
        raise ShmError(f"header_size {h.header_size} in the segment, {L.HEADER_SIZE} expected")
    if h.site_size != L.SITE_SIZE:
        raise ShmError(f"site_size {h.site_size} in the segment, {L.SITE_SIZE} expected")
    need = L.HEADER_SIZE + h.site_capacity * L.SITE_SIZE
    if need > size or need > MAX_SEGMENT_BYTES:
        raise ShmError(f"site_capacity {h.site_capacity} needs {need} bytes, the mapping has {size}")
    if h.site_count > h.site_capacity:
        raise ShmError(f"site_count {h.site_count} exceeds site_capacity {h.site_capacity}")
    return Header(
        version=h.version,
        header_size=h.header_size,
        site_size=h.site_size,
        site_capacity=h.site_capacity,
        site_count=h.site_count,
        flags=h.flags,
        pid=h.pid,
        ppid=h.ppid,
        start_time_ns=h.start_time_ns,
        update_time_ns=h.update_time_ns,
        sample_rate=h.sample_rate,
        min_size=h.min_size,
        py_version_hex=h.py_version_hex,
        live_samples=h.live_samples,
        dropped_samples=h.dropped_samples,
        dropped_sites=h.dropped_sites,
        dropped_events=h.dropped_events,
        sample_interval=h.sample_interval,
        recycled_sites=h.recycled_sites,
    )


def _cstr(raw: bytes) -> str | None:
    """A NUL-terminated UTF-8 field; None when the NUL is missing (refuse, do not guess)."""
    nul = raw.find(b"\x00")
    if nul < 0:
        return None
    return raw[:nul].decode("utf-8", errors="replace")


def parse_segment(data: bytes, *, pid: int = 0, mapping_size: int | None = None) -> Snapshot:
    """Decode a whole segment (header plus at least ``site_count`` records) from bytes."""
    header = parse_header(data, mapping_size=mapping_size)
    end = L.HEADER_SIZE + header.site_count * L.SITE_SIZE
    if len(data) < end:
        raise ShmError(
            f"segment truncated: site_count {header.site_count} needs {end} bytes, got {len(data)}"
        )
    snap = Snapshot(pid=pid or header.pid, header=header)
    view = memoryview(data)
    for index in range(header.site_count):
        off = L.HEADER_SIZE + index * L.SITE_SIZE
        rec = L.TlSite.from_buffer_copy(view[off : off + L.SITE_SIZE])
        if rec.state == L.TL_SITE_FREE:
            snap.free += 1
            continue
        if rec.state not in (L.TL_SITE_READY, L.TL_SITE_RETIRED):
            snap.not_ready += 1
            continue
        function = _cstr(bytes(view[off + _F_FUNCTION : off + _F_FUNCTION + L.TL_FUNC_MAX]))
        file = _cstr(bytes(view[off + _F_FILE : off + _F_FILE + L.TL_FILE_MAX]))
        if (
            function is None
            or file is None
            or rec.kind not in (L.TL_KIND_PYTHON, L.TL_KIND_NATIVE, L.TL_KIND_OTHER)
        ):
            snap.bad_records += 1
            continue
        snap.records.append(
            Record(
                index=index,
                kind=rec.kind,
                line=rec.line,
                key_addr=rec.key_addr,
                key_aux=rec.key_aux,
                count=L.site_total(rec, "count"),
                total_bytes=L.site_total(rec, "total_bytes"),
                sample_count=L.site_total(rec, "sample_count"),
                sample_bytes=L.site_total(rec, "sample_bytes"),
                sample_free_count=L.site_total(rec, "sample_free_count"),
                sample_free_bytes=L.site_total(rec, "sample_free_bytes"),
                peak_single=rec.peak_single,
                function=function,
                file=file,
                est_count=L.site_total(rec, "est_count"),
                est_bytes=L.site_total(rec, "est_bytes"),
                est_free_count=L.site_total(rec, "est_free_count"),
                est_free_bytes=L.site_total(rec, "est_free_bytes"),
                exhaustive=header.sample_interval == 0,
                flags=rec.flags,
            )
        )
    return snap


# --------------------------------------------------------------------------- /proc/PID/mem


def _read_at(fd: int, offset: int, size: int, pid: int) -> bytes:
    chunks = []
    while size > 0:
        try:
            chunk = os.pread(fd, size, offset)
        except OSError as exc:
            if exc.errno == errno.EIO:
                raise ShmError(f"process {pid}: the segment is no longer mapped (exited or exec'd)") from None
            raise ShmError(f"process {pid}: reading its memory failed: {exc.strerror}") from None
        if not chunk:
            raise ShmError(f"process {pid}: short read of the segment")
        chunks.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_segment(pid: int, seg: Segment) -> Snapshot:
    """Read one mapping of PID through /proc/PID/mem and parse it."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ShmError(f"no process with pid {pid}") from None
    except PermissionError:
        raise ShmError(
            f"cannot read the memory of process {pid}: permission denied (run as the same user "
            "as the process, or root; see /proc/sys/kernel/yama/ptrace_scope)"
        ) from None
    try:
        head = _read_at(fd, seg.start, min(L.HEADER_SIZE, seg.size), pid)
        header = parse_header(head, mapping_size=seg.size)
        # The count can grow while we read. Keep the header we validated and only the records it
        # covers, so the buffer we parse is consistent by construction.
        body = _read_at(fd, seg.start + L.HEADER_SIZE, header.site_count * L.SITE_SIZE, pid)
    finally:
        os.close(fd)
    return parse_segment(head + body, pid=pid, mapping_size=seg.size)


def read_snapshot(pid: int) -> Snapshot:
    """The live table of PID; ShmError when it has none or it cannot be trusted."""
    segs = find_segments(pid)
    if not segs:
        raise ShmError(f"process {pid} has no trackleak segment (not started with the shim in LD_PRELOAD?)")
    errors = []
    for seg in segs:
        try:
            return read_segment(pid, seg)
        except ShmError as exc:
            errors.append(str(exc))
    raise ShmError(errors[0] if len(errors) == 1 else "; ".join(errors))


def struct_layout() -> dict[str, dict[str, int]]:
    """sizeof/offsetof of the mirror (for tests and `trackleak inspect --layout`)."""
    out: dict[str, dict[str, int]] = {}
    for cname, cls in L.STRUCTS.items():
        fields = {"sizeof": ctypes.sizeof(cls)}
        for name, *_ in cls._fields_:
            fields[name] = getattr(cls, name).offset
        out[cname] = fields
    return out

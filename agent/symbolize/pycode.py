"""Code objects read from a target's memory -> (function, file, line).

The BPF program records only a code object's address and the bytecode offset of the
allocating instruction. Here we read the code object through /proc/PID/mem (no ptrace stop,
no GIL: the target runs on), validate that it is one (its type's tp_name is "code"), read its
name, file and line table, and decode the line of that offset. Everything read is treated as
hostile (bounded sizes, checked kinds). Code objects are cached per address; read them
promptly (each poll) since a freed code object's address can be reused.

Offsets come from the per-version table (bpf/offsets/cpython.json fields, see python.py).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Mapping

MAX_STR = 4096
MAX_TABLE = 1 << 20
TP_NAME = 24  # offsetof(PyTypeObject, tp_name) with the GIL (free-threaded: the table's type.tp_name)


class MemoryError_(Exception):
    """Target memory unreadable (process gone, or address not mapped)."""


class ProcessMemory:
    def __init__(self, pid: int):
        self.pid = pid
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
            except OSError as e:
                raise MemoryError_(f"cannot open memory of {self.pid}: {e.strerror}") from None
        return self._fd

    def read(self, addr: int, size: int) -> bytes:
        if addr <= 0 or size < 0 or addr + size >= 1 << 64:
            raise MemoryError_(f"bad address {addr:#x}")
        try:
            data = os.pread(self._open(), size, addr)
        except OSError as e:
            raise MemoryError_(f"read {addr:#x}+{size}: {e.strerror}") from None
        if len(data) != size:
            raise MemoryError_(f"short read at {addr:#x}")
        return data

    def u64(self, addr: int) -> int:
        return int(struct.unpack("<Q", self.read(addr, 8))[0])

    def i64(self, addr: int) -> int:
        return int(struct.unpack("<q", self.read(addr, 8))[0])

    def i32(self, addr: int) -> int:
        return int(struct.unpack("<i", self.read(addr, 4))[0])

    def u32(self, addr: int) -> int:
        return int(struct.unpack("<I", self.read(addr, 4))[0])

    def cstr(self, addr: int, limit: int = 256) -> bytes:
        data = self.read(addr, limit)
        end = data.find(b"\0")
        return data if end < 0 else data[:end]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------- line tables (pure functions)


def lnotab_line(table: bytes, firstlineno: int, offset: int) -> int:
    """3.9 co_lnotab: (bytecode delta, signed line delta) pairs; offset in bytes."""
    line, addr = firstlineno, 0
    for i in range(0, len(table) - 1, 2):
        addr += table[i]
        if addr > offset:
            break
        delta = table[i + 1]
        line += delta - 256 if delta >= 128 else delta
    return line


def linetable310_line(table: bytes, firstlineno: int, offset: int) -> int | None:
    """3.10 co_linetable (PEP 626): (bytes covered, signed line delta or -128 = none) pairs."""
    line, start = firstlineno, 0
    for i in range(0, len(table) - 1, 2):
        sdelta, ldelta = table[i], table[i + 1]
        ldelta = ldelta - 256 if ldelta >= 128 else ldelta
        end = start + sdelta
        if ldelta != -128:
            line += ldelta
        if start <= offset < end:
            return None if ldelta == -128 else line
        start = end
    return line


def _varint(table: bytes, pos: int) -> tuple[int, int]:
    b = table[pos]
    pos += 1
    val, shift = b & 63, 6
    while b & 64:
        b = table[pos]
        pos += 1
        val |= (b & 63) << shift
        shift += 6
    return val, pos


def _svarint(table: bytes, pos: int) -> tuple[int, int]:
    uval, pos = _varint(table, pos)
    return (-(uval >> 1) if uval & 1 else uval >> 1), pos


def locations_line(table: bytes, firstlineno: int, offset: int) -> int | None:
    """3.11+ co_linetable (location table); offset in bytes (2 per code unit)."""
    target = offset // 2
    line, unit, pos = firstlineno, 0, 0
    while pos < len(table):
        first = table[pos]
        pos += 1
        if not first & 0x80:
            return None  # malformed: entries start with the high bit set
        code, length = (first >> 3) & 15, (first & 7) + 1
        here: int | None = line
        if code == 15:
            here = None
        elif code == 14:
            delta, pos = _svarint(table, pos)
            line += delta
            here = line
            _, pos = _varint(table, pos)  # end line delta
            _, pos = _varint(table, pos)  # column + 1
            _, pos = _varint(table, pos)  # end column + 1
        elif code == 13:
            delta, pos = _svarint(table, pos)
            line += delta
            here = line
        elif code >= 10:
            line += code - 10
            here = line
            pos += 2
        else:
            pos += 1
        if unit <= target < unit + length:
            return here
        unit += length
    return None


# ---------------------------------------------------------------- code objects


@dataclass(frozen=True)
class CodeInfo:
    function: str
    file: str
    firstlineno: int
    table: bytes
    table_kind: str  # "lnotab" (3.9), "linetable310", "locations" (3.11+)

    def line(self, offset: int) -> int:
        if self.table_kind == "lnotab":
            found: int | None = lnotab_line(self.table, self.firstlineno, offset)
        elif self.table_kind == "linetable310":
            found = linetable310_line(self.table, self.firstlineno, offset)
        else:
            found = locations_line(self.table, self.firstlineno, offset)
        return found if found is not None and found > 0 else self.firstlineno


class CodeReader:
    """Reads code objects of one process, given that interpreter's offsets table."""

    def __init__(self, mem: ProcessMemory, offsets: Mapping[str, int]):
        self.mem = mem
        self.o = offsets
        self._cache: dict[int, CodeInfo | None] = {}

    def read_str(self, addr: int) -> str:
        o = self.o
        state = self.mem.u32(addr + o["unicode.state"])
        length = self.mem.i64(addr + o["unicode.length"])
        if not 0 <= length <= MAX_STR:
            raise MemoryError_("implausible str length")
        kind = (state >> o["unicode.state_kind_shift"]) & ((1 << o["unicode.state_kind_bits"]) - 1)
        compact = (state >> o["unicode.state_compact_bit"]) & 1
        ascii_ = (state >> o["unicode.state_ascii_bit"]) & 1
        if not compact or kind not in (1, 2, 4):
            raise MemoryError_("not a compact str")
        start = addr + (o["unicode.asciiobject_size"] if ascii_ else o["unicode.compact_size"])
        data = self.mem.read(start, length * kind)
        codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        return data.decode(codec, "replace")

    def read_bytes(self, addr: int) -> bytes:
        size = self.mem.i64(addr + self.o["varobject.ob_size"])
        if not 0 <= size <= MAX_TABLE:
            raise MemoryError_("implausible bytes size")
        return self.mem.read(addr + self.o["bytes.ob_sval"], size)

    def type_name(self, obj: int) -> bytes:
        tp = self.mem.u64(obj + self.o["object.ob_type"])
        return self.mem.cstr(self.mem.u64(tp + self.o.get("type.tp_name", TP_NAME)), 32)

    def code(self, addr: int) -> CodeInfo | None:
        if addr in self._cache:
            return self._cache[addr]
        info = None
        try:
            info = self._read(addr)
        except (MemoryError_, UnicodeDecodeError, struct.error, IndexError):
            info = None
        if info is not None:  # failures are retried next time (the target may be mid-update)
            self._cache[addr] = info
        return info

    def _read(self, addr: int) -> CodeInfo | None:
        o = self.o
        if self.type_name(addr) != b"code":
            return None
        name_field = "code.co_qualname" if o.get("code.co_qualname", -1) >= 0 else "code.co_name"
        function = self.read_str(self.mem.u64(addr + o[name_field]))
        filename = self.read_str(self.mem.u64(addr + o["code.co_filename"]))
        firstlineno = self.mem.i32(addr + o["code.co_firstlineno"])
        if o.get("code.co_lnotab", -1) >= 0:
            table, kind = self.read_bytes(self.mem.u64(addr + o["code.co_lnotab"])), "lnotab"
        elif o.get("code.co_code_adaptive", -1) >= 0:
            table, kind = self.read_bytes(self.mem.u64(addr + o["code.co_linetable"])), "locations"
        else:
            table, kind = self.read_bytes(self.mem.u64(addr + o["code.co_linetable"])), "linetable310"
        return CodeInfo(function, filename, firstlineno, table, kind)

    def forget(self) -> None:
        self._cache.clear()

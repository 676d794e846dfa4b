"""ELF symbolization with pyelftools: addresses in a process -> (function, object file).

A process's address is turned into a file offset through /proc/PID/maps, then into the ELF
virtual address through the file's PT_LOAD segments, then into the enclosing function symbol
(.symtab when present, else .dynsym). Files are opened through /proc/PID/root so targets in
other mount namespaces resolve too. Everything is cached per (device, inode) of the file.
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection


@dataclass
class ElfInfo:
    path: str
    is_pie_or_shared: bool
    loads: list[tuple[int, int, int, int]]  # (p_offset, p_vaddr, p_filesz, p_memsz)
    starts: list[int] = field(default_factory=list)  # sorted function starts (vaddr)
    ends: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    symbols: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (vaddr, size), all kinds
    _data: bytes | None = None

    def offset_to_vaddr(self, offset: int) -> int | None:
        for p_offset, p_vaddr, p_filesz, _ in self.loads:
            if p_offset <= offset < p_offset + p_filesz:
                return p_vaddr + (offset - p_offset)
        return None

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        for p_offset, p_vaddr, p_filesz, _ in self.loads:
            if p_vaddr <= vaddr < p_vaddr + p_filesz:
                return p_offset + (vaddr - p_vaddr)
        return None

    def function_at(self, vaddr: int) -> str | None:
        i = bisect.bisect_right(self.starts, vaddr) - 1
        if i >= 0 and vaddr < self.ends[i]:
            return self.names[i]
        return None

    def symbol(self, name: str) -> tuple[int, int] | None:
        """(vaddr, size) of a symbol by name (any version suffix ignored)."""
        return self.symbols.get(name)

    def read(self, vaddr: int, size: int) -> bytes:
        """Bytes of the file image at a virtual address (initialised data only)."""
        off = self.vaddr_to_offset(vaddr)
        if off is None:
            raise ValueError(f"{self.path}: {vaddr:#x} is not in a file-backed segment")
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(size)

    def read_u32s(self, name: str, count: int) -> tuple[int, ...] | None:
        sym = self.symbol(name)
        if sym is None:
            return None
        return struct.unpack(f"<{count}I", self.read(sym[0], 4 * count))


def _load(path: str) -> ElfInfo:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [
            (seg["p_offset"], seg["p_vaddr"], seg["p_filesz"], seg["p_memsz"])
            for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD"
        ]
        info = ElfInfo(path=path, is_pie_or_shared=elf["e_type"] == "ET_DYN", loads=loads)
        funcs: dict[int, tuple[int, str]] = {}
        for secname in (".dynsym", ".symtab"):  # .symtab last: its names win (local functions)
            sec = elf.get_section_by_name(secname)
            if not isinstance(sec, SymbolTableSection):
                continue
            for sym in sec.iter_symbols():
                name, value, size = sym.name, sym["st_value"], sym["st_size"]
                if not name or value == 0:
                    continue
                if sym["st_shndx"] == "SHN_UNDEF":
                    continue
                base = name.split("@", 1)[0]
                info.symbols.setdefault(base, (value, size))
                if sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC"):
                    have = funcs.get(value)
                    # Prefer the public name over __libc_/_int_ aliases at the same address.
                    if have is None or (have[1].startswith("_") and not base.startswith("_")):
                        funcs[value] = (max(size, 1), base)
        for start in sorted(funcs):
            size, name = funcs[start]
            info.starts.append(start)
            info.ends.append(start + size)
            info.names.append(name)
    return info


@lru_cache(maxsize=256)
def _load_cached(path: str, dev_ino: tuple[int, int, int]) -> ElfInfo:
    return _load(path)


def elf_info(path: str) -> ElfInfo:
    st = os.stat(path)
    return _load_cached(path, (st.st_dev, st.st_ino, int(st.st_mtime)))


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str


def read_maps(pid: int) -> list[Mapping]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 5:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5].strip() if len(parts) == 6 else ""
            out.append(Mapping(start, end, parts[1], int(parts[2], 16), int(parts[4]), path))
    return out


def proc_path(pid: int, path: str) -> str:
    """The file as the target sees it (its mount namespace)."""
    root = f"/proc/{pid}/root"
    candidate = root + path
    return candidate if os.path.exists(candidate) else path


def load_base(pid: int, maps: list[Mapping], path: str) -> int | None:
    """Run-time address of the ELF's vaddr 0 (0 for non-PIE executables)."""
    info = elf_info(proc_path(pid, path))
    if not info.is_pie_or_shared:
        return 0
    for m in maps:
        if m.path == path:
            vaddr = info.offset_to_vaddr(m.offset)
            if vaddr is not None:
                return m.start - vaddr
    return None


class NativeSymbolizer:
    """Addresses of one process -> (function, object path). Maps re-read on a miss."""

    def __init__(self, pid: int):
        self.pid = pid
        self.maps: list[Mapping] = []
        self._starts: list[int] = []
        self._cache: dict[int, tuple[str, str]] = {}
        self.refresh()

    def refresh(self) -> None:
        try:
            self.maps = [m for m in read_maps(self.pid) if m.path.startswith("/")]
        except OSError:
            return  # process gone: keep what we had
        self.maps.sort(key=lambda m: m.start)
        self._starts = [m.start for m in self.maps]

    def mapping(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.maps[i].end:
            return self.maps[i]
        return None

    def resolve(self, addr: int) -> tuple[str, str]:
        """(function or '0x...', object path or '[unknown]')."""
        hit = self._cache.get(addr)
        if hit is not None:
            return hit
        m = self.mapping(addr)
        if m is None:
            self.refresh()
            m = self.mapping(addr)
        result = (f"{addr:#x}", "[unknown]")
        if m is not None:
            try:
                info = elf_info(proc_path(self.pid, m.path))
                vaddr = info.offset_to_vaddr(m.offset + (addr - m.start)) if info.is_pie_or_shared else addr
                name = info.function_at(vaddr) if vaddr is not None else None
                result = (name or f"{m.path}+{addr - m.start + m.offset:#x}", m.path)
            except Exception:
                result = (f"{addr:#x}", m.path)
        self._cache[addr] = result
        return result

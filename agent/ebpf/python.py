"""Which CPython a target runs, where its runtime is, and the offsets the BPF frame walk uses.

All version knowledge comes from one place (STYLE guideline 8): ``bpf/offsets/cpython.json``
(generated from the real interpreters by ``bpf/offsets/generate.py``), and for 3.13+ the
interpreter's own ``_Py_DebugOffsets`` at the start of ``_PyRuntime`` (cookie ``xdebugpy``),
whose values replace the table's for every field it describes (thread state, frame, code, str,
bytes, object and type fields: the running build's own, a free-threaded build's too). Its layout
changes between minors, so the table's ``debug.X`` fields say where each value sits in it. Not
described there, from the table: ``autoTSSkey``'s place (3.15: a thread-local, found from
``PyGILState_GetThisThreadState``'s code), str state bits, frame owner values, tag bits.

The interpreter is found from the ELF files the target maps: the one defining ``_PyRuntime``
(``libpython3.X.so`` for shared builds, the ``python`` executable itself for static ones).
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from trackleak.symbolize.elf import Mapping, elf_info, load_base, proc_path
from trackleak.symbolize.pycode import MemoryError_, ProcessMemory

OFFSETS_ENV = "TRACKLEAK_CPYTHON_OFFSETS"  # another cpython.json (e.g. for a new version)


def bpf_dir() -> Path:
    """The BPF sources: package data ``trackleak.bpf``, or ``bpf/`` of a checkout."""
    try:
        from importlib.resources import files

        path = Path(str(files("trackleak.bpf")))
        if (path / "alloc_probes.bpf.c").exists():
            return path
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "bpf"


@lru_cache(maxsize=4)
def _load_table(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def offsets_table() -> dict:
    path = os.environ.get(OFFSETS_ENV) or str(bpf_dir() / "offsets" / "cpython.json")
    try:
        return _load_table(path)
    except OSError:
        return {}
    except ValueError:
        return {}


def supported_versions() -> list[str]:
    return [k for k in offsets_table() if not k.startswith("_")]


DEBUG_COOKIE = b"xdebugpy"
# cookie, version (PY_VERSION_HEX) and free_threaded open _Py_DebugOffsets in every minor that has
# it (3.13+); the table's debug.version / debug.free_threaded say so (checked by a unit test).
DEBUG_VERSION_AT = 8
DEBUG_FREE_THREADED_AT = 16
MAX_DEBUG_VALUE = 1 << 20  # an offset or size inside a CPython struct; larger: not the layout we know


@dataclass(frozen=True)
class DebugHeader:
    version_hex: int
    free_threaded: bool

    @property
    def minor(self) -> str:
        return f"{self.version_hex >> 24}.{(self.version_hex >> 16) & 0xFF}"

    @property
    def full_version(self) -> str:
        v = self.version_hex
        return f"{v >> 24}.{(v >> 16) & 0xFF}.{(v >> 8) & 0xFF}"


def read_debug_header(mem: ProcessMemory, runtime: int) -> DebugHeader | None:
    """The interpreter's own _Py_DebugOffsets header (3.13+), or None when it has none."""
    try:
        head = mem.read(runtime, 24)
    except MemoryError_:
        return None
    if head[:8] != DEBUG_COOKIE:
        return None
    version, free_threaded = struct.unpack_from("<QQ", head, DEBUG_VERSION_AT)
    return DebugHeader(int(version), bool(free_threaded))


def apply_debug_offsets(mem: ProcessMemory, runtime: int, entry: dict[str, int]) -> dict[str, int]:
    """The table entry with each field the interpreter describes replaced by its own value.

    ``entry["debug.X"]`` is where field X sits inside _Py_DebugOffsets for that minor (-1: not
    described); a field the entry says this build lacks (-1) stays absent (the struct holds 0
    there, e.g. tlbc_index without free threading). Raises UnsupportedPython on a value no
    CPython struct could have (the struct is not the layout the table expects)."""
    out = dict(entry)
    positions = {k[len("debug.") :]: v for k, v in entry.items() if k.startswith("debug.") and v >= 0}
    try:
        raw = mem.read(runtime, max(positions.values(), default=0) + 8)
    except MemoryError_ as e:
        raise UnsupportedPython(f"cannot read the interpreter's _Py_DebugOffsets: {e}") from None
    for field_, pos in positions.items():
        if field_ not in entry or entry[field_] < 0:
            continue
        value = struct.unpack_from("<Q", raw, pos)[0]
        if value > MAX_DEBUG_VALUE:
            raise UnsupportedPython(
                f"implausible _Py_DebugOffsets ({field_} = {value} at byte {pos}): not the layout expected"
            )
        out[field_] = int(value)
    return out


@dataclass
class PythonInfo:
    pid: int
    path: str  # ELF defining _PyRuntime (libpython or the executable)
    version: str  # "3.11" (minor) — key of the offsets table
    full_version: str  # "3.11.7" when known, else the minor
    runtime: int  # address of _PyRuntime in the target
    offsets: dict[str, int] = field(default_factory=dict)
    source: str = "bpf/offsets/cpython.json"
    tss_key: int = -1
    free_threaded: bool = False
    tls_offset: int = 0  # 3.15+: thread state at fsbase + tls_offset (0: through tss_key)

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.version.split("."))


class UnsupportedPython(Exception):
    """A CPython we recognise but cannot walk (version not in the offsets table, not initialised)."""


_VERSION_IN_NAME = re.compile(r"python(\d)\.(\d+)")


def _version_from_elf(path: str, info) -> tuple[str, str] | None:
    sym = info.symbol("Py_Version")  # 3.11+: const unsigned long Py_Version = PY_VERSION_HEX
    if sym is not None:
        try:
            hexv = struct.unpack("<I", info.read(sym[0], 4))[0]
            major, minor, micro = hexv >> 24, (hexv >> 16) & 0xFF, (hexv >> 8) & 0xFF
            return f"{major}.{minor}", f"{major}.{minor}.{micro}"
        except (ValueError, struct.error, OSError):
            pass
    m = _VERSION_IN_NAME.search(os.path.basename(path))
    if m:
        minor = f"{m.group(1)}.{m.group(2)}"
        return minor, minor  # 3.9/3.10 carry no machine-readable patch version
    return None


def find_python(pid: int, maps: list[Mapping]) -> PythonInfo | None:
    """The target's CPython runtime, or None for a process without one."""
    seen = set()
    for m in maps:
        if not m.path.startswith("/") or m.path in seen:
            continue
        seen.add(m.path)
        base = os.path.basename(m.path)
        if "python" not in base.lower():
            continue
        try:
            info = elf_info(proc_path(pid, m.path))
        except Exception:
            continue
        sym = info.symbol("_PyRuntime")
        if sym is None:
            continue
        version = _version_from_elf(m.path, info)
        if version is None:
            raise UnsupportedPython(f"{m.path} defines _PyRuntime but its version is unknown")
        bias = load_base(pid, maps, m.path)
        if bias is None:
            continue
        return PythonInfo(pid, m.path, version[0], version[1], bias + sym[0])
    return None


def table_key(version: str, free_threaded: bool) -> str:
    """The offsets table's key: "3.13", or "3.13t" for a free-threaded build."""
    return version + ("t" if free_threaded else "")


def resolve_offsets(py: PythonInfo, mem: ProcessMemory) -> PythonInfo:
    """Fill py.offsets and py.tss_key, or raise UnsupportedPython with the reason.

    3.13+: the fields the interpreter describes come from its own _Py_DebugOffsets (the table
    says where they are in it); the rest (the gilstate key's place, str state bits, frame
    owner values) from the table, as for 3.9-3.12."""
    table = offsets_table()
    debug = read_debug_header(mem, py.runtime) if py.version_tuple >= (3, 13) else None
    if debug is not None and debug.minor == py.version:
        py.full_version = debug.full_version
        py.free_threaded = debug.free_threaded
    key = table_key(py.version, py.free_threaded)
    if key not in table:
        known = ", ".join(supported_versions()) or "none: bpf/offsets/cpython.json is missing"
        if py.free_threaded:
            raise UnsupportedPython(
                f"CPython {py.full_version}t (free-threaded) is not supported: this TrackLeak has "
                f"no layout for it (known: {known})"
            )
        if py.version_tuple >= (3, 13) and debug is None:
            raise UnsupportedPython(
                f"CPython {py.full_version} is not supported (known: {known}) and describes no "
                "layout itself (no _Py_DebugOffsets)"
            )
        raise UnsupportedPython(f"CPython {py.full_version} is not supported (known: {known})")
    entry = dict(table[key])
    if debug is not None and debug.minor == py.version:
        offsets = apply_debug_offsets(mem, py.runtime, entry)
        py.source = f"_Py_DebugOffsets (+ bpf/offsets/cpython.json {key})"
    else:
        offsets = entry
        py.source = f"bpf/offsets/cpython.json {key}"
    py.offsets = offsets
    if offsets["runtime.autotsskey"] < 0:
        # 3.15+: no TSS key; PyGILState_GetThisThreadState reads a C11 thread-local.
        py.tls_offset = gilstate_tls_offset(py)
        return py
    tss = py.runtime + offsets["runtime.autotsskey"]
    try:
        initialised = mem.i32(tss)
        key_ = mem.u32(tss + offsets["tss.key"])
    except MemoryError_ as e:
        raise UnsupportedPython(f"cannot read the interpreter's runtime: {e}") from None
    if not initialised:
        raise UnsupportedPython(f"CPython {py.full_version} has not initialised its thread-state key yet")
    py.tss_key = key_
    return py


# endbr64 (optional), then mov %fs:disp32,%rax: a static TLS variable of the executable.
_FS_LOAD = re.compile(rb"^(?:\xf3\x0f\x1e\xfa)?\x64\x48\x8b\x04\x25(....)", re.S)


def gilstate_tls_offset(py: PythonInfo) -> int:
    """3.15+: the thread pointer offset of the thread-local that PyGILState_GetThisThreadState
    returns, read from that function's first instruction (static TLS of a statically linked
    interpreter: ``mov %fs:OFF,%rax``). A shared libpython reaches its TLS through
    __tls_get_addr, which a BPF program cannot call: UnsupportedPython."""
    try:
        info = elf_info(proc_path(py.pid, py.path))
        sym = info.symbol("PyGILState_GetThisThreadState")
        code = info.read(sym[0], 16) if sym is not None else b""
    except Exception as e:  # unreadable file: say why
        raise UnsupportedPython(f"cannot read {py.path}: {e}") from None
    m = _FS_LOAD.match(code)
    if not m:
        raise UnsupportedPython(
            f"CPython {py.full_version} keeps the thread state in a thread-local the eBPF route cannot "
            f"find in {os.path.basename(py.path)} (a shared libpython's TLS): Python frames need the shim"
        )
    return int(struct.unpack("<i", m.group(1))[0])


def target_fields(py: PythonInfo) -> dict[str, int]:
    """struct tl_target's Python fields (bpf/trackleak.h), by name."""
    o = py.offsets
    return {
        "py_key": py.tss_key,
        "tstate_frame": o["tstate.frame"],
        "tstate_cframe": o["tstate.cframe"],
        "cframe_current_frame": o["cframe.current_frame"],
        "tstate_current_frame": o["tstate.current_frame"],
        "frame_previous": o["frame.previous"],
        "frame_code": o["frame.code"],
        "frame_lasti": o["frame.lasti"],
        "lasti_mult": 2 if o.get("frame.lasti_is_index", -1) == 1 else 1,
        "frame_instr": o["frame.instr"],
        "frame_owner": o["frame.owner"] if o.get("frame.owner_cstack", -1) >= 0 else -1,
        "owner_cstack": o.get("frame.owner_cstack", -1),
        "code_adaptive": o["code.co_code_adaptive"],
        # 3.14 tags the low bits of f_executable (_PyStackRef); earlier versions hold a plain pointer.
        "code_tag_mask": o.get("frame.code_tag_bits", 0),
        "tstate_tls": py.tls_offset,
        # 3.14t: thread-local bytecode copies (the frame's index into the code's co_tlbc array)
        "frame_tlbc_index": o.get("frame.tlbc_index", -1) if o.get("code.co_tlbc", -1) >= 0 else -1,
        "code_tlbc": o.get("code.co_tlbc", -1) if o.get("frame.tlbc_index", -1) >= 0 else -1,
    }

"""Which CPython a target runs, where its runtime is, and the offsets the BPF frame walk uses.

All version knowledge comes from one place (STYLE guideline 8): ``bpf/offsets/cpython.json``
(generated from the real interpreters by ``bpf/offsets/generate.py``), and for 3.13+ the
interpreter's own ``_Py_DebugOffsets`` at the start of ``_PyRuntime`` (cookie ``xdebugpy``),
which overrides the table's frame, code and string fields. Only ``autoTSSkey``'s offset is not
in the debug offsets; it comes from the table.

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


# _Py_DebugOffsets (3.13), as uint64 fields in declaration order (Include/internal/pycore_runtime.h).
DEBUG_OFFSETS_313 = (
    "cookie", "version", "free_threaded",
    "runtime_state.size", "runtime_state.finalizing", "runtime_state.interpreters_head",
    "interpreter_state.size", "interpreter_state.id", "interpreter_state.next",
    "interpreter_state.threads_head", "interpreter_state.gc", "interpreter_state.imports_modules",
    "interpreter_state.sysdict", "interpreter_state.builtins", "interpreter_state.ceval_gil",
    "interpreter_state.gil_runtime_state", "interpreter_state.gil_runtime_state_enabled",
    "interpreter_state.gil_runtime_state_locked", "interpreter_state.gil_runtime_state_holder",
    "thread_state.size", "thread_state.prev", "thread_state.next", "thread_state.interp",
    "thread_state.current_frame", "thread_state.thread_id", "thread_state.native_thread_id",
    "thread_state.datastack_chunk", "thread_state.status",
    "interpreter_frame.size", "interpreter_frame.previous", "interpreter_frame.executable",
    "interpreter_frame.instr_ptr", "interpreter_frame.localsplus", "interpreter_frame.owner",
    "code_object.size", "code_object.filename", "code_object.name", "code_object.qualname",
    "code_object.linetable", "code_object.firstlineno", "code_object.argcount",
    "code_object.localsplusnames", "code_object.localspluskinds", "code_object.co_code_adaptive",
    "pyobject.size", "pyobject.ob_type",
    "type_object.size", "type_object.tp_name", "type_object.tp_repr", "type_object.tp_flags",
    "tuple_object.size", "tuple_object.ob_item", "tuple_object.ob_size",
    "list_object.size", "list_object.ob_item", "list_object.ob_size",
    "dict_object.size", "dict_object.ma_keys", "dict_object.ma_values",
    "float_object.size", "float_object.ob_fval",
    "long_object.size", "long_object.lv_tag", "long_object.ob_digit",
    "bytes_object.size", "bytes_object.ob_size", "bytes_object.ob_sval",
    "unicode_object.size", "unicode_object.state", "unicode_object.length",
    "unicode_object.asciiobject_size",
    "gc.size", "gc.collecting",
)  # fmt: skip

# Table field <- debug-offsets field (3.13+).
FROM_DEBUG_OFFSETS = {
    "tstate.current_frame": "thread_state.current_frame",
    "tstate.interp": "thread_state.interp",
    "tstate.next": "thread_state.next",
    "tstate.thread_id": "thread_state.thread_id",
    "tstate.native_thread_id": "thread_state.native_thread_id",
    "frame.previous": "interpreter_frame.previous",
    "frame.code": "interpreter_frame.executable",
    "frame.instr": "interpreter_frame.instr_ptr",
    "frame.owner": "interpreter_frame.owner",
    "code.co_name": "code_object.name",
    "code.co_filename": "code_object.filename",
    "code.co_qualname": "code_object.qualname",
    "code.co_firstlineno": "code_object.firstlineno",
    "code.co_linetable": "code_object.linetable",
    "code.co_code_adaptive": "code_object.co_code_adaptive",
    "object.ob_type": "pyobject.ob_type",
    "bytes.ob_sval": "bytes_object.ob_sval",
    "unicode.state": "unicode_object.state",
    "unicode.length": "unicode_object.length",
    "unicode.asciiobject_size": "unicode_object.asciiobject_size",
    "runtime.interpreters_head": "runtime_state.interpreters_head",
    "interp.tstate_head": "interpreter_state.threads_head",
}


def read_debug_offsets(mem: ProcessMemory, runtime: int) -> dict[str, int] | None:
    """The interpreter's own _Py_DebugOffsets (3.13 layout), or None when absent/other layout."""
    try:
        head = mem.read(runtime, 16)
    except MemoryError_:
        return None
    if head[:8] != b"xdebugpy":
        return None
    version = struct.unpack_from("<Q", head, 8)[0]
    if (version >> 16) != 0x030D:  # the struct grows between minors: only 3.13's layout is known
        return None
    raw = mem.read(runtime, 8 * len(DEBUG_OFFSETS_313))
    values = struct.unpack(f"<{len(DEBUG_OFFSETS_313)}Q", raw)
    return {k: v for k, v in zip(DEBUG_OFFSETS_313, values) if k != "cookie"}


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


def resolve_offsets(py: PythonInfo, mem: ProcessMemory) -> PythonInfo:
    """Fill py.offsets and py.tss_key, or raise UnsupportedPython with the reason."""
    table = offsets_table()
    if py.version not in table:
        known = ", ".join(supported_versions()) or "none: bpf/offsets/cpython.json is missing"
        raise UnsupportedPython(f"CPython {py.full_version} is not supported (known: {known})")
    offsets = dict(table[py.version])
    debug = read_debug_offsets(mem, py.runtime)
    if debug is not None:
        if debug.get("free_threaded"):
            raise UnsupportedPython(f"CPython {py.full_version} is a free-threaded build (not supported)")
        for ours, theirs in FROM_DEBUG_OFFSETS.items():
            offsets[ours] = debug[theirs]
        vhex = debug["version"]
        py.full_version = f"{vhex >> 24}.{(vhex >> 16) & 0xFF}.{(vhex >> 8) & 0xFF}"
        py.source = "_Py_DebugOffsets (+ autoTSSkey from bpf/offsets/cpython.json)"
    py.offsets = offsets
    tss = py.runtime + offsets["runtime.autotsskey"]
    try:
        initialised = mem.i32(tss)
        key = mem.u32(tss + offsets["tss.key"])
    except MemoryError_ as e:
        raise UnsupportedPython(f"cannot read the interpreter's runtime: {e}") from None
    if not initialised:
        raise UnsupportedPython(f"CPython {py.full_version} has not initialised its thread-state key yet")
    py.tss_key = key
    return py


def target_fields(py: PythonInfo) -> dict[str, int]:
    """struct tl_target's Python fields (bpf/trackleak.h), by name."""
    o = py.offsets
    v = tuple(int(x) for x in py.version.split("."))
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
        "code_tag_mask": 3 if v >= (3, 14) else 0,
    }

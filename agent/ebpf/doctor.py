"""`trackleak doctor`: can this machine attach, and which interpreters does the agent recognise?

Each check gives a status, what was found, and the fix when something is missing. Nothing here
changes the machine (no mount, no install, no header merge).
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
from dataclasses import dataclass

from . import privileges

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def check_privileges() -> Check:
    ok, how = privileges.can_attach()
    return Check("privileges", OK, how) if ok else Check("privileges", FAIL, how, "run with sudo")


def check_bpf_syscall() -> Check:
    """Create (and close) a one-entry BPF array map: the bpf() syscall works for us."""
    libc = ctypes.CDLL(None, use_errno=True)

    class MapAttr(ctypes.Structure):
        _fields_ = [
            ("map_type", ctypes.c_uint32),
            ("key_size", ctypes.c_uint32),
            ("value_size", ctypes.c_uint32),
            ("max_entries", ctypes.c_uint32),
            ("pad", ctypes.c_uint8 * 112),
        ]

    attr = MapAttr(2, 4, 8, 1)  # BPF_MAP_TYPE_ARRAY
    fd = libc.syscall(321, 0, ctypes.byref(attr), ctypes.sizeof(attr))  # SYS_bpf, BPF_MAP_CREATE
    if fd >= 0:
        os.close(fd)
        return Check("bpf syscall", OK, "map creation works")
    err = ctypes.get_errno()
    return Check(
        "bpf syscall",
        FAIL,
        f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}",
        "run as root; check kernel.unprivileged_bpf_disabled, seccomp or a container's profile",
    )


def _tracefs_mounted() -> str | None:
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "tracefs":
                    return parts[1]
    except OSError:
        pass
    return None


def check_uprobes() -> list[Check]:
    out = []
    if os.path.exists("/sys/bus/event_source/devices/uprobe/type"):
        out.append(Check("uprobes", OK, "uprobe PMU (perf_event_open; tracefs not needed)"))
    else:
        out.append(
            Check(
                "uprobes",
                WARN,
                "no uprobe PMU: bcc falls back to tracefs uprobe_events",
                "a kernel with CONFIG_UPROBE_EVENTS (4.17+ has the PMU)",
            )
        )
    mounted = _tracefs_mounted()
    if mounted:
        out.append(Check("tracefs", OK, f"mounted at {mounted}"))
    else:
        try:
            with open("/proc/filesystems") as f:
                known = "tracefs" in f.read()
        except OSError:
            known = False
        if known and os.path.isdir("/sys/kernel/tracing"):
            out.append(
                Check(
                    "tracefs",
                    OK,
                    "not mounted, mountable (only needed without the uprobe PMU)",
                    "mount -t tracefs nodev /sys/kernel/tracing",
                )
            )
        else:
            out.append(Check("tracefs", WARN, "not available (only needed without the uprobe PMU)"))
    return out


def check_headers() -> Check:
    from trackleak.ebpf.headers import find_kernel_headers, generic_header_pairs

    found = find_kernel_headers(build=False)
    if found is None:
        return Check(
            "kernel headers",
            FAIL,
            "none for this kernel and no generic headers in /usr/src",
            "apt-get install linux-headers-$(uname -r) or linux-headers-amd64 (scripts/setup.sh does it)",
        )
    detail = found.how
    if found.path and not os.path.isdir(os.path.join(found.path, "include")) and generic_header_pairs():
        detail += "; merged on first attach"
    return Check("kernel headers", OK, detail)


def check_btf() -> Check:
    from trackleak.ebpf import btf

    try:
        off = btf.task_fsbase_offset()
    except btf.BTFError as e:
        return Check(
            "kernel BTF",
            WARN,
            f"{e}: Python frames unavailable (native attribution only)",
            "a kernel built with CONFIG_DEBUG_INFO_BTF",
        )
    return Check("kernel BTF", OK, f"task_struct.thread.fsbase at +{off} (thread pointers for Python frames)")


def check_bcc() -> Check:
    try:
        import bcc  # type: ignore[import-not-found]
    except ImportError:
        return Check(
            "bcc",
            FAIL,
            "python module bcc not importable",
            "apt-get install bpfcc-tools python3-bpfcc (a venv needs --system-site-packages)",
        )
    version = getattr(bcc, "__version__", "?")
    return Check(
        "bcc", OK, f"bcc {version} ({os.path.dirname(bcc.__file__)}); attach prototype fixed by trackleak"
    )


def check_pyelftools() -> Check:
    try:
        import elftools
    except ImportError:
        return Check("pyelftools", FAIL, "not importable", "pip install pyelftools")
    return Check("pyelftools", OK, f"pyelftools {elftools.__version__}")


ROOTS_ENV = "TRACKLEAK_ROOTS"  # scripts/roots.sh's cache of Debian roots and free-threaded builds


def candidate_interpreters() -> list[str]:
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    paths = sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python3.*")))
    paths += sorted(
        p
        for p in glob.glob("/usr/bin/python3.*") + glob.glob("/usr/local/bin/python3.*")
        if not p.endswith("-config")
    )
    # scripts/roots.sh: the Debian roots' interpreters and the free-threaded builds
    roots = os.environ.get(ROOTS_ENV, "/var/cache/trackleak/roots")
    paths += sorted(glob.glob(os.path.join(roots, "*", "usr", "bin", "python3.*")))
    paths += sorted(glob.glob(os.path.join(roots, "ft3.*", "bin", "python3.*t")))
    seen, out = set(), []
    for p in paths:
        real = os.path.realpath(p)
        if not re.search(r"python3\.\d+t?$", p):
            continue  # python3.X-config, -gdb.py, 3.Xm aliases
        if real not in seen and os.access(real, os.X_OK):
            seen.add(real)
            out.append(p)
    return out


def _file_debug_header(info) -> tuple[int, bool] | None:
    """(PY_VERSION_HEX, free_threaded) of the _Py_DebugOffsets initializer in the file, or None."""
    import struct

    sym = info.symbol("_PyRuntime")
    try:
        head = info.read(sym[0], 24) if sym is not None else b""
    except Exception:
        return None
    if head[:8] != b"xdebugpy":
        return None
    version, free_threaded = struct.unpack_from("<QQ", head, 8)
    return int(version), bool(free_threaded)


def interpreter_support(path: str, elf_path: str, info, version: tuple[str, str]) -> tuple[str, str]:
    """(status, detail): what each route does for this interpreter, and where its layout comes from."""
    from trackleak.ebpf.python import _FS_LOAD, offsets_table, supported_versions, table_key

    minor, full = version
    header = _file_debug_header(info) if tuple(int(x) for x in minor.split(".")) >= (3, 13) else None
    free_threaded = bool(header and header[1])
    key = table_key(minor, free_threaded)
    name = f"CPython {full}{'t' if free_threaded else ''}"
    table = offsets_table()
    if key not in table:
        why = "not in bpf/offsets/cpython.json" + ("" if header else " and no _Py_DebugOffsets")
        return WARN, (
            f"{name}: {why} (known: {', '.join(supported_versions())}): shim and eBPF: native rows "
            "only (fix: python3 bpf/offsets/generate.py --write with that interpreter)"
        )
    how = f"_Py_DebugOffsets + table {key}" if header else f"table {key}"
    shim = f"shim: Python lines ({how})"
    entry = table[key]
    if entry["runtime.autotsskey"] < 0:
        sym = info.symbol("PyGILState_GetThisThreadState")
        code = info.read(sym[0], 16) if sym is not None else b""
        if _FS_LOAD.match(code):
            ebpf = f"eBPF: Python lines ({how}; thread state from a static thread-local{_arenas(key)})"
        else:
            ebpf = "eBPF: native rows (thread state in a shared library's thread-local)"
    else:
        ebpf = f"eBPF: Python lines ({how}{_arenas(key)})"
    if free_threaded:
        ebpf += "; libc allocations only (Python objects come from mimalloc)"
    kind = "static" if elf_path == os.path.realpath(path) else f"shared, {os.path.basename(elf_path)}"
    status = OK if "native rows" not in ebpf else WARN
    return status, f"{name} ({kind}): {shim}; {ebpf}"


def _arenas(minor: str) -> str:
    """What the agent does with this minor's small objects (pymalloc arenas, issue 10)."""
    from trackleak.ebpf.loader import ARENAS_ENV, arenas_default
    from trackleak.ebpf.python import offsets_table

    size = int(offsets_table().get(minor, {}).get("obmalloc.arena_size", -1))
    if size <= 0 and minor.endswith("t"):
        return "; no pymalloc arenas to watch"
    if size <= 0:
        return "; small objects not seen (no arena size in bpf/offsets/cpython.json)"
    if not arenas_default():
        return f"; small objects not seen ({ARENAS_ENV}=0)"
    return f", small objects through {size >> 10} KiB arenas"


def check_interpreter(path: str) -> Check:
    """Recognise an interpreter from its files (no run): _PyRuntime, version, table entry, and
    _Py_DebugOffsets (its initializer is in the file): what each route does with it."""
    from trackleak.ebpf.python import _version_from_elf
    from trackleak.symbolize.elf import elf_info

    real = os.path.realpath(path)
    candidates = [real]
    libdir = os.path.join(os.path.dirname(os.path.dirname(real)), "lib")
    candidates += sorted(glob.glob(os.path.join(libdir, "libpython3*.so*")))
    for cand in candidates:
        try:
            info = elf_info(cand)
        except Exception:
            continue
        if info.symbol("_PyRuntime") is None:
            continue
        version = _version_from_elf(cand, info)
        kind = "shared" if cand != real else "static"
        if version is None:
            return Check(path, WARN, f"{kind}: version unknown", "native attribution only")
        if tuple(int(x) for x in version[0].split(".")[:2]) < (3, 9):
            return Check(
                path, WARN, f"CPython {version[1]} ({kind}): older than 3.9, native attribution only"
            )
        status, detail = interpreter_support(path, cand, info, version)
        return Check(path, status, detail)
    return Check(path, WARN, "no _PyRuntime symbol found (stripped, or not CPython): native attribution only")


def run_checks() -> list[Check]:
    checks = [
        check_privileges(),
        check_bpf_syscall(),
        *check_uprobes(),
        check_headers(),
        check_btf(),
        check_bcc(),
        check_pyelftools(),
    ]
    checks += [check_interpreter(p) for p in candidate_interpreters()]
    return checks


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"[{c.status:>4}] {c.name.ljust(width)}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"       {''.ljust(width)}  fix: {c.fix}")
    return "\n".join(lines)


def can_attach(checks: list[Check]) -> bool:
    return all(c.status != FAIL for c in checks)

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

OK, WARN, FAIL = "ok", "warn", "FAIL"

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _capabilities() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> Check:
    caps = _capabilities()
    has = lambda c: bool(caps >> c & 1)  # noqa: E731
    if os.geteuid() == 0 or has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        who = "root" if os.geteuid() == 0 else "capabilities"
        return Check("privileges", OK, f"{who} (CAP_BPF={has(CAP_BPF)}, CAP_PERFMON={has(CAP_PERFMON)})")
    return Check("privileges", FAIL, "not root, no CAP_BPF + CAP_PERFMON", "run with sudo")


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


def candidate_interpreters() -> list[str]:
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    paths = sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python3.*")))
    paths += sorted(
        p
        for p in glob.glob("/usr/bin/python3.*") + glob.glob("/usr/local/bin/python3.*")
        if not p.endswith("-config")
    )
    seen, out = set(), []
    for p in paths:
        real = os.path.realpath(p)
        if not re.search(r"python3\.\d+$", p):
            continue  # python3.X-config, -gdb.py, 3.Xm aliases
        if real not in seen and os.access(real, os.X_OK):
            seen.add(real)
            out.append(p)
    return out


def _arenas(minor: str) -> str:
    """What the agent does with this minor's small objects (pymalloc arenas, issue 10)."""
    from trackleak.ebpf.loader import ARENAS_ENV, arenas_default
    from trackleak.ebpf.python import offsets_table

    size = int(offsets_table().get(minor, {}).get("obmalloc.arena_size", -1))
    if size <= 0:
        return "; small objects not seen (no arena size in bpf/offsets/cpython.json)"
    if not arenas_default():
        return f"; small objects not seen ({ARENAS_ENV}=0)"
    return f", small objects through {size >> 10} KiB arenas"


def check_interpreter(path: str) -> Check:
    """Recognise an interpreter from its files (no run): _PyRuntime, version, table entry."""
    from trackleak.ebpf.python import _version_from_elf, supported_versions
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
        if version[0] in supported_versions():
            return Check(
                path,
                OK,
                f"CPython {version[1]} ({kind}, {os.path.basename(cand)}): "
                f"Python frames{_arenas(version[0])}",
            )
        if tuple(int(x) for x in version[0].split(".")[:2]) < (3, 9):
            return Check(
                path, WARN, f"CPython {version[1]} ({kind}): older than 3.9, native attribution only"
            )
        return Check(
            path,
            WARN,
            f"CPython {version[1]} ({kind}): not in bpf/offsets/cpython.json, native only",
            "python3 bpf/offsets/generate.py --write with that interpreter",
        )
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

# SPDX-License-Identifier: MIT
"""Python mirror of preload/include/trackleak_shm.h (the shared-memory layout of a preloaded process).

The C header is the one source. This mirror is checked field by field against ``sizeof`` and
``offsetof`` from a probe compiled against the header (tests/unit/test_layout.py), so a change to
the header that is not made here fails the unit tests instead of silently misreading segments.
Native byte order and alignment: the reader runs on the same machine as the target.
"""

from __future__ import annotations

import ctypes

TL_SHM_MAGIC = b"TRKLEAK\x00"  # 8 bytes, NUL included
TL_SHM_VERSION = 5
TL_COUNT_ONE = 1024  # count weights' fixed point (== trackleak.sampling.COUNT_ONE, test-checked)
TL_SHM_MEMFD_NAME = "trackleak"

TL_FUNC_MAX = 128  # bytes incl. NUL
TL_FILE_MAX = 256  # bytes incl. NUL

# header.flags
TL_FLAG_PYTHON = 0x1
TL_FLAG_PYMEM_HOOKED = 0x2
TL_FLAG_ACTIVE = 0x4
TL_FLAG_PY_UNSUPPORTED = 0x8
TL_FLAG_FORKED = 0x10
TL_FLAG_FROZEN = 0x20
TL_FLAG_OBJECTS = 0x40  # objects <= 512 bytes counted through CPython's reference tracer (3.13+)
TL_FLAG_SMALL_BLOCKS = 0x80  # pymalloc blocks under min_size counted by samples (3.9-3.12)

# site.flags
TL_SITE_F_FREELIST = 0x1  # a sample here was a freelist type's object, only the allocator watched

FLAG_NAMES = {
    TL_FLAG_PYTHON: "python",
    TL_FLAG_PYMEM_HOOKED: "pymem-hooked",
    TL_FLAG_ACTIVE: "active",
    TL_FLAG_PY_UNSUPPORTED: "python-unsupported",
    TL_FLAG_FORKED: "forked",
    TL_FLAG_FROZEN: "frozen",
    TL_FLAG_OBJECTS: "objects",
    TL_FLAG_SMALL_BLOCKS: "small-blocks",
}

# site.state
TL_SITE_EMPTY = 0
TL_SITE_RESERVED = 1
TL_SITE_READY = 2
TL_SITE_RETIRED = 3  # idle, nothing live: still counted until folded
TL_SITE_FREE = 4  # folded into the TL_KIND_OTHER record: skip

# site.kind
TL_KIND_PYTHON = 1
TL_KIND_NATIVE = 2
TL_KIND_OTHER = 3  # the totals of sites folded to make room


class TlShmHeader(ctypes.Structure):
    _fields_ = (
        ("magic", ctypes.c_char * 8),
        ("version", ctypes.c_uint32),
        ("header_size", ctypes.c_uint32),
        ("site_size", ctypes.c_uint32),
        ("site_capacity", ctypes.c_uint32),
        ("site_count", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pid", ctypes.c_int32),
        ("ppid", ctypes.c_int32),
        ("start_time_ns", ctypes.c_uint64),
        ("update_time_ns", ctypes.c_uint64),
        ("sample_rate", ctypes.c_uint32),
        ("min_size", ctypes.c_uint32),
        ("py_version_hex", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint32),
        ("live_samples", ctypes.c_uint64),
        ("dropped_samples", ctypes.c_uint64),
        ("dropped_sites", ctypes.c_uint64),
        ("dropped_events", ctypes.c_uint64),
        ("sample_interval", ctypes.c_uint64),
        ("recycled_sites", ctypes.c_uint64),
        ("frames_offset", ctypes.c_uint64),
        ("stacks_offset", ctypes.c_uint64),
        ("frame_size", ctypes.c_uint32),
        ("frame_capacity", ctypes.c_uint32),
        ("frame_count", ctypes.c_uint32),
        ("stack_size", ctypes.c_uint32),
        ("stack_capacity", ctypes.c_uint32),
        ("stack_count", ctypes.c_uint32),
        ("stack_depth", ctypes.c_uint32),
        ("reserved1", ctypes.c_uint32),
        ("dropped_stacks", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64 * 2),
    )


TL_C_ATOMIC = 0
TL_C_GIL = 1


class TlCounts(ctypes.Structure):
    """One copy of a site's counters; a site has two (atomic writers, GIL writers): add them."""

    _fields_ = (
        ("count", ctypes.c_uint64),
        ("total_bytes", ctypes.c_uint64),
        ("sample_count", ctypes.c_uint64),
        ("sample_bytes", ctypes.c_uint64),
        ("sample_free_count", ctypes.c_uint64),
        ("sample_free_bytes", ctypes.c_uint64),
        ("est_count", ctypes.c_uint64),
        ("est_bytes", ctypes.c_uint64),
        ("est_free_count", ctypes.c_uint64),
        ("est_free_bytes", ctypes.c_uint64),
    )


class TlSite(ctypes.Structure):
    _fields_ = (
        ("state", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
        ("line", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("key_addr", ctypes.c_uint64),
        ("key_aux", ctypes.c_uint64),
        ("reserved1", ctypes.c_uint64 * 4),
        ("c", TlCounts * 2),
        ("peak_single", ctypes.c_uint64),
        ("function", ctypes.c_char * TL_FUNC_MAX),
        ("file", ctypes.c_char * TL_FILE_MAX),
        ("reserved2", ctypes.c_uint64 * 3),
    )


# ---- call stacks (trackleak_shm.h: frame records, then path records, after the sites)
TL_STACK_DEPTH_MAX = 128
TL_STACK_F_TRUNCATED = 0x1  # deeper than stack_depth: the outermost frames were cut


class TlFrame(ctypes.Structure):
    """One (code object, instruction offset): its names and line, resolved once by the shim."""

    _fields_ = (
        ("state", ctypes.c_uint32),
        ("line", ctypes.c_uint32),
        ("key_addr", ctypes.c_uint64),
        ("key_aux", ctypes.c_uint64),
        ("function", ctypes.c_char * TL_FUNC_MAX),
        ("file", ctypes.c_char * TL_FILE_MAX),
    )


class TlStackCounts(ctypes.Structure):
    _fields_ = (
        ("est_count", ctypes.c_uint64),
        ("est_bytes", ctypes.c_uint64),
        ("est_free_count", ctypes.c_uint64),
        ("est_free_bytes", ctypes.c_uint64),
    )


class TlStack(ctypes.Structure):
    """The fixed part of a path record; ``header.stack_depth`` uint32 frame numbers follow
    (innermost first), the record being ``header.stack_size`` bytes."""

    _fields_ = (
        ("state", ctypes.c_uint32),
        ("depth", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("hash", ctypes.c_uint32),
        ("c", TlStackCounts * 2),
    )


def stack_record_size(depth: int) -> int:
    """Bytes of a path record keeping DEPTH frames (the shim's rule: rounded up to 8)."""
    return (ctypes.sizeof(TlStack) + 4 * depth + 7) // 8 * 8


HEADER_SIZE = ctypes.sizeof(TlShmHeader)
SITE_SIZE = ctypes.sizeof(TlSite)
FRAME_SIZE = ctypes.sizeof(TlFrame)
STACK_FIXED_SIZE = ctypes.sizeof(TlStack)

# C struct name -> mirror, for the layout test and for `trackleak inspect`.
STRUCTS = {
    "tl_shm_header": TlShmHeader,
    "tl_counts": TlCounts,
    "tl_site": TlSite,
    "tl_frame": TlFrame,
    "tl_stack_counts": TlStackCounts,
    "tl_stack": TlStack,
}


def site_total(site: TlSite, field: str) -> int:
    """A counter of a site: the sum of its two copies (see struct tl_counts)."""
    return sum(getattr(copy, field) for copy in site.c)


def flag_names(flags: int) -> list[str]:
    """Names of the set flags; unknown bits as hex so nothing is hidden."""
    names = [name for bit, name in FLAG_NAMES.items() if flags & bit]
    unknown = flags & ~sum(FLAG_NAMES)
    if unknown:
        names.append(f"0x{unknown:x}")
    return names


def py_version_str(hexversion: int) -> str | None:
    """PY_VERSION_HEX -> "3.11.7" (None for 0: no Python runtime)."""
    if not hexversion:
        return None
    major = (hexversion >> 24) & 0xFF
    minor = (hexversion >> 16) & 0xFF
    micro = (hexversion >> 8) & 0xFF
    level = (hexversion >> 4) & 0xF
    serial = hexversion & 0xF
    base = f"{major}.{minor}.{micro}"
    suffix = {0xA: "a", 0xB: "b", 0xC: "rc"}.get(level)
    return f"{base}{suffix}{serial}" if suffix else base

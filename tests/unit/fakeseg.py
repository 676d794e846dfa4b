# SPDX-License-Identifier: MIT
"""Build shared-memory segments in bytes from the ctypes mirror, as the shim would lay them out."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from trackleak import layout as L


@dataclass
class FakeSite:
    function: bytes = b"leaky"
    file: bytes = b"/app/leaky.py"
    line: int = 12
    kind: int = L.TL_KIND_PYTHON
    state: int = L.TL_SITE_READY
    count: int = 10
    total_bytes: int = 10_000
    sample_count: int = 2
    sample_bytes: int = 2_000
    sample_free_count: int = 0
    sample_free_bytes: int = 0
    peak_single: int = 1_000
    key_addr: int = 0x7F0000001000
    key_aux: int = 42
    # Sampling weights; None: consistent with the samples (the site's bytes in the sampled
    # share kept, as if each sample stood for total/sample bytes).
    est_count: int | None = None
    est_bytes: int | None = None
    est_free_count: int | None = None
    est_free_bytes: int | None = None
    flags: int = 0  # TL_SITE_F_*

    def __post_init__(self) -> None:
        scale = self.total_bytes / self.sample_bytes if self.sample_bytes else 0
        per = self.count / self.sample_count if self.sample_count else 0
        if self.est_bytes is None:
            self.est_bytes = int(self.sample_bytes * scale)
        if self.est_free_bytes is None:
            self.est_free_bytes = int(self.sample_free_bytes * scale)
        if self.est_count is None:
            self.est_count = int(self.sample_count * per * L.TL_COUNT_ONE)
        if self.est_free_count is None:
            self.est_free_count = int(self.sample_free_count * per * L.TL_COUNT_ONE)


def site_bytes(s: FakeSite) -> bytes:
    rec = L.TlSite()
    rec.state, rec.kind, rec.line = s.state, s.kind, s.line
    rec.key_addr, rec.key_aux = s.key_addr, s.key_aux
    rec.flags = s.flags
    # Split every counter across the two copies (atomic writers, GIL writers): readers must add.
    for name in (
        "count",
        "total_bytes",
        "sample_count",
        "sample_bytes",
        "sample_free_count",
        "sample_free_bytes",
        "est_count",
        "est_bytes",
        "est_free_count",
        "est_free_bytes",
    ):
        value = getattr(s, name)
        setattr(rec.c[L.TL_C_ATOMIC], name, value // 3)
        setattr(rec.c[L.TL_C_GIL], name, value - value // 3)
    rec.peak_single = s.peak_single
    raw = bytearray(bytes(rec))
    # Write names raw (ctypes would stop at NUL / refuse overlong values): tests need both.
    f_off, p_off = L.TlSite.function.offset, L.TlSite.file.offset
    raw[f_off : f_off + L.TL_FUNC_MAX] = s.function[: L.TL_FUNC_MAX].ljust(L.TL_FUNC_MAX, b"\0")
    raw[p_off : p_off + L.TL_FILE_MAX] = s.file[: L.TL_FILE_MAX].ljust(L.TL_FILE_MAX, b"\0")
    return bytes(raw)


def segment(
    sites: list[FakeSite] = (),
    *,
    capacity: int | None = None,
    site_count: int | None = None,
    magic: bytes = L.TL_SHM_MAGIC,
    version: int = L.TL_SHM_VERSION,
    header_size: int = L.HEADER_SIZE,
    site_size: int = L.SITE_SIZE,
    pid: int = 1234,
    ppid: int = 1,
    flags: int = L.TL_FLAG_PYTHON | L.TL_FLAG_ACTIVE,
    py_version_hex: int = 0x030B07F0,
    pad_to_capacity: bool = True,
) -> bytes:
    sites = list(sites)
    cap = len(sites) if capacity is None else capacity
    h = L.TlShmHeader()
    h.version, h.header_size, h.site_size = version, header_size, site_size
    h.site_capacity = cap
    h.site_count = len(sites) if site_count is None else site_count
    h.flags, h.pid, h.ppid = flags, pid, ppid
    h.start_time_ns, h.update_time_ns = 1_700_000_000 * 10**9, 0
    h.sample_rate, h.min_size, h.py_version_hex = 50, 500, py_version_hex
    h.sample_interval = 50 * 1024  # sampled mode: rows take live bytes from the est_* weights
    h.dropped_samples, h.dropped_sites, h.dropped_events = 1, 2, 3
    raw = bytearray(bytes(h))
    raw[:8] = magic[:8].ljust(8, b"\0")
    body = b"".join(site_bytes(s) for s in sites)
    if pad_to_capacity and cap > len(sites):
        body += bytes((cap - len(sites)) * ctypes.sizeof(L.TlSite))
    return bytes(raw) + body

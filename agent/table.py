"""The retention table: the one definition of a row, shared by every source and sink.

A *site* is (function, file, line); native sites have line 0, the ELF object as file and
``native=True``. Every output (terminal, JSON, Elasticsearch) uses FIELDS, in that order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

# Order matters: it is the column order of JSON rows and documents.
FIELDS = (
    "function",
    "file",
    "line",
    "count",
    "total_bytes",
    "sample_count",
    "sample_total_bytes",
    "sample_free_bytes",
    "retention_pct",
    "peak_single",
    "avg_size",
    "source",
    "pid",
    "native",
    "live_bytes",
    "live_count",
    "growth_bytes_per_s",
    "growing",
    "misattributed",
    "host",
    "command",
    "container",
)

SiteKey = tuple  # (function, file, line, native)


def retention_pct(sample_total_bytes: int, sample_free_bytes: int, sample_count: int) -> float | None:
    """The original's formula: share of sampled bytes never freed, in percent; None when nothing
    was sampled. Right when every allocation has the same chance to be sampled (the original's 1 in
    N, or exhaustive mode); ``Row.retention_pct`` is the estimate that stays right when big
    allocations are sampled more often (trackleak.sampling).

    Unknown is not healthy: a site with allocations but no samples must not print 0%.
    """
    if sample_count <= 0 or sample_total_bytes <= 0:
        return None
    kept = sample_total_bytes - min(sample_free_bytes, sample_total_bytes)
    return round(100.0 * kept / sample_total_bytes, 1)


def kept_pct(live_bytes: int, total_bytes: int, sample_count: int) -> float | None:
    """Share of the bytes allocated at a site that it still holds, in percent, from the live-bytes
    estimate: what retention means, estimated without the size bias of byte-weighted sampling.
    None when nothing was sampled (unknown is not healthy)."""
    if sample_count <= 0 or total_bytes <= 0:
        return None
    return round(100.0 * min(max(live_bytes, 0), total_bytes) / total_bytes, 1)


@dataclass
class Row:
    function: str
    file: str
    line: int = 0
    count: int = 0
    total_bytes: int = 0
    sample_count: int = 0
    sample_total_bytes: int = 0
    sample_free_bytes: int = 0
    peak_single: int = 0
    source: str = "preload"
    pid: int = 0
    native: bool = False
    # Estimated from the samples (trackleak.sampling): bytes and allocations made here and still
    # live, a block moved by realloc at its current size.
    live_bytes: int = 0
    live_count: int = 0
    # Set by a reader that watched the site over time (trackleak.history): the trend of live_bytes
    # in bytes per second over the recent window (None: not watched long enough), and whether it
    # keeps growing (the leak signal the default ranking leads with).
    growth_bytes_per_s: float | None = None
    growing: bool = False
    # The shim on CPython 3.9-3.12 in small-object mode: some objects sampled here are of a type
    # CPython recycles through a freelist (dict, tuple, list, float), and only the allocator was
    # watched, so the line that allocated the memory may not be the line that holds it (issue 10).
    misattributed: bool = False
    # Set by the host agent (trackleak.fleet): the host and the process's command line (redacted).
    host: str = ""
    command: str = ""
    # The container the process runs in (trackleak.containers: "docker:0123456789ab",
    # "root:/srv/jail", "mntns:4026532455"); "" on the host.
    container: str = ""
    # The call paths that led here (trackleak.stacks.Stack, outermost frame first, the last being
    # this site), each with its share of the counters; None: the route recorded none. Not one of
    # FIELDS (not a column, not in Elasticsearch): the JSON documents carry it as "stacks".
    stacks: list | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def key(self) -> SiteKey:
        return (self.function, self.file, self.line, self.native)

    @property
    def retention_pct(self) -> float | None:
        """Share of the bytes allocated here that are still held (the original's RET%), estimated
        from live bytes: unbiased under byte-weighted sampling, exact in exhaustive mode."""
        return kept_pct(self.live_bytes, self.total_bytes, self.sample_count)

    @property
    def avg_size(self) -> int:
        return self.total_bytes // self.count if self.count else 0

    def add(self, other: Row) -> None:
        """Merge another row of the same site into this one (counts add, peak is the max)."""
        self.count += other.count
        self.total_bytes += other.total_bytes
        self.sample_count += other.sample_count
        self.sample_total_bytes += other.sample_total_bytes
        self.sample_free_bytes += other.sample_free_bytes
        self.peak_single = max(self.peak_single, other.peak_single)
        self.live_bytes += other.live_bytes
        self.live_count += other.live_count
        if other.growth_bytes_per_s is not None:
            self.growth_bytes_per_s = (self.growth_bytes_per_s or 0.0) + other.growth_bytes_per_s
        self.growing = self.growing or other.growing
        self.misattributed = self.misattributed or other.misattributed
        if other.stacks is not None:
            from .stacks import merge  # (trackleak.stacks imports this module)

            self.stacks = merge([self.stacks or [], other.stacks])

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    def copy(self) -> Row:
        """A copy that shares nothing mutable (its stacks are copies too)."""
        out = dataclasses.replace(self)
        if self.stacks is not None:
            out.stacks = [dataclasses.replace(s) for s in self.stacks]
        return out

    def to_json(self) -> dict[str, Any]:
        """The row in a JSON document: FIELDS, and its "stacks" when it has them."""
        out = self.to_dict()
        if self.stacks is not None:
            out["stacks"] = [s.to_json() for s in self.stacks]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None, pid: int | None = None) -> Row:
        """Build a row from a JSON object, validating types (input may be hostile or stale)."""

        def _int(name: str) -> int:
            value = data.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"field {name!r} must be a non-negative integer, got {value!r}")
            return value

        def _str(name: str) -> str:
            value = data.get(name, "")
            if not isinstance(value, str):
                raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}")
            return value

        growth = data.get("growth_bytes_per_s")
        if growth is not None and (
            isinstance(growth, bool) or not isinstance(growth, (int, float)) or not math.isfinite(growth)
        ):
            raise ValueError(f"field 'growth_bytes_per_s' must be a number or null, got {growth!r}")

        row = cls(
            function=_str("function"),
            file=_str("file"),
            line=_int("line"),
            count=_int("count"),
            total_bytes=_int("total_bytes"),
            sample_count=_int("sample_count"),
            sample_total_bytes=_int("sample_total_bytes"),
            sample_free_bytes=_int("sample_free_bytes"),
            peak_single=_int("peak_single"),
            source=source if source is not None else (_str("source") or "preload"),
            pid=pid if pid is not None else _int("pid"),
            native=bool(data.get("native", False)),
            live_bytes=_int("live_bytes"),
            live_count=_int("live_count"),
            growth_bytes_per_s=None if growth is None else float(growth),
            growing=bool(data.get("growing", False)),
            misattributed=bool(data.get("misattributed", False)),
            host=_str("host"),
            command=_str("command"),
        )
        if "live_bytes" not in data:
            # Written before live bytes existed: the old estimate, total bytes x retention.
            ret = retention_pct(row.sample_total_bytes, row.sample_free_bytes, row.sample_count)
            row.live_bytes = int(row.total_bytes * ret / 100.0) if ret is not None else 0
            row.live_count = int(row.count * ret / 100.0) if ret is not None else 0
        return row


@dataclass
class RetentionTable:
    """Rows keyed by (pid, site). ``merged()`` folds pids together for display."""

    rows: dict[tuple[int, SiteKey], Row] = dataclasses.field(default_factory=dict)

    def add(self, row: Row) -> None:
        key = (row.pid, row.key)
        have = self.rows.get(key)
        if have is None:
            self.rows[key] = row.copy()
        else:
            have.add(row)

    def replace_pid(self, pid: int, rows: Iterable[Row]) -> None:
        """Swap in a fresh snapshot for one process (snapshots are cumulative)."""
        self.rows = {k: v for k, v in self.rows.items() if k[0] != pid}
        for row in rows:
            self.add(row)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows.values())

    def __len__(self) -> int:
        return len(self.rows)

    def merged(self) -> list[Row]:
        """One row per site across all processes (pid 0 when more than one contributed)."""
        out: dict[SiteKey, Row] = {}
        for row in self.rows.values():
            have = out.get(row.key)
            if have is None:
                out[row.key] = row.copy()
            else:
                if have.pid != row.pid:
                    have.pid = 0
                have.add(row)
        return list(out.values())


LEAK_RETENTION_PCT = 80.0


def estimated_kept_bytes(row: Row) -> int:
    """Bytes the site still holds: its live-bytes estimate (trackleak.sampling)."""
    return row.live_bytes


def is_leak(row: Row) -> bool:
    """The site's live bytes keep growing: the rows shown first and in red."""
    return row.growing


def leak_order(row: Row) -> tuple:
    """Sort key of the default ranking: sites whose live bytes keep growing first, the fastest
    first; then every other site by live bytes (what it holds now), then by bytes allocated.

    Retention alone would put import-time allocations kept at 100 % (a few KiB each) above a leak
    that also makes temporaries (50 %, tens of MiB), and a buffer grown by realloc (old blocks
    freed: ~0 %) out of sight; live bytes and their growth see both.
    """
    if row.growing:
        return (0, -(row.growth_bytes_per_s or 0.0), -row.live_bytes, row.function, row.file, row.line)
    return (1, -row.live_bytes, -row.total_bytes, row.function, row.file, row.line)


SORT_KEYS = ("leak", "live", "bytes", "retention")


def sorted_rows(rows: Iterable[Row], by: str = "leak") -> list[Row]:
    rows = list(rows)
    if by == "bytes":
        return sorted(rows, key=lambda r: (-r.total_bytes, r.function))
    if by == "live":
        return sorted(rows, key=lambda r: (-r.live_bytes, -r.total_bytes, r.function))
    if by == "retention":
        return sorted(rows, key=lambda r: (-(r.retention_pct or -1.0), -r.live_bytes, r.function))
    return sorted(rows, key=leak_order)

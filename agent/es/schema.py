# SPDX-License-Identifier: MIT
"""The Elasticsearch document: the one definition of its fields, their types and meanings.

One document per site per interval (per process: ``pid``), built from a ``trackleak.table.Row``
and what is known about the run (``DocMeta``). The original TrackLeak's fields keep their names,
types and meanings (its README's "Elasticsearch Integration"); the new ones follow. The index
mapping (``index_mapping``) is derived from ``FIELDS`` too: nothing else lists the fields.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..table import Row

MIB = 1024 * 1024


@dataclass(frozen=True)
class DocMeta:
    """What a document says beside the row: where and when it was read."""

    timestamp: float  # epoch seconds of the reading
    elapsed_seconds: float  # since profiling started (the run's start, the process's for an agent)
    hostname: str
    job_name: str = "unknown"  # NOMAD_JOB_NAME, the original's default
    command: str | None = None  # the command line, as one string
    python: str | None = None  # "3.11.7"; None when not known (not a Python process)


def _mb(n: int) -> float:
    return round(n / MIB, 2)


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_ms(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(frozen=True)
class Field:
    name: str
    es_type: str  # the mapping type
    value: Callable[[Row, DocMeta], Any]
    meaning: str
    original: bool = False  # in the original TrackLeak's document
    nullable: bool = False
    mapping_extra: tuple = ()  # extra mapping parameters, as (key, value) pairs


# Python types a value of each mapping type may have (checked by ``validate``).
PY_TYPES: dict[str, tuple] = {
    "keyword": (str,),
    "long": (int,),
    "double": (float, int),
    "boolean": (bool,),
    "date": (int, str),
}

TIMESTAMP_FIELD = "@timestamp"  # what a data stream requires, and Kibana's time field

FIELDS: tuple[Field, ...] = (
    # ---- the original document, same names, same types
    Field(
        "timestamp",
        "date",
        lambda r, m: int(m.timestamp),
        "when the table was read, epoch seconds (integer)",
        True,
        mapping_extra=(("format", "epoch_second"),),
    ),
    Field(
        "time",
        "date",
        lambda r, m: _iso(m.timestamp),
        "the same instant as ISO 8601, UTC (2026-02-20T14:30:00Z)",
        True,
    ),
    Field(
        "job_name",
        "keyword",
        lambda r, m: m.job_name or "unknown",
        "NOMAD_JOB_NAME of the profiled service ('unknown' when unset)",
        True,
    ),
    Field("hostname", "keyword", lambda r, m: m.hostname, "the host the process runs on", True),
    Field(
        "function",
        "keyword",
        lambda r, m: r.function,
        "the Python function of the allocation site (a native symbol for a native site)",
        True,
    ),
    Field("file", "keyword", lambda r, m: r.file, "its source file (the ELF object for a native site)", True),
    Field("line", "long", lambda r, m: r.line, "its line (0 for a native site)", True),
    Field("count", "long", lambda r, m: r.count, "allocations at the site (every one counted)", True),
    Field("total_bytes", "long", lambda r, m: r.total_bytes, "their bytes", True),
    Field("total_mb", "double", lambda r, m: _mb(r.total_bytes), "total_bytes in MiB, 2 decimals", True),
    Field("sample_count", "long", lambda r, m: r.sample_count, "allocations sampled", True),
    Field("sample_total_bytes", "long", lambda r, m: r.sample_total_bytes, "their bytes", True),
    Field("sample_total_mb", "double", lambda r, m: _mb(r.sample_total_bytes), "in MiB, 2 decimals", True),
    Field(
        "sample_free_bytes",
        "long",
        lambda r, m: r.sample_free_bytes,
        "bytes of the sampled allocations freed since",
        True,
    ),
    Field("sample_free_mb", "double", lambda r, m: _mb(r.sample_free_bytes), "in MiB, 2 decimals", True),
    Field(
        "retention_pct",
        "double",
        lambda r, m: r.retention_pct,
        "share of the bytes allocated here still held, percent (live_bytes / total_bytes); "
        "null when nothing was sampled yet (unknown is not healthy)",
        True,
        nullable=True,
    ),
    Field("peak_single", "long", lambda r, m: r.peak_single, "the largest single allocation, bytes", True),
    Field("avg_size", "long", lambda r, m: r.avg_size, "mean allocation size, bytes", True),
    Field(
        "elapsed_seconds",
        "long",
        lambda r, m: round(m.elapsed_seconds),
        "seconds since profiling started (integer)",
        True,
    ),
    # ---- new
    Field("pid", "long", lambda r, m: r.pid, "the process (0: rows of many processes added up)"),
    Field("source", "keyword", lambda r, m: r.source, "how the site was read: preload (the shim) or ebpf"),
    Field(
        "command",
        "keyword",
        lambda r, m: m.command,
        "the profiled command line",
        nullable=True,
        mapping_extra=(("ignore_above", 4096),),
    ),
    Field("python", "keyword", lambda r, m: m.python, "the CPython version (3.11.7)", nullable=True),
    Field(
        "container",
        "keyword",
        lambda r, m: r.container or None,
        "the container of the process (docker:0123456789ab, root:/srv/jail, mntns:4026532455); "
        "null on the host",
        nullable=True,
    ),
    Field(
        "live_bytes",
        "long",
        lambda r, m: r.live_bytes,
        "estimated bytes allocated here and not freed (a realloc'd block at its current size)",
    ),
    Field("live_count", "long", lambda r, m: r.live_count, "estimated allocations still live"),
    Field(
        "growth_bytes_per_s",
        "double",
        lambda r, m: None if r.growth_bytes_per_s is None else float(r.growth_bytes_per_s),
        "trend of live_bytes over the recent two minutes, bytes/s (null: not watched long enough)",
        nullable=True,
    ),
    Field("growing", "boolean", lambda r, m: bool(r.growing), "live bytes keep growing: the leak signal"),
    Field(
        "misattributed",
        "boolean",
        lambda r, m: bool(r.misattributed),
        "objects of a freelist type were sampled here while only the allocator was watched (CPython "
        "3.9-3.12 small-object mode): the line that holds them may be another",
    ),
    Field(
        TIMESTAMP_FIELD,
        "date",
        lambda r, m: _iso_ms(m.timestamp),
        "the reading's instant, ISO 8601 UTC with milliseconds: the time field of data streams "
        "(trackleak es setup) and of the Kibana data view",
    ),
)

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
ORIGINAL_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.original)
_BY_NAME = {f.name: f for f in FIELDS}


def document(row: Row, meta: DocMeta) -> dict[str, Any]:
    """The document of one row, fields in FIELDS order."""
    doc = {f.name: f.value(row, meta) for f in FIELDS}
    ret = doc["retention_pct"]
    if ret is not None and not math.isfinite(ret):
        doc["retention_pct"] = None
    return doc


def documents(rows: Iterable[Row], meta: DocMeta) -> list[dict[str, Any]]:
    return [document(row, meta) for row in rows]


def index_mapping() -> dict[str, Any]:
    """The index's mappings: keywords for names, numbers as numbers, dates as dates. Strict: a
    field that is not in FIELDS is refused (the schema cannot drift silently)."""
    props = {}
    for f in FIELDS:
        prop: dict[str, Any] = {"type": f.es_type}
        prop.update(dict(f.mapping_extra))
        props[f.name] = prop
    return {"dynamic": "strict", "properties": props}


def validate(doc: Mapping[str, Any]) -> list[str]:
    """What is wrong with DOC against FIELDS ([] when nothing): names, order, Python types."""
    problems = []
    if tuple(doc) != FIELD_NAMES:
        problems.append(f"fields {list(doc)} are not {list(FIELD_NAMES)}")
    for name, value in doc.items():
        f = _BY_NAME.get(name)
        if f is None:
            continue
        if value is None:
            if not f.nullable:
                problems.append(f"{name} is null")
            continue
        ok = PY_TYPES[f.es_type]
        if (f.es_type != "boolean" and isinstance(value, bool)) or not isinstance(value, ok):
            problems.append(f"{name}={value!r} is not a {f.es_type}")
    return problems


def add_missing_fields(client, index: str) -> list[str]:
    """Add to the mapping of INDEX (an index, alias or data stream: every backing index) the
    fields of the schema it lacks: documents of a newer TrackLeak must not be refused by the
    strict mapping an older one made. The names added; ApiError from the client as it is."""
    current = client.indices.get_mapping(index=index)
    have: set[str] | None = None
    for value in dict(current).values():
        props = set((value.get("mappings") or {}).get("properties") or {})
        have = props if have is None else have & props  # every backing index must have them
    if have is None:
        return []
    missing = [f.name for f in FIELDS if f.name not in have]
    if missing:
        props = index_mapping()["properties"]
        client.indices.put_mapping(index=index, properties={n: props[n] for n in missing})
    return missing

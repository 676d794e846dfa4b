# SPDX-License-Identifier: MIT
"""The one definition of the Elasticsearch document: the original's fields, names, types and
meanings; the new ones; the mapping derived from the same list."""

from __future__ import annotations

import json

from trackleak.es.schema import (
    FIELD_NAMES,
    FIELDS,
    ORIGINAL_FIELDS,
    DocMeta,
    document,
    index_mapping,
    validate,
)
from trackleak.table import Row

# The original README's example document, verbatim (its names, order and value types).
ORIGINAL_EXAMPLE = {
    "timestamp": 1771567369,
    "time": "2026-02-20T14:30:00",
    "job_name": "my-service",
    "hostname": "prod-worker-01",
    "function": "leaky_cache",
    "file": "app.py",
    "line": 38,
    "count": 10000,
    "total_bytes": 5548032,
    "total_mb": 5.29,
    "sample_count": 200,
    "sample_total_bytes": 104857,
    "sample_total_mb": 0.10,
    "sample_free_bytes": 0,
    "sample_free_mb": 0.00,
    "retention_pct": 100.0,
    "peak_single": 1024,
    "avg_size": 554,
    "elapsed_seconds": 300,
}
NEW = (
    "pid",
    "source",
    "command",
    "python",
    "container",
    "live_bytes",
    "live_count",
    "growth_bytes_per_s",
    "growing",
    "misattributed",
    "@timestamp",
)


def example_doc(**row_changes):
    row = Row(
        "leaky_cache",
        "app.py",
        38,
        count=10000,
        total_bytes=5548032,
        sample_count=200,
        sample_total_bytes=104857,
        sample_free_bytes=0,
        peak_single=1024,
        pid=4242,
        live_bytes=5548032,
        live_count=10000,
        growth_bytes_per_s=18493.4,
        growing=True,
    )
    for k, v in row_changes.items():
        setattr(row, k, v)
    meta = DocMeta(
        timestamp=1771597800.7,
        elapsed_seconds=300.2,
        hostname="prod-worker-01",
        job_name="my-service",
        command="python3.11 app.py",
        python="3.11.7",
    )
    return document(row, meta)


def test_original_fields_in_the_original_order_then_the_new_ones():
    assert tuple(ORIGINAL_EXAMPLE) == ORIGINAL_FIELDS
    assert FIELD_NAMES == ORIGINAL_FIELDS + NEW


def test_values_match_the_originals_example():
    doc = example_doc()
    for name, value in ORIGINAL_EXAMPLE.items():
        if name in ("timestamp", "time"):
            continue
        assert doc[name] == value and type(doc[name]) is type(value), name
    assert doc["timestamp"] == 1771597800  # integer epoch seconds
    assert doc["time"] == "2026-02-20T14:30:00Z"  # the same instant, ISO 8601 UTC
    assert doc["elapsed_seconds"] == 300
    # the data streams' time field (trackleak es setup), the same instant with milliseconds
    assert doc["@timestamp"] == "2026-02-20T14:30:00.700Z"
    assert (doc["pid"], doc["source"], doc["command"], doc["python"]) == (
        4242,
        "preload",
        "python3.11 app.py",
        "3.11.7",
    )
    assert (doc["live_bytes"], doc["live_count"], doc["growth_bytes_per_s"], doc["growing"]) == (
        5548032,
        10000,
        18493.4,
        True,
    )
    assert validate(doc) == []
    json.dumps(doc, allow_nan=False)


def test_unknown_is_null_not_zero():
    doc = example_doc(sample_count=0, sample_total_bytes=0, live_bytes=0, growth_bytes_per_s=None)
    assert doc["retention_pct"] is None and doc["growth_bytes_per_s"] is None
    assert validate(doc) == []


def test_retention_is_live_over_total():
    doc = example_doc(live_bytes=5548032 // 2)
    assert doc["retention_pct"] == 50.0


def test_mapping_comes_from_the_same_list():
    mapping = index_mapping()
    assert mapping["dynamic"] == "strict"
    props = mapping["properties"]
    assert list(props) == list(FIELD_NAMES)
    assert {f.name: props[f.name]["type"] for f in FIELDS} == {f.name: f.es_type for f in FIELDS}
    for name in ("job_name", "hostname", "function", "file", "source", "python", "command"):
        assert props[name]["type"] == "keyword"
    for name in (
        "line",
        "count",
        "total_bytes",
        "sample_count",
        "peak_single",
        "avg_size",
        "pid",
        "live_bytes",
    ):
        assert props[name]["type"] == "long"
    for name in ("total_mb", "sample_total_mb", "retention_pct", "growth_bytes_per_s"):
        assert props[name]["type"] == "double"
    assert props["timestamp"] == {"type": "date", "format": "epoch_second"}
    assert props["time"] == {"type": "date"}
    assert props["growing"] == {"type": "boolean"}


def test_validate_catches_drift():
    doc = example_doc()
    doc["line"] = "38"
    assert any("line" in p for p in validate(doc))
    doc = example_doc()
    doc["extra"] = 1
    assert validate(doc)
    doc = example_doc()
    doc["growing"] = 1
    assert validate(doc)

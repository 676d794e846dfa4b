# SPDX-License-Identifier: MIT
"""`trackleak run` ships into a real Elasticsearch with the original TrackLeak's variables, and the
original README's query finds the leak."""

from __future__ import annotations

import socket

from es_support import es, es_index, es_url, search_all, wait_count  # noqa: F401
from helpers import FIXTURES, run_trackleak

from trackleak.es.schema import FIELD_NAMES, FIELDS, ORIGINAL_FIELDS, index_mapping, validate

APP = FIXTURES / "es_leaky.py"

# The original README's query ("Top leaking functions (retention > 80%)"), verbatim.
ORIGINAL_QUERY = {
    "query": {"range": {"retention_pct": {"gte": 80}}},
    "sort": [{"total_mb": "desc"}],
    "size": 10,
}


def _run(tmp_path, env, seconds="3"):
    result = run_trackleak("run", "-q", str(APP), seconds, cwd=tmp_path, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "done iterations=" in result.stdout, result.stdout
    return result


def test_leaking_app_found_by_the_original_query(tmp_path, es, es_url, es_index):  # noqa: F811
    env = {
        "ENABLE_ELASTICSEARCH": "1",
        "ELASTICSEARCH_URL": f"{es_url}/_bulk",  # the original's form
        "ELASTICSEARCH_INDEX": es_index,
        "NOMAD_JOB_NAME": "billing-api",
        "TRACKLEAK_DUMP_INTERVAL": "1",
    }
    result = _run(tmp_path, env)
    assert "elasticsearch: shipping every 1 s" in result.stderr
    assert "shipped to" in result.stderr and "dropped" not in result.stderr, result.stderr
    assert wait_count(es, es_index, 1) > 0

    es.indices.refresh(index=es_index)
    hits = es.search(index=es_index, body=ORIGINAL_QUERY)["hits"]["hits"]
    assert hits, "the original query found nothing"
    top = hits[0]["_source"]
    assert top["function"] == "leaky_list_append", [h["_source"]["function"] for h in hits]
    assert top["file"].endswith("es_leaky.py")
    assert top["retention_pct"] >= 80
    assert top["total_mb"] > 2
    assert top["job_name"] == "billing-api"
    assert top["hostname"] == socket.gethostname()
    assert top["source"] == "preload" and top["pid"] > 0
    assert top["python"] and top["python"].count(".") == 2
    assert "es_leaky.py" in top["command"]

    docs = search_all(es, es_index, query={"term": {"function": "leaky_list_append"}})
    # one document per site per interval, and the final table: several readings of the leak,
    # growing, the last one at about the run's length
    elapsed = sorted(d["elapsed_seconds"] for d in docs)
    assert len(set(d["timestamp"] for d in docs)) >= 2, elapsed
    assert 2 <= elapsed[-1] <= 10, elapsed
    assert docs and all(d["live_bytes"] > 0 for d in docs)
    assert any(d["growing"] for d in docs) or any((d["growth_bytes_per_s"] or 0) > 0 for d in docs)
    healthy = search_all(es, es_index, query={"term": {"function": "healthy_allocation"}})
    assert healthy and max(d["retention_pct"] or 0 for d in healthy) < 20


def test_documents_and_mapping_have_the_original_fields_and_types(tmp_path, es, es_url, es_index):  # noqa: F811
    env = {
        "ENABLE_ELASTICSEARCH": "true",
        "ELASTICSEARCH_URL": es_url,  # a plain base URL works too
        "ELASTICSEARCH_INDEX": es_index,
    }
    _run(tmp_path, env, seconds="1")
    docs = search_all(es, es_index)
    assert docs
    for doc in docs:
        assert tuple(doc) == FIELD_NAMES
        assert validate(doc) == [], doc
        assert doc["job_name"] == "unknown"  # NOMAD_JOB_NAME unset: the original's default
        assert isinstance(doc["timestamp"], int) and isinstance(doc["elapsed_seconds"], int)
        assert doc["time"].endswith("Z") and "T" in doc["time"]
        assert doc["total_mb"] == round(doc["total_bytes"] / 1048576, 2)
    assert set(ORIGINAL_FIELDS) == {
        "timestamp",
        "time",
        "job_name",
        "hostname",
        "function",
        "file",
        "line",
        "count",
        "total_bytes",
        "total_mb",
        "sample_count",
        "sample_total_bytes",
        "sample_total_mb",
        "sample_free_bytes",
        "sample_free_mb",
        "retention_pct",
        "peak_single",
        "avg_size",
        "elapsed_seconds",
    }
    # the index the shipper made has the schema's mapping: keywords, numbers, dates
    props = es.indices.get_mapping(index=es_index)[es_index]["mappings"]["properties"]
    assert {name: p["type"] for name, p in props.items()} == {f.name: f.es_type for f in FIELDS}
    assert props == index_mapping()["properties"]
    assert props["function"]["type"] == "keyword" and props["retention_pct"]["type"] == "double"
    assert props["timestamp"] == {"type": "date", "format": "epoch_second"}
    # a date range on the timestamps works (Kibana's time filter)
    n = es.count(index=es_index, query={"range": {"timestamp": {"gte": "now-1h"}}})["count"]
    assert n == len(docs)


def test_disabled_ships_nothing(tmp_path, es, es_url, es_index):  # noqa: F811
    env = {"ENABLE_ELASTICSEARCH": "0", "ELASTICSEARCH_URL": es_url, "ELASTICSEARCH_INDEX": es_index}
    result = _run(tmp_path, env, seconds="0.5")
    assert "elasticsearch" not in result.stderr
    assert not es.indices.exists(index=es_index)


def test_bad_setting_stops_before_the_run(tmp_path):
    env = {"ENABLE_ELASTICSEARCH": "1", "ELASTICSEARCH_URL": "ftp://x/_bulk"}
    result = run_trackleak("run", "-q", str(APP), "0.2", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "ELASTICSEARCH_URL must start with http:// or https://" in result.stderr
    assert "done iterations" not in result.stdout

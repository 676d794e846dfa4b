# SPDX-License-Identifier: MIT
"""The Kibana files in deploy/kibana/: generated from agent/es/dashboard.py (one source), well-formed
saved objects whose references resolve, panels whose Kibana aggregations and Elasticsearch queries
say the same thing on fields the schema has. (Their queries run on the real server in
tests/integration/test_es_setup.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from trackleak.es import dashboard as esdash
from trackleak.es.schema import FIELDS, TIMESTAMP_FIELD
from trackleak.es.setup import index_pattern, template_body

KIBANA = Path(__file__).resolve().parents[2] / "deploy" / "kibana"
TYPES = {f.name: f.es_type for f in FIELDS}
KNOWN_TYPES = {"index-pattern", "visualization", "search", "dashboard"}


def load() -> list[dict]:
    return [json.loads(line) for line in (KIBANA / esdash.DASHBOARD_FILE).read_text().splitlines() if line]


def test_committed_files_are_the_generated_ones():
    for name, text in esdash.files().items():
        assert (KIBANA / name).read_text() == text, f"{name} is stale: run trackleak es dashboard"


def test_saved_objects_are_well_formed_and_references_resolve():
    objects = load()
    ids = [(o["type"], o["id"]) for o in objects]
    assert len(ids) == len(set(ids))
    assert {o["type"] for o in objects} == KNOWN_TYPES
    for o in objects:
        assert set(o) == {"type", "id", "attributes", "references"}
        assert o["attributes"]["title"]
        for ref in o["references"]:
            assert set(ref) == {"name", "type", "id"} and (ref["type"], ref["id"]) in ids
        meta = o["attributes"].get("kibanaSavedObjectMeta")
        if meta:
            source = json.loads(meta["searchSourceJSON"])
            if "indexRefName" in source:
                assert source["indexRefName"] in {r["name"] for r in o["references"]}
    (dash,) = [o for o in objects if o["type"] == "dashboard"]
    panels = json.loads(dash["attributes"]["panelsJSON"])
    names = {r["name"] for r in dash["references"]}
    assert len(panels) == len(esdash.PANELS) + 1
    for p in panels:
        assert f"{p['panelIndex']}:{p['panelRefName']}" in names
    assert {r["id"] for r in dash["references"]} == {p.id for p in esdash.PANELS} | {
        esdash.ORIGINAL_SEARCH_ID
    }


def test_data_view_matches_the_template():
    (view,) = [o for o in load() if o["type"] == "index-pattern"]
    assert view["attributes"]["title"] == index_pattern("trackleak-memory")
    assert (
        view["attributes"]["title"] in template_body("trackleak-memory", data_stream=True)["index_patterns"]
    )
    assert view["attributes"]["timeFieldName"] == TIMESTAMP_FIELD and TYPES[TIMESTAMP_FIELD] == "date"


def test_each_visualization_and_its_query_say_the_same():
    objects = {o["id"]: o for o in load()}
    for panel in esdash.PANELS:
        vis = json.loads(objects[panel.id]["attributes"]["visState"])
        assert vis["type"] == panel.kind
        source = json.loads(objects[panel.id]["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        assert source["query"] == {"query": panel.kql(), "language": "kuery"}
        metrics = [a["params"]["field"] for a in vis["aggs"] if a["schema"] == "metric"]
        terms = [a["params"]["field"] for a in vis["aggs"] if a["type"] == "terms"]
        assert metrics == [m.field for m in panel.metrics] and terms == [s.field for s in panel.rows]
        for field in metrics:
            assert TYPES[field] in ("long", "double")
        for field in terms:
            assert TYPES[field] in ("keyword", "boolean")  # aggregatable, no text
        body = esdash.es_query(panel)
        conds = body["query"]["bool"]["filter"]
        assert conds[0] == esdash.time_filter() and conds[1:] == [c.dsl() for c in panel.where]
        aggs, seen = body["aggs"], []
        if panel.interval:
            hist = next(a for a in vis["aggs"] if a["type"] == "date_histogram")["params"]
            assert aggs["t"]["date_histogram"]["field"] == hist["field"] == TIMESTAMP_FIELD
            assert aggs["t"]["date_histogram"]["fixed_interval"] == hist["interval"]
            aggs = aggs["t"]["aggs"]
        depth = 0
        while f"b{depth}" in aggs:
            seen.append(aggs[f"b{depth}"]["terms"]["field"])
            assert aggs[f"b{depth}"]["terms"]["order"] == {"m0": "desc"}
            aggs = aggs[f"b{depth}"]["aggs"]
            depth += 1
        assert seen == terms


def test_original_query_and_alert():
    queries = json.loads((KIBANA / esdash.QUERIES_FILE).read_text())
    original = queries[esdash.ORIGINAL_SEARCH_ID]["body"]
    assert {"range": {"retention_pct": {"gte": 80}}} in original["query"]["bool"]["filter"]
    assert original["sort"] == [{"total_mb": "desc"}]  # the original README's query
    rule = json.loads((KIBANA / esdash.ALERT_FILE).read_text())
    assert rule["rule_type_id"] == ".es-query" and rule["params"]["timeField"] == TIMESTAMP_FIELD
    assert rule["params"]["index"] == ["trackleak-memory*"]
    es_query = json.loads(rule["params"]["esQuery"])
    assert (
        es_query["query"]["bool"]["filter"]
        == queries["trackleak-alert"]["body"]["query"]["bool"]["filter"][1:]
    )


def test_other_index():
    objects = esdash.saved_objects("billing-memory")
    assert objects[0]["attributes"]["title"] == "billing-memory*"
    assert esdash.alert_rule("billing-memory")["params"]["index"] == ["billing-memory*"]

# SPDX-License-Identifier: MIT
"""The Kibana dashboard, its panels' Elasticsearch queries and the example alert: one definition.

Each panel (``PANELS``) is declared once — its conditions, its rows (terms on ``job_name``,
``hostname``, ``function``), its metrics, its time buckets — and rendered twice:

- ``saved_objects(index)``: Kibana saved objects (ndjson, import with Stack Management → Saved
  objects, or ``POST /api/saved_objects/_import``): a data view on ``<index>*`` with
  ``@timestamp`` as its time field, one aggregation-based visualization per panel (legacy
  ``table`` / ``line`` types, which Kibana 8 migrates on import), a saved search with the original
  README's query, and the dashboard that places them (last 24 hours);
- ``es_query(panel)``: the same panel as a plain ``_search`` body (the conditions in
  ``bool.filter``, the dashboard's time range on ``@timestamp``, nested aggregations in Kibana's
  order): what Kibana asks Elasticsearch, run against the real server by
  tests/integration/test_es_setup.py.

``alert_rule(index)`` is a Kibana "Elasticsearch query" rule (``POST /api/alerting/rule``):
a function whose live bytes keep growing and are above 50 MiB; ``alert_query()`` is the search it
runs. ``write_files(directory, index)`` writes deploy/kibana/ (the committed files are this
module's output for the default index; a unit test keeps them equal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DEFAULT_INDEX
from .schema import FIELDS, TIMESTAMP_FIELD
from .setup import index_pattern

TIME_FROM, TIME_TO = "now-24h", "now"
DASHBOARD_ID = "trackleak-dashboard"
ORIGINAL_SEARCH_ID = "trackleak-original-query"
DASHBOARD_FILE = "trackleak-dashboard.ndjson"
QUERIES_FILE = "trackleak-queries.json"
ALERT_FILE = "trackleak-alert-rule.json"
INDEX_REF = "kibanaSavedObjectMeta.searchSourceJSON.index"
_TYPES = {f.name: f.es_type for f in FIELDS}


@dataclass(frozen=True)
class Cond:
    """One condition, said in KQL (Kibana) and in the query DSL (Elasticsearch)."""

    field: str
    op: str  # "gte" or "is"
    value: Any

    def kql(self) -> str:
        if self.op == "gte":
            return f"{self.field} >= {self.value}"
        value = json.dumps(self.value)  # true / false / "text"
        return f"{self.field} : {value}"

    def dsl(self) -> dict[str, Any]:
        if self.op == "gte":
            return {"range": {self.field: {"gte": self.value}}}
        return {"term": {self.field: self.value}}


@dataclass(frozen=True)
class Split:
    field: str
    label: str
    size: int = 10


@dataclass(frozen=True)
class Metric:
    agg: str  # "max"
    field: str
    label: str


@dataclass(frozen=True)
class Panel:
    id: str  # the saved object's id, and the key in trackleak-queries.json
    title: str
    description: str
    kind: str  # "table" or "line"
    where: tuple[Cond, ...]
    rows: tuple[Split, ...]  # table rows / line series, outermost first; ordered by metrics[0]
    metrics: tuple[Metric, ...]
    interval: str | None = None  # line: the date histogram's fixed interval on @timestamp

    def kql(self) -> str:
        return " and ".join(c.kql() for c in self.where)


BY_SERVICE_HOST = (Split("job_name", "service (job_name)"), Split("hostname", "host"))

RETAINING = Panel(
    "trackleak-top-retaining",
    "TrackLeak: top retaining functions",
    "Sites keeping 80 % or more of what they allocated (the original README's query: "
    "retention_pct >= 80, by total_mb), per service and host",
    "table",
    (Cond("retention_pct", "gte", 80),),
    (*BY_SERVICE_HOST, Split("function", "function", 20), Split("file", "file", 3)),
    (
        Metric("max", "total_mb", "allocated MiB"),
        Metric("max", "retention_pct", "retention %"),
        Metric("max", "live_bytes", "live bytes"),
    ),
)
GROWING = Panel(
    "trackleak-top-growing",
    "TrackLeak: top growing functions",
    "Sites whose live bytes keep growing (growing: true), fastest first, per service and host",
    "table",
    (Cond("growing", "is", True),),
    (*BY_SERVICE_HOST, Split("function", "function", 20), Split("file", "file", 3)),
    (
        Metric("max", "growth_bytes_per_s", "growth bytes/s"),
        Metric("max", "live_bytes", "live bytes"),
    ),
)
LIVE = Panel(
    "trackleak-live-bytes",
    "TrackLeak: live bytes over time per function",
    "Live bytes of the largest sites, one line per service, host and function (5-minute buckets: "
    "the shipping interval)",
    "line",
    (),
    (Split("job_name", "service", 5), Split("hostname", "host", 5), Split("function", "function", 5)),
    (Metric("max", "live_bytes", "live bytes"),),
    interval="5m",
)
PANELS: tuple[Panel, ...] = (RETAINING, GROWING, LIVE)

# The original README's query, as a Kibana saved search (a document list) and as a search body.
ORIGINAL_COND = Cond("retention_pct", "gte", 80)
ORIGINAL_SORT = ("total_mb", "desc")
ORIGINAL_COLUMNS = (
    "job_name",
    "hostname",
    "function",
    "file",
    "line",
    "total_mb",
    "retention_pct",
    "live_bytes",
)

ALERT_MIN_LIVE_BYTES = 50 * 1024 * 1024
ALERT_WINDOW_MINUTES = 15
ALERT_CONDS = (Cond("growing", "is", True), Cond("live_bytes", "gte", ALERT_MIN_LIVE_BYTES))


def _check_fields() -> None:
    """Every field a panel names is in the schema (and aggregatable: no text fields there)."""
    names = [c.field for p in PANELS for c in p.where] + [s.field for p in PANELS for s in p.rows]
    names += [m.field for p in PANELS for m in p.metrics] + [c.field for c in ALERT_CONDS]
    names += [ORIGINAL_COND.field, ORIGINAL_SORT[0], *ORIGINAL_COLUMNS]
    unknown = sorted({n for n in names if n not in _TYPES})
    if unknown:
        raise ValueError(f"panels name fields the schema does not have: {unknown}")


_check_fields()


# --------------------------------------------------------------------------- Elasticsearch


def time_filter(time_from: str = TIME_FROM, time_to: str = TIME_TO) -> dict[str, Any]:
    return {"range": {TIMESTAMP_FIELD: {"gte": time_from, "lte": time_to}}}


def _metric_aggs(panel: Panel) -> dict[str, Any]:
    return {f"m{i}": {m.agg: {"field": m.field}} for i, m in enumerate(panel.metrics)}


def es_query(panel: Panel, time_from: str = TIME_FROM, time_to: str = TIME_TO) -> dict[str, Any]:
    """The ``_search`` body of PANEL: what Kibana sends for it (aggregations nested in its order,
    each terms level ordered by the first metric, descending)."""
    inner: dict[str, Any] = _metric_aggs(panel)
    for depth in range(len(panel.rows) - 1, -1, -1):
        split = panel.rows[depth]
        inner = {
            f"b{depth}": {
                "terms": {"field": split.field, "size": split.size, "order": {"m0": "desc"}},
                "aggs": {**_metric_aggs(panel), **inner},
            }
        }
    if panel.interval:
        inner = {
            "t": {
                "date_histogram": {
                    "field": TIMESTAMP_FIELD,
                    "fixed_interval": panel.interval,
                    "min_doc_count": 1,
                },
                "aggs": inner,
            }
        }
    return {
        "size": 0,
        "query": {"bool": {"filter": [time_filter(time_from, time_to), *(c.dsl() for c in panel.where)]}},
        "aggs": inner,
    }


def original_query(time_from: str = TIME_FROM, time_to: str = TIME_TO) -> dict[str, Any]:
    """The saved search: the original README's query within the dashboard's time range."""
    return {
        "query": {"bool": {"filter": [time_filter(time_from, time_to), ORIGINAL_COND.dsl()]}},
        "sort": [{ORIGINAL_SORT[0]: ORIGINAL_SORT[1]}],
        "size": 50,
    }


def rows_of(panel: Panel, response: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a table panel's answer into rows, in Kibana's order: {field: key, ..., label: value}."""
    out: list[dict[str, Any]] = []

    def walk(aggs: dict[str, Any], depth: int, prefix: dict[str, Any]) -> None:
        for bucket in aggs[f"b{depth}"]["buckets"]:
            row = {**prefix, panel.rows[depth].field: bucket["key"]}
            if depth + 1 < len(panel.rows):
                walk(bucket, depth + 1, row)
            else:
                for i, m in enumerate(panel.metrics):
                    row[m.label] = bucket[f"m{i}"]["value"]
                out.append(row)

    walk(response["aggregations"], 0, {})
    return out


def alert_query(window_minutes: int = ALERT_WINDOW_MINUTES) -> dict[str, Any]:
    """The search the alert rule runs every 5 minutes (its time window on @timestamp added, as the
    rule adds it)."""
    return {
        "query": {
            "bool": {
                "filter": [
                    {"range": {TIMESTAMP_FIELD: {"gte": f"now-{window_minutes}m", "lte": "now"}}},
                    *(c.dsl() for c in ALERT_CONDS),
                ]
            }
        },
        "sort": [{"growth_bytes_per_s": "desc"}],
        "size": 10,
    }


def alert_rule(index: str = DEFAULT_INDEX) -> dict[str, Any]:
    """Kibana's "Elasticsearch query" rule (POST /api/alerting/rule, header kbn-xsrf)."""
    return {
        "name": "TrackLeak: a function keeps leaking",
        "rule_type_id": ".es-query",
        "consumer": "stackAlerts",
        "tags": ["trackleak"],
        "schedule": {"interval": "5m"},
        "params": {
            "searchType": "esQuery",
            "index": [index_pattern(index)],
            "timeField": TIMESTAMP_FIELD,
            "esQuery": json.dumps({"query": {"bool": {"filter": [c.dsl() for c in ALERT_CONDS]}}}),
            "size": 10,
            "threshold": [0],
            "thresholdComparator": ">",
            "timeWindowSize": ALERT_WINDOW_MINUTES,
            "timeWindowUnit": "m",
        },
        "actions": [],
    }


# --------------------------------------------------------------------------- Kibana


def data_view_id(index: str) -> str:
    return f"trackleak-data-view-{index}"


def _search_source(kql: str) -> str:
    return json.dumps(
        {"query": {"query": kql, "language": "kuery"}, "filter": [], "indexRefName": INDEX_REF},
        separators=(",", ":"),
    )


def _vis_state(panel: Panel) -> dict[str, Any]:
    aggs: list[dict[str, Any]] = []
    for i, m in enumerate(panel.metrics):
        aggs.append(
            {
                "id": str(i + 1),
                "enabled": True,
                "type": m.agg,
                "schema": "metric",
                "params": {"field": m.field, "customLabel": m.label},
            }
        )
    nid = len(aggs) + 1
    if panel.interval:
        aggs.append(
            {
                "id": str(nid),
                "enabled": True,
                "type": "date_histogram",
                "schema": "segment",
                "params": {
                    "field": TIMESTAMP_FIELD,
                    "interval": panel.interval,
                    "min_doc_count": 1,
                    "extended_bounds": {},
                    "useNormalizedEsInterval": True,
                    "drop_partials": False,
                },
            }
        )
        nid += 1
    for split in panel.rows:
        aggs.append(
            {
                "id": str(nid),
                "enabled": True,
                "type": "terms",
                "schema": "bucket" if panel.kind == "table" else "group",
                "params": {
                    "field": split.field,
                    "orderBy": "1",
                    "order": "desc",
                    "size": split.size,
                    "otherBucket": False,
                    "missingBucket": False,
                    "customLabel": split.label,
                },
            }
        )
        nid += 1
    if panel.kind == "table":
        params: dict[str, Any] = {
            "perPage": 10,
            "showPartialRows": False,
            "showMetricsAtAllLevels": False,
            "showTotal": False,
            "totalFunc": "sum",
            "percentageCol": "",
        }
    else:
        params = {
            "type": "line",
            "addTooltip": True,
            "addLegend": True,
            "legendPosition": "right",
            "times": [],
            "addTimeMarker": False,
            "categoryAxes": [
                {
                    "id": "CategoryAxis-1",
                    "type": "category",
                    "position": "bottom",
                    "show": True,
                    "scale": {"type": "linear"},
                    "labels": {"show": True, "filter": True, "truncate": 100},
                    "title": {},
                }
            ],
            "valueAxes": [
                {
                    "id": "ValueAxis-1",
                    "name": "LeftAxis-1",
                    "type": "value",
                    "position": "left",
                    "show": True,
                    "scale": {"type": "linear", "mode": "normal"},
                    "labels": {"show": True, "rotate": 0, "filter": False, "truncate": 100},
                    "title": {"text": panel.metrics[0].label},
                }
            ],
            "seriesParams": [
                {
                    "show": True,
                    "type": "line",
                    "mode": "normal",
                    "data": {"label": panel.metrics[0].label, "id": "1"},
                    "valueAxis": "ValueAxis-1",
                    "drawLinesBetweenPoints": True,
                    "lineWidth": 2,
                    "showCircles": True,
                    "interpolate": "linear",
                }
            ],
            "grid": {"categoryLines": False},
        }
    return {"title": panel.title, "type": panel.kind, "aggs": aggs, "params": params}


def _ref(index: str) -> list[dict[str, str]]:
    return [{"name": INDEX_REF, "type": "index-pattern", "id": data_view_id(index)}]


def saved_objects(index: str = DEFAULT_INDEX) -> list[dict[str, Any]]:
    """The data view, the panels, the saved search and the dashboard (dashboard last: Kibana
    resolves references within one import in any order, people reading the file top-down)."""
    pattern = index_pattern(index)
    objects: list[dict[str, Any]] = [
        {
            "type": "index-pattern",
            "id": data_view_id(index),
            "attributes": {
                "title": pattern,
                "name": f"TrackLeak ({pattern})",
                "timeFieldName": TIMESTAMP_FIELD,
                "allowNoIndex": True,
            },
            "references": [],
        }
    ]
    for panel in PANELS:
        objects.append(
            {
                "type": "visualization",
                "id": panel.id,
                "attributes": {
                    "title": panel.title,
                    "description": panel.description,
                    "visState": json.dumps(_vis_state(panel), separators=(",", ":")),
                    "uiStateJSON": "{}",
                    "version": 1,
                    "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source(panel.kql())},
                },
                "references": _ref(index),
            }
        )
    objects.append(
        {
            "type": "search",
            "id": ORIGINAL_SEARCH_ID,
            "attributes": {
                "title": "TrackLeak: the original query (retention >= 80 %, by total MiB)",
                "description": "The original TrackLeak README's query: every document, largest first",
                "columns": list(ORIGINAL_COLUMNS),
                "sort": [list(ORIGINAL_SORT)],
                "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source(ORIGINAL_COND.kql())},
            },
            "references": _ref(index),
        }
    )
    layout = [  # (object, type, x, y, w, h)
        (RETAINING.id, "visualization", 0, 0, 24, 15),
        (GROWING.id, "visualization", 24, 0, 24, 15),
        (LIVE.id, "visualization", 0, 15, 48, 15),
        (ORIGINAL_SEARCH_ID, "search", 0, 30, 48, 15),
    ]
    panels_json, refs = [], []
    for n, (oid, otype, x, y, w, h) in enumerate(layout, 1):
        panels_json.append(
            {
                "type": otype,
                "panelIndex": str(n),
                "gridData": {"x": x, "y": y, "w": w, "h": h, "i": str(n)},
                "embeddableConfig": {},
                "panelRefName": f"panel_{n}",
            }
        )
        refs.append({"name": f"{n}:panel_{n}", "type": otype, "id": oid})
    objects.append(
        {
            "type": "dashboard",
            "id": DASHBOARD_ID if index == DEFAULT_INDEX else f"{DASHBOARD_ID}-{index}",
            "attributes": {
                "title": "TrackLeak: memory leaks per service and host",
                "description": f"Which functions keep memory, from the documents in {pattern} "
                "(trackleak run, trackleak-agent). Click a service or host to filter.",
                "panelsJSON": json.dumps(panels_json, separators=(",", ":")),
                "optionsJSON": json.dumps({"useMargins": True, "hidePanelTitles": False}),
                "timeRestore": True,
                "timeFrom": TIME_FROM,
                "timeTo": TIME_TO,
                "refreshInterval": {"pause": False, "value": 60000},
                "version": 1,
                "kibanaSavedObjectMeta": {
                    "searchSourceJSON": json.dumps(
                        {"query": {"query": "", "language": "kuery"}, "filter": []}
                    )
                },
            },
            "references": refs,
        }
    )
    return objects


def ndjson(index: str = DEFAULT_INDEX) -> str:
    return "".join(json.dumps(o, sort_keys=True, separators=(",", ":")) + "\n" for o in saved_objects(index))


def queries(index: str = DEFAULT_INDEX) -> dict[str, Any]:
    """trackleak-queries.json: each panel's search, the saved search's and the alert's."""
    pattern = index_pattern(index)
    out: dict[str, Any] = {
        "_comment": "Each dashboard panel as the Elasticsearch query Kibana runs for it: "
        f"GET {pattern}/_search with the body. Generated by trackleak es dashboard "
        "(agent/es/dashboard.py); tests/integration/test_es_setup.py runs every one.",
    }
    for panel in PANELS:
        out[panel.id] = {"title": panel.title, "kql": panel.kql(), "index": pattern, "body": es_query(panel)}
    out[ORIGINAL_SEARCH_ID] = {
        "title": "the original README's query",
        "kql": ORIGINAL_COND.kql(),
        "index": pattern,
        "body": original_query(),
    }
    out["trackleak-alert"] = {"title": alert_rule(index)["name"], "index": pattern, "body": alert_query()}
    return out


def files(index: str = DEFAULT_INDEX) -> dict[str, str]:
    return {
        DASHBOARD_FILE: ndjson(index),
        QUERIES_FILE: json.dumps(queries(index), indent=2) + "\n",
        ALERT_FILE: json.dumps(alert_rule(index), indent=2) + "\n",
    }


def write_files(directory: Path, index: str = DEFAULT_INDEX) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in files(index).items():
        path = directory / name
        path.write_text(text)
        out.append(path)
    return out

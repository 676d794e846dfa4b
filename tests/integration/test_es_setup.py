# SPDX-License-Identifier: MIT
"""`trackleak es setup` against the real Elasticsearch (scripts/es.sh), and every query of the
Kibana dashboard (deploy/kibana/) run on a leaking and a healthy service's documents.

The test server is the integ-test-zip: no data-streams module (GET /_data_stream answers 405), so
setup installs a plain index template here and says why; the data-stream path is covered by
tests/unit/test_es_template.py with a fake client, and the data-stream template itself (with
@timestamp and bulk "create") is checked here by shipping into one: the core server creates a
data stream on the first write into a name its template covers, even without the module.
"""

from __future__ import annotations

import json
import time

import pytest
from es_support import API_KEY, PASSWORD, USER, es, es_index, es_url, nginx, search_all, wait_count  # noqa: F401
from helpers import REPO_ROOT, run_trackleak

from trackleak.es import dashboard as esdash
from trackleak.es.config import EsConfig
from trackleak.es.schema import TIMESTAMP_FIELD, DocMeta, index_mapping
from trackleak.es.setup import index_pattern, template_body, template_name
from trackleak.es.shipper import Shipper
from trackleak.table import Row

KIBANA = REPO_ROOT / "deploy" / "kibana"
MIB = 1024 * 1024


def _setup(tmp_path, *args, env=None):
    return run_trackleak("es", "setup", *args, cwd=tmp_path, timeout=60, env=env)


@pytest.fixture
def template_cleanup(es):  # noqa: F811
    names = []
    yield names
    for name in names:
        es.options(ignore_status=(400, 404)).indices.delete_index_template(name=name)


def test_setup_installs_the_template_and_is_idempotent(tmp_path, es, es_url, es_index, template_cleanup):  # noqa: F811
    template_cleanup.append(template_name(es_index))
    first = _setup(tmp_path, "--url", es_url, "--index", es_index)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    # this server has no data streams: said, and a plain index template installed instead
    assert "no data stream API" in out and "405" in out, out
    assert f"installed: a plain index template {es_index} for {es_index}*" in out
    assert f"index {es_index}: created" in out

    got = es.indices.get_index_template(name=template_name(es_index))["index_templates"][0]["index_template"]
    assert got["index_patterns"] == [index_pattern(es_index)]
    assert got["template"]["mappings"] == index_mapping()  # the schema's, field for field
    assert "data_stream" not in got
    mapping = es.indices.get_mapping(index=es_index)[es_index]["mappings"]
    assert mapping["properties"] == index_mapping()["properties"]
    assert mapping["dynamic"] == "strict"

    second = _setup(tmp_path, "--url", es_url, "--index", es_index)
    assert second.returncode == 0, second.stderr
    assert f"index {es_index}: exists, its mapping has every field" in second.stdout
    got2 = es.indices.get_index_template(name=template_name(es_index))["index_templates"][0]["index_template"]
    assert got2 == got

    # an index the template covers, made by the first write, gets the mapping
    other = f"{es_index}-2"
    try:
        es.index(
            index=other, document={"job_name": "x", TIMESTAMP_FIELD: "2026-01-01T00:00:00Z"}, refresh=True
        )
        assert es.indices.get_mapping(index=other)[other]["mappings"]["properties"]["job_name"] == {
            "type": "keyword"
        }
    finally:
        es.options(ignore_status=404).indices.delete(index=other)


def test_setup_adds_new_fields_to_an_index_made_before_it(tmp_path, es, es_url, es_index, template_cleanup):  # noqa: F811
    template_cleanup.append(template_name(es_index))
    old = index_mapping()
    del old["properties"][TIMESTAMP_FIELD]  # as the shipper created it before @timestamp
    es.indices.create(index=es_index, mappings=old)
    result = _setup(tmp_path, "--index", es_index, env={"ELASTICSEARCH_URL": f"{es_url}/_bulk"})
    assert result.returncode == 0, result.stderr
    assert f"index {es_index}: exists; mapping updated (added @timestamp)" in result.stdout
    props = es.indices.get_mapping(index=es_index)[es_index]["mappings"]["properties"]
    assert props[TIMESTAMP_FIELD] == {"type": "date"}


def test_dry_run_sends_nothing(tmp_path, es, es_url, es_index):  # noqa: F811
    result = _setup(tmp_path, "--url", es_url, "--index", es_index, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"PUT /_index_template/{es_index}" in result.stdout
    assert '"data_retention": "30d"' in result.stdout and f"PUT /_data_stream/{es_index}" in result.stdout
    assert not es.indices.exists(index=es_index)
    assert not es.options(ignore_status=404).indices.exists_index_template(name=es_index)


def test_errors_name_the_cause_never_the_secret(tmp_path, es_url, nginx):  # noqa: F811
    wrong = _setup(
        tmp_path,
        "--url",
        nginx.url("basic"),
        "--username",
        USER,
        env={"ELASTICSEARCH_PASSWORD": "Wr0ng-" + PASSWORD},
    )
    assert wrong.returncode == 1
    assert "401 Unauthorized: wrong credentials" in wrong.stderr, wrong.stderr
    assert PASSWORD not in wrong.stdout + wrong.stderr

    bad_key = _setup(tmp_path, "--url", nginx.url("apikey"), env={"ELASTICSEARCH_API_KEY": API_KEY[::-1]})
    assert bad_key.returncode == 1 and "401" in bad_key.stderr, bad_key.stderr
    assert API_KEY[::-1] not in bad_key.stdout + bad_key.stderr

    tls = _setup(tmp_path, "--url", nginx.url("open", tls=True), "--index", "tl-never")
    assert tls.returncode == 1
    assert "certificate verify failed" in tls.stderr and "ELASTICSEARCH_CA_FILE" in tls.stderr, tls.stderr

    ok = _setup(
        tmp_path,
        "--url",
        nginx.url("basic", tls=True),
        "--ca-file",
        str(nginx.pki["ca"]),
        "--username",
        USER,
        "--index",
        "tl-test-setup-tls",
        env={"ELASTICSEARCH_PASSWORD": PASSWORD},
    )
    try:
        assert ok.returncode == 0, ok.stderr
        assert "auth=basic (user tl-user)" in ok.stdout and "tls=verify" in ok.stdout
        assert PASSWORD not in ok.stdout + ok.stderr
    finally:
        from elasticsearch import Elasticsearch

        with Elasticsearch(es_url) as client:
            client.options(ignore_status=404).indices.delete(index="tl-test-setup-tls")
            client.options(ignore_status=404).indices.delete_index_template(name="tl-test-setup-tls")

    down = _setup(tmp_path, "--url", "http://127.0.0.1:1")
    assert down.returncode == 1 and "cannot reach Elasticsearch" in down.stderr
    assert "connection refused" in down.stderr


# One name, reused by every run: this server cannot delete a data stream (no data-streams module),
# so the test rolls it over and deletes the old backing indices instead of leaving one per run.
DS_NAME = "tl-test-datastream"


def test_data_stream_template_takes_the_shippers_documents(es, es_url):  # noqa: F811
    """The data-stream template (what setup installs where the server has data streams) accepts
    what the shipper sends: bulk "create", @timestamp, the strict mapping."""
    es.indices.put_index_template(
        name=template_name(DS_NAME), **template_body(DS_NAME, data_stream=True, retention="30d")
    )
    config = EsConfig.from_env(
        {"ENABLE_ELASTICSEARCH": "1", "ELASTICSEARCH_URL": es_url, "ELASTICSEARCH_INDEX": DS_NAME}
    )
    marker = f"ds-{time.time_ns()}"
    shipper = Shipper(config)
    meta = DocMeta(timestamp=time.time(), elapsed_seconds=5, hostname="web-1", job_name=marker)
    shipper.submit([Row("f", "a.py", 1, count=3, total_bytes=300)] * 3, meta)
    assert shipper.flushed(30)
    stats = shipper.close(5)
    assert stats.shipped == 3 and stats.failed == 0, (stats, shipper.summary())
    try:
        resolved = es.indices.resolve_index(name=DS_NAME)
        assert [d["name"] for d in resolved["data_streams"]] == [DS_NAME]
        assert resolved["data_streams"][0]["timestamp_field"] == TIMESTAMP_FIELD
        docs = search_all(es, DS_NAME, query={"term": {"job_name": marker}})
        assert len(docs) == 3 and all(d[TIMESTAMP_FIELD].endswith("Z") for d in docs)
    finally:  # roll over to an empty write index and delete the rest (no delete-by-query here)
        es.indices.rollover(alias=DS_NAME)
        backing = es.indices.resolve_index(name=DS_NAME)["data_streams"][0]["backing_indices"]
        for old in backing[:-1]:
            es.options(ignore_status=404).indices.delete(index=old)


def test_an_index_made_by_an_older_trackleak_takes_the_new_fields(es, es_url, es_index):  # noqa: F811
    """An index whose strict mapping predates a field (here: container) is brought up to the
    schema by the shipper before it ships, so no document of the newer version is refused."""
    old = index_mapping()
    del old["properties"]["container"]
    es.indices.create(index=es_index, mappings=old)
    config = EsConfig.from_env(
        {"ENABLE_ELASTICSEARCH": "1", "ELASTICSEARCH_URL": es_url, "ELASTICSEARCH_INDEX": es_index}
    )
    said: list[str] = []
    shipper = Shipper(config, say=said.append)
    meta = DocMeta(timestamp=time.time(), elapsed_seconds=5, hostname="web-1")
    shipper.submit([Row("f", "a.py", 1, count=3, total_bytes=300, container="docker:0123456789ab")] * 2, meta)
    assert shipper.flushed(30)
    stats = shipper.close(5)
    assert stats.shipped == 2 and stats.failed == 0, (stats, said)
    assert any("mapping updated" in s and "container" in s for s in said), said
    props = es.indices.get_mapping(index=es_index)[es_index]["mappings"]["properties"]
    assert props["container"]["type"] == "keyword"
    es.indices.refresh(index=es_index)
    assert {d["container"] for d in search_all(es, es_index)} == {"docker:0123456789ab"}


# --------------------------------------------------------------------------- the dashboard


def _readings(now: float):
    """Twelve readings, five minutes apart, of two services: billing-api on web-1 leaks
    (leaky_list_append keeps 99 % and grows; a big healthy site beside it allocates more but keeps
    1 %), search-api on web-2 is healthy (a small cache that keeps 85 % but does not grow)."""
    out = []
    for i in range(12):
        at = now - (11 - i) * 300
        leak_live = (i + 1) * 20 * MIB
        leaking = [
            Row(
                "leaky_list_append",
                "/srv/billing/app.py",
                42,
                count=(i + 1) * 10000,
                total_bytes=int(leak_live / 0.99),
                sample_count=(i + 1) * 40,
                sample_total_bytes=int(leak_live / 0.99),
                peak_single=2048,
                pid=4242,
                live_bytes=leak_live,
                live_count=(i + 1) * 9900,
                growth_bytes_per_s=20 * MIB / 300 if i >= 2 else None,
                growing=i >= 2,
            ),
            Row(
                "healthy_allocation",
                "/srv/billing/app.py",
                77,
                count=(i + 1) * 90000,
                total_bytes=(i + 1) * 900 * MIB,
                sample_count=(i + 1) * 400,
                sample_total_bytes=(i + 1) * 900 * MIB,
                sample_free_bytes=(i + 1) * 891 * MIB,
                pid=4242,
                live_bytes=9 * MIB,
                live_count=900,
                growth_bytes_per_s=0.0 if i >= 2 else None,
            ),
        ]
        healthy = [
            Row(
                "cache_fill",
                "/srv/search/cache.py",
                10,
                count=500,
                total_bytes=4 * MIB,
                sample_count=20,
                sample_total_bytes=4 * MIB,
                sample_free_bytes=int(0.6 * MIB),
                pid=777,
                live_bytes=int(3.4 * MIB),
                live_count=425,
                growth_bytes_per_s=0.0 if i >= 2 else None,
            ),
            Row(
                "handle_request",
                "/srv/search/api.py",
                120,
                count=(i + 1) * 50000,
                total_bytes=(i + 1) * 300 * MIB,
                sample_count=(i + 1) * 200,
                sample_total_bytes=(i + 1) * 300 * MIB,
                sample_free_bytes=(i + 1) * 299 * MIB,
                pid=777,
                live_bytes=MIB,
                live_count=100,
                growth_bytes_per_s=0.0 if i >= 2 else None,
            ),
        ]
        started = now - 3600
        out.append((leaking, DocMeta(at, at - started, "web-1", "billing-api", "python app.py", "3.11.7")))
        out.append((healthy, DocMeta(at, at - started, "web-2", "search-api", "python api.py", "3.12.1")))
    return out


def _saved_objects():
    return [json.loads(line) for line in (KIBANA / esdash.DASHBOARD_FILE).read_text().splitlines() if line]


def test_every_panel_query_finds_the_leak(tmp_path, es, es_url, es_index, template_cleanup):  # noqa: F811
    template_cleanup.append(template_name(es_index))
    setup = _setup(tmp_path, "--url", es_url, "--index", es_index)
    assert setup.returncode == 0, setup.stderr

    # the committed saved objects: a data view on the pattern the template covers, every
    # reference resolving
    objects = _saved_objects()
    by_id = {(o["type"], o["id"]) for o in objects}
    for o in objects:
        for ref in o["references"]:
            assert (ref["type"], ref["id"]) in by_id, ref
    (view,) = [o for o in objects if o["type"] == "index-pattern"]
    template = es.indices.get_index_template(name="*")["index_templates"]
    committed_pattern = view["attributes"]["title"]
    assert committed_pattern == index_pattern("trackleak-memory")
    assert index_pattern(es_index) in [p for t in template for p in t["index_template"]["index_patterns"]]

    # a leaking and a healthy service, shipped by the shipper
    config = EsConfig.from_env(
        {"ENABLE_ELASTICSEARCH": "1", "ELASTICSEARCH_URL": es_url, "ELASTICSEARCH_INDEX": es_index}
    )
    shipper = Shipper(config)
    n = 0
    for rows, meta in _readings(time.time()):
        n += shipper.submit(rows, meta)
    assert shipper.flushed(30)
    stats = shipper.close(5)
    assert stats.shipped == n == 48 and stats.failed == 0, shipper.summary()
    assert wait_count(es, es_index, n) == n

    # every query of the committed file, as Kibana would run it on this index
    queries = json.loads((KIBANA / esdash.QUERIES_FILE).read_text())
    ran = set()

    def run(key):
        ran.add(key)
        return es.search(index=es_index, body=queries[key]["body"])

    retaining = esdash.rows_of(esdash.RETAINING, run(esdash.RETAINING.id))
    assert retaining[0]["function"] == "leaky_list_append", retaining
    assert (retaining[0]["job_name"], retaining[0]["hostname"]) == ("billing-api", "web-1")
    assert retaining[0]["retention %"] >= 80
    functions = [r["function"] for r in retaining]
    assert "healthy_allocation" not in functions and "handle_request" not in functions
    assert "cache_fill" in functions  # keeps 85 %: shown, after the leak

    growing = esdash.rows_of(esdash.GROWING, run(esdash.GROWING.id))
    assert [r["function"] for r in growing] == ["leaky_list_append"], growing
    assert growing[0]["growth bytes/s"] > 60000

    live = run(esdash.LIVE.id)["aggregations"]["t"]["buckets"]
    assert len(live) >= 10, live  # twelve readings, five minutes apart
    last = live[-1]
    series = {
        (j["key"], h["key"], f["key"]): f["m0"]["value"]
        for j in last["b0"]["buckets"]
        for h in j["b1"]["buckets"]
        for f in h["b2"]["buckets"]
    }
    assert series[("billing-api", "web-1", "leaky_list_append")] == 240 * MIB
    assert ("search-api", "web-2", "cache_fill") in series
    first = live[0]["b0"]["buckets"][0]["b1"]["buckets"][0]["b2"]["buckets"][0]
    assert first["key"] == "leaky_list_append" and first["m0"]["value"] < 240 * MIB

    original = [h["_source"] for h in run(esdash.ORIGINAL_SEARCH_ID)["hits"]["hits"]]
    assert original[0]["function"] == "leaky_list_append" and original[0]["total_mb"] > 200

    alert = [h["_source"] for h in run("trackleak-alert")["hits"]["hits"]]
    assert alert and {d["job_name"] for d in alert} == {"billing-api"}
    assert {d["function"] for d in alert} == {"leaky_list_append"}

    assert ran == {k for k in queries if not k.startswith("_")}  # every query in the file ran

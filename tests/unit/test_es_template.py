# SPDX-License-Identifier: MIT
"""`trackleak es setup` without a server: the template comes from the schema, and install()'s
decisions (data stream, lifecycle, plain template) against a fake client answering as servers do."""

from __future__ import annotations

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import ApiError

from trackleak.errors import UserError
from trackleak.es.config import EsConfig
from trackleak.es.schema import FIELDS, TIMESTAMP_FIELD, index_mapping
from trackleak.es.setup import SetupError, check_retention, dry_run_text, install, template_body

CONFIG = EsConfig(url="http://es:9200", index="trackleak-memory", username="bob", password="pa55-Secret")


def api_error(status: int, body) -> ApiError:
    meta = ApiResponseMeta(status, "1.1", HttpHeaders(), 0.0, NodeConfig("http", "es", 9200))
    return ApiError(message=str(body), meta=meta, body=body)


class FakeIndices:
    def __init__(self, *, ds_status=404, plain=False, lifecycle_ok=True, put_error=None):
        self.ds_status, self.plain, self.lifecycle_ok, self.put_error = (
            ds_status,
            plain,
            lifecycle_ok,
            put_error,
        )
        self.calls: list[tuple] = []

    def get_data_stream(self, name):
        self.calls.append(("get_data_stream", name))
        if self.ds_status == 200:
            return {"data_streams": [{"name": name}]}
        if self.ds_status == 405:
            raise api_error(405, "Incorrect HTTP method for uri [/_data_stream/x] and method [GET]")
        raise api_error(self.ds_status, {"error": {"type": "index_not_found_exception", "reason": "no such"}})

    def exists(self, index):
        self.calls.append(("exists", index))
        return self.plain

    def put_index_template(self, name, **body):
        self.calls.append(("put_index_template", name, body))
        if self.put_error:
            raise self.put_error
        if "lifecycle" in body["template"] and not self.lifecycle_ok:
            raise api_error(
                400, {"error": {"type": "x_content_parse_exception", "reason": "unknown field [lifecycle]"}}
            )
        return {"acknowledged": True}

    def create_data_stream(self, name):
        self.calls.append(("create_data_stream", name))
        return {"acknowledged": True}

    def put_data_lifecycle(self, name, data_retention):
        self.calls.append(("put_data_lifecycle", name, data_retention))
        return {"acknowledged": True}

    def create(self, index):
        self.calls.append(("create", index))
        return {"acknowledged": True}

    def get_mapping(self, index):
        old = dict(index_mapping()["properties"])
        del old[TIMESTAMP_FIELD]
        return {index: {"mappings": {"properties": old}}}

    def put_mapping(self, index, properties):
        self.calls.append(("put_mapping", index, properties))
        return {"acknowledged": True}


class FakeClient:
    def __init__(self, **kw):
        self.indices = FakeIndices(**kw)

    def names(self):
        return [c[0] for c in self.indices.calls]


def test_template_is_the_schemas_mapping():
    body = template_body("trackleak-memory", data_stream=True, retention="30d")
    assert body["index_patterns"] == ["trackleak-memory*"]
    assert body["template"]["mappings"] == index_mapping()
    assert body["template"]["lifecycle"] == {"data_retention": "30d"}
    assert body["data_stream"] == {}
    assert set(body["template"]["mappings"]["properties"]) == {f.name for f in FIELDS}
    assert body["template"]["mappings"]["properties"][TIMESTAMP_FIELD] == {"type": "date"}
    plain = template_body("trackleak-memory", data_stream=False, retention="30d")
    assert "data_stream" not in plain and "lifecycle" not in plain["template"]


def test_data_stream_created_with_a_retention():
    client = FakeClient()
    result = install(client, CONFIG, retention="30d")
    assert result.mode == "data-stream" and result.retention == "30d"
    assert client.names() == ["get_data_stream", "exists", "put_index_template", "create_data_stream"]
    assert "data stream trackleak-memory: created, retention 30d" in "\n".join(result.lines)


def test_existing_data_stream_gets_the_retention():
    client = FakeClient(ds_status=200)
    result = install(client, CONFIG, retention="7d")
    # the backing indices of an older TrackLeak get the new fields (here: @timestamp), then the retention
    assert client.names() == ["get_data_stream", "put_index_template", "put_mapping", "put_data_lifecycle"]
    assert (
        "put_mapping",
        "trackleak-memory",
        {TIMESTAMP_FIELD: index_mapping()["properties"][TIMESTAMP_FIELD]},
    ) in (client.indices.calls)
    assert ("put_data_lifecycle", "trackleak-memory", "7d") in client.indices.calls
    assert "exists, mapping updated (added @timestamp), retention set to 7d" in "\n".join(result.lines)


def test_server_without_lifecycle_gets_a_data_stream_without_retention():
    client = FakeClient(lifecycle_ok=False)
    result = install(client, CONFIG, retention="30d")
    assert result.mode == "data-stream" and result.retention is None
    puts = [c for c in client.indices.calls if c[0] == "put_index_template"]
    assert len(puts) == 2 and "lifecycle" not in puts[1][2]["template"]
    assert any("before 8.11" in line for line in result.lines)


def test_no_data_stream_api_falls_back_to_a_plain_template():
    client = FakeClient(ds_status=405)
    result = install(client, CONFIG)
    assert result.mode == "index"
    put = next(c for c in client.indices.calls if c[0] == "put_index_template")
    assert "data_stream" not in put[2]
    assert ("create", "trackleak-memory") in client.indices.calls
    assert any("no data stream API" in line for line in result.lines)


def test_an_existing_plain_index_keeps_a_plain_template_and_gets_new_fields():
    client = FakeClient(plain=True)
    result = install(client, CONFIG)
    assert result.mode == "index"
    assert "create_data_stream" not in client.names()
    (put_mapping,) = [c for c in client.indices.calls if c[0] == "put_mapping"]
    assert put_mapping[2] == {TIMESTAMP_FIELD: {"type": "date"}}
    text = "\n".join(result.lines)
    assert "a plain index trackleak-memory already exists" in text and "added @timestamp" in text


def test_errors_name_the_cause_never_the_secret():
    client = FakeClient(
        put_error=api_error(403, {"error": {"type": "security_exception", "reason": "denied"}})
    )
    with pytest.raises(SetupError) as exc:
        install(client, CONFIG)
    assert "403" in str(exc.value) and "manage_index_templates" in str(exc.value)
    assert "pa55-Secret" not in str(exc.value)
    client = FakeClient(ds_status=401)
    with pytest.raises(SetupError, match="401 Unauthorized: wrong credentials"):
        install(client, CONFIG)


def test_retention_and_dry_run():
    assert check_retention("30d") == "30d" and check_retention("none") is None and check_retention("") is None
    with pytest.raises(UserError):
        check_retention("30 days")
    text = dry_run_text("http://es:9200", "trackleak-memory", "30d")
    assert "nothing was sent" in text and "PUT /_index_template/trackleak-memory" in text
    assert '"data_retention": "30d"' in text and "PUT /trackleak-memory/_mapping" in text

# SPDX-License-Identifier: MIT
"""``trackleak es setup``: the index template (mapping from ``schema``), and a data stream with a
retention where the server has them.

What is installed, for ``ELASTICSEARCH_INDEX`` (default ``trackleak-memory``):

- a composable index template named after the index, for the pattern ``<index>*``, priority 200,
  with ``schema.index_mapping()`` (strict) — nothing here restates a field or a type;
- where the server has data streams (its data-streams module: the default distribution, not the
  integ-test-zip the tests run) and no plain index of that name exists: the template makes data
  streams, with a data stream lifecycle (``data_retention``, 30 days by default; servers before
  8.11 do not know the lifecycle: then without it, said), and the data stream is created now
  (an existing one gets the retention: a template's lifecycle reaches only new data streams);
- otherwise a plain index template, and the index is created now with its mapping (an existing
  index gets the fields it lacks, e.g. ``@timestamp``, through a mapping update); no retention
  (delete old indices yourself), said.

How the server's support is found: ``GET /_data_stream/<index>`` answers 200 (exists) or 404
(data streams, none yet); a server without the data-streams module has no such handler and
answers 405 or 400. The shipper writes with bulk ``create`` and ``@timestamp``, which both kinds
take. Running it again changes nothing that is already right (PUTs replace, creations that find
the thing there are fine).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UserError
from .config import EsConfig
from .schema import FIELDS, TIMESTAMP_FIELD, add_missing_fields, index_mapping

DEFAULT_RETENTION = "30d"
TEMPLATE_PRIORITY = 200  # above the built-in templates (logs-*-* and the like are 100)
MANAGED_BY = "trackleak es setup"
_RETENTION_RE = re.compile(r"^[1-9][0-9]*(d|h|m|s)$")


class SetupError(UserError):
    """Setting up failed; the message names the cause (never a secret)."""


def index_pattern(index: str) -> str:
    return f"{index}*"


def template_name(index: str) -> str:
    return index


def check_retention(retention: str | None) -> str | None:
    """'30d', '12h'...; None/''/'none' for no retention (keep forever)."""
    if retention is None or retention.strip().lower() in ("", "none", "0"):
        return None
    retention = retention.strip()
    if not _RETENTION_RE.match(retention):
        raise UserError(f"--retention {retention!r}: expected a duration such as 30d, 12h or none")
    return retention


def template_body(index: str, *, data_stream: bool, retention: str | None = None) -> dict[str, Any]:
    """The composable index template's body (PUT /_index_template/<name>)."""
    template: dict[str, Any] = {"mappings": index_mapping()}
    if data_stream and retention:
        template["lifecycle"] = {"data_retention": retention}
    body: dict[str, Any] = {
        "index_patterns": [index_pattern(index)],
        "priority": TEMPLATE_PRIORITY,
        "template": template,
        "_meta": {
            "managed_by": MANAGED_BY,
            "description": "TrackLeak memory documents: one per allocation site per interval",
            "fields": len(FIELDS),
        },
    }
    if data_stream:
        body["data_stream"] = {}
    return body


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: dict[str, Any] | None = None
    why: str = ""

    def show(self) -> str:
        text = f"{self.method} {self.path}"
        if self.why:
            text += f"    # {self.why}"
        if self.body is not None:
            text += "\n" + json.dumps(self.body, indent=2)
        return text


def plan(index: str, retention: str | None) -> dict[str, list[Request]]:
    """What setup sends, by case: the probe, then data stream or plain index (``--dry-run``)."""
    name = template_name(index)
    return {
        "probe": [
            Request("GET", f"/_data_stream/{index}", why="200/404: data streams; 405/400: none here"),
            Request("HEAD", f"/{index}", why="a plain index of that name already?"),
        ],
        "data-stream": [
            Request(
                "PUT",
                f"/_index_template/{name}",
                template_body(index, data_stream=True, retention=retention),
                why="before 8.11 (no lifecycle): the same without template.lifecycle",
            ),
            Request("PUT", f"/_data_stream/{index}", why="when it does not exist yet"),
            *(
                [
                    Request(
                        "PUT",
                        f"/_data_stream/{index}/_lifecycle",
                        {"data_retention": retention},
                        why="when it existed already",
                    )
                ]
                if retention
                else []
            ),
        ],
        "index": [
            Request("PUT", f"/_index_template/{name}", template_body(index, data_stream=False)),
            Request("PUT", f"/{index}", why="when it does not exist yet (the template gives the mapping)"),
            Request(
                "PUT",
                f"/{index}/_mapping",
                {"properties": index_mapping()["properties"]},
                why="when it exists: adds the fields it lacks",
            ),
        ],
    }


def dry_run_text(config_url: str, index: str, retention: str | None) -> str:
    p = plan(index, retention)
    out = [
        f"# trackleak es setup --dry-run: what would be sent to {config_url} (nothing was sent)",
        "# 1. find what the server supports",
        *[r.show() for r in p["probe"]],
        "",
        "# 2a. a server with data streams, and no plain index of that name:",
        *[r.show() for r in p["data-stream"]],
        "",
        "# 2b. otherwise (no data streams, e.g. the integ-test-zip; or a plain index exists):",
        "#     a plain index template",
        *[r.show() for r in p["index"]],
    ]
    return "\n".join(out)


@dataclass
class Result:
    mode: str  # "data-stream" or "index"
    template: str
    pattern: str
    retention: str | None = None
    lines: list[str] = field(default_factory=list)


def _status(exc: BaseException) -> int:
    meta = getattr(exc, "meta", None)
    return getattr(meta, "status", 0) or 0


def _text(exc: BaseException) -> str:
    return f"{exc} {getattr(exc, 'body', '')}"


def _no_data_streams(exc: BaseException) -> bool:
    """The answer of a server without the data stream API to GET /_data_stream/<name>."""
    status, text = _status(exc), _text(exc)
    if status == 405:
        return True
    return status == 400 and any(
        s in text for s in ("no handler found", "Incorrect HTTP method", "invalid_index_name")
    )


def install(
    client,
    config: EsConfig,
    *,
    retention: str | None = DEFAULT_RETENTION,
    say: Callable[[str], None] = lambda s: None,
) -> Result:
    """Install the template (and the data stream or the index); SetupError naming the cause."""
    from elasticsearch import ApiError

    index = config.index
    name, pattern = template_name(index), index_pattern(index)

    def call(what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except ApiError:
            raise
        except Exception as exc:  # connection, TLS, timeout: nothing else will work either
            raise _setup_error(config, what, exc) from None

    def fail(what: str, exc: BaseException) -> SetupError:
        return _setup_error(config, what, exc)

    # 1. what the server supports
    ds_api, ds_exists = True, False
    try:
        call("GET /_data_stream", client.indices.get_data_stream, name=index)
        ds_exists = True
    except ApiError as exc:
        if _status(exc) == 404:
            pass
        elif _no_data_streams(exc):
            ds_api = False
        else:
            raise fail("GET /_data_stream", exc) from None
    plain_exists = False
    if not ds_exists:
        try:
            plain_exists = bool(call(f"HEAD /{index}", client.indices.exists, index=index))
        except ApiError as exc:
            raise fail(f"HEAD /{index}", exc) from None

    # 2a. a data stream with a lifecycle
    if ds_api and not plain_exists:
        result = Result("data-stream", name, pattern, retention)
        body = template_body(index, data_stream=True, retention=retention)
        try:
            call("PUT /_index_template", client.indices.put_index_template, name=name, **body)
        except ApiError as exc:
            if retention and _status(exc) == 400 and "lifecycle" in _text(exc):
                result.retention = None
                body = template_body(index, data_stream=True, retention=None)
                try:
                    call("PUT /_index_template", client.indices.put_index_template, name=name, **body)
                except ApiError as exc2:
                    raise fail("PUT /_index_template", exc2) from None
                result.lines.append(
                    "this server does not know the data stream lifecycle (Elasticsearch before 8.11): "
                    "no retention set; delete old backing indices yourself (or use ILM)"
                )
            else:
                raise fail("PUT /_index_template", exc) from None
        result.lines.insert(
            0,
            f"index template {name}: installed for {pattern} ({len(FIELDS)} fields, strict mapping, "
            "data streams)",
        )
        if ds_exists:
            what = f"data stream {index}: exists"
            try:
                added = call(f"PUT /{index}/_mapping", add_missing_fields, client, index)
            except ApiError as exc:
                raise fail(f"PUT /{index}/_mapping", exc) from None
            if added:
                what += f", mapping updated (added {', '.join(added)})"
            if result.retention:
                try:
                    call(
                        "PUT /_data_stream/_lifecycle",
                        client.indices.put_data_lifecycle,
                        name=index,
                        data_retention=result.retention,
                    )
                except ApiError as exc:
                    raise fail(f"PUT /_data_stream/{index}/_lifecycle", exc) from None
                what += f", retention set to {result.retention}"
            result.lines.append(what)
        else:
            try:
                call("PUT /_data_stream", client.indices.create_data_stream, name=index)
                state = "created"
            except ApiError as exc:
                if _status(exc) == 400 and "already_exists" in _text(exc):
                    state = "exists"
                else:
                    raise fail(f"PUT /_data_stream/{index}", exc) from None
            keep = f"retention {result.retention}" if result.retention else "no retention (kept forever)"
            result.lines.append(f"data stream {index}: {state}, {keep} (data stream lifecycle)")
        return result

    # 2b. a plain index template (and the index)
    result = Result("index", name, pattern, None)
    if not ds_api:
        why = (
            "this server has no data stream API (GET /_data_stream answered 405/400: no data-streams "
            "module, as in the integ-test-zip distribution)"
        )
    else:
        why = (
            f"a plain index {index} already exists (written before setup): a data stream cannot take "
            "its name; reindex it into a data stream, or delete it and run setup again, to get one"
        )
    body = template_body(index, data_stream=False)
    try:
        call("PUT /_index_template", client.indices.put_index_template, name=name, **body)
    except ApiError as exc:
        raise fail("PUT /_index_template", exc) from None
    result.lines.append(
        f"index template {name}: installed for {pattern} ({len(FIELDS)} fields, strict mapping), "
        "a plain index template, no data stream and no retention (delete old indices yourself)"
    )
    result.lines.append(f"why not a data stream: {why}")
    if plain_exists:
        try:
            missing = call(f"PUT /{index}/_mapping", add_missing_fields, client, index)
            if missing:
                result.lines.append(f"index {index}: exists; mapping updated (added {', '.join(missing)})")
            else:
                result.lines.append(f"index {index}: exists, its mapping has every field")
        except ApiError as exc:
            raise fail(f"PUT /{index}/_mapping", exc) from None
    else:
        try:
            call(f"PUT /{index}", client.indices.create, index=index)
            result.lines.append(f"index {index}: created with the template's mapping")
        except ApiError as exc:
            if _status(exc) == 400 and "already_exists" in _text(exc):
                result.lines.append(f"index {index}: exists")
            else:
                raise fail(f"PUT /{index}", exc) from None
    if TIMESTAMP_FIELD not in index_mapping()["properties"]:  # pragma: no cover - schema guard
        raise SetupError(f"the schema has no {TIMESTAMP_FIELD}")
    return result


def _setup_error(config: EsConfig, what: str, exc: BaseException) -> SetupError:
    from .shipper import classify

    key, words, _retry = classify(exc)
    if key == "403":
        words = (
            words.replace("may not write there", "may not manage index templates")
            + "; setup needs the manage_index_templates and manage cluster privileges"
        )
    if key in ("refused", "dns", "connection", "timeout"):
        return SetupError(config.scrub(f"cannot reach Elasticsearch at {config.url}: {words}"))
    return SetupError(config.scrub(f"{config.url}: {what}: {words}"))

# SPDX-License-Identifier: MIT
"""The original Elasticsearch variables parsed into EsConfig: URL forms, precedence, errors that
name the variable, secrets never shown."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from trackleak.es.config import DEFAULT_INDEX, EsConfig, EsConfigError, parse_url

PASSWORD = "pa55-Wörd:with@odd/chars"
API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="


def cfg(**env):
    return EsConfig.from_env({"ENABLE_ELASTICSEARCH": "1", **env})


@pytest.mark.parametrize(
    "raw, base",
    [
        ("http://localhost:9200/_bulk", "http://localhost:9200"),  # the original's form
        ("http://localhost:9200/_bulk/", "http://localhost:9200"),
        ("http://localhost:9200", "http://localhost:9200"),
        ("http://localhost:9200/", "http://localhost:9200"),
        ("https://es-server:9200/_bulk", "https://es-server:9200"),
        ("https://es.example.com/_bulk", "https://es.example.com:443"),  # curl's default port
        ("http://es.example.com", "http://es.example.com:80"),
        ("http://proxy:8080/es/_bulk", "http://proxy:8080/es"),  # a proxy's path prefix is kept
        ("http://[::1]:9200/_bulk", "http://[::1]:9200"),
        ("  http://localhost:9200/_bulk  ", "http://localhost:9200"),
    ],
)
def test_url_forms(raw, base):
    assert cfg(ELASTICSEARCH_URL=raw).url == base


@pytest.mark.parametrize(
    "raw, words",
    [
        ("localhost:9200", "must start with http:// or https://"),
        ("ftp://h/_bulk", "must start with http:// or https://"),
        ("http:///_bulk", "has no host"),
        ("http://h:99999/_bulk", "not a URL"),
        ("http://h:9200/_bulk?refresh=true", "query or fragment"),
        ("http://h:9200/idx/_doc", "its /_bulk endpoint"),
    ],
)
def test_bad_urls_name_the_variable(raw, words):
    with pytest.raises(EsConfigError, match="ELASTICSEARCH_URL") as info:
        cfg(ELASTICSEARCH_URL=raw)
    assert words in str(info.value)


def test_disabled_and_enabled_flags():
    assert EsConfig.from_env({}) is None
    assert EsConfig.from_env({"ELASTICSEARCH_URL": "http://h:9200"}) is None
    for off in ("0", "false", "no", "OFF", ""):
        assert EsConfig.from_env({"ENABLE_ELASTICSEARCH": off, "ELASTICSEARCH_URL": "http://h:1"}) is None
    for on in ("1", "true", "Yes", "on"):
        assert EsConfig.from_env({"ENABLE_ELASTICSEARCH": on, "ELASTICSEARCH_URL": "http://h:1"}) is not None
    with pytest.raises(EsConfigError, match="ENABLE_ELASTICSEARCH='maybe'"):
        EsConfig.from_env({"ENABLE_ELASTICSEARCH": "maybe"})
    with pytest.raises(EsConfigError, match="ELASTICSEARCH_URL is not set"):
        cfg()


def test_defaults_are_the_originals():
    c = cfg(ELASTICSEARCH_URL="http://h:9200/_bulk")
    assert c.index == DEFAULT_INDEX == "trackleak-memory"
    assert c.job_name == "unknown"
    assert c.verify_certs is True
    assert c.auth == "none"
    assert (c.queue_batches, c.connect_timeout, c.total_timeout) == (100, 5.0, 10.0)
    c = cfg(ELASTICSEARCH_URL="http://h:9200", ELASTICSEARCH_INDEX="myapp-memory", NOMAD_JOB_NAME="svc")
    assert (c.index, c.job_name) == ("myapp-memory", "svc")


def test_api_key_preferred_over_basic_auth():
    c = cfg(
        ELASTICSEARCH_URL="https://h:9200/_bulk",
        ELASTICSEARCH_API_KEY=API_KEY,
        ELASTICSEARCH_USERNAME="elastic",
        ELASTICSEARCH_PASSWORD=PASSWORD,
    )
    assert c.auth == "api-key"
    kw = c.client_kwargs()
    assert kw["api_key"] == API_KEY and "basic_auth" not in kw
    assert "ignored: the API key is preferred" in c.describe()
    c = cfg(
        ELASTICSEARCH_URL="https://h:9200/_bulk",
        ELASTICSEARCH_USERNAME="elastic",
        ELASTICSEARCH_PASSWORD=PASSWORD,
    )
    assert c.auth == "basic" and c.client_kwargs()["basic_auth"] == ("elastic", PASSWORD)


def test_credentials_in_the_url():
    c = cfg(ELASTICSEARCH_URL="http://bob:s%40cret@h:9200/_bulk")
    assert (c.url, c.username, c.password) == ("http://h:9200", "bob", "s@cret")
    # the variables win over the URL's
    c = cfg(ELASTICSEARCH_URL="http://bob:x@h:9200", ELASTICSEARCH_USERNAME="amy", ELASTICSEARCH_PASSWORD="y")
    assert (c.username, c.password) == ("amy", "y")


def test_half_given_credentials():
    with pytest.raises(EsConfigError, match="ELASTICSEARCH_PASSWORD is not"):
        cfg(ELASTICSEARCH_URL="http://h:1", ELASTICSEARCH_USERNAME="bob")
    with pytest.raises(EsConfigError, match="ELASTICSEARCH_USERNAME is not") as info:
        cfg(ELASTICSEARCH_URL="http://h:1", ELASTICSEARCH_PASSWORD=PASSWORD)
    assert PASSWORD not in str(info.value)
    with pytest.raises(EsConfigError, match="ELASTICSEARCH_API_KEY") as info:
        cfg(ELASTICSEARCH_URL="http://h:1", ELASTICSEARCH_API_KEY="ApiKey " + API_KEY)
    assert API_KEY not in str(info.value)


def test_secrets_never_shown():
    c = cfg(
        ELASTICSEARCH_URL=f"http://bob:{quote(PASSWORD, safe='')}@h:9200",
        ELASTICSEARCH_API_KEY=API_KEY,
    )
    assert c.password == PASSWORD
    for text in (c.describe(), repr(c), str(c), c.url):
        assert PASSWORD not in text and API_KEY not in text
    assert c.scrub(f"header ApiKey {API_KEY} and {PASSWORD}") == "header ApiKey *** and ***"
    # a bad URL's message does not repeat its credentials
    with pytest.raises(EsConfigError) as info:
        cfg(ELASTICSEARCH_URL=f"ftp://bob:{API_KEY}@h/_bulk")
    assert API_KEY not in str(info.value) and "//***@h" in str(info.value)


def test_tls_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_text("x")
    key.write_text("x")
    c = cfg(
        ELASTICSEARCH_URL="https://h:9200",
        ELASTICSEARCH_CA_FILE=str(ca),
        ELASTICSEARCH_CLIENT_CERT=str(cert),
        ELASTICSEARCH_CLIENT_KEY=str(key),
    )
    kw = c.client_kwargs()
    assert (kw["ca_certs"], kw["client_cert"], kw["client_key"], kw["verify_certs"]) == (
        str(ca),
        str(cert),
        str(key),
        True,
    )
    c = cfg(ELASTICSEARCH_URL="https://h:9200", ELASTICSEARCH_SSL_VERIFY="0")
    assert c.client_kwargs()["verify_certs"] is False
    assert "no verification" in c.describe()
    with pytest.raises(EsConfigError, match="ELASTICSEARCH_SSL_VERIFY"):
        cfg(ELASTICSEARCH_URL="https://h:9200", ELASTICSEARCH_SSL_VERIFY="sometimes")
    with pytest.raises(EsConfigError, match="ELASTICSEARCH_CA_FILE: no such file"):
        cfg(ELASTICSEARCH_URL="https://h:9200", ELASTICSEARCH_CA_FILE=str(tmp_path / "missing.pem"))
    with pytest.raises(EsConfigError, match="ELASTICSEARCH_CLIENT_CERT is not"):
        cfg(ELASTICSEARCH_URL="https://h:9200", ELASTICSEARCH_CLIENT_KEY=str(key))
    with pytest.raises(EsConfigError, match="need an https://"):
        cfg(ELASTICSEARCH_URL="http://h:9200", ELASTICSEARCH_CA_FILE=str(ca))


@pytest.mark.parametrize("index", ["MyApp", "a b", "a/b", "_x", "-x", "..", "a*", "x" * 256])
def test_bad_index_names(index):
    with pytest.raises(EsConfigError, match="ELASTICSEARCH_INDEX"):
        cfg(ELASTICSEARCH_URL="http://h:1", ELASTICSEARCH_INDEX=index)


def test_queue_bound():
    assert cfg(ELASTICSEARCH_URL="http://h:1", TRACKLEAK_ES_QUEUE_BATCHES="5").queue_batches == 5
    for bad in ("0", "-1", "x", "1e9"):
        with pytest.raises(EsConfigError, match="TRACKLEAK_ES_QUEUE_BATCHES"):
            cfg(ELASTICSEARCH_URL="http://h:1", TRACKLEAK_ES_QUEUE_BATCHES=bad)


def test_parse_url_returns_credentials_apart():
    assert parse_url("https://u:p@h:9200/_bulk") == ("https://h:9200", "u", "p")

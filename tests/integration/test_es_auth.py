# SPDX-License-Identifier: MIT
"""Authentication and TLS for real: nginx in front of the real server (es_support.Nginx) with
basic auth, an API-key check, TLS with a CA made by the test, and client certificates. Failures
say their cause (401, certificate verify failed) and never the secret."""

from __future__ import annotations

import time

import pytest
from es_support import (  # noqa: F401
    API_KEY,
    PASSWORD,
    USER,
    WRONG_PASSWORD,
    es,
    es_index,
    es_url,
    nginx,
    wait_count,
)
from helpers import FIXTURES, run_trackleak

from trackleak.es.config import EsConfig
from trackleak.es.schema import DocMeta
from trackleak.es.shipper import Shipper
from trackleak.table import Row

APP = FIXTURES / "es_leaky.py"


def ship(env: dict, n: int = 3, timeout: float = 20.0):
    """Ship N documents with the configuration ENV describes; (stats, messages)."""
    config = EsConfig.from_env({"ENABLE_ELASTICSEARCH": "1", **env})
    said: list[str] = []
    shipper = Shipper(config, say=said.append)
    rows = [
        Row(f"f{i}", "app.py", i + 1, count=1, total_bytes=1000, sample_count=1, live_bytes=1000)
        for i in range(n)
    ]
    shipper.submit(rows, DocMeta(time.time(), 1.0, "test-host"))
    shipper.flushed(timeout)
    return shipper.close(5), said


def secrets_absent(*texts: str) -> None:
    for secret in (PASSWORD, WRONG_PASSWORD, API_KEY):
        for text in texts:
            assert secret not in text


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_basic_auth(nginx, es, es_index, tls):  # noqa: F811
    env = {
        "ELASTICSEARCH_URL": nginx.url("basic", tls) + "/_bulk",
        "ELASTICSEARCH_INDEX": es_index,
        "ELASTICSEARCH_USERNAME": USER,
        "ELASTICSEARCH_PASSWORD": PASSWORD,
    }
    if tls:
        env["ELASTICSEARCH_CA_FILE"] = str(nginx.pki["ca"])
    stats, said = ship(env)
    assert stats.shipped == 3 and stats.dropped == 0, said
    assert said == []
    assert wait_count(es, es_index, 3) == 3


def test_api_key_is_preferred(nginx, es, es_index):  # noqa: F811
    # the original: "API Key (recommended)": with both, the key is sent (a wrong password is not)
    env = {
        "ELASTICSEARCH_URL": nginx.url("apikey", tls=True),
        "ELASTICSEARCH_INDEX": es_index,
        "ELASTICSEARCH_CA_FILE": str(nginx.pki["ca"]),
        "ELASTICSEARCH_API_KEY": API_KEY,
        "ELASTICSEARCH_USERNAME": USER,
        "ELASTICSEARCH_PASSWORD": WRONG_PASSWORD,
    }
    stats, said = ship(env)
    assert stats.shipped == 3, said
    assert wait_count(es, es_index, 3) == 3


def test_client_certificate(nginx, es, es_index):  # noqa: F811
    base = {
        "ELASTICSEARCH_URL": nginx.url("mtls", tls=True),
        "ELASTICSEARCH_INDEX": es_index,
        "ELASTICSEARCH_CA_FILE": str(nginx.pki["ca"]),
    }
    stats, said = ship(
        {
            **base,
            "ELASTICSEARCH_CLIENT_CERT": str(nginx.pki["client"]),
            "ELASTICSEARCH_CLIENT_KEY": str(nginx.pki["client_key"]),
        }
    )
    assert stats.shipped == 3, said
    stats, said = ship(base)  # no certificate: refused, and said
    assert stats.shipped == 0 and stats.dropped == 3
    assert len(said) == 1 and "403 Forbidden" in said[0], said


def test_ssl_verify_off(nginx, es, es_index):  # noqa: F811
    env = {
        "ELASTICSEARCH_URL": nginx.url("open", tls=True),
        "ELASTICSEARCH_INDEX": es_index,
        "ELASTICSEARCH_SSL_VERIFY": "0",
    }
    stats, said = ship(env)
    assert stats.shipped == 3 and said == [], said


def _run_app(tmp_path, env):
    out = tmp_path / "run.json"
    logs = tmp_path / "logs"
    result = run_trackleak(
        "run",
        "-v",
        "--json",
        str(out),
        "--log-dir",
        str(logs),
        str(APP),
        "2",
        cwd=tmp_path,
        env={"ENABLE_ELASTICSEARCH": "1", "TRACKLEAK_DUMP_INTERVAL": "1", **env},
    )
    assert result.returncode == 0, result.stderr
    assert "done iterations=" in result.stdout  # the target ran as usual
    files = [out.read_text()] + [p.read_text(errors="replace") for p in logs.iterdir() if p.is_file()]
    return result, files


@pytest.mark.parametrize("how", ["basic", "apikey"])
def test_wrong_credentials_said_once_without_the_secret(tmp_path, nginx, es_index, how):  # noqa: F811
    env = {"ELASTICSEARCH_INDEX": es_index}
    if how == "basic":
        # the password both in the variables and (another one) in the URL: neither may show
        env["ELASTICSEARCH_URL"] = (
            nginx.url("basic").replace("http://", f"http://{USER}:{PASSWORD}@") + "/_bulk"
        )
        env["ELASTICSEARCH_USERNAME"] = USER
        env["ELASTICSEARCH_PASSWORD"] = WRONG_PASSWORD
    else:
        env["ELASTICSEARCH_URL"] = nginx.url("apikey") + "/_bulk"
        env["ELASTICSEARCH_API_KEY"] = "d3Jvbmc6a2V5" + API_KEY[12:]  # a wrong key, as long
    result, files = _run_app(tmp_path, env)
    errors = [line for line in result.stderr.splitlines() if "401" in line and "shipped to" not in line]
    assert len(errors) == 1, result.stderr
    assert "401 Unauthorized: wrong credentials" in errors[0]
    assert nginx.url(how) in errors[0]  # names where
    assert "dropped" in result.stderr  # and what it cost
    assert "(documents are shipped by trackleak run)" in result.stderr  # the shim's banner (-v)
    secrets_absent(result.stdout, result.stderr, *files)
    assert env.get("ELASTICSEARCH_API_KEY", "unused") not in result.stderr


@pytest.mark.parametrize("ca", ["none", "other"])
def test_untrusted_certificate_said_once(tmp_path, nginx, es_index, ca):  # noqa: F811
    env = {
        "ELASTICSEARCH_URL": nginx.url("basic", tls=True) + "/_bulk",
        "ELASTICSEARCH_INDEX": es_index,
        "ELASTICSEARCH_USERNAME": USER,
        "ELASTICSEARCH_PASSWORD": PASSWORD,
    }
    if ca == "other":
        env["ELASTICSEARCH_CA_FILE"] = str(nginx.pki["other-ca"])
    result, files = _run_app(tmp_path, env)
    errors = [
        line for line in result.stderr.splitlines() if "verify failed" in line and "shipped to" not in line
    ]
    assert len(errors) == 1, result.stderr
    assert "certificate verify failed" in errors[0] and "ELASTICSEARCH_CA_FILE" in errors[0]
    secrets_absent(result.stdout, result.stderr, *files)

# SPDX-License-Identifier: MIT
"""Where and how to ship: the original TrackLeak's environment variables, parsed once into
``EsConfig`` (bad values are a ``EsConfigError`` naming the variable, never its secret).

| variable | meaning |
|---|---|
| ENABLE_ELASTICSEARCH | 1/true/yes/on ships; 0/false/no/off or unset does not |
| ELASTICSEARCH_URL | the original's bulk endpoint (``https://es:9200/_bulk``) or a base URL |
|   | (``https://es:9200``); a path before ``/_bulk`` is kept as a prefix (a proxy's) |
| ELASTICSEARCH_INDEX | default ``trackleak-memory`` |
| ELASTICSEARCH_USERNAME / _PASSWORD | basic auth (also accepted as ``user:pass@`` in the URL) |
| ELASTICSEARCH_API_KEY | the encoded API key (``id:key`` in base64, what Kibana shows); preferred |
|   | over basic auth when both are given |
| ELASTICSEARCH_SSL_VERIFY | 1 (default) verifies the server's certificate; 0 does not |
| ELASTICSEARCH_CA_FILE | PEM file of the CA(s) to trust (new; default: the system's) |
| ELASTICSEARCH_CLIENT_CERT / _KEY | PEM client certificate and key (new) |
| NOMAD_JOB_NAME | ``job_name`` of every document, default ``unknown`` |
| TRACKLEAK_ES_QUEUE_BATCHES | batches the shipper's queue holds before evicting the oldest (new; 100) |
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

from ..errors import UserError

DEFAULT_INDEX = "trackleak-memory"
DEFAULT_JOB_NAME = "unknown"
DEFAULT_QUEUE_BATCHES = 100
CONNECT_TIMEOUT = 5.0
TOTAL_TIMEOUT = 10.0

ENV_ENABLE = "ENABLE_ELASTICSEARCH"
ENV_URL = "ELASTICSEARCH_URL"
ENV_INDEX = "ELASTICSEARCH_INDEX"
ENV_USERNAME = "ELASTICSEARCH_USERNAME"
ENV_PASSWORD = "ELASTICSEARCH_PASSWORD"
ENV_API_KEY = "ELASTICSEARCH_API_KEY"
ENV_SSL_VERIFY = "ELASTICSEARCH_SSL_VERIFY"
ENV_CA_FILE = "ELASTICSEARCH_CA_FILE"
ENV_CLIENT_CERT = "ELASTICSEARCH_CLIENT_CERT"
ENV_CLIENT_KEY = "ELASTICSEARCH_CLIENT_KEY"
ENV_JOB_NAME = "NOMAD_JOB_NAME"
ENV_QUEUE_BATCHES = "TRACKLEAK_ES_QUEUE_BATCHES"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_INDEX_BAD_CHARS = set('\\/*?"<>| ,#:')


class EsConfigError(UserError):
    """A bad Elasticsearch setting; the message names the variable (and never a secret)."""


def parse_flag(name: str, value: str | None, default: bool) -> bool:
    if value is None:
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise EsConfigError(f"{name}={value!r}: expected 1 or 0 (true/false, yes/no, on/off)")


@dataclass(frozen=True)
class EsConfig:
    url: str  # base URL: scheme://host:port[/prefix], no credentials, no /_bulk
    index: str = DEFAULT_INDEX
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    verify_certs: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    job_name: str = DEFAULT_JOB_NAME
    queue_batches: int = DEFAULT_QUEUE_BATCHES
    connect_timeout: float = CONNECT_TIMEOUT
    total_timeout: float = TOTAL_TIMEOUT

    # ---- reading the environment

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, force: bool = False) -> EsConfig | None:
        """The configuration the variables describe; None when ENABLE_ELASTICSEARCH is off (and
        FORCE is not set). EsConfigError for anything wrong."""
        env = os.environ if environ is None else environ
        enabled = parse_flag(ENV_ENABLE, env.get(ENV_ENABLE), False)
        if not (enabled or force):
            return None
        raw_url = (env.get(ENV_URL) or "").strip()
        if not raw_url:
            raise EsConfigError(f"{ENV_ENABLE}=1 but {ENV_URL} is not set (e.g. http://localhost:9200/_bulk)")
        url, url_user, url_password = parse_url(raw_url)

        username = env.get(ENV_USERNAME) or None
        password = env.get(ENV_PASSWORD)
        if username is None and url_user is not None:
            username, password = url_user, url_password
        api_key = (env.get(ENV_API_KEY) or "").strip() or None
        if username is not None and password is None:
            raise EsConfigError(f"{ENV_USERNAME} is set but {ENV_PASSWORD} is not")
        if username is None and password:
            raise EsConfigError(f"{ENV_PASSWORD} is set but {ENV_USERNAME} is not")
        if api_key is not None and re.search(r"\s", api_key):
            raise EsConfigError(
                f"{ENV_API_KEY}: the encoded API key has no spaces (give the base64 "
                "'encoded' value, without 'ApiKey ')"
            )

        verify = parse_flag(ENV_SSL_VERIFY, env.get(ENV_SSL_VERIFY), True)
        ca_file = _readable(ENV_CA_FILE, env.get(ENV_CA_FILE))
        client_cert = _readable(ENV_CLIENT_CERT, env.get(ENV_CLIENT_CERT))
        client_key = _readable(ENV_CLIENT_KEY, env.get(ENV_CLIENT_KEY))
        if client_key and not client_cert:
            raise EsConfigError(f"{ENV_CLIENT_KEY} is set but {ENV_CLIENT_CERT} is not")
        if (ca_file or client_cert) and not url.startswith("https://"):
            raise EsConfigError(f"{ENV_CA_FILE}/{ENV_CLIENT_CERT} need an https:// {ENV_URL}")

        index = (env.get(ENV_INDEX) or "").strip() or DEFAULT_INDEX
        check_index(index)
        job_name = env.get(ENV_JOB_NAME) or DEFAULT_JOB_NAME
        queue = env.get(ENV_QUEUE_BATCHES)
        try:
            queue_batches = int(queue) if queue not in (None, "") else DEFAULT_QUEUE_BATCHES
        except ValueError:
            queue_batches = 0
        if not 1 <= queue_batches <= 100000:
            raise EsConfigError(f"{ENV_QUEUE_BATCHES}={queue!r}: expected a whole number from 1 to 100000")
        return cls(
            url=url,
            index=index,
            username=username,
            password=password if username is not None else None,
            api_key=api_key,
            verify_certs=verify,
            ca_file=ca_file,
            client_cert=client_cert,
            client_key=client_key,
            job_name=job_name,
            queue_batches=queue_batches,
        )

    # ---- using it

    @property
    def auth(self) -> str:
        """api-key (preferred when both are given), basic or none."""
        if self.api_key:
            return "api-key"
        if self.username is not None:
            return "basic"
        return "none"

    def secrets(self) -> list[str]:
        """Every string that must never be printed (and the forms the client sends)."""
        import base64

        out = []
        if self.api_key:
            out.append(self.api_key)
        if self.password:
            out.append(self.password)
            out.append(base64.b64encode(f"{self.username}:{self.password}".encode()).decode())
        return [s for s in out if s]

    def scrub(self, text: str) -> str:
        for secret in self.secrets():
            text = text.replace(secret, "***")
        return text

    def describe(self) -> str:
        """One line for humans: URL, index, auth kind, TLS; no secret."""
        parts = [f"url={self.url}", f"index={self.index}", f"auth={self.auth}"]
        if self.auth == "basic":
            parts[-1] += f" (user {self.username})"
        if self.api_key and self.username is not None:
            parts[-1] += f" ({ENV_USERNAME} ignored: the API key is preferred)"
        if self.url.startswith("https://"):
            tls = "verify" if self.verify_certs else "no verification"
            if self.verify_certs and self.ca_file:
                tls += f", CA {self.ca_file}"
            if self.client_cert:
                tls += ", client certificate"
            parts.append(f"tls={tls}")
        parts.append(f"job_name={self.job_name}")
        return " ".join(parts)

    def key(self) -> tuple:
        """What makes two configurations ship through the same connection (not the index)."""
        return (
            self.url,
            self.username,
            self.password,
            self.api_key,
            self.verify_certs,
            self.ca_file,
            self.client_cert,
            self.client_key,
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments for ``elasticsearch.Elasticsearch`` (the shipper adds its node class)."""
        kw: dict[str, Any] = {
            "hosts": [self.url],
            "request_timeout": self.total_timeout,
            "max_retries": 0,  # the shipper retries, with backoff, without blocking anyone
            "retry_on_timeout": False,
        }
        if self.api_key:
            kw["api_key"] = self.api_key
        elif self.username is not None:
            kw["basic_auth"] = (self.username, self.password or "")
        if self.url.startswith("https://"):
            kw["verify_certs"] = self.verify_certs
            if not self.verify_certs:
                kw["ssl_show_warn"] = False
            if self.ca_file:
                kw["ca_certs"] = self.ca_file
            if self.client_cert:
                kw["client_cert"] = self.client_cert
            if self.client_key:
                kw["client_key"] = self.client_key
        return kw


def parse_url(raw: str) -> tuple[str, str | None, str | None]:
    """(base URL, user, password) from the original's bulk endpoint or a base URL.

    ``https://es:9200/_bulk`` and ``https://es:9200`` give ``https://es:9200``; ``http://h/_bulk``
    gives ``http://h:80`` (the default port of the scheme, as curl used); ``http://h:9200/es/_bulk``
    keeps ``/es`` as a path prefix. Credentials in the URL are taken out (and never shown)."""
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise EsConfigError(f"{ENV_URL}: not a URL ({_shown(raw)}): {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise EsConfigError(f"{ENV_URL} must start with http:// or https:// (got {_shown(raw)})")
    host = parts.hostname
    if not host:
        raise EsConfigError(f"{ENV_URL} has no host ({_shown(raw)})")
    if parts.query or parts.fragment:
        raise EsConfigError(f"{ENV_URL} must not have a query or fragment ({_shown(raw)})")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    path = parts.path.rstrip("/")
    if path.endswith("/_bulk"):
        path = path[: -len("/_bulk")].rstrip("/")
    if "/_" in path + "/":
        raise EsConfigError(f"{ENV_URL}: give the server's URL or its /_bulk endpoint (got {_shown(raw)})")
    netloc = f"[{host}]" if ":" in host else host
    base = f"{parts.scheme}://{netloc}:{port}{path}"
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return base, user, password


def _shown(raw: str) -> str:
    """RAW with any user:password@ taken out: for messages."""
    return re.sub(r"//[^/@]*@", "//***@", raw)


def check_index(index: str) -> None:
    """Elasticsearch's rules for index names, said before anything is sent."""
    problem = None
    if index != index.lower():
        problem = "must be lowercase"
    elif set(index) & _INDEX_BAD_CHARS:
        problem = 'must not contain \\ / * ? " < > | , # : or spaces'
    elif index[0] in "-_+":
        problem = "must not start with -, _ or +"
    elif index in (".", ".."):
        problem = "cannot be . or .."
    elif len(index.encode()) > 255:
        problem = "is longer than 255 bytes"
    if problem:
        raise EsConfigError(f"{ENV_INDEX}={index!r} {problem}")


def _readable(name: str, value: str | None) -> str | None:
    if not value:
        return None
    path = os.path.expanduser(value)
    if not os.path.isfile(path):
        raise EsConfigError(f"{name}: no such file: {value}")
    if not os.access(path, os.R_OK):
        raise EsConfigError(f"{name}: cannot read {value}")
    return path

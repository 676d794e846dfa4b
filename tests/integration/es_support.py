# SPDX-License-Identifier: MIT
"""Elasticsearch for the tests: the real server (scripts/es.sh) and nginx in front of it.

- ``es_url`` (session): ``$TRACKLEAK_TEST_ES_URL`` (exported by scripts/test.sh, which starts the
  server before pytest and stops it after); without it, the fixture runs ``scripts/es.sh start``
  itself and stops the server at the end of the session if it started it. When that fails the
  tests ERROR with the reason: never a silent skip.
- ``es`` (session): an ``elasticsearch.Elasticsearch`` client on it; ``es_index`` (function): a
  fresh index name, deleted after the test.
- ``Nginx``: Debian's nginx on loopback in front of the server, with a self-signed CA, a server
  certificate for 127.0.0.1 and a client certificate made here by openssl. Two listeners (plain
  HTTP and TLS), each with these path prefixes (the prefix is stripped before the server sees it):
  ``/open/`` anyone; ``/basic/`` basic auth (``USER``/``PASSWORD``); ``/apikey/`` only
  ``Authorization: ApiKey API_KEY``; ``/mtls/`` (TLS only) a client certificate signed by the CA;
  ``/flaky/`` what ``set_mode`` says: normal, ``429`` (every request answered 429), ``503``, or
  ``slow`` (answers trickle at 20 bytes/s). ``stop()``/``start()`` take it away and bring it back
  on the same ports. ``nginx`` (session) is one shared instance; tests that stop it make their own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ES_SH = REPO_ROOT / "scripts" / "es.sh"
ENV_URL = "TRACKLEAK_TEST_ES_URL"

USER = "tl-user"
PASSWORD = "S3cret-pa55word-xyz"
API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
WRONG_PASSWORD = "Wr0ng-pa55word-abc"


def _answers(url: str, timeout: float = 5.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/_cluster/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def es_url() -> str:
    url = os.environ.get(ENV_URL, "").rstrip("/")
    if url:
        if not _answers(url):
            pytest.fail(
                f"{ENV_URL}={url} does not answer (scripts/test.sh starts it with scripts/es.sh)",
                pytrace=False,
            )
        yield url
        return
    # Run by hand (no scripts/test.sh): start it ourselves, stop it when we started it.
    was_running = subprocess.run(["bash", str(ES_SH), "status"], capture_output=True, text=True)
    proc = subprocess.run(["bash", str(ES_SH), "start"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail(
            "Elasticsearch is needed and could not be started with scripts/es.sh start "
            f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}\nRun scripts/setup.sh (JDK, Maven), or export "
            f"{ENV_URL} to a running server.",
            pytrace=False,
        )
    url = proc.stdout.strip().splitlines()[-1].rstrip("/")
    yield url
    if was_running.returncode != 0:
        subprocess.run(["bash", str(ES_SH), "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def es(es_url):
    from elasticsearch import Elasticsearch

    client = Elasticsearch(es_url, request_timeout=30)
    yield client
    client.close()


@pytest.fixture
def es_index(es, request) -> str:
    name = "tl-test-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:80]
    name = f"{name}-{os.getpid()}"
    es.options(ignore_status=404).indices.delete(index=name)
    yield name
    es.options(ignore_status=404).indices.delete(index=name)


def search_all(es, index: str, **body) -> list[dict]:
    es.indices.refresh(index=index)
    body.setdefault("size", 10000)
    return [h["_source"] for h in es.search(index=index, **body)["hits"]["hits"]]


def wait_count(es, index: str, at_least: int, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    n = 0
    while time.monotonic() < end:
        if es.indices.exists(index=index):
            es.indices.refresh(index=index)
            n = es.count(index=index)["count"]
            if n >= at_least:
                return n
        time.sleep(0.2)
    return n


# --------------------------------------------------------------------------- nginx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by
    the CA; and a second CA that signed nothing (for "not trusted")."""
    d.mkdir(parents=True, exist_ok=True)
    days = "2"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        days,
        "-subj",
        "/CN=TrackLeak test CA",
        cwd=d,
    )
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "other-ca.key",
        "-out",
        "other-ca.pem",
        "-days",
        days,
        "-subj",
        "/CN=Some other CA",
        cwd=d,
    )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        days,
        "-extfile",
        "server.ext",
        cwd=d,
    )
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=trackleak-client",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.pem",
        "-days",
        days,
        "-extfile",
        "client.ext",
        cwd=d,
    )
    return {name: d / f"{name}.pem" for name in ("ca", "other-ca", "server", "client")} | {
        "server_key": d / "server.key",
        "client_key": d / "client.key",
    }


NGINX_CONF = """
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    client_max_body_size 100m;
    upstream es {{ server 127.0.0.1:{es_port}; keepalive 4; }}
    map_hash_bucket_size 256;
    map $http_authorization $apikey_ok {{ default 0; "ApiKey {api_key}" 1; }}
    server {{
        listen 127.0.0.1:{http_port};
        {locations}
    }}
    server {{
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {server_pem};
        ssl_certificate_key {server_key};
        ssl_client_certificate {ca_pem};
        ssl_verify_client optional;
        {locations}
        location /mtls/ {{
            if ($ssl_client_verify != SUCCESS) {{ return 403; }}
            {proxy}
        }}
    }}
}}
"""

LOCATIONS = """
        location /open/ {{ {proxy} }}
        location /basic/ {{
            auth_basic "trackleak test";
            auth_basic_user_file {prefix}/htpasswd;
            {proxy}
        }}
        location /apikey/ {{
            if ($apikey_ok = 0) {{ return 401; }}
            {proxy}
        }}
        location /flaky/ {{
            default_type application/json;
            # nginx's own answers carry the header the client checks (the server's carry their own)
            set $product "";
            add_header X-Elastic-Product $product always;
            if (-f {prefix}/mode-429) {{
                set $product Elasticsearch;
                return 429 '{{"error":{{"type":"es_rejected_execution_exception",\
"reason":"test: rejected"}},"status":429}}';
            }}
            if (-f {prefix}/mode-503) {{
                set $product Elasticsearch;
                return 503 '{{"error":{{"type":"unavailable","reason":"test: unavailable"}},"status":503}}';
            }}
            if (-f {prefix}/mode-slow) {{ set $limit_rate 20; }}
            {proxy}
        }}
"""

PROXY = (
    'proxy_pass http://es/; proxy_http_version 1.1; proxy_set_header Connection ""; '
    'proxy_set_header Authorization "";'
)


class Nginx:
    def __init__(self, prefix: Path, es_url: str) -> None:
        self.exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(self.exe):
            pytest.fail(
                "nginx not found: scripts/setup.sh installs it (apt-get install nginx)", pytrace=False
            )
        if shutil.which("openssl") is None:
            pytest.fail("openssl not found (apt-get install openssl)", pytrace=False)
        self.prefix = prefix
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(prefix / "pki")
        self.http_port = free_port()
        self.https_port = free_port()
        es_port = int(es_url.rsplit(":", 1)[1])
        hashed = subprocess.run(
            ["openssl", "passwd", "-apr1", PASSWORD], capture_output=True, text=True, check=True
        ).stdout.strip()
        (prefix / "htpasswd").write_text(f"{USER}:{hashed}\n")
        locations = LOCATIONS.format(prefix=prefix, proxy=PROXY)
        conf = NGINX_CONF.format(
            user="user root;" if os.geteuid() == 0 else "",
            prefix=prefix,
            es_port=es_port,
            http_port=self.http_port,
            https_port=self.https_port,
            api_key=API_KEY,
            server_pem=self.pki["server"],
            server_key=self.pki["server_key"],
            ca_pem=self.pki["ca"],
            locations=locations,
            proxy=PROXY,
        )
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen | None = None
        self.start()

    def url(self, path: str, tls: bool = False) -> str:
        if tls:
            return f"https://127.0.0.1:{self.https_port}/{path.strip('/')}"
        return f"http://127.0.0.1:{self.http_port}/{path.strip('/')}"

    def start(self) -> None:
        with open(self.prefix / "stderr.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                log = (self.prefix / "stderr.log").read_text(errors="replace")
                pytest.fail(f"nginx exited ({self.proc.returncode}): {log[-2000:]}", pytrace=False)
            try:
                for port in (self.http_port, self.https_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail("nginx did not listen within 15 s", pytrace=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown: connections closed at once
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def set_mode(self, mode: str | None) -> None:
        for m in ("429", "503", "slow"):
            (self.prefix / f"mode-{m}").unlink(missing_ok=True)
        if mode:
            (self.prefix / f"mode-{mode}").write_text("")


@pytest.fixture(scope="session")
def nginx(es_url, tmp_path_factory):
    proxy = Nginx(tmp_path_factory.mktemp("nginx"), es_url)
    yield proxy
    proxy.stop()


@pytest.fixture
def own_nginx(es_url, tmp_path):
    """An nginx of this test's own (it may stop and start it)."""
    proxy = Nginx(tmp_path / "nginx", es_url)
    yield proxy
    proxy.stop()

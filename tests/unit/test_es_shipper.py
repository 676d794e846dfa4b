# SPDX-License-Identifier: MIT
"""The shipper without a server: nothing listens on its port. It never blocks the caller, keeps
its queue bounded (batches and bytes), counts every drop, says the cause once without secrets,
keeps its close deadline; and the client it makes has the 5 s / 10 s timeouts."""

from __future__ import annotations

import socket
import time

from trackleak.es.config import EsConfig
from trackleak.es.run import RunShipping
from trackleak.es.schema import DocMeta
from trackleak.es.shipper import Shipper, make_client
from trackleak.table import Row

PASSWORD = "top-Secret-42"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connection refused


def config(**env) -> EsConfig:
    return EsConfig.from_env(
        {
            "ENABLE_ELASTICSEARCH": "1",
            "ELASTICSEARCH_URL": f"http://127.0.0.1:{closed_port()}/_bulk",
            "ELASTICSEARCH_USERNAME": "bob",
            "ELASTICSEARCH_PASSWORD": PASSWORD,
            **env,
        }
    )


def rows(n: int, tag: str = "f") -> list[Row]:
    return [Row(f"{tag}{i}", "app.py", i + 1, count=1, total_bytes=100) for i in range(n)]


META = DocMeta(timestamp=1.7e9, elapsed_seconds=1, hostname="h")


def test_server_down_never_blocks_and_stays_bounded():
    said: list[str] = []
    shipper = Shipper(config(TRACKLEAK_ES_QUEUE_BATCHES="100"), say=said.append)
    worst = 0.0
    for b in range(3000):
        t = time.perf_counter()
        shipper.submit(rows(20, f"b{b}_"), META)
        worst = max(worst, time.perf_counter() - t)
    # Blocking would mean waiting for the network (connect timeout 5 s, retries with backoff);
    # serializing 20 documents takes well under a millisecond, scheduling noise on a loaded
    # machine tens of milliseconds: half a second separates the two without timing the code.
    assert worst < 0.5
    assert shipper.stats.max_queued_batches <= 100
    time.sleep(0.3)
    stats = shipper.close(deadline=1.0)
    assert stats.shipped == 0
    assert stats.submitted == 60000 and stats.dropped == 60000  # every one counted
    refused = [s for s in said if "connection refused" in s]
    assert len(refused) == 1, said  # said once
    assert sum("queue full" in s for s in said) == 1
    assert all(PASSWORD not in s for s in said)


def test_queue_bounded_in_bytes_too():
    shipper = Shipper(config(), max_queue_bytes=64 * 1024)
    big = [Row("f" * 2000, "x.py", i + 1) for i in range(10)]
    for _ in range(200):
        shipper.submit(big, META)
    assert shipper.stats.max_queued_bytes <= 64 * 1024 + 30 * 1024  # at most one batch over
    shipper.close(0.5)


def test_close_keeps_its_deadline():
    shipper = Shipper(config(), max_backoff=30.0)
    shipper.submit(rows(5), META)
    time.sleep(0.3)  # failing and backing off
    t = time.monotonic()
    stats = shipper.close(deadline=1.0)
    assert time.monotonic() - t < 2.0
    assert stats.dropped == 5


def test_client_timeouts():
    client = make_client(config())
    node = client.transport.node_pool.all()[0]
    assert node.pool.timeout.connect_timeout == 5.0
    assert node.pool.timeout.read_timeout == 10.0
    client.close()


def test_run_shipping_interval_and_final():
    said: list[str] = []
    sent = []

    class FakeShipper:
        def submit(self, rows, meta):
            sent.append((len(list(rows)), meta))

        def close(self, deadline):
            pass

        def summary(self):
            return "summary"

    ship = RunShipping(
        config(NOMAD_JOB_NAME="svc"),
        command=["python3", "app.py", "a b"],
        interval=2.0,
        say=said.append,
        shipper=FakeShipper(),
    )
    for t in (0.5, 1.0, 2.0, 3.0, 4.1):
        ship(rows(3), {"final": False, "time": 100 + t, "started": 100, "python": "3.11.7"})
    assert [round(m.elapsed_seconds, 3) for _, m in sent] == [2.0, 4.1]
    ship.final(rows(4), at=105, started=100, python="3.11.7")
    ship.close()
    n, meta = sent[-1]
    assert n == 4 and meta.elapsed_seconds == 5 and meta.job_name == "svc"
    assert meta.command == "python3 app.py 'a b'"
    assert said == ["trackleak: elasticsearch: summary"]


def test_bulk_action_is_create():
    """Documents go as bulk "create" (what a data stream takes; on a plain index the same as
    "index" with an automatic id). tests/integration/test_es_setup.py ships into a data stream."""
    from trackleak.es.shipper import _create_action

    assert _create_action('{"a":1}') == ({"create": {}}, '{"a":1}')

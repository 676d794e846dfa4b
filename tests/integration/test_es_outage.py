# SPDX-License-Identifier: MIT
"""Elasticsearch going away and coming back, 429s, 5xx and a slow server: the profiler and its
target never wait, memory stays bounded, drops are counted and said, shipping resumes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from es_support import es, es_index, es_url, nginx, own_nginx, search_all, wait_count  # noqa: F401
from helpers import FIXTURES

from trackleak.es.config import EsConfig
from trackleak.es.schema import DocMeta
from trackleak.es.shipper import Shipper
from trackleak.table import Row

APP = FIXTURES / "es_leaky.py"


def test_server_gone_mid_run_then_back(tmp_path, own_nginx, es, es_index):  # noqa: F811
    """nginx (the only way to the server) is stopped 3 s into a 14 s run and started again 5 s
    later: the target keeps its pace, trackleak run says the cause once, counts what it dropped
    (a queue of 2 batches), and ships again, documents of after the outage included."""
    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if not k.startswith(("TRACKLEAK_", "ELASTICSEARCH_"))
    }
    env.update(
        {
            "ENABLE_ELASTICSEARCH": "1",
            "ELASTICSEARCH_URL": own_nginx.url("open") + "/_bulk",
            "ELASTICSEARCH_INDEX": es_index,
            "TRACKLEAK_DUMP_INTERVAL": "1",
            "TRACKLEAK_ES_QUEUE_BATCHES": "2",
        }
    )
    exe = str(Path(sys.executable).parent / "trackleak")
    proc = subprocess.Popen(
        [exe, "run", "-q", str(APP), "14"],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_count(es, es_index, 1, timeout=10) > 0, "nothing shipped before the outage"
        me = psutil.Process(proc.pid)
        rss_before = me.memory_info().rss
        own_nginx.stop()
        stopped = time.time()
        time.sleep(5)
        rss_during = me.memory_info().rss
        own_nginx.start()
        restarted = time.time()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    # the target ran at its own pace throughout (a 5 ms sleep per iteration)
    gap = float(out.split("max_gap=")[1].split()[0])
    assert gap < 0.5, out
    refused = [line for line in err.splitlines() if "connection refused" in line and "shipped to" not in line]
    assert len(refused) == 1, err
    assert refused[0].startswith("trackleak: elasticsearch: " + own_nginx.url("open"))
    assert "shipping again" in err, err
    summary = [line for line in err.splitlines() if "document(s) shipped to" in line]
    assert len(summary) == 1 and "dropped" in summary[0], err
    assert rss_during - rss_before < 20 * 1024 * 1024  # bounded: a 2-batch queue

    docs = search_all(es, es_index, query={"term": {"function": "leaky_list_append"}})
    stamps = sorted(d["timestamp"] for d in docs)
    assert any(s < stopped for s in stamps), stamps
    assert any(s > restarted for s in stamps), (stamps, restarted)


def _shipper(nginx, es_index, **changes):  # noqa: F811
    config = EsConfig.from_env(
        {
            "ENABLE_ELASTICSEARCH": "1",
            "ELASTICSEARCH_URL": nginx.url("flaky"),
            "ELASTICSEARCH_INDEX": es_index,
        }
    )
    config = dataclasses.replace(config, **changes)
    said: list[str] = []
    return Shipper(config, say=said.append, max_backoff=1.0), said


# The longest a submit() may take: a submit that waited for the server would wait for a backoff
# (>= 0.5 s here) or a timeout (1-2 s); one that does not can still lose the GIL to the shipper's
# thread for a few switch intervals (5 ms each) on a loaded machine.
NO_WAIT_S = 0.25


def _submit(shipper, n_batches, docs=10):
    """Submit N_BATCHES batches; the longest submit() call, in seconds."""
    worst = 0.0
    for b in range(n_batches):
        rows = [Row(f"f{b}_{i}", "app.py", i + 1, count=1, total_bytes=100) for i in range(docs)]
        t = time.perf_counter()
        shipper.submit(rows, DocMeta(time.time(), float(b), "host"))
        worst = max(worst, time.perf_counter() - t)
    return worst


@pytest.mark.parametrize("mode", ["429", "503"])
def test_pushback_retried_with_backoff_then_shipped(nginx, es, es_index, mode):  # noqa: F811
    nginx.set_mode(mode)
    try:
        shipper, said = _shipper(nginx, es_index)
        assert _submit(shipper, 5) < NO_WAIT_S  # never waits for the server
        time.sleep(2.5)
        assert shipper.stats.shipped == 0 and shipper.stats.retries >= 2
        assert len([s for s in said if mode in s]) == 1, said  # said once
        assert shipper.stats.max_queued_batches <= 5
    finally:
        nginx.set_mode(None)
    assert shipper.flushed(20)
    stats = shipper.close()
    assert stats.shipped == 50 and stats.dropped == 0, (stats, said)
    assert any("shipping again" in s for s in said)
    assert wait_count(es, es_index, 50) == 50


def test_slow_server_times_out_without_blocking(nginx, es, es_index):  # noqa: F811
    """Answers trickle at 20 bytes/s: each request times out (here 1 s connect / 2 s total, to keep
    the test short; 5 s / 10 s by default), is retried, and meanwhile the queue stays at its bound
    (3 batches) by dropping the oldest, counted."""
    nginx.set_mode("slow")
    try:
        shipper, said = _shipper(nginx, es_index, connect_timeout=1.0, total_timeout=2.0, queue_batches=3)
        worst = 0.0
        for _ in range(10):
            worst = max(worst, _submit(shipper, 1))
            time.sleep(0.3)
        assert worst < NO_WAIT_S
        time.sleep(1)
        assert any("timed out" in s for s in said), said
        assert shipper.stats.max_queued_batches <= 3
        assert shipper.stats.dropped >= 50  # 10 batches, at most 3 queued and 1 in flight
        assert any("queue full" in s for s in said)
    finally:
        nginx.set_mode(None)
    assert shipper.flushed(20)
    stats = shipper.close()
    assert stats.shipped >= 10 and stats.shipped + stats.dropped == 100, stats
    # a request that timed out may still have been indexed (at least once, not exactly once)
    assert wait_count(es, es_index, stats.shipped) >= stats.shipped


def test_close_keeps_its_deadline_when_the_server_is_slow(nginx, es_index):  # noqa: F811
    nginx.set_mode("slow")
    try:
        shipper, _said = _shipper(nginx, es_index, connect_timeout=1.0, total_timeout=30.0)
        _submit(shipper, 3)
        time.sleep(0.5)
        t = time.monotonic()
        stats = shipper.close(deadline=2.0)
        assert time.monotonic() - t < 3.5
        assert stats.dropped == 30 and stats.shipped == 0
    finally:
        nginx.set_mode(None)

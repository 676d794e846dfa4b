# SPDX-License-Identifier: MIT
"""Shipping throughput into an Elasticsearch: documents/s through trackleak.es.Shipper.

    bash scripts/es.sh start
    .venv/bin/python bench/es_throughput.py --url "$(bash scripts/es.sh url)" [--docs 50000] [--batch 500]

Submits DOCS documents as one table of DOCS sites (split into bulk requests of BATCH), waits
until all are acknowledged, and prints documents/s and the submit() time (what a caller pays).
"""

from __future__ import annotations

import argparse
import time

from trackleak.es.config import EsConfig
from trackleak.es.schema import DocMeta
from trackleak.es.shipper import Shipper
from trackleak.table import Row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--docs", type=int, default=50000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--index", default="trackleak-bench")
    args = ap.parse_args()
    config = EsConfig.from_env(
        {
            "ENABLE_ELASTICSEARCH": "1",
            "ELASTICSEARCH_URL": args.url,
            "ELASTICSEARCH_INDEX": args.index,
            "TRACKLEAK_ES_QUEUE_BATCHES": "100000",
        }
    )
    from elasticsearch import Elasticsearch

    es = Elasticsearch(args.url)
    es.options(ignore_status=404).indices.delete(index=args.index)
    shipper = Shipper(config, say=print, batch_docs=args.batch)
    rows = [
        Row(
            f"function_{i}",
            f"/srv/app/module_{i % 97}.py",
            i % 2000 + 1,
            count=i,
            total_bytes=i * 512,
            sample_count=i % 50,
            sample_total_bytes=i * 10,
            live_bytes=i * 256,
            pid=1000 + i % 8,
        )
        for i in range(args.docs)
    ]
    meta = DocMeta(time.time(), 300, "bench-host", "bench", "python3 app.py", "3.11.2")
    t0 = time.perf_counter()
    shipper.submit(rows, meta)
    t_submit = time.perf_counter() - t0
    assert shipper.flushed(600), "not flushed in 600 s"
    dt = time.perf_counter() - t0
    stats = shipper.close()
    es.indices.refresh(index=args.index)
    n = es.count(index=args.index)["count"]
    print(
        f"{stats.shipped} documents in {dt:.2f} s: {stats.shipped / dt:.0f} documents/s "
        f"({stats.requests} bulk requests of <= {args.batch}); submit() took {t_submit * 1000:.0f} ms; "
        f"index holds {n}"
    )
    es.options(ignore_status=404).indices.delete(index=args.index)


if __name__ == "__main__":
    main()

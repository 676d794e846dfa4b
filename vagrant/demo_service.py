# SPDX-License-Identifier: MIT
"""A long-running demo service for the lab VM: handles a fake request every 50 ms.

    python3 demo_service.py --name orders --leak     # keeps 2 KiB of every request forever
    python3 demo_service.py --name billing           # frees everything it allocates

Standard library only; runs until it is stopped (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

_kept: list[bytes] = []


def handle(request_id: int, leak: bool) -> int:
    body = json.dumps({"id": request_id, "items": list(range(200))}).encode()
    payload = bytes(2048) + body
    if leak:
        _kept.append(payload)  # the leak: every request's payload stays reachable
    return len(payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--leak", action="store_true")
    parser.add_argument("--period", type=float, default=0.05)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{args.name}: serving (leak={args.leak})", flush=True)
    request_id = 0
    while True:
        request_id += 1
        handle(request_id, args.leak)
        time.sleep(args.period)


if __name__ == "__main__":
    sys.exit(main())

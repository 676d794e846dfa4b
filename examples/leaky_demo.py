# SPDX-License-Identifier: MIT
"""TrackLeak's bundled demo: a small program with known leaks and known healthy code.

Run it under the profiler (the README's first command does this through scripts/demo.sh):

    .venv/bin/trackleak run examples/leaky_demo.py [--seconds 3] [--rounds 30]

It runs a fixed number of rounds (``--rounds``, default 30) spread over about
``--seconds`` (default 3; 0 runs them back to back). Every round calls each pattern
below once with the same amount of work, so two runs with the same ``--rounds`` make
the same allocations. Only the standard library is used. It exits 0.

Each pattern is one function, and its allocation sits alone on one line, so a
profiler's (function, file, line) points at that line. What a profiler should show:

| function             | pattern                                       | expected retention |
|----------------------|-----------------------------------------------|--------------------|
| leaky_list_append    | 1 KiB strings appended to a global list       | ~100 % (leak)      |
| leaky_cache          | dict cache with no eviction (512 B payloads)  | ~100 % (leak)      |
| string_format_leak   | time.strftime + f-strings kept in a log list  | high (leak)        |
| record_event         | one helper, two callers: handle_upload keeps  | ~50 %: the call    |
|                      | its 2 KiB events, handle_ping drops them      | paths tell which   |
| warning_spam         | warnings.warn() on every call, "always" shown | low/medium         |
| healthy_allocation   | 4 KiB buffers allocated and freed             | ~0 % (healthy)     |
| realloc_growth       | bytearray.extend growth, freed on return      | ~0 % (realloc)     |
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from typing import TextIO

# Work per round. At the defaults (30 rounds) the leaks retain about 40 MiB in all.
LIST_ITEMS_PER_ROUND = 500
CACHE_ITEMS_PER_ROUND = 500
LOG_LINES_PER_ROUND = 500
WARNINGS_PER_ROUND = 200
HEALTHY_ALLOCS_PER_ROUND = 500
REALLOC_CHUNKS_PER_ROUND = 256
EVENTS_PER_ROUND = 250  # per caller of record_event

LEAKED_ITEM_SIZE = 1024
EVENT_SIZE = 2048
CACHE_PAYLOAD_SIZE = 512
HEALTHY_BUFFER_SIZE = 4096
REALLOC_CHUNK = b"A" * 1024

# ---------------------------------------------------------------------------
# Leak 1: a global list that only grows.
# ---------------------------------------------------------------------------
leaked_items: list[str] = []
_next_item = 0


def leaky_list_append(count: int = LIST_ITEMS_PER_ROUND) -> None:
    """Append 1 KiB strings to a global list that is never trimmed."""
    global _next_item
    for _ in range(count):
        _next_item += 1
        # A new 1 KiB string each time (a constant like "x" * 1024 would be folded
        # by the compiler into one shared object and allocate nothing).
        item = str(_next_item).zfill(LEAKED_ITEM_SIZE)
        leaked_items.append(item)


# ---------------------------------------------------------------------------
# Leak 2: a cache with no eviction policy.
# ---------------------------------------------------------------------------
session_cache: dict[str, dict[str, object]] = {}
_next_session = 0


def leaky_cache(count: int = CACHE_ITEMS_PER_ROUND) -> None:
    """Insert sessions into a dict cache whose keys never repeat and are never evicted."""
    global _next_session
    for _ in range(count):
        _next_session += 1
        payload = bytearray(CACHE_PAYLOAD_SIZE)
        session_cache[f"user:{_next_session % 997}:session:{_next_session}"] = {
            "payload": payload,
            "seq": _next_session,
        }


# ---------------------------------------------------------------------------
# Leak 3: formatted log lines kept forever.
# ---------------------------------------------------------------------------
log_lines: list[str] = []
_next_request = 0


def string_format_leak(count: int = LOG_LINES_PER_ROUND) -> None:
    """Format a timestamped log line with time.strftime and an f-string, and keep it."""
    global _next_request
    for _ in range(count):
        _next_request += 1
        # A fixed point in time (not the clock) keeps the output deterministic;
        # strftime still allocates its C buffer on every call.
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1_700_000_000 + _next_request))
        line = f"[{stamp}] request {_next_request} processed in {_next_request * 0.001:.3f}s"
        log_lines.append(line)


# ---------------------------------------------------------------------------
# Leak 4: a helper shared by two callers, only one of which keeps what it makes.
# The row is record_event's line, half kept; its call paths say which caller keeps it.
# ---------------------------------------------------------------------------
audit_trail: list[bytes] = []


def record_event(kind: str, keep: bool) -> bytes:
    """Encode an event (a library helper); keep it in the audit trail when asked."""
    event = kind.encode().ljust(EVENT_SIZE, b".")
    if keep:
        audit_trail.append(event)
    return event


def handle_upload(count: int = EVENTS_PER_ROUND) -> None:
    """Every upload is audited, and the trail is never trimmed: the leak."""
    for _ in range(count):
        record_event("upload", keep=True)


def handle_ping(count: int = EVENTS_PER_ROUND) -> int:
    """Pings are encoded the same way and dropped: healthy."""
    return sum(len(record_event("ping", keep=False)) for _ in range(count))


# ---------------------------------------------------------------------------
# warnings.warn() on every call: a hidden allocator inside CPython.
# ---------------------------------------------------------------------------
class SlowQueryWarning(UserWarning):
    """The demo's own warning category, so the "always" filter touches nothing else."""


_warning_sink = io.StringIO()


def _show_warning_quietly(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # Format it as Python would (that allocates too), but keep stderr clean.
    text = warnings.formatwarning(message, category, filename, lineno, line)
    _warning_sink.seek(0)
    _warning_sink.write(text)
    _warning_sink.truncate()


def warning_spam(count: int = WARNINGS_PER_ROUND) -> None:
    """Warn on every simulated database write; "always" makes each call do the full work."""
    for i in range(count):
        warnings.warn(f"db write {i} was slow", SlowQueryWarning, stacklevel=1)


# ---------------------------------------------------------------------------
# Healthy: allocate and free right away.
# ---------------------------------------------------------------------------
def healthy_allocation(count: int = HEALTHY_ALLOCS_PER_ROUND) -> int:
    """Allocate a 4 KiB buffer, touch it, drop it. Nothing is retained."""
    total = 0
    for i in range(count):
        scratch = bytearray(HEALTHY_BUFFER_SIZE)
        scratch[i % HEALTHY_BUFFER_SIZE] = 1
        total += len(scratch)
        del scratch
    return total


# ---------------------------------------------------------------------------
# Realloc growth: a bytearray extended chunk by chunk, freed on return.
# ---------------------------------------------------------------------------
def realloc_growth(chunks: int = REALLOC_CHUNKS_PER_ROUND) -> int:
    """Grow a buffer with bytearray.extend (realloc underneath); it is freed on return."""
    buf = bytearray()
    for _ in range(chunks):
        buf.extend(REALLOC_CHUNK)
    return len(buf)


# ---------------------------------------------------------------------------
def run_round() -> None:
    leaky_list_append()
    leaky_cache()
    string_format_leak()
    handle_upload()
    handle_ping()
    warning_spam()
    healthy_allocation()
    realloc_growth()


def retained_kib() -> int:
    items = sum(sys.getsizeof(s) for s in leaked_items)
    cache = len(session_cache) * CACHE_PAYLOAD_SIZE
    logs = sum(sys.getsizeof(s) for s in log_lines)
    events = sum(sys.getsizeof(e) for e in audit_trail)
    return (items + cache + logs + events) // 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="spread the rounds over about this many seconds (default 3; 0 = no pauses)")
    parser.add_argument("--rounds", type=int, default=30,
                        help="number of rounds; each calls every pattern once (default 30)")
    args = parser.parse_args(argv)
    if args.seconds < 0:
        parser.error("--seconds must be >= 0")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("always", category=SlowQueryWarning)
    warnings.showwarning = _show_warning_quietly

    interval = args.seconds / args.rounds
    start = time.monotonic()
    report_every = max(1, args.rounds // 3)
    print(f"leaky_demo: {args.rounds} rounds over ~{args.seconds:g}s", flush=True)
    for r in range(1, args.rounds + 1):
        run_round()
        if r % report_every == 0 or r == args.rounds:
            print(f"leaky_demo: round {r}/{args.rounds}: {len(leaked_items)} leaked items, "
                  f"{len(session_cache)} cached sessions, {len(log_lines)} log lines, "
                  f"~{retained_kib()} KiB retained", flush=True)
        # Pace against the start time so the run lasts about --seconds in all.
        delay = start + r * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(f"leaky_demo: done in {time.monotonic() - start:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: MIT
"""The shipper: documents into Elasticsearch without ever blocking the caller.

``submit(docs)`` serializes the documents, cuts them into batches of at most ``batch_docs`` and
appends them to a bounded queue (``EsConfig.queue_batches`` batches, 100 by default, and at most
``max_queue_bytes`` bytes): when full, the oldest batch is evicted and its documents are counted
as dropped. It takes a lock for as long as a deque append; no I/O. One background thread sends the
batches in order through the official client's bulk helper (``helpers.streaming_bulk``, one bulk
request per batch), with 5 s connect / 10 s total timeouts.

Failures:
- the server unreachable, a timeout, 429 or 5xx: the batch is kept and retried with exponential
  backoff (0.5 s doubling to ``max_backoff``) while newer batches queue up behind it (the queue's
  bound holds: the oldest are evicted);
- documents of a bulk request refused one by one: those answered 429 are retried with the batch's
  backoff, the others are counted as failed, and the first such error is said;
- 401/403, a certificate that does not verify, another 4xx: the batch is dropped (counted) and the
  next one tried; nothing else can fix it.
Each cause is said once (``say``), clearly, naming it (connection refused, 401, certificate verify
failed, 429), with the URL and never a password or API key; when shipping works again after a
failure, that is said too. ``close(deadline)`` sends what is queued until the deadline, then
counts the rest as dropped.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .config import EsConfig
from .schema import DocMeta, add_missing_fields, documents, index_mapping

BATCH_DOCS = 500
MAX_QUEUE_BYTES = 32 * 1024 * 1024
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 8.0
CLOSE_DEADLINE = 10.0
RETRY_STATUS = (429, 500, 502, 503, 504)


@dataclass
class Batch:
    docs: list[str]  # serialized documents
    nbytes: int
    attempts: int = 0


@dataclass
class Stats:
    submitted: int = 0  # documents handed to submit()
    shipped: int = 0  # documents Elasticsearch accepted
    dropped: int = 0  # evicted from the full queue, dropped after a fatal error, or left at close
    failed: int = 0  # refused by Elasticsearch one by one (mapping errors and the like)
    requests: int = 0  # bulk requests sent
    retries: int = 0  # requests repeated after a retryable failure
    queued_batches: int = 0
    queued_bytes: int = 0
    max_queued_bytes: int = 0
    max_queued_batches: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _quiet_client_logs() -> None:
    # The transport (and urllib3) log every failed request at WARNING; with no handler configured
    # Python would print each on stderr (the "last resort" handler). We say what matters, once; an
    # application that configured logging still gets them.
    for name in ("elastic_transport", "elasticsearch", "urllib3"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())


def make_client(config: EsConfig):
    """The official client, with a 5 s connect / 10 s total timeout per request.

    urllib3's timeouts bound each connect and each read, not the whole answer: a server that
    trickles its answer a few bytes at a time would hold a request forever. So a timer shuts the
    node's sockets down when the total is over, and the request fails as a timeout."""
    import socket as _socket
    import weakref

    import urllib3
    from elastic_transport import ConnectionError as TransportConnectionError
    from elastic_transport import ConnectionTimeout, Urllib3HttpNode
    from elasticsearch import Elasticsearch

    connect, total = config.connect_timeout, config.total_timeout

    class _TimedNode(Urllib3HttpNode):
        def __init__(self, node_config):
            super().__init__(node_config)
            self.pool.timeout = urllib3.Timeout(connect=connect, read=total)
            conns = self._conns = weakref.WeakSet()
            base = self.pool.ConnectionCls

            class _Conn(base):
                def connect(self):
                    super().connect()
                    conns.add(self)

            self.pool.ConnectionCls = _Conn

        def _expire(self, fired: list) -> None:
            fired.append(True)
            for conn in list(self._conns):
                sock = getattr(conn, "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(_socket.SHUT_RDWR)

        def perform_request(self, method, target, body=None, headers=None, request_timeout=None, **_):
            # the pool's split timeout applies (a per-request float would be connect = read = total)
            fired: list = []
            timer = threading.Timer(total, self._expire, (fired,))
            timer.daemon = True
            timer.start()
            try:
                response = super().perform_request(method, target, body=body, headers=headers)
            except (TransportConnectionError, OSError) as exc:
                if fired and not isinstance(exc, ConnectionTimeout):
                    raise ConnectionTimeout(f"no complete answer within {total:g} s") from exc
                raise
            finally:
                timer.cancel()
            if fired:  # cut short: what was read is not the whole answer
                raise ConnectionTimeout(f"no complete answer within {total:g} s")
            return response

    _quiet_client_logs()
    return Elasticsearch(node_class=_TimedNode, **config.client_kwargs())


def classify(exc: BaseException) -> tuple[str, str, bool]:
    """(cause key, words, retryable) of a failed request."""
    from elastic_transport import ConnectionError as TransportConnectionError
    from elastic_transport import ConnectionTimeout, TlsError
    from elasticsearch import ApiError

    text = _chain_text(exc)
    if isinstance(exc, TlsError):
        low = text.lower()
        if "certificate verify failed" in low:
            detail = text.split("certificate verify failed", 1)[1].split("(_ssl")[0].strip(" :)")
            return (
                "tls-verify",
                f"TLS certificate verify failed ({detail or 'untrusted certificate'}): "
                "trust its CA with ELASTICSEARCH_CA_FILE, or ELASTICSEARCH_SSL_VERIFY=0",
                False,
            )
        return "tls", f"TLS error: {_short(text)}", False
    if isinstance(exc, ConnectionTimeout):
        return "timeout", "timed out (no complete answer in time): the server is slow or unreachable", True
    if isinstance(exc, TransportConnectionError):
        low = text.lower()
        if "connection refused" in low:
            return "refused", "connection refused (is Elasticsearch running there?)", True
        if "name or service not known" in low or "nodename nor servname" in low or "name resolution" in low:
            return "dns", "host name not found", True
        return "connection", f"cannot connect: {_short(text.split(' | ')[-1])}", True
    if isinstance(exc, ApiError):
        status = exc.meta.status if exc.meta is not None else 0
        reason = _api_reason(exc)
        if status == 401:
            return "401", f"401 Unauthorized: wrong credentials ({reason})", False
        if status == 403:
            return "403", f"403 Forbidden: the credentials may not write there ({reason})", False
        if status == 429:
            return "429", "429 Too Many Requests: the server pushes back; retrying with backoff", True
        if status in RETRY_STATUS:
            return f"{status}", f"{status} from the server ({reason}); retrying with backoff", True
        if status == 404:
            return "404", f"404 Not Found ({reason}): is the path of ELASTICSEARCH_URL right?", False
        return f"{status}", f"{status} from the server ({reason})", False
    return type(exc).__name__, f"{type(exc).__name__}: {_short(text)}", False


def _chain_text(exc: BaseException) -> str:
    """The messages of EXC and of what caused it (the transport wraps urllib3's, which wraps the
    socket's): "Connection error" alone does not say "connection refused"."""
    seen, parts, todo = set(), [], [exc]
    while todo and len(parts) < 8:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        parts.append(str(e))
        todo.extend(x for x in getattr(e, "errors", ()) or () if isinstance(x, BaseException))
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None)):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return " | ".join(p for p in parts if p)


def _api_reason(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return _short(f"{err.get('type', '')}: {err.get('reason', '')}".strip(": "))
        if err:
            return _short(str(err))
    if isinstance(body, str) and body.strip():
        title = re.search(r"<title>([^<]*)</title>", body, re.I)
        if title:
            return _short(title.group(1))
        return _short(" ".join(re.sub(r"<[^>]*>", " ", body).split()))
    msg = getattr(exc, "message", None)
    return msg if isinstance(msg, str) and msg and msg != "None" else "no Elasticsearch error in the answer"


def _create_action(doc: str) -> tuple[dict, str]:
    # "create", not "index": the only write a data stream takes (trackleak es setup may install
    # one); on a plain index it is the same as "index" with an automatic id
    return {"create": {}}, doc


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Shipper:
    def __init__(
        self,
        config: EsConfig,
        *,
        say: Callable[[str], None] | None = None,
        batch_docs: int = BATCH_DOCS,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        max_backoff: float = MAX_BACKOFF,
        client_factory: Callable[[EsConfig], Any] = make_client,
        create_index: bool = True,
    ) -> None:
        self.config = config
        self._say_fn = say
        self.batch_docs = max(1, batch_docs)
        self.max_batches = max(1, config.queue_batches)
        self.max_queue_bytes = max_queue_bytes
        self.max_backoff = max_backoff
        self._client_factory = client_factory
        self._client = None
        self._create_index = create_index
        self._index_ready = not create_index
        self.stats = Stats()
        self._queue: collections.deque[Batch] = collections.deque()
        self._cond = threading.Condition()
        self._wake = threading.Event()  # interrupts a backoff wait (close)
        self._closing = False
        self._deadline: float | None = None
        self._busy = False
        self._said: set[str] = set()
        self._failing: str | None = None  # the cause of the current outage
        self._thread = threading.Thread(target=self._run, name="trackleak-es-shipper", daemon=True)
        self._thread.start()

    # ---- the caller's side: never blocks

    def submit_docs(self, docs: Iterable[dict]) -> int:
        """Queue documents (dicts); returns how many were queued."""
        lines = [json.dumps(d, separators=(",", ":"), allow_nan=False) for d in docs]
        return self._enqueue(lines)

    def submit(self, rows, meta: DocMeta) -> int:
        """Queue one document per row."""
        return self.submit_docs(documents(rows, meta))

    def _enqueue(self, lines: list[str]) -> int:
        if not lines:
            return 0
        with self._cond:
            if self._closing:
                self.stats.submitted += len(lines)
                self.stats.dropped += len(lines)
                return 0
            self.stats.submitted += len(lines)
            for i in range(0, len(lines), self.batch_docs):
                chunk = lines[i : i + self.batch_docs]
                batch = Batch(chunk, sum(len(s) + 1 for s in chunk))
                self._queue.append(batch)
                self.stats.queued_bytes += batch.nbytes
                while len(self._queue) > self.max_batches or (
                    self.stats.queued_bytes > self.max_queue_bytes and len(self._queue) > 1
                ):
                    old = self._queue.popleft()
                    self.stats.queued_bytes -= old.nbytes
                    self.stats.dropped += len(old.docs)
                    self._say_once(
                        "queue-full",
                        f"queue full ({self.max_batches} batches): dropping the "
                        "oldest documents (counted; see the summary at the end)",
                    )
            self.stats.queued_batches = len(self._queue)
            self.stats.max_queued_batches = max(self.stats.max_queued_batches, len(self._queue))
            self.stats.max_queued_bytes = max(self.stats.max_queued_bytes, self.stats.queued_bytes)
            self._cond.notify()
        return len(lines)

    def close(self, deadline: float = CLOSE_DEADLINE) -> Stats:
        """Send what is queued, for at most DEADLINE seconds; the rest is counted as dropped."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + max(0.0, deadline)
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline) + 0.5)
        with self._cond:
            left = sum(len(b.docs) for b in self._queue)
            self._queue.clear()
            self.stats.dropped += left
            self.stats.queued_batches = 0
            self.stats.queued_bytes = 0
            self._wake.set()
        if self._thread.is_alive():
            self._say_once(
                "close-timeout", f"gave up at exit: a request was still in flight after {deadline:.0f} s"
            )
        return self.stats

    def flushed(self, timeout: float) -> bool:
        """Wait until the queue is empty and nothing is in flight (tests); True when it is."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._cond:
                if not self._queue and not self._busy:
                    return True
            time.sleep(0.05)
        return False

    def summary(self) -> str:
        s = self.stats
        text = (
            f"{s.shipped} document(s) shipped to {self.config.url} index {self.config.index} "
            f"in {s.requests} request(s)"
        )
        if s.retries:
            text += f", {s.retries} retried"
        if s.dropped:
            text += f"; {s.dropped} dropped (queue full, unrecoverable errors or left at exit)"
        if s.failed:
            text += f"; {s.failed} refused by Elasticsearch"
        if s.last_error and (s.dropped or s.failed):
            text += f"; last error: {s.last_error}"
        return text

    # ---- messages

    def _say(self, text: str) -> None:
        if self._say_fn is None:
            return
        with contextlib.suppress(Exception):  # a closed stderr must not kill the shipper
            self._say_fn(self.config.scrub(f"elasticsearch: {text}"))

    def _say_once(self, key: str, text: str) -> None:
        if key in self._said:
            return
        self._said.add(key)
        self._say(text)

    # ---- the thread

    def _client_or_none(self):
        if self._client is None:
            try:
                self._client = self._client_factory(self.config)
            except Exception as exc:  # bad TLS files and the like: nothing will ever ship
                self._say_once("client", f"cannot set up the client: {_short(exc)}")
                self.stats.last_error = _short(exc)
                return None
        return self._client

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                if self._closing and time.monotonic() >= (self._deadline or 0):
                    return
                batch = self._queue[0]
                self._busy = True
            try:
                done = self._send(batch)
            except Exception as exc:  # never die: count and go on
                self._say_once("bug", f"internal error, batch dropped: {type(exc).__name__}: {_short(exc)}")
                done = True
            with self._cond:
                self._busy = False
                if done and self._queue and self._queue[0] is batch:
                    self._queue.popleft()
                    self.stats.queued_bytes -= batch.nbytes
                    self.stats.queued_batches = len(self._queue)
            if not done:
                self._backoff(batch.attempts)

    def _backoff(self, attempts: int) -> None:
        delay = min(self.max_backoff, INITIAL_BACKOFF * (2 ** max(0, attempts - 1)))
        if self._closing and self._deadline is not None:
            delay = min(delay, max(0.0, self._deadline - time.monotonic()))
        self._wake.wait(delay)

    def _ensure_index(self, client) -> None:
        """Create the index with the mapping of ``schema`` when it does not exist (best effort: an
        existing index, or no right to create one, is left as it is)."""
        if self._index_ready:
            return
        from elasticsearch import ApiError

        try:
            client.indices.create(index=self.config.index, mappings=index_mapping())
        except ApiError as exc:
            status = exc.meta.status if exc.meta is not None else 0
            if status == 400 and ("resource_already_exists" in str(exc) or "data streams only" in str(exc)):
                self._update_mapping(client)  # an index, or a data stream's template
            elif status in (401,) or status in RETRY_STATUS:
                raise
            # 403 and others: maybe only allowed to write; the bulk request will tell
        self._index_ready = True

    def _update_mapping(self, client) -> None:
        """An existing index (or data stream) made by an older TrackLeak: add the new fields."""
        from elasticsearch import ApiError

        try:
            added = add_missing_fields(client, self.config.index)
        except ApiError as exc:
            status = exc.meta.status if exc.meta is not None else 0
            if status in (401,) or status in RETRY_STATUS:
                raise
            return  # 403: maybe only allowed to write; documents with new fields will say why
        if added:
            self._say(f"{self.config.index}: mapping updated for this TrackLeak (added {', '.join(added)})")

    def _send(self, batch: Batch) -> bool:
        """One attempt; True when the batch is done with (shipped, or dropped for good)."""
        from elasticsearch import helpers

        client = self._client_or_none()
        if client is None:
            self._drop(batch, "no client")
            return True
        batch.attempts += 1
        if batch.attempts > 1:
            self.stats.retries += 1
        retry: list[str] = []
        ok_count = 0
        try:
            self.stats.requests += 1
            self._ensure_index(client)
            results = helpers.streaming_bulk(
                client,
                batch.docs,
                index=self.config.index,
                chunk_size=len(batch.docs) + 1,
                max_chunk_bytes=max(batch.nbytes * 2 + 4096, 1 << 20),
                raise_on_error=False,
                raise_on_exception=True,
                max_retries=0,
                yield_ok=True,
                expand_action_callback=_create_action,
            )
            for doc, (ok, info) in zip(batch.docs, results):
                if ok:
                    ok_count += 1
                    continue
                item = next(iter(info.values())) if isinstance(info, dict) and info else {}
                status = item.get("status", 0) if isinstance(item, dict) else 0
                if status == 429:
                    retry.append(doc)
                else:
                    self.stats.failed += 1
                    err = item.get("error") if isinstance(item, dict) else item
                    if isinstance(err, dict):
                        err = f"{err.get('type', '')}: {err.get('reason', '')}"
                    words = f"document refused ({status}): {_short(err)}"
                    self.stats.last_error = words
                    self._say_once("item", words + " (the first; all are counted)")
        except Exception as exc:
            key, words, retryable = classify(exc)
            self.stats.last_error = words
            if key not in self._said:
                self._said.add(key)
                self._say(f"{self.config.url}: {words}")
            self._failing = self._failing or key
            if retryable:
                return False
            self._drop(batch, words)
            return True
        self.stats.shipped += ok_count
        if self._failing is not None and ok_count:
            self._say(f"shipping again to {self.config.url} (after: {self._failing})")
            self._failing = None
            self._said.discard("refused")
            self._said.discard("timeout")
            self._said.discard("429")
        if retry:
            self._say_once(
                "429-items", f"{len(retry)} document(s) answered 429 (too many requests): retrying them"
            )
            with self._cond:
                batch.docs = retry
                old = batch.nbytes
                batch.nbytes = sum(len(s) + 1 for s in retry)
                if self._queue and self._queue[0] is batch:
                    self.stats.queued_bytes -= old - batch.nbytes
            return False
        return True

    def _drop(self, batch: Batch, why: str) -> None:
        with self._cond:
            self.stats.dropped += len(batch.docs)


# --------------------------------------------------------------------------- for other sinks

_SHIPPERS: dict[tuple, Shipper] = {}
_SHIPPERS_LOCK = threading.Lock()


def shipper_for(config: EsConfig, *, say: Callable[[str], None] | None = None) -> Shipper:
    """One shipper per destination (connection settings and index), made on first use."""
    key = (*config.key(), config.index)
    with _SHIPPERS_LOCK:
        shipper = _SHIPPERS.get(key)
        if shipper is None:
            shipper = _SHIPPERS[key] = Shipper(config, say=say)
        return shipper


def ship_rows(rows, meta: DocMeta, config: EsConfig | None = None, *, say=None) -> int:
    """Queue one document per row (``trackleak.table.Row``) for CONFIG's index (default: the
    original variables of this process's environment; nothing when ENABLE_ELASTICSEARCH is off).
    Returns at once with the number of documents queued; a host agent calls this for each process
    it watches, with that process's configuration (its index, its NOMAD_JOB_NAME in META)."""
    if config is None:
        config = EsConfig.from_env()
        if config is None:
            return 0
    return shipper_for(config, say=say).submit(rows, meta)


def close_all(deadline: float = CLOSE_DEADLINE) -> dict[str, Stats]:
    """Flush and stop every shipper ``ship_rows`` made (sharing DEADLINE); their stats by index."""
    with _SHIPPERS_LOCK:
        shippers = list(_SHIPPERS.values())
        _SHIPPERS.clear()
    end = time.monotonic() + deadline
    out = {}
    for shipper in shippers:
        out[shipper.config.index] = shipper.close(max(0.0, end - time.monotonic()))
    return out

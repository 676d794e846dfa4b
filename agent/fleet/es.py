# SPDX-License-Identifier: MIT
"""The host agent ships to Elasticsearch: a sink of ``FleetDaemon`` over ``trackleak.es``.

The agent's own environment says whether and where (the original variables, parsed by
``EsConfig.from_env``: ``ENABLE_ELASTICSEARCH``, ``ELASTICSEARCH_URL``, credentials, TLS files,
``ELASTICSEARCH_INDEX``). Each watched process contributes only what the daemon read from its
environment (``meta["processes"][pid]["elasticsearch"]``: ``ENABLE_ELASTICSEARCH``,
``ELASTICSEARCH_INDEX``, ``NOMAD_JOB_NAME``; never a URL or a credential):

- **index**: the process's ``ELASTICSEARCH_INDEX`` when it sets one, else the agent's;
- **job_name**: the process's ``NOMAD_JOB_NAME``, else ``unknown`` (the original default; the
  agent's own ``NOMAD_JOB_NAME`` is the agent's job, never put on another process's documents);
- **which processes**: every watched one (``--es-ship all``, the default), or only those that
  set ``ENABLE_ELASTICSEARCH=1`` themselves (``--es-ship requested``: the original semantics,
  where each service decided).

One document per site and process per interval (``trackleak.es.schema``), ``hostname`` the
agent's ``--host-name``; a process that exited is shipped once more with its final rows, then no
longer. Documents go through one ``trackleak.es.shipper.Shipper`` per index (its bounded queue and
thread: the daemon only serializes and appends); at most ``MAX_INDICES`` indices besides the
agent's, beyond which a process goes to the agent's index (said once). ``close()`` flushes
within the shipper's deadline and says, per index, what was shipped and what was dropped.

When the agent does not ship and a process asks (``ENABLE_ELASTICSEARCH=1`` in its environment),
``NotShippingNotice`` says so once: its rows are not shipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from typing import Callable, Mapping

from ..es.config import DEFAULT_JOB_NAME, ENV_ENABLE, ENV_INDEX, ENV_JOB_NAME, ENV_URL, EsConfig
from ..es.schema import DocMeta, documents
from ..es.shipper import CLOSE_DEADLINE, MAX_QUEUE_BYTES, Shipper

SHIP_ALL = "all"
SHIP_REQUESTED = "requested"
SHIP_CHOICES = (SHIP_ALL, SHIP_REQUESTED)
MAX_INDICES = 16
QUEUE_BYTES = MAX_QUEUE_BYTES  # what every index's queue holds at most, together (one batch each beyond)
PREFIX = "trackleak-agent: elasticsearch: "


def _stderr_say(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr, flush=True)


def asked(proc: Mapping) -> bool:
    """The process set ENABLE_ELASTICSEARCH=1 in its own environment."""
    return (proc.get("elasticsearch") or {}).get(ENV_ENABLE) == "1"


class FleetShipping:
    """``sink(rows, meta)`` for ``FleetDaemon``; ``close()`` at the end (the daemon calls it)."""

    __name__ = "elasticsearch"

    def __init__(
        self,
        config: EsConfig,
        *,
        ship: str = SHIP_ALL,
        say: Callable[[str], None] = _stderr_say,
        shipper_factory: Callable[[EsConfig], Shipper] | None = None,
        close_deadline: float = CLOSE_DEADLINE,
    ) -> None:
        if ship not in SHIP_CHOICES:
            raise ValueError(f"ship must be one of {SHIP_CHOICES}")
        self.config = config
        self.ship = ship
        self.say = say
        self.close_deadline = close_deadline
        self._factory = shipper_factory or (
            lambda cfg: Shipper(cfg, say=lambda text: self.say(f"trackleak-agent: {text}"))
        )
        self.shippers: dict[str, Shipper] = {}
        self._final_sent: set[tuple[int, float | None]] = set()
        self._said: set[str] = set()
        self.closed = False

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        ship: str = SHIP_ALL,
        say: Callable[[str], None] = _stderr_say,
    ) -> FleetShipping | None:
        """None when the agent's ENABLE_ELASTICSEARCH is off; EsConfigError for a bad setting."""
        config = EsConfig.from_env(environ)
        if config is None:
            return None
        shipping = cls(config, ship=ship, say=say)
        which = (
            "every watched process"
            if ship == SHIP_ALL
            else f"processes with {ENV_ENABLE}=1 in their environment"
        )
        where = config.describe().rsplit(" job_name=", 1)[0]  # job names are the processes'
        say(
            f"{PREFIX}shipping {which} every interval: {where} "
            f"(a process's own {ENV_INDEX} and {ENV_JOB_NAME} win)"
        )
        return shipping

    # ---- the sink

    def __call__(self, rows, meta: Mapping) -> None:
        if self.closed:
            return
        procs = meta.get("processes") or {}
        by_pid: dict[int, list] = {}
        for row in rows:
            by_pid.setdefault(row.pid, []).append(row)
        now = float(meta.get("time") or time.time())
        host = meta.get("host") or ""
        out: dict[str, list[dict]] = {}
        for pid, prows in by_pid.items():
            proc = procs.get(str(pid))
            if proc is None:
                continue
            incarnation = (pid, proc.get("started"))
            if proc.get("exited"):
                if incarnation in self._final_sent:
                    continue  # its final rows went out already
                self._final_sent.add(incarnation)
            if self.ship == SHIP_REQUESTED and not asked(proc):
                continue
            env = proc.get("elasticsearch") or {}
            index = self._index_for(pid, env.get(ENV_INDEX) or self.config.index)
            self._shipper(index)  # made now: the cap counts it
            started = proc.get("started")
            doc_meta = DocMeta(
                timestamp=now,
                elapsed_seconds=max(0.0, now - started)
                if started
                else float(meta.get("elapsed_seconds") or 0),
                hostname=host,
                job_name=env.get(ENV_JOB_NAME) or DEFAULT_JOB_NAME,
                command=proc.get("command") or None,
                python=proc.get("python") or None,
            )
            out.setdefault(index, []).extend(documents(prows, doc_meta))
        for index, docs in out.items():
            self._shipper(index).submit_docs(docs)

    def _index_for(self, pid: int, index: str) -> str:
        others = len([i for i in self.shippers if i != self.config.index])
        if index in self.shippers or index == self.config.index or others < MAX_INDICES:
            return index
        if "too-many" not in self._said:
            self._said.add("too-many")
            self.say(
                f"{PREFIX}more than {MAX_INDICES} indices asked for (pid {pid}: {index}): "
                f"such processes go to the agent's index {self.config.index}"
            )
        return self.config.index

    def _shipper(self, index: str) -> Shipper:
        shipper = self.shippers.get(index)
        if shipper is None:
            shipper = self.shippers[index] = self._factory(dataclasses.replace(self.config, index=index))
            # One memory budget for the agent, shared by its indices (not one each: 17 queues of
            # 32 MiB while Elasticsearch is down would be 544 MiB on every host).
            share = max(QUEUE_BYTES // len(self.shippers), 1)
            for each in self.shippers.values():
                each.max_queue_bytes = share
        return shipper

    # ---- the end

    def close(self, deadline: float | None = None) -> dict:
        """Flush every index's queue within DEADLINE (shared), then one summary line per index;
        the stats by index."""
        if self.closed:
            return {}
        self.closed = True
        end = time.monotonic() + (self.close_deadline if deadline is None else deadline)
        stats = {}
        for index, shipper in self.shippers.items():
            stats[index] = shipper.close(max(0.0, end - time.monotonic()))
            self.say(f"{PREFIX}{shipper.summary()}")
        if not self.shippers:
            self.say(f"{PREFIX}nothing to ship (no watched process had rows)")
        return stats


class NotShippingNotice:
    """The sink used when the agent does not ship: says once that a process asks for it."""

    __name__ = "elasticsearch-notice"

    def __init__(self, say: Callable[[str], None] = _stderr_say) -> None:
        self.say = say
        self.said = False

    def __call__(self, rows, meta: Mapping) -> None:
        if self.said:
            return
        for pid, proc in sorted((meta.get("processes") or {}).items()):
            if asked(proc) and proc.get("watched", True):
                self.said = True
                self.say(
                    f"{PREFIX}pid {pid} asks for shipping ({ENV_ENABLE}=1 in its environment) but this "
                    f"agent does not ship: set {ENV_ENABLE}=1 and {ENV_URL} (and credentials) in the "
                    "agent's environment. Its rows, and those of any other process that asks, are "
                    "not shipped."
                )
                return

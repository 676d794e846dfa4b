# SPDX-License-Identifier: MIT
"""How ``trackleak run`` ships: a sink of its session (trackleak.session), called after each read.

    shipping = RunShipping.from_env(environ, command=argv, dump_interval=..., say=...)  # None: off
    shipping(rows, {"final": False, "time": read_at, "started": t0, "python": "3.11.7"})
    shipping(rows, {"final": True, ...})                                  # the final table
    shipping.close()                                                      # flush, summary

``rows`` are one per site and process, annotated with growth. A document per site and process
every ``interval`` seconds (the original's rhythm: ``TRACKLEAK_DUMP_INTERVAL``, 300 s unless
set) and once more with the final table.
"""

from __future__ import annotations

import shlex
import socket
from typing import Callable, Iterable, Mapping, Sequence

from ..table import Row
from .config import EsConfig
from .schema import DocMeta
from .shipper import CLOSE_DEADLINE, Shipper

DEFAULT_INTERVAL = 300.0  # the shim's TRACKLEAK_DUMP_INTERVAL default


class RunShipping:
    ENV_SHIPPER = "TRACKLEAK_ES_SHIPPER"  # set in the child's environment: the shim's banner reads it
    SHIPPER = "trackleak-run"

    def __init__(
        self,
        config: EsConfig,
        *,
        command: Sequence[str],
        interval: float,
        say: Callable[[str], None],
        shipper: Shipper | None = None,
    ) -> None:
        self.config = config
        self.command = shlex.join(list(command)) if command else None
        self.interval = max(0.0, interval)
        self.say = say
        self.hostname = socket.gethostname()
        self.shipper = shipper or Shipper(config, say=lambda text: say(f"trackleak: {text}"))
        self.last_sent: float | None = None
        self.closed = False

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        command: Sequence[str],
        dump_interval: float | None,
        say: Callable[[str], None],
    ) -> RunShipping | None:
        """None when ENABLE_ELASTICSEARCH is off; EsConfigError for a bad setting (before the run)."""
        config = EsConfig.from_env(environ)
        if config is None:
            return None
        interval = dump_interval
        if interval is None:
            try:
                interval = float(environ.get("TRACKLEAK_DUMP_INTERVAL") or DEFAULT_INTERVAL)
            except ValueError:
                interval = DEFAULT_INTERVAL
        shipping = cls(config, command=command, interval=interval, say=say)
        say(f"trackleak: elasticsearch: shipping every {interval:g} s and at exit: {config.describe()}")
        return shipping

    def _meta(self, at: float, started: float, python: str | None) -> DocMeta:
        return DocMeta(
            timestamp=at,
            elapsed_seconds=max(0.0, at - started),
            hostname=self.hostname,
            job_name=self.config.job_name,
            command=self.command,
            python=python,
        )

    __name__ = "elasticsearch"

    def __call__(self, rows: Iterable[Row], meta: Mapping) -> None:
        at, started, python = float(meta["time"]), float(meta["started"]), meta.get("python")
        if meta.get("final"):
            self.final(rows, at=at, started=started, python=python)
        else:
            self.tick(rows, at=at, started=started, python=python)

    def tick(self, rows: Iterable[Row], *, at: float, started: float, python: str | None) -> None:
        """After a read: ship the rows when an interval has passed since the last shipment."""
        if self.closed:
            return
        if self.last_sent is None:
            due = at - started >= self.interval
        else:
            due = at - self.last_sent >= self.interval
        if not due:
            return
        self.last_sent = at
        self.shipper.submit(list(rows), self._meta(at, started, python))

    def final(self, rows: Iterable[Row], *, at: float, started: float, python: str | None) -> None:
        """The final table (annotated rows, one per site and process)."""
        if not self.closed:
            self.shipper.submit(list(rows), self._meta(at, started, python))

    def close(self, deadline: float = CLOSE_DEADLINE) -> None:
        """Flush within DEADLINE seconds and say what was shipped and what was not."""
        if self.closed:
            return
        self.closed = True
        self.shipper.close(deadline)
        self.say(f"trackleak: elasticsearch: {self.shipper.summary()}")

# SPDX-License-Identifier: MIT
"""`trackleak run`: start a command with the shim preloaded, watch it, print the final table.

No Typer in here (the CLI in cli/commands/run.py only turns arguments into ``RunOptions``), so the
whole flow is testable and usable from Python::

    from trackleak.runner import RunOptions, Target, run
    status = run(RunOptions(Target("script", "app.py", ("--port", "8000"))))

What the child gets (``prepare``):
- argv: ``python3 SCRIPT ARGS`` / ``python3 -m MODULE ARGS`` / ``COMMAND ARGS``. The interpreter is
  ``--python`` or the first ``python3`` on the child's PATH, *not* the interpreter running
  trackleak (that is the tool's own venv, whose python is the distribution's). A wrapper script
  (a pyenv shim) is resolved to the binary it runs, so that only Python is preloaded.
- env: the shim first in ``LD_PRELOAD`` (the user's entries kept after it), ``TRACKLEAK_STARTUP_DELAY=0``
  unless set, ``TRACKLEAK_LOG_DIR`` a fresh private directory unless set, ``TRACKLEAK_QUIET=1``
  unless verbose, and the tunables given as options.

While it runs (``Session``): stdin/stdout/stderr are the child's; SIGINT is left to the child (the
terminal sends Ctrl-C to the whole foreground process group); SIGTERM and SIGHUP are forwarded.
The child also gets ``TRACKLEAK_HANDOFF``, the socket on which every preloaded process (forked or
exec'd) hands us a descriptor of its table as soon as it makes one (``trackleak.sources.handoff``):
we read those tables through our descriptors, so a process's table outlives it, however it ends.
Every ``interval`` seconds the handed-off tables are read, and the shared-memory segments of the
child's descendants that did not hand off are read through /proc; the result is shown on stderr (a
live view on a terminal, one line otherwise).

At the end: the final table is each process's final word, printed on stdout; ``--json`` writes it
with run metadata. One rule decides which source is a process's final word: a process that handed
off its table is read from that table (every table it handed off, one per exec, added up: each
starts from zero); the JSON-lines dumps are only for processes that never handed off (their exit
dump, else the newest of their last snapshot and their last interval dump). The return value is
the child's exit status (128+N if killed by N).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

from . import config, render, sampling
from .errors import UserError
from .es.run import RunShipping
from .history import History, pid_site_key
from .session import Final, Source, ViewOptions
from .session import Session as ProfilingSession
from .shim import shim_path
from .sources import dumpfile
from .sources.handoff import ENV_HANDOFF, HandoffTables, Listener
from .sources.shm import ShmError, Snapshot, find_segments, read_segment
from .table import SORT_KEYS, RetentionTable, Row, sorted_rows

DEFAULT_INTERPRETER = "python3"
FALLBACK_LOG_DIR = "/tmp/trackleak"  # where the shim writes when TRACKLEAK_LOG_DIR is unusable
RUN_FORMAT = "trackleak-run"
RUN_VERSION = 1
SHIM_DEFAULTS = {"sample_rate": config.default("sample_rate"), "min_size": config.default("min_size")}

ENV_SAMPLE_RATE = "TRACKLEAK_SAMPLE_RATE"
ENV_SAMPLE_BYTES = "TRACKLEAK_SAMPLE_BYTES"
ENV_MIN_SIZE = "TRACKLEAK_MIN_SIZE"
ENV_STACK_DEPTH = "TRACKLEAK_STACK_DEPTH"
ENV_SMALL_OBJECTS = "TRACKLEAK_SMALL_OBJECTS"
ENV_DUMP_INTERVAL = "TRACKLEAK_DUMP_INTERVAL"
ENV_STARTUP_DELAY = "TRACKLEAK_STARTUP_DELAY"
ENV_LOG_DIR = "TRACKLEAK_LOG_DIR"
ENV_JSON_LOG = "TRACKLEAK_JSON_LOG"
ENV_QUIET = "TRACKLEAK_QUIET"


@dataclass(frozen=True)
class Target:
    """What to run: ``script`` (a file), ``module`` (``-m``) or ``command`` (after ``--``)."""

    kind: str
    name: str
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("script", "module", "command"):
            raise ValueError(f"unknown target kind {self.kind!r}")
        object.__setattr__(self, "args", tuple(self.args))


@dataclass(frozen=True)
class RunOptions:
    """Every knob of `trackleak run` (None: keep the environment's value or the shim's default)."""

    target: Target
    python: str | None = None
    sample_rate: int | None = None
    sample_bytes: int | None = None
    min_size: int | None = None
    stack_depth: int | None = None  # TRACKLEAK_STACK_DEPTH: Python frames per sampled call stack
    small_objects: str | None = None  # TRACKLEAK_SMALL_OBJECTS: auto, 1 or 0
    dump_interval: int | None = None
    startup_delay: int | None = None
    log_dir: Path | None = None
    json_path: Path | None = None
    interval: float = config.default("interval", "run")
    top: int = config.default("top")
    sort: str = config.default("sort")
    verbose: bool = False
    live: bool | None = None  # None: a live view when stdout and stderr are terminals
    progress: bool = True  # False: no live view and no periodic lines (final table only)
    handoff: bool = True  # False: find the tables through /proc only (the original way)


@dataclass
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    private_log_dir: bool  # made by us: all of its content is ours, removed at the end
    jsonl_paths: list[Path]


# --------------------------------------------------------------------------- preparing


def _which(name: str, env: Mapping[str, str]) -> str | None:
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name, path=env.get("PATH", os.defpath))


def resolve_interpreter(python: str | None, env: Mapping[str, str]) -> str:
    name = python or DEFAULT_INTERPRETER
    found = _which(name, env)
    if found is None:
        if python:
            raise UserError(f"interpreter not found or not executable: {python}")
        raise UserError(f"{DEFAULT_INTERPRETER} not found on PATH; name an interpreter with --python PATH")
    return real_interpreter(found, env)


def real_interpreter(path: str, env: Mapping[str, str]) -> str:
    """The interpreter binary behind a wrapper script (pyenv and asdf shims are bash scripts).

    Preloading a shim script would also preload every bash, pyenv and sed process it starts, and
    the table would fill with them. Ask the wrapper, without the shim, which binary it runs.
    """
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != b"#!":
                return path
    except OSError:
        return path
    clean = {k: v for k, v in env.items() if k != "LD_PRELOAD"}
    try:
        proc = subprocess.run(
            [path, "-c", "import sys; print(sys.executable)"],
            env=clean,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return path
    real = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else ""
    if real and os.path.isabs(real) and os.access(real, os.X_OK):
        return real
    return path


def build_argv(opts: RunOptions, env: Mapping[str, str]) -> list[str]:
    target = opts.target
    if target.kind == "command":
        if opts.python:
            raise UserError("--python applies to a script or -m module; after -- name the program yourself")
        if _which(target.name, env) is None:
            raise UserError(f"command not found: {target.name}")
        return [target.name, *target.args]
    interpreter = resolve_interpreter(opts.python, env)
    if target.kind == "module":
        if not target.name:
            raise UserError("-m needs a module name")
        return [interpreter, "-m", target.name, *target.args]
    path = Path(target.name)
    if not path.exists():
        raise UserError(f"script not found: {target.name}")
    if path.is_dir() and not (path / "__main__.py").exists():
        raise UserError(f"{target.name} is a directory without __main__.py")
    return [interpreter, target.name, *target.args]


def preload_value(shim: str, existing: str | None) -> str:
    """The shim first, then the user's own entries (ld.so separates them by spaces or colons)."""
    entries = [e for e in (existing or "").replace(":", " ").split() if e and e != shim]
    return ":".join([shim, *entries])


def build_env(opts: RunOptions, base: Mapping[str, str], *, shim: str, log_dir: Path) -> dict[str, str]:
    env = dict(base)
    env["LD_PRELOAD"] = preload_value(shim, base.get("LD_PRELOAD"))
    if opts.startup_delay is not None:
        env[ENV_STARTUP_DELAY] = str(opts.startup_delay)
    elif ENV_STARTUP_DELAY not in base:
        # The original's 10 s default hides every allocation of a short script.
        env[ENV_STARTUP_DELAY] = "0"
    for value, name in (
        (opts.sample_rate, ENV_SAMPLE_RATE),
        (opts.sample_bytes, ENV_SAMPLE_BYTES),
        (opts.min_size, ENV_MIN_SIZE),
        (opts.stack_depth, ENV_STACK_DEPTH),
        (opts.small_objects, ENV_SMALL_OBJECTS),
        (opts.dump_interval, ENV_DUMP_INTERVAL),
    ):
        if value is not None:
            env[name] = str(value)
    env[ENV_LOG_DIR] = str(log_dir)
    if opts.verbose:
        env[ENV_QUIET] = "0"
    else:
        env.setdefault(ENV_QUIET, "1")
    return env


def prepare(
    opts: RunOptions,
    environ: Mapping[str, str] | None = None,
    *,
    shim: str | Path | None = None,
    make_temp_dir: Callable[[], str] = lambda: tempfile.mkdtemp(prefix="trackleak-run-"),
) -> LaunchPlan:
    """Check everything and work out argv and env; UserError for anything the user must fix."""
    base = dict(os.environ if environ is None else environ)
    if opts.interval <= 0:
        raise UserError("--interval must be positive")
    if opts.sort not in SORT_KEYS:
        raise UserError(f"--sort must be one of {', '.join(SORT_KEYS)}")
    argv = build_argv(opts, base)
    shim_str = str(shim if shim is not None else shim_path(base))
    if opts.json_path is not None:
        parent = Path(opts.json_path).expanduser().resolve().parent
        if not parent.is_dir():
            raise UserError(f"--json: directory does not exist: {parent}")
    log_dir_arg = opts.log_dir if opts.log_dir is not None else base.get(ENV_LOG_DIR)
    if log_dir_arg:
        log_dir, private = Path(log_dir_arg).expanduser(), False
    else:
        log_dir, private = Path(make_temp_dir()), True  # mkdtemp: mode 0700
    env = build_env(opts, base, shim=shim_str, log_dir=log_dir)
    json_log = base.get(ENV_JSON_LOG) or dumpfile.DEFAULT_JSON_LOG
    paths = [dumpfile.jsonl_path(log_dir, json_log)]
    if not private:
        # The shim falls back to /tmp/trackleak when the directory is not usable.
        paths.append(dumpfile.jsonl_path(FALLBACK_LOG_DIR, json_log))
    return LaunchPlan(argv=argv, env=env, log_dir=log_dir, private_log_dir=private, jsonl_paths=paths)


# --------------------------------------------------------------------------- running


def spawn(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
    """Start the child with our stdin/stdout/stderr (the one boundary tests patch)."""
    try:
        return subprocess.Popen(list(argv), env=dict(env))
    except FileNotFoundError:
        raise UserError(f"cannot run {argv[0]}: not found") from None
    except PermissionError:
        raise UserError(f"cannot run {argv[0]}: permission denied") from None
    except OSError as exc:
        raise UserError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def exit_status(returncode: int) -> int:
    """Popen's returncode as a shell reports it: -N (killed by signal N) becomes 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def _terminal_delivers_sigint() -> bool:
    """True when we are the foreground process group of our terminal: Ctrl-C reaches the child too."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def descendants(pid: int) -> list[int]:
    """PID and its live descendants (psutil), PID first."""
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid]


@dataclass
class _Seen:
    snapshot: Snapshot
    when: float


class LaunchSource(Source):
    """The child started with the shim, and every process it forks or execs (trackleak.session)."""

    prefix = "trackleak"

    def __init__(
        self,
        opts: RunOptions,
        plan: LaunchPlan,
        *,
        clock: Callable[[], float] = time.time,
        spawn: Callable[[Sequence[str], Mapping[str, str]], subprocess.Popen] = spawn,
    ) -> None:
        self.opts = opts
        self.plan = plan
        self.clock = clock
        self.spawn = spawn
        self.session: ProfilingSession | None = None
        self.snapshots: dict[int, _Seen] = {}  # tables read through /proc (no handoff), per pid
        self.tables = HandoffTables()  # tables handed off to us, per incarnation
        self.listener: Listener | None = None
        self.handoff_note: str | None = None  # why there is no handoff (for -v)
        self.live_table = RetentionTable()
        self.read_at = 0.0
        # Live bytes over time: per site (live view, ranking) and per process (JSON rows).
        self.history = History()
        self.pid_history = History(key=pid_site_key)
        self.shm_errors: dict[int, str] = {}
        self.started = 0.0
        self.ended_at = 0.0
        self.child: subprocess.Popen | None = None
        self.returncode: int | None = None

    # ---- the start and the end of the child

    def signals(self, session: ProfilingSession):
        return self._signals()

    def start(self, session: ProfilingSession) -> None:
        # Our handlers are in already (signals()): no window where Ctrl-C kills us, not the child;
        # exec resets caught signals to their defaults, so the child does not inherit them.
        self.session = session
        env = self._open_handoff(self.plan.env)
        self.started = self.clock()
        self.child = self.spawn(self.plan.argv, env)
        threading.Thread(target=self._wait_child, name="trackleak-child", daemon=True).start()

    def _wait_child(self) -> None:
        assert self.child is not None and self.session is not None
        self.returncode = self.child.wait()
        self.ended_at = self.clock()
        self.session.wake()

    def ended(self) -> str | None:
        return "the program exited" if self.returncode is not None else None

    def stop(self) -> None:
        if self.returncode is None and self.child is not None:  # only when the session failed
            self.returncode = self.child.wait()
            self.ended_at = self.clock()

    def close(self) -> None:
        self._close_handoff()

    # ---- the live side

    def poll(self) -> None:
        """Read the handed-off tables, and through /proc the segments of the descendants that did
        not hand theirs off, into the live table."""
        assert self.child is not None
        self.tables.refresh()
        held = self.tables.held_pids()
        pids = descendants(self.child.pid)
        known = set(pids) | held
        for pid in pids:
            if pid in held:
                continue  # read through our descriptor already
            try:
                segs = find_segments(pid)
                if not segs:
                    continue
                snap = read_segment(pid, segs[0])
            except ShmError as exc:
                self.shm_errors[pid] = str(exc)
                continue
            if snap.header.pid != pid and snap.header.pid in known:
                continue  # a child caught between fork() and mapping its own table: its parent's
            self.snapshots[pid] = _Seen(snap, self.clock())
        # The live bytes are those of the moment the tables were read: the point goes there, not
        # after the rows are made (naming native sites parses ELF files, the first time for ~1 s).
        self.read_at = self.clock()
        self.live_table = self._current_table()
        self._observe(self.live_table, at=self.read_at)

    def _proc_snapshot_counts(self, pid: int, seen: _Seen) -> bool:
        """A /proc snapshot counts unless a handed-off table covers that process: it does when the
        pid never handed off, or when it shows a later table (exec'd without handing off)."""
        latest = self.tables.latest_start(pid)
        return latest is None or seen.snapshot.header.start_time_ns > latest

    def _current_table(self) -> RetentionTable:
        table = RetentionTable()
        for rows in self.tables.rows_by_pid().values():
            for row in rows:
                table.add(row)
        for pid, seen in self.snapshots.items():
            if self._proc_snapshot_counts(pid, seen):
                for row in seen.snapshot.rows:
                    table.add(row)
        return table

    def pids(self) -> list[int]:
        return sorted(set(self.snapshots) | self.tables.pids())

    def _interval(self) -> int:
        """The sampling interval R of what we read (for the noise floor of growth)."""
        header = self.tables.header()
        if header is not None:
            return header.sample_interval
        for seen in self.snapshots.values():
            return seen.snapshot.header.sample_interval
        return sampling.interval_bytes(
            self.opts.sample_rate or SHIM_DEFAULTS["sample_rate"], self.opts.sample_bytes
        )

    def _observe(self, table: RetentionTable, at: float | None = None) -> None:
        """One point per site of TABLE's live bytes, at time AT (default: now)."""
        now = (self.clock() if at is None else at) - self.started
        interval = self._interval()
        self.history.observe(now, table.merged(), interval=interval)
        self.pid_history.observe(now, table, interval=interval)

    def rows(self) -> list[Row]:
        rows = [dataclasses.replace(r) for r in self.live_table]
        return self.pid_history.annotate(rows)

    def view_rows(self) -> list[Row]:
        return self.history.annotate(self.live_table.merged())

    def caption(self, rows: list[Row], elapsed: float) -> str:
        return f"trackleak live: {elapsed:.0f}s, pids {_pid_list(self.pids()) or '-'}, {len(rows)} sites"

    def python(self) -> str | None:
        header = self.tables.header()
        if header is None and self.snapshots:
            header = next(iter(self.snapshots.values())).snapshot.header
        return header.python if header is not None else None

    def meta(self, *, final: bool = False) -> dict:
        """For the sinks (trackleak.es.run.RunShipping): when the table was read, and by what."""
        at = max(self.ended_at, self.started) if final else (self.read_at or self.clock())
        return {"final": final, "time": at, "started": self.started, "python": self.python()}

    # ---- the handoff socket

    def _open_handoff(self, env: Mapping[str, str]) -> Mapping[str, str]:
        """Listen for the tables' descriptors; the child's env names the socket (TRACKLEAK_HANDOFF)."""
        if not self.opts.handoff:
            return {k: v for k, v in env.items() if k != ENV_HANDOFF}  # not an outer run's either
        try:
            self.listener = Listener(self.tables.offer, on_error=self.tables.error)
        except OSError as exc:
            # Not fatal: the tables are still found through /proc while their processes run.
            self.handoff_note = (
                f"no handoff socket ({exc.strerror or exc}): tables are read through /proc only"
            )
            if self.opts.verbose:
                self._say(f"trackleak: {self.handoff_note}")
            return {k: v for k, v in env.items() if k != ENV_HANDOFF}
        self.listener.start()
        if self.opts.verbose:
            self._say(f"trackleak: {ENV_HANDOFF}={self.listener.path}")
        return {**env, ENV_HANDOFF: self.listener.path}

    def _end_handoff(self) -> None:
        """Take what is still queued on the socket, read every table one last time, close them."""
        if self.listener is not None:
            self.listener.stop()
        self.tables.finish_all()

    def _close_handoff(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.tables.close()

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT: the child's business (forwarded only when no terminal sent it); TERM/HUP forwarded."""
        if not _is_main_thread():
            yield
            return
        tty_sends = _terminal_delivers_sigint()

        def forward(signum, _frame):
            if self.child is not None and self.child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.child.send_signal(signum)

        def on_sigint(signum, frame):
            if not tty_sends:
                forward(signum, frame)

        # Handlers (not SIG_IGN) so that exec in the child restores the defaults.
        previous = {}
        for sig, handler in ((signal.SIGINT, on_sigint), (signal.SIGTERM, forward), (signal.SIGHUP, forward)):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ---- the end
    def final_table(self) -> tuple[RetentionTable, dict]:
        """Each pid's final word, and what we know about the run (pids, sample rate, min size)."""
        self._end_handoff()
        log = dumpfile.load(self.plan.jsonl_paths)
        if not self.plan.private_log_dir:
            log.dumps = self._our_dumps(log.dumps)
        final = log.final()
        table = RetentionTable()
        sources: dict[int, str] = {}
        # A process that handed off its table: that table is its final word (frozen at exit as its
        # exit dump is, and there however it ended). The dumps are for the others.
        for pid, rows in self.tables.rows_by_pid().items():
            for row in rows:
                table.add(row)
            sources[pid] = "handoff"
        for pid in sorted(set(final) | set(self.snapshots)):
            dump = final.get(pid)
            seen = self.snapshots.get(pid)
            if self.tables.latest_start(pid) is not None:
                if seen is not None and self._proc_snapshot_counts(pid, seen):
                    for row in seen.snapshot.rows:  # a later table that was not handed off
                        table.add(row)
                    sources[pid] = "handoff + live snapshot"
                continue
            if dump is not None and (dump.is_exit or seen is None or dump.timestamp >= seen.when):
                table.replace_pid(pid, dump.rows)
                sources[pid] = "exit dump" if dump.is_exit else "interval dump"
            elif seen is not None:
                table.replace_pid(pid, seen.snapshot.rows)
                sources[pid] = "live snapshot"
        sample_rate = min_size = interval = None
        header = self.tables.header()
        if header is not None:
            sample_rate, min_size = header.sample_rate or None, header.min_size
            interval = header.sample_interval
        for dump in final.values():
            sample_rate = sample_rate or dump.sample_rate
            interval = dump.sample_interval if interval is None else interval
            min_size = dump.min_size if min_size is None else min_size
        for seen in self.snapshots.values():
            sample_rate = sample_rate or seen.snapshot.header.sample_rate or None
            interval = seen.snapshot.header.sample_interval if interval is None else interval
            min_size = seen.snapshot.header.min_size if min_size is None else min_size
        dropped = self.tables.dropped()  # handed-off tables, every incarnation
        for pid in sources:
            if sources[pid] == "handoff":
                continue
            dump = final.get(pid)
            if sources[pid] not in ("live snapshot", "handoff + live snapshot") and dump is not None:
                counts = dump.dropped
            else:
                h = self.snapshots[pid].snapshot.header
                counts = {
                    "sites": h.dropped_sites,
                    "samples": h.dropped_samples,
                    "recycled_sites": h.recycled_sites,
                }
            for name in DROP_NAMES:
                dropped[name] = dropped.get(name, 0) + int(counts.get(name, 0))
        folded = sources.pop(0, None)
        info = {
            "dropped": {name: dropped.get(name, 0) for name in DROP_NAMES},
            "pids": sorted(set(sources) | (self.tables.folded_pids if folded else set())),
            "sources": sources,
            "sample_rate": sample_rate or self.opts.sample_rate,
            "sample_interval": interval,
            "min_size": min_size if min_size is not None else self.opts.min_size,
            "bad_lines": log.bad_lines,
            "errors": log.errors,
            "handoff_rejected": self.tables.rejected,
            "handoff_errors": list(self.tables.errors),
        }
        return table, info

    def _our_dumps(self, dumps: list[dumpfile.Dump]) -> list[dumpfile.Dump]:
        """In a shared log directory: the dumps of this run only. Those written since we started by
        the child, by a process we saw live, or by a descendant of those (followed through ppid)."""
        assert self.child is not None
        recent = [d for d in dumps if d.timestamp >= self.started - 1.0]
        ours = {self.child.pid, *self.snapshots, *self.tables.pids()}
        grew = True
        while grew:
            grew = False
            for d in recent:
                if d.pid not in ours and d.ppid in ours:
                    ours.add(d.pid)
                    grew = True
        return [d for d in recent if d.pid in ours]

    def final(self, session: ProfilingSession) -> Final:
        assert self.returncode is not None
        status = exit_status(self.returncode)
        table, info = self.final_table()
        # The final word of each process is the last point of its series, at the time the child
        # ended (reading the log and naming native sites afterwards takes time, up to seconds).
        ended = max(self.ended_at, self.started)
        self._observe(table, at=ended)
        rows = self.history.annotate(table.merged())
        self.pid_history.annotate(table)
        head = []
        if info["handoff_rejected"] and self.opts.verbose:
            head.append(f"trackleak: refused {info['handoff_rejected']} handed-off table(s)")
            head += [f"trackleak:   {err}" for err in info["handoff_errors"]]
        if info["bad_lines"]:
            head.append(f"trackleak: skipped {info['bad_lines']} unreadable line(s) in the JSON-lines log")
            if self.opts.verbose:
                head += [f"trackleak:   {err}" for err in info["errors"]]
        if rows:
            pids = info["pids"]
            min_size = "?" if info["min_size"] is None else info["min_size"]
            shown = len(render.top_rows(rows, top=self.opts.top, sort=self.opts.sort))
            head.append(
                f"trackleak: {len(pids)} process(es) ({_pid_list(pids)}), "
                f"{describe_sampling(info['sample_interval'])}, min size {min_size} B, "
                f"exit status {status}; top {shown} by {self.opts.sort}"
            )
            lost = describe_dropped(info["dropped"])
            if lost:
                head.append(f"trackleak: {lost}")
        return Final(
            rows=rows,
            table=table,
            meta=self._meta(info, status),
            head=head,
            empty=self._nothing_message(),
            history=self.history,
            status=status,
            sink_rows=list(table),
            small_objects_untracked=next(
                (h.small_objects_advice for h in self._headers() if h.small_objects_untracked), False
            ),
            min_size=info["min_size"] or 0,
        )

    def _headers(self) -> list:
        """Every table header we read (handed off or through /proc)."""
        return self.tables.all_headers() + [seen.snapshot.header for seen in self.snapshots.values()]

    def _nothing_message(self) -> str:
        if not self.snapshots and not self.shm_errors and not self.tables.pids():
            return (
                "trackleak: no data: the shim never reported (the program may be statically linked or "
                "setuid, or it cleared LD_PRELOAD; or it ended before the start-up delay)"
            )
        if self.shm_errors and not self.snapshots and not self.tables.pids():
            return f"trackleak: no data: {next(iter(self.shm_errors.values()))}"
        return "trackleak: no allocation at or above the minimum size was recorded"

    def _meta(self, info: dict, status: int) -> dict:
        return {
            "format": RUN_FORMAT,
            "version": RUN_VERSION,
            "command": list(self.plan.argv),
            "started": round(self.started, 3),
            "ended": round(self.ended_at, 3),
            "exit_code": status,
            "sample_rate": info["sample_rate"] or SHIM_DEFAULTS["sample_rate"],
            "sample_interval": info["sample_interval"],
            "min_size": info["min_size"] if info["min_size"] is not None else SHIM_DEFAULTS["min_size"],
            "pids": info["pids"],
            "dropped": info["dropped"],
            "host": socket.gethostname(),
        }

    def _say(self, text: str) -> None:
        if self.session is not None:
            self.session.say(text)


def launch_session(
    opts: RunOptions,
    plan: LaunchPlan,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    sinks: list | None = None,
    spawn: Callable[[Sequence[str], Mapping[str, str]], subprocess.Popen] = spawn,
) -> ProfilingSession:
    """The session of `trackleak run`: its source is the launched child (call .run())."""
    source = LaunchSource(opts, plan, spawn=spawn)
    view = ViewOptions.of(opts)
    session = ProfilingSession(source, view, sinks=sinks, stdout=stdout, stderr=stderr)
    source.session = session
    return session


DROP_NAMES = ("sites", "samples", "recycled_sites")


def describe_dropped(dropped: Mapping[str, int]) -> str:
    """What the table could not show, in words ("" when nothing): never silent."""
    parts = []
    if dropped.get("sites"):
        parts.append(
            f"{dropped['sites']} allocation(s) not attributed (site table full; counted here, in no row)"
        )
    if dropped.get("samples"):
        parts.append(f"{dropped['samples']} sample(s) not kept (live set full: live bytes may be low)")
    if dropped.get("recycled_sites"):
        parts.append(f"{dropped['recycled_sites']} idle site(s) folded into '[other sites]' to make room")
    return "; ".join(parts)


def describe_sampling(interval: int | None) -> str:
    """ "sampling 1 per 50.0 KiB" / "every allocation sampled" / "sampling ?" (unknown)."""
    if interval is None:
        return "sampling ?"
    if interval == 0:
        return "every allocation sampled"
    return f"sampling 1 per {render.human_bytes(interval)}"


def _pid_list(pids: Sequence[int], shown: int = 8) -> str:
    head = ", ".join(map(str, pids[:shown]))
    return head + (f", ... {len(pids) - shown} more" if len(pids) > shown else "")


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


HISTORY_SITES = 50  # sites whose live-bytes series goes into the JSON document


def write_json(
    path: str | Path,
    table: RetentionTable,
    meta: dict,
    history: History | None = None,
    merged: list[Row] | None = None,
) -> None:
    """{"meta": {...}, "sites": [row, ...], "history": [...]}: rows per pid, likely leaks first;
    the live-bytes series of the top sites (merged over pids) for plotting. Atomic replace."""
    path = Path(path).expanduser()
    doc: dict = {"meta": meta, "sites": [row.to_json() for row in sorted_rows(table)]}
    if history is not None:
        top = sorted_rows(merged if merged is not None else table.merged())[:HISTORY_SITES]
        doc["history"] = history.to_json([r.key for r in top])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def run(
    opts: RunOptions,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    es_environ: Mapping[str, str] | None = None,
) -> int:
    """The whole `trackleak run`; returns the child's exit status. UserError before the start.
    ES_ENVIRON: Elasticsearch variables from a configuration file, under the environment's."""
    plan = prepare(opts, environ)
    session = launch_session(opts, plan, stdout=stdout, stderr=stderr)
    try:
        shipping = RunShipping.from_env(
            {**(es_environ or {}), **plan.env},
            command=plan.argv,
            dump_interval=opts.dump_interval,
            say=session.say,
        )
        if shipping is not None:
            plan.env[RunShipping.ENV_SHIPPER] = RunShipping.SHIPPER  # the shim's banner says who ships
            session.sinks.append(shipping)
        if opts.verbose:
            session.say(f"trackleak: running {' '.join(plan.argv)}")
            session.say(f"trackleak: LD_PRELOAD={plan.env['LD_PRELOAD']} TRACKLEAK_LOG_DIR={plan.log_dir}")
        return session.run()
    finally:
        if plan.private_log_dir:
            shutil.rmtree(plan.log_dir, ignore_errors=True)

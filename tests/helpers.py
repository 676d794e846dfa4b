# SPDX-License-Identifier: MIT
"""Helpers for the integration tests of the preload shim (tests/integration/test_shim_*.py).

- ``run_preloaded(python, script_or_code, ...)`` runs a Python script (a path, or source text
  written to a temporary file) under ``LD_PRELOAD=<shim>`` with a private log dir and returns a
  ``Result`` whose ``dumps`` are the parsed JSON lines the shim wrote (``profiler.jsonl``).
- ``run_command(argv, ...)`` does the same for any program (``/bin/sh``, a compiled C program).
- ``final_rows(dumps, pid=None)`` merges the rows of one process's last exit dump into
  ``trackleak.table.Row`` objects, one per site (function, file, line, native).
- ``find_row(rows, function=..., file_endswith=..., line=...)`` finds one site; when nothing matches,
  the assertion message shows the top rows the shim did produce.
- ``line_of(path, marker)`` finds the line of a ``# ALLOC: <marker>`` comment, so no test hard-codes
  a line number.
- ``assert_consistent(dumps)`` checks the invariants every dump must hold (field types, sampled
  bytes <= total, retention formula, null retention without samples, native rows at line 0).

The shim's contract (docs/design.md, issue 2): each process appends one JSON line per dump to
``$TRACKLEAK_LOG_DIR/profiler.jsonl``: ``{"format": "trackleak-dump", "version": 1, "pid", "ppid",
"timestamp", "reason": "interval"|"exit", "elapsed_seconds", "sample_rate", "min_size", "python",
"dropped", "sites": [...]}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from trackleak.table import Row
from trackleak.table import kept_pct as table_kept_pct

TESTS_DIR = Path(__file__).resolve().parent
FIXTURES = TESTS_DIR / "fixtures"
REPO_ROOT = TESTS_DIR.parent

DUMP_FORMAT = "trackleak-dump"
DUMP_VERSION = 1

# Variables of the caller's environment that would change what the target does or where the shim
# writes; every run starts without them and sets what it needs.
_SCRUB_PREFIXES = ("TRACKLEAK_", "ELASTICSEARCH_", "PYTHON")
_SCRUB_NAMES = {"LD_PRELOAD", "ENABLE_ELASTICSEARCH", "MEMORY_PROFILER_EVENTS", "NOMAD_JOB_NAME"}


# --------------------------------------------------------------------------- interpreters


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """One CPython found on this machine (see tests/conftest.py for the discovery)."""

    path: str
    version: str  # "3.12.1"
    version_info: tuple  # (3, 12, 1)
    static: bool  # no libpython*.so mapped: everything lives in the executable
    include: str  # sysconfig include dir (Python.h)
    ext_suffix: str  # ".cpython-312-x86_64-linux-gnu.so"
    free_threaded: bool = False  # a --disable-gil build (3.13t)

    @property
    def id(self) -> str:
        return self.version + ("t" if self.free_threaded else "") + ("-static" if self.static else "")

    @property
    def has_qualname(self) -> bool:
        """co_qualname exists from 3.11 on; before that the shim reports co_name."""
        return self.version_info[:2] >= (3, 11)

    def func(self, qualname: str) -> str:
        """The function name the shim must report for a function with this qualified name."""
        return qualname if self.has_qualname else qualname.rsplit(".", 1)[-1]

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return f"{self.path} ({self.id})"


# --------------------------------------------------------------------------- the shim


class ShimNotFound(RuntimeError):
    pass


def resolve_shim() -> Path:
    """``$TRACKLEAK_SO`` if set, else ``trackleak.shim.shim_path()``; ShimNotFound says why not."""
    override = os.environ.get("TRACKLEAK_SO")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ShimNotFound(f"TRACKLEAK_SO={override} does not name a file; build the shim first")
        return path.resolve()
    try:
        from trackleak.shim import shim_path
    except Exception as exc:  # the package is being written; say what is missing
        raise ShimNotFound(
            f"TRACKLEAK_SO is not set and trackleak.shim.shim_path() cannot be imported ({exc!r})"
        ) from exc
    try:
        path = Path(shim_path())
    except Exception as exc:
        raise ShimNotFound(f"TRACKLEAK_SO is not set and trackleak.shim.shim_path() failed: {exc}") from exc
    if not path.is_file():
        raise ShimNotFound(f"trackleak.shim.shim_path() returned {path}, which is not a file")
    return path.resolve()


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class Result:
    argv: list
    returncode: int
    stdout: str
    stderr: str
    dumps: list  # parsed JSON lines of the log, in file order
    pid: int  # the process we started (the main pid of its dumps)
    log_dir: Path
    json_log: Path  # the text table (original format)
    jsonl_log: Path
    seconds: float

    def rows(self, pid: int | None = None) -> list:
        """Merged rows of the exit dump of ``pid`` (default: the process we started)."""
        return final_rows(self.dumps, self.pid if pid is None else pid)

    def exit_dump(self, pid: int | None = None) -> dict:
        return exit_dump(self.dumps, self.pid if pid is None else pid)

    def describe(self, limit: int = 4000) -> str:
        """Everything a failure message needs: command, status, output tails, dump summary."""
        lines = [
            f"command: {' '.join(map(str, self.argv))}",
            f"returncode: {self.returncode}"
            + (f" (signal {-self.returncode})" if self.returncode < 0 else ""),
            f"stdout (tail): {self.stdout[-limit:]!r}",
            f"stderr (tail): {self.stderr[-limit:]!r}",
            f"dumps: {len(self.dumps)} "
            + ", ".join(
                f"pid={d.get('pid')}/{d.get('reason')}/{len(d.get('sites') or [])} sites"
                for d in self.dumps[:12]
            )
            + (" ..." if len(self.dumps) > 12 else ""),
        ]
        return "\n".join(lines)


def jsonl_name(json_log_name: str) -> str:
    """The JSON-lines file beside the text table: ``.json`` becomes ``.jsonl``, else append it."""
    if json_log_name.endswith(".json"):
        return json_log_name[: -len(".json")] + ".jsonl"
    return json_log_name + ".jsonl"


def base_env(
    shim: os.PathLike | str,
    log_dir: os.PathLike | str,
    *,
    sample_rate: int | None = 1,
    min_size: int | None = 0,
) -> dict:
    """The caller's environment without tracker settings, plus the contract's test defaults."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB_NAMES and not k.startswith(_SCRUB_PREFIXES)}
    env.update(
        {
            "LD_PRELOAD": str(shim),
            "TRACKLEAK_LOG_DIR": str(log_dir),
            "TRACKLEAK_STARTUP_DELAY": "0",
            "TRACKLEAK_QUIET": "1",
            "PYTHONDONTWRITEBYTECODE": "1",  # keep tests/fixtures free of __pycache__
            "PYTHONUNBUFFERED": "1",
        }
    )
    if sample_rate is not None:
        env["TRACKLEAK_SAMPLE_RATE"] = str(sample_rate)
    if min_size is not None:
        env["TRACKLEAK_MIN_SIZE"] = str(min_size)
    return env


def run_command(
    argv: Sequence[Any],
    *,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 60,
    shim: os.PathLike | str | None = None,
    log_dir: os.PathLike | str | None = None,
    sample_rate: int | None = 1,
    min_size: int | None = 0,
    cwd: os.PathLike | str | None = None,
    umask: int | None = None,
    stdin: str | None = None,
) -> Result:
    """Run any program preloaded with the shim; ``env`` overrides the defaults (None removes a name)."""
    shim = resolve_shim() if shim is None else shim
    log_dir = Path(tempfile.mkdtemp(prefix="tl-logs-")) if log_dir is None else Path(log_dir)
    full_env = base_env(shim, log_dir, sample_rate=sample_rate, min_size=min_size)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = str(value)
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv]

    def _preexec() -> None:
        if umask is not None:
            os.umask(umask)

    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=full_env,
        cwd=cwd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # so a timeout can kill forked children too
        preexec_fn=_preexec if umask is not None else None,
    )
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"timed out after {timeout}s (hang or deadlock under the shim?)\n"
            f"command: {' '.join(argv)}\nstdout (tail): {stdout[-3000:]!r}\nstderr (tail): {stderr[-3000:]!r}"
        ) from None
    seconds = time.monotonic() - started

    json_name = full_env.get("TRACKLEAK_JSON_LOG") or "profiler.json"
    json_log = log_dir / json_name
    jsonl_log = log_dir / jsonl_name(json_name)
    dumps = parse_dumps(jsonl_log)
    return Result(
        argv=argv,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        dumps=dumps,
        pid=proc.pid,
        log_dir=log_dir,
        json_log=json_log,
        jsonl_log=jsonl_log,
        seconds=seconds,
    )


def run_preloaded(
    python: Interpreter | os.PathLike | str,
    script_path_or_code: os.PathLike | str,
    *,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 60,
    args: Sequence[Any] = (),
    **kwargs: Any,
) -> Result:
    """Run ``python script.py *args`` under the shim.

    ``script_path_or_code``: a Path (or a string naming an existing ``.py`` file) is run as is;
    any other string is source text, written to ``snippet.py`` in a fresh temporary directory
    (so its frames have a real file name and line numbers). Extra keywords go to ``run_command``
    (``shim``, ``log_dir``, ``sample_rate``, ``min_size``, ``cwd``, ``umask``).
    """
    script = _script_path(script_path_or_code)
    return run_command([os.fspath(python), str(script), *args], env=env, timeout=timeout, **kwargs)


def _script_path(script_path_or_code: os.PathLike | str) -> Path:
    if isinstance(script_path_or_code, os.PathLike):
        return Path(script_path_or_code).resolve()
    text = str(script_path_or_code)
    if "\n" not in text and text.endswith(".py") and Path(text).is_file():
        return Path(text).resolve()
    work = Path(tempfile.mkdtemp(prefix="tl-script-"))
    path = work / "snippet.py"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- dumps and rows


def parse_dumps(path: os.PathLike | str) -> list:
    """Parse a JSON-lines log; a line that is not a complete dump object is an error, not skipped."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return []  # never read through a symlink: tests plant them to check the shim refuses them
    dumps = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{path}:{number}: not JSON ({exc}): {line[:300]!r}") from None
        if not isinstance(obj, dict) or obj.get("format") != DUMP_FORMAT:
            raise AssertionError(f"{path}:{number}: not a {DUMP_FORMAT} object: {line[:300]!r}")
        dumps.append(obj)
    return dumps


def _root_pid(dumps: Sequence[dict]) -> int:
    pids = {d.get("pid") for d in dumps}
    roots = sorted(p for p in pids if not any(d.get("pid") == p and d.get("ppid") in pids for d in dumps))
    if len(roots) != 1:
        raise AssertionError(f"cannot tell the main pid among {sorted(pids)} (roots {roots}); pass pid=")
    return roots[0]


def exit_dump(dumps: Sequence[dict], pid: int | None = None) -> dict:
    """The last dump with reason "exit" of ``pid`` (default: the one process not a child of another)."""
    if not dumps:
        raise AssertionError("the shim wrote no dump at all (profiler.jsonl missing or empty)")
    pid = _root_pid(dumps) if pid is None else pid
    mine = [d for d in dumps if d.get("pid") == pid]
    exits = [d for d in mine if d.get("reason") == "exit"]
    if not exits:
        seen = sorted({(d.get("pid"), d.get("reason")) for d in dumps}, key=str)
        raise AssertionError(f"no exit dump for pid {pid}; dumps seen (pid, reason): {seen}")
    return exits[-1]


def rows_of(dump: Mapping[str, Any]) -> list:
    """Rows of one dump, merged per site (several instructions of one line are one site)."""
    merged: dict = {}
    pid = dump.get("pid") if isinstance(dump.get("pid"), int) else 0
    for site in dump.get("sites") or []:
        row = Row.from_dict(site, source="preload", pid=pid)
        have = merged.get(row.key)
        if have is None:
            merged[row.key] = row
        else:
            have.add(row)
    return list(merged.values())


def final_rows(dumps: Sequence[dict], pid: int | None = None) -> list:
    """Merged rows of the exit dump of ``pid`` (default: the main process of these dumps)."""
    return rows_of(exit_dump(dumps, pid))


def format_rows(rows: Iterable[Row], limit: int = 25) -> str:
    rows = sorted(rows, key=lambda r: (-r.total_bytes, r.function))
    out = [
        f"{'function':<32} {'file':<40} {'line':>5} {'count':>8} {'total':>10} {'samples':>8} "
        f"{'s_total':>10} {'s_free':>10} {'ret%':>6} {'peak':>8} native"
    ]
    for r in rows[:limit]:
        ret = r.retention_pct
        out.append(
            f"{r.function[:32]:<32} {('…' + r.file[-39:]) if len(r.file) > 40 else r.file:<40} "
            f"{r.line:>5} {r.count:>8} {r.total_bytes:>10} {r.sample_count:>8} "
            f"{r.sample_total_bytes:>10} {r.sample_free_bytes:>10} "
            f"{'null' if ret is None else f'{ret:.1f}':>6} {r.peak_single:>8} {r.native}"
        )
    if len(rows) > limit:
        out.append(f"... {len(rows) - limit} more rows")
    return "\n".join(out)


def find_rows(
    rows: Iterable[Row],
    *,
    function: str | None = None,
    file_endswith: str | None = None,
    line: int | None = None,
    native: bool | None = None,
) -> list:
    return [
        r
        for r in rows
        if (function is None or r.function == function)
        and (file_endswith is None or r.file.endswith(file_endswith))
        and (line is None or r.line == line)
        and (native is None or r.native == native)
    ]


def find_row(
    rows: Iterable[Row],
    *,
    function: str | None = None,
    file_endswith: str | None = None,
    line: int | None = None,
    native: bool | None = None,
) -> Row:
    """The one site matching every given criterion (several matches are merged into one row).

    When nothing matches, fails with the criteria, the rows that match the function name or file
    alone (usually the tell: wrong line, wrong name, wrong file) and the top rows by bytes.
    """
    rows = list(rows)
    hits = find_rows(rows, function=function, file_endswith=file_endswith, line=line, native=native)
    if not hits:
        wanted = ", ".join(
            f"{k}={v!r}"
            for k, v in (
                ("function", function),
                ("file_endswith", file_endswith),
                ("line", line),
                ("native", native),
            )
            if v is not None
        )
        near = [
            r
            for r in rows
            if (function is not None and r.function == function)
            or (file_endswith is not None and r.file.endswith(file_endswith))
        ]
        msg = [f"no row with {wanted} among {len(rows)} rows"]
        if near:
            msg += ["rows with that function or file:", format_rows(near, limit=15)]
        msg += ["top rows by bytes:", format_rows(rows, limit=20)]
        raise AssertionError("\n".join(msg))
    row = dataclasses.replace(hits[0])
    for other in hits[1:]:
        row.add(other)
    return row


def describe_row(row: Row) -> str:
    return format_rows([row], limit=1)


def line_of(path: os.PathLike | str, marker: str) -> int:
    """Line number (1-based) of the line carrying ``# ALLOC: <marker>``; exactly one must exist."""
    pattern = re.compile(r"#\s*ALLOC:\s*" + re.escape(marker) + r"\s*$")
    lines = [n for n, text in enumerate(Path(path).read_text().splitlines(), 1) if pattern.search(text)]
    if len(lines) != 1:
        raise AssertionError(f"{path}: expected exactly one '# ALLOC: {marker}' marker, found lines {lines}")
    return lines[0]


# --------------------------------------------------------------------------- invariants


_DUMP_FIELDS = {
    "format",
    "version",
    "pid",
    "ppid",
    "timestamp",
    "reason",
    "elapsed_seconds",
    "sample_rate",
    "min_size",
    "python",
    "dropped",
    "sites",
}
_SITE_INT_FIELDS = (
    "line",
    "count",
    "total_bytes",
    "sample_count",
    "sample_total_bytes",
    "sample_free_bytes",
    "peak_single",
    "avg_size",
    "live_bytes",
    "live_count",
)


def dump_problems(dump: Mapping[str, Any]) -> list:
    """Every way ``dump`` breaks the contract (empty list: fine)."""
    problems = []
    missing = _DUMP_FIELDS - set(dump)
    if missing:
        problems.append(f"dump lacks fields {sorted(missing)}")
    if dump.get("version") != DUMP_VERSION:
        problems.append(f"version {dump.get('version')!r} != {DUMP_VERSION}")
    if dump.get("reason") not in ("interval", "exit"):
        problems.append(f"reason {dump.get('reason')!r}")
    for name in ("pid", "ppid", "sample_rate", "min_size"):
        if not isinstance(dump.get(name), int) or isinstance(dump.get(name), bool):
            problems.append(f"{name} {dump.get(name)!r} is not an integer")
    if not isinstance(dump.get("sites"), list):
        return [*problems, "sites is not a list"]
    for site in dump["sites"]:
        where = f"site {site.get('function')!r} {site.get('file')!r}:{site.get('line')!r}"
        for name in ("function", "file", "retention_pct", "native"):
            if name not in site:
                problems.append(f"{where}: no field {name!r}")
        bad = [
            n
            for n in _SITE_INT_FIELDS
            if not isinstance(site.get(n), int) or isinstance(site.get(n), bool) or site.get(n) < 0
        ]
        if bad:
            problems.append(f"{where}: fields {bad} are not non-negative integers")
            continue
        if site["sample_free_bytes"] > site["sample_total_bytes"]:
            problems.append(
                f"{where}: sample_free_bytes {site['sample_free_bytes']} > "
                f"sample_total_bytes {site['sample_total_bytes']}"
            )
        if site["sample_count"] > site["count"]:
            problems.append(f"{where}: sample_count {site['sample_count']} > count {site['count']}")
        if site["sample_total_bytes"] > site["total_bytes"]:
            problems.append(
                f"{where}: sample_total_bytes {site['sample_total_bytes']} > "
                f"total_bytes {site['total_bytes']}"
            )
        if site["peak_single"] > site["total_bytes"]:
            problems.append(f"{where}: peak_single {site['peak_single']} > total_bytes {site['total_bytes']}")
        if site["count"] and site["avg_size"] != site["total_bytes"] // site["count"]:
            problems.append(f"{where}: avg_size {site['avg_size']} != total_bytes // count")
        expected = table_kept_pct(site["live_bytes"], site["total_bytes"], site["sample_count"])
        got = site.get("retention_pct")
        if expected is None:
            if got is not None:
                problems.append(f"{where}: retention_pct {got!r} but no samples (must be null)")
        elif not isinstance(got, (int, float)) or isinstance(got, bool) or abs(got - expected) > 0.15:
            problems.append(f"{where}: retention_pct {got!r}, live bytes / total bytes say {expected}")
        if site["sample_count"] and not site["live_count"] and site["live_bytes"]:
            problems.append(f"{where}: live_bytes {site['live_bytes']} without live_count")
        if site.get("native") is True and site["line"] != 0:
            problems.append(f"{where}: native site with line {site['line']} (must be 0)")
        if not isinstance(site.get("native"), bool):
            problems.append(f"{where}: native {site.get('native')!r} is not a boolean")
    return problems


def assert_consistent(dumps: Iterable[Mapping[str, Any]]) -> None:
    problems = []
    for dump in dumps:
        problems += [f"pid {dump.get('pid')} {dump.get('reason')}: {p}" for p in dump_problems(dump)]
    assert not problems, "dump invariants broken:\n" + "\n".join(problems[:40])


# --------------------------------------------------------------------------- building C


def find_cc() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise AssertionError(
        "no C compiler (cc/gcc/clang) on PATH: the integration tests build C code; install build-essential"
    )


def compile_c(sources: Sequence[os.PathLike | str], output: os.PathLike | str, *flags: str) -> Path:
    cmd = [find_cc(), *flags, *map(str, sources), "-o", str(output)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"compile failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return Path(output)


def build_extension(
    python: Interpreter, source: os.PathLike | str, out_dir: os.PathLike | str, module: str
) -> Path:
    """Compile a one-file C extension (defining ``PyInit_<module>``) for ``python``; returns the .so."""
    header = Path(python.include) / "Python.h"
    if not header.is_file():
        hint = " (Debian: apt-get install python3-dev)" if python.path.startswith("/usr/") else ""
        raise AssertionError(
            f"{python}: no Python.h in {python.include}{hint}; cannot build the test extension"
        )
    out = Path(out_dir) / f"{module}{python.ext_suffix}"
    # the include root too: Debian's pyconfig.h includes <x86_64-linux-gnu/python3.X/pyconfig.h>,
    # which for a root's interpreter (scripts/roots.sh) is not under the host's /usr/include
    include_root = os.path.dirname(python.include)
    return compile_c(
        [source], out, "-shared", "-fPIC", "-O0", "-g", f"-I{python.include}", f"-I{include_root}"
    )


# --------------------------------------------------------------------------- trackleak run


def run_trackleak(
    *args: str, cwd: os.PathLike | str, timeout: float = 120, env: Mapping[str, str] | None = None
):
    """The real `trackleak` CLI of this environment, with no TRACKLEAK_* of the caller's (but
    TRACKLEAK_SO, so a test run can point at another build) and ENV added."""
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRACKLEAK_") and k != "LD_PRELOAD"}
    if "TRACKLEAK_SO" in os.environ:
        clean["TRACKLEAK_SO"] = os.environ["TRACKLEAK_SO"]
    clean.update(env or {})
    exe = str(Path(sys.executable).parent / "trackleak")
    return subprocess.run([exe, *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=timeout)

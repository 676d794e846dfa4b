# SPDX-License-Identifier: MIT
"""Log directory safety: an unusable dir costs one warning and nothing else; log files that are
symlinks are refused (the original followed them); files are created private (no group/other bits).
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from helpers import FIXTURES, assert_consistent, run_preloaded

pytestmark = pytest.mark.integration

HELLO = FIXTURES / "hello.py"
HELLO_OUT = "hello from python\n"
FALLBACK_DIR = Path("/tmp/trackleak")


def _stderr_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


def _unusable_dir(tmp_path: Path) -> Path:
    """A log dir the shim cannot create or write: as root, a path under a regular file (mkdir
    fails with ENOTDIR whatever the privileges); otherwise also a dir with mode 0500."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        locked.chmod(0o500)
        return locked
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a directory\n")
    return blocker / "logs"


def test_unwritable_log_dir_warns_once_and_changes_nothing(cpython, shim, tmp_path):
    # GIVEN a log dir that cannot be used, and periodic dumps every second for 1.5 s
    bad = _unusable_dir(tmp_path)
    result = run_preloaded(
        cpython, HELLO, args=[1.5], shim=shim, log_dir=bad, env={"TRACKLEAK_DUMP_INTERVAL": "1"}
    )
    # THEN the program's output and exit status are unchanged
    assert result.returncode == 0, result.describe()
    assert result.stdout == HELLO_OUT, result.describe()
    # AND stderr holds exactly one warning, naming the directory (then silence, dump after dump)
    lines = _stderr_lines(result)
    assert len(lines) == 1, f"expected exactly one warning line, got {lines}"
    assert str(bad) in lines[0], f"warning does not name {bad}: {lines[0]!r}"
    # AND nothing was written where the dir was asked for
    assert not bad.exists() or not any(bad.iterdir())
    # AND if the warning says output goes to the fallback dir, our exit dump is there
    if str(FALLBACK_DIR) in lines[0]:
        fallback = FALLBACK_DIR / "profiler.jsonl"
        assert fallback.is_file(), f"warning names {FALLBACK_DIR} but {fallback} does not exist"
        mine = [
            json.loads(line)
            for line in fallback.read_text(errors="replace").splitlines()
            if f'"pid":{result.pid},' in line.replace(" ", "")
        ]
        assert any(d.get("reason") == "exit" for d in mine), f"no exit dump of pid {result.pid} in {fallback}"


@pytest.mark.parametrize("target_exists", [True, False], ids=["to-file", "dangling"])
@pytest.mark.parametrize("name", ["profiler.json", "profiler.jsonl"])
def test_symlinked_log_file_is_refused(cpython, shim, tmp_path, name, target_exists):
    # GIVEN a log dir whose log file is a symlink to a file elsewhere (or to nothing yet)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "victim.txt"
    if target_exists:
        victim.write_text("precious\n")
        victim.chmod(0o644)
    link = log_dir / name
    link.symlink_to(victim)
    before = victim.stat() if target_exists else None
    # WHEN a program runs under the shim with that log dir
    result = run_preloaded(cpython, HELLO, shim=shim, log_dir=log_dir)
    # THEN the program is unaffected
    assert result.returncode == 0 and result.stdout == HELLO_OUT, result.describe()
    # AND the symlink's target is untouched (not created, not appended to, same mode)
    if target_exists:
        assert victim.read_text() == "precious\n", f"symlink followed: {victim.read_text()[:500]!r}"
        assert victim.stat().st_mode == before.st_mode and victim.stat().st_size == before.st_size
    else:
        assert not victim.exists(), f"dangling symlink followed: {victim} was created"
    assert link.is_symlink(), "the symlink was replaced"
    # AND the shim warned about that file, once
    lines = _stderr_lines(result)
    naming = [line for line in lines if re.search(re.escape(name) + r"(?!l)", line)]
    assert naming, f"no warning naming {name}: {lines}"
    assert len(lines) == 1, f"expected exactly one warning line, got {lines}"


def test_log_files_are_private(cpython, shim, log_dir):
    # GIVEN a permissive umask (0) and the per-event log turned on
    result = run_preloaded(
        cpython, HELLO, shim=shim, log_dir=log_dir, umask=0, min_size=500, env={"MEMORY_PROFILER_EVENTS": "1"}
    )
    assert result.returncode == 0 and result.stdout == HELLO_OUT, result.describe()
    assert_consistent(result.dumps)
    # THEN the files the shim created exist and have no group/other permission bits
    for name in ("profiler.json", "profiler.jsonl"):
        assert (log_dir / name).is_file(), (
            f"{name} missing; dir has {sorted(p.name for p in log_dir.iterdir())}"
        )
    loose = {
        p.name: oct(stat.S_IMODE(p.stat().st_mode))
        for p in log_dir.iterdir()
        if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o077
    }
    assert not loose, f"log files readable or writable by others: {loose}"

# SPDX-License-Identifier: MIT
"""The arena probes' contract (issue 10) between bpf/trackleak.h, the agent and cpython.json.

No root, no compiler: the header's #defines and struct tl_target are read as text and held
against the Python side both ways (STYLE guideline 1), and the per-minor arena sizes against
what CPython's obmalloc.c says (256 KiB before 3.10, 1 MiB from 3.10 on, bpo-43246's radix tree).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from trackleak.ebpf import loader, session

ROOT = Path(__file__).resolve().parents[2]
HEADER = (ROOT / "bpf" / "trackleak.h").read_text()
TABLE = json.loads((ROOT / "bpf" / "offsets" / "cpython.json").read_text())


def _defines(prefix: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(rf"#define ({prefix}\w+) (\d+)", HEADER)}


def _struct_fields(name: str) -> list[str]:
    body = re.search(rf"struct {name} \{{(.*?)\n\}};", HEADER, re.S)
    assert body, name
    text = re.sub(r"/\*.*?\*/", "", body[1], flags=re.S)
    return re.findall(r"\b(\w+);", text)


def test_site_kinds_match_the_header():
    kinds = _defines("TL_SITE_")
    assert kinds["TL_SITE_PYTHON"] == session.TL_SITE_PYTHON
    assert kinds["TL_SITE_ARENA"] == session.TL_SITE_ARENA


def test_counter_names_follow_the_header_indexes():
    # every TL_CNT_* index but the size has its name at that position, and no name is extra
    counters = {k: v for k, v in _defines("TL_CNT_").items() if k != "TL_CNT_MAX"}
    assert sorted(counters.values()) == list(range(len(session.COUNTER_NAMES)))
    assert counters["TL_CNT_ARENAS"] == session.COUNTER_NAMES.index("arenas")
    assert counters["TL_CNT_ARENA_FREES"] == session.COUNTER_NAMES.index("arena_frees")
    assert max(counters.values()) < _defines("TL_CNT_")["TL_CNT_MAX"]


def test_arena_fields_of_tl_target_default_to_none():
    fields = _struct_fields("tl_target")
    for name in ("arena_size", "arena_lo", "arena_hi"):
        assert name in fields
        assert name in session._ZERO_DEFAULT  # 0 = arenas not watched (never -1: a u64)


def test_arena_pending_limit_is_overridable():
    assert "TL_MAX_ARENA_PENDING" in loader.LIMITS
    assert "#ifndef TL_MAX_ARENA_PENDING" in HEADER


@pytest.mark.parametrize(
    ("value", "on"), [(None, True), ("1", True), ("0", False), ("off", False), ("No", False), ("yes", True)]
)
def test_arenas_env(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(loader.ARENAS_ENV, raising=False)
    else:
        monkeypatch.setenv(loader.ARENAS_ENV, value)
    assert loader.arenas_default() is on
    assert loader.Tunables().arenas is on


def test_arena_sizes_per_minor():
    for minor, table in TABLE.items():
        if minor.startswith("_"):
            continue
        if minor.endswith("t"):  # free-threaded: mimalloc, no pymalloc arenas
            assert table["obmalloc.arena_size"] == -1, minor
            continue
        expected = 256 << 10 if tuple(map(int, minor.split("."))) < (3, 10) else 1 << 20
        assert table["obmalloc.arena_size"] == expected, minor


def _generate():
    spec = importlib.util.spec_from_file_location("tl_gen", ROOT / "bpf" / "offsets" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_reads_the_arena_size_line(monkeypatch):
    # GIVEN sys._debugmallocstats() output (3.11's format: thousands separators, padding)
    gen = _generate()
    stderr = (
        "# arenas allocated total           =                   23\n"
        "23 arenas * 1048576 bytes/arena    =           24,117,248\n"
    )

    class Done:
        returncode, stdout = 0, ""

    Done.stderr = stderr
    monkeypatch.setattr(gen.subprocess, "run", lambda *a, **k: Done)
    # WHEN parsed THEN the size per arena is read
    assert gen.arena_size("python") == 1 << 20
    # AND an interpreter that prints none (PYTHONMALLOC=malloc) is an error, not a guess
    Done.stderr = "Small block threshold = 512\n"
    with pytest.raises(gen.OffsetsError, match="no arena size"):
        gen.arena_size("python")


def test_path_stats_follow_the_header():
    # struct tl_path_stats is read by name, in order (PathStats.of); the flags and limits match
    assert tuple(_struct_fields("tl_path_stats")) == session.PATH_STATS_FIELDS
    assert _defines("TL_PATH_")["TL_PATH_TRUNCATED"] == session.TL_PATH_TRUNCATED
    assert "TL_MAX_PATHS" in loader.LIMITS and "#ifndef TL_MAX_PATHS" in HEADER
    assert "#ifndef TL_STACK_DEPTH" in HEADER
    counters = _defines("TL_CNT_")
    assert counters["TL_CNT_PATHS_FULL"] == session.COUNTER_NAMES.index("paths_full")
    assert "paths_full" in session.DROPPED


def test_stack_depth_reaches_the_program_and_is_bounded():
    assert "-DTL_STACK_DEPTH=32" in loader.Tunables().cflags()
    assert "-DTL_STACK_DEPTH=0" in loader.Tunables(stack_depth=0).cflags()
    assert "-DTL_STACK_DEPTH=128" in loader.Tunables(stack_depth=128).cflags()
    from trackleak.ebpf import AttachError

    with pytest.raises(AttachError):
        loader.Tunables(stack_depth=129).cflags()

"""The shim's recorder, site table, live set, fork copy and dumper, through their C API.

preload/tests/test_recorder.c links them without the hook layer and without Python, under
AddressSanitizer and UndefinedBehaviorSanitizer (fatal), and drives them directly: counts and
retention per site, both kinds of writer on one site, tombstone reuse under churn, realloc's
put-back, 8 threads inserting and taking at once, a forked child's table, the dump files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT, find_cc

pytestmark = pytest.mark.integration


def test_recorder_under_sanitizers(tmp_path: Path):
    cc = find_cc()
    gen = tmp_path / "gen"
    gen.mkdir()
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "preload" / "gen_pyoffsets_h.py"),
            str(gen / "trackleak_pyoffsets.h"),
        ],
        check=True,
    )
    src = REPO_ROOT / "preload" / "src"
    exe = tmp_path / "test_recorder"
    build = subprocess.run(
        [
            cc,
            "-O1",
            "-g",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
            "-pthread",
            "-rdynamic",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{REPO_ROOT / 'preload' / 'include'}",
            f"-I{src}",
            f"-I{gen}",
            str(REPO_ROOT / "preload" / "tests" / "test_recorder.c"),
            *(
                str(src / name)
                for name in ("recorder.c", "shm_table.c", "pyframe.c", "dumper.c", "config.c", "stacks.c")
            ),
            "-o",
            str(exe),
            "-ldl",
            "-lm",
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    logs = tmp_path / "logs"
    logs.mkdir()
    run = subprocess.run([str(exe), str(logs)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "0 failed" in run.stdout, run.stdout + run.stderr
    assert "ERROR: AddressSanitizer" not in run.stderr and "runtime error" not in run.stderr, run.stderr

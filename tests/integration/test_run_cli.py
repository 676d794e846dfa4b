"""`trackleak run`, `report` and `inspect` end to end: the real CLI, the real shim, real CPythons.

The unit tests (tests/unit/test_runner.py, test_cli.py) cover argument handling with the launch
boundary patched; here nothing is patched: what a user types is what runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import line_of, run_trackleak

LEAKER = """\
import sys
keep = []
def grow():
    for i in range(1500):
        keep.append(bytes(3000 + i % 3))  # ALLOC: leak
def churn():
    for i in range(1500):
        tmp = bytes(3000 + i % 3)  # ALLOC: churn
        del tmp
grow()
churn()
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""


trackleak = run_trackleak  # the real CLI of this environment (tests/helpers.py)


def sites_of(path: Path, file_name: str) -> dict:
    data = json.loads(path.read_text())
    return data, {(s["function"], s["line"]): s for s in data["sites"] if s["file"].endswith(file_name)}


@pytest.fixture
def leaker(tmp_path: Path) -> Path:
    script = tmp_path / "leaker.py"
    script.write_text(LEAKER)
    return script


def test_script_form_flags_the_leak_and_passes_the_exit_status(cpython, leaker, tmp_path):
    # GIVEN a script that leaks on one line, churns on another and exits 3
    out = tmp_path / "out.json"
    # WHEN it runs under `trackleak run --python <cpython> --json out.json leaker.py 3`
    res = trackleak(
        "run",
        "--sample-rate",
        "1",
        "--json",
        str(out),
        "--python",
        cpython.path,
        str(leaker),
        "3",
        cwd=tmp_path,
    )
    # THEN the exit status is the script's, and the table is printed on stdout
    assert res.returncode == 3, res.stderr
    assert f"leaker.py:{line_of(leaker, 'leak')}" in res.stdout, res.stdout
    # AND the JSON flags the leaking line and not its healthy twin
    data, sites = sites_of(out, "leaker.py")
    assert data["meta"]["exit_code"] == 3
    leak = sites[("grow", line_of(leaker, "leak"))]
    churn = sites[("churn", line_of(leaker, "churn"))]
    assert leak["count"] >= 1500 and leak["retention_pct"] >= 80, leak
    assert churn["count"] >= 1500 and churn["retention_pct"] <= 20, churn
    assert all(s["source"] == "preload" and s["pid"] > 0 for s in data["sites"])


def test_module_and_command_forms(interpreters, leaker, tmp_path):
    py = interpreters[-1].path
    # -m: the module is found on the working directory, like python -m
    out = tmp_path / "m.json"
    res = trackleak(
        "run", "--sample-rate", "1", "--json", str(out), "--python", py, "-m", "leaker", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    _, sites = sites_of(out, "leaker.py")
    assert sites[("grow", line_of(leaker, "leak"))]["retention_pct"] >= 80
    # -- COMMAND: a shell that starts Python; the Python grandchild is what gets reported
    out = tmp_path / "c.json"
    res = trackleak(
        "run",
        "--sample-rate",
        "1",
        "--json",
        str(out),
        "--",
        "/bin/sh",
        "-c",
        f"'{py}' leaker.py 5",
        cwd=tmp_path,
    )
    assert res.returncode == 5, res.stderr
    _, sites = sites_of(out, "leaker.py")
    assert sites[("grow", line_of(leaker, "leak"))]["retention_pct"] >= 80


def test_forked_workers_add_up(interpreters, tmp_path):
    # GIVEN a parent that forks 3 workers, each leaking 200 blocks on one line
    script = tmp_path / "workers.py"
    script.write_text(
        "import os\nkeep = []\n"
        "for w in range(3):\n"
        "    if os.fork() == 0:\n"
        "        for i in range(200):\n"
        "            keep.append(bytes(2000 + i % 2))  # ALLOC: worker\n"
        "        os._exit(0)\n"
        "    os.wait()\n"
    )
    out = tmp_path / "w.json"
    res = trackleak(
        "run",
        "--sample-rate",
        "1",
        "--json",
        str(out),
        "--python",
        interpreters[-1].path,
        str(script),
        cwd=tmp_path,
        env={
            "TRACKLEAK_SMALL_OBJECTS": "0"
        },  # allocator blocks only (3.13+ objects: test_shim_small_objects)
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    rows = [
        s
        for s in data["sites"]
        if s["file"].endswith("workers.py") and s["line"] == line_of(script, "worker")
    ]
    # THEN each worker reports its own allocations (200 blocks + the list's growth), the same for
    # each: a later worker does not also carry what earlier forks or the parent counted
    assert len({r["pid"] for r in rows}) == 3, rows
    counts = [r["count"] for r in rows]
    assert len(set(counts)) == 1 and 200 <= counts[0] < 240, counts
    assert len(data["meta"]["pids"]) == 4


def test_report_renders_a_saved_table(interpreters, leaker, tmp_path):
    out = tmp_path / "out.json"
    trackleak("run", "--json", str(out), "--python", interpreters[-1].path, str(leaker), cwd=tmp_path)
    res = trackleak("report", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"leaker.py:{line_of(leaker, 'leak')}" in res.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = trackleak("report", str(bad), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "bad.json" in res.stderr


def test_inspect_reads_a_live_process(interpreters, shim, tmp_path):
    # GIVEN a preloaded process that leaked and now waits
    script = tmp_path / "live.py"
    script.write_text(
        "import sys, time\nkeep = [bytes(5000 + i % 2) for i in range(300)]  # ALLOC: live\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    env = {
        **os.environ,
        "LD_PRELOAD": str(shim),
        "TRACKLEAK_STARTUP_DELAY": "0",
        "TRACKLEAK_SAMPLE_RATE": "1",
        "TRACKLEAK_QUIET": "1",
        "TRACKLEAK_LOG_DIR": str(tmp_path),
    }
    proc = subprocess.Popen([interpreters[-1].path, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        # WHEN another process reads its table without stopping it
        deadline = time.time() + 20
        while True:
            res = trackleak("inspect", "--json", str(proc.pid), cwd=tmp_path)
            assert res.returncode == 0, res.stderr
            rows = [r for r in json.loads(res.stdout)["sites"] if r["file"].endswith("live.py")]
            if rows or time.time() > deadline:
                break
            time.sleep(0.2)
        # THEN the live leak is there, at its line, and the target is still running
        assert rows and rows[0]["line"] == line_of(script, "live") and rows[0]["count"] >= 300, res.stdout
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    res = trackleak("inspect", str(proc.pid), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr


@pytest.mark.cpythons(free_threaded=True)
def test_a_free_threaded_build_is_told_what_would_track_small_objects(cpython, leaker):
    """The note under the table names what works on this interpreter: no reference tracer on a
    free-threaded build, so not --small-objects 1 (which does nothing there) but --min-size 0."""
    res = trackleak("run", "--python", cpython.path, str(leaker), cwd=leaker.parent, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "are not tracked: this interpreter gives no reference tracer" in res.stderr, res.stderr
    assert "--min-size 0" in res.stderr and "--small-objects 1" not in res.stderr

# SPDX-License-Identifier: MIT
"""`trackleak run` without Typer: argv and env for the child, and whole runs with a stand-in child.

The stand-in child is a plain Python process (no shim) that writes what the shim would write into
TRACKLEAK_LOG_DIR, so the end-of-run logic is tested for real without the built shim.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from trackleak import runner
from trackleak.errors import ShimMissingError, UserError
from trackleak.runner import RunOptions, Target

SHIM = "/opt/trackleak/trackleak.so"


@pytest.fixture
def fake_path(tmp_path):
    """A PATH holding a fake python3 and a fake gunicorn (never run here)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("python3", "gunicorn"):
        exe = bindir / name
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return bindir


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "app.py"
    path.write_text("print('hi')\n")
    return path


def env_with(fake_path, **extra):
    return {"PATH": str(fake_path), "HOME": "/root", **extra}


# --------------------------------------------------------------------------- argv


def test_script_form_uses_python3_from_path_and_keeps_dash_args(fake_path, script):
    opts = RunOptions(Target("script", str(script), ("--port", "8000", "-v")))
    argv = runner.build_argv(opts, env_with(fake_path))
    assert argv == [str(fake_path / "python3"), str(script), "--port", "8000", "-v"]


def test_python_option_picks_the_interpreter(fake_path, script):
    opts = RunOptions(Target("script", str(script)), python=sys.executable)
    assert runner.build_argv(opts, env_with(fake_path))[0] == sys.executable
    opts = RunOptions(Target("script", str(script)), python="python3")
    assert runner.build_argv(opts, env_with(fake_path))[0] == str(fake_path / "python3")


def test_module_form(fake_path):
    opts = RunOptions(Target("module", "http.server", ("8000",)))
    assert runner.build_argv(opts, env_with(fake_path)) == [
        str(fake_path / "python3"),
        "-m",
        "http.server",
        "8000",
    ]


def test_command_form_runs_the_program_itself(fake_path):
    opts = RunOptions(Target("command", "gunicorn", ("-w", "2", "app:app")))
    assert runner.build_argv(opts, env_with(fake_path)) == ["gunicorn", "-w", "2", "app:app"]


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (RunOptions(Target("script", "/nonexistent/app.py")), "script not found: /nonexistent/app.py"),
        (RunOptions(Target("command", "no-such-program-xyz")), "command not found: no-such-program-xyz"),
        (RunOptions(Target("command", "gunicorn"), python="python3"), "--python applies to a script"),
        (RunOptions(Target("module", "m"), python="/nonexistent/python"), "interpreter not found"),
    ],
)
def test_clear_errors(fake_path, opts, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        runner.build_argv(opts, env_with(fake_path))


def test_missing_default_interpreter_says_use_python(tmp_path, script):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="python3 not found on PATH; name an interpreter with --python"):
        runner.build_argv(RunOptions(Target("script", str(script))), {"PATH": str(empty)})


# --------------------------------------------------------------------------- env


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, SHIM),
        ("", SHIM),
        ("/usr/lib/libjemalloc.so", f"{SHIM}:/usr/lib/libjemalloc.so"),
        ("/a.so /b.so", f"{SHIM}:/a.so:/b.so"),
        (f"/a.so:{SHIM}", f"{SHIM}:/a.so"),  # never twice
    ],
)
def test_shim_goes_first_and_user_entries_stay(existing, expected):
    assert runner.preload_value(SHIM, existing) == expected


def test_env_defaults_for_a_run(tmp_path):
    env = runner.build_env(
        RunOptions(Target("script", "x.py")), {"LD_PRELOAD": "/u.so", "FOO": "1"}, shim=SHIM, log_dir=tmp_path
    )
    assert env["LD_PRELOAD"] == f"{SHIM}:/u.so"
    assert env["TRACKLEAK_STARTUP_DELAY"] == "0"
    assert env["TRACKLEAK_QUIET"] == "1"
    assert env["TRACKLEAK_LOG_DIR"] == str(tmp_path)
    assert env["FOO"] == "1"
    for name in ("TRACKLEAK_SAMPLE_RATE", "TRACKLEAK_MIN_SIZE", "TRACKLEAK_DUMP_INTERVAL"):
        assert name not in env  # the shim's defaults apply


def test_env_keeps_a_startup_delay_the_user_set(tmp_path):
    env = runner.build_env(
        RunOptions(Target("script", "x.py")), {"TRACKLEAK_STARTUP_DELAY": "7"}, shim=SHIM, log_dir=tmp_path
    )
    assert env["TRACKLEAK_STARTUP_DELAY"] == "7"


def test_options_become_env(tmp_path):
    opts = RunOptions(
        Target("script", "x.py"), sample_rate=1, min_size=0, dump_interval=5, startup_delay=3, verbose=True
    )
    env = runner.build_env(
        opts, {"TRACKLEAK_STARTUP_DELAY": "9", "TRACKLEAK_QUIET": "1"}, shim=SHIM, log_dir=tmp_path
    )
    assert (env["TRACKLEAK_SAMPLE_RATE"], env["TRACKLEAK_MIN_SIZE"], env["TRACKLEAK_DUMP_INTERVAL"]) == (
        "1",
        "0",
        "5",
    )
    assert env["TRACKLEAK_STARTUP_DELAY"] == "3"
    assert env["TRACKLEAK_QUIET"] == "0"  # --verbose shows the banner


def test_user_quiet_setting_is_respected(tmp_path):
    env = runner.build_env(
        RunOptions(Target("script", "x.py")), {"TRACKLEAK_QUIET": "0"}, shim=SHIM, log_dir=tmp_path
    )
    assert env["TRACKLEAK_QUIET"] == "0"


def test_prepare_makes_a_private_log_dir(fake_path, script, tmp_path):
    made = tmp_path / "private"
    plan = runner.prepare(
        RunOptions(Target("script", str(script))),
        env_with(fake_path),
        shim=SHIM,
        make_temp_dir=lambda: (made.mkdir(mode=0o700), str(made))[1],
    )
    assert plan.private_log_dir and plan.log_dir == made
    assert plan.jsonl_paths == [made / "profiler.jsonl"]
    assert plan.env["TRACKLEAK_LOG_DIR"] == str(made)


def test_prepare_with_a_given_log_dir_also_reads_the_fallback(fake_path, script, tmp_path):
    env = env_with(fake_path, TRACKLEAK_LOG_DIR=str(tmp_path), TRACKLEAK_JSON_LOG="stats.json")
    plan = runner.prepare(RunOptions(Target("script", str(script))), env, shim=SHIM)
    assert not plan.private_log_dir
    assert plan.jsonl_paths == [tmp_path / "stats.jsonl", Path("/tmp/trackleak/stats.jsonl")]


def test_prepare_checks_json_dir_and_shim(fake_path, script):
    with pytest.raises(UserError, match="--json: directory does not exist"):
        runner.prepare(
            RunOptions(Target("script", str(script)), json_path=Path("/nonexistent/dir/out.json")),
            env_with(fake_path),
            shim=SHIM,
        )
    with pytest.raises(ShimMissingError, match=r"TRACKLEAK_SO=/nonexistent\.so"):
        runner.prepare(
            RunOptions(Target("script", str(script))), env_with(fake_path, TRACKLEAK_SO="/nonexistent.so")
        )


def test_exit_status_of_a_killed_child():
    assert runner.exit_status(0) == 0
    assert runner.exit_status(3) == 3
    assert runner.exit_status(-signal.SIGKILL) == 137


# --------------------------------------------------------------------------- whole runs

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    log = os.path.join(os.environ["TRACKLEAK_LOG_DIR"], "profiler.jsonl")
    def dump(reason, count):
        site = {"function": "leaky", "file": "/app/leaky.py", "line": 12, "count": count,
                "total_bytes": count * 1000, "sample_count": 2, "sample_total_bytes": 2000,
                "sample_free_bytes": 0, "retention_pct": 100.0, "peak_single": 1000,
                "avg_size": 1000, "native": False}
        with open(log, "a") as f:
            f.write(json.dumps({"format": "trackleak-dump", "version": 1, "pid": os.getpid(),
                                "ppid": os.getppid(), "timestamp": time.time(), "reason": reason,
                                "elapsed_seconds": 0.1, "sample_rate": 50, "min_size": 500,
                                "python": "3.11.7", "dropped": {}, "sites": [site]}) + "\\n")
    mode = sys.argv[1]
    if mode == "exit":
        dump("interval", 1); dump("exit", 5); sys.exit(3)
    if mode == "killed":
        dump("interval", 4); os.kill(os.getpid(), signal.SIGKILL)
    if mode == "term":
        def on_term(*_):
            dump("exit", 9); sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        open(os.path.join(os.environ["TRACKLEAK_LOG_DIR"], "ready"), "w").close()
        time.sleep(30)
        sys.exit(1)
    if mode == "nothing":
        sys.exit(0)
    """
)


def stand_in_spawn(argv, env):
    """Run the stand-in child instead of argv: no LD_PRELOAD, same env otherwise."""
    env = {k: v for k, v in env.items() if k != "LD_PRELOAD"}
    return subprocess.Popen([sys.executable, "-c", CHILD, argv[-1]], env=env, stdout=subprocess.DEVNULL)


def session(tmp_path, mode, *, private=True, **kw):
    log_dir = tmp_path / "logs"
    log_dir.mkdir(exist_ok=True)
    opts = RunOptions(Target("script", "app.py", (mode,)), interval=0.1, **kw)
    plan = runner.LaunchPlan(
        argv=["python3", "app.py", mode],
        env=dict(os.environ, TRACKLEAK_LOG_DIR=str(log_dir)),
        log_dir=log_dir,
        private_log_dir=private,
        jsonl_paths=[log_dir / "profiler.jsonl"],
    )
    import io

    out, err = io.StringIO(), io.StringIO()
    s = runner.launch_session(opts, plan, stdout=out, stderr=err, spawn=stand_in_spawn)
    return s, out, err


def test_run_prints_the_exit_dump_and_passes_the_status(tmp_path):
    json_path = tmp_path / "out.json"
    s, out, err = session(tmp_path, "exit", json_path=json_path)
    assert s.run() == 3
    text = out.getvalue()
    assert "leaky" in text and "/app/leaky.py:12" in text and "100.0%" in text
    assert " 5 " in text.splitlines()[2]  # the exit dump (count 5), not the interval one
    doc = json.loads(json_path.read_text())
    assert doc["meta"]["exit_code"] == 3 and doc["meta"]["command"] == ["python3", "app.py", "exit"]
    assert doc["meta"]["sample_rate"] == 50 and doc["meta"]["min_size"] == 500
    assert doc["meta"]["pids"] == [s.source.child.pid]
    (site,) = doc["sites"]
    assert site["pid"] == s.source.child.pid and site["source"] == "preload" and site["count"] == 5
    assert "exit status 3" in err.getvalue()


def test_killed_child_reports_128_plus_signal_and_its_last_interval_dump(tmp_path):
    s, out, _ = session(tmp_path, "killed")
    assert s.run() == 128 + signal.SIGKILL
    assert "leaky" in out.getvalue()


def test_nothing_reported_says_so(tmp_path):
    s, out, err = session(tmp_path, "nothing")
    assert s.run() == 0
    assert out.getvalue() == ""
    assert "no data: the shim never reported" in err.getvalue()


def test_shared_log_dir_ignores_other_processes_dumps(tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    stale = {
        "format": "trackleak-dump",
        "version": 1,
        "pid": 424242,
        "ppid": 1,
        "timestamp": 1.0,
        "reason": "exit",
        "sites": [{"function": "someone_else", "file": "x.py", "line": 1, "count": 1}],
    }
    other_now = dict(stale, timestamp=4e9, pid=434343)
    (log_dir / "profiler.jsonl").write_text(json.dumps(stale) + "\n" + json.dumps(other_now) + "\n")
    s, out, _ = session(tmp_path, "exit", private=False)
    assert s.run() == 3
    assert "someone_else" not in out.getvalue() and "leaky" in out.getvalue()


def test_sigterm_to_the_runner_reaches_the_child(tmp_path):
    # GIVEN a child that writes its exit dump on SIGTERM
    s, out, _ = session(tmp_path, "term")
    # WHEN the runner itself gets SIGTERM while the child runs
    ready = s.source.plan.log_dir / "ready"
    stop = threading.Event()

    def terminate_when_ready():
        while not stop.wait(0.05):
            if ready.exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return

    killer = threading.Thread(target=terminate_when_ready, daemon=True)
    killer.start()
    try:
        status = s.run()
    finally:
        stop.set()
        killer.join()
    # THEN the child got it, exited cleanly, and we are still here to print its table
    assert status == 0
    assert " 9 " in out.getvalue().splitlines()[2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # our handler is gone again


# --------------------------------------------------------------------------- history timing


def test_poll_puts_the_point_when_the_segment_was_read(tmp_path, monkeypatch):
    # GIVEN a segment whose rows take 5 s to make after it was read (naming native sites parses ELF
    # symbol tables, ~1 s for libpython the first time)
    from types import SimpleNamespace

    from trackleak.table import Row

    s = session(tmp_path, "exit")[0].source
    now = [1000.0]
    s.clock = lambda: now[0]
    s.started = 1000.0
    s.child = SimpleNamespace(pid=77)

    class SlowRows:
        pid = 77
        header = SimpleNamespace(sample_interval=51200, pid=77, start_time_ns=0)

        @property
        def rows(self):
            now[0] += 5.0
            return [Row("leaky", "/app/leaky.py", 12, count=1, sample_count=1, live_bytes=1000, pid=77)]

    def read_segment(pid, seg):
        now[0] += 1.0  # read 1 s after the start
        return SlowRows()

    monkeypatch.setattr(runner, "descendants", lambda pid: [77])
    monkeypatch.setattr(runner, "find_segments", lambda pid: ["segment"])
    monkeypatch.setattr(runner, "read_segment", read_segment)
    # WHEN the runner polls
    s.poll()
    # THEN the live bytes are recorded at the time they were read, not when the rows were ready
    assert s.history.series(("leaky", "/app/leaky.py", 12, False)) == [(1.0, 1000)]


def test_final_word_is_put_at_the_childs_exit(tmp_path):
    # GIVEN reading the log after the child ended takes long (100 s on a fake clock)
    run, _, _ = session(tmp_path, "exit")
    s = run.source
    late = [0.0]
    s.clock = lambda: time.time() + late[0]
    final_table = s.final_table

    def slow_final_table():
        late[0] += 100.0
        return final_table()

    s.final_table = slow_final_table
    run.run()
    # THEN the exit dump's live bytes are the series' last point at the time the child ended
    points = s.history.series(("leaky", "/app/leaky.py", 12, False))
    assert points and points[-1][0] == pytest.approx(s.ended_at - s.started, abs=0.01), points


@pytest.mark.parametrize("sort", ["leak", "live", "bytes", "retention"])
def test_every_sort_the_cli_offers_is_accepted(fake_path, script, sort):
    opts = RunOptions(Target("script", str(script)), sort=sort)
    plan = runner.prepare(opts, env_with(fake_path), shim=SHIM, make_temp_dir=lambda: "/tmp/x")
    assert plan.argv[-1] == str(script)
    with pytest.raises(UserError, match="--sort"):
        runner.prepare(RunOptions(Target("script", str(script)), sort="size"), env_with(fake_path), shim=SHIM)


def test_stack_depth_becomes_the_shims_variable(tmp_path):
    env = runner.build_env(
        RunOptions(Target("script", "x.py"), stack_depth=5), {}, shim=SHIM, log_dir=tmp_path
    )
    assert env["TRACKLEAK_STACK_DEPTH"] == "5"
    env = runner.build_env(
        RunOptions(Target("script", "x.py")), {"TRACKLEAK_STACK_DEPTH": "3"}, shim=SHIM, log_dir=tmp_path
    )
    assert env["TRACKLEAK_STACK_DEPTH"] == "3"  # the user's own setting stays

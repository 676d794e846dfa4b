# SPDX-License-Identifier: MIT
"""The Typer layer: arguments reach trackleak.runner.run (patched) as they should; errors are one line.

The launch boundary is trackleak.runner.run: each test replaces it and asserts the RunOptions it got.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from typer.testing import CliRunner

from trackleak import __version__, runner
from trackleak.cli.app import app
from trackleak.errors import UserError
from trackleak.runner import RunOptions, Target

TL_ENV = (
    "TRACKLEAK_SAMPLE_RATE",
    "TRACKLEAK_MIN_SIZE",
    "TRACKLEAK_DUMP_INTERVAL",
    "TRACKLEAK_STARTUP_DELAY",
    "TRACKLEAK_LOG_DIR",
    "TRACKLEAK_PYTHON",
    "TRACKLEAK_SO",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in TL_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def launched():
    with mock.patch.object(runner, "run", return_value=0) as run:
        yield run


def invoke(*args, env=None):
    return CliRunner().invoke(app, list(args), env=env)


def stderr_of(result) -> str:
    try:
        return result.stderr
    except (ValueError, AttributeError):  # older click mixes the streams
        return result.output


def opts_of(launched) -> RunOptions:
    (opts,), _ = launched.call_args
    return opts


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"trackleak {__version__}"


def test_script_args_that_look_like_options_reach_the_script(launched):
    result = invoke("run", "app.py", "--json", "x", "-v", "--", "tail")
    assert result.exit_code == 0, result.output
    opts = opts_of(launched)
    assert opts.target == Target("script", "app.py", ("--json", "x", "-v", "--", "tail"))
    assert opts.json_path is None and opts.verbose is False


def test_options_before_the_script_are_ours(launched):
    result = invoke(
        "run",
        "--sample-rate",
        "1",
        "--min-size",
        "0",
        "--json",
        "out.json",
        "--python",
        "/usr/bin/python3.12",
        "-v",
        "--top",
        "5",
        "--sort",
        "bytes",
        "--interval",
        "0.5",
        "--no-live",
        "app.py",
        "a",
    )
    assert result.exit_code == 0, result.output
    opts = opts_of(launched)
    assert opts.target == Target("script", "app.py", ("a",))
    assert (opts.sample_rate, opts.min_size, opts.json_path, opts.python) == (
        1,
        0,
        Path("out.json"),
        "/usr/bin/python3.12",
    )
    assert (opts.verbose, opts.top, opts.sort, opts.interval, opts.live) == (True, 5, "bytes", 0.5, False)
    assert opts.startup_delay is None  # the runner turns that into 0


def test_module_form(launched):
    assert invoke("run", "-m", "http.server", "8000", "--bind", "127.0.0.1").exit_code == 0
    assert opts_of(launched).target == Target("module", "http.server", ("8000", "--bind", "127.0.0.1"))


def test_double_dash_runs_a_program(launched):
    assert invoke("run", "--quiet", "--", "gunicorn", "-w", "2", "app:app").exit_code == 0
    opts = opts_of(launched)
    assert opts.target == Target("command", "gunicorn", ("-w", "2", "app:app"))
    assert opts.progress is False


def test_envvars_fill_the_options(launched):
    env = {
        "TRACKLEAK_SAMPLE_RATE": "7",
        "TRACKLEAK_MIN_SIZE": "64",
        "TRACKLEAK_STARTUP_DELAY": "2",
        "TRACKLEAK_DUMP_INTERVAL": "30",
        "TRACKLEAK_LOG_DIR": "/var/tmp/tl",
    }
    assert invoke("run", "app.py", env=env).exit_code == 0
    opts = opts_of(launched)
    assert (opts.sample_rate, opts.min_size, opts.startup_delay, opts.dump_interval) == (7, 64, 2, 30)
    assert opts.log_dir == Path("/var/tmp/tl")


def test_the_childs_status_is_ours(launched):
    launched.return_value = 137
    assert invoke("run", "app.py").exit_code == 137


def test_user_errors_are_one_line_and_exit_2(launched):
    launched.side_effect = UserError("script not found: nope.py")
    result = invoke("run", "nope.py")
    assert result.exit_code == 2
    assert stderr_of(result).strip() == "trackleak: error: script not found: nope.py"
    assert "Traceback" not in result.output


def test_no_target_is_a_usage_error(launched):
    result = invoke("run")
    assert result.exit_code == 2 and not launched.called


def test_bad_env_value_is_a_clear_usage_error(launched):
    result = invoke("run", "app.py", env={"TRACKLEAK_SAMPLE_RATE": "lots"})
    assert result.exit_code == 2 and not launched.called
    assert "integer" in result.output  # the wording differs between click versions


def test_where(tmp_path):
    so = tmp_path / "trackleak.so"
    so.write_bytes(b"\x7fELF")
    result = invoke("where", env={"TRACKLEAK_SO": str(so)})
    assert result.exit_code == 0 and result.output.strip() == str(so)
    result = invoke("where", env={"TRACKLEAK_SO": str(tmp_path / "missing.so")})
    assert result.exit_code == 2 and "does not name a file" in stderr_of(result)


def test_inspect_a_process_without_segment():
    result = invoke("inspect", "1")
    assert result.exit_code == 2 and "trackleak: error:" in stderr_of(result)


SAVED = {
    "meta": {
        "format": "trackleak-run",
        "version": 1,
        "command": ["python3", "app.py"],
        "exit_code": 0,
        "pids": [11, 12],
        "sample_rate": 50,
        "min_size": 500,
    },
    "sites": [
        {
            "function": "leaky",
            "file": "/app/a.py",
            "line": 12,
            "count": 3,
            "total_bytes": 3000,
            "sample_count": 1,
            "sample_total_bytes": 1000,
            "sample_free_bytes": 0,
            "peak_single": 1000,
            "source": "preload",
            "pid": 11,
            "native": False,
        },
        {
            "function": "leaky",
            "file": "/app/a.py",
            "line": 12,
            "count": 1,
            "total_bytes": 1000,
            "sample_count": 0,
            "sample_total_bytes": 0,
            "sample_free_bytes": 0,
            "peak_single": 1000,
            "source": "preload",
            "pid": 12,
            "native": False,
        },
        {
            "function": "healthy",
            "file": "/app/a.py",
            "line": 20,
            "count": 9,
            "total_bytes": 90000,
            "sample_count": 2,
            "sample_total_bytes": 20000,
            "sample_free_bytes": 20000,
            "peak_single": 10000,
            "source": "preload",
            "pid": 11,
            "native": False,
        },
        {"function": 5, "file": "bad row"},
    ],
}


def test_report_renders_a_saved_run(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(SAVED))
    result = invoke("report", str(path))
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith(("leaky", "healthy"))]
    # merged over pids; the site that holds bytes first (2.9 KiB live, estimated from retention:
    # the file predates live bytes), 4 allocations
    assert lines[0].split()[:6] == ["leaky", "/app/a.py:12", "2.9", "KiB", "-", "4"]
    # 2.9 KiB of the 3.9 KiB allocated (the unsampled pid's share is not known to be live)
    assert "75.0%" in lines[0] and "0.0%" in lines[1]
    assert "1 bad row(s)" in stderr_of(result)
    by_bytes = invoke("report", str(path), "--sort", "bytes", "--top", "1")
    assert [ln.split()[0] for ln in by_bytes.output.splitlines() if ln.startswith(("leaky", "healthy"))] == [
        "healthy"
    ]
    per_pid = invoke("report", str(path), "--per-pid")
    assert sum(ln.startswith("leaky") for ln in per_pid.output.splitlines()) == 2


def test_report_renders_a_shim_jsonl(tmp_path):
    line = {
        "format": "trackleak-dump",
        "version": 1,
        "pid": 5,
        "ppid": 1,
        "timestamp": 1,
        "reason": "exit",
        "sites": [
            {
                "function": "grow",
                "file": "/b.py",
                "line": 7,
                "count": 2,
                "total_bytes": 2048,
                "sample_count": 0,
                "sample_total_bytes": 0,
                "sample_free_bytes": 0,
                "peak_single": 1024,
            }
        ],
    }
    path = tmp_path / "profiler.jsonl"
    path.write_text(json.dumps(line) + "\n" + "garbage\n")
    result = invoke("report", str(path))
    assert result.exit_code == 0, result.output
    row = next(ln for ln in result.output.splitlines() if ln.startswith("grow"))
    assert "/b.py:7" in row and "n/a" in row
    assert "1 bad line(s)" in stderr_of(result)


def test_report_errors(tmp_path):
    assert invoke("report", str(tmp_path / "missing.json")).exit_code == 2
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    result = invoke("report", str(junk))
    assert result.exit_code == 2 and "neither a `trackleak run --json` file nor" in stderr_of(result)


def test_agent_entry_point_without_ebpf(monkeypatch, capsys):
    from trackleak.cli import agent_app

    monkeypatch.setattr(agent_app, "MODULE", "trackleak.ebpf.not_there_cli")
    real_import = agent_app.importlib.import_module

    def fake_import(name):
        if name == "trackleak.ebpf.not_there_cli":
            raise ModuleNotFoundError(name=name)
        return real_import(name)

    monkeypatch.setattr(agent_app.importlib, "import_module", fake_import)
    with pytest.raises(SystemExit) as exc:
        agent_app.main()
    assert exc.value.code == 2
    assert "not available yet" in capsys.readouterr().err


def test_optional_commands_register_when_their_module_exists(monkeypatch):
    import sys
    import types

    import typer

    from trackleak.cli import app as app_module

    fake = types.ModuleType("trackleak.cli.commands.fakecmd")

    def fakecmd() -> None:
        """A command written elsewhere."""
        typer.echo("fake ran")

    fake.fakecmd = fakecmd
    monkeypatch.setitem(sys.modules, "trackleak.cli.commands.fakecmd", fake)
    local = typer.Typer()
    monkeypatch.setattr(app_module, "app", local)
    app_module._optional("fakecmd")
    app_module._optional("no_such_command_module")  # absent: silently not registered
    result = CliRunner().invoke(local, [])
    assert result.exit_code == 0 and "fake ran" in result.output

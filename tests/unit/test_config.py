# SPDX-License-Identifier: MIT
"""One configuration for every command: flag > environment variable > --config file > default,
the same for `trackleak run`, `trackleak-agent --pid` and the host agent; a bad file is one clear
line naming the file and the key; secrets from the file never show."""

from __future__ import annotations

import os
import re
from pathlib import Path
from unittest import mock

import pytest
from typer.testing import CliRunner

from trackleak import config, runner
from trackleak.cli.app import app
from trackleak.cli.commands import agent as agent_cli
from trackleak.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
ENV = (
    "TRACKLEAK_SAMPLE_RATE",
    "TRACKLEAK_MIN_SIZE",
    "TRACKLEAK_CONFIG",
    "ENABLE_ELASTICSEARCH",
    "ELASTICSEARCH_URL",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "trackleak.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


CONFIG = """
sample_rate = 7
min_size = 64
top = 3

[run]
interval = 2.5
sort = "live"

[agent]
interval = 9
cmdline = ["gunicorn"]
ebpf-window = 4
"""


# --------------------------------------------------------------------------- trackleak run


def run_opts(args, env=None) -> runner.RunOptions:
    with mock.patch.object(runner, "run", return_value=0) as run:
        result = CliRunner().invoke(app, ["run", *args], env=env)
    assert result.exit_code == 0, result.output
    (opts,), _ = run.call_args
    return opts


def test_run_takes_the_file_then_env_then_flags(tmp_path):
    path = write(tmp_path, CONFIG)
    # the file fills what nothing else says; [run] wins over the top level
    opts = run_opts(["--config", str(path), "app.py"])
    assert (opts.sample_rate, opts.min_size, opts.top, opts.interval, opts.sort) == (7, 64, 3, 2.5, "live")
    # the environment wins over the file
    opts = run_opts(["--config", str(path), "app.py"], env={"TRACKLEAK_SAMPLE_RATE": "11"})
    assert opts.sample_rate == 11 and opts.min_size == 64
    # a flag wins over both
    opts = run_opts(
        ["--config", str(path), "--sample-rate", "13", "--top", "5", "app.py"],
        env={"TRACKLEAK_SAMPLE_RATE": "11"},
    )
    assert opts.sample_rate == 13 and opts.top == 5
    # TRACKLEAK_CONFIG names the file too
    assert run_opts(["app.py"], env={"TRACKLEAK_CONFIG": str(path)}).top == 3


def test_run_without_a_file_keeps_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    opts = run_opts(["app.py"])
    assert opts.sample_rate is None and opts.min_size is None  # the shim's defaults apply
    assert (opts.top, opts.sort, opts.interval) == (config.default("top"), "leak", config.default("interval"))


def test_the_system_file_is_read_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "SYSTEM_CONFIG", write(tmp_path, "top = 4\n"))
    assert run_opts(["app.py"]).top == 4


# --------------------------------------------------------------------------- trackleak-agent


def agent_call(args, env=None, target="run_agent"):
    """Run the agent's CLI with the session replaced; the options it would have run with."""
    seen = {}
    module = "trackleak.ebpf.agent" if target == "run_agent" else "trackleak.fleet"
    with mock.patch(f"{module}.{target}", side_effect=lambda opts, **kw: seen.update(opts=opts, **kw) or 0):
        env_before = dict(os.environ)
        try:
            os.environ.update(env or {})
            with pytest.raises(SystemExit) as exc:
                agent_cli.main(args)
        finally:
            os.environ.clear()
            os.environ.update(env_before)
    return exc.value.code, seen


def test_agent_by_pid_takes_the_same_order(tmp_path):
    path = write(tmp_path, CONFIG)
    code, seen = agent_call(["--config", str(path), "--pid", "1"])
    opts = seen["opts"]
    # [agent] wins over the top level; its host-only keys (cmdline, ebpf-window) do not stop --pid
    assert code == 0 and (opts.sample_rate, opts.min_size, opts.top, opts.interval) == (7, 64, 3, 9.0)
    code, seen = agent_call(
        ["--config", str(path), "--pid", "1", "--min-size", "1"], {"TRACKLEAK_SAMPLE_RATE": "2"}
    )
    assert (seen["opts"].sample_rate, seen["opts"].min_size) == (2, 1)


def test_host_agent_takes_its_filters_and_duty_cycle_from_the_file(tmp_path):
    path = write(tmp_path, CONFIG)
    code, seen = agent_call(["--config", str(path)], target="run_fleet")
    opts = seen["opts"]
    assert code == 0 and opts.interval == 9.0 and opts.duty.window == 4.0 and opts.top == 3
    assert [p.pattern for p in opts.filters.cmdlines] == ["gunicorn"]
    # without a file: the host agent's own defaults
    code, seen = agent_call(["--config", str(write(tmp_path, ""))], target="run_fleet")
    assert seen["opts"].interval == config.default("interval", "host")
    assert seen["opts"].duty.period == config.default("ebpf_period", "host")


def test_host_only_flags_on_the_command_line_are_still_refused_with_pid(tmp_path, capsys):
    code, _ = agent_call(["--pid", "1", "--cmdline", "x"])
    assert code == 2 and "--cmdline: only for the host agent" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    "text, words",
    [
        ("samplerate = 5\n", ["unknown key 'samplerate'", "sample_rate"]),
        ("top = 'many'\n", ["'top' must be a whole number, not str"]),
        ("[run]\nlive = 3\n", ["[run] 'live' must be true or false"]),
        ("[runn]\ntop = 1\n", ["unknown table [runn]"]),
        ("top = \n", ["is not valid TOML"]),
        ("python = 'python3'\n", ["'python' means two things"]),
        ("[elasticsearch]\nurll = 'x'\n", ["unknown key [elasticsearch] 'urll'"]),
        ("[agent]\ncmdline = [1]\n", ["'cmdline' must be a string or a list of strings"]),
    ],
)
def test_a_bad_file_is_one_clear_error(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as exc:
        config.load(path)
    message = str(exc.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    # and through the CLI: usage error (2), the file named, no traceback
    result = CliRunner().invoke(app, ["run", "--config", str(path), "app.py"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_a_missing_file_named_on_the_command_line_is_an_error(tmp_path):
    result = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "nope.toml"), "app.py"])
    assert result.exit_code == 2 and "does not exist" in result.output
    code, _ = agent_call(["--config", str(tmp_path / "nope.toml"), "--pid", "1"])
    assert code == 2


# --------------------------------------------------------------------------- Elasticsearch


def test_elasticsearch_table_gives_the_original_variables_under_the_environment(tmp_path):
    key = tmp_path / "api-key"
    key.write_text("c2VjcmV0LWtleQ==\n")
    path = write(
        tmp_path,
        f'[elasticsearch]\nenabled = true\nurl = "http://127.0.0.1:9200"\nindex = "svc"\n'
        f'api_key_file = "{key}"\nssl_verify = false\njob_name = "web"\n',
    )
    cfg = config.load(path)
    assert cfg.es == {
        "ENABLE_ELASTICSEARCH": "1",
        "ELASTICSEARCH_URL": "http://127.0.0.1:9200",
        "ELASTICSEARCH_INDEX": "svc",
        "ELASTICSEARCH_API_KEY": "c2VjcmV0LWtleQ==",
        "ELASTICSEARCH_SSL_VERIFY": "0",
        "NOMAD_JOB_NAME": "web",
    }
    assert not cfg.notes  # the secret is in its own file
    env = cfg.es_environ({"ELASTICSEARCH_INDEX": "from-env"})
    assert env["ELASTICSEARCH_INDEX"] == "from-env" and env["ELASTICSEARCH_URL"] == "http://127.0.0.1:9200"


def test_a_secret_in_a_file_others_can_read_is_said_without_the_secret(tmp_path):
    path = write(tmp_path, '[elasticsearch]\nurl = "http://h:1"\npassword = "hunter2-secret"\n', mode=0o644)
    cfg = config.load(path)
    assert cfg.notes and "chmod 600" in cfg.notes[0] and "hunter2" not in cfg.notes[0]
    assert not config.load(write(tmp_path, '[elasticsearch]\npassword = "x"\n', mode=0o600)).notes


def test_the_agent_ships_with_the_file_settings(tmp_path, capsys):
    """[elasticsearch] in --config is what the agent ships with; the password never shows."""
    path = write(
        tmp_path,
        '[elasticsearch]\nenabled = true\nurl = "http://127.0.0.1:9/_bulk"\nusername = "u"\n'
        'password = "pa55-in-file"\n',
    )
    code, seen = agent_call(["--config", str(path), "--pid", "1"])
    (sink,) = seen["sinks"]
    assert code == 0 and type(sink).__name__ == "FleetShipping"
    assert sink.config.url.startswith("http://127.0.0.1:9") and sink.config.index == "trackleak-memory"
    out = capsys.readouterr()
    assert "pa55-in-file" not in out.err + out.out and "shipping every watched process" in out.err


# --------------------------------------------------------------------------- one truth


def test_the_python_defaults_are_the_shims():
    """sample_rate and min_size: the shim's defaults (preload/src/config.c) are config's."""
    text = (ROOT / "preload" / "src" / "config.c").read_text()
    c_defaults = dict(re.findall(r"\.(sample_rate|min_size)\s*=\s*(\d+)", text))
    assert int(c_defaults["sample_rate"]) == config.default("sample_rate")
    assert int(c_defaults["min_size"]) == config.default("min_size")


def test_stack_depth_reaches_every_route_in_the_same_order(tmp_path, monkeypatch):
    """--stack-depth > TRACKLEAK_STACK_DEPTH > stack_depth in the file > the default, for run (the
    child's environment), the agent by pid and the host agent."""
    path = write(tmp_path, "stack_depth = 8\n[agent]\nstack_depth = 4\n")
    assert run_opts(["--config", str(path), "app.py"]).stack_depth == 8
    assert run_opts(["--config", str(path), "app.py"], env={"TRACKLEAK_STACK_DEPTH": "0"}).stack_depth == 0
    assert run_opts(["--stack-depth", "128", "app.py"]).stack_depth == 128
    _, seen = agent_call(["--config", str(path), "--pid", "1"])
    assert seen["opts"].stack_depth == 4
    _, seen = agent_call(["--pid", "1", "--stack-depth", "2"], {"TRACKLEAK_STACK_DEPTH": "9"})
    assert seen["opts"].stack_depth == 2
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    _, seen = agent_call(["--once"], target="run_fleet")
    assert seen["opts"].stack_depth == config.default("stack_depth") == 32


@pytest.mark.parametrize("value", ["129", "-1", "deep"])
def test_a_bad_stack_depth_is_one_clear_error(value):
    result = CliRunner().invoke(app, ["run", "--stack-depth", value, "app.py"])
    assert result.exit_code == 2 and "--stack-depth" in result.output and "Traceback" not in result.output

# SPDX-License-Identifier: MIT
"""The start-up banner on stderr, as in the original, with secrets redacted."""

from __future__ import annotations

import pytest
from helpers import FIXTURES, run_preloaded

pytestmark = pytest.mark.integration

HELLO = FIXTURES / "hello.py"
HELLO_OUT = "hello from python\n"
SECRETS = ("secret", "hunter2", "abc123")


def test_banner_like_the_original(cpython, shim, log_dir):
    # GIVEN TRACKLEAK_QUIET unset and a few settings
    result = run_preloaded(
        cpython, HELLO, shim=shim, log_dir=log_dir, sample_rate=7, min_size=123, env={"TRACKLEAK_QUIET": None}
    )
    assert result.returncode == 0 and result.stdout == HELLO_OUT, result.describe()
    # THEN stderr starts with the original's banner lines
    lines = result.stderr.splitlines()
    assert lines and lines[0] == f"[trackleak] log_dir={log_dir}", f"banner: {lines[:10]}"
    assert f"[trackleak] json_log={log_dir}/profiler.json" in lines, f"banner: {lines[:10]}"
    banner = "\n".join(line for line in lines if line.startswith("[trackleak]"))
    assert "sample_rate=1/7" in banner and "min_size=123" in banner, banner
    assert "startup_delay=0" in banner, banner
    assert "elasticsearch=" in banner, banner


def test_banner_and_logs_never_show_credentials(cpython, shim, log_dir):
    # GIVEN Elasticsearch settings carrying credentials in the URL, a password and an API key
    env = {
        "TRACKLEAK_QUIET": None,
        "ENABLE_ELASTICSEARCH": "1",
        "ELASTICSEARCH_URL": "https://user:secret@es:9200/_bulk",
        "ELASTICSEARCH_USERNAME": "user",
        "ELASTICSEARCH_PASSWORD": "hunter2",
        "ELASTICSEARCH_API_KEY": "abc123",
    }
    result = run_preloaded(cpython, HELLO, shim=shim, log_dir=log_dir, env=env)
    assert result.returncode == 0 and result.stdout == HELLO_OUT, result.describe()
    assert result.stderr.startswith("[trackleak] "), result.describe()
    # THEN no secret appears in anything printed or written to the log dir
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    texts.update({p.name: p.read_text(errors="replace") for p in log_dir.iterdir() if p.is_file()})
    leaks = {(where, s) for where, text in texts.items() for s in SECRETS if s in text}
    assert not leaks, f"credentials shown: {sorted(leaks)}\nstderr: {result.stderr[:3000]}"

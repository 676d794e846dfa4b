# SPDX-License-Identifier: MIT
"""The host agent ships to a real Elasticsearch (scripts/test.sh starts it; nginx in front for
auth and outages): both routes with their ``source``, a preloaded service's own index and job
name, a late process, two hosts in one index, the server gone mid-run and back, no secret
anywhere.

Workloads carry a unique tag in their command line and every agent filters on it (--cmdline).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from ebpf_support import AGENT_CMD, BPF_SKIP
from es_support import (  # noqa: F401
    PASSWORD,
    USER,
    es,
    es_index,
    es_url,
    nginx,
    own_nginx,
    search_all,
    wait_count,
)

pytestmark = [pytest.mark.integration]

WORK = r"""
import sys, time
kept = []
def leak():
    kept.append(bytearray(8192))  # ALLOC: leak
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        leak()
    time.sleep(0.01)
"""
LEAK_LINE = WORK.splitlines().index("    kept.append(bytearray(8192))  # ALLOC: leak") + 1

ES_NAMES = ("ENABLE_ELASTICSEARCH", "NOMAD_JOB_NAME")
TARGET_SECRETS = {
    "ELASTICSEARCH_PASSWORD": "target-pa55-Secret",
    "ELASTICSEARCH_API_KEY": "dGFyZ2V0LWFwaS1rZXktc2VjcmV0",
    "ELASTICSEARCH_USERNAME": "target-user",
    # a URL the agent must never use (nothing listens on port 9)
    "ELASTICSEARCH_URL": "http://127.0.0.1:9/_bulk",
}
CMDLINE_SECRET = "cmdline-s3cret-value"


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRACKLEAK_", "ELASTICSEARCH_")) and k not in ES_NAMES and k != "LD_PRELOAD"
    }


@pytest.fixture
def tag() -> str:
    return f"fleetestag{uuid.uuid4().hex[:10]}"


@pytest.fixture
def other_index(es, es_index):  # noqa: F811
    name = es_index + "-svc"
    es.options(ignore_status=404).indices.delete(index=name)
    yield name
    es.options(ignore_status=404).indices.delete(index=name)


def _start(tmp_path: Path, tag: str, *, shim=None, env_extra=None, seconds=60):
    script = tmp_path / f"{tag}.py"
    script.write_text(WORK)
    env = _clean_env()
    if shim is not None:
        env.update(
            LD_PRELOAD=str(shim),
            TRACKLEAK_STARTUP_DELAY="0",
            TRACKLEAK_QUIET="1",
            TRACKLEAK_LOG_DIR=str(tmp_path / "logs"),
        )
    env.update(env_extra or {})
    proc = subprocess.Popen(
        [sys.executable, str(script), str(seconds), tag, f"--password={CMDLINE_SECRET}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().startswith("ready")
    return proc


def _agent_env(url: str | None, index: str | None = None, **extra: str) -> dict[str, str]:
    env = _clean_env()
    if url is not None:
        env.update(ENABLE_ELASTICSEARCH="1", ELASTICSEARCH_URL=url)
    if index is not None:
        env["ELASTICSEARCH_INDEX"] = index
    env.update(extra)
    return env


def _agent(args, env, timeout=120):
    return subprocess.run(AGENT_CMD + args, capture_output=True, text=True, timeout=timeout, env=env)


def _stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _leak_docs(docs, pid):
    return [d for d in docs if d["pid"] == pid and d["function"].endswith("leak") and d["line"] == LEAK_LINE]


def _no_secret(*texts: str, extra=()) -> None:
    for text in texts:
        for secret in (*TARGET_SECRETS.values(), PASSWORD, CMDLINE_SECRET, *extra):
            if secret.startswith("http"):
                continue  # a URL is not a secret; it is checked by where documents land
            assert secret not in text, (secret, text[-2000:])


@BPF_SKIP
def test_once_ships_both_routes_and_a_service_keeps_its_index_and_job(
    tmp_path,
    tag,
    shim,
    nginx,  # noqa: F811
    es,  # noqa: F811
    es_index,  # noqa: F811
    other_index,
):
    """A preloaded service with the original variables (its own index and job name, and
    credentials and a URL the agent must ignore) and a plain process: one agent, --once, basic
    auth through nginx; each process lands where it should, with its route as ``source``."""
    pre = _start(
        tmp_path,
        tag,
        shim=shim,
        env_extra={
            "ENABLE_ELASTICSEARCH": "1",
            "ELASTICSEARCH_INDEX": other_index,
            "NOMAD_JOB_NAME": "billing-api",
            **TARGET_SECRETS,
        },
    )
    plain = _start(tmp_path, tag)
    env = _agent_env(
        nginx.url("basic") + "/_bulk",
        es_index,
        ELASTICSEARCH_USERNAME=USER,
        ELASTICSEARCH_PASSWORD=PASSWORD,
        NOMAD_JOB_NAME="trackleak-agent",
    )
    try:
        r = _agent(["--once", "--interval", "2", "--cmdline", tag, "--host-name", "h-once"], env)
    finally:
        _stop(pre, plain)
    assert r.returncode == 0, r.stderr
    assert "shipping every watched process" in r.stderr, r.stderr
    assert "document(s) shipped to" in r.stderr and "dropped" not in r.stderr, r.stderr

    mine = search_all(es, es_index)
    svc = search_all(es, other_index)
    assert {d["pid"] for d in mine} == {plain.pid}, mine[:3]
    assert {d["pid"] for d in svc} == {pre.pid}, svc[:3]
    for docs, pid, source, job in (
        (mine, plain.pid, "ebpf", "unknown"),
        (svc, pre.pid, "preload", "billing-api"),
    ):
        assert {d["source"] for d in docs} == {source}
        assert {d["job_name"] for d in docs} == {job}
        assert {d["hostname"] for d in docs} == {"h-once"}
        (leak,) = _leak_docs(docs, pid)
        assert leak["live_bytes"] > 100_000 and leak["total_mb"] > 0
        assert tag in leak["command"] and "--password=***" in leak["command"]
        assert leak["python"] and leak["python"].startswith(f"{sys.version_info[0]}.")
    import json

    _no_secret(r.stdout, r.stderr, json.dumps(mine), json.dumps(svc))


def test_requested_only_and_an_agent_that_does_not_ship(tmp_path, tag, shim, es, es_url, es_index):  # noqa: F811
    """--es-ship requested ships only the process that set ENABLE_ELASTICSEARCH=1; an agent
    without the variables ships nothing and says so once; ENABLE_ELASTICSEARCH=1 without a URL is a
    clear error."""
    asking = _start(
        tmp_path, tag, shim=shim, env_extra={"ENABLE_ELASTICSEARCH": "1", "NOMAD_JOB_NAME": "svc-a"}
    )
    quiet = _start(tmp_path, tag + "q", shim=shim)
    args = ["--once", "--no-ebpf", "--interval", "1", "--cmdline", tag]
    try:
        r = _agent([*args, "--es-ship", "requested"], _agent_env(es_url, es_index))
        off = _agent(args, _agent_env(None))
        no_url = _agent(args, _agent_env(None, ENABLE_ELASTICSEARCH="1"))
    finally:
        _stop(asking, quiet)
    assert r.returncode == 0, r.stderr
    docs = search_all(es, es_index)
    assert {d["pid"] for d in docs} == {asking.pid} and {d["job_name"] for d in docs} == {"svc-a"}
    assert {d["source"] for d in docs} == {"preload"}

    assert off.returncode == 0, off.stderr
    notice = [ln for ln in off.stderr.splitlines() if "asks for shipping" in ln]
    assert len(notice) == 1 and f"pid {asking.pid}" in notice[0], off.stderr
    assert "ELASTICSEARCH_URL" in notice[0] and "not shipped" in notice[0]

    assert no_url.returncode == 2, no_url.stderr
    assert "ELASTICSEARCH_URL is not set" in no_url.stderr and "Traceback" not in no_url.stderr


def test_process_started_after_the_agent_is_shipped(tmp_path, tag, shim, es, es_url, es_index):  # noqa: F811
    agent = subprocess.Popen(
        [*AGENT_CMD, "--no-ebpf", "--interval", "1", "--cmdline", tag, "--no-live", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_agent_env(es_url, es_index),
    )
    late = None
    try:
        time.sleep(1.5)
        late = _start(tmp_path, tag, shim=shim, env_extra={"NOMAD_JOB_NAME": "late-job"})
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if wait_count(es, es_index, 1, timeout=0.5) and _leak_docs(search_all(es, es_index), late.pid):
                break
            time.sleep(0.3)
        _stop(late)  # it exits: its final rows are shipped once more, then no longer
        exited = time.time()
        time.sleep(3.5)
        agent.send_signal(signal.SIGTERM)
        _out, err = agent.communicate(timeout=30)
    finally:
        if late is not None:
            _stop(late)
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, err
    docs = search_all(es, es_index)
    leak = _leak_docs(docs, late.pid)
    assert (
        leak and {d["job_name"] for d in leak} == {"late-job"} and {d["source"] for d in leak} == {"preload"}
    )
    # after its exit: its final rows once (the next interval), not again every interval
    after_exit = sorted({d["timestamp"] for d in leak if d["timestamp"] > exited})
    assert len(after_exit) <= 1, (exited, after_exit)
    assert "document(s) shipped to" in err, err


def test_two_agents_one_index_queried_per_host(tmp_path, tag, shim, es, es_url, es_index):  # noqa: F811
    """Two agents (--host-name host-a / host-b, the _bulk and the base URL forms) ship the same
    preloaded process into one index; a term query on hostname gives each its own."""
    pre = _start(tmp_path, tag, shim=shim)
    args = ["--once", "--no-ebpf", "--interval", "1", "--cmdline", tag]
    cmd = AGENT_CMD
    try:
        a = subprocess.Popen(
            [*cmd, *args, "--host-name", "host-a"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_agent_env(es_url + "/_bulk", es_index),
        )
        b = subprocess.Popen(
            [*cmd, *args, "--host-name", "host-b"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_agent_env(es_url, es_index),
        )
        outs = [p.communicate(timeout=60) for p in (a, b)]
    finally:
        _stop(pre)
    for p, (_o, err) in zip((a, b), outs):
        assert p.returncode == 0, err
    per_host = {}
    for host in ("host-a", "host-b"):
        docs = search_all(es, es_index, query={"term": {"hostname": host}})
        assert docs and {d["hostname"] for d in docs} == {host}
        assert _leak_docs(docs, pre.pid), docs[:3]
        per_host[host] = docs
    assert len(search_all(es, es_index)) == sum(len(d) for d in per_host.values())


def test_server_gone_mid_run_agent_and_target_keep_going(tmp_path, tag, shim, own_nginx, es, es_index):  # noqa: F811
    """nginx (the only way to the server) stops 3 s into the run and comes back 4 s later: the
    agent keeps its pace (rows every interval, exit 0), the target keeps running, the cause is said
    once, drops are reported (a 2-batch queue), shipping resumes and documents of after the outage
    arrive."""
    import psutil

    pre = _start(
        tmp_path,
        tag,
        shim=shim,
        env_extra={"ELASTICSEARCH_PASSWORD": TARGET_SECRETS["ELASTICSEARCH_PASSWORD"]},
    )
    env = _agent_env(
        own_nginx.url("basic") + "/_bulk",
        es_index,
        ELASTICSEARCH_USERNAME=USER,
        ELASTICSEARCH_PASSWORD=PASSWORD,
        TRACKLEAK_ES_QUEUE_BATCHES="2",
    )
    agent = subprocess.Popen(
        [*AGENT_CMD, "--no-ebpf", "--interval", "0.5", "--duration", "13", "--cmdline", tag, "--no-live"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert wait_count(es, es_index, 1, timeout=10) > 0, "nothing shipped before the outage"
        rss_before = psutil.Process(agent.pid).memory_info().rss
        own_nginx.stop()
        time.sleep(4)
        assert agent.poll() is None and pre.poll() is None
        rss_during = psutil.Process(agent.pid).memory_info().rss
        own_nginx.start()
        restarted = time.time()
        out, err = agent.communicate(timeout=60)
        assert pre.poll() is None, "the target died"
    finally:
        _stop(pre)
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, err
    refused = [ln for ln in err.splitlines() if "connection refused" in ln and "shipped to" not in ln]
    assert len(refused) == 1 and refused[0].startswith("trackleak-agent: elasticsearch: "), err
    assert "shipping again" in err, err
    assert "queue full" in err, err
    (summary,) = [ln for ln in err.splitlines() if "document(s) shipped to" in ln]
    assert "dropped" in summary, err
    # the agent kept its pace throughout: a progress line per interval (0.5 s over 13 s)
    assert sum(1 for ln in err.splitlines() if ln.startswith("trackleak: ") and "pids=" in ln) >= 18, err
    assert rss_during - rss_before < 20 * 1024 * 1024
    docs = search_all(es, es_index)
    assert any(d["timestamp"] >= int(restarted) for d in _leak_docs(docs, pre.pid)), sorted(
        d["timestamp"] for d in docs
    )
    _no_secret(out, err)


@BPF_SKIP
def test_attach_by_pid_ships_with_the_process_own_job_name(tmp_path, tag, es, es_url, es_index):  # noqa: F811
    """`trackleak-agent --pid` ships like the host agent (one sink): its documents are the
    process's, ``source`` ebpf, the process's own NOMAD_JOB_NAME, the agent's index; every
    interval and once more at the end."""
    target = _start(
        tmp_path, tag, env_extra={"NOMAD_JOB_NAME": "orders-worker", **TARGET_SECRETS}, seconds=60
    )
    env = _agent_env(es_url, es_index)
    try:
        r = _agent(["--pid", str(target.pid), "--duration", "4", "--interval", "1", "--quiet"], env)
    finally:
        _stop(target)
    assert r.returncode == 0, r.stderr
    assert "shipping every watched process" in r.stderr and "document(s) shipped to" in r.stderr, r.stderr
    docs = search_all(es, es_index)
    assert {d["pid"] for d in docs} == {target.pid}, docs[:3]
    assert {d["source"] for d in docs} == {"ebpf"} and {d["job_name"] for d in docs} == {"orders-worker"}
    leaks = _leak_docs(docs, target.pid)
    assert len(leaks) >= 3, [(d["function"], d["line"]) for d in docs]  # every interval, and the end
    last = max(leaks, key=lambda d: d["elapsed_seconds"])
    assert last["live_bytes"] > 100_000 and tag in last["command"] and "--password=***" in last["command"]
    import json

    _no_secret(r.stdout, r.stderr, json.dumps(docs))

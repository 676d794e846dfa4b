# SPDX-License-Identifier: MIT
"""trackleak-agent's outputs (agent/ebpf/agent.py) over a fake session: growth from the session's
history in every view, the drop counters on every output, the JSON document with its series."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from trackleak.ebpf.agent import AgentOptions, dropped_text, pid_session, sampling_text
from trackleak.history import History, pid_site_key
from trackleak.table import RetentionTable, Row


class FakeSession:
    """Polls make 'leak' grow by 1 MiB and keep 'flat' flat; the sites map is said to be full."""

    def __init__(self, pids, tunables, **_kw):
        self.pids = pids
        self.tunables = tunables
        self.interval = 50 * 1024
        self.table = RetentionTable()
        self.history = History()
        self.pid_history = History(key=pid_site_key)
        self.targets = {pids[0]: SimpleNamespace(pid=pids[0], python=None, alive=True)}
        self.loader = SimpleNamespace(probes=[1, 2, 3])
        self.polls = 0
        self.counters = {"sites_full": 12, "live_full": 0, "pending_full": 3}

    def start(self):
        pass

    def stop(self):
        self.poll()

    def poll(self):
        self.polls += 1
        pid = self.pids[0]
        rows = [
            Row(
                "leak",
                "/app/a.py",
                3,
                count=self.polls,
                total_bytes=self.polls << 20,
                pid=pid,
                source="ebpf",
                live_bytes=self.polls << 20,
            ),
            Row(
                "flat",
                "/app/a.py",
                9,
                count=5,
                total_bytes=5 << 20,
                pid=pid,
                source="ebpf",
                live_bytes=2 << 20,
            ),
        ]
        self.table.replace_pid(pid, rows)
        t = float(self.polls)  # one second per poll
        self.history.observe(t, self.table.merged(), interval=self.interval)
        self.pid_history.observe(t, self.table, interval=self.interval)
        return self.table

    def merged_rows(self):
        return self.history.annotate(self.table.merged())

    def pid_rows(self):
        self.pid_history.annotate(self.table)
        return self.table

    def dropped(self):
        return {k: self.counters[k] for k in ("sites_full", "live_full", "pending_full")}

    def meta(self):
        return {"source": "ebpf", "pids": self.pids, "dropped": self.dropped(), "counters": self.counters}


@pytest.mark.parametrize("sort", ["leak", "live"])
def test_final_table_json_and_summaries_carry_growth_and_drops(tmp_path, sort):
    out = tmp_path / "out.json"
    opts = AgentOptions(pids=[42], duration=0.5, interval=0.05, json_path=out, live=False, sort=sort)
    stdout, stderr = io.StringIO(), io.StringIO()
    agent = pid_session(opts, stdout=stdout, stderr=stderr, session_factory=FakeSession)
    assert agent.run() == 0
    err = stderr.getvalue()
    # every summary line and the head line say what was dropped
    summaries = [line for line in err.splitlines() if "sites=" in line]
    assert summaries and all("dropped=sites_full:12,pending_full:3" in line for line in summaries)
    head = next(line for line in err.splitlines() if "process(es)" in line)
    assert "12 allocations not counted (sites map full)" in head
    assert "3 samples lost (pending map full)" in head and f"by {sort}" in head
    # the final table ranks the growing leak first
    table_lines = stdout.getvalue().splitlines()
    assert table_lines[2].startswith("leak"), stdout.getvalue()
    # the JSON document: rows with growth, the series, the drop counters in meta
    doc = json.loads(out.read_text())
    assert doc["meta"]["dropped"] == {"sites_full": 12, "live_full": 0, "pending_full": 3}
    sites = {s["function"]: s for s in doc["sites"]}
    assert sites["leak"]["growing"] is True and sites["leak"]["growth_bytes_per_s"] > 0
    assert sites["flat"]["growing"] is False
    series = {h["function"]: h["points"] for h in doc["history"]}
    assert len(series["leak"]) >= 3 and series["leak"][-1][1] > series["leak"][0][1]


def test_texts():
    assert (
        dropped_text({"sites_full": 0, "live_full": 0, "pending_full": 0})
        == "nothing dropped (maps never full)"
    )
    assert dropped_text({"sites_full": 0, "live_full": 0, "pending_full": 0}, short=True) == "dropped=0"
    assert dropped_text({"sites_full": 0, "live_full": 7, "pending_full": 0}) == (
        "dropped: 7 samples lost (live-set map full)"
    )
    assert sampling_text(0) == "every allocation sampled"
    assert sampling_text(50 * 1024) == "sampling p(s) = 1 - exp(-s / 50.0 KiB)"


def test_cli_sort_choices_match_trackleak_run(monkeypatch):
    from trackleak.cli._common import SortBy
    from trackleak.cli.commands import agent as cli
    from trackleak.ebpf import agent as agent_mod

    seen = {}
    monkeypatch.setattr(agent_mod, "run_agent", lambda opts, **kw: seen.setdefault("opts", opts) and 0)
    for choice in SortBy:
        seen.clear()
        with pytest.raises(SystemExit) as exc:
            cli.main(["--pid", "1", "--sort", choice.value, "--sample-bytes", "4096"])
        assert exc.value.code == 0
        assert seen["opts"].sort == choice.value and seen["opts"].sample_bytes == 4096
    with pytest.raises(SystemExit) as exc:
        cli.main(["--pid", "1", "--sort", "nonsense"])
    assert exc.value.code == 2


def test_the_agent_and_doctor_accept_capabilities_as_well_as_root(tmp_path):
    """The deploy units may run the agent as a user holding CAP_BPF + CAP_PERFMON: the agent takes
    them as doctor does (it once required uid 0 whatever its capabilities)."""
    from trackleak.ebpf.privileges import CAP_BPF, CAP_PERFMON, can_attach, effective_capabilities

    both = 1 << CAP_BPF | 1 << CAP_PERFMON
    assert can_attach(euid=1000, caps=both) == (True, "capabilities (CAP_BPF=True, CAP_PERFMON=True)")
    assert can_attach(euid=1000, caps=1 << CAP_BPF)[0] is False
    assert can_attach(euid=0, caps=0)[0] is True
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t000000c000000000\n")
    assert effective_capabilities(str(status)) == both
    status.write_text("CapEff:\tnot-hex\n")
    assert effective_capabilities(str(status)) == 0

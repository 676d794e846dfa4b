# SPDX-License-Identifier: MIT
"""trackleak.fleet.es without a server: which process goes to which index with which job name,
exited processes shipped once, --es-ship requested, the index cap, the not-configured notice."""

from __future__ import annotations

from trackleak.es.config import EsConfig
from trackleak.es.schema import validate
from trackleak.fleet import es as fleet_es
from trackleak.table import Row


class FakeShipper:
    def __init__(self, config):
        self.config = config
        self.max_queue_bytes = None
        self.docs: list[dict] = []
        self.closed = None

    def submit_docs(self, docs):
        docs = list(docs)
        self.docs += docs
        return len(docs)

    def close(self, deadline):
        self.closed = deadline
        return {}

    def summary(self):
        return f"{len(self.docs)} document(s) shipped to {self.config.url} index {self.config.index}"


def _sink(ship="all", said=None):
    config = EsConfig(url="http://127.0.0.1:9200", index="agent-idx", job_name="trackleak-agent")
    said = said if said is not None else []
    return fleet_es.FleetShipping(config, ship=ship, say=said.append, shipper_factory=FakeShipper), said


def _proc(pid, es=None, exited=False, started=1000.0):
    return {
        "pid": pid,
        "source": "preload",
        "watched": True,
        "command": f"python app{pid}.py",
        "python": "3.11.7",
        "exited": exited,
        "started": started,
        "elasticsearch": es or {},
    }


def _meta(*procs, t=1060.0):
    return {"host": "h1", "time": t, "elapsed_seconds": 5.0, "processes": {str(p["pid"]): p for p in procs}}


def _rows(*pids):
    return [Row("f", "a.py", 3, count=2, total_bytes=100, pid=pid, source="preload") for pid in pids]


def test_own_index_and_job_else_the_agents_index_and_unknown():
    sink, _ = _sink()
    svc = _proc(
        1, {"ENABLE_ELASTICSEARCH": "1", "ELASTICSEARCH_INDEX": "svc-idx", "NOMAD_JOB_NAME": "billing"}
    )
    sink(_rows(1, 2), _meta(svc, _proc(2)))
    (doc,) = sink.shippers["svc-idx"].docs
    assert doc["job_name"] == "billing" and doc["pid"] == 1 and doc["hostname"] == "h1"
    assert doc["elapsed_seconds"] == 60 and doc["python"] == "3.11.7" and doc["command"] == "python app1.py"
    assert validate(doc) == []
    (doc2,) = sink.shippers["agent-idx"].docs
    assert doc2["job_name"] == "unknown" and doc2["pid"] == 2  # never the agent's own job name
    assert sink.shippers["svc-idx"].config.url == "http://127.0.0.1:9200"  # the agent's connection


def test_exited_process_shipped_once_more_then_not():
    sink, _ = _sink()
    sink(_rows(1), _meta(_proc(1)))
    sink(_rows(1), _meta(_proc(1, exited=True)))
    sink(_rows(1), _meta(_proc(1, exited=True)))
    assert len(sink.shippers["agent-idx"].docs) == 2
    sink(_rows(1), _meta(_proc(1, started=2000.0)))  # the pid reused: a new process
    assert len(sink.shippers["agent-idx"].docs) == 3


def test_requested_ships_only_processes_that_asked():
    sink, _ = _sink("requested")
    sink(_rows(1, 2), _meta(_proc(1, {"ENABLE_ELASTICSEARCH": "1"}), _proc(2, {"ENABLE_ELASTICSEARCH": "0"})))
    assert [d["pid"] for d in sink.shippers["agent-idx"].docs] == [1]


def test_index_cap_and_close():
    said = []
    sink, _ = _sink(said=said)
    procs = [_proc(p, {"ELASTICSEARCH_INDEX": f"i{p}"}) for p in range(1, fleet_es.MAX_INDICES + 4)]
    sink(_rows(*range(1, fleet_es.MAX_INDICES + 4)), _meta(*procs))
    assert len(sink.shippers) == fleet_es.MAX_INDICES + 1  # the agent's index besides
    assert sum("more than" in s for s in said) == 1
    sink.close(deadline=3.0)
    assert all(s.closed is not None for s in sink.shippers.values())
    assert sum("document(s) shipped" in s for s in said) == len(sink.shippers)
    sink(_rows(1), _meta(procs[0]))  # after close: nothing
    assert len(sink.shippers["i1"].docs) == 1


def test_the_indices_share_one_queue_budget():
    """Elasticsearch down, 17 indices: the agent holds at most one budget of queued documents, not
    one per index."""
    sink, _ = _sink()
    procs = [_proc(p, {"ELASTICSEARCH_INDEX": f"i{p}"}) for p in range(1, 5)]
    sink(_rows(1), _meta(procs[0]))
    assert sink.shippers["i1"].max_queue_bytes == fleet_es.QUEUE_BYTES
    sink(_rows(1, 2, 3, 4), _meta(*procs))
    assert len(sink.shippers) == 4
    assert {s.max_queue_bytes for s in sink.shippers.values()} == {fleet_es.QUEUE_BYTES // 4}


def test_from_env_off_and_notice_once():
    assert fleet_es.FleetShipping.from_env({}) is None
    said = []
    notice = fleet_es.NotShippingNotice(say=said.append)
    notice([], _meta(_proc(1)))
    assert said == []
    for _ in range(3):
        notice([], _meta(_proc(1), _proc(7, {"ENABLE_ELASTICSEARCH": "1"})))
    assert len(said) == 1 and "pid 7" in said[0] and "ELASTICSEARCH_URL" in said[0]

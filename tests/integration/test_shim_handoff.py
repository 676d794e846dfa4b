"""The shim's side of the handoff (TRACKLEAK_HANDOFF): what it sends, and that it never hurts.

A test-owned Listener (trackleak.sources.handoff) stands in for `trackleak run`. The shim sends one
datagram with its memfd per table: at start-up, in each forked child, again after exec. Nothing
about the handoff may block, crash or slow the target: a bogus variable, no listener, a directory
that is not private, a full queue.
"""

from __future__ import annotations

import os
import stat

import pytest
from helpers import line_of, run_preloaded

from trackleak.sources import handoff as H

FAMILY = """\
import os, signal, sys
if len(sys.argv) > 1:
    print("exec", os.getpid(), os.getppid(), flush=True)
    sys.exit(0)
print("parent", os.getpid(), os.getppid(), flush=True)
pid = os.fork()
if pid == 0:
    print("child", os.getpid(), os.getppid(), flush=True)
    keep = [bytearray(100_000) for _ in range(5)]  # ALLOC: child
    os.kill(os.getpid(), signal.SIGKILL)
os.waitpid(pid, 0)
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, __file__, "again"])
os.waitpid(pid, 0)
"""


@pytest.fixture
def listener():
    got, errors = [], []
    lst = H.Listener(got.append, on_error=errors.append)
    lst.got, lst.errors = got, errors
    yield lst
    for h in got:
        os.close(h.fd)
    lst.close()


def test_every_table_is_handed_off_with_true_claims(cpython, listener, tmp_path):
    # GIVEN a parent, a forked child killed by SIGKILL after it leaks, and a forked child that exec's
    script = tmp_path / "family.py"
    script.write_text(FAMILY)
    res = run_preloaded(cpython, script, env={H.ENV_HANDOFF: listener.path}, min_size=1000)
    assert res.returncode == 0, res.describe()
    assert "[trackleak]" not in res.stderr, res.stderr
    procs = [line.split() for line in res.stdout.splitlines()]
    who = {name: (int(pid), int(ppid)) for name, pid, ppid in procs}
    listener.drain()
    assert not listener.errors, listener.errors
    # THEN one table per process image: the parent, the killed child, the exec'ing child twice
    # (its fork copy, then its exec'd image: same pid, later start)
    got = [(h.pid, h.ppid) for h in listener.got]
    assert got[0] == who["parent"] and got[1] == who["child"], (got, who)
    assert got[2:] == [who["exec"], who["exec"]], (got, who)
    starts = [h.start_time_ns for h in listener.got]
    assert starts == sorted(starts) and len(set(starts)) == 4
    # AND the killed child's table, read through our descriptor after its death, has its leak
    child = listener.got[1]
    snap = H.read_table(child.fd, child.pid)
    assert "forked" in snap.header.flag_names
    rows = [r for r in snap.rows if r.file == str(script) and r.line == line_of(script, "child")]
    # (5 buffers; on CPython 3.13+ the line's objects too: the bytearrays, the list, call tuples)
    assert sum(r.count for r in rows) >= 5, [r for r in snap.rows if r.count][:10]
    assert sum(r.live_bytes for r in rows) >= 5 * 100_000, [r for r in snap.rows if r.count][:10]


@pytest.mark.parametrize(
    "value",
    ["relative/handoff", "/" + "x" * 200, "/tmp/bad\nname", "/tmp/" + "n" * 80, "/tmp/"],
)
def test_a_bogus_variable_gets_one_warning(interpreters, value, tmp_path):
    res = run_preloaded(interpreters[-1], "import os\nos.fork() or print('ok')\n", env={H.ENV_HANDOFF: value})
    assert res.returncode == 0 and "ok" in res.stdout, res.describe()
    assert res.stderr.count("ignoring TRACKLEAK_HANDOFF") == 1, res.stderr


def test_no_listener_is_quiet(interpreters, tmp_path):
    for path in (tmp_path / "nobody" / "sock", tmp_path / "sock"):
        res = run_preloaded(
            interpreters[-1], "import os\nos.fork() or print('ok')\n", env={H.ENV_HANDOFF: path}
        )
        assert res.returncode == 0 and "ok" in res.stdout, res.describe()
        assert "[trackleak]" not in res.stderr, res.stderr


def test_a_directory_others_can_write_gets_nothing(interpreters, tmp_path, listener):
    # GIVEN a socket in a directory every user can write to (another user could have made it)
    public = tmp_path / "public"
    public.mkdir()
    public.chmod(0o777)
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(public / "sock"))
        s.setblocking(False)
        res = run_preloaded(interpreters[-1], "print('ok')\n", env={H.ENV_HANDOFF: public / "sock"})
        assert res.returncode == 0 and "ok" in res.stdout, res.describe()
        # THEN the shim sends nothing there, and says why once
        with pytest.raises(BlockingIOError):
            s.recv(64)
    assert res.stderr.count("not private") == 1, res.stderr
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o777


def test_a_full_queue_never_blocks_the_target(interpreters, listener):
    # GIVEN a listener that does not read (its queue holds net.unix.max_dgram_qlen datagrams)
    code = (
        "import os\nfor i in range(30):\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n"
        "    os.waitpid(pid, 0)\nprint('ok')\n"
    )
    res = run_preloaded(interpreters[-1], code, env={H.ENV_HANDOFF: listener.path}, timeout=60)
    # THEN the program runs to the end as usual; the children that could not hand off say so
    assert res.returncode == 0 and "ok" in res.stdout, res.describe()
    assert res.seconds < 30
    assert "queue is full" in res.stderr, res.stderr
    assert listener.drain() >= 1

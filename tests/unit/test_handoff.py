# SPDX-License-Identifier: MIT
"""The handoff receiver: what it accepts, what it refuses (and closes), and how it keeps tables.

Messages are sent by this very process to a real Listener socket, with real descriptors: a memfd
named "trackleak" holding a segment built by fakeseg.py (what a preloaded process sends), and the
hostile variants (a pipe, a plain file, a memfd with another name, two descriptors, lies about the
pid or the table).
"""

from __future__ import annotations

import array
import mmap
import os
import socket
import stat
import struct

import pytest
from fakeseg import FakeSite, segment

from trackleak import layout as L
from trackleak.sources import handoff as H

START = 1_700_000_000 * 10**9  # fakeseg's header start time
_START_OFF = L.TlShmHeader.start_time_ns.offset


def table(pid=None, ppid=None, start=START, sites=(FakeSite(),), name="trackleak") -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    data = bytearray(segment(list(sites), capacity=8, pid=pid or os.getpid(), ppid=ppid or os.getppid()))
    struct.pack_into("=Q", data, _START_OFF, start)
    os.write(fd, bytes(data))
    return fd


def message(pid=None, ppid=None, start=START, magic=H.MAGIC, version=H.VERSION) -> bytes:
    return H.MESSAGE.pack(magic, version, pid or os.getpid(), ppid or os.getppid(), 0, start)


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def listener():
    got, errors = [], []
    lst = H.Listener(got.append, on_error=errors.append)
    lst.got, lst.errors = got, errors
    yield lst
    for h in got:
        os.close(h.fd)
    lst.close()


def send(lst, data: bytes, fds=()) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        s.sendmsg([data], anc, 0, lst.path)


def test_the_socket_is_private_and_the_path_fits(listener):
    st = os.stat(listener.dir)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert len(os.fsencode(listener.path)) < H.SUN_PATH_MAX
    assert not os.get_inheritable(listener.sock.fileno())
    listener.close()
    assert not os.path.exists(listener.dir)


def test_a_good_message_is_accepted_with_its_descriptor(listener):
    fd = table()
    send(listener, message(), [fd])
    os.close(fd)
    assert listener.drain() == 1
    (h,) = listener.got
    assert (h.pid, h.ppid, h.start_time_ns) == (os.getpid(), os.getppid(), START)
    assert os.readlink(f"/proc/self/fd/{h.fd}").startswith("/memfd:trackleak")
    assert not os.get_inheritable(h.fd)  # MSG_CMSG_CLOEXEC
    snap = H.read_table(h.fd, h.pid)
    assert [r.function for r in snap.rows] == ["leaky"] and snap.rows[0].count == 10


def _bad_cases(tmp):
    plain = os.open(os.path.join(tmp, "plain"), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(plain, segment([FakeSite()], capacity=8, pid=os.getpid(), ppid=os.getppid()))
    r, w = os.pipe()  # reading the pipe would block: it must never be read
    return [
        ("bad magic", message(magic=b"NOTHANDO"), [table()]),
        ("version", message(version=99), [table()]),
        ("bytes, expected 32", message()[:20], [table()]),
        ("claims pid", message(pid=1), [table(pid=1)]),
        ("does not match", message(start=START + 1), [table()]),
        ("does not match", message(), [table(ppid=1)]),
        ("descriptors in one message", message(), []),
        ("descriptors in one message", message(), [table(), table()]),
        ("regular file", message(), [r]),
        ("not a trackleak memfd", message(), [plain]),
        ("not a trackleak memfd", message(), [table(name="other")]),
        ("not a table", message(), [os.memfd_create("trackleak")]),
        ("layout version", message(), [_with_version(table(), 99)]),
    ], [w]


def _with_version(fd: int, version: int) -> int:
    os.pwrite(fd, struct.pack("=I", version), 8)
    return fd


def test_hostile_messages_are_refused_and_their_descriptors_closed(listener, tmp_path):
    cases, keep = _bad_cases(str(tmp_path))
    try:
        for why, data, fds in cases:
            before = open_fds()
            send(listener, data, fds)
            for fd in fds:
                os.close(fd)
            assert listener.drain() == 0, why
            assert why in listener.errors[-1], (why, listener.errors[-1])
            # nothing we received stays open
            assert open_fds() <= before, why
    finally:
        for fd in keep:
            os.close(fd)
    assert not listener.got


def test_the_thread_drains_and_stop_takes_the_rest(listener):
    listener.start()
    for _ in range(3):
        fd = table()
        send(listener, message(), [fd])
        os.close(fd)
    listener.stop()
    assert len(listener.got) == 3 and not listener.errors


# --------------------------------------------------------------------------- keeping tables


def handoff(start=START, count=10, pid=None, mapped=None) -> H.Handoff:
    fd = table(start=start, sites=[FakeSite(count=count, total_bytes=count * 100)], pid=pid)
    st = os.fstat(fd)
    if mapped is not None:
        mapped.append(mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ))
    return H.Handoff(pid or os.getpid(), os.getppid(), start, fd, st.st_ino, st.st_size)


def counts(tables: H.HandoffTables) -> dict:
    return {pid: sum(r.count for r in rows) for pid, rows in tables.rows_by_pid().items()}


def test_a_table_is_read_while_mapped_and_kept_after_it_is_unmapped():
    tables = H.HandoffTables()
    maps = []
    h = handoff(mapped=maps)
    tables.offer(h)
    tables.refresh()
    assert tables.held_pids() == {os.getpid()} and counts(tables) == {os.getpid(): 10}
    # WHEN the process stops mapping it (it exited): one last read, the descriptor closed
    maps.pop().close()
    tables.refresh()
    assert tables.held_pids() == set() and counts(tables) == {os.getpid(): 10}
    with pytest.raises(OSError):
        os.fstat(h.fd)


def test_a_new_table_of_the_same_pid_ends_the_old_one_and_both_count():
    # an exec'd process: same pid, a new table that starts from zero
    tables = H.HandoffTables()
    maps = []
    first, second = handoff(START, 10, mapped=maps), handoff(START + 5, 7, mapped=maps)
    tables.offer(first)
    tables.refresh()
    tables.offer(second)
    tables.refresh()
    assert counts(tables) == {os.getpid(): 17}
    assert len(tables.running) == 1 and len(tables.finished) == 1
    assert tables.latest_start(os.getpid()) == START + 5
    # the same table twice counts once
    tables.offer(handoff(START + 5, 7))
    tables.refresh()
    assert counts(tables) == {os.getpid(): 17}
    tables.finish_all()
    for m in maps:
        m.close()


def test_finished_tables_past_the_bound_are_added_up_under_pid_zero():
    tables = H.HandoffTables(max_kept=2)
    pids = [os.getpid() + 100000 + i for i in range(5)]  # not mapped by anyone: finished at once
    for i, pid in enumerate(pids):
        tables.offer(handoff(START + i, 1 + i, pid=pid))
    tables.refresh()
    by_pid = counts(tables)
    assert len(tables.finished) == 2 and sum(by_pid.values()) == 1 + 2 + 3 + 4 + 5
    assert by_pid[0] == 3 + 4 + 5 and tables.folded_pids == set(pids[2:])
    assert tables.pids() == set(pids)
    assert not tables.running


def test_past_max_open_a_table_is_read_once_and_left_to_proc(monkeypatch):
    monkeypatch.setattr(H, "still_mapped", lambda pid, inode: True)  # two running processes
    tables = H.HandoffTables(max_open=1)
    maps = []
    a, b = handoff(START, 3, mapped=maps), handoff(START + 1, 4, pid=os.getpid() + 1, mapped=maps)
    tables.offer(a)
    tables.offer(b)
    tables.refresh()
    assert len(tables.running) == 1
    assert tables.latest_start(os.getpid() + 1) is None  # released: /proc discovery's
    assert os.getpid() + 1 not in tables.pids()
    assert counts(tables) == {os.getpid(): 3}
    with pytest.raises(OSError):
        os.fstat(b.fd)  # not held
    tables.close()
    for m in maps:
        m.close()


def test_still_mapped_knows_the_inode():
    fd = table()
    st = os.fstat(fd)
    m = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
    try:
        assert H.still_mapped(os.getpid(), st.st_ino)
        assert not H.still_mapped(os.getpid(), st.st_ino + 1)
    finally:
        m.close()
        os.close(fd)
    assert not H.still_mapped(os.getpid(), st.st_ino)
    assert not H.still_mapped(2**22 + 12345, st.st_ino)  # no such process

# SPDX-License-Identifier: MIT
"""Tables handed off by the shim: ``trackleak run`` holds a descriptor of every process's memfd.

A process's live table is a memfd (``trackleak.sources.shm``). Read through ``/proc/PID/mem`` it is
gone with the process: a worker killed by SIGTERM or SIGKILL (a pool that terminates its workers,
the OOM killer) takes its table along unless a poll happened to catch it. A memfd, though, lives
as long as any descriptor of it is open. So ``trackleak run`` listens on a Unix datagram socket in
a private 0700 directory and passes its path to the child in ``TRACKLEAK_HANDOFF``; the shim sends
each table's descriptor there (SCM_RIGHTS) right after creating it: at start-up, and in a forked
child when it maps its fresh table (preload/src/shm_table.c). The runner keeps the descriptor,
reads the table through it (``pread``, never through the process), and after the process is gone
reads it one last time and closes it.

The message (``struct tl_handoff_msg`` in shm_table.c, 32 bytes, native byte order)::

    char magic[8] = "TLHANDOF"; uint32 version = 1; int32 pid; int32 ppid; uint32 reserved;
    uint64 start_time_ns   /* the table header's start_time_ns */

Everything that arrives is untrusted, as the segment itself is (``parse_segment``): exactly one
descriptor, and it must be a regular file named ``/memfd:trackleak`` of a sane size (never a pipe
or a device that would block a read); the claimed pid must be the sender's pid as the kernel
reports it (SCM_CREDENTIALS, the socket has SO_PASSCRED) and the sender our user (or root); pid,
ppid and start time must match the table's header. Anything else is closed and counted.

One process can hand off more than one table: an exec'd process makes a new one (same pid, new
start time). Each table is one *incarnation*, keyed by (pid, start time); all of them count, and as
each starts from zero (a forked child's counters start at the fork) adding them counts nothing
twice. An incarnation is over when its process no longer maps that memfd (exit, any signal, exec,
or the pid reused by another process): ``/proc/PID/maps`` no longer lists its inode.

Bounds: descriptors are held only for running processes (closed once their final table is read),
at most ``max_open`` at once (past that a table is read once, closed, and left to /proc
discovery). The rows of at most ``max_kept`` finished processes are kept one by one; the rows of
later ones are added into one bucket per site with ``pid`` 0, so the totals stay exact for a server
that forks thousands of short-lived children.
"""

from __future__ import annotations

import array
import collections
import contextlib
import dataclasses
import os
import resource
import select
import socket
import stat
import struct
import tempfile
import threading
from dataclasses import dataclass, field

from .. import layout as L
from ..table import Row
from .shm import MAX_SEGMENT_BYTES, MEMFD_PATHNAMES, Header, ShmError, Snapshot, parse_header, parse_segment

ENV_HANDOFF = "TRACKLEAK_HANDOFF"
SOCKET_NAME = "handoff"
MAGIC = b"TLHANDOF"
VERSION = 1
MESSAGE = struct.Struct("=8sIiiIQ")  # struct tl_handoff_msg
assert MESSAGE.size == 32
SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), NUL included
NAME_MAX = 64  # TL_HANDOFF_NAME_MAX: the shim refuses a longer socket name
MAX_FDS_PER_MESSAGE = 4  # room for a few in the control buffer; the kernel closes what does not fit
_UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * 4) + socket.CMSG_SPACE(_UCRED.size)
RCVBUF = 1 << 20
MAX_ERRORS_KEPT = 10
DEFAULT_MAX_KEPT = 1000


class HandoffError(ShmError):
    """A handed-off descriptor or message we refuse."""


@dataclass(frozen=True)
class Handoff:
    """One accepted message: the sender (checked) and our descriptor of its table."""

    pid: int
    ppid: int
    start_time_ns: int
    fd: int
    inode: int
    size: int


# --------------------------------------------------------------------------- messages


def _close_all(fds) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def check_table_fd(fd: int) -> os.stat_result:
    """The descriptor is a trackleak memfd of a size we are willing to read; HandoffError if not."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise HandoffError(f"descriptor not usable: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise HandoffError("descriptor is not a regular file (a memfd is)")
    if st.st_size < L.HEADER_SIZE or st.st_size > MAX_SEGMENT_BYTES:
        raise HandoffError(f"descriptor of {st.st_size} bytes is not a table")
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        raise HandoffError(f"cannot name the descriptor: {exc.strerror}") from None
    if target not in MEMFD_PATHNAMES:
        raise HandoffError(f"descriptor is {target[:80]!r}, not a trackleak memfd")
    return st


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_header(fd: int, size: int) -> Header:
    try:
        head = _pread_all(fd, L.HEADER_SIZE, 0)
    except OSError as exc:
        raise HandoffError(f"reading the table failed: {exc.strerror}") from None
    return parse_header(head, mapping_size=size)


def read_table(fd: int, pid: int, size: int | None = None) -> Snapshot:
    """Read and parse a whole table through our descriptor (the process may be long gone)."""
    try:
        if size is None:
            size = os.fstat(fd).st_size
        head = _pread_all(fd, L.HEADER_SIZE, 0)
        header = parse_header(head, mapping_size=size)
        # Only the records the validated header covers: a consistent buffer while it grows.
        body = _pread_all(fd, header.site_count * L.SITE_SIZE, L.HEADER_SIZE)
        # The call stacks (frame and path records) where the validated header puts them.
        return parse_segment(
            head + body, pid=pid, mapping_size=size, read=lambda offset, n: _pread_all(fd, n, offset)
        )
    except OSError as exc:
        raise HandoffError(f"process {pid}: reading its table failed: {exc.strerror}") from None


def accept_message(data: bytes, ancdata: list, flags: int, *, euid: int | None = None) -> Handoff:
    """Validate one received datagram; the descriptor is ours when this returns, closed if it raises."""
    fds: list[int] = []
    cred = None
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(array.array("i", payload[:usable]).tolist())
        elif kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
            cred = _UCRED.unpack_from(payload)
    try:
        if flags & socket.MSG_CTRUNC:
            raise HandoffError("control data truncated (too many descriptors, or none left for us)")
        if len(fds) != 1:
            raise HandoffError(f"{len(fds)} descriptors in one message, expected 1")
        if len(data) != MESSAGE.size or flags & socket.MSG_TRUNC:
            raise HandoffError(f"message of {len(data)} bytes, expected {MESSAGE.size}")
        magic, version, pid, ppid, _reserved, start_ns = MESSAGE.unpack(data)
        if magic != MAGIC:
            raise HandoffError(f"bad magic {magic!r}")
        if version != VERSION:
            raise HandoffError(f"message version {version}, this trackleak reads {VERSION}")
        if cred is None:
            raise HandoffError("no sender credentials (SO_PASSCRED)")
        cred_pid, cred_uid, _gid = cred
        me = os.geteuid() if euid is None else euid
        if cred_uid not in (me, 0):
            raise HandoffError(f"sender uid {cred_uid} is not ours")
        if pid <= 0 or pid != cred_pid:
            raise HandoffError(f"message claims pid {pid}, the kernel says {cred_pid}")
        fd = fds[0]
        st = check_table_fd(fd)
        header = read_header(fd, st.st_size)
        if (header.pid, header.ppid, header.start_time_ns) != (pid, ppid, start_ns):
            raise HandoffError(
                f"message (pid {pid}, ppid {ppid}, start {start_ns}) does not match its table "
                f"(pid {header.pid}, ppid {header.ppid}, start {header.start_time_ns})"
            )
    except BaseException:
        _close_all(fds)
        raise
    return Handoff(pid=pid, ppid=ppid, start_time_ns=start_ns, fd=fd, inode=st.st_ino, size=st.st_size)


def still_mapped(pid: int, inode: int) -> bool:
    """Does PID still map the memfd with this inode? False once it exited, exec'd or was reused."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True  # cannot tell (another user's process): keep it until it disappears
    want = str(inode).encode()
    names = tuple(n.encode() for n in MEMFD_PATHNAMES)
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[4] == want and parts[5].strip() in names:
            return True
    return False


# --------------------------------------------------------------------------- the socket


def _private_dir() -> str:
    """A fresh 0700 directory whose socket path fits sockaddr_un (TMPDIR, else /tmp)."""
    room = SUN_PATH_MAX - 1 - len(SOCKET_NAME) - 1
    for base in (None, "/tmp"):
        path = tempfile.mkdtemp(prefix="trackleak-handoff-", dir=base)
        if len(os.fsencode(path)) <= room:
            return path
        os.rmdir(path)
    raise OSError("no temporary directory with a path short enough for a Unix socket")


class Listener:
    """The handoff socket in its private directory, drained by a thread.

    The thread only receives (so a burst of forks does not overflow the socket's small datagram
    queue, ``net.unix.max_dgram_qlen``) and hands each validated message to ``on_handoff``.
    """

    def __init__(self, on_handoff, *, on_error=None) -> None:
        self.dir = _private_dir()
        self.path = os.path.join(self.dir, SOCKET_NAME)
        self._on_handoff = on_handoff
        self._on_error = on_error or (lambda msg: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one drainer at a time
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # CLOEXEC: not inheritable
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.bind(self.path)
            os.chmod(self.path, 0o600)
            self.sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="trackleak-handoff", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.sock], [], [], 0.2)
            except (OSError, ValueError):
                return
            if ready:
                self.drain()

    def drain(self) -> int:
        """Receive everything queued now (never blocks); returns how many were accepted."""
        accepted = 0
        with self._lock:
            while True:
                try:
                    data, anc, flags, _addr = self.sock.recvmsg(
                        MESSAGE.size + 1, _ANC_SIZE, getattr(socket, "MSG_CMSG_CLOEXEC", 0)
                    )
                except (BlockingIOError, InterruptedError):
                    return accepted
                except OSError as exc:
                    self._on_error(f"receiving a handoff failed: {exc.strerror or exc}")
                    return accepted
                try:
                    handoff = accept_message(data, anc, flags)
                except ShmError as exc:
                    self._on_error(str(exc))
                    continue
                accepted += 1
                self._on_handoff(handoff)

    def stop(self) -> None:
        """Stop the thread, then take what is still queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.sock.fileno() >= 0:
            self.drain()

    def close(self) -> None:
        """Stop, close the socket (descriptors still queued in it are freed) and remove the directory."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


# --------------------------------------------------------------------------- the tables


@dataclass
class Incarnation:
    """One handed-off table: one process between its start (or exec, or fork) and its end."""

    pid: int
    ppid: int
    start_time_ns: int
    fd: int | None
    inode: int
    size: int
    snapshot: Snapshot | None = None
    header: Header | None = None  # of the last read (kept after the end: its drop counters)
    rows: list[Row] = field(default_factory=list)
    finished: bool = False
    error: str | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_time_ns)


def _dropped(header: Header | None) -> dict[str, int]:
    if header is None:
        return {}
    return {
        "sites": header.dropped_sites,
        "samples": header.dropped_samples,
        "recycled_sites": header.recycled_sites,
        "stacks": header.dropped_stacks,
    }


def _default_max_open() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, min(soft - 128, 65536))


class HandoffTables:
    """Every handed-off incarnation: its descriptor while it runs, its final rows after.

    Thread-safe: the listener's thread offers (``offer`` never waits for the lock, so the socket
    keeps being drained while the runner reads tables), the runner's thread takes them in at each
    ``refresh`` and reads.
    """

    def __init__(self, *, max_open: int | None = None, max_kept: int = DEFAULT_MAX_KEPT) -> None:
        self.max_open = _default_max_open() if max_open is None else max_open
        self.max_kept = max_kept
        self.running: dict[tuple[int, int], Incarnation] = {}
        self.finished: dict[tuple[int, int], Incarnation] = {}
        self.folded: dict[tuple, Row] = {}  # rows of finished processes past max_kept, pid 0
        self.folded_pids: set[int] = set()
        self.folded_dropped: dict[str, int] = {}
        self.released: set[int] = set()  # pids read once and let go (past max_open): /proc's
        self.starts: dict[int, set[int]] = {}  # pid -> start times of every incarnation seen
        self.headers: dict[int, Header] = {}
        self.errors: list[str] = []
        self.rejected = 0
        self._incoming: collections.deque[Handoff] = collections.deque()
        self._lock = threading.RLock()

    # ---- incoming

    def error(self, message: str) -> None:
        with self._lock:
            self.rejected += 1
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(message)

    def offer(self, h: Handoff) -> None:
        """From the listener's thread: queue it, and take the queue in only when it holds many
        descriptors and nobody else is busy with the tables."""
        self._incoming.append(h)
        if len(self._incoming) > self.max_open // 2 and self._lock.acquire(blocking=False):
            try:
                self._take_incoming()
            finally:
                self._lock.release()

    def _take_incoming(self) -> None:
        while True:
            try:
                h = self._incoming.popleft()
            except IndexError:
                return
            self.add(h)

    def add(self, h: Handoff) -> None:
        with self._lock:
            key = (h.pid, h.start_time_ns)
            if key in self.running or key in self.finished:
                _close_all([h.fd])  # the same table twice
                return
            inc = Incarnation(h.pid, h.ppid, h.start_time_ns, h.fd, h.inode, h.size)
            # Another table of this pid that still runs is over: the process exec'd (or died and
            # its pid was reused). Read it one last time.
            for other in [i for i in self.running.values() if i.pid == h.pid]:
                self._finish(other)
            self.running[key] = inc
            self.starts.setdefault(h.pid, set()).add(h.start_time_ns)
            if len(self.running) > self.max_open:
                self._reap()
            if len(self.running) > self.max_open:
                # Still too many descriptors: let this one go to /proc discovery.
                self.released.add(inc.pid)
                self._finish(inc)

    # ---- reading

    def _read(self, inc: Incarnation) -> None:
        if inc.fd is None:
            return
        try:
            snap = read_table(inc.fd, inc.pid, inc.size)
        except ShmError as exc:
            inc.error = str(exc)
            return
        inc.snapshot = snap
        inc.header = snap.header
        inc.rows = snap.rows
        inc.error = None
        self.headers[inc.pid] = snap.header

    def _finish(self, inc: Incarnation) -> None:
        """Final read, close the descriptor, keep the rows (or add them to the folded bucket)."""
        self._read(inc)
        if inc.fd is not None:
            _close_all([inc.fd])
            inc.fd = None
        inc.finished = True
        inc.snapshot = None  # the rows are what we keep
        # A forked child's table lists its parent's sites with nothing counted: not worth keeping.
        inc.rows = [r for r in inc.rows if r.count or r.sample_count]
        self.running.pop(inc.key, None)
        if len(self.finished) < self.max_kept:
            self.finished[inc.key] = inc
            return
        self.folded_pids.add(inc.pid)
        for name, value in _dropped(inc.header).items():
            self.folded_dropped[name] = self.folded_dropped.get(name, 0) + value
        for row in inc.rows:
            have = self.folded.get(row.key)
            if have is None:
                self.folded[row.key] = dataclasses.replace(row, pid=0)
            else:
                have.add(row)
        inc.rows = []

    def _reap(self) -> None:
        for inc in list(self.running.values()):
            if not still_mapped(inc.pid, inc.inode):
                self._finish(inc)

    def refresh(self) -> None:
        """Read every running table; finish those whose process is gone (checked before reading,
        so the last read comes after the last write)."""
        with self._lock:
            self._take_incoming()
            for inc in list(self.running.values()):
                if still_mapped(inc.pid, inc.inode):
                    self._read(inc)
                else:
                    self._finish(inc)

    def finish_all(self) -> None:
        """The end of the run: read everything one last time and close every descriptor."""
        with self._lock:
            self._take_incoming()
            for inc in list(self.running.values()):
                self._finish(inc)

    # ---- what the runner shows

    def pids(self) -> set[int]:
        with self._lock:
            return set(self.starts) - self.released

    def held_pids(self) -> set[int]:
        """Pids whose current table we read through a descriptor (no need for /proc)."""
        with self._lock:
            return {inc.pid for inc in self.running.values() if inc.fd is not None}

    def latest_start(self, pid: int) -> int | None:
        """The start time of PID's newest handed-off table; None when it has none we count."""
        with self._lock:
            starts = None if pid in self.released else self.starts.get(pid)
            return max(starts) if starts else None

    def rows_by_pid(self) -> dict[int, list[Row]]:
        """Rows of every incarnation, per pid (a pid's incarnations add up); pid 0: the folded bucket."""
        with self._lock:
            out: dict[int, list[Row]] = {}
            for inc in [*self.finished.values(), *self.running.values()]:
                if inc.pid in self.released:
                    continue
                out.setdefault(inc.pid, []).extend(inc.rows)
            if self.folded:
                out[0] = [dataclasses.replace(r) for r in self.folded.values()]
            return out

    def dropped(self) -> dict[str, int]:
        """What the tables could not keep (site table full, samples not kept, sites recycled),
        added over every incarnation: {"sites", "samples", "recycled_sites", "stacks"}."""
        with self._lock:
            out = dict(self.folded_dropped)
            for inc in [*self.finished.values(), *self.running.values()]:
                if inc.pid in self.released:
                    continue
                for name, value in _dropped(inc.header).items():
                    out[name] = out.get(name, 0) + value
            return out

    def header(self) -> Header | None:
        with self._lock:
            return next(iter(self.headers.values()), None)

    def all_headers(self) -> list[Header]:
        """The header of every table handed off (one per process incarnation)."""
        with self._lock:
            return list(self.headers.values())

    def close(self) -> None:
        with self._lock:
            _close_all([h.fd for h in self._incoming])
            self._incoming.clear()
            for inc in self.running.values():
                if inc.fd is not None:
                    _close_all([inc.fd])
                    inc.fd = None

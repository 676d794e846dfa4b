# SPDX-License-Identifier: MIT
"""Which processes of this host the host agent watches, and by which route.

Every scan lists the processes with psutil and keeps those that pass the filters:

- **Python by default**: the executable's name is a CPython interpreter's (``python``,
  ``python3``, ``python3.11``, ``python3.13t``, ``python3.12d``: ``^python[0-9.]*[dmtu]*$``,
  after resolving /proc/PID/exe), or the process maps a ``libpython*.so*`` (an embedding program
  such as uwsgi, or an interpreter built with --enable-shared). A process that carries the shim
  (maps ``/memfd:trackleak``) is watched whatever it runs: someone preloaded it on purpose.
  ``--any-process`` drops the Python rule (then at least one include filter is required).
- **Include filters** (``--name``, ``--cmdline``, ``--user``, ``--cgroup``; each repeatable):
  values of one filter are alternatives, different filters must all match. **Exclude filters**
  (``--exclude-*``): any match excludes. Names, command lines and cgroups are regular
  expressions searched in the text (anchor with ^ and $); ``--name`` is matched against the
  kernel's process name (comm, 15 characters) and the executable's file name; ``--cmdline``
  against the arguments joined by spaces; ``--cgroup`` against each path of /proc/PID/cgroup;
  users are names or numeric uids (the real uid).
- Never the agent itself, kernel threads, zombies, or a process whose /proc files we may not
  read (another user's, when not root).

**Route**: a process that maps ``/memfd:trackleak`` is read through its shared-memory table
(``preload``); any other through eBPF (``ebpf``). Checked again at every scan: a process that
exec'd into a preloaded program changes route.

Everything read from /proc is hostile input (trackleak.fleet.procfs: bounded reads).
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass, field

import psutil

from ..errors import UserError
from ..sources.shm import MEMFD_PATHNAMES
from . import procfs

PYTHON_EXE = re.compile(r"^python[0-9.]*[dmtu]*$")
LIBPYTHON = re.compile(r"/libpython[0-9.]*[dmtu]*\.so")
ROUTE_PRELOAD = "preload"
ROUTE_EBPF = "ebpf"


@dataclass
class ProcInfo:
    pid: int
    create_time: float
    name: str
    exe: str
    argv: list[str]
    uid: int
    user: str
    cgroups: list[str]
    python: bool
    shim: bool
    command: str = ""
    es: dict[str, str] = field(default_factory=dict)
    container: str = ""  # trackleak.containers (set when the agent starts watching it)
    ns_pid: int | None = None  # its pid in its own pid namespace

    @property
    def route(self) -> str:
        return ROUTE_PRELOAD if self.shim else ROUTE_EBPF

    @property
    def key(self) -> tuple[int, float]:
        """One incarnation of a pid (a reused pid has another start time)."""
        return (self.pid, self.create_time)


def _compile(patterns: list[str] | None, flag: str) -> list[re.Pattern]:
    out = []
    for pattern in patterns or []:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise UserError(f"{flag} {pattern!r}: not a valid regular expression ({exc})") from None
    return out


def _uids(users: list[str] | None, flag: str) -> set[int]:
    out = set()
    for user in users or []:
        user = user.strip()
        if user.isdigit():
            out.add(int(user))
            continue
        try:
            out.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            raise UserError(f"{flag} {user!r}: no such user on this host") from None
    return out


@dataclass
class Filters:
    names: list[re.Pattern] = field(default_factory=list)
    cmdlines: list[re.Pattern] = field(default_factory=list)
    users: set[int] = field(default_factory=set)
    cgroups: list[re.Pattern] = field(default_factory=list)
    exclude_names: list[re.Pattern] = field(default_factory=list)
    exclude_cmdlines: list[re.Pattern] = field(default_factory=list)
    exclude_users: set[int] = field(default_factory=set)
    exclude_cgroups: list[re.Pattern] = field(default_factory=list)
    any_process: bool = False

    @classmethod
    def build(
        cls,
        *,
        names=None,
        cmdlines=None,
        users=None,
        cgroups=None,
        exclude_names=None,
        exclude_cmdlines=None,
        exclude_users=None,
        exclude_cgroups=None,
        any_process: bool = False,
    ) -> Filters:
        """Validated filters; UserError names the bad value (regex, unknown user)."""
        f = cls(
            names=_compile(names, "--name"),
            cmdlines=_compile(cmdlines, "--cmdline"),
            users=_uids(users, "--user"),
            cgroups=_compile(cgroups, "--cgroup"),
            exclude_names=_compile(exclude_names, "--exclude-name"),
            exclude_cmdlines=_compile(exclude_cmdlines, "--exclude-cmdline"),
            exclude_users=_uids(exclude_users, "--exclude-user"),
            exclude_cgroups=_compile(exclude_cgroups, "--exclude-cgroup"),
            any_process=any_process,
        )
        if any_process and not (f.names or f.cmdlines or f.users or f.cgroups):
            raise UserError(
                "--any-process watches processes that are not Python: give at least one include "
                "filter (--name, --cmdline, --user, --cgroup) so that it does not attach to everything"
            )
        return f

    # Cheap checks (no file read beyond what psutil gave) first.
    def early(self, name: str, exe: str, uid: int) -> bool:
        names = (name, os.path.basename(exe))
        if self.users and uid not in self.users:
            return False
        if uid in self.exclude_users:
            return False
        if self.names and not any(p.search(n) for p in self.names for n in names if n):
            return False
        return not any(p.search(n) for p in self.exclude_names for n in names if n)

    def late(self, cmdline: str, cgroups: list[str]) -> bool:
        if self.cmdlines and not any(p.search(cmdline) for p in self.cmdlines):
            return False
        if any(p.search(cmdline) for p in self.exclude_cmdlines):
            return False
        if self.cgroups and not any(p.search(c) for p in self.cgroups for c in cgroups):
            return False
        return not any(p.search(c) for p in self.exclude_cgroups for c in cgroups)


def scan_maps(text: str) -> tuple[bool, bool]:
    """(maps a libpython, maps the trackleak memfd) from the text of /proc/PID/maps."""
    libpython = shim = False
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5].strip()
        if path in MEMFD_PATHNAMES:
            shim = True
        elif not libpython and LIBPYTHON.search(path):
            libpython = True
        if libpython and shim:
            break
    return libpython, shim


def read_argv(pid: int) -> list[str] | None:
    data = procfs.read_limited(f"/proc/{pid}/cmdline", procfs.CMDLINE_LIMIT)
    if data is None:
        return None
    return [a.decode("utf-8", errors="replace") for a in data.rstrip(b"\x00").split(b"\x00") if a][:256]


@dataclass
class Discovery:
    filters: Filters = field(default_factory=Filters)
    self_pid: int = field(default_factory=os.getpid)
    unreadable: int = 0  # processes of the last scan whose /proc files we may not read
    # (pid, create_time, exe) -> False: not a candidate (not Python, no shim); re-checked on exec
    _negative: dict[tuple, bool] = field(default_factory=dict)
    _argv: dict[tuple, list[str]] = field(default_factory=dict)

    def scan(self) -> dict[int, ProcInfo]:
        """The processes to watch now, by pid."""
        found: dict[int, ProcInfo] = {}
        alive_keys = set()
        self.unreadable = 0
        for proc in psutil.process_iter(["name", "uids", "create_time", "status"]):
            try:
                info = self._one(proc, alive_keys)
            except (psutil.Error, OSError):
                continue
            if info is not None:
                found[info.pid] = info
        # Forget caches of processes that are gone.
        self._negative = {k: v for k, v in self._negative.items() if k in alive_keys}
        self._argv = {k: v for k, v in self._argv.items() if k in alive_keys}
        return found

    def _one(self, proc: psutil.Process, alive_keys: set) -> ProcInfo | None:
        pid = proc.pid
        if pid == self.self_pid or pid <= 2:
            return None
        a = proc.info
        if a.get("status") == psutil.STATUS_ZOMBIE:
            return None
        uids, ctime = a.get("uids"), a.get("create_time")
        if uids is None or ctime is None:
            return None
        uid = int(uids.real)
        name = str(a.get("name") or "")[:64]
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except FileNotFoundError:
            return None  # kernel thread or gone
        except OSError:
            self.unreadable += 1
            return None
        if exe.endswith(" (deleted)"):
            exe = exe[: -len(" (deleted)")]
        key = (pid, ctime, exe)
        alive_keys.add(key)
        if key in self._negative:
            return None
        if not self.filters.early(name, exe, uid):
            return None
        maps = procfs.read_text(f"/proc/{pid}/maps", procfs.MAPS_LIMIT)
        if maps is None:
            self.unreadable += 1
            return None
        libpython, shim = scan_maps(maps)
        python = bool(PYTHON_EXE.match(os.path.basename(exe))) or libpython
        if not (python or shim or self.filters.any_process):
            if maps:  # an empty maps file: exiting, or a kernel thread; do not cache
                self._negative[key] = False
            return None
        argv = self._argv.get(key)
        if argv is None:
            argv = read_argv(pid)
            if argv is None:
                return None
            self._argv[key] = argv
        cgroups = procfs.cgroups(pid)
        if not self.filters.late(" ".join(argv), cgroups):
            return None
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        return ProcInfo(
            pid=pid,
            create_time=ctime,
            name=name,
            exe=exe,
            argv=argv,
            uid=uid,
            user=user,
            cgroups=cgroups,
            python=python,
            shim=shim,
            command=procfs.command_text(argv, fallback=name),
        )

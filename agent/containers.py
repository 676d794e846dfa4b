# SPDX-License-Identifier: MIT
"""Which container a process runs in, and its pid there: what every row and document names.

A process is "in a container" when it does not share the agent's view of the machine: a container
runtime's cgroup, another mount namespace, or another root directory (a chroot). Its name:

1. a container runtime's cgroup (v2 path, or v1 when v2 says nothing): the runtime and the first
   12 hex digits of the id, as ``docker ps`` shows them: ``docker:0123456789ab``,
   ``containerd:...``, ``crio:...``, ``podman:...``, ``kubepods:...`` (the container's id inside
   a pod's cgroup);
2. else, another root: ``root:/srv/jail`` (the host path of its root, /proc/PID/root);
3. else, another mount namespace: ``mntns:4026532455``;
4. else ``""``: on the host.

Everything is read from /proc of a process that may be hostile: bounded reads, validated text,
names cut to 128 characters. The files a process sees are reached through /proc/PID/root
(trackleak.symbolize.elf.proc_path); its pid in its own namespace is the last NSpid entry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .fleet import procfs

MAX_NAME = 128
_HEX = r"([0-9a-f]{12,64})"
# Runtime cgroup leaves: (pattern, runtime). Checked against every component, innermost first.
_RUNTIMES = (
    (re.compile(rf"^docker-{_HEX}\.scope$"), "docker"),
    (re.compile(rf"^cri-containerd-{_HEX}\.scope$"), "containerd"),
    (re.compile(rf"^crio-{_HEX}\.scope$"), "crio"),
    (re.compile(rf"^libpod-{_HEX}\.scope$"), "podman"),
)
_PARENTS = {"docker": "docker", "kubepods": "kubepods", "lxc": "lxc", "containerd": "containerd"}


@dataclass(frozen=True)
class Container:
    name: str = ""  # "" on the host
    ns_pid: int | None = None  # its pid in its own pid namespace (None: unknown)
    root: str = "/"  # its root directory, as a host path


def name_from_cgroup(lines: list[str]) -> str:
    """The runtime:id of a container runtime's cgroup path (/proc/PID/cgroup lines), or ""."""
    paths = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths.append(parts[2])
    for path in sorted(paths, key=lambda p: not p.startswith("/")):
        comps = [c for c in path.split("/") if c]
        for i in range(len(comps) - 1, -1, -1):
            comp = comps[i]
            for pattern, runtime in _RUNTIMES:
                m = pattern.match(comp)
                if m:
                    return f"{runtime}:{m.group(1)[:12]}"
            # /docker/<id>, /kubepods/.../<id>, /lxc/<name>: a runtime directory above an id
            if i > 0 and re.fullmatch(_HEX, comp):
                for parent in comps[:i]:
                    if parent.split(".")[0] in _PARENTS:
                        return f"{_PARENTS[parent.split('.')[0]]}:{comp[:12]}"
    return ""


def ns_pid(pid: int) -> int | None:
    """PID's pid in its innermost pid namespace (NSpid's last field), None when unknown."""
    status = procfs.read_text(f"/proc/{pid}/status", 64 * 1024)
    if not status:
        return None
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            if fields and fields[-1].isdigit():
                return int(fields[-1])
    return None


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def describe(pid: int) -> Container:
    """Where PID runs (see the module's rules); a process we cannot read is on the host."""
    cgroups = procfs.read_text(f"/proc/{pid}/cgroup", 64 * 1024) or ""
    name = name_from_cgroup(cgroups.splitlines())
    root = _link(f"/proc/{pid}/root") or "/"
    if not name and root != "/" and root != _link("/proc/self/root"):
        name = "root:" + root
    if not name:
        mine, theirs = _link("/proc/self/ns/mnt"), _link(f"/proc/{pid}/ns/mnt")
        if mine and theirs and mine != theirs:
            name = "mntns:" + theirs.strip("mnt:[]")
    name = "".join(c if c.isprintable() else "?" for c in name)[:MAX_NAME]
    return Container(name=name, ns_pid=ns_pid(pid), root=root)

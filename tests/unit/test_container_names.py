# SPDX-License-Identifier: MIT
"""Container names from /proc/PID/cgroup (hostile text), and this process's own description."""

from __future__ import annotations

import os

import pytest

from trackleak import containers

ID = "4f1c2a9e8b7d6c5a4f1c2a9e8b7d6c5a4f1c2a9e8b7d6c5a4f1c2a9e8b7d6c5a"


@pytest.mark.parametrize(
    "lines, name",
    [
        ([f"0::/system.slice/docker-{ID}.scope"], "docker:4f1c2a9e8b7d"),
        ([f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"], "containerd:4f1c2a9e8b7d"),
        ([f"0::/machine.slice/libpod-{ID}.scope/container"], "podman:4f1c2a9e8b7d"),
        ([f"0::/kubepods.slice/kubepods-besteffort.slice/crio-{ID}.scope"], "crio:4f1c2a9e8b7d"),
        ([f"12:memory:/docker/{ID}", "0::/"], "docker:4f1c2a9e8b7d"),  # cgroup v1
        ([f"4:cpu:/kubepods/besteffort/pod1234/{ID}"], "kubepods:4f1c2a9e8b7d"),
        (["0::/system.slice/myapp.service"], ""),  # a service, not a container
        (["0::/user.slice/user-1000.slice/session-2.scope"], ""),
        ([f"0::/system.slice/docker-{ID[:8]}.scope"], ""),  # not an id
        (["garbage", "", "0::/docker-\x1b[31m.scope"], ""),
    ],
)
def test_runtime_cgroups_name_the_container(lines, name):
    assert containers.name_from_cgroup(lines) == name


def test_the_agent_itself_shares_its_own_root_and_mounts():
    where = containers.describe(os.getpid())
    assert where.ns_pid == os.getpid()  # NSpid's last entry: the pid in our own namespace
    # A runtime's cgroup may name the machine the tests run in; never a root or mount namespace.
    assert not where.name.startswith(("root:", "mntns:")), where
    assert containers.describe(2**22 + 12345).ns_pid is None  # no such process: unknown, no error

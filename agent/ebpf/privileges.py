# SPDX-License-Identifier: MIT
"""Who may attach eBPF probes: root, or a process holding CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN),
as the deploy units run the agent. One rule for the agent (loader.check_privileges) and `trackleak
doctor`."""

from __future__ import annotations

import os

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def effective_capabilities(status: str = "/proc/self/status") -> int:
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def can_attach(euid: int | None = None, caps: int | None = None) -> tuple[bool, str]:
    """(allowed, how): "root", "capabilities", or what is missing."""
    euid = os.geteuid() if euid is None else euid
    caps = effective_capabilities() if caps is None else caps
    has = lambda c: bool(caps >> c & 1)  # noqa: E731
    detail = f"CAP_BPF={has(CAP_BPF)}, CAP_PERFMON={has(CAP_PERFMON)}"
    if euid == 0:
        return True, f"root ({detail})"
    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        return True, f"capabilities ({detail})"
    return False, "not root, no CAP_BPF + CAP_PERFMON"
